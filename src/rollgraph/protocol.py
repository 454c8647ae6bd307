"""Wire protocol between client and server: frames, typed requests, reply builders; no torch import.

A frame is a 4-byte big-endian unsigned length followed by that many bytes of UTF-8 JSON holding one
object (never pickle). This is the seed's framing, so the seed's client code (`len(data).to_bytes(4,
"big")` + `json.dumps`) is a valid sender. Both ends must read a frame whole: one `recv(n)` may return
fewer than n bytes.

Requests (`parse_request` turns a decoded object into one of the typed requests below, or raises
`RequestError`):
- `{"type": "inference", "input_tokens": [ids]}` -> `{"status": "success", "output_tokens": [next_id]}`,
  the greedy next token.
- `{"type": "generate", "input_tokens": [ids] | "prompt": "text", "max_new_tokens": 64,
  "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": null, "stop_token_ids": [], "stream": true}`.
  With `stream`, one token frame per new token,
      `{"status": "token", "token_id": id, "index": i}` (+ `"text"`, the decoded piece, when the
      server has a tokenizer),
  then (with or without `stream`) one final frame:
      `{"status": "success", "output_tokens": [...], "finish_reason": "stop" | "length" | "cancelled",
        "usage": {"prompt_tokens": n, "completion_tokens": m}, "timings": {...}, "graphs": {...}}`
      (+ `"text"` when the server has a tokenizer).
  `timings` holds server-side milliseconds (e.g. queue, time to first token, total); `graphs` says which
  source served the steps (pre-captured, captured later, eager fallback). `generate_reply` builds it.
- `{"type": "stats"}`, `{"type": "health"}` -> a success frame with server-defined fields.

Any request may instead get `{"status": "error", "error": "<what was wrong, what is allowed>",
"code": "<kind>"}` (codes in `rollgraph.errors.ERROR_CODES`). The connection stays usable, except after
`frame_too_large`: the server cannot find the next frame without reading the oversized body, so it closes
the connection.

Timeouts are the caller's job (the server wraps `read_frame` in `asyncio.wait_for`; blocking sockets use
`settimeout`).
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from rollgraph.errors import RequestError, RollgraphError
from rollgraph.params import MAX_SEED, GenerationParams, SamplingParams, TokenIds, checked_ids

try:
    import orjson
except ImportError:  # optional: the stdlib reads and writes the same frames, slower (perf-notes v83)
    orjson = None

DEFAULT_MAX_FRAME_BYTES = 1 << 20
MAX_JSON_DEPTH = 32
# Token ids and counts must fit an int32: no vocabulary is larger, and the engine puts them in integer
# tensors, where a larger Python int would overflow instead of failing cleanly. The vocab-size bound is the
# engine's check.
MAX_TOKEN_ID = 2**31 - 1
MAX_COUNT = 2**31 - 1
FINISH_REASONS = ("stop", "length", "cancelled")
KNOWN_TYPES = ("inference", "generate", "stats", "health")

FRAME_HEADER = struct.Struct(">I")
"""A frame's 4-byte big-endian body length (the one definition; the server's readers use it too)."""
_MAX_HEADER_LENGTH = 2**32 - 1
_SHOW_LIMIT = 60


class ConnectionClosed(ConnectionError):
    """The peer closed the connection before a whole frame arrived (`received` counts the bytes that did)."""

    def __init__(self, message: str, received: int = 0) -> None:
        super().__init__(message)
        self.received = received


class FrameTooLarge(RollgraphError):
    """A frame header declared a body over the cap. The body was not read, so the stream cannot be
    resynchronized: close the connection."""

    code = "frame_too_large"

    def __init__(self, length: int, max_bytes: int) -> None:
        super().__init__(f"frame of {length} bytes is over the cap of {max_bytes} bytes")
        self.length = length
        self.max_bytes = max_bytes


# ----------------------------------------------------------------------------------------------------- frames


# Built once: json.dumps / json.loads with any non-default argument build a new encoder or decoder (and its scanner)
# on every call, which costs more than encoding or decoding a small frame (perf-notes v39).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_ASCII_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def encode_frame(obj: dict) -> bytes:
    """Header + compact UTF-8 JSON. Raises ValueError for NaN/inf, TypeError for values JSON cannot hold."""
    if not isinstance(obj, dict):
        raise TypeError(f"a frame holds one JSON object (dict), got {type(obj).__name__}")
    try:
        body = _ENCODER.encode(obj).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate cannot be UTF-8; JSON's \uXXXX escapes still carry it as valid ASCII JSON.
        body = _ASCII_ENCODER.encode(obj).encode("ascii")
    if len(body) > _MAX_HEADER_LENGTH:
        raise FrameTooLarge(len(body), _MAX_HEADER_LENGTH)
    return FRAME_HEADER.pack(len(body)) + body


def encode_checked(obj: dict) -> bytes:
    """encode_frame for a frame whose numbers are all finite (a request that `parse_request` accepted): through orjson
    where it is installed, ~10x faster than the stdlib on a 400-id prompt (perf-notes v83); orjson writes NaN as null
    instead of refusing it, hence the precondition. What orjson cannot write (an integer past 64 bits, a lone
    surrogate) goes through encode_frame."""
    if orjson is None:
        return encode_frame(obj)
    try:
        body = orjson.dumps(obj)
    except orjson.JSONEncodeError:
        return encode_frame(obj)
    if len(body) > _MAX_HEADER_LENGTH:
        raise FrameTooLarge(len(body), _MAX_HEADER_LENGTH)
    return FRAME_HEADER.pack(len(body)) + body


def _reject_constant(name: str) -> None:
    raise RequestError(f"{name} is not allowed in a frame: numbers must be finite JSON numbers", code="invalid_json")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RequestError(f"number {text[:_SHOW_LIMIT]} is out of the finite float range", code="invalid_value")
    return value


def _depth(obj: object) -> int:
    """Nesting depth of a decoded JSON value (an object or array counts 1), walked without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth)
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float)
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_RUN = b"0" * 19
"""orjson reads an integer past 64 bits as a float; a body with 19 digits in a row is read by the stdlib, exactly.
Found by mapping every digit to 0 and searching for the run: ~7 µs on a 400-id body on the development machine,
where a regex search for the same run took ~47, more than the stdlib's whole read (~32; perf-notes v83)."""


