"""The engine: prefill and decode over a static KV cache, each step executed eagerly, compiled or from the pool.

It takes token ids and yields token ids; it knows nothing about text, sockets or clients. One request runs at a time
(rows of the cache beyond 0 are there for batching); every method is called from one thread, the engine thread.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import NamedTuple

import torch

from rollgraph import blas_choice, host_marks
from rollgraph.config import EngineConfig, PoolConfig
from rollgraph.errors import RequestError
from rollgraph.generation import Generation, GenerationResult
from rollgraph.graphs import CudaGraphStep, GraphKey, GraphPool
from rollgraph.host_tokens import HostTokens
from rollgraph.models import LoadedModel
from rollgraph.params import GenerationParams, SamplingParams, TokenIds
from rollgraph.steps import StepBuffers, Steps, run_once_in_threads

logger = logging.getLogger(__name__)

BUILD_THREADS = 8
"""Threads that run the default keys' eager steps once before the captures, so their Triton kernels build in parallel
(steps.run_once_in_threads); 0 or 1 builds them one after another, as the captures would."""
SEED_POOL = PoolConfig(max_graphs=50, max_bytes=1 << 62, on_miss="capture")


class _Launched(NamedTuple):
    """A generation once token 0's step is launched: the prompt, the host time it began, token 0's handle (None in
    seed mode, whose loop launches every step), how step i runs, and whether step i replays a graph."""

    ids: list[int]
    start: float
    first: int | None
    step: Callable[[int], None]
    replays: Callable[[int], bool] | None


class Engine:
    """Serve one model: validate requests, run prefill/decode, and keep the graph pool."""

    def __init__(self, model: LoadedModel, config: EngineConfig, runner=None) -> None:
        from rollgraph.runners import make_runner

        self.model, self.config = model, config
        self.device = model.device
        self.max_seq_len = min(config.max_seq_len, model.max_position_embeddings)
        self.vocab_size = model.vocab_size
        attention, matmul = _kernel_choices(config)
        self.runner = runner or make_runner(model, config.max_batch, self.max_seq_len, config.runner, attention, matmul)
        if self.device.type == "cuda":  # hand back what building the fused weights freed (unfused copies)
            torch.cuda.empty_cache()
        self.buffers = StepBuffers(config.max_batch, self.max_seq_len, self.vocab_size, self.device)
        compile_ = config.uses_compile and getattr(self.runner, "compilable", False)
        if config.uses_compile and not compile_:
            logger.warning("mode %s: this model's runner cannot be compiled; its steps run eagerly", config.mode)
        self.steps = Steps(self.runner, self.buffers, compile_, config.compile_cache_dir, graphs=config.uses_graphs)
        self._direct = "compiled" if compile_ else "eager"  # what serves a step no graph serves
        self._fns: dict[GraphKey, object] = {}
        self._row_tokens: list[int] | None = None  # ids whose KV row 0 holds, for prefix reuse
        self._capture_stream: torch.cuda.Stream | None = None
        self._shared_pool: tuple | None = None  # memory pool of all prefill graphs with PoolConfig.share_prefill_pool
        self.host = HostTokens(self.device)
        self._ahead: tuple[int, SamplingParams, str] | None = None  # speculated step: handle, sampling, source
        self.counters: Counter = Counter()  # how requests started: prefill, extend, ahead_hit, ahead_wasted
        self.requests = 0
        self.kernel_build_s = 0.0  # warm_up's kernel builds from threads, before the captures (_build_kernels)
        self.blas_timings: dict = {}  # warm_up's timings of prefill products per library (blas_choice.choose)
        self.graphs_enabled = config.uses_graphs and self.device.type == "cuda"
        if config.uses_graphs and not self.graphs_enabled:
            logger.warning("mode %s: no CUDA device, so CUDA graphs are off and every step runs eagerly", config.mode)
        pool_cfg = SEED_POOL if config.mode == "seed" and config.pool == PoolConfig() else config.pool
        self.pool = GraphPool(self._capture, pool_cfg)

    # ---- set-up ------------------------------------------------------------------------------------------------

    def default_keys(self) -> list[GraphKey]:
        """The pre-capture set: every decode KV bucket and prefill bucket per batch bucket (seed: lengths 1..N)."""
        cfg = self.config
        if cfg.mode == "seed":
            keys = [GraphKey("full", 1, n) for n in range(1, min(cfg.seed_precapture, self.max_seq_len) + 1)]
        else:
            keys = self._bucket_keys()
        return [k for k in keys if k.phase in self.runner.graph_phases]

    def _bucket_keys(self) -> list[GraphKey]:
        cfg = self.config
        keys = []
        samplers = (False, True) if cfg.precapture_sampling else (False,)
        for b in cfg.batch_buckets:
            for smp in samplers:
                keys += [GraphKey("decode", b, n, smp) for n in self.kv_buckets()]
                keys += [GraphKey("prefill", b, n, smp) for n in cfg.prefill_buckets if n <= self.max_seq_len]
        return keys

    def kv_buckets(self) -> list[int]:
        step = self.config.kv_bucket or self.max_seq_len
        return sorted({min(n, self.max_seq_len) for n in range(step, self.max_seq_len + step, step)})

    def warm_up(self, progress: bool = True) -> None:
        """Pre-capture the default key set (graph modes on CUDA); compile modes compile them instead. First, on CUDA,
        the runner times its prefill products at the bucket sizes through both BLAS libraries and, from 256 rows,
        cuBLASLt's ranked algorithms (blas_choice)."""
        self._choose_blas()
        if self.graphs_enabled and self.config.precapture:
            self._build_kernels()
            self.pool.precapture(self.default_keys(), progress=progress)
        elif self.config.uses_compile and self.config.precapture and self.device.type == "cuda":
            start = time.perf_counter()
            snap = self.buffers.snapshot()
            for key in self.default_keys():
                self.steps.prepare_warmup(key)
                self._fn(key)()
            self.buffers.restore(snap)
            secs, cache = time.perf_counter() - start, compile_cache_counts()
            logger.info("compiled %d step shapes in %.1f s (inductor cache: %s)", len(self.default_keys()), secs, cache)

    def _choose_blas(self) -> None:
        choose = getattr(self.runner, "choose_blas", None)
        if choose is None or self.device.type != "cuda" or self.config.mode == "seed":
            return
        rows = sorted({k.batch * k.length for k in self._bucket_keys() if k.phase == "prefill"})
        # the plain products too where steps replay graphs or run eagerly (the same kernels either way), not where
        # they run compiled without graphs: there the op's dispatch adds host time to a host-bound step
        plain = self.graphs_enabled or self._direct == "eager"
        self.blas_timings = choose(rows, plain=plain, store=self.config.blas_store)

    def _build_kernels(self) -> None:
        """Build the default keys' Triton kernels from threads before capturing (steps.run_once_in_threads); only
        where steps run eagerly and the runner has kernels of its own."""
        if BUILD_THREADS < 2 or self._direct != "eager" or not getattr(self.runner, "triton_kernels", False):
            return
        start, keys = time.perf_counter(), self.default_keys()
        failed = run_once_in_threads(self.runner, keys, self.vocab_size, self.device, BUILD_THREADS)
        # Each thread got cuBLAS workspaces of its own (tens of MiB apiece) that outlive it; then the activations.
        getattr(torch._C, "_cuda_clearCublasWorkspaces", lambda: None)()
        torch.cuda.empty_cache()
        secs = self.kernel_build_s = time.perf_counter() - start
        logger.info("ran %d steps from %d threads to build their kernels in %.1f s", len(keys), BUILD_THREADS, secs)
        if failed:
            logger.warning("%d of those steps failed; their captures will say why", failed)

    def idle_work(self) -> bool:
        """Capture one queued key; call between requests. True if a capture ran."""
        if not self.graphs_enabled or not self.pool.pending:
            return False
        return self.pool.capture_pending(1) > 0

    # ---- capture -----------------------------------------------------------------------------------------------

    def _fn(self, key: GraphKey):
        fn = self._fns.get(key)
        if fn is None:
            fn = self._fns[key] = self.steps.fn(key)
        return fn

    def _capture(self, key: GraphKey) -> CudaGraphStep:
        """Capture `key` on the engine's capture stream; every step buffer is put back as it was afterwards."""
        if self._capture_stream is None:
            self._capture_stream = torch.cuda.Stream(self.device)
        snap = self.buffers.snapshot()
        try:
            shared = None
            if self.pool.shares_memory(key):  # one handle for the engine's life; PyTorch remakes an emptied pool
                self._shared_pool = self._shared_pool or torch.cuda.graph_pool_handle()
                shared = self._shared_pool
            return CudaGraphStep(self._fn(key), lambda: self.steps.prepare_warmup(key), self._capture_stream, shared)
        finally:
            self.buffers.restore(snap)  # write_kv on again; warm-ups wrote no cache entry, so row 0 still holds

    def _replays(self, key: GraphKey) -> bool:
        """Whether `key` runs as a graph replay now: a launch that costs microseconds, not the step's own time."""
        return self.graphs_enabled and key.phase in self.runner.graph_phases and key in self.pool

    def _execute(self, key: GraphKey) -> str:
        """Run one step for `key`: replay its graph if the pool holds it, else run it directly; returns the source."""
        capturable = self.graphs_enabled and key.phase in self.runner.graph_phases
        entry = self.pool.get(key) if capturable else None
        if entry is not None:
            entry.graph.replay()
            return entry.source
        self._fn(key)()
        return self._direct

    # ---- requests ----------------------------------------------------------------------------------------------

    def validate(self, params: GenerationParams) -> None:
        """Raise RequestError if the request cannot run on this model; nothing is changed."""
        ids = params.input_ids  # all ints: GenerationParams checked their types, so only the range is left
        known = type(ids) is TokenIds  # the protocol found them in [0, ids.top]
        if (ids.top if known else max(ids)) >= self.vocab_size or (not known and min(ids) < 0):
            bad = next(t for t in ids if not 0 <= t < self.vocab_size)
            raise RequestError(
                f"token id {int(bad)} is out of range: ids must be in [0, {self.vocab_size})", code="invalid_token"
            )
        if params.max_new_tokens > self.config.max_new_tokens_cap:
            raise RequestError(
                f"max_new_tokens {params.max_new_tokens} is over this server's cap of {self.config.max_new_tokens_cap}"
            )
        total = len(params.input_ids) + params.max_new_tokens
        if total > self.max_seq_len:
            raise RequestError(
                f"prompt ({len(params.input_ids)} tokens) + max_new_tokens ({params.max_new_tokens}) = {total} is "
                f"over the maximum sequence length {self.max_seq_len}",
                code="too_long",
            )

    def generate(self, params: GenerationParams) -> Generation:
        """Validate, then return an iterator of the generated token ids (token 0's step launches at the first next)."""
        params = self._checked(params)
        result = GenerationResult(prompt_tokens=len(params.input_ids))
        return Generation(self._run(params, result), result)

    def start(self, params: GenerationParams, validated: bool = False) -> Generation:
        """`generate`, with token 0's step launched before this returns: the GPU starts on it while the caller
        builds whatever goes around the generation (the engine thread, for a request it read itself; perf-notes
        v77). Close the result if it is not iterated: a launched step that nobody reads only leaves row 0 unheld.
        Raises RequestError as `generate` does, unless `validated` says the caller has just run `validate(params)`;
        a launch that fails raises at the first next(), as it would there."""
        params = self._checked(params, validated)
        result = GenerationResult(prompt_tokens=len(params.input_ids))
        try:
            launched = self._launch(params, result)
        except Exception as exc:
            return Generation(_raising(exc), result)
        return Generation(self._tokens(params, result, launched), result)

    def _checked(self, params: GenerationParams, validated: bool = False) -> GenerationParams:
        if not validated:
            self.validate(params)
        if params.sampling.seed is None and not params.sampling.greedy:
            params = replace(params, sampling=replace(params.sampling, seed=random.getrandbits(62)))
        return params

    def next_token(self, input_ids: list[int]) -> int:
        """The original design's message: the greedy next token after `input_ids` (prefix reuse applies)."""
        return next(iter(self.generate(GenerationParams(tuple(input_ids), max_new_tokens=1))))

    def _set_sampling(self, params: GenerationParams) -> None:
        s, buf = params.sampling, self.buffers
        buf.temperature[0] = s.temperature
        buf.top_k[0] = s.top_k
        buf.top_p[0] = s.top_p
        buf.seeds[0] = s.seed or 0

    def _run(self, params: GenerationParams, result: GenerationResult) -> Iterator[int]:
        yield from self._tokens(params, result, self._launch(params, result))

    def _launch(self, params: GenerationParams, result: GenerationResult) -> _Launched:
        """Launch whatever yields token 0 (seed mode: nothing yet, its loop launches every step)."""
        host_marks.mark("launch")
        self.requests += 1
        ids, smp, start = list(params.input_ids), not params.sampling.greedy, time.perf_counter()
        held, ahead = self._row_tokens, self._ahead
        self._row_tokens = self._ahead = None  # row 0 is in flux until this request ends well
        if smp:  # greedy steps read no sampling buffer: four fewer copies before the prefill starts
            self._set_sampling(params)
        if self.config.mode == "seed":
            return _Launched(ids, start, None, self._seed_step(ids, smp, result), None)
        first = self._first_token(ids, params, held, ahead, result)
        result.launch_ms = (time.perf_counter() - start) * 1e3

        def key(i: int) -> GraphKey:
            return GraphKey("decode", 1, self._kv_len(len(ids) + i - 1), smp)

        def step(i: int) -> None:
            result.sources[self._execute(key(i))] += 1

        def replays(i: int) -> bool:
            return self._replays(key(i))

        return _Launched(ids, start, first, step, replays)

    def _tokens(self, params: GenerationParams, result: GenerationResult, launched: _Launched) -> Iterator[int]:
        """The token ids after `_launch`; row 0 is held for reuse only if the generation ends well."""
        ids, start, first, step, replays = launched
        ok = False
        try:
            yield from self._loop(params, result, step, start, first, replays)
            ok = True
        except GeneratorExit:
            ok = True
            raise
        finally:
            if ok and self.config.mode != "seed":
                self._keep_row(ids, params, result)

    def _seed_step(self, ids: list[int], smp: bool, result: GenerationResult):
        """The original algorithm: every token recomputes the whole sequence, one graph per exact length."""
        seq = list(ids)

        def step(i: int) -> None:
            if i:
                seq.append(result.output_tokens[-1])
            self.buffers.prompt[0, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
            result.sources[self._execute(GraphKey("full", 1, len(seq), smp))] += 1

        return step

    def _loop(
        self, params: GenerationParams, result: GenerationResult, step, start: float, first, replays
    ) -> Iterator[int]:
        """Run steps and yield tokens until a stop token or max_new_tokens; record per-step host timings.

        `first` is the handle of token 0 when the caller has already launched its step (None: step(0) does it).
        Where step i+1 replays a graph (`replays(i + 1)`; None in seed mode, whose next input is the token itself),
        it is launched before token i is read back, so the GPU never waits for Python between steps; after
        a stop token that one extra step is thrown away (it only writes the cache past the sequence's end). A step
        run op by op is launched only after token i is out: its launch takes as long as the step, and token i
        would wait for it.
        """
        stops, n = set(params.stop_token_ids), params.max_new_tokens
        slots: deque[int] = deque()
        launched = 0

        def launch() -> None:
            nonlocal launched
            if launched or first is None:
                step(launched)
                slots.append(self.host.push(self.buffers.tokens[:1]))
            else:
                slots.append(first)
            launched += 1

        launch()
        for i in range(n):
            if replays is not None and launched < n and replays(launched):
                launch()
            tok = self.host.pop(slots.popleft())
            now = time.perf_counter()
            if i:
                result.step_ms.append((now - start) * 1e3)
            else:
                result.prefill_ms = (now - start) * 1e3
                host_marks.mark("token0")
            start = now
            result.output_tokens.append(tok)
            if tok in stops:
                result.finish_reason = "stop"
            elif i == n - 1:
                result.finish_reason = "length"
            yield tok
            if result.finish_reason:
                return
            if launched == i + 1:
                launch()

    def _kv_len(self, pos: int) -> int:
        step = self.config.kv_bucket or self.max_seq_len
        return min(-(-(pos + 1) // step) * step, self.max_seq_len)

    # ---- row 0 between requests: prefix reuse and the speculated step --------------------------------------------

    def _first_token(self, ids: list[int], params: GenerationParams, held, ahead, result: GenerationResult) -> int:
        """Launch whatever yields token 0 and return its handle, reusing row 0's cache where that is exact.

        Reuse never changes a token: it runs exactly the decode step that streaming generation would have run.
        (1) ids equal the held sequence and a step for it was speculated with the same sampling: take its token.
        (2) ids are the held sequence plus one token: one decode step. Anything else: a fresh prefill.
        """
        buf, smp = self.buffers, not params.sampling.greedy
        if ahead is not None and held == ids and ahead[1] == params.sampling:
            self.counters["ahead_hit"] += 1
            result.prefix_reused = len(ids)
            result.sources[ahead[2]] += 1
            return ahead[0]
        if ahead is not None:
            self.counters["ahead_wasted"] += 1
        if held is not None and len(ids) == len(held) + 1 and ids[:-1] == held:
            self.counters["extend"] += 1
            result.prefix_reused = len(held)
            buf.tokens[0] = ids[-1]
            buf.positions[0] = len(held)
            result.sources[self._execute(GraphKey("decode", 1, self._kv_len(len(held)), smp))] += 1
        else:
            self.counters["prefill"] += 1
            self._prefill(ids, smp, result)
        handle = self.host.push(buf.tokens[:1])
        host_marks.mark("pushed")
        return handle

    def _keep_row(self, ids: list[int], params: GenerationParams, result: GenerationResult) -> None:
        """Remember what row 0 holds; after a one-token request, speculate the step its resend would ask for.

        The original client asks for one token at a time and resends the sequence with that token appended, so
        the decode step for it runs while the reply travels, and the resend finds its token already made. Only a
        step that replays a graph is speculated (as in `_loop`): one run op by op would hold the request's final
        frame for the whole launch, about as long as the step, and the resend then extends the row instead.
        """
        out = result.output_tokens
        row = ids + out[:-1]  # the last token has not been fed yet
        self._row_tokens = row
        if params.max_new_tokens != 1 or result.finish_reason != "length" or len(row) + 2 > self.max_seq_len:
            return
        key = GraphKey("decode", 1, self._kv_len(len(row)), not params.sampling.greedy)
        if not self._replays(key):
            return
        # The last step left out[-1] in the token buffer and its position in the position buffer.
        source = self._execute(key)
        self._ahead = (self.host.push(self.buffers.tokens[:1]), params.sampling, source)
        self._row_tokens = [*row, out[-1]]

    def _prefill(self, ids: list[int], smp: bool, result: GenerationResult) -> None:
        """Fill row 0 with `ids` from position 0 and leave the first sampled token in the buffers."""
        n = len(ids)
        bucket = next((b for b in self.config.prefill_buckets if n <= b <= self.max_seq_len), None)
        host_marks.mark("prefill")
        self._put_prompt(ids, bucket or n)
        host_marks.mark("prompt")
        if bucket is None:  # longer than every bucket: one pass at its exact length, no graph
            self.steps.fn(GraphKey("prefill", 1, n, smp))()
            result.sources[self._direct] += 1
            return
        result.sources[self._execute(GraphKey("prefill", 1, bucket, smp))] += 1
        host_marks.mark("replayed")  # the pool's lookup and the launch (or, without a graph, the step run eagerly)

    def _put_prompt(self, ids: list[int], width: int) -> None:
        """The prefill's input row 0 = ids, then zeros up to `width`, and its length: written into the host buffers
        that the prefill step copies in first (StepBuffers; perf-notes v41, v44), through numpy, so the step's graph
        can be launched right after. They are free again once token 0 is read back; a request that failed before
        that can only have its own pending copy overwritten by the next request's prompt."""
        buf, n = self.buffers, len(ids)
        buf.prompt_ids[0, :n] = ids
        buf.prompt_ids[0, n:width] = 0
        buf.prompt_lens[0] = n

    # ---- figures -----------------------------------------------------------------------------------------------

    def kernels(self) -> dict[str, str | None]:
        """The attention kernels (decode, and prefill with prefill_attention.ENABLED) and few-row matmul kernel the
        runner settled on after its load-time probes (`triton`, or PyTorch's `sdpa` / `torch`); None for a runner
        without the choice (transformers' forward).
        An eager engine given these same names runs the very kernels this one runs."""
        fused, skinny_phases = getattr(self.runner, "fused_decode", None), getattr(self.runner, "skinny_phases", None)
        return {
            "attention": None if fused is None else ("triton" if fused else "sdpa"),
            "matmul": None if skinny_phases is None else ("triton" if skinny_phases else "torch"),
        }

    def cublaslt_products(self) -> list[str]:
        """The prefill products (rows x n x k, "plain" for those that do not add into the residual) that warm-up's
        timing sent through cuBLASLt (blas_choice): torch's cuBLASLt path, or an algorithm of cuBLASLt's list
        (`cublaslt_algorithms`)."""
        chosen = blas_choice.choices()
        return [_shape_name(s) for s in sorted(self.blas_timings) if chosen.get(s, "cublas") != "cublas"]

    def cublaslt_algorithms(self) -> dict[str, dict]:
        """The prefill products that run an algorithm of cuBLASLt's list, each with its configuration."""
        shapes = {_shape_name(s): blas_choice.describe(s) for s in sorted(self.blas_timings)}
        return {shape: algo for shape, algo in shapes.items() if algo is not None}

    def stats(self) -> dict:
        cuda = self.device.type == "cuda"
        return {
            "model": self.model.name,
            "mode": self.config.mode,
            "device": torch.cuda.get_device_name(self.device) if cuda else "cpu",
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "random_weights": self.model.random_weights,
            "max_seq_len": self.max_seq_len,
            "vocab_size": self.vocab_size,
            "requests": self.requests,
            "request_starts": {k: self.counters.get(k, 0) for k in ("prefill", "extend", "ahead_hit", "ahead_wasted")},
            "graphs_enabled": self.graphs_enabled,
            "kernels": self.kernels(),
            "kernel_build_s": round(self.kernel_build_s, 3),
            "cublaslt_products": self.cublaslt_products(),
            "cublaslt_algorithms": self.cublaslt_algorithms(),
            "compile_cache": compile_cache_counts() if self.steps.compiled else None,
            "pool": self.pool.report(),
            "memory": {
                "allocated": torch.cuda.memory_allocated(self.device) if cuda else None,
                "reserved": torch.cuda.memory_reserved(self.device) if cuda else None,
                "peak_allocated": torch.cuda.max_memory_allocated(self.device) if cuda else None,
                "kv_cache_bytes": getattr(getattr(self.runner, "cache", None), "nbytes", None),
                "weight_bytes": getattr(self.runner, "weight_bytes", None),
            },
        }


def _shape_name(shape: tuple) -> str:
    """blas_choice.shape_of's tuple as text: `400x4096x11008`, `400x22016x4096 plain`."""
    return "x".join(map(str, shape[:3])) + "".join(f" {tag}" for tag in shape[3:])


def _raising(exc: Exception) -> Iterator[int]:
    """A generation whose launch failed: raises that error at the first next()."""
    raise exc
    yield  # a generator function, so nothing runs until then


def compile_cache_counts() -> dict[str, int]:
    """Inductor's on-disk cache in this process so far: compiled graphs found there (`hits`), compiled afresh
    (`misses`) and not cacheable (`bypass`). A second start with the same --compile-cache-dir should only hit."""
    from torch._dynamo.utils import counters

    c = counters["inductor"]
    return {k: int(c.get(f"fxgraph_cache_{k}", 0)) for k in ("hit", "miss", "bypass")}


def _kernel_choices(config: EngineConfig) -> tuple[str, str]:
    """(attention, matmul) for the runner. In `eager` mode `auto` means PyTorch's own kernels (SDPA, F.linear), so
    that mode stays the plain-PyTorch baseline the benchmark compares against; naming `triton` still gets the Triton
    kernels. Eager steps are bound by the host either way (H100, perf-notes v7: llama-3.2-1b eager ITL 7.1-7.4 ms
    with the Triton kernels, 8.9-12.9 ms with PyTorch's; llama-2-7b 15-29 against 13-20 ms, noisy)."""
    if config.mode != "eager":
        return config.attention, config.matmul
    return (
        "sdpa" if config.attention == "auto" else config.attention,
        "torch" if config.matmul == "auto" else config.matmul,
    )
