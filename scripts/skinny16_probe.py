"""Can a 16-row matmul read 7B's weights faster than skinny_linear's ~2.7 TB/s? (perf-notes v26)

A 10-token prompt's prefill runs the 16-row bucket: its four matmuls a layer read every weight once, like a decode
step, yet skinny_linear reads them at 2.0-2.7 TB/s where inductor's one-row reductions reach ~3.0 on the large
matrices. This probe times, at 16 rows (and 1 for reference) on llama-2-7b's and llama-3.2-1b's shapes:
- `skinny`: skinny_linear's kernel over a wider config sweep than skinny_bench (1-2 pipeline stages and BLOCK_K 512
  included);
- `swap`: the same walk with the product transposed, acc[BLOCK_N, 16] = W_tile @ x_tile^T, so the weight tile is the
  tensor-core instruction's M side (Hopper's wgmma needs M >= 64) and x the narrow N side;
- `tma`: the swapped walk with both operands loaded through host-made TMA descriptors (Hopper's bulk copies).
Each variant is checked against F.linear in float32 before it is timed. Prints one JSON line per shape, rows and
variant: the best config's microseconds and TB/s of weight bytes. An experiment, not product code.

Usage on the GPU: PYTHONPATH=src python scripts/skinny16_probe.py [--rows 1,16] [--out F.json]
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from skinny_bench import operands, time_us

from rollgraph import skinny_linear as sk

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # an older Triton: the tma variant is reported as unavailable
    TensorDescriptor = None


@triton.jit
def _swap(x, w, y, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    wp = w + rn[:, None] * K + rk[None, :]
    xp = x + rm[:, None] * K + rk[None, :]
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for _ in range(0, K, BLOCK_K):
        wt = tl.load(wp)
        xt = tl.load(xp, mask=m_ok[:, None], other=0.0)
        acc = tl.dot(wt, tl.trans(xt), acc)
        wp += BLOCK_K
        xp += BLOCK_K
    out = y + rm[None, :] * N + rn[:, None]
    tl.store(out, acc.to(y.dtype.element_ty), mask=m_ok[None, :])


@triton.jit
def _tma(x_desc, w_desc, y, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    n0 = tl.program_id(0) * BLOCK_N
    rn = n0 + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        wt = w_desc.load([n0, k0])
        xt = x_desc.load([0, k0])
        acc = tl.dot(wt, tl.trans(xt), acc)
    out = y + rm[None, :] * N + rn[:, None]
    tl.store(out, acc.to(y.dtype.element_ty), mask=(rm < M)[None, :])


def run_skinny(x, w, cfg):
    return sk.launch(x, w, None, cfg)


def run_swap(x, w, cfg):
    bn, bk, warps, stages = cfg
    m, k = x.shape
    n = w.shape[0]
    y = x.new_empty(m, n)
    _swap[(n // bn,)](x, w, y, m, n, k, BLOCK_M=16, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
    return y


def run_tma(x, w, cfg):
    bn, bk, warps, stages = cfg
    m, k = x.shape
    n = w.shape[0]
    y = x.new_empty(m, n)
    if m < 16:  # the descriptor's box is 16 rows: pad x (the probe's own copy, outside the timing's concern)
        x = torch.cat([x, x.new_zeros(16 - m, k)])
    xd = TensorDescriptor.from_tensor(x, [16, bk])
    wd = TensorDescriptor.from_tensor(w, [bn, bk])
    _tma[(n // bn,)](xd, wd, y, m, n, k, BLOCK_M=16, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
    return y


SKINNY_CONFIGS = [
    c
    for c in itertools.product((16, 32, 64), (128, 256, 512), (4,), (1, 2, 3, 4))
    if c[3] * (16 + c[0]) * c[1] * 2 <= sk.SHARED_MEMORY
]
SWAP_CONFIGS = [
    c
    for c in itertools.product((64, 128), (64, 128, 256), (4, 8), (2, 3, 4))
    if c[3] * (16 + c[0]) * c[1] * 2 <= sk.SHARED_MEMORY
]
VARIANTS = {"skinny": (run_skinny, SKINNY_CONFIGS), "swap": (run_swap, SWAP_CONFIGS), "tma": (run_tma, SWAP_CONFIGS)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", default="1,16")
    p.add_argument("--variants", default="skinny,swap,tma")
    p.add_argument("--out")
    a = p.parse_args()
    dev, dt = torch.device("cuda"), torch.bfloat16
    if TensorDescriptor is not None:
        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=dev))
    rows_out = []
    for model, n, k, m, xs, ws, ref in operands(a.rows, dev, dt):
        tol = 2e-2 * ref.abs().max().item() + 1e-2
        base = {"model": model, "n": n, "k": k, "m": m, "cublas_us": round(time_us(F.linear, xs, ws), 2)}
        for name in a.variants.split(","):
            fn, configs = VARIANTS[name]
            if name == "tma" and TensorDescriptor is None:
                print(json.dumps({**base, "variant": name, "error": "no TensorDescriptor"}), flush=True)
                continue
            if name != "skinny" and m != 16:
                continue
            best, errors, last = None, 0, "wrong values"
            for cfg in configs:
                if n % cfg[0] or k % cfg[1]:
                    continue
                try:
                    err = (fn(xs[0], ws[0], cfg).float() - ref).abs().max().item()
                    if err > tol:
                        errors += 1
                        continue
                    us = time_us(lambda x, w, c=cfg, f=fn: f(x, w, c), xs, ws)
                except Exception as exc:
                    errors += 1
                    last = f"{type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''}"
                    continue
                if best is None or us < best[0]:
                    best = (us, cfg)
            row = {**base, "variant": name, "failed_configs": errors}
            if best:
                row.update(us=round(best[0], 2), cfg=best[1], TBps=round(n * k * 2 / best[0] / 1e6, 3))
            elif errors:
                row["last_error"] = last
            print(json.dumps(row), flush=True)
            rows_out.append(row)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "triton": triton.__version__, "rows": rows_out}, f)


if __name__ == "__main__":
    main()
