"""Frames, payload decoding and request validation (rollgraph.protocol); CPU only, no server."""

from __future__ import annotations

import asyncio
import json
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollgraph.errors import ERROR_CODES, RequestError
from rollgraph.params import GenerationParams, SamplingParams
from rollgraph.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    KNOWN_TYPES,
    MAX_JSON_DEPTH,
    ConnectionClosed,
    FrameTooLarge,
    GenerateRequest,
    HealthRequest,
    InferenceRequest,
    StatsRequest,
    decode_payload,
    encode_frame,
    error_reply,
    generate_reply,
    parse_request,
    read_frame,
    recv_exactly,
    recv_frame,
    send_frame,
    success_reply,
    token_frame,
)


def _read(data: bytes, max_bytes: int = DEFAULT_MAX_FRAME_BYTES, eof: bool = True):
    """read_frame over a StreamReader fed `data` (then EOF unless eof=False); fails instead of hanging."""

    async def run():
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        if eof:
            reader.feed_eof()
        return await asyncio.wait_for(read_frame(reader, max_bytes), timeout=2.0)

    return asyncio.run(run())


def _code(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.code


class OneByteSocket:
    """A socket whose recv_into hands out one byte per call: every read is a short read."""

    def __init__(self, data: bytes) -> None:
        self.data, self.calls = data, 0

    def recv_into(self, view: memoryview, nbytes: int = 0) -> int:
        self.calls += 1
        if not self.data:
            return 0
        view[0] = self.data[0]
        self.data = self.data[1:]
        return 1


# ----------------------------------------------------------------------------------------------------- frames


def test_encode_frame_is_length_prefixed_compact_utf8_json():
    frame = encode_frame({"type": "inference", "input_tokens": [1, 2], "text": "héllo ✓"})
    body = '{"type":"inference","input_tokens":[1,2],"text":"héllo ✓"}'.encode()
    assert frame == len(body).to_bytes(4, "big") + body


def test_encode_frame_escapes_lone_surrogates_instead_of_failing():
    frame = encode_frame({"text": "a\ud800b"})
    assert frame[4:] == b'{"text":"a\\ud800b"}'
    assert decode_payload(frame[4:]) == {"text": "a\ud800b"}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_encode_frame_refuses_non_finite_numbers(value):
    with pytest.raises(ValueError):
        encode_frame({"x": value})


def test_encode_frame_refuses_non_objects():
    with pytest.raises(TypeError, match="dict"):
        encode_frame([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize("obj", [{}, {"a": [1, {"b": None}], "c": "ünïcødé", "d": 1.5, "e": True}])
def test_round_trip_async_and_blocking(obj):
    assert _read(encode_frame(obj)) == obj
    left, right = socket.socketpair()
    with left, right:
        send_frame(left, obj)
        assert recv_frame(right) == obj


def test_two_frames_back_to_back_are_read_separately():
    data = encode_frame({"n": 1}) + encode_frame({"n": 2})

    async def run():
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return [await read_frame(reader, 100) for _ in range(3)]

    assert asyncio.run(run()) == [{"n": 1}, {"n": 2}, None]


def test_recv_exactly_loops_over_short_reads():
    sock = OneByteSocket(encode_frame({"input_tokens": [1, 2, 3]}))
    assert recv_frame(sock, 100) == {"input_tokens": [1, 2, 3]}  # type: ignore[arg-type]
    assert sock.calls > 20


def test_recv_exactly_raises_connection_closed_on_eof():
    with pytest.raises(ConnectionClosed, match="3 of 5") as excinfo:
        recv_exactly(OneByteSocket(b"abc"), 5)  # type: ignore[arg-type]
    assert excinfo.value.received == 3
    assert isinstance(excinfo.value, ConnectionError)


def test_clean_eof_before_a_frame_is_none():
    assert _read(b"") is None
    assert recv_frame(OneByteSocket(b"")) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "match"),
    [(b"\x00\x00", "header \\(got 2 of 4"), (b"\x00\x00\x00\x0a{}", "body \\(got 2 of 10")],
)
def test_truncated_frames_raise_connection_closed(data, match):
    with pytest.raises(ConnectionClosed, match=match):
        _read(data)
    with pytest.raises(ConnectionClosed, match=match):
        recv_frame(OneByteSocket(data))  # type: ignore[arg-type]


def test_oversized_header_is_refused_before_the_body_is_read_async():
    # No body and no EOF: a reader that waited for the body would hit the 2 s wait_for instead.
    with pytest.raises(FrameTooLarge) as excinfo:
        _read(struct.pack(">I", 101), max_bytes=100, eof=False)
    assert excinfo.value.code == "frame_too_large"
    assert "101" in str(excinfo.value) and "100" in str(excinfo.value)


def test_oversized_header_is_refused_before_the_body_is_read_blocking():
    left, right = socket.socketpair()
    with left, right:
        left.sendall(struct.pack(">I", 2**32 - 1) + b"body")
        with pytest.raises(FrameTooLarge, match=str(2**32 - 1)):
            recv_frame(right, DEFAULT_MAX_FRAME_BYTES)
        right.settimeout(1.0)
        assert right.recv(100) == b"body"  # still unread


def test_frame_at_the_cap_is_accepted():
    frame = encode_frame({"s": "x" * 50})
    assert _read(frame, max_bytes=len(frame) - 4) == {"s": "x" * 50}
    with pytest.raises(FrameTooLarge):
        _read(frame, max_bytes=len(frame) - 5)


# ---------------------------------------------------------------------------------------------------- payload


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\xff\xfe{}", "invalid_json"),
        (b'{"a": "\xc3"}', "invalid_json"),
        (b"", "invalid_json"),
        (b"{", "invalid_json"),
        (b"{'a': 1}", "invalid_json"),
        (b'{"a": 1} trailing', "invalid_json"),
        (b'{"a": NaN}', "invalid_json"),
        (b'{"a": Infinity}', "invalid_json"),
        (b'{"a": -Infinity}', "invalid_json"),
        (b'{"a": 1e999}', "invalid_value"),
        (b'{"a": ' + b"9" * 5000 + b"}", "invalid_value"),
        (b"[1, 2]", "invalid_message"),
        (b"42", "invalid_message"),
        (b'"text"', "invalid_message"),
        (b"null", "invalid_message"),
        (b"true", "invalid_message"),
    ],
)
def test_decode_payload_rejects(data, code):
    with pytest.raises(RequestError) as excinfo:
        decode_payload(data)
    assert _code(excinfo) == code
    assert code in ERROR_CODES


