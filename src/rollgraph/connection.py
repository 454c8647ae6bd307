"""One client connection of the generator process: read frames, answer requests, stream tokens; no torch here.

Runs on the asyncio loop. Every frame is read whole; once its first byte has arrived it must be complete
within the frame timeout, or the client gets a `timeout` error and the connection is closed (an idle
connection may wait for ever between frames). A request error is answered with an error frame and the
connection stays usable; only an oversized frame or a stalled one closes it, because the stream cannot be
resynchronized.

The next frame's first byte is awaited by a task (`_first_byte_task`) that stays alive while a request runs:
if it ends with EOF or an error, the client has gone, and its generation is cancelled between two engine
steps. A byte that arrives instead (a pipelined request) is kept for the next frame. A client that
half-closes its socket after sending a request is therefore taken as gone.

While the engine thread is idle, a connection waiting for its next frame lends its socket to it instead
(`request_reads = "engine"`, request_reads.py): the engine thread takes a generate or inference request off
the socket itself and starts it, and this side relays its events as for a request it read; anything else
comes back here unread. Whenever the engine gets work, every other lent socket comes back, so a connection's
health or stats request is never held behind another's generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rollgraph.config import ServerConfig
from rollgraph.engine_thread import CallJob, Done, EngineThread, Event, Failed, GenerateJob, Token
from rollgraph.errors import RequestError, RollgraphError
from rollgraph.params import GenerationParams
from rollgraph.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    FRAME_HEADER,
    FrameTooLarge,
    GenerateRequest,
    HealthRequest,
    InferenceRequest,
    Request,
    StatsRequest,
    decode_payload,
    encode_frame,
    generate_reply,
    parse_request,
    success_reply,
)
from rollgraph.request_reads import LentSocket, Taken
from rollgraph.token_writer import DirectWriter, TokenFrames, engine_socket

if TYPE_CHECKING:
    from rollgraph.generation import Generation

logger = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass
class Counters:
    """Server-side figures for `stats`; changed only on the event loop."""

    connections_open: int = 0
    connections_total: int = 0
    connections_refused: Counter = field(default_factory=Counter)
    served: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    cancelled: int = 0
    prefix_reuse_requests: int = 0
    full_prefill_requests: int = 0
    prefix_reused_tokens: int = 0
    engine_reads: int = 0  # requests the engine thread read and started itself (request_reads.py)

    def record_generation(self, done: Done) -> None:
        result = done.result
        if result.finish_reason == "cancelled":
            self.cancelled += 1
        if not result.output_tokens:
            return  # cancelled before it started: no prefill ran
        if result.prefix_reused:
            self.prefix_reuse_requests += 1
            self.prefix_reused_tokens += result.prefix_reused
        else:
            self.full_prefill_requests += 1

    def to_dict(self) -> dict:
        return {
            "connections_open": self.connections_open,
            "connections_total": self.connections_total,
            "connections_refused": dict(self.connections_refused),
            "requests_served": sum(self.served.values()),
            "served_by_type": dict(self.served),
            "errors": dict(self.errors),
            "cancelled": self.cancelled,
            "prefix_reuse_requests": self.prefix_reuse_requests,
            "full_prefill_requests": self.full_prefill_requests,
            "prefix_reused_tokens": self.prefix_reused_tokens,
            "requests_read_by_engine": self.engine_reads,
        }


@dataclass
class ServerContext:
    """What every connection shares. `engine` is used here only for pure-Python reads (`validate`, the
    tokenizer); everything that touches torch goes through `engine_thread`."""

    config: ServerConfig
    engine: Any
    engine_thread: EngineThread
    counters: Counters = field(default_factory=Counters)
    stopping: bool = False
    lent: set[LentSocket] = field(default_factory=set)
    """Sockets lent to the engine thread now (request_reads.py); changed only on the event loop."""
    generating: int = 0
    """Generations queued or running whose connections relay their events (no socket is lent meanwhile)."""

    @property
    def tokenizer(self) -> Any:
        return getattr(self.engine.model, "tokenizer", None)

    def submit(self, job: Any) -> None:
        """Queue a job on the engine thread; every lent socket comes back to the loop first (the engine is busy)."""
        self.reclaim_lent()
        self.engine_thread.submit(job)

    def reclaim_lent(self) -> None:
        for lent in list(self.lent):
            lent.reclaim()

    def server_stats(self) -> dict:
        return {
            **self.counters.to_dict(),
            "queued_jobs": self.engine_thread.queued(),
            "idle_captures": self.engine_thread.idle_captures,
        }


def peer_uid(sock: Any) -> int:
    """The connecting process's user id (SO_PEERCRED, Linux). Raises OSError where the platform lacks it."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        raise OSError("SO_PEERCRED is not available on this platform")
    _pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, option, _UCRED.size))
    return uid


