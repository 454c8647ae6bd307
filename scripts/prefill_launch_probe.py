"""Where a short prompt's time to first token goes on the host: the prefill graph's launch, the GPU, the read-back.

perf-notes v19: at 10 tokens the server's TTFT is ~0.6 ms longer than the prefill's device time. This probe times,
for each prefill bucket asked for, the pieces of that path in one process:
- `launch_us`: host time inside `graph.replay()` (cudaGraphLaunch of a graph of ~20 kernels per layer);
- `gpu_us`: CUDA-event time from just before the replay to just after it, on the stream;
- `wall_us`: host time from before the replay until the sampled token is on the host (event sync + the copy);
- `engine_ms`: the engine's own prefill_ms for a two-token request of that length (prompt upload included; a
  one-token request would leave a speculated decode step queued in front of the next request's prefill).
`wall_us - gpu_us` is what the host adds to a replayed prefill outside the engine's bookkeeping. Two more split it:
- `gpu_busy_us`: the same event time with the replay queued behind ~2 ms of `torch.cuda._sleep`, so the launch is
  over before the graph's turn comes: the graph's own time. `gpu_us - gpu_busy_us` is the launch the GPU waited for.
- `readback_us`: pushing and popping a token with nothing else pending (the copy, the event and its sync, `int()`).

`--gap-ms` idles the host that long before each timed replay (the bench's requests come ~1-2 ms apart; v25, v77).

Usage: PYTHONPATH=src python scripts/prefill_launch_probe.py --model llama-2-7b --mode graphs --out FILE
       [--lengths 10,100,400] [--gap-ms 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from pool_figures import engine_config

from rollgraph.config import ModelConfig
from rollgraph.engine import Engine
from rollgraph.graphs import GraphKey
from rollgraph.models import load_model
from rollgraph.params import GenerationParams

REPEATS = 30
SLEEP_CYCLES = 4_000_000  # ~2 ms at an H100's 1.98 GHz: longer than any launch call measured (v19: <= 0.32 ms)


def probe(engine: Engine, n: int, gap_s: float) -> dict:
    bucket = next(b for b in engine.config.prefill_buckets if n <= b)
    ids = tuple(range(3, 3 + n))
    engine_ms = []
    for _ in range(REPEATS):
        gen = engine.generate(GenerationParams(ids, 2))
        list(gen)
        engine_ms.append(gen.result.prefill_ms)
    entry = engine.pool.get(GraphKey("prefill", 1, bucket, False))
    launch, gpu, wall, busy, readback = [], [], [], [], []
    for _ in range(REPEATS):
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if gap_s:
            time.sleep(gap_s)
        t0 = time.perf_counter()
        a.record()
        entry.graph.replay()
        t1 = time.perf_counter()
        b.record()
        tok = engine.host.pop(engine.host.push(engine.buffers.tokens[:1]))
        t2 = time.perf_counter()
        launch.append((t1 - t0) * 1e6)
        wall.append((t2 - t0) * 1e6)
        gpu.append(a.elapsed_time(b) * 1e3)
        assert 0 <= tok < engine.vocab_size
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(SLEEP_CYCLES)
        a.record()
        entry.graph.replay()
        b.record()
        b.synchronize()
        busy.append(a.elapsed_time(b) * 1e3)
        t0 = time.perf_counter()
        engine.host.pop(engine.host.push(engine.buffers.tokens[:1]))
        readback.append((time.perf_counter() - t0) * 1e6)
    med = statistics.median
    return {
        "prompt": n,
        "bucket": bucket,
        "gap_ms": gap_s * 1e3,
        "launch_us": round(med(launch), 1),
        "gpu_us": round(med(gpu), 1),
        "wall_us": round(med(wall), 1),
        "host_extra_us": round(med(w - g for w, g in zip(wall, gpu, strict=True)), 1),
        "gpu_busy_us": round(med(busy), 1),
        "readback_us": round(med(readback), 1),
        "engine_ms": round(med(engine_ms), 3),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="llama-2-7b")
    p.add_argument("--mode", default="graphs")
    p.add_argument("--lengths", default="10,100,400")
    p.add_argument("--out", required=True)
    p.add_argument("--gap-ms", default="0", help="idle before each timed replay; a list runs each (e.g. 0,2)")
    a = p.parse_args()
    engine = Engine(load_model(ModelConfig(a.model, dtype="bfloat16")), engine_config(a.mode))
    engine.warm_up(progress=False)
    rows = [probe(engine, int(n), float(g) / 1e3) for g in a.gap_ms.split(",") for n in a.lengths.split(",")]
    for r in rows:
        print(json.dumps(r), flush=True)
    with open(a.out, "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(), "model": a.model, "mode": a.mode, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