def decode_payload(data: bytes) -> dict:
    """Frame body -> dict. Raises RequestError: `invalid_json` (not UTF-8 JSON, NaN/Infinity),
    `invalid_message` (not an object, nested deeper than MAX_JSON_DEPTH), `invalid_value` (a number no
    field can hold). Read by orjson where it is installed (perf-notes v83); whatever orjson refuses, or could read
    other than the stdlib does, is read by the stdlib, so both give the same dict or the same error."""
    data = bytes(data)  # the same object where it is bytes already
    if orjson is not None and _LONG_RUN not in data.translate(_DIGITS_AS_ZERO):
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # the stdlib says what is wrong (or reads what orjson refuses: a lone surrogate's escape)
        else:
            return _an_object(obj, data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"frame is not UTF-8: {exc.reason} at byte {exc.start}", code="invalid_json") from None
    try:
        obj = _DECODER.decode(text)
    except RequestError:
        raise
    except RecursionError:
        # The C scanner recurses per nesting level and stops cleanly at the interpreter's recursion limit.
        raise _ill_typed(f"frame nests deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise RequestError(f"frame is not valid JSON: {exc}", code="invalid_json") from None
    except ValueError as exc:  # Python's int-from-string digit limit
        raise RequestError(f"frame holds a number no field can hold: {exc}", code="invalid_value") from None
    return _an_object(obj, data)


def _an_object(obj: object, data: bytes) -> dict:
    """A decoded body `obj` if it is an object nested at most MAX_JSON_DEPTH deep; else RequestError."""
    if not isinstance(obj, dict):
        raise _ill_typed(f"a frame must hold a JSON object, got {_show(obj)}")
    # bytes.count is cheap; only frames that could be too deep pay for the walk.
    if data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH and _depth(obj) > MAX_JSON_DEPTH:
        raise _ill_typed(f"frame nests deeper than {MAX_JSON_DEPTH} levels")
    return obj


async def read_frame(reader: asyncio.StreamReader, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> dict | None:
    """Next frame from `reader`; None on a clean EOF before any header byte. Raises ConnectionClosed on EOF
    mid-frame, FrameTooLarge as soon as the header declares more than `max_bytes` (body left unread), and
    RequestError from `decode_payload` (the frame was consumed whole, so the stream stays in sync)."""
    try:
        header = await reader.readexactly(FRAME_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise ConnectionClosed(_closed_in("header", len(exc.partial), FRAME_HEADER.size), len(exc.partial)) from None
    (length,) = FRAME_HEADER.unpack(header)
    if length > max_bytes:
        raise FrameTooLarge(length, max_bytes)
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise ConnectionClosed(_closed_in("body", len(exc.partial), length), len(exc.partial)) from None
    return decode_payload(body)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """Exactly `n` bytes from a blocking socket, looping over short reads. Raises ConnectionClosed on EOF
    first, TimeoutError when the socket's timeout passes with no data."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        count = sock.recv_into(view[got:], n - got)
        if count == 0:
            raise ConnectionClosed(f"connection closed after {got} of {n} bytes", got)
        got += count
    return bytes(buf)


def recv_frame(sock: socket.socket, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> dict | None:
    """Blocking twin of `read_frame`: None on a clean EOF before any header byte, same exceptions
    otherwise."""
    try:
        header = recv_exactly(sock, FRAME_HEADER.size)
    except ConnectionClosed as exc:
        if exc.received == 0:
            return None
        raise ConnectionClosed(_closed_in("header", exc.received, FRAME_HEADER.size), exc.received) from None
    (length,) = FRAME_HEADER.unpack(header)
    if length > max_bytes:
        raise FrameTooLarge(length, max_bytes)
    try:
        body = recv_exactly(sock, length)
    except ConnectionClosed as exc:
        raise ConnectionClosed(_closed_in("body", exc.received, length), exc.received) from None
    return decode_payload(body)


def send_frame(sock: socket.socket, obj: dict) -> None:
    """Encode and send one frame in a single `sendall` (header and body together)."""
    sock.sendall(encode_frame(obj))


def _closed_in(part: str, got: int, want: int) -> str:
    return f"connection closed in the middle of a frame {part} (got {got} of {want} bytes)"


# --------------------------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class InferenceRequest:
    """The seed's message: the greedy next token after `input_tokens`."""

    input_tokens: tuple[int, ...]


@dataclass(frozen=True)
class GenerateRequest:
    """A generation given as token ids or as text; exactly one of `input_tokens` and `prompt` is set.
    A text prompt is tokenized by the server, which then calls `with_tokens` to get the engine's
    `GenerationParams`."""

    input_tokens: tuple[int, ...] | None = None
    prompt: str | None = None
    max_new_tokens: int = 64
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop_token_ids: tuple[int, ...] = ()
    stream: bool = True

    def __post_init__(self) -> None:
        _check_one_source(self.input_tokens, self.prompt)

    def with_tokens(self, ids: Sequence[int]) -> GenerationParams:
        """The engine's parameters for prompt token ids `ids` (raises RequestError if they are not valid)."""
        ids = ids if type(ids) is TokenIds else tuple(ids)  # tuple() would drop what the protocol checked
        return GenerationParams(ids, self.max_new_tokens, self.sampling, self.stop_token_ids)

    @property
    def params(self) -> GenerationParams | None:
        """The engine's parameters when the request came as token ids; None for a text prompt."""
        return None if self.input_tokens is None else self.with_tokens(self.input_tokens)


@dataclass(frozen=True)
class StatsRequest:
    """Pool and server counters."""


@dataclass(frozen=True)
class HealthRequest:
    """Liveness and readiness."""


Request = InferenceRequest | GenerateRequest | StatsRequest | HealthRequest


def parse_request(obj: object) -> Request:
    """Decoded frame -> typed request. Raises only RequestError (codes `invalid_message`,
    `unknown_type`, `invalid_value`, `invalid_token`), whatever `obj` is. Unknown extra fields are
    ignored; a null field means absent."""
    if not isinstance(obj, dict):
        raise _ill_typed(f"a request must be a JSON object, got {_show(obj)}")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise _ill_typed(f"field 'type' must be one of {', '.join(KNOWN_TYPES)}, got {_show(kind)}")
    parser = _PARSERS.get(kind)
    if parser is None:
        raise RequestError(
            f"unknown request type {_show(kind)}; known types: {', '.join(KNOWN_TYPES)}", code="unknown_type"
        )
    return parser(obj)


def _parse_inference(obj: dict) -> InferenceRequest:
    return InferenceRequest(_token_list(obj.get("input_tokens"), "input_tokens", required=True))


def _parse_generate(obj: dict) -> GenerateRequest:
    tokens, prompt = obj.get("input_tokens"), obj.get("prompt")
    _check_one_source(tokens, prompt)
    stream = True if obj.get("stream") is None else obj["stream"]
    if not isinstance(stream, bool):
        raise _ill_typed(f"field 'stream' must be true or false, got {_show(stream)}")
    return GenerateRequest(
        input_tokens=None if tokens is None else _token_list(tokens, "input_tokens", required=True),
        prompt=None if prompt is None else _prompt(prompt),
        max_new_tokens=_count(obj, "max_new_tokens", 64),
        sampling=_sampling(obj),
        stop_token_ids=_token_list(obj.get("stop_token_ids", []), "stop_token_ids", required=False),
        stream=stream,
    )


def _check_one_source(tokens: object, prompt: object) -> None:
    if (tokens is None) == (prompt is None):
        got = "both" if prompt is not None else "neither"
        raise _ill_typed(f"generate needs exactly one of input_tokens (list of token ids) or prompt (text), got {got}")


_PARSERS = MappingProxyType(
    {
        "inference": _parse_inference,
        "generate": _parse_generate,
        "stats": lambda obj: StatsRequest(),
        "health": lambda obj: HealthRequest(),
    }
)


def _token_list(value: object, name: str, *, required: bool) -> tuple[int, ...]:
    if value is None and not required:
        return ()
    if not isinstance(value, (list, tuple)):
        raise _ill_typed(
            f"field '{name}' must be a list of token ids (integers in [0, {MAX_TOKEN_ID}]), got {_show(value)}"
        )
    if required and not value:
        raise RequestError(f"field '{name}' must hold at least one token id, got []", code="invalid_value")
    ids = checked_ids(value, MAX_TOKEN_ID)
    if ids is not None:
        return ids
    for i, token in enumerate(value):
        if not _is_int(token) or not 0 <= token <= MAX_TOKEN_ID:
            raise RequestError(
                f"{name}[{i}] must be a token id, an integer in [0, {MAX_TOKEN_ID}], got {_show(token)}",
                code="invalid_token",
            )
    return tuple(value)


def _prompt(value: object) -> str:
    if not isinstance(value, str):
        raise _ill_typed(f"field 'prompt' must be a string, got {_show(value)}")
    if not value:
        raise RequestError("field 'prompt' must be non-empty text, got ''", code="invalid_value")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(
            "field 'prompt' holds a lone surrogate: not valid Unicode text", code="invalid_value"
        ) from None
    return value


def _count(obj: dict, name: str, default: int) -> int:
    value = obj.get(name)
    if value is None:
        return default
    if not _is_int(value):
        raise _ill_typed(f"field '{name}' must be an integer, got {_show(value)}")
    if not 1 <= value <= MAX_COUNT:
        raise RequestError(f"field '{name}' must be an integer in [1, {MAX_COUNT}], got {_show(value)}")
    return value


def _sampling(obj: dict) -> SamplingParams:
    """Type checks and int32/int64 caps here; other range checks are SamplingParams' own (`invalid_value`).
    The caps come first so that SamplingParams never sees an integer too large to print or compare."""
    temperature, top_p = _number(obj, "temperature", 0.0), _number(obj, "top_p", 1.0)
    top_k, seed = obj.get("top_k"), obj.get("seed")
    for name, value, limit in (("top_k", top_k, MAX_COUNT), ("seed", seed, MAX_SEED)):
        if value is None:
            continue
        if not _is_int(value):
            raise _ill_typed(f"field '{name}' must be an integer, got {_show(value)}")
        if value > limit or value.bit_length() > 64:
            raise RequestError(f"field '{name}' must be an integer in [0, {limit}], got {_show(value)}")
    return SamplingParams(temperature=temperature, top_k=top_k or 0, top_p=top_p, seed=seed)


def _number(obj: dict, name: str, default: float) -> float:
    value = obj.get(name)
    if value is None:
        return default
    if not (_is_int(value) or isinstance(value, float)):
        raise _ill_typed(f"field '{name}' must be a number, got {_show(value)}")
    try:
        return float(value)
    except OverflowError:
        raise RequestError(f"field '{name}' must be a finite number in float range, got {_show(value)}") from None


def _ill_typed(message: str) -> RequestError:
    """A missing field, or one of the wrong JSON type."""
    return RequestError(message, code="invalid_message")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value: object) -> str:
    """repr for error messages, cut to a readable length; never raises (huge ints, deep nesting)."""
    if _is_int(value) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"a {type(value).__name__}"
    if len(text) > _SHOW_LIMIT:
        return f"{text[:_SHOW_LIMIT]}... ({type(value).__name__} of {len(text)} chars)"
    return text


# ---------------------------------------------------------------------------------------------------- replies


def success_reply(**fields: object) -> dict:
    """`{"status": "success", **fields}`."""
    return {"status": "success", **fields}


def error_reply(err: RollgraphError) -> dict:
    """The error frame for `err`: `{"status": "error", "error": message, "code": code}`."""
    return err.to_reply()


def token_frame(token_id: int, index: int, text: str | None = None) -> dict:
    """One streamed token: `{"status": "token", "token_id": id, "index": i}`, plus `"text"` when given."""
    frame: dict = {"status": "token", "token_id": token_id, "index": index}
    if text is not None:
        frame["text"] = text
    return frame


def generate_reply(
    output_tokens: Iterable[int],
    finish_reason: str,
    prompt_tokens: int,
    timings: dict,
    graphs: dict,
    text: str | None = None,
) -> dict:
    """The final frame of a generate request (shape in the module docstring). Raises ValueError for a
    finish_reason not in FINISH_REASONS."""
    if finish_reason not in FINISH_REASONS:
        raise ValueError(f"finish_reason must be one of {FINISH_REASONS}, got {finish_reason!r}")
    tokens = list(output_tokens)
    frame = success_reply(
        output_tokens=tokens,
        finish_reason=finish_reason,
        usage={"prompt_tokens": prompt_tokens, "completion_tokens": len(tokens)},
        timings=dict(timings),
        graphs=dict(graphs),
    )
    if text is not None:
        frame["text"] = text
    return frame
