"""rollgraph.client against a tiny in-test server on a real Unix socket; CPU only, no model.

The server answers with canned frames and sends them one byte per `send`, so the client must loop over short
reads. The seed's own client code (copied below as the wire-compatibility spec) runs against the same server.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

import pytest

import rollgraph
from rollgraph.client import (
    Client,
    Generation,
    ServerUnavailable,
    TokenEvent,
    UnexpectedReply,
)
from rollgraph.errors import RequestError, ServerError
from rollgraph.protocol import ConnectionClosed, encode_frame, generate_reply, recv_exactly, token_frame

Handler = Callable[[socket.socket, dict], None]


def seed_send_request(sock: socket.socket, input_tokens: list[int]) -> list[int]:
    """The seed client's `send_request`, as written in the original design (its framing is the spec)."""
    request = {"type": "inference", "input_tokens": input_tokens}
    request_data = json.dumps(request).encode("utf-8")
    sock.sendall(len(request_data).to_bytes(4, "big"))
    sock.sendall(request_data)
    response_length = int.from_bytes(sock.recv(4), "big")
    response_data = sock.recv(response_length)
    response = json.loads(response_data.decode("utf-8"))
    if response["status"] == "success":
        return response["output_tokens"]
    raise RuntimeError(f"Generator error: {response['error']}")


def send_chunked(conn: socket.socket, frame: dict, chunk: int = 1) -> None:
    data = encode_frame(frame)
    for start in range(0, len(data), chunk):
        conn.sendall(data[start : start + chunk])


class FakeServer:
    """Accepts connections one at a time on a short Unix socket path; calls `handler(conn, request)` for each
    whole request frame (read seed-style: 4-byte length, then JSON) and records requests and raw bytes."""

    def __init__(self, handler: Handler) -> None:
        self.dir = tempfile.mkdtemp(prefix="rg", dir="/tmp")  # AF_UNIX paths are limited to ~107 bytes
        self.path = os.path.join(self.dir, "s.sock")
        self.handler = handler
        self.requests: list[dict] = []
        self.raw: list[bytes] = []
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen()
        self.listener.settimeout(0.05)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5.0)
                self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        while not self.stop.is_set():
            try:
                header = recv_exactly(conn, 4)
                body = recv_exactly(conn, int.from_bytes(header, "big"))
            except OSError:  # the client closed (ConnectionClosed) or went quiet
                return
            self.raw.append(header + body)
            self.requests.append(json.loads(body))
            try:
                self.handler(conn, self.requests[-1])
            except OSError:
                return
            except BaseException as exc:
                self.errors.append(exc)
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.listener.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        assert not self.errors, self.errors


