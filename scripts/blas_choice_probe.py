"""What blas_choice.choose times and takes for llama-2-7b's (or 1B's) residual products at the prefill buckets from
ALGORITHM_ROWS rows: every finalist's median µs (the two libraries, the heuristic's algorithms and the fitted tiles,
perf-notes v82), the choice, its configuration, and the seconds the timing took per shape.

Usage: PYTHONPATH=src:scripts python3 scripts/blas_choice_probe.py --out FILE [--rows 256,320,384,400,432,512]
       [--model llama-2-7b]
"""

from __future__ import annotations

import argparse
import time

import torch
from skinny_bench import write_rows

from rollgraph import blas_choice

SHAPES = {"llama-2-7b": ((4096, 4096), (4096, 11008)), "llama-3.2-1b": ((2048, 2048), (2048, 8192))}
"""The output and down projections' weights (n, k)."""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rows", default="256,320,384,400,432,512")
    p.add_argument("--model", default="llama-2-7b", choices=sorted(SHAPES))
    a = p.parse_args()
    weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for n, k in SHAPES[a.model]]
    rows = []
    for m in (int(s) for s in a.rows.split(",")):
        for w in weights:
            start = time.perf_counter()
            timings = blas_choice.choose([m], [w])
            shape = (m, *w.shape)
            row = {
                "rows": m,
                "n": w.shape[0],
                "k": w.shape[1],
                "seconds": round(time.perf_counter() - start, 2),
                "choice": blas_choice.choices()[shape],
                "config": blas_choice.describe(shape),
                "us": dict(sorted(timings[shape].items(), key=lambda kv: kv[1])),
            }
            print(row, flush=True)
            rows.append(row)
            write_rows(a.out, rows)


if __name__ == "__main__":
    main()