def _nested(depth: int) -> bytes:
    inner = b"[" * (depth - 1) + b"]" * (depth - 1)
    return b'{"a":' + inner + b"}"


def test_nesting_up_to_the_limit_is_accepted():
    assert decode_payload(_nested(MAX_JSON_DEPTH))["a"] is not None


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5000, 500_000])
def test_deep_nesting_is_invalid_message_not_a_crash(depth):
    with pytest.raises(RequestError, match="deeper than 32") as excinfo:
        decode_payload(_nested(depth))
    assert _code(excinfo) == "invalid_message"


def test_many_brackets_inside_strings_are_not_depth():
    assert decode_payload(b'{"s": "' + b"[" * 100 + b'"}') == {"s": "[" * 100}


# --------------------------------------------------------------------------------------------------- requests


def test_parse_inference():
    assert parse_request({"type": "inference", "input_tokens": [1, 2, 3]}) == InferenceRequest((1, 2, 3))


def test_parse_stats_health_and_extra_fields_are_ignored():
    assert parse_request({"type": "stats", "extra": [1]}) == StatsRequest()
    assert parse_request({"type": "health"}) == HealthRequest()


def test_parse_generate_tokens_defaults():
    request = parse_request({"type": "generate", "input_tokens": [5, 6]})
    assert request == GenerateRequest(input_tokens=(5, 6))
    assert request.stream is True and request.max_new_tokens == 64
    assert request.params == GenerationParams((5, 6), 64, SamplingParams(), ())


