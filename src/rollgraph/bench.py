"""`rollgraph bench`: every execution mode through a real server, side by side, as ratios to the machine's floors.

Each mode gets its own `rollgraph serve` subprocess on a socket in a short temporary folder, driven through
`rollgraph.client.Client` exactly as a user would drive it: streaming greedy `generate` requests, timed on the
client side (TTFT: request sent -> first token frame; ITL: gaps between token frames; TPOT and E2E latency as
vLLM defines them). The server's final frames say which source served each step (pre-captured graph, graph captured
later, eager or compiled fallback) and its `stats` give graph bytes and GPU memory. `--compare-peers` adds plain
transformers generation (`rollgraph.peers`) with the same prompts, as modes `hf-eager` and `hf-static-compile`.

Prompts are random token ids from a seeded generator, the same for every mode, a fresh one per request; consecutive
prompts differ in their first token, so the server's prefix reuse (which needs a shared prefix) never applies. Each
prompt length gets `--warmup` uncounted requests before its measured ones: the first request of a new shape pays for
lazy initialisation, kernel selection and allocator growth (in eager PyTorch it can cost more than the request
itself), and a miss queues a background capture, so the measured requests show the steady state a repeated length
gets, and "Graphs Used" says which graphs served it then. `--warmup 0` measures first requests instead.

The floors (`rollgraph.floors`) are measured first, in a subprocess, before any server holds the GPU; on CPU they
are null and so are the ratios. Everything lands in `--out`: results.json, requests.json (every request's timings),
report.md, latency.png and one log per mode under logs/. Speed is measured here and recorded, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime

from rollgraph.bench_report import PEER_MODES, ModeRun
from rollgraph.bench_server import BenchError, run_peer_mode, run_server_mode
from rollgraph.config import DTYPES, MODES
from rollgraph.floors import Floors, Machine

logger = logging.getLogger(__name__)

DEFAULT_LENGTHS = (10, *range(50, 401, 50))
CLIENT_WAITS = ("block", "spin", "near")
VOCAB_CAP = 30000
FIRST_ID = 3  # ids below this are special tokens (pad/bos/eos) in the Llama family


@dataclass(frozen=True)
class BenchSettings:
    """What to measure and how; `rollgraph bench --help` maps onto these fields."""

    model: str | None = None
    """Built-in name or local folder; None = llama-2-7b (the original's 7B class) on CUDA, llama-tiny on CPU."""
    modes: tuple[str, ...] = MODES
    """Server modes and/or peers (hf-eager, hf-static-compile), in the order they run."""
    prompt_lengths: tuple[int, ...] = DEFAULT_LENGTHS
    new_tokens: int = 64
    repeats: int = 3
    """Measured requests per prompt length (each with its own prompt)."""
    peer_repeats: int | None = None
    """Measured requests per prompt length for the transformers peers, the first of rollgraph's modes' prompts; None
    = `repeats`. The static + compile peer recompiles for every prompt length, so a run that measures rollgraph's
    modes on more requests (a steadier P99) can keep the peers' part short."""
    warmup: int = 1
    """Uncounted requests before the measured ones of each prompt length."""
    seed: int = 0
    """Seed of the prompts' token ids."""
    out: str | None = None
    """Output folder; None = bench/results/<date>_<gpu>_<model>."""
    dtype: str = "auto"
    max_seq_len: int | None = None
    kv_bucket: int | None = None
    graph_memory: float | None = None
    """Pool byte budget in MiB (serve's --graph-memory)."""
    max_graphs: int | None = None
    server_args: tuple[str, ...] = ()
    """Raw extra arguments for every `rollgraph serve`."""
    compare_peers: bool = False
    """Also run hf-eager and hf-static-compile (added after the given modes)."""
    ready_timeout_s: float = 1800.0
    """A server (or peer) that is not ready this long after it started fails its mode."""
    request_timeout_s: float = 600.0
    """Longest wait for any one frame from a server."""
    client_wait: str = "block"
    """How the measuring client waits for a frame: "block" (sleep in recv until the OS wakes it) or "spin" (poll the
    socket without sleeping, one core busy; the OS's wake-up latency leaves the measurement, see client.py)."""

    def __post_init__(self) -> None:
        allowed = (*MODES, *PEER_MODES)
        bad = [m for m in self.modes if m not in allowed]
        if bad or not self.modes or len(set(self.modes)) != len(self.modes):
            raise BenchError(f"--modes must be distinct names from {', '.join(allowed)}; got {','.join(self.modes)}")
        if (
            not self.prompt_lengths
            or min(self.prompt_lengths) < 1
            or len(set(self.prompt_lengths)) != len(self.prompt_lengths)
        ):
            raise BenchError(f"--prompt-lengths must be distinct integers >= 1; got {self.prompt_lengths}")
        for name, value, low in (("--new-tokens", self.new_tokens, 2), ("--repeats", self.repeats, 1)):
            if value < low:
                raise BenchError(f"{name} must be an integer >= {low}; got {value}")
        if self.peer_repeats is not None and not 1 <= self.peer_repeats <= self.repeats:
            raise BenchError(
                f"--peer-repeats must be between 1 and --repeats ({self.repeats}); got {self.peer_repeats}"
            )
        if self.warmup < 0:
            raise BenchError(f"--warmup must be >= 0; got {self.warmup}")
        if self.dtype not in DTYPES:
            raise BenchError(f"--dtype must be one of {', '.join(DTYPES)}; got {self.dtype}")
        if self.client_wait not in CLIENT_WAITS:
            raise BenchError(f"--client-wait must be one of {', '.join(CLIENT_WAITS)}; got {self.client_wait!r}")
        longest = max(self.prompt_lengths) + self.new_tokens
        if self.max_seq_len is not None and self.max_seq_len < longest:
            raise BenchError(f"--max-seq-len {self.max_seq_len} is below the longest prompt + new tokens ({longest})")

    def measured(self, mode: str) -> int:
        """Measured requests per prompt length for `mode`."""
        if mode in PEER_MODES and self.peer_repeats is not None:
            return self.peer_repeats
        return self.repeats

    @property
    def all_modes(self) -> tuple[str, ...]:
        extra = [p for p in PEER_MODES if self.compare_peers and p not in self.modes]
        return (*self.modes, *extra)

    def serve_flags(self) -> list[str]:
        """Engine flags passed to every server (besides --model, --socket and --mode)."""
        flags = ["--dtype", self.dtype]
        for flag, value in (
            ("--max-seq-len", self.max_seq_len),
            ("--kv-bucket", self.kv_bucket),
            ("--graph-memory", self.graph_memory),
            ("--max-graphs", self.max_graphs),
        ):
            if value is not None:
                flags += [flag, str(value)]
        return flags + list(self.server_args)


@dataclass(frozen=True)
class Prompt:
    """One request's prompt; a warm-up (uncounted) has a negative repeat."""

    prompt_len: int
    repeat: int
    ids: tuple[int, ...]

    @property
    def warmup(self) -> bool:
        return self.repeat < 0


# ---------------------------------------------------------------------------------------------------- set-up


def _csv(kind: type):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(x.strip()) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None

    return parse


def build_parser() -> argparse.ArgumentParser:
    d = BenchSettings()
    p = argparse.ArgumentParser(prog="rollgraph bench", description=__doc__.split("\n")[0])
    p.add_argument("--model", help="built-in name or local folder (default: llama-2-7b on CUDA, llama-tiny on CPU)")
    p.add_argument(
        "--modes",
        type=_csv(str),
        default=d.modes,
        help=f"server modes and/or peers ({', '.join(PEER_MODES)}), in run order; default {','.join(d.modes)}",
    )
    p.add_argument("--prompt-lengths", type=_csv(int), default=d.prompt_lengths, help="default 10,50,100,...,400")
    p.add_argument("--new-tokens", type=int, default=d.new_tokens)
    p.add_argument("--repeats", type=int, default=d.repeats, help="measured requests per prompt length")
    p.add_argument(
        "--peer-repeats",
        type=int,
        help="measured requests per prompt length for the transformers peers (default: --repeats; at most that)",
    )
    p.add_argument("--warmup", type=int, default=d.warmup, help="uncounted requests per prompt length")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the random prompts")
    p.add_argument("--out", help="output folder (default bench/results/<date>_<gpu>_<model>)")
    p.add_argument("--compare-peers", action="store_true", help="also measure hf-eager and hf-static-compile")
    g = p.add_argument_group("passed to every `rollgraph serve`")
    g.add_argument("--dtype", default=d.dtype, choices=DTYPES)
    g.add_argument("--max-seq-len", type=int)
    g.add_argument("--kv-bucket", type=int)
    g.add_argument("--graph-memory", type=float, help="pool byte budget in MiB")
    g.add_argument("--max-graphs", type=int)
    g.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="raw extra argument for serve, repeatable; write --server-arg=--on-miss=capture",
    )
    p.add_argument("--ready-timeout", type=float, default=d.ready_timeout_s, help="seconds a server may take to start")
    p.add_argument("--request-timeout", type=float, default=d.request_timeout_s, help="seconds to wait for a frame")
    p.add_argument(
        "--client-wait",
        choices=CLIENT_WAITS,
        default=d.client_wait,
        help="how the measuring client waits for each frame: block in recv, spin polling the socket, or near: sleep "
        "until 1 ms before the next token is due, then spin (default: %(default)s)",
    )
    return p


