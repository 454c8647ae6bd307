"""Blocking client for a rollgraph server over a Unix socket; no torch import, so it runs without a GPU stack.

Keeps the seed client's API (`Client(socket_path)`, `connect()`, `send_request(tokens) -> [next_token]`) and
adds `generate`, `stats` and `health`. Every frame is read whole (`protocol.recv_frame`), every wait has the
socket timeout, and failures raise one of:
- `ServerUnavailable` (a ConnectionError): nothing listens at the socket path;
- `ConnectionClosed` (a ConnectionError): the server went away before a whole reply arrived;
- `TimeoutError`: no bytes arrived within `timeout` seconds;
- `ServerError`: the server answered with an error frame (its `code` and message are kept);
- `RequestError`: the request was refused here, before sending, with the server's own validation.
After a timeout or a broken connection the client drops the socket; the next call reconnects.

A client serves one request at a time and is not thread-safe: use one client per thread.

`generate` returns a `Generation`, an iterator of token ids as the server streams them; once it is
exhausted, `Generation.result` holds the final frame, a dict shaped as the `protocol` docstring says.
`Generation.events()` yields `TokenEvent`s (id, index, decoded text) instead of bare ids. Without
streaming, the ids come from the final frame.
"""

from __future__ import annotations

import itertools
import logging
import operator
import os
import select
import socket
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from rollgraph.errors import RequestError, ServerError
from rollgraph.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    ConnectionClosed,
    FrameTooLarge,
    encode_checked,
    encode_frame,
    parse_request,
    recv_frame,
)

logger = logging.getLogger(__name__)

# Replies can be much larger than requests (a long generation's final frame carries every id and its text),
# so the client accepts more than the server's default request cap. It only guards against a garbage header.
CLIENT_MAX_FRAME_BYTES = 64 * DEFAULT_MAX_FRAME_BYTES


class ServerUnavailable(ConnectionError):
    """No rollgraph server accepts connections at the socket path (missing file, refused, no permission)."""


class UnexpectedReply(ServerError):
    """The server sent a frame this client does not understand (version mismatch, or not rollgraph)."""

    code = "invalid_message"


@dataclass(frozen=True)
class TokenEvent:
    """One streamed token; `text` is its decoded piece when the server has a tokenizer."""

    token_id: int
    index: int
    text: str | None = None


def _check_final(frame: dict) -> dict:
    """The final generate frame, as sent; UnexpectedReply if it lacks the fields every final frame has."""
    if not _is_int_list(frame.get("output_tokens")) or not isinstance(frame.get("finish_reason"), str):
        raise UnexpectedReply(f"final generate frame lacks output_tokens or finish_reason: {_cut(frame)}")
    return frame


class Generation:
    """Iterator over the token ids of one generate request, read from the server as they arrive.

    `result` is None until the final frame has been read, then that frame: `output_tokens`,
    `finish_reason`, `usage`, `timings`, `graphs` (and `text` when the server has a tokenizer). An error
    frame (even after some tokens) raises ServerError from the iteration and ends it. `close()` before
    the end drops the connection, which the server takes as a cancellation; the client reconnects on its
    next call.
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._pending: deque[TokenEvent] = deque()
        self._streamed = False
        self._done = False
        self.result: dict | None = None

    def __iter__(self) -> Generation:
        return self

    def __next__(self) -> int:
        return self._next_event().token_id

    def events(self) -> Iterator[TokenEvent]:
        """The remaining tokens as TokenEvents (shares its position with plain iteration)."""
        while True:
            try:
                yield self._next_event()
            except StopIteration:
                return

    def wait(self) -> dict:
        """Read to the end and return the final result (tokens not yet iterated are skipped)."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result

    def close(self) -> None:
        """Abandon the generation: if unfinished, drop the connection so the server stops generating."""
        if not self._done:
            self._finish()
            self._client._drop("generation abandoned before its final frame")

    def __enter__(self) -> Generation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _next_event(self) -> TokenEvent:
        if self._pending:
            return self._pending.popleft()
        if self._done:
            raise StopIteration
        try:
            frame = self._client._receive_reply()
        except BaseException:
            self._finish()
            raise
        if frame.get("status") == "token":
            self._streamed = True
            return _token_event(frame)
        self._finish()
        self.result = _check_final(frame)
        if not self._streamed:  # stream=False, or nothing was streamed: the ids come from the final frame
            self._pending.extend(TokenEvent(t, i) for i, t in enumerate(self.result["output_tokens"]))
            if self._pending:
                return self._pending.popleft()
        raise StopIteration

    def _finish(self) -> None:
        self._done = True
        if self._client._active is self:
            self._client._active = None