def test_parse_generate_all_fields_and_null_means_default():
    obj = {"type": "generate", "input_tokens": [1], "max_new_tokens": 5, "temperature": 1, "top_k": 50}
    obj.update(top_p=0.9, seed=7, stop_token_ids=[2, 3], stream=False, prompt=None)
    request = parse_request(obj)
    assert request.sampling == SamplingParams(temperature=1.0, top_k=50, top_p=0.9, seed=7)
    assert (request.max_new_tokens, request.stop_token_ids, request.stream) == (5, (2, 3), False)
    nulls = {"type": "generate", "input_tokens": [1], "max_new_tokens": None, "top_k": None, "stream": None}
    assert parse_request(nulls) == GenerateRequest(input_tokens=(1,))


def test_parse_generate_prompt_then_with_tokens():
    request = parse_request({"type": "generate", "prompt": "hello", "max_new_tokens": 3, "stop_token_ids": [9]})
    assert request.prompt == "hello" and request.params is None
    params = request.with_tokens([4, 5])
    assert params == GenerationParams((4, 5), 3, SamplingParams(), (9,))


@pytest.mark.parametrize(
    ("obj", "code", "words"),
    [
        ([], "invalid_message", "JSON object"),
        ({}, "invalid_message", "'type'"),
        ({"type": 3}, "invalid_message", "'type'"),
        ({"type": "bogus"}, "unknown_type", "inference, generate, stats, health"),
        ({"type": "inference"}, "invalid_message", "input_tokens"),
        ({"type": "inference", "input_tokens": "1,2"}, "invalid_message", "input_tokens"),
        ({"type": "inference", "input_tokens": {"0": 1}}, "invalid_message", "input_tokens"),
        ({"type": "inference", "input_tokens": []}, "invalid_value", "at least one"),
        ({"type": "inference", "input_tokens": [1, "2"]}, "invalid_token", "input_tokens[1]"),
        ({"type": "inference", "input_tokens": [1.0]}, "invalid_token", "input_tokens[0]"),
        ({"type": "inference", "input_tokens": [True]}, "invalid_token", "input_tokens[0]"),
        ({"type": "inference", "input_tokens": [-1]}, "invalid_token", "-1"),
        ({"type": "inference", "input_tokens": [None]}, "invalid_token", "None"),
        ({"type": "inference", "input_tokens": [10**30]}, "invalid_token", "2147483647"),
        ({"type": "generate"}, "invalid_message", "neither"),
        ({"type": "generate", "input_tokens": [1], "prompt": "x"}, "invalid_message", "both"),
        ({"type": "generate", "prompt": 5}, "invalid_message", "prompt"),
        ({"type": "generate", "prompt": ""}, "invalid_value", "prompt"),
        ({"type": "generate", "prompt": "a\ud800"}, "invalid_value", "surrogate"),
    ],
)
def test_parse_request_rejects(obj, code, words):
    with pytest.raises(RequestError) as excinfo:
        parse_request(obj)
    assert _code(excinfo) == code
    assert words in str(excinfo.value)


# Each generate field with a value of the wrong JSON type, and one out of its range.
WRONG_TYPE = {
    "max_new_tokens": ["8", 8.0, True, [8], {}],
    "temperature": ["0.5", True, [0.5]],
    "top_k": ["5", 5.0, False],
    "top_p": ["0.9", True],
    "seed": ["1", 1.5, True],
    "stop_token_ids": [2, "2", {"a": 2}],
    "stream": ["yes", 1, 0],
}
OUT_OF_RANGE = {
    "max_new_tokens": [0, -1, 2**31, 10**30],
    "temperature": [-0.1, 100.5, 10**30, 10**400],
    "top_k": [-1, 10**30],
    "top_p": [0, 0.0, 1.5, -1, 10**400],
    "seed": [-1, 2**63, 10**30],
}


@pytest.mark.parametrize(("name", "value"), [(k, v) for k, vs in WRONG_TYPE.items() for v in vs])
def test_generate_field_of_wrong_type_is_invalid_message(name, value):
    with pytest.raises(RequestError) as excinfo:
        parse_request({"type": "generate", "input_tokens": [1], name: value})
    assert _code(excinfo) == "invalid_message"
    assert name in str(excinfo.value)


