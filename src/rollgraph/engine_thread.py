"""The engine thread: the thread of the generator process that runs the engine.

It loads the model, pre-captures, then runs jobs from a FIFO queue one at a time, so requests reach the
engine in arrival order and one engine step runs at a time. When the queue is empty it calls
`engine.idle_work()` until that returns False (background graph captures happen only here, between
requests, never beside a replay), then blocks until a job comes: no busy-waiting. The asyncio side hands
jobs over with `submit` and gets events back through a callback it makes thread-safe
(`loop.call_soon_threadsafe`).

One exception saves a request the engine thread's wake-up (~0.09 ms on the H100 hosts, perf-notes v42): the
engine thread holds `_engine_lock` whenever it is not waiting for a job, and takes jobs off the queue only while
holding it. So a thread that gets the lock without waiting, and finds the queue empty, has the engine to itself
and nothing queued ahead of it; `submit` then lets the job start right there (`Job.start`: for a generation, the
launch of token 0's step, when that is a graph replay) before queueing it, and the engine thread carries it on.
A background capture holds the lock too, so no replay can run beside it.

A job never lets an exception out: a request error or a failed model step becomes a `Failed` event for that
request only, and the thread goes on with the next job.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
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

    def start(self, engine: Engine, anything: bool) -> bool:
        """Begin the job on the calling thread, which holds the engine while the engine thread waits for work;
        True if it did (run() then carries it on). Only host work of a few hundred µs belongs here (a graph's
        launch), unless `anything`. It must not raise."""
        ...


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
        self._started: float | None = None  # when start() began it, if it did
        self._gen: Any = None  # what start() began
        self._start_error: BaseException | None = None

    def start(self, engine: Engine, anything: bool) -> bool:
        started = time.perf_counter()
        try:
            if self.cancelled or not (anything or engine.starts_with_a_replay(self.params)):
                return False
            engine.use_this_thread()
            self._gen = engine.start(self.params)
        except Exception as exc:  # reported by run(), on the engine thread, like any other failure of the request
            self._start_error = exc
        self._started = started
        return True

    def cancel(self) -> None:
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def run(self, engine: Engine) -> None:
        started = self._started if self._started is not None else time.perf_counter()
        gen, begun = self._gen, self._started is not None
        try:
            if self._start_error is not None:
                raise self._start_error
            if self.cancelled and gen is None:
                from rollgraph.generation import GenerationResult

                result = GenerationResult(prompt_tokens=len(self.params.input_ids), finish_reason="cancelled")
            else:
                gen = gen if begun else engine.generate(self.params)
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

    def start(self, engine: Engine, anything: bool) -> bool:
        return False

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

    `first_step`: "replay" (a job may start on the submitting thread when the engine thread waits for work and the
    job starts with a graph replay, module docstring), "any" (the same for any start, eager or compiled steps too:
    the tests run this path on the CPU with it), or "engine" (every job runs wholly on the engine thread).
    """

    def __init__(self, load: Callable[[], Engine], first_step: str = "replay") -> None:
        self._load = load
        self._first_step = first_step
        self._jobs: collections.deque[Job | None] = collections.deque()  # appended anywhere, taken under the lock
        self._wake = threading.Semaphore(0)  # one release per job appended
        self._engine_lock = threading.Lock()
        self._submit_lock = threading.Lock()  # submitters one at a time: no job appended beside a start
        self._engine: Engine | None = None
        self.ready: concurrent.futures.Future = concurrent.futures.Future()
        self.idle_captures = 0
        self.started_on_submit = 0
        self._thread = threading.Thread(target=self._main, name="rollgraph-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job behind every job submitted before it; if the engine is idle and nothing is queued, the job
        may first start right here (module docstring). Never blocks: a busy engine just means a queued job."""
        with self._submit_lock:
            engine = self._engine
            if engine is not None and self._first_step != "engine" and self._engine_lock.acquire(blocking=False):
                try:
                    if not self._jobs and job.start(engine, self._first_step == "any"):
                        self.started_on_submit += 1
                    self._jobs.append(job)
                finally:
                    self._engine_lock.release()
            else:
                self._jobs.append(job)
        self._wake.release()

    def stop(self) -> None:
        """Let the jobs already queued run, then end the thread."""
        with self._submit_lock:
            self._jobs.append(None)
        self._wake.release()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True if it ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def queued(self) -> int:
        return len(self._jobs)

    def _main(self) -> None:
        try:
            engine = self._load()
        except BaseException as exc:
            self.ready.set_exception(exc)
            return
        with self._engine_lock:
            self._engine = engine  # from here on submit() may start jobs, when it gets the lock
            try:
                self.ready.set_result(engine)
            except concurrent.futures.InvalidStateError:
                return  # the server stopped while the model was loading
            while (job := self._next_job(engine)) is not None:
                try:
                    job.run(engine)
                except Exception:
                    # Jobs report their own errors; this only keeps the one engine thread (and every later request)
                    # alive.
                    logger.exception("a job failed outside its own error handling; the engine thread goes on")
        logger.debug("engine thread stopped")

    def _next_job(self, engine: Engine) -> Job | None:
        """The next job (taken under the lock, which the caller holds); while there is none, background captures run
        one by one, then the thread lets go of the lock and blocks until a job is appended."""
        while True:
            if self._jobs:
                return self._jobs.popleft()
            if not self._idle_once(engine):
                self._engine_lock.release()
                try:
                    self._wake.acquire()
                finally:
                    self._engine_lock.acquire()

    def _idle_once(self, engine: Engine) -> bool:
        try:
            did = bool(engine.idle_work())
        except Exception:
            # A failed background capture must not stop serving; the step still runs eagerly on its next miss.
            logger.exception("background graph capture failed")
            return False
        self.idle_captures += did
        return did
