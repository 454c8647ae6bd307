"""Inductor's max-autotune GEMM templates against cuBLAS on llama-2-7b's four prefill products at one row count, in
the form prefill runs them: the QKV and gate/up projections plain, the output and down projections added into the
residual (perf-notes v55). perf-notes v60 found the two residual products at 530-555 TFLOP/s at 400 rows, against
~736 for the other two; v16 tried max-autotune before, with its default templates only. Here each product is
compiled with max-autotune three ways: the default search space, with Triton's persistent TMA templates added, and
the exhaustive search space with them. Inductor prints its own autotune tables (which kernels it timed, and how fast)
to stderr. Times come from skinny_bench's timer (a CUDA graph of 20 calls, median of 3 replays).

Usage: PYTHONPATH=src:scripts python3 scripts/autotune_gemm_probe.py --out FILE [--rows 400] [--shapes 1,3]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch._inductor.config as ic
from skinny_bench import time_us, write_rows

from rollgraph.blas_choice import using

SHAPES = [(12288, 4096, False), (4096, 4096, True), (22016, 4096, False), (4096, 11008, True)]  # N, K, residual
VARIANTS = {
    "default": {},
    "tma": {"triton.enable_persistent_tma_matmul": True},
    "exhaustive_tma": {"triton.enable_persistent_tma_matmul": True, "max_autotune_gemm_search_space": "EXHAUSTIVE"},
}
REPEATS = 20


def product(residual: bool):
    if residual:
        return lambda x, w, r: torch.addmm(r, x, w.t())
    return lambda x, w, r: torch.mm(x, w.t())


def timed(fn, x, w, r) -> float:
    return time_us(lambda x, w: fn(x, w, r), [x] * REPEATS, [w] * REPEATS)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rows", type=int, default=400)
    p.add_argument("--shapes", default="0,1,2,3", help="indices into SHAPES")
    p.add_argument("--variants", default=",".join(VARIANTS))
    a = p.parse_args()
    dev, dt, m = torch.device("cuda"), torch.bfloat16, a.rows
    rows_out = []
    for i in [int(s) for s in a.shapes.split(",")]:
        n, k, residual = SHAPES[i]
        w = torch.randn(n, k, device=dev, dtype=dt) * 0.02
        x = torch.randn(m, k, device=dev, dtype=dt)
        r = torch.randn(m, n, device=dev, dtype=dt)
        want = product(residual)(x.float(), w.float(), r.float()).to(dt)
        row = {"n": n, "k": k, "m": m, "residual": residual}
        row["cublas_us"] = timed(product(residual), x, w, r)
        if residual:  # as prefill runs it outside compiled code: in place, no copy of r first
            row["cublas_inplace_us"] = timed(lambda x, w, r: r.addmm_(x, w.t()), x, w, r.clone())
            with using("cublaslt"):
                row["cublaslt_inplace_us"] = timed(lambda x, w, r: r.addmm_(x, w.t()), x, w, r.clone())
        for name in a.variants.split(","):
            torch._dynamo.reset()
            with ic.patch({"max_autotune_gemm": True, "max_autotune_gemm_backends": "ATEN,TRITON", **VARIANTS[name]}):
                fn = torch.compile(product(residual), dynamic=False, mode="max-autotune-no-cudagraphs")
                t0 = time.perf_counter()
                try:
                    got = fn(x, w, r)
                except Exception as exc:  # a variant this torch or GPU cannot build
                    row[f"{name}_error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
                    continue
                row[f"{name}_compile_s"] = round(time.perf_counter() - t0, 1)
                torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
                row[f"{name}_us"] = timed(fn, x, w, r)
            print(json.dumps(row), flush=True)  # after each variant: a slow one cut off by a time limit loses no other
        for key in [k for k in row if k.endswith("_us")]:
            row[key.replace("_us", "_tflops")] = round(2 * m * n * k / row[key] / 1e6, 1)
        rows_out.append(row)
        print(json.dumps(row), flush=True)
    write_rows(a.out, rows_out)


if __name__ == "__main__":
    main()
