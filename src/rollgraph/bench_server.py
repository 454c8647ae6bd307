"""The bench's measuring side: one `rollgraph serve` (or `rollgraph.peers`) subprocess per mode, driven and timed.

No torch here: the bench process talks to servers through `rollgraph.client` only, so its timings are what a client
sees. Every subprocess is stopped before its function returns, whatever happens (SIGTERM, then SIGKILL after 30 s).
A server that exits or is not ready in time fails its mode with the tail of its log; the other modes still run.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rollgraph.bench_report import ModeRun, Sample
from rollgraph.client import Client, server_listening
from rollgraph.errors import RollgraphError
from rollgraph.gc_pause import gc_paused
from rollgraph.host_probe import request_fields, request_readings

if TYPE_CHECKING:
    from rollgraph.bench import BenchSettings, Prompt

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 30


class BenchError(RollgraphError):
    """The bench cannot go on as asked: bad settings, a model it cannot find, a server that would not start."""

    code = "bench"


TRANSPORT_KEYS = (
    "queue_ms",
    "first_byte_to_frame_ms",
    "frame_to_queue_ms",
    "first_token_out_ms",
    "token_frames_direct",
    "itl_made_median_ms",
    "itl_made_max_ms",
    "itl_sent_median_ms",
    "itl_sent_max_ms",
    "request_read_by",
)
"""The final frame's timings of the server's connection (connection.final_frame) that each Sample keeps
(`request_read_by` is "engine" or "loop": which thread read the request's frame, request_reads.py)."""
CLOCK_KEYS = ("call_to_first_byte_ms", "first_token_to_client_ms")
"""Two more the client works out from the server's stamps (the bench runs its server on the same host, whose
time.perf_counter() is one clock for both processes): from the client's call to the server's first sight of the
request, and from token 0's frame written to its arrival here."""


def clock_splits(timings: dict, call_at: float, token0_at: float) -> dict:
    """CLOCK_KEYS from the final frame's `first_byte_at` and `first_token_sent_at` (None where either is missing)."""
    first_byte, token_sent = timings.get("first_byte_at"), timings.get("first_token_sent_at")
    return {
        "call_to_first_byte_ms": round((first_byte - call_at) * 1e3, 3) if isinstance(first_byte, float) else None,
        "first_token_to_client_ms": round((token0_at - token_sent) * 1e3, 3) if isinstance(token_sent, float) else None,
    }


def log_tail(path: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file ('' if it cannot be read)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_S; never raises for a process already gone."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        logger.warning("process %d ignored SIGTERM for %g s; killing it", proc.pid, STOP_TIMEOUT_S)
        proc.kill()
        proc.wait()


def serve_command(settings: BenchSettings, mode: str, socket_path: str) -> list[str]:
    assert settings.model is not None
    base = [sys.executable, "-m", "rollgraph", "serve", "--model", settings.model, "--socket", socket_path]
    return [*base, "--mode", mode, *settings.serve_flags()]


def wait_ready(proc: subprocess.Popen, socket_path: str, log_path: str, timeout_s: float) -> None:
    """Until the server's socket accepts (it opens only once loading and pre-capture are done); BenchError with
    the log's tail if the server exits first or takes longer than `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(
                f"the server exited with code {proc.returncode} before it was ready; the end of {log_path}:\n"
                f"{log_tail(log_path)}"
            )
        if os.path.exists(socket_path) and server_listening(socket_path):
            return
        time.sleep(0.05)
    raise BenchError(f"the server was not ready within {timeout_s:g} s; the end of {log_path}:\n{log_tail(log_path)}")


SPIN_AHEAD_S = 0.001
"""`--client-wait near`: how long before a token is due the measuring client stops sleeping and polls (client.py)."""


def timed_request(client: Client, prompt: Prompt, new_tokens: int) -> Sample:
    """One streaming greedy request, timed here: every token frame is stamped as it arrives (collector paused)."""
    stamps = []
    before = request_readings()  # outside the timed span: the hypervisor's steal, this thread's scheduling
    with gc_paused():
        start = time.perf_counter()
        gen = client.generate(list(prompt.ids), max_new_tokens=new_tokens, temperature=0.0, stream=True)
        for _ in gen:
            stamps.append(time.perf_counter())
        end = time.perf_counter()
    host = request_fields(before)
    result = gen.result or {}
    timings = result.get("timings") or {}
    if not stamps:
        raise BenchError(f"the server returned no tokens for a {prompt.prompt_len}-token prompt: {result}")
    return Sample(
        prompt_len=prompt.prompt_len,
        repeat=prompt.repeat,
        ttft_ms=(stamps[0] - start) * 1e3,
        itl_ms=tuple((b - a) * 1e3 for a, b in itertools.pairwise(stamps)),
        e2el_ms=(end - start) * 1e3,
        output_tokens=tuple(result.get("output_tokens", ())),
        sources=dict(result.get("graphs") or {}),
        prefix_reused=int(result.get("prefix_reused_tokens") or 0),
        server_ttft_ms=timings.get("ttft_ms"),
        server_decode_ms=timings.get("decode_ms_mean"),
        server_transport_ms={
            **{k: v for k, v in timings.items() if k in TRANSPORT_KEYS},
            **clock_splits(timings, start, stamps[0]),
        },
        **host,
    )


def _start_info(stats: dict, startup_s: float) -> dict:
    pool, memory = stats.get("pool") or {}, stats.get("memory") or {}
    return {
        "startup_s": round(startup_s, 3),
        "capture_s": pool.get("capture_s"),
        "kernel_build_s": stats.get("kernel_build_s"),
        "cublaslt_products": stats.get("cublaslt_products"),
        "graphs": pool.get("graphs"),
        "graph_bytes": pool.get("bytes"),
        "memory_after_start_bytes": memory.get("reserved"),
        "weight_bytes": memory.get("weight_bytes"),
        "kv_cache_bytes": memory.get("kv_cache_bytes"),
        "dtype": stats.get("dtype"),
        "device": stats.get("device"),
        "graphs_enabled": stats.get("graphs_enabled"),
        "compile_cache": stats.get("compile_cache"),
    }


def _end_info(stats: dict) -> dict:
    pool, memory = stats.get("pool") or {}, stats.get("memory") or {}
    counters = ("hits", "misses", "captures", "evictions", "capture_failures", "rejected_too_large")
    return {
        "memory_peak_bytes": memory.get("peak_allocated"),
        "memory_reserved_end_bytes": memory.get("reserved"),
        "graphs_end": pool.get("graphs"),
        "graph_bytes_end": pool.get("bytes"),
        "pool": {k: pool.get(k) for k in counters},
    }


def _measure(client: Client, run: ModeRun, settings: BenchSettings, prompts: Sequence[Prompt], bar: Any) -> None:
    """Send every prompt in order, keep the measured ones' samples, read the reserved memory after each length."""
    memory = run.info["memory_by_length"] = {}
    for i, prompt in enumerate(prompts):
        sample = timed_request(client, prompt, settings.new_tokens)
        if not prompt.warmup:
            run.samples.append(sample)
        bar.update()
        if i + 1 == len(prompts) or prompts[i + 1].prompt_len != prompt.prompt_len:
            memory[prompt.prompt_len] = (client.stats().get("memory") or {}).get("reserved")


def run_server_mode(
    settings: BenchSettings, mode: str, prompts: Sequence[Prompt], socket_path: str, log_path: str, bar: Any
) -> ModeRun:
    """Start a server in `mode`, measure every prompt through it, stop it. Failures become status 'failed'."""
    run = ModeRun(mode, "server")
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(serve_command(settings, mode, socket_path), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(proc, socket_path, log_path, settings.ready_timeout_s)
        startup_s = time.perf_counter() - started
        wait = {"busy_poll": settings.client_wait == "spin"}
        if settings.client_wait == "near":
            wait["spin_ahead_s"] = SPIN_AHEAD_S
        with Client(socket_path, timeout=settings.request_timeout_s, **wait) as client:
            run.info = _start_info(client.stats(), startup_s)
            _measure(client, run, settings, prompts, bar)
            run.info.update(_end_info(client.stats()))
    except (RollgraphError, OSError) as exc:  # ServerError, BenchError, ConnectionError, TimeoutError
        run.status, run.error = "failed", str(exc)
        if proc.poll() is not None and not isinstance(exc, BenchError):
            run.error += (
                f"\nthe server exited with code {proc.returncode}; the end of {log_path}:\n{log_tail(log_path)}"
            )
    finally:
        stop_process(proc)
    return run


def peer_command(settings: BenchSettings, peer: str, prompts_file: str) -> list[str]:
    assert settings.model is not None
    return [sys.executable, "-m", "rollgraph.peers", "--model", settings.model, "--peer", peer,
            "--prompts", prompts_file, "--new-tokens", str(settings.new_tokens), "--dtype", settings.dtype]  # fmt: skip


def _on_peer_event(run: ModeRun, event: dict, started: float, bar: Any) -> None:
    kind = event.get("type")
    if kind == "ready":
        run.info.update({k: v for k, v in event.items() if k != "type"})
        run.info["startup_s"] = round(time.perf_counter() - started, 3)
    elif kind == "warmup":
        bar.update()
    elif kind == "sample":
        run.samples.append(Sample.from_dict(event["sample"]))
        bar.update()
    elif kind == "done":
        run.info["memory_peak_bytes"] = event.get("memory_peak_bytes")
        run.info["memory_by_length"] = {int(k): v for k, v in (event.get("memory_by_length") or {}).items()}
    elif kind in ("skipped", "error"):
        run.status = "skipped" if kind == "skipped" else "failed"
        run.error = event.get("error")


def run_peer_mode(
    settings: BenchSettings, peer: str, prompts_file: str, cuda: bool, log_path: str, bar: Any
) -> ModeRun:
    """Run one transformers peer in its own process and collect its JSON lines. Failures become 'failed'."""
    run = ModeRun(peer, "peer")
    if peer == "hf-static-compile" and not cuda:
        run.status, run.error = "skipped", "needs CUDA (reduce-overhead captures CUDA graphs); skipped on CPU"
        return run
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            peer_command(settings, peer, prompts_file), stdout=subprocess.PIPE, stderr=log, text=True
        )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                _on_peer_event(run, json.loads(line), started, bar)
        code = proc.wait()
        if code != 0 and run.status == "ok":
            run.status = "failed"
            run.error = f"the peer exited with code {code}; the end of {log_path}:\n{log_tail(log_path)}"
    finally:
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()
    return run
