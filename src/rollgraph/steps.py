"""Step functions over static buffers: what a graph captures and what eager mode runs, one and the same code.

A step reads its inputs from `StepBuffers` and writes its results back into them (the sampled token becomes the next
step's input, positions advance in place), so consecutive decode steps need no host-to-device copy at all, and a
replayed graph and an eager call are interchangeable for the same key.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import torch

from rollgraph import tune_timing
from rollgraph.graphs import GraphKey
from rollgraph.sampling import greedy, sample

logger = logging.getLogger(__name__)


class StepBuffers:
    """Every tensor a step reads or writes, allocated once at the largest size and sliced per key.

    A prefill's inputs come from the host: its step begins by copying `host_prompt` and `host_prompt_len` (pinned on
    CUDA) into `prompt` and `prompt_len`. Captured, those copies are memcpy nodes at the head of the graph that read
    the host buffers when the graph runs, so a request writes its ids through the numpy views (`prompt_ids`) and
    launches, with no torch call in between (perf-notes v44). The host buffers may be rewritten once the last
    prefill's token has been read back."""

    def __init__(self, max_batch: int, max_seq_len: int, vocab: int, device: torch.device) -> None:
        i64 = dict(dtype=torch.int64, device=device)
        f32 = dict(dtype=torch.float32, device=device)
        pinned = dict(dtype=torch.int64, pin_memory=device.type == "cuda")
        self.host_prompt = torch.zeros(max_batch, max_seq_len, **pinned)
        self.host_prompt_len = torch.ones(max_batch, **pinned)
        self.prompt_ids, self.prompt_lens = self.host_prompt.numpy(), self.host_prompt_len.numpy()  # same memory
        self.prompt = torch.zeros(max_batch, max_seq_len, **i64)
        self.prompt_len = torch.ones(max_batch, **i64)
        self.tokens = torch.zeros(max_batch, **i64)
        self.positions = torch.zeros(max_batch, **i64)
        self.temperature = torch.zeros(max_batch, **f32)
        self.top_k = torch.zeros(max_batch, **i64)
        self.top_p = torch.ones(max_batch, **f32)
        self.seeds = torch.zeros(max_batch, **i64)
        self.logits = torch.zeros(max_batch, vocab, **f32)
        # Steps write K/V into the cache only while this is set; a capture's warm-ups clear it, so they leave every
        # cache row as it was (row 0 may hold a sequence that prefix reuse will extend). Graphs read it at replay.
        self.write_kv = torch.ones(1, dtype=torch.bool, device=device)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.Tensor)}

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Copies of every buffer, so a capture's warm-ups cannot disturb a request in flight."""
        return {k: v.clone() for k, v in self.tensors().items()}

    def restore(self, snap: dict[str, torch.Tensor]) -> None:
        for k, v in snap.items():
            getattr(self, k).copy_(v)


class Steps:
    """Builds the callable for a GraphKey: eager, or compiled with torch.compile when asked."""

    def __init__(
        self, runner, buffers: StepBuffers, compile: bool = False, cache_dir: str | None = None, graphs: bool = True
    ) -> None:
        self.runner = runner
        self.buf = buffers
        self.compiled = compile
        if compile:
            # The runner compiles its layer functions; token choice stays eager (inductor in torch 2.11 cannot
            # generate the sampler's sort + cumsum + argmax over a 128k vocabulary: "NYI TritonSplitDimKernel").
            # Under compile+graphs the graph captures both parts anyway.
            _raise_recompile_limits()
            _generate_batch1_matmuls()
            if cache_dir:  # inductor's on-disk cache: a second start reuses the first one's compiled kernels
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
            runner.compile(graphs=graphs)

    def fn(self, key: GraphKey) -> Callable[[], None]:
        """A no-argument step for `key`, reading and writing the shared buffers."""
        b, n, smp, buf, r = key.batch, key.length, key.sampling, self.buf, self.runner
        if key.phase == "decode":
            core = _decode_core

            def step() -> None:
                logits, nxt = core(r, buf.tokens[:b], buf.positions[:b], n, buf.write_kv, smp, *_sampling_args(buf, b))
                buf.logits[:b].copy_(logits)
                buf.tokens[:b].copy_(nxt)
                buf.positions[:b].add_(1)

        elif key.phase == "prefill":
            core = _prefill_core

            # Row 0 alone is one contiguous copy; more rows are copied whole (a strided copy would go through a
            # pageable staging buffer, which a capture cannot read later).
            host, dev = (
                (buf.host_prompt[:1, :n], buf.prompt[:1, :n]) if b == 1 else (buf.host_prompt[:b], buf.prompt[:b])
            )

            def step() -> None:
                dev.copy_(host, non_blocking=True)
                buf.prompt_len[:b].copy_(buf.host_prompt_len[:b], non_blocking=True)
                lens = buf.prompt_len[:b]
                logits, nxt = core(r, buf.prompt[:b, :n], lens, buf.write_kv, smp, *_sampling_args(buf, b))
                buf.logits[:b].copy_(logits)
                buf.tokens[:b].copy_(nxt)
                buf.positions[:b].copy_(lens)

        else:
            core = _full_core

            def step() -> None:
                logits, nxt = core(r, buf.prompt[:b, :n], smp, *_sampling_args(buf, b))
                buf.logits[:b].copy_(logits)
                buf.tokens[:b].copy_(nxt)

        return step

    def prepare_warmup(self, key: GraphKey) -> None:
        """Harmless inputs for a capture's warm-up runs (see CudaGraphStep): no cache entry is written."""
        b, buf = key.batch, self.buf
        buf.write_kv.fill_(False)
        buf.tokens[:b].zero_()
        buf.positions[:b].fill_(self.runner.max_seq_len - 1)
        buf.prompt[:b, : key.length].zero_()
        buf.prompt_len[:b].fill_(key.length)
        buf.prompt_ids[:b, : key.length] = 0  # what a prefill step copies in first
        buf.prompt_lens[:b] = key.length


