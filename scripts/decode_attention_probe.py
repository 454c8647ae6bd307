"""The fused decode attention kernel's launch choices at long KV lengths (perf-notes v81): positions per step, warps,
pipeline stages and splits (with the merge kernel), each timed in a CUDA graph of one call per layer with every
layer's own cache (as a decode step reads them), at live lengths 10-1000 in their KV buckets, for llama-2-7b's and
llama-3.2-1b's shapes. Each choice's output is checked against the default launch's.

At 400 positions the default (64 positions a step, 4 warps, one program per KV head up to 512 positions) took 10.6 µs
a layer on an H200 against 4.5 at 10 (v80's profile): 7B has 32 programs for 132 SMs, each walking 7 steps.

Usage: PYTHONPATH=src:scripts python3 scripts/decode_attention_probe.py --out FILE
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics

import torch
from skinny_bench import replay_us, write_rows

from rollgraph import decode_attention as da

SHAPES = {"llama-2-7b": (32, 32, 128, 32), "llama-3.2-1b": (32, 8, 64, 16)}
"""heads, KV heads, head dim, layers."""
CASES = ((10, 256), (200, 256), (400, 512), (460, 512), (1000, 1024))
"""(live positions, KV bucket)."""
CHOICES = [
    (block, warps, stages, splits)
    for block, warps, stages, splits in itertools.product((64, 128), (4, 8), (None, 2, 4), (1, 2, 4, 8))
    if not (block == 128 and warps == 4 and stages == 4)
]


def layer_inputs(h: int, kv: int, d: int, layers: int, max_len: int = 2048):
    dev, dt = torch.device("cuda"), torch.bfloat16
    qkv = torch.randn(1, (h + 2 * kv) * d, device=dev, dtype=dt)
    caches = [
        (torch.randn(1, kv, max_len, d, device=dev, dtype=dt), torch.randn(1, kv, max_len, d, device=dev, dtype=dt))
        for _ in range(layers)
    ]
    return qkv, caches


def run_layers(qkv, cos, sin, pos, flag, caches, kv_len, h, kv) -> list[torch.Tensor]:
    return [da.decode_attention(qkv, cos, sin, pos, flag, k, v, kv_len, h, kv) for k, v in caches]


def time_choice(choice, qkv, cos, sin, pos, flag, caches, kv_len, h, kv) -> tuple[float, list[torch.Tensor]]:
    da.OVERRIDE = choice
    try:
        outs = run_layers(qkv, cos, sin, pos, flag, caches, kv_len, h, kv)  # builds, and the output to check
        torch.cuda.synchronize()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            run_layers(qkv, cos, sin, pos, flag, caches, kv_len, h, kv)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            run_layers(qkv, cos, sin, pos, flag, caches, kv_len, h, kv)
        us = statistics.median(replay_us(g, 12, len(caches)))
    finally:
        da.OVERRIDE = None
    return us, outs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--shapes", default=",".join(SHAPES))
    a = p.parse_args()
    torch.manual_seed(0)
    rows = []
    for name in a.shapes.split(","):
        h, kv, d, layers = SHAPES[name]
        qkv, caches = layer_inputs(h, kv, d, layers)
        cos = torch.randn(1, d, device="cuda", dtype=torch.bfloat16)
        sin = torch.randn(1, d, device="cuda", dtype=torch.bfloat16)
        flag = torch.zeros(1, dtype=torch.bool, device="cuda")  # the cache is left as it is
        for live, bucket in CASES:
            pos = torch.tensor([live], device="cuda")
            splits0, _ = da._splits(bucket)
            default = (da.BLOCK_T, 4, None, splits0)
            base_us, want = time_choice(default, qkv, cos, sin, pos, flag, caches, bucket, h, kv)
            times, errors = {}, {}
            for choice in CHOICES:
                if math.ceil(bucket / choice[3]) < choice[0]:
                    continue  # a split shorter than one step
                try:
                    us, got = time_choice(choice, qkv, cos, sin, pos, flag, caches, bucket, h, kv)
                except Exception as exc:  # a launch the device refuses (shared memory) is no candidate
                    times[str(choice)] = f"{type(exc).__name__}"
                    continue
                times[str(choice)] = round(us, 2)
                errors[str(choice)] = round(
                    max((x.float() - y.float()).abs().max().item() for x, y in zip(got, want, strict=True)), 4
                )
            ok = {k: v for k, v in times.items() if isinstance(v, float)}
            best = min(ok, key=ok.get)
            row = {
                "shape": name,
                "live": live,
                "bucket": bucket,
                "default": str(default),
                "default_us": round(base_us, 2),
                "best": best,
                "best_us": ok[best],
                "times_us": dict(sorted(ok.items(), key=lambda kv_: kv_[1])),
                "refused": {k: v for k, v in times.items() if not isinstance(v, float)},
                "max_abs_error": errors,
            }
            rows.append(row)
            top = list(row["times_us"].items())[:5]
            print(
                f"{name} live={live} bucket={bucket}: default {base_us:.2f} µs a layer; best {top}; "
                f"error of best {errors[best]}",
                flush=True,
            )
            write_rows(a.out, rows)


if __name__ == "__main__":
    main()
