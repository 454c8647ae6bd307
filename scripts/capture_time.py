"""How long a fresh process takes to build and capture the default graph set, and how many Triton kernels it built.

Usage: PYTHONPATH=src python scripts/capture_time.py --model llama-2-7b --mode graphs [--out F.json]
Triton's and inductor's caches are pointed at empty folders first (unless --keep-cache), so every kernel this start
needs is built, as on a fresh machine; each build leaves one entry in Triton's, which `triton_builds` counts. Prints
one JSON object: load, engine set-up (includes the kernels' load-time probes), warm-up (pre-capture, or compile in the
compile modes) in seconds, graphs and bytes held, and the builds during set-up and during warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def builds(folder: str) -> int:
    return len(os.listdir(folder)) if os.path.isdir(folder) else 0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="llama-tiny")
    p.add_argument("--mode", default="graphs")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--keep-cache", action="store_true", help="use Triton's usual cache instead of an empty one")
    p.add_argument(
        "--cache",
        help="use this folder for Triton's and inductor's caches (made if missing; a second run "
        "with the same folder shows a start whose kernels are already built)",
    )
    p.add_argument("--build-threads", type=int, help="engine.BUILD_THREADS for this start (1: builds one by one)")
    p.add_argument("--out")
    a = p.parse_args()
    cache = os.environ.get("TRITON_CACHE_DIR", "")
    if a.cache:
        cache = os.environ["TRITON_CACHE_DIR"] = os.path.join(a.cache, "triton")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(a.cache, "inductor")
    elif not a.keep_cache:  # inductor's own cache too, so a compile mode compiles as on a fresh machine
        cache = os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="rg-triton-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="rg-inductor-")
    builds_before = builds(cache)

    import torch

    from rollgraph import engine as engine_module
    from rollgraph.config import EngineConfig, ModelConfig  # after TRITON_CACHE_DIR is set: Triton reads it once
    from rollgraph.engine import Engine
    from rollgraph.models import load_model

    if a.build_threads is not None:
        engine_module.BUILD_THREADS = a.build_threads
    t0 = time.perf_counter()
    model = load_model(ModelConfig(a.model, dtype=a.dtype))
    t1 = time.perf_counter()
    engine = Engine(model, EngineConfig(mode=a.mode))
    t2 = time.perf_counter()
    at_setup = builds(cache)
    engine.warm_up(progress=False)
    t3 = time.perf_counter()
    report = engine.pool.report()
    result = {
        "model": a.model,
        "mode": a.mode,
        "device": engine.stats()["device"],
        "fresh_triton_cache": builds_before == 0 and not a.keep_cache,
        "load_s": round(t1 - t0, 2),
        "engine_setup_s": round(t2 - t1, 2),
        "warm_up_s": round(t3 - t2, 2),
        "build_threads": engine_module.BUILD_THREADS,
        "graphs": report["graphs"],
        "graph_bytes": report["bytes"],
        "reserved_after_bytes": torch.cuda.memory_reserved(),
        "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
        "triton_builds_setup": at_setup - builds_before,
        "triton_builds_warm_up": builds(cache) - at_setup,
        "capture_s": {str(e.key): round(e.capture_s, 3) for e in engine.pool._entries.values()},
    }
    line = json.dumps(result)
    if a.out:
        with open(a.out, "w") as f:
            f.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
