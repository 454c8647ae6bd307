"""Soak a rollgraph server: many requests of random shapes, each checked, with memory and the graph pool watched.

Why: a server that is right for ten requests can still lose one in ten thousand, leak a little memory per request,
or let the graph pool creep over its byte budget as keys are captured and evicted. This script sends N requests
(random prompt lengths, greedy and sampled, random max_new_tokens, stop tokens, the original client's resend loop,
and a fraction of clients that disconnect mid-stream) and checks:
- greedy tokens equal an in-process eager engine's on the same model, device, limits and kernels (the server's
  `stats()["kernels"]`: in bf16 another kernel gives other tokens; computed once per prompt, so the reference costs
  prompts x max_new_tokens steps, not one generation per request). Exact for the eager, graphs and seed modes, whose
  replays run the eager kernels; the compile modes run inductor's kernels, which no eager engine reproduces in bf16;
- seeded sampling repeats give the same tokens on the same server (determinism);
- nothing is lost: every request that was not deliberately dropped gets its final frame;
- the pool's bytes never exceed its budget (stats sampled every --stats-every requests);
- memory is flat: server RSS (/proc/PID/status VmRSS), sampled every --window requests, and GPU memory reserved
  beyond the held graphs (its highest value in each window, since the allocator's cache rises and falls as graphs
  are captured and evicted) grow by less than the tolerance from the first window to the last.

It starts a server (`--socket-dir`) or uses a running one (`--socket`; it must run with the same --max-seq-len and
buckets). The last output line is a JSON summary, also written to --out; the exit code is 0 only if every check held.

  PYTHONPATH=src python scripts/soak.py --model llama-tiny --requests 2000 --socket-dir /tmp/soak --window 500
  python scripts/soak.py --model llama-3.2-1b --mode graphs --graph-memory 256 --requests 10000 \\
      --max-prompt 1500 --socket-dir /tmp/soak --out soak_h100.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field

from rollgraph.client import Client, ServerUnavailable
from rollgraph.errors import RollgraphError

MIB = 2**20
FIRST_TOKEN = 3  # byte tokenizers reserve 0-2; any id works for a random-weights model, these are ordinary text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama-tiny")
    p.add_argument("--requests", type=int, default=1000)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket-dir", help="start a server with its socket in this directory")
    where.add_argument("--socket", help="use the server already listening here")
    p.add_argument("--mode", default="eager")
    p.add_argument("--graph-memory", type=float, help="the server's pool budget in MiB")
    p.add_argument("--max-graphs", type=int)
    p.add_argument("--server-arg", action="append", default=[], help="one more `serve` argument (repeatable)")
    p.add_argument("--device", default="auto", help="device of the server and of the reference engine")
    p.add_argument("--max-seq-len", type=int, default=2048)
    p.add_argument("--max-prompt", type=int, default=512, help="longest prompt (lengths are log-uniform)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--prompts", type=int, default=64, help="distinct prompts (each one's reference is computed once)")
    p.add_argument("--disconnect-fraction", type=float, default=0.05)
    p.add_argument("--resend-fraction", type=float, default=0.1, help="original-client resend chains")
    p.add_argument("--sampled-fraction", type=float, default=0.35, help="requests with temperature > 0")
    p.add_argument("--window", type=int, default=1000, help="memory sample every this many requests")
    p.add_argument("--stats-every", type=int, default=5, help="pool sample every this many requests")
    p.add_argument("--rss-tolerance-mib", type=float, default=64.0)
    p.add_argument("--gpu-tolerance-mib", type=float, default=64.0)
    p.add_argument(
        "--time-limit",
        type=float,
        default=0.0,
        help="stop sending after this many seconds (0: none); the checks then cover the requests sent",
    )
    p.add_argument("--request-timeout", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.max_prompt + args.max_new_tokens > args.max_seq_len:
        p.error("--max-prompt + --max-new-tokens must fit in --max-seq-len")
    return args


# ---- the server -------------------------------------------------------------------------------------------------


class Server:
    """The server under test: started here (and stopped with SIGTERM at the end) or found at --socket."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.proc: subprocess.Popen | None = None
        if args.socket:
            self.path = args.socket
        else:
            os.makedirs(args.socket_dir, mode=0o700, exist_ok=True)
            self.path = os.path.join(args.socket_dir, "soak.sock")
            self.log_path = os.path.join(args.socket_dir, "soak-server.log")
            self._start(args)
        self.pid = self._wait_ready()

    def _start(self, args: argparse.Namespace) -> None:
        cmd = [sys.executable, "-m", "rollgraph", "serve", "--model", args.model, "--socket", self.path]
        cmd += ["--mode", args.mode, "--device", args.device, "--max-seq-len", str(args.max_seq_len)]
        cmd += ["--max-new-tokens-cap", str(args.max_new_tokens)]
        if args.graph_memory is not None:
            cmd += ["--graph-memory", str(args.graph_memory)]
        if args.max_graphs is not None:
            cmd += ["--max-graphs", str(args.max_graphs)]
        cmd += args.server_arg
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def _wait_ready(self, timeout: float = 1800.0) -> int:
        """The server's pid (SO_PEERCRED) once it answers `health`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with Client(self.path, timeout=10) as c:
                    c.health()
                return peer_pid(self.path)
            except (ServerUnavailable, ConnectionError, TimeoutError):
                time.sleep(0.2)
        raise TimeoutError(f"the server at {self.path} was not ready within {timeout} s")

    def rss_mib(self) -> float | None:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                line = next(line for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            return None
        return int(line.split()[1]) / 1024

    def stop(self) -> dict:
        """SIGTERM the server this script started: its exit code and whether it removed its socket."""
        if self.proc is None:
            return {}
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = None
        return {"exit_code": code, "socket_removed": not os.path.exists(self.path)}


def peer_pid(path: str) -> int:
    """The pid of the process listening at `path` (SO_PEERCRED), so RSS can be read for a server found running."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


