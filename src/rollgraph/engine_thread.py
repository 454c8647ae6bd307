"""The engine thread: the one thread of the generator process that touches torch.

It loads the model, pre-captures, then runs jobs from a FIFO queue one at a time, so requests reach the
engine in arrival order and one engine step runs at a time. When the queue is empty it calls
`engine.idle_work()` until that returns False (background graph captures happen only here, between
requests, never beside a replay), then blocks in a selector. The selector holds a wake-up pipe that `submit`
writes to, and the sockets of idle connections lent with `lend` (request_reads.py): when a request frame arrives on
one of those, the thread reads it itself and runs its job at once. With `spin_s` (serve's --idle-spin-ms), a lend
starts a short poll of the selector without blocking before the thread sleeps, so a request sent right after the
last reply finds the thread running (perf-notes v90). The asyncio side
never calls into torch; it hands jobs over with `submit` (or lends a socket) and gets events back through a
callback it makes thread-safe (`loop.call_soon_threadsafe`).

A job never lets an exception out: a request error or a failed model step becomes a `Failed` event for that
request only, and the thread goes on with the next job.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import queue
import selectors
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from rollgraph import host_marks
from rollgraph.errors import RollgraphError

if TYPE_CHECKING:
    from rollgraph.engine import Engine
    from rollgraph.generation import Generation, GenerationResult
    from rollgraph.params import GenerationParams
    from rollgraph.request_reads import LentSocket

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Token:
    """One generated token id, sent as soon as the engine made it; `at` is time.perf_counter() then."""

    token_id: int
    at: float = 0.0


@dataclass(frozen=True)
class Done:
    """The generation ended (stop, length or cancelled); `queue_ms` is enqueue to engine start."""

    result: GenerationResult
    queue_ms: float
    total_ms: float


@dataclass(frozen=True)
class Failed:
    """The request failed on the engine thread; `error.to_reply()` is its error frame."""

    error: RollgraphError


Event = Token | Done | Failed


class Job(Protocol):
    def run(self, engine: Engine) -> None: ...

    def cancel(self) -> None: ...


class GenerateJob:
    """A generation whose events go to `emit` (called on the engine thread; it must be thread-safe).

    `cancel()` may be called from any thread: the engine thread checks the flag between tokens and closes
    the generation, which frees its cache row; a job cancelled before it starts never runs. Exactly one
    terminal event (Done or Failed) is emitted, whatever happens.

    `started` is the generation when the engine thread has already launched it (`Engine.start`, for a request it
    read itself), and `enqueued` then the time.perf_counter() at which that launch began: such a job waited in no
    queue, so its Done reports `queue_ms` 0 and its time from there.
    """

    def __init__(
        self,
        params: GenerationParams,
        emit: Callable[[Event], None],
        started: Generation | None = None,
        enqueued: float | None = None,
    ) -> None:
        self.params = params
        self.emit = emit
        self._started = started
        self.enqueued = time.perf_counter() if enqueued is None else enqueued
        self._cancelled = False  # set from any thread: one store, atomic under the GIL (no Event to make, v40)

    def cancel(self) -> None:
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def run(self, engine: Engine) -> None:
        started = time.perf_counter()
        gen = self._started
        if gen is None:  # a job from the queue: its stamps start here
            host_marks.begin("run")
        else:
            host_marks.mark("run")
        try:
            if self.cancelled:
                from rollgraph.generation import GenerationResult

                result = GenerationResult(prompt_tokens=len(self.params.input_ids), finish_reason="cancelled")
            else:
                if gen is None:
                    gen = engine.generate(self.params)
                self._stream(gen)
                result = gen.result
                result.host_marks = host_marks.drain()
            now = time.perf_counter()
            queued = 0.0 if self._started is not None else started - self.enqueued
            self.emit(Done(result, queued * 1e3, (now - self.enqueued) * 1e3))
        except RollgraphError as exc:
            self.emit(Failed(exc))
        except Exception as exc:
            logger.exception("a model step failed; only this request is affected")
            message = f"the model step failed ({type(exc).__name__}); only this request was affected"
            self.emit(Failed(RollgraphError(message, code="internal")))
        finally:
            if gen is not None:
                _close(gen)

    def _stream(self, gen: Any) -> None:
        it = iter(gen)
        while not self.cancelled:
            tok = next(it, None)
            if tok is None:
                return
            self.emit(Token(tok, time.perf_counter()))
        gen.close()  # sets finish_reason "cancelled" unless the last token had already ended it


def _close(gen: Any) -> None:
    """Close a generation (idempotent: frees its row if the loop was left early). Its terminal event is already
    sent, so a failure here is only logged: raised, it would end the engine thread and hang every later request."""
    try:
        gen.close()
    except Exception:
        logger.exception("closing a generation failed; the engine thread goes on")


class CallJob:
    """Run `fn(engine)` on the engine thread (e.g. `engine.stats()`, which reads device state); the result
    or the exception lands in `future`."""

    def __init__(self, fn: Callable[[Engine], Any]) -> None:
        self.fn = fn
        self.future: concurrent.futures.Future = concurrent.futures.Future()

    def cancel(self) -> None:
        self.future.cancel()

    def run(self, engine: Engine) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            self.future.set_result(self.fn(engine))
        except Exception as exc:
            self.future.set_exception(exc)


SPIN_SWITCH_S = 0.0002
"""Python's thread switch interval while the engine thread polls (sys.setswitchinterval; 5 ms by default): the poll
takes the GIL back after every select(0), so a thread that wants it gets it only when the interval runs out."""


class EngineThread:
    """Owns the engine: `load()` runs on the thread, `ready` resolves to the engine or to the load error.

    The thread is a daemon, so a model step stuck past the drain timeout cannot keep the process alive.
    `spin_s` > 0: after each `lend`, the idle thread polls for that many seconds before it blocks (perf-notes v90).
    """

    def __init__(self, load: Callable[[], Engine], spin_s: float = 0.0) -> None:
        self._load = load
        self._spin_s = spin_s
        self._spin_until = 0.0  # time.perf_counter() up to which the idle thread polls
        self.spins = 0  # polls begun (a lend while the thread was idle)
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.ready: concurrent.futures.Future = concurrent.futures.Future()
        self.idle_captures = 0
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._closed = False
        self._thread = threading.Thread(target=self._main, name="rollgraph-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job behind every job submitted before it."""
        self._queue.put(job)
        self._wake()

    def stop(self) -> None:
        """Let the jobs already queued run, then end the thread."""
        self._queue.put(None)
        self._wake()

    def lend(self, lent: LentSocket) -> bool:
        """From any thread: let the engine thread read the next request frame on `lent`'s socket while it is idle;
        False if it cannot (the thread has ended). The socket is forgotten here once `lent` is taken or reclaimed (its
        `release`)."""
        if self._closed:
            return False
        lent.release = self._release
        try:
            self._selector.register(lent, selectors.EVENT_READ, lent)  # epoll: safe beside the thread's select()
        except (KeyError, ValueError, OSError):
            return False
        if self._spin_s > 0:
            self._spin_until = time.perf_counter() + self._spin_s
            self._wake()  # off the next request's path: its client is still reading this reply
        return True

    def _release(self, lent: LentSocket) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(lent)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True if it ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def queued(self) -> int:
        return self._queue.qsize()

    def _wake(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(BlockingIOError):  # a full pipe already holds a wake-up
            os.write(self._wake_w, b"\0")

    def _close(self) -> None:
        """At the thread's end: the selector and the wake-up pipe (nothing is submitted or lent after stop())."""
        self._closed = True
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _main(self) -> None:
        try:
            engine = self._load()
        except BaseException as exc:
            self._close()
            self.ready.set_exception(exc)
            return
        try:
            self.ready.set_result(engine)
        except concurrent.futures.InvalidStateError:
            self._close()
            return  # the server stopped while the model was loading
        while (job := self._next_job(engine)) is not None:
            try:
                job.run(engine)
            except Exception:
                # Jobs report their own errors; this only keeps the one engine thread (and every later request) alive.
                logger.exception("a job failed outside its own error handling; the engine thread goes on")
        self._close()
        logger.debug("engine thread stopped")

    def _next_job(self, engine: Engine) -> Job | None:
        """The next job; while there is none, background captures run one by one (a job that comes is taken between
        two of them), then the thread polls if a lend asked it to, then waits in its selector. A job ends any poll
        window: the next one starts with the next lend, once that job's reply is out."""
        while True:
            job = self._poll(0)
            if job is _NOTHING and not self._idle_once(engine):
                job = self._spin() if time.perf_counter() < self._spin_until else _NOTHING
                if job is _NOTHING:
                    job = self._poll(None)
            if job is not _NOTHING:
                self._spin_until = 0.0
                return job

    def _poll(self, timeout: float | None) -> Any:
        """A queued job (None: stop), else the job of a request frame read from a lent socket, else _NOTHING, after
        waiting up to `timeout` seconds (None: until something comes) for either."""
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            pass
        for key, _ in self._selector.select(timeout):
            if key.data is None:  # the wake-up pipe: drain it; the queue is read below
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 4096):
                        pass
                continue
            try:
                job = key.data.take()
            except Exception:  # take() reports its own outcomes; this only keeps the one engine thread alive
                logger.exception("reading a lent socket failed; it goes back to the loop")
                key.data.reclaim()
                continue
            if job is not None:
                return job
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return _NOTHING

    def _spin(self) -> Any:
        """Poll without blocking until a job or a lent socket's request comes, or `_spin_until` passes."""
        self.spins += 1
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, SPIN_SWITCH_S))
        try:
            while time.perf_counter() < self._spin_until:
                job = self._poll(0)
                if job is not _NOTHING:
                    return job
        finally:
            sys.setswitchinterval(interval)
        return _NOTHING

    def _idle_once(self, engine: Engine) -> bool:
        try:
            did = bool(engine.idle_work())
        except Exception:
            # A failed background capture must not stop serving; the step still runs eagerly on its next miss.
            logger.exception("background graph capture failed")
            return False
        self.idle_captures += did
        return did


_NOTHING = object()
"""_poll's answer when nothing came."""
