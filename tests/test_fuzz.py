"""Property-based frames against a real `rollgraph serve` subprocess (llama-tiny, eager, CPU).

Hypothesis makes the frames: valid requests, valid requests with one field replaced by any JSON value, random
objects and values, raw texts JSON cannot hold (NaN, 1e999, 5000-digit integers, deep nesting), random bytes,
pipelined bursts, truncated and oversized frames, frames sent in pieces. The oracle is the client side of the same
protocol plus an in-process eager engine on the same weights: every complete frame must get the reply (error code,
or tokens) that the oracle predicts, the server must never die, and the connection must keep serving.

`ROLLGRAPH_FUZZ_EXAMPLES` scales the example counts (default 1.0) for a longer local run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollgraph.config import EngineConfig, ModelConfig
from rollgraph.engine import Engine
from rollgraph.errors import ERROR_CODES, RollgraphError
from rollgraph.params import GenerationParams
from rollgraph.protocol import (
    GenerateRequest,
    HealthRequest,
    InferenceRequest,
    StatsRequest,
    decode_payload,
    parse_request,
    recv_frame,
)
from serverproc import ServerProcess, short_dir

VOCAB = 320  # llama-tiny
CAP = 16  # --max-new-tokens-cap: keeps every valid generation short
MAX_FRAME = 65536
FRAME_TIMEOUT = 1.0
MAX_CONNECTIONS = 8
PROBE = [5, 6, 7]
SCALE = float(os.environ.get("ROLLGRAPH_FUZZ_EXAMPLES", "1"))

# What an error reply must never hold: the server's own paths, interpreter internals, memory addresses.
LEAKS = re.compile(r"/(tmp|work|home|usr|root|proc|site-packages)\b|\.py\b|0x[0-9a-fA-F]{4,}|Traceback|object at")


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


# ---- the server and the oracle ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    folder = short_dir()
    proc = ServerProcess(
        os.path.join(folder, "s.sock"),
        "--max-new-tokens-cap", str(CAP), "--max-frame-bytes", str(MAX_FRAME),
        "--frame-timeout", str(FRAME_TIMEOUT), "--max-connections", str(MAX_CONNECTIONS),
    )  # fmt: skip
    try:
        proc.wait_ready()
        yield proc
        assert proc.proc.poll() is None, f"the server died:\n{proc.log()}"
        assert proc.terminate() == 0, proc.log()
    finally:
        proc.kill()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def ref() -> Engine:
    """An in-process eager engine on the server's weights and limits: the oracle for codes and tokens."""
    from rollgraph.models import load_model

    return Engine(load_model(ModelConfig("llama-tiny")), EngineConfig(mode="eager", max_new_tokens_cap=CAP))


def expected(ref: Engine, body: bytes) -> tuple[str | None, GenerationParams | None]:
    """(error code or None, the engine parameters of a generation) as the server should see `body`."""
    try:
        request = parse_request(decode_payload(body))
        if isinstance(request, (HealthRequest, StatsRequest)):
            return None, None
        if isinstance(request, InferenceRequest):
            params = GenerationParams(request.input_tokens, max_new_tokens=1)
        else:
            assert isinstance(request, GenerateRequest)
            tokens = request.input_tokens
            params = request.with_tokens(tokens if tokens is not None else ref.model.tokenizer.encode(request.prompt))
        ref.validate(params)
    except RollgraphError as exc:
        return exc.code, None
    return None, params


def ref_tokens(ref: Engine, params: GenerationParams) -> list[int] | None:
    """The tokens the server must send, or None when they are not reproducible (sampling without a seed)."""
    if not params.sampling.greedy and params.sampling.seed is None:
        return None
    return list(ref.generate(params))


# ---- frames on the wire -----------------------------------------------------------------------------------------


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(path)
    return sock


