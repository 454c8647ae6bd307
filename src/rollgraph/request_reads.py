"""Request frames read by the engine thread itself while it is idle (perf-notes v76).

Through the event loop a request's frame goes: the loop thread wakes, reads the frame through asyncio's streams,
parses it, makes the job and queues it, and the engine thread wakes for the job. That is two thread wakes and two turns
of the loop before the prefill's launch (~0.2-0.3 ms on the H100 host, perf-notes v38). Instead, a connection that
waits for its next frame lends its socket to the engine thread while that thread is idle (`EngineThread.lend`). The
engine thread waits on it in its own selector beside its job queue, and when a whole frame holding a request it can
start has arrived, it takes the frame off the socket and runs the job at once.

Anything else is left unread and the socket goes back to the loop, which reads and answers it as it always has: a
partial frame (the loop applies the frame timeout), EOF, an oversized frame, a frame that does not parse as a request,
anything `accept` declines (health, stats, a text prompt). So this path only ever starts jobs, and a frame is either
taken whole, after it parsed and `accept` took it, or left whole. The server's `accept` launches token 0's step
before it builds the job (perf-notes v77); a request the engine refuses there, an id past the vocabulary say, raises
and is left for the loop, which sends the error frame.

Rules that keep it exact:
- The connection lends its socket only while asyncio's reader holds none of its bytes and reading is paused, so the
  next frame can only be in the kernel's buffer, where the engine thread peeks (connection.py checks this).
- `take` (engine thread) and `reclaim` (loop thread) decide under the lent socket's lock; whichever comes first
  decides, and the outcome, taken or back, is reported exactly once. What the engine thread does with a frame it took
  (token 0's launch, the job) runs after the lock is released, so `reclaim` never waits for a step.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rollgraph import host_marks
from rollgraph.errors import RollgraphError
from rollgraph.protocol import FRAME_HEADER, Request, decode_payload, parse_request

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Taken:
    """What the engine thread took: the request, the job it runs, what `begin` built beside it, and the stamps of the
    frame (`first_byte_at`: the engine thread woke for it; `body_at`: it was read whole; time.perf_counter())."""

    request: Request
    job: Any
    extra: Any
    first_byte_at: float
    body_at: float


BACK = None
"""The outcome reported when the socket goes back to the loop with nothing read from it."""


class LentSocket:
    """A connection's socket while the engine thread may read its next request frame.

    `sock` is the connection's non-blocking duplicate of its socket (token_writer.engine_socket). `accept(request)`
    runs on the engine thread for a request that parsed, under the lock that `reclaim` takes, so it must be quick: it
    returns `begin` to take the frame, None to leave it for the loop, or raises RollgraphError (left for the loop, which
    answers it). `begin()` then runs on the engine thread after the lock is released and returns `(job, extra)`: the
    server launches token 0's step there (perf-notes v77), which in a mode without graphs takes as long as the step,
    and the loop's `reclaim` must not wait for that. `report(outcome)` is called exactly once, with a `Taken` or `BACK`,
    from the thread that decided (it must be thread-safe). `release` is called with this object once it is no longer
    lent (the engine thread's selector forgets it)."""

    def __init__(
        self,
        sock: socket.socket,
        max_frame_bytes: int,
        accept: Callable[[Request], Callable[[], tuple[Any, Any]] | None],
        report: Callable[[Taken | None], None],
    ) -> None:
        self._sock = sock
        self._max = max_frame_bytes
        self._accept = accept
        self._report = report
        self._lock = threading.Lock()
        self.release: Callable[[LentSocket], None] = lambda lent: None
        self.active = True
        self.taken = False  # the engine thread took a request off it (set before `report` is called)

    def fileno(self) -> int:
        return self._sock.fileno()

    def take(self) -> Any:
        """On the engine thread, when the socket is readable: the job to run now, or None (the socket went back to the
        loop, or was already reclaimed). Whether to take the frame is decided under the lock; `begin` runs after it."""
        with self._lock:
            if not self.active:
                return None
            woke = time.perf_counter()
            host_marks.begin("woke")
            body = self._peek_frame()
            host_marks.mark("peeked")
            claim = self._claim(body) if body is not None else None
            self._decide(claim is not None)
        if claim is None:
            self.release(self)
            self._report(BACK)
            return None
        request, begin, body_at = claim
        assert body is not None
        try:
            job, extra = begin()
        except Exception:  # `begin` reports its request's own errors through the job; this only keeps serving
            logger.exception("starting a request on the engine thread failed; the loop reads it instead")
            self.taken = False
            self.release(self)
            self._report(BACK)  # the frame is still unread: the loop reads it and answers it
            return None
        self.release(self)  # after the launch: this thread selects again only once take() has returned
        host_marks.mark("accepted")
        if not self._consume(FRAME_HEADER.size + len(body)):
            job.cancel()
            self.taken = False
            self._report(BACK)  # the loop's next read fails on the stream that is out of step, and closes it
            return None
        host_marks.mark("consumed")
        self._report(Taken(request, job, extra, woke, body_at))
        host_marks.mark("reported")
        return job

    def reclaim(self) -> bool:
        """On the loop thread: take the socket back unless the engine thread already decided; True if this call did."""
        with self._lock:
            if not self.active:
                return False
            self._decide(False)
        self.release(self)
        self._report(BACK)
        return True

    def _decide(self, taken: bool) -> None:
        """Under the lock: the socket is no longer lent, and whether the engine thread took its frame is settled (a
        connection that `close` finds taken is left to finish its request). The caller then calls `release`."""
        self.active = False
        self.taken = taken

    def _peek_frame(self) -> bytes | None:
        """The next frame's body if it has arrived whole (nothing is consumed), else None."""
        try:
            head = self._sock.recv(FRAME_HEADER.size, socket.MSG_PEEK)
            if len(head) < FRAME_HEADER.size:
                return None  # EOF or a header still on its way: the loop reads it
            (length,) = FRAME_HEADER.unpack(head)
            if length > self._max:
                return None  # the loop refuses it with frame_too_large
            data = self._sock.recv(FRAME_HEADER.size + length, socket.MSG_PEEK)
        except OSError:  # includes BlockingIOError: nothing to read after all
            return None
        return data[FRAME_HEADER.size :] if len(data) == FRAME_HEADER.size + length else None

    def _claim(self, body: bytes) -> tuple[Request, Callable[[], tuple[Any, Any]], float] | None:
        """Parse the frame and ask `accept`: (request, begin, when the body was read whole), or None to leave it."""
        body_at = time.perf_counter()
        try:
            payload = decode_payload(body)
            host_marks.mark("decoded")
            request = parse_request(payload)
            host_marks.mark("parsed")
            begin = self._accept(request)
        except RollgraphError:
            return None  # the loop parses it again and sends the error frame
        except Exception:
            logger.exception("reading a request on the engine thread failed; the loop reads it instead")
            return None
        return None if begin is None else (request, begin, body_at)

    def _consume(self, n: int) -> bool:
        """Read the `n` bytes just peeked; they are in the socket's buffer, so one read takes them without waiting."""
        try:
            got = len(self._sock.recv(n))
        except OSError:
            got = 0
        if got == n:
            return True
        # Cannot happen while nothing else reads the socket; if it does, the stream is out of step, and the loop's
        # next read fails on it and closes the connection (the request is not run).
        logger.error("consumed %d of a peeked %d-byte request frame; the loop takes the connection back", got, n)
        return False
