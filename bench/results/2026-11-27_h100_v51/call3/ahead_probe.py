"""v51 probe: eager and compile 7B in-process, three launch orders alternated, 64 new tokens.

none: step i+1 launched after token i is out (v51); always: before token i is read (v1); later: before token i for
i >= 1 only (token 0 read first). Records the host's per-step times and how long each pop waited for the GPU.
"""

import json
import statistics
import sys
import time

import torch

from rollgraph.config import EngineConfig, ModelConfig
from rollgraph.engine import Engine
from rollgraph.models import load_model
from rollgraph.params import GenerationParams


def run(engine, policy, prompt_len, r):
    calls = {"n": 0}

    def replays(key):
        calls["n"] += 1
        return policy == "always" or (policy == "later" and calls["n"] > 1)

    engine._replays = replays
    waits = []
    orig = engine.host.pop

    def timed_pop(handle):
        t = time.perf_counter()
        v = orig(handle)
        waits.append((time.perf_counter() - t) * 1e3)
        return v

    engine.host.pop = timed_pop
    ids = [(7 * i + r) % 30000 + 3 for i in range(prompt_len)]
    gen = engine.generate(GenerationParams(tuple(ids), 64))
    for _ in gen:
        pass
    del engine.host.pop
    steps = sorted(gen.result.step_ms)
    return {
        "ttft": gen.result.prefill_ms,
        "itl_med": statistics.median(steps),
        "itl_p10": steps[len(steps) // 10],
        "first_itl": gen.result.step_ms[0],
        "pop_wait_med": statistics.median(waits[1:]),
        "pop_wait_max": max(waits[1:]),
    }


out = {}
for mode in sys.argv[1].split(","):
    engine = Engine(load_model(ModelConfig("llama-2-7b", dtype="bfloat16")), EngineConfig(mode=mode))
    engine.warm_up(progress=False)
    for plen in (10, 400):
        for r in range(2):  # warm-ups
            run(engine, "none", plen, r)
            run(engine, "always", plen, r)
        rows = {p: [] for p in ("none", "always", "later")}
        for r in range(4):
            for p in rows:
                rows[p].append(run(engine, p, plen, r))
        for p, rs in rows.items():
            summary = {k: round(statistics.median(x[k] for x in rs), 3) for k in rs[0]}
            out[f"{mode}/{plen}/{p}"] = summary
            print(json.dumps({"key": f"{mode}/{plen}/{p}", **summary}), flush=True)
    del engine
    torch.cuda.empty_cache()
with open(sys.argv[2], "w") as f:
    json.dump(out, f, indent=1)
