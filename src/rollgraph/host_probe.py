"""How fast this host runs a request's host work: the serving path's costs that no GPU floor covers.

TTFT at short prompts and the P99 of the inter-token latency depend on the host a run gets. The same tree on two H100
machines an hour apart gave TTFT 5.93 and 6.19 ms at 10 tokens, while the server's own figure moved by 0.06 ms
(perf-notes v38, v54, and the main runs at 4b824e2 and 6a11386). Two figures, measured beside the GPU's rates by
`python -m rollgraph.floors`, let runs on different hosts be compared:
- `wake_us`: how long a process blocked in recv() on a Unix socket takes to run again once a message is sent to it
  after an idle gap (1 ms by default, about the gap between the bench's requests). Each hop between the client, the
  server's event loop and its engine thread pays one such wake.
- `parse_us`: the server's parse of a 400-token generate frame (JSON decode and validation), warm: the host's
  single-thread Python speed on work every request does.
Both are snapshots taken when a run starts, and on one machine they moved 2× within minutes (perf-notes, the main run
at 2ae57ca). So the bench also reads, around each measured request, how much CPU time the hypervisor stole from this
virtual machine (`cpu_times_ms`, `steal_fields`). The kernel counts it in 10 ms ticks, so it shows a host that takes
whole percent of the CPUs, not a single late wake of a fraction of a millisecond; and the wait for the host to run a
halted vCPU again is not counted as steal at all. On the H100 hosts it read 0.00–0.01% (perf-notes v62).
Inside the guest, the kernel also counts in nanoseconds how long the measuring thread sat runnable on a run queue
(`thread_sched_ns`, /proc/thread-self/schedstat): `sched_fields` gives each request's share of it, so a late interval
can be set against the client's own scheduling delay.
"""

from __future__ import annotations

import logging
import os
import socket
import statistics
import struct
import subprocess
import sys
import time

logger = logging.getLogger(__name__)
_STAMP = struct.Struct("q")
_CLOCK = time.CLOCK_MONOTONIC  # one clock for both processes: a stamp taken in one is read in the other
_ECHO = """
import socket, struct, sys, time
s, stamp = socket.socket(fileno=int(sys.argv[1])), struct.Struct("q")
while True:
    data = s.recv(stamp.size, socket.MSG_WAITALL)
    woke = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    if len(data) < stamp.size:
        break
    s.sendall(stamp.pack(woke - stamp.unpack(data)[0]))
"""


