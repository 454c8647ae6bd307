"""GraphKey and GraphPool: the one place that decides which captured graphs exist, captures, replays and evicts.

The pool is bounded twice: by a count and by bytes, each graph's bytes measured at capture. A key that is not held
is a miss, never an error: by default the step runs eagerly and the key is queued; the engine drains the queue on its
own thread between requests, so a capture can never run beside a replay. `on_miss="capture"` captures inline first,
as the original design did. `CudaGraphStep` is the capture used on a GPU; tests pass their own capture function.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from rollgraph.config import PoolConfig

logger = logging.getLogger(__name__)

PHASES = ("prefill", "decode", "full")
SOURCES = ("pre", "background", "inline")


@dataclass(frozen=True, order=True)
class GraphKey:
    """What a graph computes: phase, batch bucket, length bucket (prompt, KV or exact length), and the sampler."""

    phase: str
    batch: int
    length: int
    sampling: bool = False

    def __str__(self) -> str:
        what = {"prefill": "T", "decode": "kv", "full": "len"}[self.phase]
        return f"{self.phase}/b{self.batch}/{what}{self.length}/{'sample' if self.sampling else 'greedy'}"


class Captured(Protocol):
    """A captured step: replay it, know its bytes, release its memory."""

    nbytes: int

    def replay(self) -> None: ...

    def release(self) -> None: ...


@dataclass
class Entry:
    key: GraphKey
    graph: Captured
    source: str
    capture_s: float
    uses: int = 0


@dataclass
class PoolStats:
    hits: int = 0
    misses: int = 0
    captures: Counter = field(default_factory=Counter)
    capture_failures: int = 0
    evictions: int = 0
    capture_s: float = 0.0
    rejected_too_large: int = 0


class GraphPool:
    """An LRU of captured graphs under a count and a byte budget, with a queue of keys to capture later."""

    def __init__(self, capture: Callable[[GraphKey], Captured], config: PoolConfig) -> None:
        self._capture_fn = capture
        self.config = config
        self._entries: OrderedDict[GraphKey, Entry] = OrderedDict()
        self._pending: OrderedDict[GraphKey, None] = OrderedDict()
        self._sizes: dict[GraphKey, int] = {}  # measured bytes, kept after eviction to plan the next capture
        self._unusable: set[GraphKey] = set()  # too large for the budget, or capture failed: always eager
        self.stats = PoolStats()

    # ---- lookup ------------------------------------------------------------------------------------------------

    def get(self, key: GraphKey) -> Entry | None:
        """The entry for `key` (now most recently used), or None after recording a miss and acting on it."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            entry.uses += 1
            self.stats.hits += 1
            return entry
        self.stats.misses += 1
        if key in self._unusable:
            return None
        if self.config.on_miss == "capture":
            entry = self.capture(key, "inline")
            if entry is not None:
                entry.uses += 1
            return entry
        self._pending[key] = None
        return None

    def __contains__(self, key: GraphKey) -> bool:
        return key in self._entries

    @property
    def pending(self) -> list[GraphKey]:
        return list(self._pending)

    # ---- capture -----------------------------------------------------------------------------------------------

    def precapture(self, keys: Iterable[GraphKey], progress: bool = True) -> int:
        """Capture `keys` before serving (largest first, so the smaller ones fit in what is left); return count."""
        from tqdm import tqdm

        keys = sorted(set(keys), key=lambda k: (k.phase, -k.length, -k.batch))
        start, bytes_before = time.perf_counter(), self.total_bytes
        done = 0
        for key in tqdm(keys, desc="capturing graphs", unit="graph", disable=not progress, leave=False):
            if key not in self._entries and self.capture(key, "pre") is not None:
                done += 1
        logger.info(
            "captured %d graphs in %.1f s, %.0f MiB (pool: %d graphs, %.0f MiB of %.0f MiB budget)",
            done,
            time.perf_counter() - start,
            (self.total_bytes - bytes_before) / 2**20,
            len(self._entries),
            self.total_bytes / 2**20,
            self.config.max_bytes / 2**20,
        )
        return done

    def capture_pending(self, max_count: int = 1) -> int:
        """Capture up to `max_count` queued keys; the engine calls this only between requests."""
        done = 0
        while self._pending and done < max_count:
            key, _ = self._pending.popitem(last=False)
            if key not in self._entries and key not in self._unusable:
                done += self.capture(key, "background") is not None
        return done

    def capture(self, key: GraphKey, source: str) -> Entry | None:
        """Capture `key` now, evicting least recently used graphs to keep both bounds; None if it cannot be held."""
        self._pending.pop(key, None)
        self._make_room(self._predicted_bytes(key))
        start = time.perf_counter()
        try:
            graph = self._capture_fn(key)
        except Exception as exc:  # an out-of-memory or a capture error costs this key its graph, nothing more
            self.stats.capture_failures += 1
            self._unusable.add(key)
            if self.shares_memory(key):
                self._evict_shared()
            logger.warning("capture of %s failed (%s: %s); it will run eagerly", key, type(exc).__name__, exc)
            return None
        elapsed = time.perf_counter() - start
        self._sizes[key] = graph.nbytes
        if graph.nbytes > self.config.max_bytes:
            graph.release()
            if self.shares_memory(key):
                self._evict_shared()
            self._unusable.add(key)
            self.stats.rejected_too_large += 1
            logger.warning("graph %s needs %d bytes, over the whole budget; it will run eagerly", key, graph.nbytes)
            return None
        self._make_room(graph.nbytes)
        entry = Entry(key, graph, source, elapsed)
        self._entries[key] = entry
        self.stats.captures[source] += 1
        self.stats.capture_s += elapsed
        logger.debug("captured %s (%s) in %.3f s, %d bytes", key, source, elapsed, graph.nbytes)
        return entry

    # ---- eviction ----------------------------------------------------------------------------------------------

    def _predicted_bytes(self, key: GraphKey) -> int:
        """Bytes the next capture of `key` will likely take: its own last size, else the largest of its phase."""
        if key in self._sizes:
            return self._sizes[key]
        same = [n for k, n in self._sizes.items() if k.phase == key.phase and k.length >= key.length]
        return max(same, default=0)

    def _make_room(self, incoming: int) -> None:
        while self._entries and (
            len(self._entries) >= self.config.max_graphs or self.total_bytes + incoming > self.config.max_bytes
        ):
            self.evict_lru()

    def evict_lru(self) -> GraphKey:
        """Release the least recently used graph and return its key.

        Graphs that share one memory pool (see PoolConfig.share_prefill_pool) go together: the pool's memory only
        returns once every graph in it is gone, and the byte budget must count what really comes back.
        """
        key, entry = self._entries.popitem(last=False)
        self._release(entry)
        if self.shares_memory(key):
            self._evict_shared()
        return key

    def _evict_shared(self) -> None:
        """Release every graph in the shared pool, so that its memory (and anything a failed capture left cached
        in it) goes back to the device."""
        for other in [k for k in self._entries if self.shares_memory(k)]:
            self._release(self._entries.pop(other))

    def shares_memory(self, key: GraphKey) -> bool:
        """True if `key`'s graph is captured into the pool shared by all prefill graphs."""
        return self.config.share_prefill_pool and key.phase == "prefill"

    def _release(self, entry: Entry) -> None:
        entry.graph.release()
        self.stats.evictions += 1
        logger.debug("evicted %s (%d bytes, %d uses)", entry.key, entry.graph.nbytes, entry.uses)

    def clear(self) -> None:
        while self._entries:
            self.evict_lru()

    # ---- figures -----------------------------------------------------------------------------------------------

    @property
    def total_bytes(self) -> int:
        return sum(e.graph.nbytes for e in self._entries.values())

    def keys(self) -> list[GraphKey]:
        """Held keys, least recently used first."""
        return list(self._entries)

    def report(self) -> dict:
        """Counters and per-graph figures, JSON-ready."""
        s = self.stats
        return {
            "graphs": len(self._entries),
            "bytes": self.total_bytes,
            "max_graphs": self.config.max_graphs,
            "max_bytes": self.config.max_bytes,
            "hits": s.hits,
            "misses": s.misses,
            "captures": {src: s.captures.get(src, 0) for src in SOURCES},
            "capture_failures": s.capture_failures,
            "rejected_too_large": s.rejected_too_large,
            "evictions": s.evictions,
            "capture_s": round(s.capture_s, 4),
            "pending": [str(k) for k in self._pending],
            "per_graph": [
                {
                    "key": str(e.key),
                    "bytes": e.graph.nbytes,
                    "source": e.source,
                    "uses": e.uses,
                    "capture_ms": round(e.capture_s * 1e3, 2),
                }
                for e in self._entries.values()
            ],
        }


