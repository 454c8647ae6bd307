"""Request frames read by the engine thread while it is idle (request_reads.py, perf-notes v76): which requests it
takes, what it leaves for the loop unread, and that the server answers everything as the loop alone would."""

from __future__ import annotations

import concurrent.futures
import socket
import sys
import threading
import time

import pytest

from rollgraph.client import Client
from rollgraph.engine_thread import SPIN_SWITCH_S, EngineThread
from rollgraph.errors import RequestError, ServerError
from rollgraph.params import GenerationParams
from rollgraph.protocol import GenerateRequest, encode_frame, recv_frame
from rollgraph.request_reads import LentSocket, Taken
from serverproc import FakeEngine, FakeGeneration, ThreadServer

GENERATE = {"type": "generate", "input_tokens": [1, 2], "max_new_tokens": 3}


# ---- the lent socket and the engine thread's selector, without a server ------------------------------------------


class Lending:
    """An EngineThread with nothing to run but what it reads from one lent end of a socket pair."""

    def __init__(self, accept=None, max_frame_bytes: int = 1 << 16, spin_s: float = 0.0) -> None:
        self.ran: list[str] = []
        self.outcomes: list[Taken | None] = []
        self.reported = threading.Event()
        self.server, self.client = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.setblocking(False)
        self.thread = EngineThread(lambda: object(), spin_s=spin_s)
        self.thread.start()
        self.thread.ready.result(10)
        self.lent = LentSocket(self.server, max_frame_bytes, accept or self._accept, self._report)

    def _accept(self, request):
        if not isinstance(request, GenerateRequest):
            return None
        if request.input_tokens and request.input_tokens[0] >= 100:
            raise RequestError("token id out of range", code="invalid_token")
        return lambda: (Job(self.ran, threading.current_thread().name), "extra")

    def _report(self, taken: Taken | None) -> None:
        self.outcomes.append(taken)
        self.reported.set()

    def wait(self) -> Taken | None:
        assert self.reported.wait(5), "no outcome was reported"
        return self.outcomes[0]

    def close(self) -> None:
        self.thread.stop()
        assert self.thread.join(5)
        self.server.close()
        self.client.close()


class Job:
    def __init__(self, ran: list[str], name: str) -> None:
        self.ran, self.name = ran, name

    def run(self, engine) -> None:
        self.ran.append(threading.current_thread().name)

    def cancel(self) -> None:
        pass


@pytest.fixture
def lending():
    made = Lending()
    yield made
    made.close()


def readable(sock: socket.socket) -> bytes:
    return sock.recv(1 << 16, socket.MSG_PEEK)


def test_a_whole_generate_frame_is_taken_off_the_socket_and_run_on_the_engine_thread(lending):
    assert lending.thread.lend(lending.lent)
    frame = encode_frame(GENERATE)
    lending.client.sendall(frame)
    taken = lending.wait()
    assert isinstance(taken, Taken) and taken.extra == "extra" and taken.request.input_tokens == (1, 2)
    assert taken.first_byte_at <= taken.body_at
    deadline = time.monotonic() + 5
    while not lending.ran and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lending.ran == ["rollgraph-engine"]
    with pytest.raises(BlockingIOError):
        lending.server.recv(1)  # consumed whole, nothing more
    assert not lending.lent.reclaim() and lending.outcomes == [taken]  # decided once


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(encode_frame({"type": "health"}), id="health"),
        pytest.param(encode_frame({"type": "stats"}), id="stats"),
        pytest.param(encode_frame({"type": "generate", "input_tokens": [200]}), id="request-error"),
        pytest.param(encode_frame({"type": "generate", "input_tokens": "x"}), id="ill-typed"),
        pytest.param(encode_frame(GENERATE)[:-3], id="partial-frame"),
        pytest.param(encode_frame(GENERATE)[:2], id="partial-header"),
        pytest.param((1 << 20).to_bytes(4, "big") + b"{}", id="oversized"),
        pytest.param(b"\x00\x00\x00\x02{x", id="not-json"),
    ],
)
def test_anything_else_goes_back_to_the_loop_unread(lending, data):
    assert lending.thread.lend(lending.lent)
    lending.client.sendall(data)
    assert lending.wait() is None
    assert readable(lending.server) == data  # every byte left for the loop to read
    assert not lending.ran and not lending.lent.active