@pytest.mark.parametrize(("name", "value"), [(k, v) for k, vs in OUT_OF_RANGE.items() for v in vs])
def test_generate_field_out_of_range_is_invalid_value(name, value):
    with pytest.raises(RequestError) as excinfo:
        parse_request({"type": "generate", "prompt": "hi", name: value})
    assert _code(excinfo) == "invalid_value"
    assert name in str(excinfo.value)


@pytest.mark.parametrize("bad", [[-1], ["1"], [1.5], [True], [2**31]])
def test_bad_stop_token_ids_are_invalid_token(bad):
    with pytest.raises(RequestError, match=r"stop_token_ids\[0\]") as excinfo:
        parse_request({"type": "generate", "prompt": "hi", "stop_token_ids": bad})
    assert _code(excinfo) == "invalid_token"


def test_huge_values_are_shown_truncated():
    with pytest.raises(RequestError) as excinfo:
        parse_request({"type": "inference", "input_tokens": "x" * 10_000})
    assert len(str(excinfo.value)) < 300
    with pytest.raises(RequestError, match="bits"):
        parse_request({"type": "generate", "prompt": "hi", "seed": -(10**5000)})


def test_generate_request_constructor_checks_one_source():
    with pytest.raises(RequestError, match="neither"):
        GenerateRequest()
    with pytest.raises(RequestError, match="both"):
        GenerateRequest(input_tokens=(1,), prompt="x")


# --------------------------------------------------------------------------------------------------- property

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
FIELDS = ["input_tokens", "prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed"]
FIELDS += ["stop_token_ids", "stream"]
REQUESTS = st.fixed_dictionaries(
    {"type": st.sampled_from([*KNOWN_TYPES, "other"])},
    optional={name: JSON_VALUES | st.lists(st.integers(), max_size=4) | st.integers() | st.floats() for name in FIELDS},
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(JSON_VALUES, REQUESTS))
def test_parse_request_raises_only_request_error(obj):
    try:
        request = parse_request(obj)
    except RequestError as exc:
        assert exc.code in ERROR_CODES
        assert exc.message
    else:
        assert isinstance(request, (InferenceRequest, GenerateRequest, StatsRequest, HealthRequest))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_decode_payload_raises_only_request_error(data):
    try:
        obj = decode_payload(data)
    except RequestError as exc:
        assert exc.code in ERROR_CODES
    else:
        assert isinstance(obj, dict)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=6), JSON_VALUES.filter(lambda v: "NaN" not in repr(v)), max_size=4))
def test_frame_round_trip_property(obj):
    try:
        frame = encode_frame(obj)
    except ValueError:  # inf, or NaN nested where the filter missed it
        return
    assert _read(frame) == json.loads(frame[4:])


# ---------------------------------------------------------------------------------------------------- replies


def test_reply_builders():
    assert success_reply(output_tokens=[3]) == {"status": "success", "output_tokens": [3]}
    err = RequestError("top_p must be in (0, 1], got 2", code="invalid_value")
    assert error_reply(err) == {
        "status": "error",
        "error": "top_p must be in (0, 1], got 2",
        "code": "invalid_value",
    }
    assert token_frame(7, 0) == {"status": "token", "token_id": 7, "index": 0}
    assert token_frame(7, 1, "hi") == {"status": "token", "token_id": 7, "index": 1, "text": "hi"}


def test_generate_reply_shape():
    frame = generate_reply([4, 5], "length", 3, {"total_ms": 1.5}, {"decode": "pre-captured"}, text="ab")
    assert frame == {
        "status": "success",
        "output_tokens": [4, 5],
        "finish_reason": "length",
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        "timings": {"total_ms": 1.5},
        "graphs": {"decode": "pre-captured"},
        "text": "ab",
    }
    assert "text" not in generate_reply([], "cancelled", 1, {}, {})
    with pytest.raises(ValueError, match="finish_reason"):
        generate_reply([], "done", 1, {}, {})


@pytest.mark.parametrize(
    ("values", "ok"),
    [([], False), ([0, 5, 9], True), ([9, 0], True), ([0, 10], False), ([-1, 3], False), ([1, True], False)],
)
def test_checked_ids_takes_only_plain_ints_in_range_and_keeps_the_largest(values, ok):
    from rollgraph.params import TokenIds, checked_ids

    for checked in (values, tuple(values), [*values, 2.0]):
        ids = checked_ids(checked, 9)
        if not ok or isinstance(checked[-1], float):
            assert ids is None
            continue
        assert type(ids) is TokenIds and ids == tuple(values) and hash(ids) == hash(tuple(values))
        assert ids.top == max(values)