def wake_us(gap_s: float = 0.001, samples: int = 200, warmup: int = 10) -> dict[str, float]:
    """Median and 90th percentile, in µs, from a send to the moment the receiving process (blocked in recv() for
    `gap_s` before it) runs again; measured in a child process over a socket pair."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.settimeout(10.0)  # a child that never answers raises TimeoutError instead of hanging the caller
    child = subprocess.Popen([sys.executable, "-c", _ECHO, str(theirs.fileno())], pass_fds=(theirs.fileno(),))
    theirs.close()
    delays = []
    try:
        for i in range(warmup + samples):
            time.sleep(gap_s)
            ours.sendall(_STAMP.pack(time.clock_gettime_ns(_CLOCK)))
            reply = ours.recv(_STAMP.size, socket.MSG_WAITALL)
            if len(reply) < _STAMP.size:
                raise RuntimeError("the wake probe's child process closed its socket")
            if i >= warmup:
                delays.append(_STAMP.unpack(reply)[0] / 1e3)
    finally:
        ours.close()  # the child reads EOF and exits
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    delays.sort()
    return {"median": round(statistics.median(delays), 1), "p90": round(delays[int(0.9 * (len(delays) - 1))], 1)}


def parse_us(tokens: int = 400, calls: int = 200, warmup: int = 20) -> float:
    """Median µs for the server's parse of one generate frame with `tokens` prompt ids (its payload decoded from
    JSON, then validated into a request), warm."""
    from rollgraph.protocol import decode_payload, encode_frame, parse_request

    frame = encode_frame({"type": "generate", "input_tokens": list(range(3, 3 + tokens)), "max_new_tokens": 64})
    payload = frame[4:]  # past the length prefix
    times = []
    for i in range(warmup + calls):
        start = time.perf_counter_ns()
        parse_request(decode_payload(payload))
        if i >= warmup:
            times.append((time.perf_counter_ns() - start) / 1e3)
    return round(statistics.median(times), 1)


def measure_host() -> dict | None:
    """Both figures, as `python -m rollgraph.floors` reports them under `host`; None, with a warning, where the wake
    probe cannot run (the figures are context for a run, never a reason to stop one)."""
    try:
        return {"wake_after_1ms_us": wake_us(), "parse_400_tokens_us": parse_us()}
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:  # TimeoutError is an OSError
        logger.warning("the host probe failed, so the run records no host figures: %s", exc)
        return None


def cpu_times_ms(stat_path: str = "/proc/stat") -> tuple[float, float] | None:
    """(stolen, all) CPU time in ms since boot, summed over this machine's CPUs, from /proc/stat's `cpu` line. Stolen
    time is time a virtual CPU wanted to run while the hypervisor ran something else. None where the file or the
    field is missing (not Linux, an old kernel)."""
    try:
        with open(stat_path, encoding="ascii") as f:
            line = f.readline()
    except OSError:
        return None
    ticks = parse_cpu_line(line)
    if ticks is None:
        return None
    per_tick_ms = 1000.0 / os.sysconf("SC_CLK_TCK")
    return ticks[0] * per_tick_ms, ticks[1] * per_tick_ms


def parse_cpu_line(line: str) -> tuple[int, int] | None:
    """(steal, all) ticks from /proc/stat's aggregate line: `cpu user nice system idle iowait irq softirq steal ...`.
    All is the first eight fields (guest time is already inside user and nice). None if the line is not that."""
    fields = line.split()
    if len(fields) < 9 or fields[0] != "cpu" or not all(f.isdigit() for f in fields[1:9]):
        return None
    ticks = [int(f) for f in fields[1:9]]
    return ticks[7], sum(ticks)


def steal_fields(before: tuple[float, float] | None, after: tuple[float, float] | None) -> dict[str, float]:
    """A measured request's `cpu_steal_ms` and `cpu_all_ms` (Sample's fields) from readings taken before and after it;
    {} where either reading is missing. /proc/stat counts in ticks (10 ms on most kernels), summed over all CPUs, so a
    request of a few hundred ms on 16 CPUs sees a few thousand ms of all time, and stolen time only in whole ticks."""
    if before is None or after is None:
        return {}
    return {"cpu_steal_ms": round(after[0] - before[0], 1), "cpu_all_ms": round(after[1] - before[1], 1)}


def thread_sched_ns(path: str = "/proc/thread-self/schedstat") -> tuple[int, int] | None:
    """(on a CPU, waiting on a run queue) in ns since the calling thread started, from the kernel's schedstat; None
    where the file is missing or not three numbers (not Linux, a kernel without scheduler statistics)."""
    try:
        with open(path, encoding="ascii") as f:
            fields = f.read().split()
    except OSError:
        return None
    if len(fields) != 3 or not all(f.isdigit() for f in fields):
        return None
    return int(fields[0]), int(fields[1])


def sched_fields(before: tuple[int, int] | None, after: tuple[int, int] | None) -> dict[str, float]:
    """A measured request's `client_cpu_ms` and `client_runqueue_ms` (Sample's fields): the measuring thread's time on
    a CPU, and runnable but waiting for one, between the two readings; {} where either is missing."""
    if before is None or after is None:
        return {}
    return {
        "client_cpu_ms": round((after[0] - before[0]) / 1e6, 3),
        "client_runqueue_ms": round((after[1] - before[1]) / 1e6, 3),
    }


def request_readings() -> tuple:
    """What to read before a measured request (outside its timed span): /proc/stat's CPU times and this thread's
    schedstat. `request_fields` turns them into the request's Sample fields afterwards."""
    return cpu_times_ms(), thread_sched_ns()


def request_fields(before: tuple) -> dict[str, float]:
    """The steal and the measuring thread's scheduling during a request, from `request_readings()` taken before it."""
    cpu, sched = before
    return {**sched_fields(sched, thread_sched_ns()), **steal_fields(cpu, cpu_times_ms())}