def parse_settings(argv: list[str]) -> BenchSettings:
    a = build_parser().parse_args(argv)
    return BenchSettings(
        model=a.model,
        modes=a.modes,
        prompt_lengths=a.prompt_lengths,
        new_tokens=a.new_tokens,
        repeats=a.repeats,
        peer_repeats=a.peer_repeats,
        warmup=a.warmup,
        seed=a.seed,
        out=a.out,
        dtype=a.dtype,
        max_seq_len=a.max_seq_len,
        kv_bucket=a.kv_bucket,
        graph_memory=a.graph_memory,
        max_graphs=a.max_graphs,
        server_args=tuple(a.server_arg),
        compare_peers=a.compare_peers,
        ready_timeout_s=a.ready_timeout,
        request_timeout_s=a.request_timeout,
        client_wait=a.client_wait,
    )


def vocab_size(model: str) -> int:
    """The model's vocabulary size, read without loading it; BenchError if `model` is neither a built-in nor a
    folder whose config.json says."""
    from rollgraph.architectures import BUILTINS

    if model in BUILTINS:
        return int(BUILTINS[model].config["vocab_size"])
    path = os.path.join(model, "config.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
        vocab = cfg.get("vocab_size") or cfg.get("text_config", {}).get("vocab_size")
        if isinstance(vocab, int):
            return vocab
    raise BenchError(
        f"--model {model!r} is neither a built-in architecture ({', '.join(BUILTINS)}) nor a local folder whose "
        "config.json gives vocab_size"
    )


def make_prompts(settings: BenchSettings, vocab: int) -> tuple[Prompt, ...]:
    """Seeded random prompts in [3, min(vocab, 30000)), in the order every mode sends them: per length, the warm-ups
    then the measured ones. No two consecutive prompts share their first token."""
    rng, high, last = random.Random(settings.seed), min(vocab, VOCAB_CAP), -1
    if high - FIRST_ID < 2:
        raise BenchError(f"the model's vocabulary ({vocab}) is too small for random prompts")

    def draw(n: int) -> tuple[int, ...]:
        nonlocal last
        ids = [rng.randrange(FIRST_ID, high) for _ in range(n)]
        while ids[0] == last:
            ids[0] = rng.randrange(FIRST_ID, high)
        last = ids[0]
        return tuple(ids)

    repeats = range(-settings.warmup, settings.repeats)
    return tuple(Prompt(n, r, draw(n)) for n in settings.prompt_lengths for r in repeats)


def measure_machine(timeout_s: float = 600.0) -> Machine:
    """Run `python -m rollgraph.floors` and read its JSON line; BenchError with its stderr if it fails."""
    cmd = [sys.executable, "-m", "rollgraph.floors"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"measuring the machine's floors took over {timeout_s:g} s") from None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
        raise BenchError(f"measuring the machine's floors failed (exit {proc.returncode}):\n{tail}")
    return Machine(**json.loads(lines[-1]))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "unknown"


def default_out(model: str, machine: Machine, now: datetime) -> str:
    name = os.path.basename(os.path.normpath(model))
    return os.path.join("bench", "results", f"{now:%Y-%m-%d_%H%M%S}_{_slug(machine.device)}_{_slug(name)}")


# ---------------------------------------------------------------------------------------------------- the run

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def model_floors(machine: Machine, runs: list[ModeRun], model: str, dtype: str) -> Floors:
    """The floors for this model: weight bytes from a server's stats (the bytes a decode step reads), else a
    peer's, else the built-in architecture's parameter count; parameters = weight bytes / element size."""
    from rollgraph.architectures import BUILTINS, param_count

    infos = [r.info for r in runs if r.kind == "server"] + [r.info for r in runs if r.kind == "peer"]
    weight_bytes = next((i["weight_bytes"] for i in infos if i.get("weight_bytes")), None)
    dtype = next((i["dtype"] for i in infos if i.get("dtype")), None) or dtype
    size = _DTYPE_BYTES.get(dtype, 2)
    if weight_bytes is None and model in BUILTINS:
        weight_bytes = param_count(BUILTINS[model]) * size
    params = weight_bytes // size if weight_bytes else None
    return Floors(weight_bytes, params, machine.copy_bandwidth, machine.matmul_flops)


def run_modes(
    settings: BenchSettings,
    prompts: tuple[Prompt, ...],
    machine: Machine,
    out: str,
    on_mode: Callable[[list[ModeRun]], None],
) -> list[ModeRun]:
    """Each mode in turn, its server or peer process always stopped before the next starts; `on_mode` gets the runs
    so far after each mode (the outputs are rewritten then, so a run cut short keeps what it measured)."""
    from tqdm import tqdm

    workdir = tempfile.mkdtemp(dir="/tmp", prefix="rgb")
    per_mode = {mode: len(prompts_for(settings, mode, prompts)) for mode in settings.all_modes}
    runs = []
    try:
        prompts_file = os.path.join(workdir, "prompts.json")
        with open(prompts_file, "w", encoding="utf-8") as f:
            json.dump([asdict(p) for p in prompts_for(settings, PEER_MODES[0], prompts)], f)
        with tqdm(total=sum(per_mode.values()), unit="req", file=sys.stderr) as bar:
            for i, mode in enumerate(settings.all_modes):
                bar.set_description(mode)
                done_before = bar.n
                log = os.path.join(out, "logs", f"{_slug(mode)}.log")
                if mode in PEER_MODES:
                    run = run_peer_mode(settings, mode, prompts_file, machine.cuda, log, bar)
                else:
                    run = run_server_mode(settings, mode, prompts, os.path.join(workdir, f"{i}.sock"), log, bar)
                bar.update(done_before + per_mode[mode] - bar.n)  # a failed or skipped mode's remaining requests
                if run.status == "failed":
                    logger.error("mode %s failed: %s", mode, run.error)
                runs.append(run)
                on_mode(runs)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return runs


def prompts_for(settings: BenchSettings, mode: str, prompts: tuple[Prompt, ...]) -> tuple[Prompt, ...]:
    """The prompts `mode` sends: the warm-ups and its first `settings.measured(mode)` measured ones per length."""
    return tuple(p for p in prompts if p.repeat < settings.measured(mode))


def write_outputs(results: dict, runs: list[ModeRun], out: str) -> None:
    from rollgraph.bench_tables import markdown, plot

    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(out, "requests.json"), "w", encoding="utf-8") as f:
        json.dump({r.mode: [asdict(s) for s in r.samples] for r in runs}, f)
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write(markdown(results))
    try:
        plot(results, os.path.join(out, "latency.png"))
    except ImportError as exc:
        logger.warning("no plot: %s (install rollgraph[bench] for matplotlib)", exc)