class Client:
    """Connection to a rollgraph server at `socket_path`. `timeout` (seconds, None = wait forever) bounds
    every wait for bytes: connecting, sending, and each wait for the next piece of a reply, so a streaming
    generation may run longer than `timeout` in total while a non-streaming one must finish within it.

    `busy_poll=True` waits for each reply frame by polling the socket without sleeping, so the frame is read the
    moment it arrives instead of when the OS gets round to waking a sleeping process. It keeps one CPU core busy
    while a reply is awaited: an option for latency measurement (`rollgraph bench --client-wait spin`), not for
    ordinary use. On the H100 hosts it removed some of the bench's client-only ITL spikes but not all, and the
    server's own request handling got slower beside it (perf-notes v12).

    `spin_ahead_s` spins only near a streamed token's expected arrival: after each token frame the client sleeps in
    poll() until `spin_ahead_s` before the next token is due (its arrival plus the shortest of the last four gaps),
    then polls without sleeping. A token that comes before that wakes the client as usual, and the first frame of a
    request is awaited asleep. At a 5 ms token pace and 1 ms ahead it keeps a core busy a fifth of the time
    (`rollgraph bench --client-wait near`). On the H100 hosts it did not reduce the bench's late intervals, so the
    client's wake is not what delays them there (perf-notes v63)."""

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        timeout: float | None = 60.0,
        *,
        max_frame_bytes: int = CLIENT_MAX_FRAME_BYTES,
        busy_poll: bool = False,
        spin_ahead_s: float | None = None,
    ) -> None:
        if spin_ahead_s is not None and not spin_ahead_s >= 0:
            raise ValueError(f"spin_ahead_s must be a number of seconds >= 0 or None, got {spin_ahead_s!r}")
        self.socket_path = os.fspath(socket_path)
        self.timeout = timeout
        self.max_frame_bytes = max_frame_bytes
        self.busy_poll = busy_poll
        self.spin_ahead_s = spin_ahead_s
        self._sock: socket.socket | None = None
        self._active: Generation | None = None
        self._arrivals: deque[float] = deque(maxlen=5)  # this request's token frames, for spin_ahead_s

    def connect(self) -> None:
        """Connect if not connected. Raises ServerUnavailable or TimeoutError, naming the socket path."""
        if self._sock is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except TimeoutError:
            sock.close()
            raise TimeoutError(
                f"connecting to the rollgraph server at {self.socket_path} took over {self.timeout} s"
            ) from None
        except OSError as exc:
            sock.close()
            raise ServerUnavailable(_unavailable_message(self.socket_path, exc)) from exc
        self._sock = sock
        logger.debug("connected to %s", self.socket_path)

    def close(self) -> None:
        """Close the connection (an unfinished generation is abandoned). Safe to call twice."""
        if self._active is not None:
            self._active.close()
        self._drop("closed by the caller")

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send_request(self, input_tokens: Iterable[int]) -> list[int]:
        """The seed's message: the greedy next token after `input_tokens`, as a one-element list."""
        message = {"type": "inference", "input_tokens": _token_list(input_tokens, "input_tokens")}
        parse_request(message)
        reply = self._call(message, checked=True)
        tokens = reply.get("output_tokens")
        if not _is_int_list(tokens):
            raise UnexpectedReply(f"inference reply lacks a list of output_tokens: {_cut(reply)}")
        return list(tokens)

    def generate(
        self,
        input_tokens: Iterable[int] | None = None,
        prompt: str | None = None,
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_token_ids: Iterable[int] = (),
        stream: bool = True,
    ) -> Generation:
        """Start a generation from token ids or text (exactly one). The request is validated here with the
        server's own rules (RequestError, nothing sent) and sent at once; iterate the result for the ids."""
        message: dict = {"type": "generate", "max_new_tokens": max_new_tokens, "temperature": temperature}
        message.update(top_k=top_k, top_p=top_p, seed=seed, stream=stream)
        message["stop_token_ids"] = _token_list(stop_token_ids, "stop_token_ids")
        if input_tokens is not None:
            message["input_tokens"] = _token_list(input_tokens, "input_tokens")
        if prompt is not None:
            message["prompt"] = prompt
        parse_request(message)
        self._send(message, checked=True)
        self._active = Generation(self)
        return self._active

    def stats(self) -> dict:
        """The server's counters (pool hits, misses, captures, evictions, bytes...), without `status`."""
        return _without_status(self._call({"type": "stats"}))

    def health(self) -> dict:
        """The server's liveness and readiness, without `status`."""
        return _without_status(self._call({"type": "health"}))

    def _call(self, message: dict, checked: bool = False) -> dict:
        """One request, one reply frame (a success frame; error frames raise ServerError)."""
        self._send(message, checked)
        reply = self._receive_reply()
        if reply.get("status") != "success":
            raise UnexpectedReply(f"expected a success frame for {message['type']!r}, got {_cut(reply)}")
        return reply

    def _send(self, message: dict, checked: bool = False) -> None:
        """Send one frame; `checked`: `parse_request` accepted `message`, so its numbers are finite and the faster
        writer may take it (protocol.encode_checked)."""
        if self._active is not None:
            raise RuntimeError(
                "a generate() stream is still open on this client: iterate it to the end or call its "
                "close() first, or use a second Client for concurrent requests"
            )
        self.connect()
        assert self._sock is not None
        self._arrivals.clear()  # a new request: its first frame is awaited asleep
        try:
            self._sock.sendall(encode_checked(message) if checked else encode_frame(message))
        except TimeoutError:
            self._drop("send timed out")
            raise TimeoutError(
                f"sending to the rollgraph server at {self.socket_path} took over {self.timeout} s"
            ) from None
        except OSError as exc:
            self._drop("send failed")
            raise ConnectionClosed(
                f"lost the connection to the rollgraph server at {self.socket_path} while sending: {exc}"
            ) from exc

    def _receive_reply(self) -> dict:
        """Next frame, as a dict with a known status; error frames raise ServerError."""
        frame = self._receive()
        status = frame.get("status")
        if status == "token" and self.spin_ahead_s is not None:  # only a spin-ahead client needs the pace
            self._arrivals.append(time.monotonic())
        if status == "error":
            code = frame.get("code")
            if code == "frame_too_large":  # the server closes the connection after this one
                self._drop("server refused an oversized frame")
            raise ServerError(str(frame.get("error", "")), code=code if isinstance(code, str) else "internal")
        if status not in ("success", "token"):
            self._drop("unexpected reply")
            raise UnexpectedReply(f"reply has an unknown status: {_cut(frame)}")
        return frame

    def _receive(self) -> dict:
        """Next whole frame. A broken stream (timeout, EOF, bad frame) drops the connection first."""
        if self._sock is None:
            raise ConnectionClosed(f"not connected to the rollgraph server at {self.socket_path}")
        where = f"the rollgraph server at {self.socket_path}"
        try:
            if self.busy_poll:
                _spin_until_readable(self._sock, self.timeout)
            elif self.spin_ahead_s is not None and len(self._arrivals) >= 2:
                _sleep_then_spin(self._sock, self._next_due() - self.spin_ahead_s, self.timeout)
            frame = recv_frame(self._sock, self.max_frame_bytes)
        except TimeoutError:
            self._drop("receive timed out")
            raise TimeoutError(
                f"no reply from {where} within {self.timeout} s; the connection was closed "
                "(pass a larger timeout, or stream, for long generations)"
            ) from None
        except ConnectionClosed as exc:
            self._drop("closed mid-frame")
            raise ConnectionClosed(f"{where} closed the connection: {exc}", exc.received) from None
        except OSError as exc:
            self._drop("receive failed")
            raise ConnectionClosed(f"lost the connection to {where}: {exc}") from exc
        except (FrameTooLarge, RequestError) as exc:
            self._drop("bad frame")
            raise UnexpectedReply(f"{where} sent a frame this client cannot read: {exc}") from exc
        except BaseException:  # e.g. KeyboardInterrupt mid-frame: the stream is out of sync
            self._drop("interrupted")
            raise
        if frame is None:
            self._drop("closed before replying")
            raise ConnectionClosed(f"{where} closed the connection without replying")
        return frame

    def _next_due(self) -> float:
        """When the next token frame should arrive (time.monotonic): the last one's arrival plus the shortest of
        the last four gaps, so that one late frame does not push the spin late."""
        times = list(self._arrivals)
        return times[-1] + min(b - a for a, b in itertools.pairwise(times))

    def _drop(self, why: str) -> None:
        if self._sock is not None:
            logger.debug("closing connection to %s: %s", self.socket_path, why)
            self._sock.close()
            self._sock = None


