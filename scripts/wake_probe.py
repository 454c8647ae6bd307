"""How long a request's hops take to wake the side that waits for them, after an idle gap (perf-notes v38).

A request crosses three waits before its prefill starts: the server's event loop waits in epoll for the client's
frame, the engine thread waits on its job queue, and the client waits in recv for the first token. Each is a wake of
a thread that slept; on a virtual machine an idle vCPU's wake can cost far more than the syscall. This times, after
gaps of 0 (back to back), 1 and 5 ms:
- `thread`: one thread puts to a queue.SimpleQueue, another blocked in get() notes when it got the item;
- `socket`: a process sends 4 bytes on a Unix socket pair, another blocked in recv() notes when they arrived;
- `asyncio`: the same bytes read by an asyncio loop through StreamReader.readexactly, as the server reads a frame;
- `asyncio_spin`: the same loop, its selector polling without blocking while it waits (an idle-spin design);
- `protocol`: the same loop with an asyncio.Protocol, the bytes seen in data_received (no StreamReader, no task).
The receiver's stamps are time.perf_counter (CLOCK_MONOTONIC, comparable across processes). Prints one JSON object
of medians and 90th percentiles in µs.

    PYTHONPATH=src python3 scripts/wake_probe.py
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import selectors
import socket
import statistics
import struct
import threading
import time

GAPS_S = (0.0, 0.001, 0.005)
N = 300


def summary(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"median": round(statistics.median(xs), 1), "p90": round(xs[int(0.9 * len(xs))], 1)}


def thread_wake(gap: float) -> list[float]:
    to_worker: queue.SimpleQueue = queue.SimpleQueue()
    back: queue.SimpleQueue = queue.SimpleQueue()

    def worker() -> None:
        while (t0 := to_worker.get()) is not None:
            back.put(time.perf_counter() - t0)

    t = threading.Thread(target=worker)
    t.start()
    out = []
    for _ in range(N):
        time.sleep(gap)
        to_worker.put(time.perf_counter())
        out.append(back.get() * 1e6)
    to_worker.put(None)
    t.join()
    return out


class SpinSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """Polls without blocking for up to `spin_s` before a blocking wait."""

    spin_s = 0.02

    def select(self, timeout=None):
        if timeout is not None and timeout <= 0:
            return super().select(timeout)
        end = time.perf_counter() + (self.spin_s if timeout is None else min(self.spin_s, timeout))
        while time.perf_counter() < end:
            ready = super().select(0)
            if ready:
                return ready
        return super().select(timeout)


def receiver(sock: socket.socket, how: str) -> None:
    """In the child: for every 4-byte stamp-less ping, send back when it was seen (8-byte double)."""
    if how == "socket":
        while sock.recv(4):
            sock.sendall(struct.pack("d", time.perf_counter()))
        return

    class Stamp(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(struct.pack("d", time.perf_counter()))

        def connection_lost(self, exc) -> None:
            done.set_result(None)

    async def serve() -> None:
        if how == "protocol":
            await asyncio.get_running_loop().connect_accepted_socket(Stamp, sock)
            await done
            return
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        while True:
            try:
                await reader.readexactly(4)
            except asyncio.IncompleteReadError:
                return
            writer.write(struct.pack("d", time.perf_counter()))

    loop = asyncio.SelectorEventLoop(SpinSelector() if how == "asyncio_spin" else selectors.DefaultSelector())
    done = loop.create_future()
    loop.run_until_complete(serve())
    loop.close()


def socket_wake(gap: float, how: str) -> list[float]:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        parent.close()
        receiver(child, how)
        os._exit(0)
    child.close()
    out = []
    for _ in range(N + 10):
        time.sleep(gap)
        t0 = time.perf_counter()
        parent.sendall(b"ping")
        (seen,) = struct.unpack("d", parent.recv(8, socket.MSG_WAITALL))
        out.append((seen - t0) * 1e6)
    parent.close()
    os.waitpid(pid, 0)
    return out[10:]


def main() -> None:
    out: dict = {"cpus": os.cpu_count()}
    for gap in GAPS_S:
        label = f"{gap * 1e3:g}ms"
        out[f"thread_{label}"] = summary(thread_wake(gap))
        for how in ("socket", "asyncio", "asyncio_spin", "protocol"):
            out[f"{how}_{label}"] = summary(socket_wake(gap, how))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