def check_frame(reply: object, body: bytes = b"") -> dict:
    """A well-formed reply; error replies name a known code and leak nothing of the server."""
    assert isinstance(reply, dict), reply
    status = reply.get("status")
    assert status in ("success", "token", "error"), reply
    if status == "error":
        assert isinstance(reply.get("error"), str) and reply["error"], reply
        assert reply.get("code") in ERROR_CODES, reply
        if b"/" not in body and b"0x" not in body.lower():  # otherwise the message may echo the input
            assert not LEAKS.search(reply["error"]), reply
    if status == "token":
        assert type(reply.get("token_id")) is int and type(reply.get("index")) is int, reply
    return reply


def read_reply(sock: socket.socket, body: bytes = b"") -> tuple[dict, list[int]]:
    """The final frame of one request and the token ids streamed before it."""
    streamed = []
    while True:
        reply = recv_frame(sock, 1 << 24)
        assert reply is not None, f"the server closed the connection instead of answering {body[:80]!r}"
        check_frame(reply, body)
        if reply["status"] != "token":
            return reply, streamed
        assert reply["index"] == len(streamed), reply
        streamed.append(reply["token_id"])


def check_answer(ref: Engine, body: bytes, reply: dict, streamed: list[int]) -> None:
    """The reply is the one the oracle predicts: the same error code, or the same tokens."""
    code, params = expected(ref, body)
    got = reply.get("code") if reply["status"] == "error" else None
    assert got == code, (body[:200], reply)
    if params is None or got is not None:
        return
    tokens = reply["output_tokens"]
    assert isinstance(tokens, list) and 1 <= len(tokens) <= params.max_new_tokens, reply
    if "finish_reason" in reply:  # generate: streamed (the default) means every token came first in its own frame
        assert streamed == (tokens if json.loads(body).get("stream") is not False else []), (streamed, reply)
    want = ref_tokens(ref, params)
    if want is not None:
        assert tokens == want, (body[:200], reply, want)


def probe(ref: Engine, sock: socket.socket) -> None:
    """A valid request on the same connection is still answered, with the reference's token."""
    body = json.dumps({"type": "inference", "input_tokens": PROBE}).encode()
    sock.sendall(frame(body))
    reply, _ = read_reply(sock, body)
    assert reply == {"status": "success", "output_tokens": ref_tokens(ref, GenerationParams(tuple(PROBE), 1))}


def exchange(server: ServerProcess, ref: Engine, bodies: list[bytes], chunks: int = 1) -> None:
    """Send `bodies` as pipelined frames (in `chunks` pieces), check each reply, then probe the connection."""
    data = b"".join(frame(b) for b in bodies)
    with connect(server.socket_path) as sock:
        step = max(1, -(-len(data) // chunks))
        for i in range(0, len(data), step):
            sock.sendall(data[i : i + step])
            if chunks > 1:
                time.sleep(0.001)
        for body in bodies:
            check_answer(ref, body, *read_reply(sock, body))
        probe(ref, sock)
    assert server.proc.poll() is None, server.log()


# ---- strategies -------------------------------------------------------------------------------------------------

FIELDS = ("type", "input_tokens", "prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed",
          "stop_token_ids", "stream")  # fmt: skip
HUGE = [2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63), 10**400, -(10**400), 1e308, -1e308, 5e-324, -0.0]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-5, VOCAB + 5)
    | st.integers()
    | st.sampled_from(HUGE)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=6), kids, max_size=5),
    max_leaves=25,
)
token_ids = st.integers(0, VOCAB - 1)
valid_generate = st.fixed_dictionaries(
    {"type": st.just("generate"), "input_tokens": st.lists(token_ids, min_size=1, max_size=40)},
    optional={
        "max_new_tokens": st.integers(1, CAP),
        "temperature": st.sampled_from([0.0, 0.0, 0.7, 1.0, 2.5, 1e-7]),
        "top_k": st.integers(0, VOCAB + 10),
        "top_p": st.sampled_from([1.0, 0.9, 0.5, 1e-9]),
        "seed": st.integers(0, 2**63 - 1),
        "stop_token_ids": st.lists(token_ids, max_size=4),
        "stream": st.booleans(),
    },
)
valid_requests = (
    valid_generate
    | valid_generate.map(lambda d: {**d, "input_tokens": None, "prompt": "hello world"})
    | st.builds(lambda ids: {"type": "inference", "input_tokens": ids}, st.lists(token_ids, min_size=1, max_size=60))
    | st.sampled_from([{"type": "health"}, {"type": "stats"}])
    | st.builds(lambda n, t: {"type": "inference", "input_tokens": [t] * n}, st.integers(1500, 2100), token_ids)
)


