"""Few-row matmuls on the GPU: cuBLAS (F.linear), inductor's generated kernel, and rollgraph's skinny_linear over a
sweep of its configs, for the weight shapes of llama-2-7b and llama-3.2-1b. Reports microseconds and the weight
bytes read per second (the figure a bandwidth-bound product is judged by).

Usage: PYTHONPATH=src python scripts/skinny_bench.py --rows 1,16,32,64 --out DIR
Each timing replays a CUDA graph that runs the product over enough copies of the weight (>= 96 MB in all, about twice
the H100's L2) that none is still in L2 when it is read again, as in a model whose layers have different weights.
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
import torch.nn.functional as F

from rollgraph import skinny_linear as sk

SHAPES = {  # (N, K) of the fused projections: qkv, o, gate_up, down, lm_head
    "llama-2-7b": [(12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008), (32000, 4096)],
    "llama-3.2-1b": [(3072, 2048), (2048, 2048), (16384, 2048), (2048, 8192)],
}
CONFIGS = [
    (bn, bk, warps, stages)
    for bn, bk, warps, stages in itertools.product((16, 32, 64), (128, 256), (4, 8), (3, 5))
    if not (bn == 16 and warps == 8)
]


def time_us(fn, xs, ws) -> float:
    """Median microseconds per call over 3 replays of a graph running fn once per weight copy."""
    for x, w in zip(xs, ws, strict=True):
        fn(x, w)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for x, w in zip(xs, ws, strict=True):
            fn(x, w)
    return replay_us(g, 4, len(ws))[1]


def write_rows(path: str, rows: list[dict]) -> None:
    """A probe's rows as JSON, with the GPU and torch they were measured on."""
    with open(path, "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)


def replay_us(g: torch.cuda.CUDAGraph, replays: int, calls: int) -> list[float]:
    """Microseconds per call (the graph runs `calls` of them) of each replay but the first, sorted."""
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / calls)
    return sorted(times[1:])


def operands(rows: str, dev: torch.device, dt: torch.dtype):
    """(model, n, k, m, xs, ws, ref) for every shape of SHAPES and row count in `rows` ("1,16"): enough copies of the
    weight that they exceed L2, inputs for each copy, and F.linear's float32 result on the first pair."""
    for model, shapes in SHAPES.items():
        for n, k in shapes:
            copies = max(2, -(-(96 << 20) // (n * k * 2)))
            ws = [torch.randn(n, k, device=dev, dtype=dt) * 0.02 for _ in range(copies)]
            for m in [int(r) for r in rows.split(",")]:
                xs = [torch.randn(m, k, device=dev, dtype=dt) for _ in range(copies)]
                yield model, n, k, m, xs, ws, F.linear(xs[0].float(), ws[0].float())
            del ws
            torch.cuda.empty_cache()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", default="1,16,32,64")
    p.add_argument("--out", default=".")
    a = p.parse_args()
    dev, dt = torch.device("cuda"), torch.bfloat16
    import torch._inductor.config as ic

    ic.coordinate_descent_tuning = True
    torch._dynamo.config.cache_size_limit = 256  # one compiled variant per shape
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = 256
    compiled = torch.compile(lambda x, w: F.linear(x, w), dynamic=False)
    rows_out = []
    for model, n, k, m, xs, ws, ref in operands(a.rows, dev, dt):
        row = {"model": model, "n": n, "k": k, "m": m, "weight_mb": round(n * k * 2 / 1e6, 1)}
        row["cublas_us"] = time_us(F.linear, xs, ws)
        try:
            row["inductor_us"] = time_us(compiled, xs, ws)
        except Exception as exc:
            row["inductor_error"] = str(exc).splitlines()[0][:120]
        best = None
        for cfg in CONFIGS:
            try:
                y = sk.launch(xs[0], ws[0], None, cfg)
                err = (y.float() - ref).abs().max().item()
                us = time_us(lambda x, w, c=cfg: sk.launch(x, w, None, c), xs, ws)
            except Exception:
                continue
            if best is None or us < best[0]:
                best = (us, cfg, err)
        row["skinny_default_cfg"] = sk.config(m, n, k, 2)
        try:
            row["skinny_default_us"] = time_us(lambda x, w: sk.skinny_linear(x, w, None), xs, ws)
        except Exception as exc:
            row["skinny_default_error"] = str(exc).splitlines()[0][:120]
        if best:
            row["skinny_best_us"], row["skinny_best_cfg"], row["skinny_err"] = best
        for key in ("cublas", "inductor", "skinny_default", "skinny_best"):
            if f"{key}_us" in row:
                row[f"{key}_TBps"] = round(n * k * 2 / row[f"{key}_us"] / 1e6, 2)
                row[f"{key}_us"] = round(row[f"{key}_us"], 2)
        print(json.dumps(row), flush=True)
        rows_out.append(row)
    with open(f"{a.out}/skinny_bench.json", "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows_out}, f, indent=1)


if __name__ == "__main__":
    main()