class CudaGraphStep:
    """A step function captured into a CUDA graph, by default in a private memory pool so it can be freed alone.

    `prepare` sets harmless inputs before each warm-up and before the capture. `pool` is a memory pool shared with
    other graphs (GraphPool evicts such graphs together); None gives this graph a private one. Warm-ups (two, which
    trigger lazy initialisation and, for compiled steps, compilation) run on `stream`, the same stream the capture
    uses, so library workspaces for that stream exist before capture and are not charged to (or freed with) this
    graph.
    The bytes are the growth of reserved device memory across the capture itself.
    """

    def __init__(
        self,
        fn: Callable[[], None],
        prepare: Callable[[], None],
        stream: torch.cuda.Stream,
        pool: tuple | None = None,
        warmups: int = 2,
    ) -> None:
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmups):
                prepare()
                fn()
            prepare()
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_reserved()
        self.graph = torch.cuda.CUDAGraph()
        pool = pool if pool is not None else torch.cuda.graph_pool_handle()  # private unless one is shared
        try:
            with torch.cuda.graph(self.graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
                fn()
        except BaseException:
            # A failed capture (out of memory, a forbidden call) must not keep its pool's memory cached outside
            # the budget: drop the partial graph and hand the blocks back before the pool marks the key eager.
            self.graph = None
            _release_rng_from_capture()
            torch.cuda.empty_cache()
            raise
        torch.cuda.synchronize()
        self.nbytes = torch.cuda.memory_reserved() - before

    def replay(self) -> None:
        self.graph.replay()

    def release(self) -> None:
        """Synchronize, destroy the graph and return its pool's memory to the device."""
        torch.cuda.synchronize()
        self.graph.reset()
        self.graph = None
        torch.cuda.empty_cache()


def _release_rng_from_capture() -> None:
    """A capture that fails before it ends leaves the device's default RNG in capture mode, and the next random op
    outside a capture then raises ("Offset increment outside graph capture"). A clone of the state is a fresh,
    non-capturing state with the same seed and offset: swap it in."""
    gen = torch.cuda.default_generators[torch.cuda.current_device()]
    if hasattr(gen, "graphsafe_set_state"):
        gen.graphsafe_set_state(gen.clone_state())
