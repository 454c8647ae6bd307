"""Token frames written by the engine thread (token_writer.py): order, fallback to the loop, peers that go away."""

from __future__ import annotations

import contextlib
import socket
import time

import pytest

from rollgraph.client import Client
from rollgraph.protocol import decode_payload, recv_frame, send_frame, token_frame
from rollgraph.token_writer import DirectWriter, TokenFrames, engine_socket
from serverproc import FakeEngine, ThreadServer


def small_pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return a, b


def test_frames_count_their_index_and_carry_text():
    frames = TokenFrames(lambda ids: f"<{ids[0]}>")
    first, second = frames.encode(7), frames.encode(9)
    assert decode_payload(first[4:]) == {"status": "token", "token_id": 7, "index": 0, "text": "<7>"}
    assert decode_payload(second[4:]) == token_frame(9, 1, "<9>")
    assert decode_payload(TokenFrames(None).encode(3)[4:]) == token_frame(3, 0)


def split_frames(stream: bytes) -> list[dict]:
    frames = []
    while stream:
        length = int.from_bytes(stream[:4], "big")
        assert len(stream) >= 4 + length, "a frame was cut short"
        frames.append(decode_payload(stream[4 : 4 + length]))
        stream = stream[4 + length :]
    return frames


def test_a_full_socket_turns_the_writer_off_and_hands_back_exactly_the_unsent_bytes():
    ours, peer = small_pair()
    dup = engine_socket(ours.fileno())
    writer = DirectWriter(dup)
    frames, rest, whole = TokenFrames(None), b"", 0
    while not rest and whole < 5000:  # far more than the small buffers hold
        rest = writer.send(frames.encode(whole), time.perf_counter())
        whole += 0 if rest else 1
    assert rest and not writer.active and writer.error is None
    assert 0 < whole < 5000 and len(writer.sent) == len(writer.made) == whole
    later = frames.encode(whole + 1)
    assert writer.send(later, 0.0) == later  # off for good: every later frame comes back whole
    taken = b""
    peer.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while chunk := peer.recv(1 << 16):
            taken += chunk
    # What the socket took, then the handed-back rest: one unbroken stream of frames 0..whole.
    assert [f["index"] for f in split_frames(taken + rest)] == list(range(whole + 1))
    writer.close()
    dup.close()
    ours.close()
    peer.close()


def test_a_gone_peer_is_an_error_and_the_frame_comes_back():
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    peer.close()
    dup = engine_socket(ours.fileno())
    writer = DirectWriter(dup)
    frame = TokenFrames(None).encode(1)
    assert writer.send(frame, 0.0) == frame
    assert isinstance(writer.error, OSError) and not writer.active
    writer.close()
    dup.close()
    ours.close()


def test_after_close_nothing_is_sent_and_a_later_writer_on_the_same_socket_sends():
    """A connection makes one engine_socket and a DirectWriter per request on it: a closed writer sends nothing,
    the next one sends, and closing the duplicate leaves the connection's own socket open."""
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    dup = engine_socket(ours.fileno())
    first = DirectWriter(dup)
    first.close()
    frame = TokenFrames(None).encode(1)
    assert first.send(frame, 0.0) == frame
    second = DirectWriter(dup)
    assert second.send(frame, 0.0) == b"" and second.active
    second.close()
    assert recv_frame(peer) == decode_payload(frame[4:])
    dup.close()
    ours.sendall(b"still open")
    assert peer.recv(64) == b"still open"
    ours.close()
    peer.close()


# ---- through a server ----------------------------------------------------------------------------------------


def fake_tokens(n: int, last: int = 1) -> list[int]:
    """What FakeEngine makes for a prompt ending in `last`: as fast as the engine thread can, so a long stream
    outruns any socket buffer."""
    return [(last + i + 1) % 100 for i in range(n)]