@pytest.fixture
def serve():
    servers: list[FakeServer] = []

    def start(handler: Handler) -> FakeServer:
        servers.append(FakeServer(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def canned(conn: socket.socket, request: dict) -> None:
    """A well-behaved server: next token = last + 1; generate streams `max_new_tokens` tokens."""
    kind = request["type"]
    if kind == "inference":
        send_chunked(conn, {"status": "success", "output_tokens": [request["input_tokens"][-1] + 1]})
    elif kind == "generate":
        tokens = list(range(100, 100 + request["max_new_tokens"]))
        if request["stream"]:
            for index, token in enumerate(tokens):
                send_chunked(conn, token_frame(token, index, f"<{token}>"))
        timings = {"ttft_ms": 1.0, "total_ms": 2.0}
        final = generate_reply(tokens, "length", 3, timings, {"decode": "pre-captured"}, text="...")
        send_chunked(conn, final)
    elif kind in ("stats", "health"):
        send_chunked(conn, {"status": "success", "kind": kind, "graphs": 3})
    else:
        send_chunked(conn, {"status": "error", "error": f"unknown type {kind}", "code": "unknown_type"})


# ------------------------------------------------------------------------------------------------- happy path


def test_send_request_reads_a_reply_sent_one_byte_at_a_time(serve):
    server = serve(canned)
    with Client(server.path, timeout=5) as client:
        assert client.send_request([1, 2, 3]) == [4]
        assert client.send_request([41]) == [42]  # the connection is reused
    assert server.requests == [
        {"type": "inference", "input_tokens": [1, 2, 3]},
        {"type": "inference", "input_tokens": [41]},
    ]


def test_original_api_connect_then_send_request(serve):
    server = serve(canned)
    client = Client(server.path)
    client.connect()
    assert client.send_request([7]) == [8]
    client.close()
    client.close()


def test_generate_streams_tokens_then_keeps_the_final_frame(serve):
    server = serve(canned)
    with Client(server.path, timeout=5) as client:
        generation = client.generate([1, 2, 3], max_new_tokens=4, temperature=0.5, seed=1)
        assert isinstance(generation, Generation) and generation.result is None
        assert list(generation) == [100, 101, 102, 103]
        result = generation.result
        assert result is not None
        assert result["output_tokens"] == [100, 101, 102, 103]
        assert result["finish_reason"] == "length"
        assert result["usage"] == {"prompt_tokens": 3, "completion_tokens": 4}
        assert result["timings"]["ttft_ms"] == 1.0 and result["graphs"] == {"decode": "pre-captured"}
        assert result["text"] == "..."
        assert client.stats()["graphs"] == 3  # the connection is free again
    sent = server.requests[0]
    assert sent["input_tokens"] == [1, 2, 3] and sent["temperature"] == 0.5 and sent["seed"] == 1
    assert sent["stream"] is True and "prompt" not in sent


def test_generate_events_carry_index_and_text(serve):
    server = serve(canned)
    with Client(server.path, timeout=5) as client:
        generation = client.generate(prompt="hi", max_new_tokens=2)
        events = list(generation.events())
        assert events == [TokenEvent(100, 0, "<100>"), TokenEvent(101, 1, "<101>")]
        assert generation.wait()["output_tokens"] == [100, 101]
    assert server.requests[0]["prompt"] == "hi"


def test_generate_without_stream_yields_the_final_ids(serve):
    server = serve(canned)
    with Client(server.path, timeout=5) as client:
        generation = client.generate([5], max_new_tokens=3, stream=False)
        assert list(generation) == [100, 101, 102]
        assert generation.result is not None and generation.result["finish_reason"] == "length"


def test_stats_and_health_drop_status(serve):
    server = serve(canned)
    with Client(server.path, timeout=5) as client:
        assert client.stats() == {"kind": "stats", "graphs": 3}
        assert client.health() == {"kind": "health", "graphs": 3}


def test_numpy_like_integer_scalars_are_sent_as_plain_ints(serve):
    class Index:
        def __init__(self, value: int) -> None:
            self.value = value

        def __index__(self) -> int:
            return self.value

    server = serve(canned)
    with Client(server.path, timeout=5) as client:
        assert client.send_request([Index(3), Index(4)]) == [5]


# ----------------------------------------------------------------------------------------------------- errors


def test_error_frame_raises_server_error_and_the_connection_stays_usable(serve):
    def handler(conn: socket.socket, request: dict) -> None:
        if request["input_tokens"] == [999]:
            send_chunked(conn, {"status": "error", "error": "token 999 >= vocab_size 100", "code": "invalid_token"})
        else:
            canned(conn, request)

    server = serve(handler)
    with Client(server.path, timeout=5) as client:
        with pytest.raises(ServerError, match="vocab_size 100") as excinfo:
            client.send_request([999])
        assert excinfo.value.code == "invalid_token"
        assert client.send_request([1]) == [2]


def test_error_after_some_tokens_ends_the_generation(serve):
    def handler(conn: socket.socket, request: dict) -> None:
        send_chunked(conn, token_frame(7, 0))
        send_chunked(conn, {"status": "error", "error": "model step failed", "code": "internal"})

    server = serve(handler)
    with Client(server.path, timeout=5) as client:
        generation = client.generate([1])
        assert next(generation) == 7
        with pytest.raises(ServerError) as excinfo:
            next(generation)
        assert excinfo.value.code == "internal"
        assert list(generation) == [] and generation.result is None


def test_request_refused_locally_before_sending(serve):
    server = serve(canned)
    with Client(server.path, timeout=5) as client:
        with pytest.raises(RequestError, match="both") as excinfo:
            client.generate([1], prompt="x")
        assert excinfo.value.code == "invalid_message"
        with pytest.raises(RequestError, match="top_p"):
            client.generate([1], top_p=0.0)
        with pytest.raises(RequestError, match="input_tokens") as excinfo:
            client.send_request([1.5])  # type: ignore[list-item]
        assert excinfo.value.code == "invalid_token"
        with pytest.raises(RequestError, match="at least one"):
            client.send_request([])
    assert server.requests == []


def test_server_closing_mid_frame_raises_connection_closed(serve):
    def handler(conn: socket.socket, request: dict) -> None:
        conn.sendall(encode_frame({"status": "success", "output_tokens": [1]})[:9])
        conn.shutdown(socket.SHUT_RDWR)

    server = serve(handler)
    with Client(server.path, timeout=5) as client:
        with pytest.raises(ConnectionClosed, match="middle of a frame body") as excinfo:
            client.send_request([1])
        assert server.path in str(excinfo.value)
        assert isinstance(excinfo.value, ConnectionError)


def test_server_closing_without_a_reply_then_reconnect(serve):
    calls = []

    def handler(conn: socket.socket, request: dict) -> None:
        calls.append(request)
        if len(calls) == 1:
            raise ConnectionResetError  # ends this connection without a byte
        canned(conn, request)

    server = serve(handler)
    with Client(server.path, timeout=5) as client:
        with pytest.raises(ConnectionClosed, match="without replying"):
            client.send_request([1])
        assert client.send_request([2]) == [3]  # dropped socket, fresh connection


def test_unknown_status_is_an_unexpected_reply(serve):
    server = serve(lambda conn, request: send_chunked(conn, {"status": "maybe"}))
    with Client(server.path, timeout=5) as client, pytest.raises(UnexpectedReply, match="maybe"):
        client.stats()


def test_oversized_reply_header_is_refused_without_reading_on(serve):
    server = serve(lambda conn, request: conn.sendall((2**32 - 1).to_bytes(4, "big") + b"{}"))
    client = Client(server.path, timeout=5, max_frame_bytes=1000)
    with client, pytest.raises(UnexpectedReply, match="over the cap of 1000"):
        client.stats()


def test_frame_too_large_error_drops_the_connection_then_reconnects(serve):
    def handler(conn: socket.socket, request: dict) -> None:
        if request["type"] == "stats":
            send_chunked(conn, {"status": "error", "error": "frame of 9 bytes is over...", "code": "frame_too_large"})
            conn.shutdown(socket.SHUT_RDWR)
        else:
            canned(conn, request)

    server = serve(handler)
    with Client(server.path, timeout=5) as client:
        with pytest.raises(ServerError) as excinfo:
            client.stats()
        assert excinfo.value.code == "frame_too_large"
        assert client.send_request([1]) == [2]


def test_no_socket_file_is_a_connection_error_naming_the_path():
    path = os.path.join(tempfile.gettempdir(), "rollgraph-test-no-such-dir", "s.sock")
    client = Client(path, timeout=1)
    with pytest.raises(ServerUnavailable) as excinfo:
        client.send_request([1])
    assert isinstance(excinfo.value, ConnectionError)
    message = str(excinfo.value)
    assert path in message and f"rollgraph serve --model MODEL --socket {path}" in message


def test_stale_socket_file_is_connection_refused():
    directory = tempfile.mkdtemp(prefix="rg", dir="/tmp")
    path = os.path.join(directory, "s.sock")
    try:
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(path)
        stale.close()  # the file stays, nobody listens
        with pytest.raises(ServerUnavailable, match="refused") as excinfo:
            Client(path, timeout=1).connect()
        assert path in str(excinfo.value)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_silent_server_raises_timeout_error(serve):
    server = serve(lambda conn, request: None)
    client = Client(server.path, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"0\.2 s") as excinfo:
        client.stats()
    assert time.monotonic() - started < 3
    assert server.path in str(excinfo.value)
    client.close()


def test_busy_poll_reads_byte_by_byte_streams_and_still_times_out(serve):
    server = serve(canned)
    with Client(server.path, timeout=5, spin_ahead_s=0.006) as client:
        assert list(client.generate([1], max_new_tokens=4)) == [100, 101, 102, 103]
        assert client.send_request([1, 2, 3]) == [4]
    silent = serve(lambda conn, request: None)
    client = Client(silent.path, timeout=0.2, busy_poll=True)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"0\.2 s"):
        client.stats()
    assert 0.2 <= time.monotonic() - started < 3
    client.close()


def paced(gap_s: float, stall_after: int | None = None):
    """A server that streams `max_new_tokens` tokens `gap_s` apart, whole frames at once; with `stall_after`, it
    goes silent after that many tokens."""

    def handler(conn: socket.socket, request: dict) -> None:
        tokens = list(range(100, 100 + request["max_new_tokens"]))
        for index, token in enumerate(tokens):
            if index == stall_after:
                return
            time.sleep(gap_s)
            conn.sendall(encode_frame(token_frame(token, index, None)))
        conn.sendall(encode_frame(generate_reply(tokens, "length", 3, {}, {"decode": "pre-captured"})))

    return handler


def test_spin_ahead_sleeps_between_tokens_and_spins_only_near_the_next(serve):
    """With tokens 30 ms apart and 6 ms of spin ahead, the client reads every token and spends most of the stream
    asleep: a client that spun throughout would use about as much CPU time as the stream's wall time."""
    server = serve(paced(0.03))
    with Client(server.path, timeout=5, spin_ahead_s=0.006) as client:
        started, cpu = time.monotonic(), time.process_time()
        assert list(client.generate([1], max_new_tokens=12)) == list(range(100, 112))
        wall, cpu = time.monotonic() - started, time.process_time() - cpu
    assert wall >= 12 * 0.03 and cpu < 0.6 * wall, (wall, cpu)
    with pytest.raises(ValueError, match="spin_ahead_s"):
        Client(server.path, spin_ahead_s=-1)


def test_spin_ahead_still_times_out_when_the_next_token_never_comes(serve):
    silent = serve(paced(0.01, stall_after=3))
    client = Client(silent.path, timeout=0.3, spin_ahead_s=0.005)
    gen = client.generate([1], max_new_tokens=8)
    assert [next(gen) for _ in range(3)] == [100, 101, 102]
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"0\.3 s"):
        next(gen)
    assert 0.25 <= time.monotonic() - started < 3
    client.close()