def test_int_subclass_ids_are_still_token_ids():
    import enum

    from rollgraph.params import GenerationParams

    class Tok(enum.IntEnum):
        A = 5

    assert GenerationParams((Tok.A, 3)).input_ids == (5, 3)
    assert parse_request({"type": "inference", "input_tokens": [Tok.A, 3]}).input_tokens == (5, 3)
    with pytest.raises(RequestError, match="integers only"):
        GenerationParams((Tok.A, True))


# ------------------------------------------------------------------------------------- orjson and the stdlib


def _outcome(data: bytes, reader=None) -> tuple:
    """decode_payload(data) as (dict,) or (code, message), read through `reader` (None: the stdlib)."""
    from rollgraph import protocol

    saved = protocol.orjson
    protocol.orjson = reader
    try:
        return (decode_payload(data),)
    except RequestError as exc:
        return (exc.code, exc.message)
    finally:
        protocol.orjson = saved


try:
    import orjson
except ImportError:
    orjson = None
needs_orjson = pytest.mark.skipif(orjson is None, reason="orjson is optional; without it the stdlib reads every frame")

EDGE_BODIES = [
    b'{"a": 123456789012345678901234567890}',  # orjson alone would read a float
    b'{"a": 18446744073709551616}',
    b'{"a": -9223372036854775809}',
    b'{"a": 1e999}',
    b'{"a": NaN}',
    b'{"s": "\\ud800"}',  # orjson refuses a lone surrogate; the stdlib reads it
    b'{"a": 1, "a": 2}',
    b'{"a": -0, "b": 1E5, "c": 0.1, "d": 1.5e-300}',
    b'\xef\xbb\xbf{"a": 1}',
    b'{"a": "\xc3"}',
    b'{"t": "x\\u0000y", "u": "\xc3\xa9\\u00e9"}',
    b' {"a" : [1 , 2] } \n',
    _nested(MAX_JSON_DEPTH),
    _nested(MAX_JSON_DEPTH + 1),
    _nested(5000),
]


@needs_orjson
@pytest.mark.parametrize("data", EDGE_BODIES)
def test_orjson_and_the_stdlib_read_every_edge_the_same(data):
    """perf-notes v83: where orjson is installed it reads frames first; whatever it would read differently (integers
    past 64 bits) or refuses goes to the stdlib, so the dict or the typed error is the same either way."""
    assert _outcome(data, reader=orjson) == _outcome(data)


@needs_orjson
@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=64)
    | JSON_VALUES.map(lambda v: json.dumps(v).encode())
    | REQUESTS.map(lambda v: json.dumps(v).encode())
)
def test_orjson_and_the_stdlib_read_any_body_the_same(data):
    assert _outcome(data, reader=orjson) == _outcome(data)


@pytest.mark.parametrize(
    "message",
    [
        {"type": "generate", "input_tokens": list(range(400)), "max_new_tokens": 64, "temperature": 0.7, "seed": None},
        {"type": "generate", "prompt": "héllo ✓", "stop_token_ids": [2], "top_p": 0.9, "stream": False},
        {"type": "generate", "prompt": "a\ud800b"},  # orjson cannot write a lone surrogate: encode_frame does
        {"type": "generate", "input_tokens": [1], "seed": 2**63 - 1, "max_new_tokens": 2**70},  # nor 70 bits
    ],
)
def test_encode_checked_writes_what_encode_frame_writes(message):
    from rollgraph import protocol

    frame = protocol.encode_checked(message)
    assert struct.unpack(">I", frame[:4])[0] == len(frame) - 4
    assert decode_payload(frame[4:]) == decode_payload(encode_frame(message)[4:]) == message
    saved, protocol.orjson = protocol.orjson, None
    try:
        assert protocol.encode_checked(message) == encode_frame(message)
    finally:
        protocol.orjson = saved