@pytest.mark.parametrize("writes", ["engine", "loop"])
def test_a_client_reading_at_once_gets_every_frame_in_order(writes):
    with ThreadServer(FakeEngine(), token_writes=writes) as srv, Client(srv.socket_path) as c:
        gen = c.generate([1], max_new_tokens=300)
        assert list(gen) == fake_tokens(300)
        timings = gen.result["timings"]
        direct = timings["token_frames_direct"]
        # The stand-in makes tokens faster than a loaded machine's client reads them, and each small frame costs the
        # socket ~1 kB of buffer: the engine thread may hand the tail to the loop even here.
        assert (0 < direct <= 300) if writes == "engine" else direct == 0
        assert timings["first_token_out_ms"] >= 0 and "itl_sent_max_ms" in timings


def test_a_client_that_stops_reading_gets_every_frame_in_order_when_it_reads_again():
    n = 20000  # ~40 bytes a frame: far more than the socket buffers hold, so the engine thread's writer must stop
    with ThreadServer(FakeEngine()) as srv:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(srv.socket_path)
        send_frame(sock, {"type": "generate", "input_tokens": [1], "max_new_tokens": n, "stream": True})
        time.sleep(0.5)  # the engine thread fills the socket and hands the rest to the loop
        frames = [recv_frame(sock) for _ in range(n + 1)]
        assert [f["index"] for f in frames[:n]] == list(range(n))
        assert [f["token_id"] for f in frames[:n]] == fake_tokens(n)
        final = frames[n]
        assert final["status"] == "success" and final["output_tokens"] == fake_tokens(n)
        assert 0 < final["timings"]["token_frames_direct"] < n
        # The connection is still usable, and a fresh request streams straight from the engine thread again.
        send_frame(sock, {"type": "generate", "input_tokens": [1], "max_new_tokens": 5, "stream": True})
        frames = [recv_frame(sock) for _ in range(6)]
        assert [f.get("index") for f in frames[:5]] == list(range(5))
        assert frames[5]["timings"]["token_frames_direct"] == 5
        sock.close()


def test_a_client_gone_mid_stream_leaves_the_server_serving():
    with ThreadServer(FakeEngine()) as srv:
        c = Client(srv.socket_path)
        gen = c.generate([1], max_new_tokens=200000)
        next(iter(gen))
        c.close()
        time.sleep(0.2)
        with Client(srv.socket_path) as c2:
            assert list(c2.generate([1], max_new_tokens=3)) == fake_tokens(3)
            assert c2.stats()["server"]["cancelled"] == 1


def test_one_socket_duplicate_a_connection_closed_with_it(monkeypatch):
    """The engine thread's writers (and its request reads) share one duplicate of their connection's socket (perf-notes
    v40, v76): one duplicate however many requests stream on a connection, and the connection closes it when it ends."""
    from rollgraph import connection

    made: list[socket.socket] = []

    def counted(fileno: int) -> socket.socket:
        made.append(engine_socket(fileno))
        return made[-1]

    def open_ones() -> list[socket.socket]:
        return [s for s in made if s.fileno() >= 0]

    def one_open() -> socket.socket:  # the client's connection's; the start-up probe's, if it made one, closes
        deadline = time.monotonic() + 5
        while len(open_ones()) > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(open_ones()) == 1, f"{len(open_ones())} open duplicates, one connection open"
        return open_ones()[0]

    monkeypatch.setattr(connection, "engine_socket", counted)
    with ThreadServer(FakeEngine()) as srv:
        with Client(srv.socket_path) as c:
            assert list(c.generate([1], max_new_tokens=3)) == fake_tokens(3)
            first = one_open()
            count = len(made)
            for _ in range(5):
                assert list(c.generate([1], max_new_tokens=3)) == fake_tokens(3)
            assert len(made) == count and one_open() is first
        with Client(srv.socket_path) as c:
            assert list(c.generate([1], max_new_tokens=3)) == fake_tokens(3)
            second = one_open()  # closed once the server reads the first connection's EOF
            assert second is not first and first.fileno() == -1 and len(made) == count + 1