def test_the_loops_reclaim_does_not_wait_while_a_taken_request_starts():
    """What a taken request starts (token 0's launch: a whole step in a mode without graphs) runs after the decision,
    outside the lock, so the loop's reclaim answers at once, and a connection closed meanwhile is seen as taken."""
    began, release = threading.Event(), threading.Event()

    def accept(request):
        def begin():
            began.set()
            release.wait(5)  # a slow launch
            return Job([], threading.current_thread().name), "extra"

        return begin

    lending = Lending(accept)
    try:
        assert lending.thread.lend(lending.lent)
        lending.client.sendall(encode_frame(GENERATE))
        assert began.wait(5)
        t0 = time.monotonic()
        assert not lending.lent.reclaim()  # already decided by the engine thread
        assert time.monotonic() - t0 < 0.5 and lending.lent.taken and not lending.outcomes
        release.set()
        assert isinstance(lending.wait(), Taken)
    finally:
        release.set()
        lending.close()


def test_a_start_that_fails_leaves_the_frame_for_the_loop():
    def accept(request):
        def begin():
            raise RuntimeError("a bug while starting")

        return begin

    lending = Lending(accept)
    try:
        assert lending.thread.lend(lending.lent)
        frame = encode_frame(GENERATE)
        lending.client.sendall(frame)
        assert lending.wait() is None and lending.outcomes == [None]
        assert readable(lending.server) == frame and not lending.lent.taken  # the loop reads it and answers it
    finally:
        lending.close()


def test_eof_goes_back_to_the_loop(lending):
    assert lending.thread.lend(lending.lent)
    lending.client.shutdown(socket.SHUT_WR)
    assert lending.wait() is None and readable(lending.server) == b""


def test_reclaim_before_any_byte_reports_back_once_and_the_engine_leaves_the_socket_alone(lending):
    assert lending.thread.lend(lending.lent)
    assert lending.lent.reclaim()
    assert lending.wait() is None
    frame = encode_frame(GENERATE)
    lending.client.sendall(frame)
    time.sleep(0.2)  # the engine thread no longer selects on it
    assert readable(lending.server) == frame and lending.outcomes == [None] and not lending.ran
    assert lending.lent.take() is None and not lending.lent.reclaim()


def test_a_queued_job_still_wakes_the_engine_thread_while_a_socket_is_lent(lending):
    assert lending.thread.lend(lending.lent)
    done = concurrent.futures.Future()

    class Call:
        def run(self, engine) -> None:
            done.set_result(threading.current_thread().name)

        def cancel(self) -> None:
            pass

    lending.thread.submit(Call())
    assert done.result(5) == "rollgraph-engine"
    assert lending.lent.active  # still lent: the job came through the queue


