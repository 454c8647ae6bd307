"""How late the host sees a token the GPU has made (perf-notes v38).

The engine reads each sampled token back with HostTokens: a device-to-host copy into pinned memory, an event recorded
after it, and event.synchronize(). v19 measured 259-320 µs for such a read-back with nothing else pending, where the
copy itself is a few µs. This queues ~2 ms of GPU work (torch.cuda._sleep), then a one-element copy and an event, and
waits in several ways, after an idle gap of the host thread (as before a request):
- `event_sync`: event.synchronize() (what HostTokens.pop does);
- `event_query`: polling event.query() in Python;
- `stream_sync`: torch.cuda.current_stream().synchronize();
- `blocking_event`: an event made with blocking=True (the thread sleeps until the driver wakes it);
- `poll_pinned`: no event: a kernel writes the token and a sentinel-cleared flag into pinned host memory that the
  GPU reaches directly (zero-copy, via UVA), and the host polls the flag.
For each, the host's time from launching the sleep to holding the token, minus the GPU's time for the same work
(CUDA events around it, measured apart). Prints one JSON object of medians and 90th percentiles in µs.

    PYTHONPATH=src python3 scripts/readback_probe.py [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import types

import torch

N = 100
SLEEP_CYCLES = 4_000_000  # ~2 ms at the H100's ~1.98 GHz


def gpu_time_us(token: torch.Tensor, host: torch.Tensor) -> float:
    """GPU time of the sleep and the copy, from CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(20):
        start.record()
        torch.cuda._sleep(SLEEP_CYCLES)
        host.copy_(token, non_blocking=True)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def overhead_us(wait, token: torch.Tensor, host: torch.Tensor, gpu_us: float, gap_s: float) -> dict:
    out = []
    for _ in range(N):
        time.sleep(gap_s)
        t0 = time.perf_counter()
        torch.cuda._sleep(SLEEP_CYCLES)
        value = wait(token, host)
        out.append((time.perf_counter() - t0) * 1e6 - gpu_us)
        assert value == 7
    out.sort()
    return {"median": round(statistics.median(out), 1), "p90": round(out[int(0.9 * len(out))], 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    a = p.parse_args()
    dev = torch.device("cuda")
    token = torch.full((1,), 7, dtype=torch.int64, device=dev)
    host = torch.zeros(1, dtype=torch.int64, pin_memory=True)
    event, blocking = torch.cuda.Event(), torch.cuda.Event(blocking=True)
    gpu_us = gpu_time_us(token, host)

    def event_sync(tok, h):
        h.copy_(tok, non_blocking=True)
        event.record()
        event.synchronize()
        return int(h[0])

    def event_query(tok, h):
        h.copy_(tok, non_blocking=True)
        event.record()
        while not event.query():
            pass
        return int(h[0])

    def stream_sync(tok, h):
        h.copy_(tok, non_blocking=True)
        torch.cuda.current_stream().synchronize()
        return int(h[0])

    def blocking_event(tok, h):
        h.copy_(tok, non_blocking=True)
        blocking.record()
        blocking.synchronize()
        return int(h[0])

    # zero-copy: pinned memory is mapped into the GPU's address space (UVA); a view of it as a CUDA tensor lets a
    # plain kernel store into host memory. The flag is cleared by the host before each launch.
    mapped = torch.zeros(2, dtype=torch.int64, pin_memory=True)
    mapped_dev = _as_cuda(mapped)
    flag = mapped.numpy()

    def poll_pinned(tok, h):
        flag[1] = 0
        mapped_dev[0:1].copy_(tok)  # a device-to-device copy kernel into host memory
        mapped_dev[1:2].fill_(1)
        while flag[1] == 0:
            pass
        return int(flag[0])

    ways = {
        "event_sync": event_sync,
        "event_query": event_query,
        "stream_sync": stream_sync,
        "blocking_event": blocking_event,
    }
    if mapped_dev is not None:
        ways["poll_pinned"] = poll_pinned
    result: dict = {"gpu": torch.cuda.get_device_name(), "gpu_us": round(gpu_us, 1)}
    for gap in (0.0, 0.001, 0.005):
        for name, wait in ways.items():
            wait(token, host)  # warm
            result[f"{name}_{gap * 1e3:g}ms"] = overhead_us(wait, token, host, gpu_us, gap)
    line = json.dumps(result)
    if a.out:
        with open(a.out, "w") as f:
            f.write(line + "\n")
    print(line)


def _as_cuda(pinned: torch.Tensor) -> torch.Tensor | None:
    """A CUDA tensor over the same pinned host memory (with unified addressing its host address is its device
    address), or None where torch will not make one."""

    array = types.SimpleNamespace(
        __cuda_array_interface__={
            "shape": tuple(pinned.shape),
            "typestr": "<i8",
            "data": (pinned.data_ptr(), False),
            "version": 2,
        }
    )
    try:
        return torch.as_tensor(array, device="cuda")
    except Exception as exc:
        print(f"no zero-copy view: {exc}")
        return None


if __name__ == "__main__":
    main()