REFUSE_LINGER_S = 1.0
"""How long a refused connection is read after its error frame, waiting for the client to close (below)."""


async def refuse(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, error: RollgraphError, counters: Counters
) -> None:
    """Send one error frame to a connection that is not served, then close it (never raises).

    The close lingers: after the frame the server ends its side (the client reads the frame, then EOF) and reads
    whatever the client sent until it closes, for up to REFUSE_LINGER_S (and at most one frame's worth). Closed with
    the client's request still unread, a Unix socket reports a reset to the client after the frame instead of EOF
    (seen on the H100 host: bench/results/2026-11-27_h100_v38/, call 8)."""
    counters.connections_refused[error.code] += 1
    try:
        writer.write(encode_frame(error.to_reply()))
        await asyncio.wait_for(writer.drain(), 1.0)
        if writer.can_write_eof():
            writer.write_eof()
        await asyncio.wait_for(_discard_until_eof(reader, DEFAULT_MAX_FRAME_BYTES), REFUSE_LINGER_S)
    except (ConnectionError, asyncio.TimeoutError):
        pass
    finally:
        writer.close()


async def _discard_until_eof(reader: asyncio.StreamReader, limit: int) -> None:
    """Read and drop what the peer sends until it closes or `limit` bytes have come."""
    taken = 0
    while taken < limit and (chunk := await reader.read(1 << 16)):
        taken += len(chunk)


