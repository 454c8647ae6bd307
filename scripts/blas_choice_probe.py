"""What blas_choice.choose times and takes for llama-2-7b's (or 1B's) prefill products at the prefill buckets from
ALGORITHM_ROWS rows, the residual ones (output, down) and the plain ones (QKV, gate/up, perf-notes v85): every
finalist's median µs (the two libraries, the heuristic's algorithms and the fitted tiles, perf-notes v82), the
choice, its configuration, and the seconds the timing took per shape.

Usage: PYTHONPATH=src:scripts python3 scripts/blas_choice_probe.py --out FILE [--rows 256,320,384,400,432,512]
       [--model llama-2-7b] [--products residual,plain]
"""

from __future__ import annotations

import argparse
import time

import torch
from skinny_bench import write_rows

from rollgraph import blas_choice

SHAPES = {
    "llama-2-7b": {"residual": ((4096, 4096), (4096, 11008)), "plain": ((12288, 4096), (22016, 4096))},
    "llama-3.2-1b": {"residual": ((2048, 2048), (2048, 8192)), "plain": ((3072, 2048), (16384, 2048))},
}
"""The weights (n, k): output and down projections (residual), QKV and gate/up (plain)."""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rows", default="256,320,384,400,432,512")
    p.add_argument("--model", default="llama-2-7b", choices=sorted(SHAPES))
    p.add_argument("--products", default="residual,plain", help="which products to time (comma-separated)")
    a = p.parse_args()
    weights = [
        (kind, torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02)
        for kind in a.products.split(",")
        for n, k in SHAPES[a.model][kind]
    ]
    rows = []
    for m in (int(s) for s in a.rows.split(",")):
        for kind, w in weights:
            start = time.perf_counter()
            timings = blas_choice.choose([m], [w], accumulate=kind == "residual")
            shape = (m, *w.shape) if kind == "residual" else (m, *w.shape, "plain")
            row = {
                "product": kind,
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