# ---- the reference ----------------------------------------------------------------------------------------------


class Reference:
    """Greedy tokens from an in-process eager engine, one generation of max_new_tokens per prompt, computed when
    first needed: a shorter request's tokens are a prefix (greedy, no stop tokens)."""

    def __init__(self, args: argparse.Namespace, kernels: dict) -> None:
        from rollgraph.config import EngineConfig, ModelConfig
        from rollgraph.engine import Engine
        from rollgraph.models import load_model

        model = load_model(ModelConfig(args.model, device=args.device))
        # The server's own kernel choices (eager's `auto` would pick PyTorch's, unlike graphs mode's).
        chosen = self.kernels = {k: v for k, v in kernels.items() if k in ("attention", "matmul") and v}
        self.engine = Engine(model, EngineConfig(mode="eager", max_seq_len=args.max_seq_len, **chosen))
        self.n = args.max_new_tokens
        self._cache: dict[int, list[int]] = {}
        self.seconds = 0.0

    def tokens(self, index: int, prompt: list[int]) -> list[int]:
        if index not in self._cache:
            from rollgraph.params import GenerationParams

            start = time.perf_counter()
            self._cache[index] = list(self.engine.generate(GenerationParams(tuple(prompt), self.n)))
            self.seconds += time.perf_counter() - start
        return self._cache[index]


# ---- the requests -----------------------------------------------------------------------------------------------


@dataclass
class Tally:
    done: int = 0
    server_requests: int = 0
    by_kind: dict = field(default_factory=dict)
    lost: int = 0
    wrong: int = 0
    disconnects: int = 0
    greedy_checked: int = 0
    seeded_repeats_checked: int = 0
    failures: list = field(default_factory=list)

    def fail(self, what: str, request: int, detail: str) -> None:
        setattr(self, what, getattr(self, what) + 1)
        if len(self.failures) < 20:
            self.failures.append({"what": what, "request": request, "detail": detail[:300]})