def wait_for(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_a_lend_with_spin_polls_for_its_window_then_sleeps_and_the_switch_interval_comes_back():
    """perf-notes v90: the idle thread polls for spin_s after a lend (the switch interval short meanwhile), then blocks
    (no CPU time, the interval back), and a request that comes while it polls is taken as it would be asleep."""
    default = sys.getswitchinterval()
    made = Lending(spin_s=0.4)
    try:
        assert made.thread.spins == 0
        assert made.thread.lend(made.lent)
        wait_for(lambda: made.thread.spins == 1)
        assert sys.getswitchinterval() == pytest.approx(SPIN_SWITCH_S)  # polling now
        time.sleep(0.6)  # past the window: blocked in its selector again
        assert sys.getswitchinterval() == default and made.thread.spins == 1
        cpu = time.process_time()
        time.sleep(0.3)
        assert time.process_time() - cpu < 0.1  # asleep, not polling
        assert not made.outcomes and made.lent.active  # nothing came; still lent, still watched
        made.client.sendall(encode_frame(GENERATE))
        assert isinstance(made.wait(), Taken)
        wait_for(lambda: made.ran == ["rollgraph-engine"])
        assert made.thread.spins == 1  # taking a request starts no poll; only a lend does
        lent = LentSocket(made.server, 1 << 16, made._accept, made._report)
        made.reported.clear()
        assert made.thread.lend(lent)
        wait_for(lambda: made.thread.spins == 2)
        made.client.sendall(encode_frame(GENERATE))  # within the window: taken by the polling thread
        wait_for(lambda: len(made.outcomes) == 2)
        assert isinstance(made.outcomes[1], Taken) and made.thread.spins == 2
        wait_for(lambda: made.ran == ["rollgraph-engine"] * 2)
    finally:
        made.close()
    assert sys.getswitchinterval() == default


def test_an_engine_thread_that_has_ended_lends_nothing(lending):
    lending.thread.stop()
    assert lending.thread.join(5)
    assert not lending.thread.lend(lending.lent)


# ---- through a server ----------------------------------------------------------------------------------------


def read_by(final: dict) -> str:
    return final["timings"]["request_read_by"]


def test_generate_and_inference_requests_are_read_by_the_idle_engine_thread():
    engine = FakeEngine()
    with ThreadServer(engine) as srv, Client(srv.socket_path) as c:
        finals = []
        for _ in range(5):
            gen = c.generate([1, 2], max_new_tokens=3)
            assert list(gen) == [3, 4, 5]
            finals.append(gen.result)
        # the connection lends its socket as soon as it waits; only its first frame may have come before that
        assert [read_by(f) for f in finals[1:]] == ["engine"] * 4
        assert c.send_request([7]) == [8]
        server = c.stats()["server"]
        assert server["requests_read_by_engine"] >= 5 and server["requests_served"] >= 6
        assert engine.threads == {"rollgraph-engine"}


def test_a_server_with_an_idle_spin_serves_back_to_back_requests_as_without_one():
    default = sys.getswitchinterval()
    engine = FakeEngine()
    with ThreadServer(engine, idle_spin_ms=20) as srv, Client(srv.socket_path) as c:
        finals = []
        for i in range(20):
            gen = c.generate([1, 20 + i], max_new_tokens=3)
            assert list(gen) == [21 + i, 22 + i, 23 + i]
            finals.append(gen.result)
            time.sleep(0.005)  # the next request comes while the engine thread polls (a 20 ms window)
        assert [read_by(f) for f in finals[1:]] == ["engine"] * 19
        assert c.health()["state"] == "ready"
        assert srv.server.engine_thread.spins > 0  # (a request that comes while the thread still wakes needs none)
    assert sys.getswitchinterval() == default


def test_with_request_reads_loop_the_loop_reads_every_frame():
    with ThreadServer(FakeEngine(), request_reads="loop") as srv, Client(srv.socket_path) as c:
        for _ in range(3):
            gen = c.generate([1, 2], max_new_tokens=3)
            assert list(gen) == [3, 4, 5] and read_by(gen.result) == "loop"
        assert c.stats()["server"]["requests_read_by_engine"] == 0


def test_errors_health_and_stats_on_a_lent_connection_are_answered_as_by_the_loop():
    with ThreadServer(FakeEngine()) as srv, Client(srv.socket_path) as c:
        assert list(c.generate([1], max_new_tokens=2)) == [2, 3]
        with pytest.raises(ServerError) as err:
            list(c.generate([150], max_new_tokens=2))
        assert err.value.code == "invalid_token"
        assert c.health()["state"] == "ready"
        with pytest.raises(ServerError) as err:
            list(c.generate(prompt="text", max_new_tokens=2))
        assert err.value.code == "no_tokenizer"
        gen = c.generate([1], max_new_tokens=2)
        assert list(gen) == [2, 3] and read_by(gen.result) == "engine"
        assert c.stats()["server"]["errors"] == {"invalid_token": 1, "no_tokenizer": 1}


def test_a_frame_sent_in_pieces_goes_to_the_loop_and_is_served():
    with ThreadServer(FakeEngine()) as srv:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(srv.socket_path)
        frame = encode_frame(dict(GENERATE, stream=False))
        sock.sendall(frame[:3])
        time.sleep(0.2)
        sock.sendall(frame[3:9])
        time.sleep(0.2)
        sock.sendall(frame[9:])
        final = recv_frame(sock)
        assert final["output_tokens"] == [3, 4, 5] and read_by(final) == "loop"
        sock.sendall(frame)  # the next one, whole, is the engine thread's again
        final = recv_frame(sock)
        assert final["output_tokens"] == [3, 4, 5] and read_by(final) == "engine"
        sock.close()


def test_pipelined_requests_are_answered_in_order():
    with ThreadServer(FakeEngine()) as srv:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(srv.socket_path)
        assert recv_frame(_call(sock, {"type": "health"}))["status"] == "success"
        frames = [dict(GENERATE, input_tokens=[i], stream=False) for i in range(1, 6)]
        sock.sendall(b"".join(encode_frame(f) for f in frames) + encode_frame({"type": "health"}))
        outs = [recv_frame(sock)["output_tokens"] for _ in frames]
        assert outs == [[i + 1, i + 2, i + 3] for i in range(1, 6)]
        assert recv_frame(sock)["state"] == "ready"
        sock.close()


def _call(sock: socket.socket, message: dict) -> socket.socket:
    sock.sendall(encode_frame(message))
    return sock


class SlowEngine(FakeEngine):
    """Each token takes 20 ms, so a generation holds the engine thread for a while."""

    def generate(self, params: GenerationParams) -> FakeGeneration:
        gen = super().generate(params)
        inner = gen._it

        def slow():
            for tok in inner:
                time.sleep(0.02)
                yield tok

        gen._it = slow()
        return gen


def test_another_connection_is_answered_while_a_lent_request_generates():
    with ThreadServer(SlowEngine()) as srv, Client(srv.socket_path) as a, Client(srv.socket_path) as b:
        assert b.health()["state"] == "ready"  # b is connected and waits, its socket lent to the idle engine
        gen = a.generate([1], max_new_tokens=60)  # ~1.2 s on the engine thread
        assert next(gen) == 2
        start = time.monotonic()
        assert b.health()["state"] == "ready"
        assert time.monotonic() - start < 0.5, "health waited for another connection's generation"
        gen_b = b.generate([5], max_new_tokens=2)  # queued behind a's generation, then served
        assert list(gen) == [(1 + i + 1) % 100 for i in range(1, 60)]
        assert list(gen_b) == [6, 7]


def test_clients_that_close_while_lent_leave_the_server_serving_and_it_stops_cleanly():
    srv = ThreadServer(FakeEngine())
    with srv:
        for _ in range(5):
            with Client(srv.socket_path) as c:
                assert list(c.generate([1], max_new_tokens=2)) == [2, 3]
        idle = [Client(srv.socket_path) for _ in range(3)]
        for c in idle:
            assert c.health()["state"] == "ready"  # open and idle at shutdown: lent, then reclaimed by the drain
        with Client(srv.socket_path) as c:
            deadline = time.monotonic() + 5
            while c.stats()["server"]["connections_open"] > 4 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert c.stats()["server"]["connections_open"] == 4
    assert srv.exit_code == 0
    for c in idle:
        c.close()


class SlowFirstToken(FakeEngine):
    """Token 0 takes 0.3 s (a long prefill), the rest none."""

    def generate(self, params: GenerationParams) -> FakeGeneration:
        gen = super().generate(params)
        inner = gen._it

        def slow_first():
            time.sleep(0.3)
            yield from inner

        gen._it = slow_first()
        return gen


def test_a_request_taken_before_shutdown_finishes_like_any_request_in_flight():
    """The loop learns of a request the engine thread took only at its first token; a drain that comes before that
    must not close the connection as idle."""
    srv = ThreadServer(SlowFirstToken(), drain_timeout_s=10.0)
    with srv, Client(srv.socket_path) as c:
        assert c.health()["state"] == "ready"
        time.sleep(0.05)  # the connection lends its socket again
        gen = c.generate([1], max_new_tokens=5, stream=False)
        time.sleep(0.1)  # taken by the engine thread, token 0 not made yet
        assert srv._loop is not None and srv._stop is not None
        srv._loop.call_soon_threadsafe(srv._stop.set)
        assert list(gen) == [2, 3, 4, 5, 6] and gen.result["timings"]["request_read_by"] == "engine"
    assert srv.exit_code == 0


def test_many_clients_mixing_every_request_kind_get_every_answer_right():
    """Lends, takes and reclaims racing across connections: eight clients, each a mix of streamed and whole
    generations, the original message, health, stats and refused requests, all at once."""
    errors: list[BaseException] = []

    def client(k: int, srv: ThreadServer) -> None:
        try:
            with Client(srv.socket_path, timeout=30) as c:
                for i in range(25):
                    last = (k * 7 + i) % 90 or 90
                    last += last == 13  # the stand-in engine fails on 13
                    match i % 6:
                        case 0 | 1:
                            want = [(last + j) % 100 for j in range(1, 5)]
                            assert list(c.generate([1, last], max_new_tokens=4)) == want
                        case 2:
                            gen = c.generate([last], max_new_tokens=3, stream=False)
                            assert list(gen) == [(last + j) % 100 for j in range(1, 4)]
                        case 3:
                            assert c.send_request([last]) == [(last + 1) % 100]
                        case 4:
                            assert c.health()["state"] == "ready" and c.stats()["server"]["connections_open"] >= 1
                        case 5:
                            with pytest.raises(ServerError) as err:
                                list(c.generate([100 + k], max_new_tokens=2))
                            assert err.value.code == "invalid_token"
        except BaseException as exc:  # handed to the main thread
            errors.append(exc)

    with ThreadServer(FakeEngine()) as srv:
        threads = [threading.Thread(target=client, args=(k, srv)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[0]
        with Client(srv.socket_path) as c:
            server = c.stats()["server"]
        assert server["errors"] == {"invalid_token": 8 * 4}
        assert server["served_by_type"]["generate"] == 8 * 13 and server["served_by_type"]["inference"] == 8 * 4
        assert server["requests_read_by_engine"] > 0


def test_a_long_request_frame_is_read_whole_by_whichever_thread_takes_it():
    """A frame of tens of kilobytes arrives in several pieces of the socket's buffer: the engine thread's peek and
    single read take it whole, or the loop reads it; the answer is the same."""
    with ThreadServer(FakeEngine()) as srv, Client(srv.socket_path) as c:
        for n in (3_000, 20_000):
            ids = [(i * 7) % 90 + 1 for i in range(n)]
            ids = [14 if t == 13 else t for t in ids]  # the stand-in engine fails on 13
            gen = c.generate(ids, max_new_tokens=3, stream=False)
            assert list(gen) == [(ids[-1] + j) % 100 for j in range(1, 4)]
            assert gen.result["usage"]["prompt_tokens"] == n


# ---- a real engine: token 0 launched right after the parse (perf-notes v77) ---------------------------------------


def tiny_engine():
    from rollgraph.config import EngineConfig, ModelConfig
    from rollgraph.engine import Engine
    from rollgraph.models import load_model

    return Engine(load_model(ModelConfig("llama-tiny")), EngineConfig(mode="eager", max_seq_len=256))


def test_a_request_the_engine_read_is_launched_before_its_job_is_built_and_timed_from_there(monkeypatch):
    from rollgraph import host_marks

    monkeypatch.setattr(host_marks, "ENABLED", True)
    engine = tiny_engine()
    ref = list(tiny_engine().generate(GenerationParams((5, 6, 7), 6)))
    with ThreadServer(engine) as srv, Client(srv.socket_path) as c:
        list(c.generate([1, 2], max_new_tokens=2))  # the first frame may come before the socket is lent
        gen = c.generate([5, 6, 7], max_new_tokens=6)
        assert list(gen) == ref
    t = gen.result["timings"]
    assert t["request_read_by"] == "engine" and t["queue_ms"] == 0.0
    marks = t["host_marks_ms"]
    order = ["woke", "peeked", "decoded", "parsed", "launch", "prefill", "prompt", "pushed", "accepted", "consumed"]
    assert [marks[name] for name in order] == sorted(marks[name] for name in order)  # launched, then the job built
    assert marks["run"] <= marks["token0"]
    assert t["ttft_ms"] == t["prefill_ms"]  # the server's TTFT starts where the launch began: no queue to add


def test_host_marks_are_off_by_default():
    with ThreadServer(tiny_engine()) as srv, Client(srv.socket_path) as c:
        for _ in range(2):
            gen = c.generate([1, 2, 3], max_new_tokens=2)
            list(gen)
            assert "host_marks_ms" not in gen.result["timings"]