def test_open_generation_blocks_other_requests_until_closed(serve):
    server = serve(canned)
    with Client(server.path, timeout=5) as client:
        generation = client.generate([1], max_new_tokens=3)
        assert next(generation) == 100
        with pytest.raises(RuntimeError, match="still open"):
            client.stats()
        generation.close()  # drops the connection; the server would cancel
        assert client.stats()["kind"] == "stats"


# ----------------------------------------------------------------------------------------- wire compatibility


def test_seed_client_code_talks_to_the_same_server(serve):
    def whole_frames(conn: socket.socket, request: dict) -> None:
        conn.sendall(encode_frame({"status": "success", "output_tokens": [request["input_tokens"][-1] + 1]}))

    server = serve(whole_frames)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(server.path)
        assert seed_send_request(sock, [1, 2, 3]) == [4]
    with Client(server.path, timeout=5) as client:
        assert client.send_request([1, 2, 3]) == [4]
    seed_frame, ours = server.raw
    for frame in (seed_frame, ours):
        assert frame[:4] == len(frame[4:]).to_bytes(4, "big")
    assert json.loads(seed_frame[4:]) == json.loads(ours[4:]) == {"type": "inference", "input_tokens": [1, 2, 3]}


def test_seed_client_breaks_on_a_short_read_that_client_survives(serve):
    """The fault the client fixes: the seed calls recv(n) once and gets half a frame."""

    def split_reply(conn: socket.socket, request: dict) -> None:
        data = encode_frame({"status": "success", "output_tokens": [request["input_tokens"][-1] + 1]})
        conn.sendall(data[:10])
        time.sleep(0.3)
        conn.sendall(data[10:])

    server = serve(split_reply)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(server.path)
        with pytest.raises(ValueError):  # json.JSONDecodeError on the truncated body
            seed_send_request(sock, [1])
    with Client(server.path, timeout=5) as client:
        assert client.send_request([1]) == [2]


# --------------------------------------------------------------------------------------------------- no torch


def test_client_and_protocol_import_without_torch():
    src = os.path.dirname(os.path.dirname(os.path.abspath(rollgraph.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    code = "import rollgraph.client, rollgraph.protocol, sys; assert 'torch' not in sys.modules, 'torch'"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
