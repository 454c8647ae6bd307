"""tune_timing.py: how inductor's configs are timed while the compile modes tune (its GPU half is in test_gpu.py)."""

from __future__ import annotations

import pytest

from rollgraph import tune_timing

benchmarking = pytest.importorskip("torch._inductor.runtime.benchmarking")


class Benchmarker:
    """Stands in for inductor's benchmarker class, so the test patches this class and not torch's."""

    def benchmark_gpu(self, fn, **kwargs):
        return ("inductor's own", kwargs)


def test_install_wraps_the_benchmarkers_class_once_and_hands_on_what_it_does_not_cover(monkeypatch):
    monkeypatch.setattr(benchmarking, "benchmarker", Benchmarker())
    monkeypatch.setattr(Benchmarker, "benchmark_gpu", Benchmarker.benchmark_gpu)  # put back after the test
    assert tune_timing.install()
    wrapped = Benchmarker.benchmark_gpu
    assert wrapped._rollgraph_clean
    assert tune_timing.install() and Benchmarker.benchmark_gpu is wrapped  # not wrapped twice
    b = benchmarking.benchmarker
    # Without CUDA (this machine), for quantiles or other return modes, or with the knob off: inductor's own timing.
    assert b.benchmark_gpu(lambda: None, rep=40) == ("inductor's own", {"rep": 40})
    assert b.benchmark_gpu(lambda: None, return_mode="all")[0] == "inductor's own"
    monkeypatch.setattr(tune_timing, "ENABLED", False)
    assert b.benchmark_gpu(lambda: None, quantiles=(0.5,))[0] == "inductor's own"


def test_install_leaves_a_benchmarker_without_benchmark_gpu_alone(monkeypatch):
    monkeypatch.setattr(benchmarking, "benchmarker", object())
    assert not tune_timing.install()


def test_a_launch_the_device_refuses_times_as_infinite_and_other_errors_rise(monkeypatch):
    monkeypatch.setattr(benchmarking, "benchmarker", Benchmarker())
    monkeypatch.setattr(Benchmarker, "benchmark_gpu", Benchmarker.benchmark_gpu)
    assert tune_timing.install()
    monkeypatch.setattr(tune_timing.torch.cuda, "is_available", lambda: True)

    def refused(fn):
        raise RuntimeError("CUDA error: invalid configuration argument")

    monkeypatch.setattr(tune_timing, "time_after_clean_reads", refused)
    assert benchmarking.benchmarker.benchmark_gpu(lambda: None, rep=40) == float("inf")

    def broken(fn):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(tune_timing, "time_after_clean_reads", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        benchmarking.benchmarker.benchmark_gpu(lambda: None, rep=40)
