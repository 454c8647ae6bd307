"""Do Triton builds run in parallel from Python threads? (perf-notes v27)

Graph capture on a fresh machine builds ~10 Triton kernels one after another (capture_time.py counts them). If
Triton's compiler lets go of the GIL for most of a build (its MLIR/LLVM passes in C++, ptxas as a subprocess),
building the kernels a capture will need from a few threads first would cut the capture time. This probe builds
`--n` distinct variants of skinny_linear's kernel (different tile constants, so each is a real build) one after
another, then `--n` other variants from `--threads` threads, on an empty Triton cache, and prints both wall times.

Usage on the GPU: PYTHONPATH=src python scripts/triton_build_probe.py [--n 8] [--threads 8] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="rg-build-probe-")  # before Triton reads it

import torch

from rollgraph import skinny_linear as sk


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--out")
    a = p.parse_args()
    dev = torch.device("cuda")
    x = torch.randn(16, 1024, device=dev, dtype=torch.bfloat16)
    w = torch.randn(1024, 1024, device=dev, dtype=torch.bfloat16)
    sk.launch(x, w, None, (64, 128, 4, 2))  # Triton's and the driver's one-time set-up, outside both timings
    torch.cuda.synchronize()
    configs = [(bn, bk, warps, st) for st in (1, 2, 3, 4) for bn in (16, 32) for bk in (64, 256) for warps in (4, 8)]
    serial, threaded = configs[: a.n], configs[a.n : 2 * a.n]
    t0 = time.perf_counter()
    for cfg in serial:
        sk.launch(x, w, None, cfg)
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    with ThreadPoolExecutor(a.threads) as pool:
        list(pool.map(lambda cfg: sk.launch(x, w, None, cfg), threaded))
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    result = {
        "builds": a.n,
        "serial_s": round(t1 - t0, 3),
        "threads": a.threads,
        "threaded_s": round(t2 - t1, 3),
        "cache_entries": len(os.listdir(os.environ["TRITON_CACHE_DIR"])),
    }
    print(json.dumps(result))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