class Connection:
    """Serves one accepted connection until EOF, a fatal frame error, or server shutdown."""

    def __init__(self, ctx: ServerContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.ctx, self.reader, self.writer = ctx, reader, writer
        self.busy = False  # a frame has begun and its request is not finished: shutdown lets it complete
        self.gone = False  # the peer closed or stopped reading: nothing more is sent
        self._peek: asyncio.Future[bytes] | None = None
        self._job: GenerateJob | None = None
        self._engine_sock: socket.socket | None = None  # for the engine thread's reads and writes, made at first use
        self._first_byte_at = 0.0  # when the current request's frame began to arrive (time.perf_counter)
        self._body_at = 0.0  # when it was read whole
        self._transport_ms: dict[str, Any] = {}  # the last generation's time in this process around the engine
        self._lent: LentSocket | None = None  # the socket lent to the engine thread now, if it is
        self._loop = asyncio.get_running_loop()  # made on the loop, in its connection callback

    def close(self) -> None:
        """Close an idle connection: its read sees EOF and `serve` returns. A connection whose lent socket the engine
        thread has just read a request from is not idle: that request runs on like any other in flight."""
        self._reclaim()
        if self._lent is not None and self._lent.taken:
            return
        self.writer.close()

    def abort(self) -> None:
        """Drop the connection and cancel its generation (it stops within one engine step)."""
        self.gone = True
        self._reclaim()
        if self._job is not None:
            self._job.cancel()
        self.writer.transport.abort()

    def _reclaim(self) -> None:
        if self._lent is not None:
            self._lent.reclaim()

    async def serve(self) -> None:
        try:
            while not self.ctx.stopping and not self.gone:
                taken = await self._lend() if self._can_lend() else None
                if taken is not None:
                    self.busy = True
                    self.ctx.counters.engine_reads += 1
                    self._first_byte_at, self._body_at = taken.first_byte_at, taken.body_at
                    try:
                        await self._handle(None, taken)
                    finally:
                        self.busy = False
                    continue
                body = await self._read_body()
                if body is None:
                    return
                self._body_at = time.perf_counter()
                try:
                    await self._handle(body)
                finally:
                    self.busy = False
        except ConnectionError as exc:
            logger.debug("connection lost: %s", exc)
        finally:
            self._reclaim()
            self._drop_peek()
            self.writer.close()
            if self._engine_sock is not None:  # every DirectWriter on it was closed when its request ended
                self._engine_sock.close()

    # ---- the next frame read by the engine thread (request_reads.py) ---------------------------------------------

    def _can_lend(self) -> bool:
        """Whether the next frame can be left to the engine thread: it is idle, and none of the frame's bytes can be
        on this side (asyncio's reader holds none, no first byte was read)."""
        ctx = self.ctx
        if ctx.config.request_reads != "engine" or ctx.stopping or ctx.generating:
            return False
        if self._peek is not None and self._peek.done():
            return False
        transport = self.writer.transport
        if transport.is_closing() or transport.get_write_buffer_size() or not _reader_empty(self.reader):
            return False
        return self._engine_socket() is not None

    async def _lend(self) -> Taken | None:
        """Lend the socket to the engine thread until its next frame arrives: the request it took and started, or None
        when the socket came back with the frame unread (the loop reads it)."""
        transport = self.writer.transport
        transport.pause_reading()  # from here on the next bytes stay in the kernel's buffer
        try:
            if not await self._drop_watch() or not _reader_empty(self.reader):
                return None
            loop = self._loop
            outcome: asyncio.Future[Taken | None] = loop.create_future()
            events: asyncio.Queue[Event | FrameBytes] = asyncio.Queue()
            direct = self._direct_writer()
            assert self._engine_sock is not None
            lent = LentSocket(
                self._engine_sock,
                self.ctx.config.max_frame_bytes,
                lambda request: self._accept(request, events, direct),
                lambda taken: _on_outcome(loop, outcome, taken),
            )
            self._lent = lent
            self.ctx.lent.add(lent)
            try:
                if not self.ctx.engine_thread.lend(lent):
                    lent.reclaim()
                taken = await outcome
            finally:
                lent.reclaim()  # a no-op once decided; the outcome then cancels an orphaned job (_report)
                self._lent = None
                self.ctx.lent.discard(lent)
            if (taken is None or taken.extra.frames is None) and direct is not None:
                direct.close()
            return taken
        finally:
            transport.resume_reading()

    async def _drop_watch(self) -> bool:
        """End the previous request's pending first-byte read (reading is paused, so no byte can reach it now);
        False if it got a byte after all, which is kept as the next frame's first."""
        peek = self._peek
        if peek is None:
            return True
        peek.cancel()
        await asyncio.wait({peek})  # raises nothing of the peek's own; a cancellation of this task still propagates
        if peek.cancelled() or peek.exception() is not None or not peek.result():
            self._peek = None  # an error or EOF shows again at the loop's next read
            return peek.cancelled()
        return False

    def _accept(
        self, request: Request, events: asyncio.Queue, direct: DirectWriter | None
    ) -> Callable[[], tuple[Any, Any]] | None:
        """On the engine thread, under the lent socket's lock: for a request it may start, what starts it; None for one
        the loop answers. A request the engine refuses raises here (`Engine.validate`), so the loop answers it. What
        is returned runs after the lock: it launches token 0's step (`Engine.start`) and then builds the job and what
        relays its events while the GPU runs (perf-notes v77)."""
        if isinstance(request, GenerateRequest) and request.prompt is None:
            params, stream = request.params, request.stream
        elif isinstance(request, InferenceRequest):
            params, stream = GenerationParams(request.input_tokens, max_new_tokens=1), False
        else:
            return None
        assert params is not None
        engine = self.ctx.engine
        engine.validate(params)

        def begin() -> tuple[Any, Any]:
            at = time.perf_counter()
            started = engine.start(params, validated=True)
            running = self._running(params, stream, events, direct, started, at)
            return running.job, running

        return begin

    def _drop_peek(self) -> None:
        peek, self._peek = self._peek, None
        if peek is not None and peek.done() and not peek.cancelled():
            peek.exception()  # retrieved, so asyncio does not log a reset peer as an unhandled error
        elif peek is not None:
            peek.cancel()

    # ---- frames --------------------------------------------------------------------------------------------

    def _first_byte_task(self) -> asyncio.Future[bytes]:
        if self._peek is None:
            self._peek = asyncio.ensure_future(self.reader.read(1))
        return self._peek

    async def _read_body(self) -> bytes | None:
        """The next frame's body, or None when the connection is to be closed (EOF, stall, too large)."""
        first = await self._first_byte_task()
        self._first_byte_at = time.perf_counter()
        self._peek = None
        if not first:
            return None
        self.busy = True
        timeout = self.ctx.config.frame_timeout_s
        try:
            return await _within(self._rest_of_frame(first), timeout)
        except asyncio.TimeoutError:
            message = f"frame not completed within {timeout:g} s of its first byte; closing the connection"
            await self._reply_error(RollgraphError(message, code="timeout"))
        except FrameTooLarge as exc:
            await self._reply_error(exc)
        except asyncio.IncompleteReadError:
            logger.debug("peer closed the connection in the middle of a frame")
        return None

    async def _rest_of_frame(self, first: bytes) -> bytes:
        header = first + await self.reader.readexactly(FRAME_HEADER.size - 1)
        (length,) = FRAME_HEADER.unpack(header)
        if length > self.ctx.config.max_frame_bytes:
            raise FrameTooLarge(length, self.ctx.config.max_frame_bytes)
        return await self.reader.readexactly(length)

    async def _send(self, frame: dict) -> None:
        """Send a frame; a peer that has gone, or stops reading for a frame timeout, is marked gone."""
        await self._write(encode_frame(frame))

    async def _write(self, data: bytes) -> None:
        if self.gone:
            return
        if self.writer.transport.is_closing():
            self.gone = True
            return
        self.writer.write(data)
        if not self.writer.transport.get_write_buffer_size():
            return  # the socket took it all: nothing to drain (and no timeout to arm, per token frame)
        try:
            await _within(self.writer.drain(), self.ctx.config.frame_timeout_s)
        except (ConnectionError, asyncio.TimeoutError):
            self.gone = True

    async def _reply_error(self, error: RollgraphError) -> None:
        self.ctx.counters.errors[error.code] += 1
        await self._send(error.to_reply())

    # ---- requests ------------------------------------------------------------------------------------------

    async def _handle(self, body: bytes | None, taken: Taken | None = None) -> None:
        """Answer one frame, or the request the engine thread took; any failure becomes an error frame and the
        connection stays usable."""
        try:
            request = taken.request if taken is not None else parse_request(decode_payload(body or b""))
            await self._dispatch(request, taken)
        except RollgraphError as exc:
            await self._reply_error(exc)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception as exc:
            logger.exception("request handling failed")
            message = f"the server failed on this request ({type(exc).__name__}); only this request was affected"
            await self._reply_error(RollgraphError(message, code="internal"))

    async def _dispatch(self, request: Request, taken: Taken | None = None) -> None:
        kind = type(request).__name__.removesuffix("Request").lower()
        if isinstance(request, HealthRequest):
            await self._send(success_reply(state="ready"))
        elif isinstance(request, StatsRequest):
            await self._stats()
        elif isinstance(request, InferenceRequest):
            if not await self._inference(request, taken):
                return
        elif not await self._generate(request, taken):
            return
        if not self.gone:
            self.ctx.counters.served[kind] += 1

    async def _stats(self) -> None:
        job = CallJob(lambda engine: engine.stats())
        self.ctx.submit(job)
        engine_stats = await asyncio.wrap_future(job.future)
        await self._send(success_reply(**engine_stats, server=self.ctx.server_stats()))

    async def _inference(self, request: InferenceRequest, taken: Taken | None) -> bool:
        """The seed's message: engine.next_token's work (one greedy token, prefix reuse), run as a job."""
        what: Taken | GenerationParams | None = taken
        if what is None:
            what = GenerationParams(request.input_tokens, max_new_tokens=1)
            self.ctx.engine.validate(what)
        done = await self._run(what, False)
        if done.result.finish_reason == "cancelled":
            return False
        await self._send(success_reply(output_tokens=done.result.output_tokens[:1]))
        return True

    async def _generate(self, request: GenerateRequest, taken: Taken | None) -> bool:
        what: Taken | GenerationParams | None = taken
        if what is None:
            what = request.params if request.prompt is None else request.with_tokens(self._encode(request.prompt))
            self.ctx.engine.validate(what)
        done = await self._run(what, request.stream)
        if done.result.finish_reason == "cancelled":
            return False
        await self._send(final_frame(done, self.ctx.tokenizer, self._transport_ms))
        return True

    def _encode(self, prompt: str) -> list[int]:
        if self.ctx.tokenizer is None:
            raise RequestError(
                "this model is served without a tokenizer: send input_tokens (token ids) instead of prompt",
                code="no_tokenizer",
            )
        return list(self.ctx.tokenizer.encode(prompt))

    @property
    def _decode(self) -> Callable[[list[int]], str] | None:
        tokenizer = self.ctx.tokenizer
        return tokenizer.decode if tokenizer is not None else None

    def _engine_socket(self) -> socket.socket | None:
        """The connection's duplicate socket for the engine thread's reads and writes, made at first use."""
        if self._engine_sock is None:
            sock = self.writer.get_extra_info("socket")
            try:
                self._engine_sock = engine_socket(sock.fileno()) if sock is not None else None
            except OSError:
                return None
        return self._engine_sock

    def _direct_writer(self) -> DirectWriter | None:
        """A writer for the engine thread (`token_writes = "engine"`), if nothing is waiting in the transport."""
        transport = self.writer.transport
        if self.ctx.config.token_writes != "engine" or transport.is_closing() or transport.get_write_buffer_size():
            return None
        sock = self._engine_socket()
        return DirectWriter(sock) if sock is not None else None

    def _running(
        self,
        params: GenerationParams,
        stream: bool,
        events: asyncio.Queue,
        direct: DirectWriter | None,
        started: Generation | None = None,
        started_at: float | None = None,
    ) -> Running:
        """The job for `params` (or for `started`, a generation the engine thread launched at `started_at`) whose
        events go to `events` (on either thread: it only builds objects). With `stream`
        the tokens are streamed: the engine thread encodes each frame and, with a DirectWriter, sends it itself
        (token_writer.py); what that cannot send comes to `events` as a `FrameBytes`, written in order by `_run`."""
        loop = self._loop
        frames = TokenFrames(self._decode) if stream else None
        direct = direct if frames is not None else None

        def emit(event: Event) -> None:  # on the engine thread
            if frames is not None and isinstance(event, Token):
                data = frames.encode(event.token_id)
                data = direct.send(data, event.at) if direct is not None else data
                if not data:
                    running.started()  # after token 0's frame is out: the loop's wake does not delay it
                    return
                event = FrameBytes(data, event.at)
            running.started()
            _post(loop, events, event)

        running = Running(GenerateJob(params, emit, started, started_at), events, frames, direct)
        return running

    async def _run(self, what: GenerationParams | Taken, stream: bool) -> Done:
        """Queue a generation on the engine thread (or take the one it started itself, `Taken`) and relay its events;
        cancel it if the peer goes away. Raises the request's RollgraphError if it failed."""
        if isinstance(what, Taken):
            running = what.extra
            self.ctx.reclaim_lent()  # the engine is busy now: no other connection's frame waits on it
        else:
            running = self._running(what, stream, asyncio.Queue(), self._direct_writer() if stream else None)
            self.ctx.submit(running.job)  # first: the rest here overlaps the engine thread's wake (perf-notes v40)
        job, events, frames, direct = running.job, running.events, running.frames, running.direct
        self._job = job
        self._transport_ms = {
            "first_byte_to_frame_ms": round((self._body_at - self._first_byte_at) * 1e3, 3),
            "frame_to_queue_ms": round((job.enqueued - self._body_at) * 1e3, 3),
            "first_byte_at": self._first_byte_at,
            "request_read_by": "engine" if isinstance(what, Taken) else "loop",
        }
        watch = self._first_byte_task()

        def on_peer(task: asyncio.Future[bytes]) -> None:
            if not task.cancelled() and (task.exception() is not None or not task.result()):
                self.gone = True
                job.cancel()

        watch.add_done_callback(on_peer)
        made: list[float] = []  # frames written here: when the engine thread had the token, and when it was written
        sent: list[float] = []
        self.ctx.generating += 1
        try:
            while True:
                event = await events.get()
                if isinstance(event, Failed):
                    raise event.error
                if isinstance(event, Done):
                    self.ctx.counters.record_generation(event)
                    if frames is not None:
                        self._transport_ms.update(_stream_figures(direct, made, sent))
                    return event
                if isinstance(event, FrameBytes):
                    await self._write(event.data)
                    made.append(event.at)
                    sent.append(time.perf_counter())
                if self.gone:
                    job.cancel()
        finally:
            self.ctx.generating -= 1
            watch.remove_done_callback(on_peer)
            self._job = None
            job.cancel()  # a no-op once it is done; stops the engine if this task was cancelled (shutdown)
            if direct is not None:
                direct.close()


@dataclass
class Running:
    """A generation's job and what relays its events: the loop's queue, the token frames' encoder, the engine
    thread's writer (each None where it does not stream or writes through the loop). `on_start`, if set, is called
    once, on the engine thread, when the job has its first event (token 0, or its end)."""

    job: GenerateJob
    events: asyncio.Queue
    frames: TokenFrames | None
    direct: DirectWriter | None
    on_start: Callable[[], None] | None = None

    def started(self) -> None:
        call, self.on_start = self.on_start, None
        if call is not None:
            call()


@dataclass(frozen=True)
class FrameBytes:
    """A token frame (or the rest of one) that the engine thread could not send itself; `at`: the token's making."""

    data: bytes
    at: float


if sys.version_info >= (3, 11):

    async def _within(aw: Awaitable, seconds: float) -> Any:
        """`asyncio.wait_for` without its extra task per call on Python < 3.12 (a frame read and a token write
        each pass through here)."""
        async with asyncio.timeout(seconds):
            return await aw

else:  # pragma: no cover - Python 3.10
    _within = asyncio.wait_for


def _reader_empty(reader: asyncio.StreamReader) -> bool:
    """Whether asyncio's reader holds no bytes, EOF or error of the connection. Reads StreamReader's buffer, which
    has no public accessor (a bytearray from Python 3.4 on); where that is missing, False: frames stay with the loop."""
    buffer = getattr(reader, "_buffer", None)
    return isinstance(buffer, bytearray) and not buffer and not reader.at_eof() and reader.exception() is None


def _on_outcome(loop: asyncio.AbstractEventLoop, outcome: asyncio.Future, taken: Taken | None) -> None:
    """A lend's outcome, from the thread that decided it. A socket that comes back is reported at once. A request the
    engine thread took is reported when its job has its first event: the loop's wake and its share of the GIL then
    come after the prefill's launch and token 0's frame, not between the frame's read and the launch."""
    if taken is None:
        _report(loop, outcome, None)
    else:
        taken.extra.on_start = lambda: _report(loop, outcome, taken)


def _report(loop: asyncio.AbstractEventLoop, outcome: asyncio.Future, taken: Taken | None) -> None:
    """From either thread: resolve a lend's outcome on the loop (dropped if the loop has already closed)."""

    def resolve() -> None:
        if not outcome.done():
            outcome.set_result(taken)
        elif taken is not None:  # nobody waits for it any more (the connection's task ended): stop its job
            taken.job.cancel()

    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(resolve)


def _post(loop: asyncio.AbstractEventLoop, events: asyncio.Queue, event: Event) -> None:
    """Called on the engine thread: hand an event to the loop (dropped if the loop has already closed)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(events.put_nowait, event)


def _stream_figures(direct: DirectWriter | None, made: list[float], sent: list[float]) -> dict:
    """How a stream's frames left: `token_frames_direct` (sent by the engine thread), `first_token_out_ms` (token 0
    made -> its frame written), and the median and largest gaps between consecutive tokens as the engine thread made
    them and as their frames were written: a client's inter-token spike that neither shows happened after the write.
    The engine thread's frames all precede the loop's (a writer that stops never starts again)."""
    if direct is not None:
        made, sent = direct.made + made, direct.sent + sent
    out: dict = {"token_frames_direct": len(direct.sent) if direct is not None else 0}
    if made:
        out["first_token_out_ms"] = round((sent[0] - made[0]) * 1e3, 3)
        out["first_token_sent_at"] = sent[0]
    if len(made) < 2:
        return out
    for name, stamps in (("made", made), ("sent", sent)):
        gaps = sorted((b - a) * 1e3 for a, b in itertools.pairwise(stamps))
        out[f"itl_{name}_median_ms"] = round(gaps[len(gaps) // 2], 3)
        out[f"itl_{name}_max_ms"] = round(gaps[-1], 3)
    return out


def final_frame(done: Done, tokenizer: Any, transport_ms: dict | None = None) -> dict:
    """The final generate frame: protocol.generate_reply plus server timings and prefix reuse.

    `transport_ms` is what the connection adds around the engine: `first_byte_to_frame_ms` (the request frame's
    first byte seen -> read whole), `frame_to_queue_ms` (read whole -> job queued; for a request the engine thread
    read itself, -> token 0's launch began) and, when streaming,
    `first_token_out_ms` (token 0 made -> its frame written) and the median and largest gaps between tokens as made
    and as sent (`itl_made_*`, `itl_sent_*`). A client's TTFT minus the server's `ttft_ms` minus these is the socket
    and the client itself. `first_byte_at` and `first_token_sent_at` are this process's time.perf_counter() at those
    two points: CLOCK_MONOTONIC on Linux, so a client on the same host can split the rest with its own stamps
    (scripts/ttft_overhead.py)."""
    data = done.result.to_dict()
    timings = {"queue_ms": round(done.queue_ms, 3), **data["timings"], **(transport_ms or {})}
    timings["ttft_ms"] = round(done.queue_ms + done.result.prefill_ms, 3)
    timings["total_ms"] = round(done.total_ms, 3)
    text = tokenizer.decode(data["output_tokens"]) if tokenizer is not None else None
    frame = generate_reply(
        data["output_tokens"],
        data["finish_reason"],
        data["usage"]["prompt_tokens"],
        timings,
        data["graphs"],
        text,
    )
    frame["prefix_reused_tokens"] = data["prefix_reused_tokens"]
    return frame
