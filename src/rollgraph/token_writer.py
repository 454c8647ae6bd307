"""Streamed token frames written by the engine thread straight into the client's socket.

Through the event loop a token's frame goes engine thread -> `call_soon_threadsafe` -> asyncio queue -> the
connection's task -> transport -> socket: two turns of the loop, each of which waits for the GIL while the engine
thread launches its next step. On the H100 host that hop took 0.12-0.31 ms per token, and now and then a frame left
milliseconds late (perf-notes v8-v10). The engine thread has the frame first, so it writes it itself.

Order is kept by three rules. The connection makes a writer only when its transport has nothing buffered, and writes
nothing on that connection until the job's terminal event. A frame the socket does not take whole (the client reads
slowly), or a failed send, turns the writer off for good: the unsent rest and every later frame go through the loop,
whose queue keeps order (`call_soon_threadsafe` is FIFO). And the writers send on a duplicate of the socket's
descriptor (`engine_socket`) that the connection makes once and closes only after its last writer is closed, and a
writer is closed under its lock, so a send can never reach a descriptor number that another connection has been
given since. (One duplicate a connection, not one a request: that took an os.dup, a socket object and a setblocking
on the way from a request's frame to its job, perf-notes v40.)
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

from rollgraph.protocol import encode_frame, token_frame


class TokenFrames:
    """Token frames in stream order: `index` counts the frames made so far; `text` decodes one id (or is None)."""

    def __init__(self, text: Callable[[int], str] | None) -> None:
        self._text = text
        self.index = 0

    def encode(self, token_id: int) -> bytes:
        text = self._text([token_id]) if self._text is not None else None
        frame = encode_frame(token_frame(token_id, self.index, text))
        self.index += 1
        return frame


def engine_socket(fileno: int) -> socket.socket:
    """A non-blocking duplicate of a connection's socket, for DirectWriters; whoever makes it closes it, after the
    last writer on it is closed."""
    sock = socket.socket(fileno=os.dup(fileno))
    sock.setblocking(False)
    return sock


class DirectWriter:
    """Sends frames on the calling thread with non-blocking sends on `sock` (an `engine_socket`).

    `send` returns the bytes it could not send (empty when the socket took the whole frame); after a partial or
    failed send the writer is off and returns every later frame whole, for the caller to route through the loop.
    `made` and `sent` hold the perf_counter stamps of each frame it sent (the token's making, the send's end).
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self.active = True
        self.error: OSError | None = None
        self.made: list[float] = []
        self.sent: list[float] = []

    def send(self, frame: bytes, made_at: float) -> bytes:
        with self._lock:
            if not self.active:
                return frame
            try:
                n = self._sock.send(frame)
            except BlockingIOError:
                n = 0
            except OSError as exc:  # the peer has gone: the loop's write finds out too and cancels the job
                self.error, n = exc, 0
            if n == len(frame):
                self.made.append(made_at)
                self.sent.append(time.perf_counter())
                return b""
            self.active = False
            return frame[n:]

    def close(self) -> None:
        """No send after this returns (the socket stays open: its maker closes it)."""
        with self._lock:
            self.active = False