class Soak:
    """Sends the requests and checks each one; the pool and memory samples are taken here too."""

    def __init__(self, args: argparse.Namespace, server: Server, ref: Reference, vocab: int) -> None:
        self.args, self.server, self.ref = args, server, ref
        self.rng = random.Random(args.seed)
        self.prompts = [self._prompt(vocab) for _ in range(args.prompts)]
        self.client = Client(server.path, timeout=args.request_timeout)
        self.tally = Tally()
        self.seeded: dict[tuple, list[int]] = {}
        self.pool = {"bytes_max_seen": 0, "max_bytes": None, "graphs_max_seen": 0, "over_budget_samples": 0}
        self.samples: list[dict] = []
        self.window_gpu_max: float | None = None  # reserved minus pool bytes, highest since the last memory sample

    def _prompt(self, vocab: int) -> list[int]:
        length = round(self.args.max_prompt ** self.rng.random())  # log-uniform in [1, max_prompt]
        return [self.rng.randrange(FIRST_TOKEN, vocab) for _ in range(length)]

    def run(self) -> str:
        """Why sending stopped: "done" (every planned request), "time_limit" or "server_gone"."""
        start = time.monotonic()
        self.sample_memory(0)
        for i in range(1, self.args.requests + 1):
            if self.args.time_limit and time.monotonic() - start > self.args.time_limit:
                return "time_limit"
            try:
                self.one(i)
                self.tally.done = i
                self.sample(i)
            except ServerUnavailable as exc:
                self.tally.failures.append({"what": "server_gone", "request": i, "detail": str(exc)[:300]})
                return "server_gone"
            except (RollgraphError, ConnectionError, TimeoutError) as exc:  # a stats request went unanswered
                self.client.close()
                self.tally.fail("lost", i, f"stats: {type(exc).__name__}: {exc}")
        return "done"

    def sample(self, i: int) -> None:
        if i % self.args.window == 0:
            self.sample_memory(i)
        elif i % self.args.stats_every == 0:
            self.sample_pool()

    def kind(self) -> str:
        a, r = self.args, self.rng.random()
        for kind, fraction in (("disconnect", a.disconnect_fraction), ("resend", a.resend_fraction),
                               ("sampled", a.sampled_fraction)):  # fmt: skip
            if r < fraction:
                return kind
            r -= fraction
        return "greedy"

    def one(self, i: int) -> None:
        kind = self.kind()
        self.tally.by_kind[kind] = self.tally.by_kind.get(kind, 0) + 1
        try:
            getattr(self, kind)(i)
        except ServerUnavailable:
            self.tally.lost += 1
            raise
        except (RollgraphError, ConnectionError, TimeoutError) as exc:
            self.client.close()
            self.tally.fail("lost", i, f"{kind}: {type(exc).__name__}: {exc}")

    def pick(self) -> tuple[int, list[int]]:
        index = self.rng.randrange(len(self.prompts))
        return index, self.prompts[index]

    def greedy(self, i: int) -> None:
        index, prompt = self.pick()
        want = self.ref.tokens(index, prompt)[: self.rng.randint(1, self.args.max_new_tokens)]
        stops = []
        if self.rng.random() < 0.15:  # stop at a token the reference makes: finish_reason "stop"
            stops = [self.rng.choice(want)]
            want = want[: want.index(stops[0]) + 1]
            n = self.rng.randint(len(want), self.args.max_new_tokens)
        else:
            n = len(want)
        stream = self.rng.random() < 0.7
        gen = self.client.generate(prompt, max_new_tokens=n, stop_token_ids=stops, stream=stream)
        got, final = list(gen), gen.result
        self.tally.server_requests += 1
        reason = "stop" if stops else "length"
        self.tally.greedy_checked += 1
        if got != want or final["output_tokens"] != want or final["finish_reason"] != reason:
            self.tally.fail("wrong", i, f"greedy prompt {index} n={n} stops={stops}: {got} != {want}")

    def resend(self, i: int) -> None:
        """The original client's loop: one `inference` per token, the sequence resent with the token appended."""
        index, prompt = self.pick()
        want = self.ref.tokens(index, prompt)[: self.rng.randint(1, min(8, self.args.max_new_tokens))]
        seq = list(prompt)
        for _ in want:
            seq += self.client.send_request(seq)
            self.tally.server_requests += 1
        self.tally.greedy_checked += 1
        if seq[len(prompt) :] != want:
            self.tally.fail("wrong", i, f"resend prompt {index}: {seq[len(prompt) :]} != {want}")

    def sampled(self, i: int) -> None:
        """Seeded requests are remembered; some later requests repeat one, which must give the same tokens."""
        if self.seeded and self.rng.random() < 0.3:
            key = self.rng.choice(list(self.seeded))
            repeat = True
        else:
            index, _ = self.pick()
            seed = self.rng.randrange(2**62) if self.rng.random() < 0.8 else None
            temperature = self.rng.choice([0.3, 0.7, 1.0, 1.5])
            top_k, top_p = self.rng.choice([0, 0, 20, 100]), self.rng.choice([1.0, 1.0, 0.9, 0.5])
            key = (index, self.rng.randint(1, self.args.max_new_tokens), temperature, top_k, top_p, seed)
            repeat = False
        index, n, temperature, top_k, top_p, seed = key
        gen = self.client.generate(
            self.prompts[index], max_new_tokens=n, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
        )
        got = list(gen)
        self.tally.server_requests += 1
        if len(got) != n or gen.result["finish_reason"] != "length":
            self.tally.fail("wrong", i, f"sampled {key}: {len(got)} tokens, {gen.result['finish_reason']}")
        elif repeat:
            self.tally.seeded_repeats_checked += 1
            if got != self.seeded[key]:
                self.tally.fail("wrong", i, f"seeded repeat {key}: {got} != {self.seeded[key]}")
        elif seed is not None:
            self.seeded[key] = got

    def disconnect(self, i: int) -> None:
        """A client that reads a few streamed tokens and goes away; the next request reconnects."""
        _, prompt = self.pick()
        n = self.rng.randint(4, max(4, self.args.max_new_tokens))
        gen = self.client.generate(prompt, max_new_tokens=n)
        for _ in range(self.rng.randint(1, n - 1)):
            next(gen)
        gen.close()
        self.tally.server_requests += 1
        self.tally.disconnects += 1

    def finish(self) -> dict:
        """The last memory sample (if the count was not a multiple of the window) and the final stats; {} if the
        server is gone."""
        try:
            if self.tally.done % self.args.window:
                self.sample_memory(self.tally.done)
            return self.client.stats()
        except (RollgraphError, ConnectionError, TimeoutError):
            return {}
        finally:
            self.client.close()

    # ---- samples ------------------------------------------------------------------------------------------------

    def sample_pool(self) -> dict:
        stats = self.client.stats()
        pool, p = stats["pool"], self.pool
        p["max_bytes"] = pool["max_bytes"]
        p["bytes_max_seen"] = max(p["bytes_max_seen"], pool["bytes"])
        p["graphs_max_seen"] = max(p["graphs_max_seen"], pool["graphs"])
        p["over_budget_samples"] += pool["bytes"] > pool["max_bytes"] or pool["graphs"] > pool["max_graphs"]
        reserved = stats["memory"]["reserved"]
        if reserved is not None:
            beyond = (reserved - pool["bytes"]) / MIB
            self.window_gpu_max = max(beyond, self.window_gpu_max or beyond)
        return stats

    def sample_memory(self, i: int) -> None:
        stats = self.sample_pool()
        reserved = stats["memory"]["reserved"]
        self.samples.append(
            {
                "request": i,
                "rss_mib": _round(self.server.rss_mib()),
                "gpu_reserved_mib": _round(reserved / MIB if reserved is not None else None),
                "gpu_beyond_pool_max_mib": _round(self.window_gpu_max),
                "pool_mib": _round(stats["pool"]["bytes"] / MIB),
                "graphs": stats["pool"]["graphs"],
            }
        )
        self.window_gpu_max = None
        print(f"soak: {json.dumps(self.samples[-1])}", file=sys.stderr, flush=True)  # progress, one line per window


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


