"""The generator process end to end: a real `rollgraph serve` subprocess on llama-tiny (CPU) driven
through real Unix sockets, plus a `Server` with a stand-in engine in a thread for what a real model cannot
be made to do (fail a step, lack a tokenizer) and for connection admission."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import threading
import time

import pytest

from rollgraph.client import Client
from rollgraph.config import EngineConfig, ModelConfig
from rollgraph.engine import Engine
from rollgraph.errors import RollgraphError, ServerError
from rollgraph.params import GenerationParams
from rollgraph.protocol import encode_frame, recv_exactly, recv_frame
from serverproc import FakeEngine, ServerProcess, ThreadServer, accepts, serve_command, short_dir

VOCAB = 320  # llama-tiny
FRAME_TIMEOUT = 2.0
MAX_FRAME = 65536
CAP = 1000  # --max-new-tokens-cap


@pytest.fixture(scope="module")
def server():
    folder = short_dir()
    proc = ServerProcess(
        os.path.join(folder, "s.sock"),
        "--frame-timeout", str(FRAME_TIMEOUT), "--max-frame-bytes", str(MAX_FRAME),
        "--max-new-tokens-cap", str(CAP),
    )  # fmt: skip
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.kill()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def ref():
    """In-process engine with the server's weights (built-in seed 0), for token equality."""
    from rollgraph.models import load_model

    return Engine(load_model(ModelConfig("llama-tiny")), EngineConfig(mode="eager"))


def greedy(engine: Engine, ids: list[int], n: int) -> list[int]:
    return list(engine.generate(GenerationParams(tuple(ids), max_new_tokens=n)))