def _replace(request: dict, name: str, value: object, drop: bool) -> dict:
    out = {k: v for k, v in request.items() if not (drop and k == name)}
    if not drop:
        out[name] = value
    return out


mutated_requests = st.builds(_replace, valid_requests, st.sampled_from(FIELDS), json_values, st.booleans())
random_objects = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=6)
requests = valid_requests | mutated_requests | random_objects | json_values


def _nest(n: int) -> str:
    return '{"type":"stats","x":' + "[" * n + "]" * n + "}"


RAW_TEXTS = [
    '{"type":"generate","input_tokens":[1],"temperature":NaN}',
    '{"type":"generate","input_tokens":[1],"top_p":Infinity}',
    '{"type":"generate","input_tokens":[1],"temperature":1e999}',
    '{"type":"generate","input_tokens":[1],"max_new_tokens":-1e999}',
    '{"type":"inference","input_tokens":[' + "9" * 5000 + "]}",
    '{"type":"generate","input_tokens":[1],"seed":' + "7" * 4400 + "}",
    '{"type":"inference","input_tokens":[1],"type":"stats"}',
    '{"type":"health"}   ',
    "\ufeff" + '{"type":"health"}',
    '{"type":"health"',
    '"health"',
    "",
    " ",
    "null",
    "[]",
    '{"type":"inference","input_tokens":[1.0]}',
    '{"type":"inference","input_tokens":[1e2]}',
    '{"type":"generate","prompt":"\\ud800"}',
    '{"type":"generate","prompt":"caf\\u00e9 \\ud83d\\ude00"}',
    '{"type":"generate","input_tokens":[1],"max_new_tokens":1.0}',
    *(_nest(n) for n in (30, 31, 32, 33, 200, 20000)),
]
bodies = (
    requests.map(lambda r: json.dumps(r).encode())
    | st.sampled_from(RAW_TEXTS).map(str.encode)
    | st.binary(max_size=64)
    | st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass"))
)


# ---- properties -------------------------------------------------------------------------------------------------


@fuzz_settings(200)
@given(body=bodies)
def test_every_frame_gets_the_predicted_reply(server, ref, body):
    exchange(server, ref, [body])


@fuzz_settings(50)
@given(burst=st.lists(bodies, min_size=2, max_size=5))
def test_pipelined_frames_are_answered_in_order(server, ref, burst):
    exchange(server, ref, burst)


@fuzz_settings(25)
@given(request=valid_requests, chunks=st.integers(2, 12))
def test_a_frame_sent_in_pieces_is_read_whole(server, ref, request, chunks):
    exchange(server, ref, [json.dumps(request).encode()], chunks)


@fuzz_settings(40)
@given(
    before=st.lists(bodies, max_size=2),
    tail=st.binary(min_size=0, max_size=40),
    declared_extra=st.integers(1, 1000),
    oversize=st.booleans(),
)
def test_truncated_or_oversized_tail_closes_cleanly(server, ref, before, tail, declared_extra, oversize):
    """After whole frames, a frame that never completes (the peer closes) or declares more than the cap: the
    whole frames are answered, an oversized one gets `frame_too_large` and the close, and the server goes on."""
    length = MAX_FRAME + declared_extra if oversize else len(tail) + declared_extra
    with connect(server.socket_path) as sock:
        sock.sendall(b"".join(frame(b) for b in before) + struct.pack(">I", length) + (b"" if oversize else tail))
        for body in before:
            check_answer(ref, body, *read_reply(sock, body))
        if oversize:
            reply, _ = read_reply(sock)
            assert reply["code"] == "frame_too_large"
            assert sock.recv(1) == b""
    with connect(server.socket_path) as sock:
        probe(ref, sock)


