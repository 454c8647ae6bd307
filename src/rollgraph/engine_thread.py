"""The engine thread: the one thread of the generator process that touches torch.

It loads the model, pre-captures, then runs jobs from a FIFO queue one at a time, so requests reach the
engine in arrival order and one engine step runs at a time. When the queue is empty it calls
`engine.idle_work()` until that returns False (background graph captures happen only here, between
requests, never beside a replay), then blocks on the queue: no busy-waiting. The asyncio side never calls
into torch; it hands jobs over with `submit` and gets events back through a callback it makes thread-safe
(`loop.call_soon_threadsafe`).

A job never lets an exception out: a request error or a failed model step becomes a `Failed` event for that
request only, and the thread goes on with the next job.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from rollgraph.errors import RollgraphError

if TYPE_CHECKING:
    from rollgraph.engine import Engine
    from rollgraph.generation import GenerationResult
    from rollgraph.params import GenerationParams

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
    """

    def __init__(self, params: GenerationParams, emit: Callable[[Event], None]) -> None:
        self.params = params
        self.emit = emit
        self.enqueued = time.perf_counter()
        self._cancelled = False  # set from any thread: one store, atomic under the GIL (no Event to make, v40)

    def cancel(self) -> None:
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def run(self, engine: Engine) -> None:
        started = time.perf_counter()
        gen = None
        try:
            if self.cancelled:
                from rollgraph.generation import GenerationResult

                result = GenerationResult(prompt_tokens=len(self.params.input_ids), finish_reason="cancelled")
            else:
                gen = engine.generate(self.params)
                self._stream(gen)
                result = gen.result
            now = time.perf_counter()
            self.emit(Done(result, (started - self.enqueued) * 1e3, (now - self.enqueued) * 1e3))
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


class EngineThread:
    """Owns the engine: `load()` runs on the thread, `ready` resolves to the engine or to the load error.

    The thread is a daemon, so a model step stuck past the drain timeout cannot keep the process alive.
    """

    def __init__(self, load: Callable[[], Engine]) -> None:
        self._load = load
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.ready: concurrent.futures.Future = concurrent.futures.Future()
        self.idle_captures = 0
        self._thread = threading.Thread(target=self._main, name="rollgraph-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job behind every job submitted before it."""
        self._queue.put(job)

    def stop(self) -> None:
        """Let the jobs already queued run, then end the thread."""
        self._queue.put(None)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True if it ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def queued(self) -> int:
        return self._queue.qsize()

    def _main(self) -> None:
        try:
            engine = self._load()
        except BaseException as exc:
            self.ready.set_exception(exc)
            return
        try:
            self.ready.set_result(engine)
        except concurrent.futures.InvalidStateError:
            return  # the server stopped while the model was loading
        while (job := self._next_job(engine)) is not None:
            try:
                job.run(engine)
            except Exception:
                # Jobs report their own errors; this only keeps the one engine thread (and every later request) alive.
                logger.exception("a job failed outside its own error handling; the engine thread goes on")
        logger.debug("engine thread stopped")

    def _next_job(self, engine: Engine) -> Job | None:
        """The next job; while there is none, background captures run one by one, then the thread blocks."""
        while True:
            try:
                return self._queue.get_nowait()
            except queue.Empty:
                pass
            if not self._idle_once(engine):
                return self._queue.get()

    def _idle_once(self, engine: Engine) -> bool:
        try:
            did = bool(engine.idle_work())
        except Exception:
            # A failed background capture must not stop serving; the step still runs eagerly on its next miss.
            logger.exception("background graph capture failed")
            return False
        self.idle_captures += did
        return did
