"""A request's first step launched by the submitting thread while the engine thread waits (engine_thread.py,
perf-notes v42): the same tokens, the engine never shared, and the jobs' order kept."""

from __future__ import annotations

import random
import threading
import time
from types import SimpleNamespace

import pytest

from rollgraph.client import Client
from rollgraph.config import EngineConfig, ModelConfig
from rollgraph.engine import Engine
from rollgraph.errors import RollgraphError
from rollgraph.generation import GenerationResult
from rollgraph.models import load_model
from rollgraph.params import GenerationParams
from rollgraph.server import server_config
from serverproc import StandIn, ThreadServer


def make_engine() -> Engine:
    return Engine(load_model(ModelConfig("llama-tiny")), EngineConfig(max_seq_len=256))


def test_start_launches_token_0_before_it_returns_and_generate_stays_lazy():
    engine = make_engine()
    lazy = engine.generate(GenerationParams((1, 2, 3), 4))
    assert engine.counters["prefill"] == 0 and lazy.result.launch_ms is None  # nothing ran yet
    lazy.close()
    begun = engine.start(GenerationParams((1, 2, 3), 4))
    assert engine.counters["prefill"] == 1 and begun.result.launch_ms >= 0
    assert list(begun) == list(make_engine().generate(GenerationParams((1, 2, 3), 4)))
    assert not engine.starts_with_a_replay(GenerationParams((1, 2, 3), 4))  # no graphs on the CPU


def session(client: Client) -> list[list[int]]:
    """Streams, the original client's resend loop (speculated steps and extensions) and a sampled stream."""
    out = [list(client.generate([5, 6, 7], max_new_tokens=9))]
    seq = [5, 6, 7]
    for _ in range(4):
        seq += client.send_request(seq)
    out.append(seq)
    out.append(list(client.generate([*seq, 3], max_new_tokens=5)))  # extends the held row by one token
    out.append(list(client.generate([9] * 40, max_new_tokens=6, temperature=0.8, top_k=20, seed=7)))
    return out


def test_a_first_step_on_the_loop_thread_changes_no_token():
    results, stats, final = {}, {}, {}
    for first_step in ("engine", "any"):
        with ThreadServer(make_engine(), first_step=first_step) as srv, Client(srv.socket_path) as c:
            results[first_step] = session(c)
            gen = c.generate([1, 2], max_new_tokens=3)
            gen.wait()
            final[first_step] = gen.result["timings"]
            stats[first_step] = c.stats()["server"]
    assert results["any"] == results["engine"]
    assert stats["engine"]["started_on_submit"] == 0
    # One client, so the engine is idle at each request, unless it is still finishing the one before (a one-token
    # reply goes out before the engine thread speculates the next step).
    assert stats["any"]["requests_served"] // 2 < stats["any"]["started_on_submit"] <= stats["any"]["requests_served"]
    assert final["any"]["launch_ms"] >= 0 and final["engine"]["launch_ms"] >= 0


class ExclusiveEngine(StandIn):
    """A stand-in that fails the test if two generations ever hold it at once, and records the order in which
    generations began; each step takes a little while, so jobs queue up behind one another."""

    def __init__(self) -> None:
        self.model = SimpleNamespace(name="exclusive", tokenizer=None)
        self.config = SimpleNamespace(mode="eager")
        self.threads: set[str] = set()
        self.holder: int | None = None
        self.clashes: list[tuple[int, int]] = []
        self.began: list[int] = []

    def validate(self, params: GenerationParams) -> None:
        pass

    def generate(self, params: GenerationParams):
        return ExclusiveGeneration(self, params)

    def stats(self) -> dict:
        return {}

    def idle_work(self) -> bool:
        return False


class ExclusiveGeneration:
    def __init__(self, engine: ExclusiveEngine, params: GenerationParams) -> None:
        self.result = GenerationResult(prompt_tokens=len(params.input_ids))
        self.engine, self.params = engine, params
        self._it = self._run()
        me = params.input_ids[0]
        if engine.holder is not None:
            engine.clashes.append((engine.holder, me))
        engine.holder = me
        engine.began.append(me)

    def _run(self):
        try:
            for i in range(self.params.max_new_tokens):
                time.sleep(0.001)
                self.result.output_tokens.append(self.params.input_ids[0] + i)
                yield self.result.output_tokens[-1]
            self.result.finish_reason = "length"
        finally:
            self.engine.holder = None

    def __iter__(self):
        return self._it

    def close(self) -> None:
        self._it.close()
        self.engine.holder = None
        self.result.finish_reason = self.result.finish_reason or "cancelled"


def test_starts_on_submit_never_share_the_engine_and_keep_the_order():
    engine = ExclusiveEngine()
    errors: list[BaseException] = []

    def client(k: int, srv: ThreadServer) -> None:
        pauses = random.Random(k)
        try:
            with Client(srv.socket_path) as c:
                for j in range(12):
                    time.sleep(pauses.uniform(0, 0.02))  # so the engine is at times idle, at times busy
                    first = 1000 * k + j
                    assert list(c.generate([first], max_new_tokens=3)) == [first, first + 1, first + 2]
        except BaseException as exc:
            errors.append(exc)

    with ThreadServer(engine, first_step="any") as srv:
        threads = [threading.Thread(target=client, args=(k, srv)) for k in range(1, 4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        with Client(srv.socket_path) as c:
            started = c.stats()["server"]["started_on_submit"]
    assert not errors and not engine.clashes
    assert len(engine.began) == 36 and 0 < started < 36  # some started on submit, some queued behind others
    for k in range(1, 4):  # each client's requests began in the order it sent them
        mine = [b for b in engine.began if b // 1000 == k]
        assert mine == sorted(mine)


def test_first_step_must_be_a_known_value():
    args = SimpleNamespace(
        socket="/tmp/x.sock", max_frame_bytes=1 << 20, max_connections=4, frame_timeout=1.0, allow_uid=[]
    )
    args.first_step = "loop"
    with pytest.raises(RollgraphError, match='--first-step must be one of "replay", "engine", "any"'):
        server_config(args)
    args.first_step = "any"
    assert server_config(args).first_step == "any"


@pytest.mark.gpu
def test_first_steps_replayed_by_the_loop_thread_on_the_gpu_change_no_token():
    """The default `replay`: with graphs, each request that finds the engine idle has its first step (a prefill, a
    one-token extension, or the speculated token) launched by the loop's thread; tokens as with `engine`."""
    import gc

    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    results, started = {}, {}
    for first_step in ("engine", "replay"):
        config = EngineConfig(mode="graphs", max_seq_len=256, prefill_buckets=(16, 32, 64), kv_bucket=128)
        engine = Engine(load_model(ModelConfig("llama-tiny", dtype="bfloat16")), config)
        engine.warm_up(progress=False)
        with ThreadServer(engine, first_step=first_step) as srv, Client(srv.socket_path) as c:
            results[first_step] = session(c)
            started[first_step] = c.stats()["server"]["started_on_submit"]
        engine.pool.clear()
        del engine
        gc.collect()
        torch.cuda.empty_cache()
    assert results["replay"] == results["engine"]
    assert started["engine"] == 0 and started["replay"] >= 6, started