@fuzz_settings(30)
@given(data=st.binary(min_size=1, max_size=300))
def test_random_bytes_never_kill_the_server(server, ref, data):
    """Bytes with no framing at all: any reply is well formed; the server either waits for more or closes."""
    with connect(server.socket_path) as sock:
        sock.sendall(data)
        sock.settimeout(0.05)
        try:
            while (reply := recv_frame(sock, 1 << 24)) is not None:
                check_frame(reply, data)
        except (TimeoutError, ConnectionError):
            pass  # waiting for the rest of a frame, or closed after an oversized header
    with connect(server.socket_path) as sock:
        probe(ref, sock)
    assert server.proc.poll() is None, server.log()


# ---- every error kind a client can cause, and the caps ------------------------------------------------------------


ERROR_CASES = [
    (b"{", "invalid_json"),
    (b'{"type":"generate","input_tokens":[1],"temperature":NaN}', "invalid_json"),
    (b"[1]", "invalid_message"),
    (_nest(33).encode(), "invalid_message"),
    (b'{"type":"fly"}', "unknown_type"),
    (b'{"type":"generate","input_tokens":[1],"max_new_tokens":17}', "invalid_value"),
    (b'{"type":"generate","input_tokens":[1],"seed":' + b"9" * 30 + b"}", "invalid_value"),
    (b'{"type":"inference","input_tokens":[320]}', "invalid_token"),
    (json.dumps({"type": "generate", "prompt": "x" * 2040, "max_new_tokens": 16}).encode(), "too_long"),
    (json.dumps({"type": "inference", "input_tokens": [1] * 2048}).encode(), "too_long"),
]


def test_every_client_error_kind_is_coded_and_leaks_nothing(server, ref):
    """Caps on nesting, seeds, max_new_tokens and prompt length hold; no error names a path or an address."""
    seen = set()
    with connect(server.socket_path) as sock:
        for body, code in ERROR_CASES:
            sock.sendall(frame(body))
            reply, _ = read_reply(sock, body)
            assert reply["code"] == code, (body[:60], reply)
            seen.add(code)
        probe(ref, sock)
    for code, send in (("frame_too_large", struct.pack(">I", MAX_FRAME + 1)), ("timeout", frame(b"{}")[:3])):
        with connect(server.socket_path) as sock:
            sock.sendall(send)
            reply, _ = read_reply(sock)
            assert reply["code"] == code and sock.recv(1) == b""
            seen.add(code)
    seen.add(overloaded_reply(server)["code"])
    assert seen >= {c for _, c in ERROR_CASES} | {"frame_too_large", "timeout", "overloaded"}


def overloaded_reply(server: ServerProcess) -> dict:
    """Hold every connection place, then one more: it is refused with a clear `overloaded` reply."""
    held: list[socket.socket] = []
    deadline = time.monotonic() + 10
    try:
        while len(held) < MAX_CONNECTIONS:
            assert time.monotonic() < deadline, "closed connections never gave their places back"
            sock = connect(server.socket_path)
            sock.sendall(frame(b'{"type":"health"}'))
            reply, _ = read_reply(sock)
            if reply["status"] == "success":
                held.append(sock)
            else:
                sock.close()  # a place a just-closed connection still held
                time.sleep(0.02)
        with connect(server.socket_path) as extra:
            reply, _ = read_reply(extra)
            assert "at most" in reply["error"] and extra.recv(1) == b""
            return reply
    finally:
        for sock in held:
            sock.close()
