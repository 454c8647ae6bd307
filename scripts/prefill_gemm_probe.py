"""Prefill-sized matmuls on the GPU: how the work of llama-2-7b's projections grows with the prompt's row count.

perf-notes v6 found that cuBLAS does the work of 504-512 rows for a 400-token prefill (its tiles are 128 or 168 rows
high), so a 400-token prompt costs what the 512 bucket costs. This probe asks whether any other way of running the
same product does better at 400 rows:
- cuBLAS (`F.linear`) at row counts from 384 to 512, to see where its time steps;
- the swapped product `W @ x.T` (tokens on cuBLAS's other tile dimension; the result is transposed);
- the same product through cuBLASLt (`torch.backends.cuda.preferred_blas_library("cublaslt")`), whose heuristic
  may pick other kernels at these row counts;
- the product added in place into a residual (`r.addmm_(x, w.T)`, beta = 1), as prefill runs the output and down
  projections since perf-notes v55;
- optionally (`--autotune`) inductor's max-autotune choice at 400 rows, Triton templates against cuBLAS.
Reports microseconds and TFLOP/s counted on the rows asked for (so padding shows as a lower rate).

Usage: PYTHONPATH=src python scripts/prefill_gemm_probe.py --out FILE [--rows 160,192,256] [--autotune]
       [--model llama-3.2-1b]   (that model's shapes instead of llama-2-7b's)
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from skinny_bench import time_us, write_rows

SHAPES = {  # (N, K) of the fused qkv, o, gate_up and down projections
    "llama-2-7b": [(12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008)],
    "llama-3.2-1b": [(3072, 2048), (2048, 2048), (16384, 2048), (2048, 8192)],
}
ROWS = (384, 400, 416, 432, 448, 464, 480, 496, 512)
REPEATS = 20


def timed(fn, x: torch.Tensor, w: torch.Tensor) -> float:
    """Microseconds per call of fn(x, w), from skinny_bench's timer: a CUDA graph of 20 calls, median of 3 replays.
    The same weight serves every call: these products are compute-bound, so L2 hits do not flatter them."""
    return time_us(fn, [x] * REPEATS, [w] * REPEATS)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rows", default=",".join(map(str, ROWS)), help="row counts to time (comma-separated)")
    p.add_argument("--autotune", action="store_true", help="also inductor max-autotune at 400 rows")
    p.add_argument("--model", default="llama-2-7b", choices=sorted(SHAPES), help="whose projection shapes")
    a = p.parse_args()
    dev, dt = torch.device("cuda"), torch.bfloat16
    rows_out = []
    for n, k in SHAPES[a.model]:
        w = torch.randn(n, k, device=dev, dtype=dt) * 0.02
        for m in [int(r) for r in a.rows.split(",")]:
            x = torch.randn(m, k, device=dev, dtype=dt)
            row = {"model": a.model, "n": n, "k": k, "m": m}
            row["cublas_us"] = timed(F.linear, x, w)
            row["swapped_us"] = timed(lambda x, w: torch.mm(w, x.t()), x, w)
            r = torch.randn(m, n, device=dev, dtype=dt)
            row["addmm_inplace_us"] = timed(lambda x, w, r=r: r.addmm_(x, w.t()), x, w)
            default = torch.backends.cuda.preferred_blas_library()
            torch.backends.cuda.preferred_blas_library("cublaslt")
            try:
                row["cublaslt_us"] = timed(F.linear, x, w)
                row["cublaslt_addmm_inplace_us"] = timed(lambda x, w, r=r: r.addmm_(x, w.t()), x, w)
                torch.testing.assert_close(F.linear(x, w), F.linear(x.float(), w.float()).to(dt), rtol=2e-2, atol=2e-2)
            finally:
                torch.backends.cuda.preferred_blas_library(default)
            for key in ("cublas", "swapped", "addmm_inplace", "cublaslt", "cublaslt_addmm_inplace"):
                row[f"{key}_tflops"] = round(2 * m * n * k / row[f"{key}_us"] / 1e6, 1)
            rows_out.append(row)
            print(json.dumps(row), flush=True)
        if a.autotune:
            import torch._inductor.config as ic

            ic.max_autotune_gemm = True
            torch._dynamo.reset()
            x = torch.randn(400, k, device=dev, dtype=dt)
            fn = torch.compile(lambda x, w: F.linear(x, w), dynamic=False, mode="max-autotune-no-cudagraphs")
            t0 = time.perf_counter()
            fn(x, w)
            row = {"n": n, "k": k, "m": 400, "autotune_compile_s": round(time.perf_counter() - t0, 1)}
            row["autotune_us"] = timed(fn, x, w)
            row["autotune_tflops"] = round(2 * 400 * n * k / row["autotune_us"] / 1e6, 1)
            torch.testing.assert_close(fn(x, w), F.linear(x, w), rtol=2e-2, atol=2e-2)
            rows_out.append(row)
            print(json.dumps(row), flush=True)
    write_rows(a.out, rows_out)


if __name__ == "__main__":
    main()