def connect(path: str, timeout: float = 30.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock


def call(sock: socket.socket, message: dict) -> dict:
    sock.sendall(encode_frame(message))
    frame = recv_frame(sock, 1 << 26)
    assert frame is not None, "server closed the connection"
    return frame


def connect_served(path: str) -> socket.socket:
    """A connection the server has admitted: retried while a just-closed one still holds a place."""
    deadline = time.monotonic() + 5
    while True:
        sock = connect(path)
        if call(sock, {"type": "health"})["status"] == "success":
            return sock
        sock.close()
        assert time.monotonic() < deadline, "no connection was admitted"
        time.sleep(0.02)


def server_stats(path: str) -> dict:
    with Client(path) as c:
        return c.stats()["server"]


def seed_send_request(sock: socket.socket, input_tokens: list[int]) -> list[int]:
    """The seed client's send_request, its one-shot recv replaced by a loop that reads the whole frame."""
    request = {"type": "inference", "input_tokens": input_tokens}
    request_data = json.dumps(request).encode("utf-8")
    sock.sendall(len(request_data).to_bytes(4, "big"))
    sock.sendall(request_data)

    def recv_all(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("server closed mid-frame")
            data += chunk
        return data

    response_length = int.from_bytes(recv_all(4), "big")
    response = json.loads(recv_all(response_length).decode("utf-8"))
    if response["status"] == "success":
        return response["output_tokens"]
    raise RuntimeError(f"Generator error: {response['error']}")


# ---- serving -----------------------------------------------------------------------------------------------


def test_ready_logged_and_socket_is_private(server):
    assert "ready" in server.log()
    assert "objects frozen out of the collector's reach" in server.log()  # ServerConfig.gc_freeze, on by default
    assert stat.S_IMODE(os.stat(server.socket_path).st_mode) == 0o600
    with Client(server.socket_path) as c:
        assert c.health()["state"] == "ready"


def test_seed_client_loop_matches_in_process_greedy_with_prefix_reuse(server, ref):
    prompt, n = [1, 50, 60, 70, 80], 12
    before = server_stats(server.socket_path)
    seq = list(prompt)
    with connect(server.socket_path) as sock:
        for _ in range(n):
            seq += seed_send_request(sock, seq)
    assert seq[len(prompt) :] == greedy(ref, prompt, n)
    after = server_stats(server.socket_path)
    # every request after the first extends the sequence the engine holds by one token
    assert after["prefix_reuse_requests"] - before["prefix_reuse_requests"] >= n - 1
    assert after["prefix_reused_tokens"] - before["prefix_reused_tokens"] >= sum(range(len(prompt), len(seq) - 1))
    assert after["served_by_type"]["inference"] - before["served_by_type"].get("inference", 0) == n


def test_streamed_tokens_equal_final_frame_and_in_process(server, ref):
    ids = [3, 9, 27, 81]
    with Client(server.socket_path) as c:
        start = time.perf_counter()
        gen = c.generate(ids, max_new_tokens=20)
        events = list(gen.events())
        end = time.perf_counter()
        final = gen.result
    tokens = [e.token_id for e in events]
    assert [e.index for e in events] == list(range(20))
    assert all(e.text is not None for e in events)  # llama-tiny has a byte tokenizer
    assert tokens == final["output_tokens"] == greedy(ref, ids, 20)
    assert final["finish_reason"] == "length"
    assert final["usage"] == {"prompt_tokens": 4, "completion_tokens": 20}
    timings = final["timings"]
    assert timings["queue_ms"] >= 0 and timings["prefill_ms"] > 0 and len(timings["step_ms"]) == 19
    # the connection's own share of a client's TTFT, on both sides of the engine
    assert 0 <= timings["frame_to_queue_ms"] < 1000 and 0 <= timings["first_token_out_ms"] < 1000, timings
    assert 0 <= timings["first_byte_to_frame_ms"] < 1000, timings
    # the server's clock stamps are this host's CLOCK_MONOTONIC, as the client's time.perf_counter() is
    assert start < timings["first_byte_at"] < timings["first_token_sent_at"] < end, (start, end, timings)
    for side in ("made", "sent"):  # gaps between consecutive streamed tokens, on the server
        assert 0 < timings[f"itl_{side}_median_ms"] <= timings[f"itl_{side}_max_ms"] < 10_000, timings
    assert "prefix_reused_tokens" in final and sum(final["graphs"].values()) >= 20


def test_stream_false_sends_only_the_final_frame(server, ref):
    ids = [7, 7, 7]
    with connect(server.socket_path) as sock:
        final = call(sock, {"type": "generate", "input_tokens": ids, "max_new_tokens": 6, "stream": False})
        assert final["status"] == "success"
        assert call(sock, {"type": "health"})["status"] == "success"  # nothing else was queued on the wire
    assert final["output_tokens"] == greedy(ref, ids, 6)


def test_text_prompt(server, ref):
    with Client(server.socket_path) as c:
        gen = c.generate(prompt="hello", max_new_tokens=8, stop_token_ids=[])
        tokens = list(gen)
        final = gen.result
    ids = ref.model.tokenizer.encode("hello")
    assert final["usage"]["prompt_tokens"] == len(ids)
    assert tokens == greedy(ref, ids, 8)
    assert final["text"] == ref.model.tokenizer.decode(tokens)


def test_stop_token_ends_generation(server, ref):
    ids = [11, 12, 13]
    want = greedy(ref, ids, 10)
    with Client(server.socket_path) as c:
        final = c.generate(ids, max_new_tokens=10, stop_token_ids=[want[3]]).wait()
    assert final["output_tokens"] == want[: want.index(want[3]) + 1]
    assert final["finish_reason"] == "stop"


def test_two_concurrent_clients(server, ref):
    prompts = {0: [5, 6, 7], 1: [100, 200, 300, 4]}
    got: dict[int, list[int]] = {}

    def work(i: int) -> None:
        with Client(server.socket_path) as c:
            got[i] = list(c.generate(prompts[i], max_new_tokens=40))

    threads = [threading.Thread(target=work, args=(i,)) for i in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == {i: greedy(ref, p, 40) for i, p in prompts.items()}


def test_disconnect_mid_stream_cancels_and_frees_the_slot(server, ref):
    before = server_stats(server.socket_path)["cancelled"]
    c = Client(server.socket_path)
    gen = c.generate([1, 2, 3], max_new_tokens=CAP)
    for _ in range(3):
        next(gen)
    c.close()  # drop the connection mid-stream
    deadline = time.monotonic() + 15
    while server_stats(server.socket_path)["cancelled"] == before:
        assert time.monotonic() < deadline, "the server never counted the cancelled request"
        time.sleep(0.05)
    with Client(server.socket_path) as c2:
        assert list(c2.generate([4, 5], max_new_tokens=5)) == greedy(ref, [4, 5], 5)


# ---- bad input ---------------------------------------------------------------------------------------------

LONG = [i % VOCAB for i in range(1500)]
BAD_MESSAGES = [
    pytest.param(b"{not json", "invalid_json", id="not-json"),
    pytest.param(b"\xff\xfe\x00", "invalid_json", id="not-utf8"),
    pytest.param(b"[1, 2, 3]", "invalid_message", id="not-an-object"),
    pytest.param({"type": "bogus"}, "unknown_type", id="unknown-type"),
    pytest.param({"input_tokens": [1]}, "invalid_message", id="missing-type"),
    pytest.param({"type": "inference"}, "invalid_message", id="missing-tokens"),
    pytest.param({"type": "inference", "input_tokens": "1,2"}, "invalid_message", id="ill-typed-tokens"),
    pytest.param({"type": "inference", "input_tokens": []}, "invalid_value", id="empty-tokens"),
    pytest.param({"type": "inference", "input_tokens": [1, -1]}, "invalid_token", id="negative-token"),
    pytest.param({"type": "inference", "input_tokens": [1, VOCAB]}, "invalid_token", id="token-over-vocab"),
    pytest.param({"type": "generate", "input_tokens": [VOCAB + 5]}, "invalid_token", id="generate-token-over"),
    pytest.param({"type": "inference", "input_tokens": [1] * 2048}, "too_long", id="inference-too-long"),
    pytest.param({"type": "generate", "input_tokens": LONG, "max_new_tokens": 600}, "too_long", id="too-long"),
    pytest.param({"type": "generate", "input_tokens": [1], "max_new_tokens": 0}, "invalid_value", id="zero-new"),
    pytest.param({"type": "generate", "input_tokens": [1], "max_new_tokens": CAP + 1}, "invalid_value", id="cap"),
    pytest.param({"type": "generate", "input_tokens": [1], "max_new_tokens": "5"}, "invalid_message", id="str-n"),
    pytest.param({"type": "generate", "input_tokens": [1], "temperature": -1}, "invalid_value", id="temperature"),
    pytest.param({"type": "generate", "input_tokens": [1], "top_p": 0}, "invalid_value", id="top-p"),
    pytest.param({"type": "generate", "input_tokens": [1], "top_k": -2}, "invalid_value", id="top-k"),
    pytest.param({"type": "generate", "input_tokens": [1], "seed": -1}, "invalid_value", id="seed"),
    pytest.param({"type": "generate", "input_tokens": [1], "stream": "yes"}, "invalid_message", id="stream"),
    pytest.param({"type": "generate", "input_tokens": [1], "prompt": "x"}, "invalid_message", id="both-sources"),
]


@pytest.mark.parametrize("message, code", BAD_MESSAGES)
def test_bad_message_gets_its_code_and_the_connection_keeps_serving(server, message, code):
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    with connect(server.socket_path) as sock:
        sock.sendall(struct.pack(">I", len(body)) + body)
        reply = recv_frame(sock)
        assert reply is not None and reply["status"] == "error"
        assert reply["code"] == code, reply
        assert reply["error"]
        assert seed_send_request(sock, [1, 2, 3]) == seed_send_request(sock, [1, 2, 3])


def test_errors_are_counted_by_code(server):
    before = server_stats(server.socket_path)["errors"].get("unknown_type", 0)
    with connect(server.socket_path) as sock:
        call(sock, {"type": "nope"})
    assert server_stats(server.socket_path)["errors"]["unknown_type"] == before + 1


def test_oversized_frame_is_refused_and_closed(server):
    with connect(server.socket_path) as sock:
        sock.sendall(struct.pack(">I", MAX_FRAME + 1) + b"{}")
        reply = recv_frame(sock)
        assert reply is not None and reply["code"] == "frame_too_large"
        assert sock.recv(1) == b""  # the server closed the connection
    with connect(server.socket_path) as sock:
        assert seed_send_request(sock, [1])


def test_half_frame_stall_times_out_without_blocking_others(server):
    stalled = connect(server.socket_path)
    body = json.dumps({"type": "inference", "input_tokens": [1, 2]}).encode()
    stalled.sendall(struct.pack(">I", len(body)) + body[:5])
    start = time.monotonic()
    with connect(server.socket_path) as other:  # served while the stalled frame waits
        assert seed_send_request(other, [4, 5, 6])
    assert time.monotonic() - start < FRAME_TIMEOUT
    reply = recv_frame(stalled)
    waited = time.monotonic() - start
    assert reply is not None and reply["code"] == "timeout", reply
    assert FRAME_TIMEOUT * 0.8 <= waited < FRAME_TIMEOUT + 10
    assert stalled.recv(1) == b""
    stalled.close()


def test_peer_closing_mid_frame_leaves_the_server_serving(server):
    with connect(server.socket_path) as sock:
        sock.sendall(struct.pack(">I", 100) + b'{"type"')
    with connect(server.socket_path) as sock:
        assert seed_send_request(sock, [9])


# ---- socket lifecycle --------------------------------------------------------------------------------------


def test_live_socket_is_not_replaced(server):
    out = subprocess.run(serve_command(server.socket_path), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "already listening" in out.stderr
    assert accepts(server.socket_path)


def test_a_file_that_is_not_a_socket_is_not_replaced():
    folder = short_dir()
    try:
        path = os.path.join(folder, "s.sock")
        with open(path, "w") as f:
            f.write("keep me")
        out = subprocess.run(serve_command(path), capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and "not a socket" in out.stderr
        with open(path) as f:
            assert f.read() == "keep me"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_stale_socket_replaced_and_sigterm_drains_the_request_in_flight():
    folder = short_dir()
    path = os.path.join(folder, "s.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # bound, never listening, then closed: what a killed server leaves
    stale.close()
    proc = ServerProcess(path)
    try:
        proc.wait_ready()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with Client(path) as c:
            gen = c.generate([1, 2, 3], max_new_tokens=400)
            first = next(gen)
            proc.proc.terminate()  # SIGTERM while the generation is in flight
            rest = list(gen)
            assert gen.result["finish_reason"] == "length"
            assert [first, *rest] == gen.result["output_tokens"] and len(rest) == 399
        assert proc.proc.wait(30) == 0, proc.log()
        assert not os.path.exists(path)
    finally:
        proc.kill()
        shutil.rmtree(folder, ignore_errors=True)


# ---- a stand-in engine in a thread -------------------------------------------------------------------------


def test_failed_model_step_fails_only_that_request():
    engine = FakeEngine()
    with ThreadServer(engine) as srv, Client(srv.socket_path) as c:
        with pytest.raises(ServerError) as err:
            list(c.generate([1, 13], max_new_tokens=3))
        assert err.value.code == "internal"
        assert "/secret" not in err.value.message and "0x" not in err.value.message
        assert c.send_request([1, 2]) == [3]
        assert list(c.generate([5], max_new_tokens=3)) == [6, 7, 8]
        assert c.stats()["server"]["errors"] == {"internal": 1}
    assert engine.threads == {"rollgraph-engine"}  # all engine work ran on the one engine thread


def test_text_prompt_without_tokenizer():
    with ThreadServer(FakeEngine()) as srv, Client(srv.socket_path) as c:
        with pytest.raises(ServerError) as err:
            list(c.generate(prompt="hi"))
        assert err.value.code == "no_tokenizer"
        assert c.health()["state"] == "ready"


def test_idle_work_runs_until_done_on_the_engine_thread():
    engine = FakeEngine(captures=3)
    with ThreadServer(engine) as srv, Client(srv.socket_path) as c:
        c.send_request([1])
        stats = c.stats()
    assert stats["pending"] == 0 and stats["server"]["idle_captures"] == 3
    assert engine.threads == {"rollgraph-engine"}


def test_connection_limit_replies_overloaded():
    with ThreadServer(FakeEngine(), max_connections=2) as srv:
        held = [connect_served(srv.socket_path) for _ in range(2)]
        with connect(srv.socket_path) as extra:
            extra.sendall(encode_frame({"type": "health"}))
            reply = recv_frame(extra)
            assert reply is not None and reply["code"] == "overloaded"
            assert extra.recv(1) == b""
        held.pop().close()
        connect_served(srv.socket_path).close()  # the place is free once the server has read the EOF
        held[0].close()


def test_a_refused_client_reads_its_error_then_eof_even_with_its_request_unread():
    """A refused connection's request may still be unread when the server is done with it (here: 512 KiB, far past
    what asyncio reads ahead). The server lingers, reading it, so the client gets the error frame and then EOF, not a
    reset (the reset was seen on the H100 host with a small request, as a race)."""
    with ThreadServer(FakeEngine(), max_connections=1) as srv:
        held = connect_served(srv.socket_path)
        with connect(srv.socket_path) as extra:
            body = b'{"type":"health","pad":"' + b"x" * (512 << 10) + b'"}'
            extra.sendall(len(body).to_bytes(4, "big") + body)
            reply = recv_frame(extra)
            assert reply is not None and reply["code"] == "overloaded"
            assert extra.recv(1) == b""
        held.close()


def test_allow_uid_refuses_other_users():
    with ThreadServer(FakeEngine(), allowed_uids=(os.getuid() + 4242,)) as srv, connect(srv.socket_path) as s:
        length = struct.unpack(">I", recv_exactly(s, 4))[0]
        reply = json.loads(recv_exactly(s, length))
        assert reply["code"] == "forbidden" and str(os.getuid()) in reply["error"]
    with ThreadServer(FakeEngine(), allowed_uids=(os.getuid(),)) as srv, Client(srv.socket_path) as c:
        assert c.health()["state"] == "ready"


def test_gc_freeze_only_when_asked():
    """The server freezes what start-up left alive (gc.freeze) unless --no-gc-freeze; a frozen object is never
    collected, so the flag exists for whoever wants the collector to see everything."""
    import gc

    from rollgraph.config import EngineConfig, ModelConfig
    from rollgraph.server import load_engine

    gc.unfreeze()
    try:
        load_engine(ModelConfig("llama-tiny", device="cpu"), EngineConfig(mode="eager", max_seq_len=64))
        assert gc.get_freeze_count() == 0
        load_engine(ModelConfig("llama-tiny", device="cpu"), EngineConfig(mode="eager", max_seq_len=64), gc_freeze=True)
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()


def test_gc_freeze_flag_reaches_the_server_config():
    from rollgraph.cli import build_parser
    from rollgraph.server import server_config

    def config(*flags):
        return server_config(build_parser().parse_args(["serve", "--model", "m", "--socket", "/s", *flags]))

    assert config().gc_freeze is True and config("--no-gc-freeze").gc_freeze is False


@pytest.mark.parametrize(
    ("value", "ok"), [("0", True), ("2.5", True), ("100", True), ("-1", False), ("101", False), ("nan", False)]
)
def test_idle_spin_flag_reaches_the_server_config_or_is_refused(value, ok):
    from rollgraph.cli import build_parser
    from rollgraph.server import server_config

    args = build_parser().parse_args(["serve", "--model", "m", "--socket", "/s", "--idle-spin-ms", value])
    if ok:
        assert server_config(args).idle_spin_ms == float(value)
    else:
        with pytest.raises(RollgraphError, match="--idle-spin-ms must be from 0 to 100") as err:
            server_config(args)
        assert err.value.code == "invalid_value"
    assert server_config(build_parser().parse_args(["serve", "--model", "m", "--socket", "/s"])).idle_spin_ms == 0
