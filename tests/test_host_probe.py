"""host_probe: the host's wake and parse figures the bench records beside the GPU's floors."""

import time

from rollgraph import host_probe


def test_a_wake_is_timed_from_the_send_to_the_child_running_again():
    """The child reports each wake; a longer idle gap gives the same kind of figure, and every figure is a plausible
    wake on a working machine: above zero, under 50 ms."""
    start = time.perf_counter()
    wake = host_probe.wake_us(gap_s=0.001, samples=40, warmup=5)
    assert time.perf_counter() - start >= 45 * 0.001  # every sample waited its idle gap first
    assert 0 < wake["median"] <= wake["p90"] < 50_000, wake


def test_the_parse_figure_grows_with_the_prompt():
    short = host_probe.parse_us(tokens=10, calls=100)
    long = host_probe.parse_us(tokens=4000, calls=100)
    assert 0 < short < long, (short, long)


def test_a_probe_that_cannot_run_records_nothing_and_stops_nothing(monkeypatch, caplog):
    """The host figures are context for a run: a wake probe whose child cannot start leaves them None, with a
    warning, and `python -m rollgraph.floors` still reports the machine."""
    import subprocess

    def no_child(*args, **kwargs):
        raise OSError("no such interpreter (the test's stand-in for a child that cannot start)")

    monkeypatch.setattr(subprocess, "Popen", no_child)
    assert host_probe.measure_host() is None
    assert "the host probe failed" in caplog.text
