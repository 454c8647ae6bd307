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


def test_the_steal_is_read_from_the_aggregate_cpu_line():
    """/proc/stat's first line: user nice system idle iowait irq softirq steal guest guest_nice, in ticks."""
    line = "cpu  4705 150 1120 16250 520 0 87 300 40 0\n"
    assert host_probe.parse_cpu_line(line) == (300, 4705 + 150 + 1120 + 16250 + 520 + 0 + 87 + 300)
    assert host_probe.parse_cpu_line("cpu0 1 2 3 4 5 6 7 8 9 10") is None  # one CPU's line, not the sum
    assert host_probe.parse_cpu_line("cpu  1 2 3 4") is None  # a kernel without the steal field
    assert host_probe.parse_cpu_line("intr 1 2 3 4 5 6 7 8 9") is None


def test_a_requests_steal_fields_come_from_readings_around_it(tmp_path):
    """On Linux the readings grow with time; a missing reading (no /proc/stat) gives no fields rather than a guess."""
    import os

    before = host_probe.cpu_times_ms()
    if before is None:  # not Linux: nothing to read, and the request records nothing
        assert host_probe.steal_fields(None, None) == {}
        return
    time.sleep(0.05)
    fields = host_probe.steal_fields(before, host_probe.cpu_times_ms())
    assert set(fields) == {"cpu_steal_ms", "cpu_all_ms"}
    assert 0 <= fields["cpu_steal_ms"] <= fields["cpu_all_ms"] and fields["cpu_all_ms"] > 0
    assert host_probe.steal_fields(before, None) == {}
    fake = tmp_path / "stat"
    fake.write_text("cpu  100 0 100 700 0 0 0 100 0 0\ncpu0 100 0 100 700 0 0 0 100 0 0\n")
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    assert host_probe.cpu_times_ms(str(fake)) == (100 * tick_ms, 1000 * tick_ms)
    assert host_probe.cpu_times_ms(str(tmp_path / "missing")) is None


def test_the_measuring_threads_own_scheduling_is_read_in_nanoseconds(tmp_path):
    """A busy loop shows as CPU time of this thread; a file that is not schedstat's three numbers reads as None."""
    before = host_probe.thread_sched_ns()
    if before is None:  # a platform without the file: requests record nothing
        assert host_probe.sched_fields(None, None) == {}
        return
    deadline = time.perf_counter() + 0.05
    while time.perf_counter() < deadline:
        pass
    fields = host_probe.sched_fields(before, host_probe.thread_sched_ns())
    assert set(fields) == {"client_cpu_ms", "client_runqueue_ms"}
    assert fields["client_cpu_ms"] >= 20 and fields["client_runqueue_ms"] >= 0, fields
    assert host_probe.sched_fields(None, before) == {}
    bad = tmp_path / "schedstat"
    bad.write_text("12 34\n")
    assert host_probe.thread_sched_ns(str(bad)) is None
    bad.write_text("1000000 2000000 5\n")
    assert host_probe.sched_fields(host_probe.thread_sched_ns(str(bad)), (4_000_000, 2_500_000)) == {
        "client_cpu_ms": 3.0,
        "client_runqueue_ms": 0.5,
    }