def _spin_until_readable(sock: socket.socket, timeout: float | None) -> None:
    """Poll `sock` without sleeping until it has bytes (or EOF); TimeoutError after `timeout` seconds."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    poll = poller.poll
    deadline = None if timeout is None else time.monotonic() + timeout
    while not poll(0):
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError


def _sleep_then_spin(sock: socket.socket, spin_from: float, timeout: float | None) -> None:
    """Sleep in poll() until `sock` has bytes or time.monotonic() reaches `spin_from`, then poll without sleeping until
    it has bytes; TimeoutError after `timeout` seconds in all."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    start = time.monotonic()
    sleep_s = spin_from - start
    if timeout is not None:
        sleep_s = min(sleep_s, timeout)
    if sleep_s > 0 and poller.poll(sleep_s * 1e3):
        return
    left = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
    _spin_until_readable(sock, left)


def server_listening(socket_path: str | os.PathLike, timeout: float = 1.0) -> bool:
    """True if something accepts connections at `socket_path` (a probe connection, closed at once)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(os.fspath(socket_path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _unavailable_message(path: str, exc: OSError) -> str:
    start = f"start one with `rollgraph serve --model MODEL --socket {path}`"
    if isinstance(exc, FileNotFoundError):
        return f"no rollgraph server at {path}: the socket file does not exist; {start}"
    if isinstance(exc, ConnectionRefusedError):
        return f"no rollgraph server is listening at {path} (connection refused, a stale socket file?); {start}"
    return f"cannot connect to a rollgraph server at {path}: {exc.strerror or exc}; {start}"


def _token_list(tokens: Iterable[int], name: str) -> list[int]:
    """Plain ints for JSON (accepts numpy/torch integer scalars); RequestError for anything else."""
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Iterable):
        raise RequestError(f"{name} must be a list of token ids, got {type(tokens).__name__}", "invalid_message")
    try:
        return [operator.index(t) for t in tokens]
    except TypeError as exc:
        raise RequestError(f"{name} must be a list of integer token ids: {exc}", code="invalid_token") from None


def _token_event(frame: dict) -> TokenEvent:
    token_id, index, text = frame.get("token_id"), frame.get("index"), frame.get("text")
    if not _is_int_list([token_id, index]):
        raise UnexpectedReply(f"token frame lacks an integer token_id and index: {_cut(frame)}")
    return TokenEvent(token_id, index, text if isinstance(text, str) else None)


def _is_int_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _without_status(reply: dict) -> dict:
    return {k: v for k, v in reply.items() if k != "status"}


def _cut(frame: dict, limit: int = 200) -> str:
    text = repr(frame)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"