def run_once_in_threads(runner, keys: Iterable[GraphKey], vocab: int, device: torch.device, threads: int) -> int:
    """Run each key's eager step once from `threads` threads, each with private buffers and the cache write off;
    returns how many steps failed (logged; a capture of that key meets the same error and handles it).

    Why: every Triton kernel is built at its first call, and a capture's warm-ups make those calls one after another.
    On a fresh H100, 14 builds took ~9.9 s of the 11.3 s that capturing llama-2-7b's 17 default graphs took, and the
    same capture with every kernel already built took 1.45 s (perf-notes v27). Builds started from threads overlap
    (eight took 0.42 s against 1.41 s one by one), so the keys' steps run here first and the captures then find
    their kernels built. Only for steps that run eagerly: compiled ones are built by inductor, which has its own
    workers. Results are thrown away: no cache row is written, and the engine's own buffers are not touched.
    """
    keys = list(keys)

    def run(key: GraphKey) -> bool:
        try:
            steps = Steps(runner, StepBuffers(key.batch, runner.max_seq_len, vocab, device))
            with torch.no_grad():  # grad mode is per thread
                steps.prepare_warmup(key)
                steps.fn(key)()
        except Exception as exc:  # the capture will meet it again and keep the key eager
            logger.warning("building the kernels of %s failed (%s: %s)", key, type(exc).__name__, exc)
            return False
        return True

    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="rollgraph-build") as pool:
        done = list(pool.map(run, _spread(keys)))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return done.count(False)


def _spread(keys: list[GraphKey]) -> list[GraphKey]:
    """Keys in an order whose first few are likely to need different kernels: the shortest and longest of each
    phase first (decode's longest buckets also split the cache and merge), then the rest, shortest first."""
    first: dict[GraphKey, None] = {}
    for phase in sorted({k.phase for k in keys}):
        same = sorted((k for k in keys if k.phase == phase), key=lambda k: (k.length, k.batch, k.sampling))
        first.update(dict.fromkeys((same[0], same[-1])))
    rest = sorted((k for k in keys if k not in first), key=lambda k: (k.length, k.phase, k.batch, k.sampling))
    return [*first, *rest]


def _sampling_args(buf: StepBuffers, b: int):
    return buf.temperature[:b], buf.top_k[:b], buf.top_p[:b], buf.seeds[:b]


def _choose(logits, steps, smp: bool, temperature, top_k, top_p, seeds):
    if smp:
        return sample(logits, temperature, top_k, top_p, seeds, steps)
    return greedy(logits)


def _decode_core(runner, tokens, positions, kv_len: int, write_kv, smp: bool, *sampling):
    logits = runner.decode(tokens, positions, kv_len, write_kv)
    return logits, _choose(logits, positions + 1, smp, *sampling)


def _prefill_core(runner, prompt, lens, write_kv, smp: bool, *sampling):
    logits = runner.prefill(prompt, 0, lens - 1, write_kv)
    return logits, _choose(logits, lens, smp, *sampling)


def _full_core(runner, prompt, smp: bool, *sampling):
    logits = runner.full(prompt)
    steps = torch.full_like(sampling[-1], prompt.shape[1])
    return logits, _choose(logits, steps, smp, *sampling)


def _generate_batch1_matmuls() -> None:
    """Inductor's coordinate-descent tuning, which also makes it write one-row matmuls as generated reductions
    instead of calling cuBLAS (the trick gpt-fast relies on). Measured on an H100 (docs/perf-notes.md, v4):
    decode 1.30 -> 1.11 ms on llama-3.2-1b and 5.57 -> 4.88 ms on llama-2-7b, for ~30 s more compile time once
    (the on-disk compile cache keeps the tuned kernels). Process-wide, like every inductor setting."""
    import torch._inductor.config as inductor_config

    inductor_config.coordinate_descent_tuning = True
    tune_timing.install()  # configs timed as a step runs them: after other reads, by median (perf-notes v50)
    if not static_launcher_keeps_tuning(torch.__version__):
        inductor_config.use_static_cuda_launcher = False


def static_launcher_keeps_tuning(version: str) -> bool:
    """Whether inductor's static CUDA launcher keeps the tuned configs of kernels it loads from the compile cache.

    In torch 2.11 it does not: a kernel whose graph comes from the FX graph cache is rebuilt from the static launcher's
    bundle, and `CachingAutotuner.recheck_autotune_cache` drops the mark that coordinate descent found its config
    (and skips single-config kernels altogether), so every process tunes again. On an H100 two warm processes
    benchmarked 111 and 126 configs, and the chosen down-projection kernel of llama-2-7b took 36 µs in one and 38.5
    in the other (perf-notes v18). torch 2.12 keeps the mark. Where it is dropped, the engine turns the static
    launcher off: kernels then load through the autotune cache itself, which keeps it. The cost is host time per
    launch: none inside CUDA graphs, a few microseconds per kernel in `compile` mode, which runs without graphs."""
    major, minor = (int(part) for part in version.split(".")[:2])
    return (major, minor) >= (2, 12)


def _raise_recompile_limits() -> None:
    """Every (phase, batch, length) is its own static shape; allow one compiled variant per graph key."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 256))
    if hasattr(cfg, "accumulated_recompile_limit"):
        cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 4096)