# ---- the summary ------------------------------------------------------------------------------------------------


def growth(samples: list[dict], name: str) -> float | None:
    """Last window sample minus the first window sample (the start sample is before warm-up, so left out)."""
    points = [s[name] for s in samples if s["request"] > 0 and s.get(name) is not None]
    return round(points[-1] - points[0], 1) if len(points) >= 2 else None


def summarize(args: argparse.Namespace, soak: Soak, final: dict, exit_info: dict, stopped: str, secs: float) -> dict:
    t, pool = soak.tally, soak.pool
    rss, gpu = growth(soak.samples, "rss_mib"), growth(soak.samples, "gpu_beyond_pool_max_mib")
    server = final.get("server", {})
    checks = {
        "nothing_lost": t.lost == 0,
        "nothing_wrong": t.wrong == 0,
        "no_server_errors": not server.get("errors"),
        "pool_within_budget": pool["over_budget_samples"] == 0,
        "rss_flat": rss is None or rss <= args.rss_tolerance_mib,
        "gpu_memory_flat": gpu is None or gpu <= args.gpu_tolerance_mib,
        "clean_exit": exit_info.get("exit_code", 0) == 0 and exit_info.get("socket_removed", True),
    }
    final_pool = final.get("pool", {})
    return {
        "model": args.model,
        "mode": final.get("mode", args.mode),
        "device": final.get("device"),
        "requests_planned": args.requests,
        "requests_done": t.done,
        "stopped": stopped,
        "server_requests": t.server_requests,
        "by_kind": t.by_kind,
        "lost": t.lost,
        "wrong": t.wrong,
        "disconnects": t.disconnects,
        "greedy_checked": t.greedy_checked,
        "seeded_repeats_checked": t.seeded_repeats_checked,
        "failures": t.failures,
        "server": {k: server.get(k) for k in ("requests_served", "errors", "cancelled", "connections_total")},
        "pool": {
            **pool,
            "captures": final_pool.get("captures"),
            "evictions": final_pool.get("evictions"),
            "capture_failures": final_pool.get("capture_failures"),
            "hits": final_pool.get("hits"),
            "misses": final_pool.get("misses"),
        },
        "memory": {"samples": soak.samples, "rss_growth_mib": rss, "gpu_growth_beyond_pool_mib": gpu},
        "reference_s": round(soak.ref.seconds, 1),
        "reference_kernels": soak.ref.kernels,
        "elapsed_s": round(secs, 1),
        "requests_per_s": round(t.done / secs, 1) if secs else None,
        "server_exit": exit_info,
        "checks": checks,
        "ok": all(checks.values()),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = Server(args)
    try:
        with Client(server.path, timeout=args.request_timeout) as c:
            stats = c.stats()
        soak = Soak(args, server, Reference(args, stats.get("kernels") or {}), stats["vocab_size"])
        start = time.monotonic()
        stopped = soak.run()
        secs = time.monotonic() - start
        final = soak.finish()
    finally:
        exit_info = server.stop()
    summary = summarize(args, soak, final, exit_info, stopped, secs)
    line = json.dumps(summary)
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(summary, indent=2) + "\n")
    print(line)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
