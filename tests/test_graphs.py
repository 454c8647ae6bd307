"""GraphPool policy with a capture function the test supplies: LRU order, both bounds, queue, on-miss behaviours."""

import pytest

from rollgraph.config import PoolConfig
from rollgraph.graphs import GraphKey, GraphPool


class FakeGraph:
    def __init__(self, key, nbytes, log):
        self.key, self.nbytes, self.log = key, nbytes, log
        self.replays = 0

    def replay(self):
        self.replays += 1

    def release(self):
        self.log.append(("release", self.key))


class Capturer:
    """Sizes by key length; records captures and releases; can be told to fail for a key."""

    def __init__(self, size=lambda k: 100 * k.length, fail=()):
        self.size, self.fail, self.log = size, set(fail), []

    def __call__(self, key):
        if key in self.fail:
            raise RuntimeError("CUDA out of memory (simulated by the test)")
        self.log.append(("capture", key))
        return FakeGraph(key, self.size(key), self.log)


def d(n, b=1):
    return GraphKey("decode", b, n)


def pool(cap, **kw):
    return GraphPool(cap, PoolConfig(**kw))


def test_lru_order_and_count_bound():
    cap = Capturer()
    p = pool(cap, max_graphs=3, max_bytes=10**9)
    for n in (1, 2, 3):
        p.capture(d(n), "pre")
    assert p.get(d(1)) is not None  # 1 becomes most recent
    p.capture(d(4), "background")
    assert p.keys() == [d(3), d(1), d(4)]
    assert ("release", d(2)) in cap.log
    assert p.report()["evictions"] == 1


def test_byte_bound_holds_after_every_capture():
    cap = Capturer()
    p = pool(cap, max_graphs=100, max_bytes=1000)
    for n in (3, 4, 2, 5, 1, 6, 2, 3):
        p.capture(d(n), "pre")
        assert p.total_bytes <= 1000
    assert p.report()["evictions"] > 0


def test_graph_over_whole_budget_is_refused_and_stays_eager():
    cap = Capturer()
    p = pool(cap, max_graphs=10, max_bytes=500)
    assert p.capture(d(9), "pre") is None
    assert ("release", d(9)) in cap.log
    assert p.get(d(9)) is None and d(9) not in p.pending  # never queued again
    assert p.report()["rejected_too_large"] == 1


def test_miss_queues_for_background_capture_by_default():
    cap = Capturer()
    p = pool(cap, max_graphs=10, max_bytes=10**6)
    assert p.get(d(2)) is None and p.get(d(2)) is None
    assert p.pending == [d(2)]
    assert not any(e[0] == "capture" for e in cap.log)  # nothing captured inside the request
    assert p.capture_pending() == 1 and p.pending == []
    entry = p.get(d(2))
    assert entry is not None and entry.source == "background"
    r = p.report()
    assert r["hits"] == 1 and r["misses"] == 2 and r["captures"]["background"] == 1


def test_on_miss_capture_captures_inline():
    cap = Capturer()
    p = pool(cap, max_graphs=10, max_bytes=10**6, on_miss="capture")
    entry = p.get(d(7))
    assert entry is not None and entry.source == "inline" and p.pending == []
    assert p.report()["captures"]["inline"] == 1


def test_failed_capture_falls_back_to_eager_and_is_not_retried():
    cap = Capturer(fail={d(3)})
    p = pool(cap, max_graphs=10, max_bytes=10**6, on_miss="capture")
    assert p.get(d(3)) is None
    assert p.get(d(3)) is None
    assert p.report()["capture_failures"] == 1


def test_precapture_largest_first_and_counts():
    cap = Capturer()
    p = pool(cap, max_graphs=10, max_bytes=10**6)
    keys = [d(1), d(4), GraphKey("prefill", 1, 16), d(2)]
    assert p.precapture(keys, progress=False) == 4
    order = [k for what, k in cap.log if what == "capture"]
    assert order == [d(4), d(2), d(1), GraphKey("prefill", 1, 16)]
    assert p.report()["captures"]["pre"] == 4


def test_prediction_makes_room_before_capture():
    """A key whose size is known from an earlier capture is made room for before it is captured again."""
    cap = Capturer()
    p = pool(cap, max_graphs=10, max_bytes=550)
    p.capture(d(5), "pre")  # 500 bytes
    p.evict_lru()
    p.capture(d(1), "pre")  # 100
    log_before = len(cap.log)
    p.capture(d(5), "background")
    assert cap.log[log_before] == ("release", d(1))  # evicted before the capture, not after
    assert p.total_bytes == 500


def test_key_string():
    assert str(GraphKey("prefill", 1, 64, True)) == "prefill/b1/T64/sample"


@pytest.mark.parametrize("kw", [dict(max_graphs=0), dict(max_bytes=0), dict(on_miss="later")])
def test_bad_pool_config(kw):
    with pytest.raises(ValueError):
        PoolConfig(**kw)


def p(n):
    return GraphKey("prefill", 1, n)


def test_shared_prefill_pool_evicts_all_prefill_graphs_together():
    cap = Capturer(size=lambda k: 1000 if k.length == 64 else 10)  # the first (largest) capture sizes the pool
    pl = pool(cap, max_graphs=10, max_bytes=10**6, share_prefill_pool=True)
    for key in (p(64), p(32), p(16), d(1), d(2)):
        pl.capture(key, "pre")
    pl.get(p(64))  # most recent, but shares its memory with the LRU prefill graphs
    assert pl.evict_lru() == p(32)
    assert pl.keys() == [d(1), d(2)]  # p(16) and p(64) went with it: only then does the shared memory return
    assert {k for what, k in cap.log if what == "release"} == {p(16), p(32), p(64)}
    assert pl.report()["evictions"] == 3


def test_private_pools_evict_one_at_a_time():
    pl = pool(Capturer(), max_graphs=10, max_bytes=10**6, share_prefill_pool=False)
    for key in (p(64), p(32)):
        pl.capture(key, "pre")
    assert pl.evict_lru() == p(64) and pl.keys() == [p(32)]


def test_failed_or_refused_shared_capture_empties_the_shared_pool():
    cap = Capturer(size=lambda k: 50 * k.length, fail={p(8)})
    pl = pool(cap, max_graphs=10, max_bytes=2000, share_prefill_pool=True, on_miss="capture")
    pl.capture(p(16), "pre")
    pl.capture(d(3), "pre")
    assert pl.get(p(8)) is None  # the failed capture may have left blocks cached in the shared pool
    assert pl.keys() == [d(3)]
    pl.capture(p(16), "pre")
    assert pl.capture(p(64), "pre") is None  # 3200 bytes: over the whole budget, refused
    assert pl.keys() == [d(3)]