def run_bench(settings: BenchSettings, argv: list[str]) -> int:
    """Measure, write the outputs, print the tables and the summary line; 1 if any mode failed, else 0."""
    from rollgraph.bench_report import build_results, summary
    from rollgraph.bench_tables import markdown

    now = datetime.now().astimezone()
    if settings.model is not None:
        vocab_size(settings.model)  # a wrong --model fails before the floors are measured
    machine = measure_machine()
    logger.info("machine: %s", machine)
    if settings.model is None:
        settings = replace(settings, model="llama-2-7b" if machine.cuda else "llama-tiny")
        logger.warning("no --model given: benchmarking %s", settings.model)
    assert settings.model is not None
    prompts = make_prompts(settings, vocab_size(settings.model))
    out = settings.out or default_out(settings.model, machine, now)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)

    def results_of(runs: list[ModeRun]) -> dict:
        assert settings.model is not None
        return build_results(
            settings=asdict(settings),
            command=shlex.join(["rollgraph", "bench", *argv]),
            machine=machine,
            floors=model_floors(machine, runs, settings.model, settings.dtype),
            runs=runs,
            out=out,
            date=now.isoformat(timespec="seconds"),
        )

    runs = run_modes(settings, prompts, machine, out, lambda runs: write_outputs(results_of(runs), runs, out))
    results = results_of(runs)
    print(markdown(results))
    print(json.dumps(summary(results)), flush=True)
    return 1 if any(r.status == "failed" for r in runs) else 0


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, so the `finally`s that stop the servers run (the default action would kill
    this process at once and leave them running)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str]) -> int:
    """`rollgraph bench ARGS`: the exit code (2 for bad arguments, via the CLI's RollgraphError handling).

    A leading `--` is dropped: the CLI hands over everything after `bench`, and `rollgraph bench -- --model M`
    is how options reach here while the CLI's catch-all argument does not accept a leading option."""
    argv = list(argv[1:] if argv[:1] == ["--"] else argv)
    settings = parse_settings(argv)
    with _sigterm_as_interrupt():
        return run_bench(settings, argv)
