"""The grid before inductor's coordinate descent (tuning.py), on inductor's own tuner with made-up timings."""

from __future__ import annotations

import pytest

from rollgraph import tuning

CoordescTuner = pytest.importorskip("torch._inductor.runtime.coordinate_descent_tuner").CoordescTuner
META = {"warp_size": 32, "max_threads_per_block": 1024}
PRODUCT = {"x": 4096, "r0_": 11008}  # 7B's down projection at one row


class Config:
    """The two fields of triton.Config the tuner reads and writes (Triton is not installed on CPU-only machines)."""

    def __init__(self, xblock: int, r0_block: int, warps: int) -> None:
        self.kwargs = {"XBLOCK": xblock, "R0_BLOCK": r0_block}
        self.num_warps, self.num_stages = warps, 1

    def key(self) -> tuple:
        return self.kwargs["XBLOCK"], self.kwargs["R0_BLOCK"], self.num_warps


def landscape(times: dict, default: float = 2.0):
    """A timing function over configs, counting its calls."""

    def f(cfg):
        f.calls += 1
        return times.get(cfg.key(), default)

    f.calls = 0
    return f


def tune(size_hints: dict, f, start=(1, 1024, 8)):
    return CoordescTuner(size_hints=size_hints, inductor_meta=META).autotune(f, Config(*start))


@pytest.fixture
def grid_on(monkeypatch):
    monkeypatch.setattr(tuning, "ENABLED", True)
    assert tuning.install()
    assert tuning.install()  # idempotent: the wrapper is not wrapped again


def test_the_grid_finds_the_minimum_the_descent_alone_misses(grid_on, monkeypatch):
    # The start is a local minimum: no single step from it helps, so the descent alone stays there.
    times = {(1, 1024, 8): 1.5, (4, 2048, 16): 1.0}
    monkeypatch.setattr(tuning, "ENABLED", False)
    assert tune(PRODUCT, landscape(times)).key() == (1, 1024, 8)
    monkeypatch.setattr(tuning, "ENABLED", True)
    assert tune(PRODUCT, landscape(times)).key() == (4, 2048, 16)


def test_the_grid_spares_kernels_that_are_not_one_row_products(grid_on):
    for hints in ({"x": 1, "r0_": 4096}, {"x": 4096, "r0_": 512}, {"x": 64, "y": 64, "r0_": 4096}):
        f = landscape({(4, 2048, 16): 1.0})
        tune(hints, f)
        assert f.calls < len(tuning.grid(PRODUCT, Config(1, 1024, 8))), hints


def test_the_grid_is_the_same_every_time_and_within_bounds():
    configs = tuning.grid(PRODUCT, Config(1, 1024, 8))
    keys = [c.key() for c in configs]
    assert keys == [c.key() for c in tuning.grid(PRODUCT, Config(2, 2048, 16))]  # not anchored at the start
    assert len(keys) == len(set(keys)) == 35
    assert all(1 <= x * r / (32 * w) <= 64 for x, r, w in keys)
    assert (2, 2048, 16) in keys and (1, 4096, 32) in keys
    small = tuning.grid({"x": 4096, "r0_": 2048}, Config(1, 1024, 8))
    assert small and all(c.kwargs["R0_BLOCK"] <= 2048 for c in small)


def test_pick_times_the_leaders_again_and_trusts_their_median():
    configs = [Config(1, 1024, 8), Config(2, 1024, 8), Config(4, 1024, 8)]
    draws = {0: [1.0, 3.0, 3.0], 1: [1.1, 1.1, 1.1], 2: [float("inf")] * 3}  # config 0 was lucky once

    def f(cfg):
        i = [c.key() for c in configs].index(cfg.key())
        return draws[i].pop(0)

    best, times = tuning.pick(f, configs)
    assert best == 1 and times[0] == 3.0 and times[1] == 1.1
    assert tuning.pick(lambda c: float("inf"), configs)[0] is None


def test_a_config_that_fails_is_not_a_candidate():
    def f(cfg):
        if cfg.num_warps == 32:
            raise RuntimeError("out of resources")
        return 1.0 / cfg.num_warps

    best, _ = tuning.pick(f, [Config(1, 1024, 32), Config(1, 1024, 16)])
    assert best == 1
