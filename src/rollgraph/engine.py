"""The engine: prefill and decode over a static KV cache, each step executed eagerly, compiled or from the pool.

It takes token ids and yields token ids; it knows nothing about text, sockets or clients. One request runs at a time
(rows of the cache beyond 0 are there for batching); every method is called from one thread, the engine thread.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch

from rollgraph.config import EngineConfig, PoolConfig
from rollgraph.errors import RequestError
from rollgraph.graphs import CudaGraphStep, GraphKey, GraphPool
from rollgraph.models import LoadedModel
from rollgraph.params import GenerationParams
from rollgraph.steps import StepBuffers, Steps

logger = logging.getLogger(__name__)

MAX_EXTEND = 16
"""A request that extends the held sequence by at most this many tokens runs them as decode steps (prefix reuse)."""

SEED_POOL = PoolConfig(max_graphs=50, max_bytes=1 << 62, on_miss="capture")


@dataclass
class GenerationResult:
    """What a finished (or cancelled) generation reports besides its tokens."""

    output_tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    prefill_ms: float = 0.0
    step_ms: list[float] = field(default_factory=list)
    sources: Counter = field(default_factory=Counter)
    prefix_reused: int = 0

    def to_dict(self) -> dict:
        steps = self.step_ms
        return {
            "output_tokens": self.output_tokens,
            "finish_reason": self.finish_reason,
            "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": len(self.output_tokens)},
            "timings": {
                "prefill_ms": round(self.prefill_ms, 3),
                "decode_ms_mean": round(sum(steps) / len(steps), 3) if steps else None,
                "step_ms": [round(s, 3) for s in steps],
            },
            "graphs": dict(self.sources),
            "prefix_reused_tokens": self.prefix_reused,
        }


class Generation:
    """An iterator of generated token ids; `result` is complete once it is exhausted or closed."""

    def __init__(self, engine: Engine, params: GenerationParams) -> None:
        self.result = GenerationResult(prompt_tokens=len(params.input_ids))
        self._it = engine._run(params, self.result)

    def __iter__(self) -> Iterator[int]:
        return self._it

    def __next__(self) -> int:
        return next(self._it)

    def close(self) -> None:
        """Stop early (the client went away); the row is freed and the reason is 'cancelled'."""
        self._it.close()
        if self.result.finish_reason is None:
            self.result.finish_reason = "cancelled"


class Engine:
    """Serve one model: validate requests, run prefill/decode, and keep the graph pool."""

    def __init__(self, model: LoadedModel, config: EngineConfig, runner=None) -> None:
        from rollgraph.runners import make_runner

        self.model, self.config = model, config
        self.device = model.device
        self.max_seq_len = min(config.max_seq_len, model.max_position_embeddings)
        self.vocab_size = model.vocab_size
        self.runner = runner or make_runner(model, config.max_batch, self.max_seq_len, config.runner)
        self.buffers = StepBuffers(config.max_batch, self.max_seq_len, self.vocab_size, self.device)
        compile_ = config.uses_compile and getattr(self.runner, "compilable", False)
        if config.uses_compile and not compile_:
            logger.warning("mode %s: this model's runner cannot be compiled; its steps run eagerly", config.mode)
        self.steps = Steps(self.runner, self.buffers, compile=compile_)
        self._direct = "compiled" if compile_ else "eager"  # what serves a step no graph serves
        self._fns: dict[GraphKey, object] = {}
        self._row_tokens: list[int] | None = None  # ids whose KV row 0 holds, for prefix reuse
        self._capture_stream: torch.cuda.Stream | None = None
        self._host_tokens: torch.Tensor | None = None  # pinned ring for sampled tokens (CUDA only)
        if self.device.type == "cuda":
            self._host_tokens = torch.zeros(4, dtype=torch.int64, pin_memory=True)
            self._token_events = [torch.cuda.Event() for _ in range(4)]
        self.requests = 0
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
        """Pre-capture the default key set (graph modes on CUDA); compile modes compile them instead."""
        if self.graphs_enabled and self.config.precapture:
            self.pool.precapture(self.default_keys(), progress=progress)
        elif self.config.uses_compile and self.config.precapture and self.device.type == "cuda":
            start = time.perf_counter()
            snap = self.buffers.snapshot()
            for key in self.default_keys():
                self.steps.prepare_warmup(key)
                self._fn(key)()
            self.buffers.restore(snap)
            logger.info("compiled %d step shapes in %.1f s", len(self.default_keys()), time.perf_counter() - start)

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
            return CudaGraphStep(self._fn(key), lambda: self.steps.prepare_warmup(key), self._capture_stream)
        finally:
            self.buffers.restore(snap)
            if key.phase != "decode":
                self._row_tokens = None  # a prefill warm-up overwrote the start of cache rows

    def _execute(self, key: GraphKey, result: GenerationResult) -> None:
        capturable = self.graphs_enabled and key.phase in self.runner.graph_phases
        entry = self.pool.get(key) if capturable else None
        if entry is not None:
            entry.graph.replay()
            result.sources[entry.source] += 1
        else:
            self._fn(key)()
            result.sources[self._direct] += 1

    # ---- requests ----------------------------------------------------------------------------------------------

    def validate(self, params: GenerationParams) -> None:
        """Raise RequestError if the request cannot run on this model; nothing is changed."""
        bad = [t for t in params.input_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise RequestError(
                f"token id {bad[0]} is out of range: ids must be in [0, {self.vocab_size})",
                code="invalid_token",
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
        """Validate, then return an iterator of the generated token ids."""
        self.validate(params)
        if params.sampling.seed is None and not params.sampling.greedy:
            params = replace(params, sampling=replace(params.sampling, seed=random.getrandbits(62)))
        return Generation(self, params)

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
        self.requests += 1
        self._set_sampling(params)
        ids, smp, start = list(params.input_ids), not params.sampling.greedy, time.perf_counter()
        if self.config.mode == "seed":
            seq = list(ids)

            def step(i: int) -> None:
                if i:
                    seq.append(result.output_tokens[-1])
                self.buffers.prompt[0, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
                self._execute(GraphKey("full", 1, len(seq), smp), result)

        else:
            self._prefill(ids, smp, result)

            def step(i: int) -> None:
                if i:
                    self._execute(GraphKey("decode", 1, self._kv_len(len(ids) + i - 1), smp), result)

        self._row_tokens = None
        ok = False
        try:
            yield from self._loop(params, result, step, start)
            ok = True
        except GeneratorExit:
            ok = True
            raise
        finally:
            # Row 0 holds KV for the prompt and every generated token but the last (seed mode keeps no cache).
            keep = ok and self.config.mode != "seed"
            self._row_tokens = ids + result.output_tokens[:-1] if keep else None

    def _loop(self, params: GenerationParams, result: GenerationResult, step, start: float) -> Iterator[int]:
        """Run steps and yield tokens until a stop token or max_new_tokens; record per-step host timings.

        On CUDA (not in seed mode, whose next input is the token itself) step i+1 is launched before token i is
        read back, so the GPU never waits for Python between steps; after a stop token that one extra step is
        thrown away (it only writes the cache past the sequence's end).
        """
        stops, n = set(params.stop_token_ids), params.max_new_tokens
        ahead = self._host_tokens is not None and self.config.mode != "seed"
        slots: deque[int] = deque()
        launched = 0

        def launch() -> None:
            nonlocal launched
            step(launched)
            slots.append(self._push_token(launched))
            launched += 1

        launch()
        for i in range(n):
            if ahead and launched < n:
                launch()
            tok = self._pop_token(slots.popleft())
            now = time.perf_counter()
            if i:
                result.step_ms.append((now - start) * 1e3)
            else:
                result.prefill_ms = (now - start) * 1e3
            start = now
            result.output_tokens.append(tok)
            if tok in stops:
                result.finish_reason = "stop"
            elif i == n - 1:
                result.finish_reason = "length"
            yield tok
            if result.finish_reason:
                return
            if not ahead:
                launch()

    def _push_token(self, i: int) -> int:
        """Start copying the last step's token to the host; returns what _pop_token needs to read it."""
        if self._host_tokens is None:
            return int(self.buffers.tokens[0])
        slot = i % len(self._token_events)
        self._host_tokens[slot : slot + 1].copy_(self.buffers.tokens[:1], non_blocking=True)
        self._token_events[slot].record()
        return slot

    def _pop_token(self, handle: int) -> int:
        """The token a _push_token started copying: the step's one host sync."""
        if self._host_tokens is None:
            return handle
        self._token_events[handle].synchronize()
        return int(self._host_tokens[handle])

    def _kv_len(self, pos: int) -> int:
        step = self.config.kv_bucket or self.max_seq_len
        return min(-(-(pos + 1) // step) * step, self.max_seq_len)

    def _prefill(self, ids: list[int], smp: bool, result: GenerationResult) -> None:
        """Fill row 0 for `ids` and leave the first sampled token in the buffers, reusing a held prefix if any."""
        buf, n = self.buffers, len(ids)
        common = _common_prefix(self._row_tokens or [], ids, n - 1)
        if common and n - common <= MAX_EXTEND:
            result.prefix_reused = common
            self._extend(ids, common, smp, result)
            return
        bucket = next((b for b in self.config.prefill_buckets if n <= b <= self.max_seq_len), None)
        buf.prompt[0, :n] = torch.tensor(ids, dtype=torch.int64)
        buf.prompt_len[0] = n
        if bucket is None:  # longer than every bucket: one eager pass at its exact length
            self.steps.fn(GraphKey("prefill", 1, n, smp))()
            result.sources[self._direct] += 1
            return
        buf.prompt[0, n:bucket].zero_()
        self._execute(GraphKey("prefill", 1, bucket, smp), result)

    def _extend(self, ids: list[int], held: int, smp: bool, result: GenerationResult) -> None:
        """Run only the new tokens after a held prefix: decode steps, one per token (each is a cached graph)."""
        buf = self.buffers
        for p in range(held, len(ids)):
            buf.tokens[0] = ids[p]
            buf.positions[0] = p
            self._execute(GraphKey("decode", 1, self._kv_len(p), smp), result)

    # ---- figures -----------------------------------------------------------------------------------------------

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
            "graphs_enabled": self.graphs_enabled,
            "pool": self.pool.report(),
            "memory": {
                "allocated": torch.cuda.memory_allocated(self.device) if cuda else None,
                "reserved": torch.cuda.memory_reserved(self.device) if cuda else None,
                "peak_allocated": torch.cuda.max_memory_allocated(self.device) if cuda else None,
                "kv_cache_bytes": getattr(getattr(self.runner, "cache", None), "nbytes", None),
                "weight_bytes": getattr(self.runner, "weight_bytes", None),
            },
        }


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
