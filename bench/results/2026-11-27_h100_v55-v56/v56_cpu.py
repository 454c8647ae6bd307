"""v56 on this CPU: a one-token request's completion (the generator exhausted, when the final frame goes) and the
next resend's, old tree against new, qwen2-0.5b eager float32."""
import json, sys, time, statistics
from rollgraph.config import EngineConfig, ModelConfig
from rollgraph.engine import Engine
from rollgraph.models import load_model
from rollgraph.params import GenerationParams
import torch
torch.set_num_threads(2)
eng = Engine(load_model(ModelConfig("qwen2-0.5b")), EngineConfig(mode="eager", max_seq_len=256))
seq = list(range(100, 120))
done, first = [], []
for i in range(12):
    t0 = time.perf_counter()
    gen = eng.generate(GenerationParams(tuple(seq), 1))
    it = iter(gen)
    tok = next(it)
    t1 = time.perf_counter()
    for _ in it:
        pass
    t2 = time.perf_counter()
    if i >= 2:
        first.append((t1 - t0) * 1e3); done.append((t2 - t0) * 1e3)
    seq.append(tok)
print(json.dumps({"tree": sys.argv[1], "token_ms": round(statistics.median(first), 1),
                  "final_ms": round(statistics.median(done), 1), "counters": dict(eng.counters)}))
