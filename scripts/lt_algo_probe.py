"""cuBLASLt's ranked algorithms against what prefill runs now, on the products that add into the residual
(perf-notes v65). For each (rows, N, K) of llama-2-7b's output and down projections, r += x @ w.T in place is timed
through cuBLAS's own heuristic, torch's cuBLASLt path (the heuristic's first algorithm) and each algorithm of
cuBLASLt's heuristic list (lt_matmul), after a read of other memory and by median (tune_timing), in three rounds
whose order alternates. Each algorithm's result is checked against a float32 product, and the fastest few are
captured into a CUDA graph and timed there too (20 calls with 20 different weights, so no weight stays in L2).

Usage: PYTHONPATH=src:scripts python3 scripts/lt_algo_probe.py --out FILE [--rows 256,384,400] [--count 32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from skinny_bench import replay_us, write_rows

from rollgraph import lt_matmul
from rollgraph.blas_choice import BORROW_ROWS, using
from rollgraph.tune_timing import time_after_clean_reads

SHAPES = {
    "wo": (4096, 4096, True),
    "w_down": (4096, 11008, True),
    "wqkv": (12288, 4096, False),
    "w_gate_up": (22016, 4096, False),
}
"""N, K, and whether the product adds into the residual (r += x @ w.T) or is plain (r = x @ w.T, as QKV and gate/up
run in prefill)."""
GRAPH_CALLS = 20


def graph_us(fn, r, xs, ws) -> float:
    """µs per call of fn(r, x, w) over GRAPH_CALLS calls with distinct x and w, captured once, median of 5 replays."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for x, w in zip(xs, ws, strict=True):
            fn(r, x, w)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for x, w in zip(xs, ws, strict=True):
            fn(r, x, w)
    return round(statistics.median(replay_us(g, 6, GRAPH_CALLS)), 2)


def lib_fn(lib: str, accumulate: bool):
    def fn(r, x, w):
        with using(lib):
            if accumulate:
                r.addmm_(x, w.t())
            else:
                torch.mm(x, w.t(), out=r)

    return fn


def lt_fn(prod: lt_matmul.Product, c: lt_matmul.Candidate, accumulate: bool):
    return lambda r, x, w: prod.run(c, r, x, w, accumulate)


def probe_shape(name: str, m: int, ws: list[torch.Tensor], count: int, graph_top: int, accumulate: bool) -> dict:
    """One product at `m` rows: every way timed, checked and (the fastest few) timed in a graph."""
    t0 = time.perf_counter()
    w = ws[0]
    (n, k), dev, dt = w.shape, w.device, w.dtype
    xs = [torch.randn(m, k, device=dev, dtype=dt) for _ in range(GRAPH_CALLS)]
    x = xs[0]
    r0 = torch.randn(m, n, device=dev, dtype=dt)
    want = ((r0.float() if accumulate else 0) + x.float() @ w.float().t()).to(dt).float()
    prod = lt_matmul.product(m, n, k, dt)
    cands = prod.candidates(count, BORROW_ROWS)
    fns = {"cublas": lib_fn("cublas", accumulate), "cublaslt": lib_fn("cublaslt", accumulate)}
    fns.update({f"algo{c.rank}": lt_fn(prod, c, accumulate) for c in cands})
    errors = {}
    for key, fn in fns.items():
        r = r0.clone()
        fn(r, x, w)
        torch.cuda.synchronize()
        errors[key] = round((r.float() - want).abs().max().item(), 4)
    r = r0.clone()
    times: dict[str, list[float]] = {key: [] for key in fns}
    for rnd in range(3):
        for key in list(fns) if rnd % 2 == 0 else list(reversed(fns)):
            fn = fns[key]
            times[key].append(time_after_clean_reads(lambda fn=fn: fn(r, x, w)) * 1e3)
    med = {key: round(statistics.median(v), 2) for key, v in times.items()}
    fastest = sorted(med, key=med.get)
    graph = {
        key: graph_us(fns[key], r0.clone(), xs, ws)
        for key in dict.fromkeys(["cublas", "cublaslt", *fastest[:graph_top]])
    }
    return {
        "product": name,
        "accumulate": accumulate,
        "rows": m,
        "n": n,
        "k": k,
        "clean_us": med,
        "graph_us": graph,
        "max_abs_error": errors,
        "fastest": fastest[0],
        "algos": [c.describe() for c in cands],
        "tflops_best": round(2 * m * n * k / med[fastest[0]] / 1e6, 1),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rows", default="256,320,384,400,432,512")
    p.add_argument("--count", type=int, default=32)
    p.add_argument("--graph-top", type=int, default=3, help="how many of the fastest algorithms to time in a graph")
    p.add_argument("--shapes", default=",".join(SHAPES), help="which of SHAPES")
    a = p.parse_args()
    torch.manual_seed(0)
    out = []
    for name in a.shapes.split(","):
        n, k, accumulate = SHAPES[name]
        ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(GRAPH_CALLS)]
        for m in [int(s) for s in a.rows.split(",")]:
            row = probe_shape(name, m, ws, a.count, a.graph_top, accumulate)
            out.append(row)
            med, best, err = row["clean_us"], row["fastest"], row["max_abs_error"]
            print(
                f"{name} rows={m}: cublas {med['cublas']} lt {med['cublaslt']} best {best} {med[best]} "
                f"({row['tflops_best']} TFLOP/s; {len(row['algos'])} algos) graph {row['graph_us']} "
                f"err best {err[best]} cublas {err['cublas']}",
                flush=True,
            )
            write_rows(a.out, out)


if __name__ == "__main__":
    main()
