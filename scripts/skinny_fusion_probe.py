"""Would SiLU · up and the residual add pay inside skinny_linear? (perf-notes, the next session's item 3)

A 10-token prefill runs, around its four matmuls a layer, an element-wise SiLU · up kernel and a residual add. Folding
SiLU · up into the down projection's loads removes a kernel, but at 16 rows every program of that projection reads
all of x from L2, and with gate and up that doubles (180 MB a layer on 7B). This probe times, on llama-2-7b's and
llama-3.2-1b's down projections at 16 and 1 rows, over weight copies larger than L2 (as skinny_bench does):
- `apart`: inductor's fused SiLU · up kernel, then skinny_linear, then the residual add (inductor);
- `fused`: one kernel, skinny_linear's walk with SiLU · up applied to each loaded block of gate and up, and the
  residual added before the store.
Both are checked against float32 math. Prints one JSON line per shape and row count. An experiment, not product code.

Usage on the GPU: PYTHONPATH=src:scripts python scripts/skinny_fusion_probe.py [--rows 16,1] [--out F.json]
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from skinny_bench import time_us

from rollgraph import skinny_linear as sk

DOWN = {"llama-2-7b": (4096, 11008), "llama-3.2-1b": (2048, 8192)}  # (N, K) of the down projection


@triton.jit
def _gated(gu, w, res, y, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """y = res + (silu(gu[:, :K]) * gu[:, K:]) @ w^T, the gated input rounded to y's dtype before the product."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm[:, None] < M
    gp = gu + rm[:, None] * (2 * K) + rk[None, :]
    wp = w + rn[:, None] * K + rk[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for _ in range(0, K, BLOCK_K):
        g = tl.load(gp, mask=m_ok, other=0.0).to(tl.float32)
        u = tl.load(gp + K, mask=m_ok, other=0.0).to(tl.float32)
        xt = (g * tl.sigmoid(g) * u).to(w.dtype.element_ty)
        acc = tl.dot(xt, tl.trans(tl.load(wp)), acc)
        gp += BLOCK_K
        wp += BLOCK_K
    out = rm[:, None] * N + rn[None, :]
    acc += tl.load(res + out, mask=m_ok, other=0.0).to(tl.float32)
    tl.store(y + out, acc.to(y.dtype.element_ty), mask=m_ok)


def fused(gu: torch.Tensor, w: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
    m, n, k = gu.shape[0], w.shape[0], w.shape[1]
    block_n, block_k, warps, stages = sk.config(m, n, k, 2)
    y = res.new_empty(m, n)
    _gated[(n // block_n,)](gu, w, res, y, m, n, k, 16, block_n, block_k, num_warps=warps, num_stages=stages)
    return y


silu_mul = torch.compile(lambda gu: F.silu(gu[:, : gu.shape[1] // 2]) * gu[:, gu.shape[1] // 2 :], dynamic=False)
add = torch.compile(lambda a, b: a + b, dynamic=False)


def apart(gu: torch.Tensor, w: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
    return add(res, sk.skinny_linear(silu_mul(gu), w, None))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", default="16,1")
    p.add_argument("--out")
    a = p.parse_args()
    dev, dt = torch.device("cuda"), torch.bfloat16
    rows_out = []
    for model, (n, k) in DOWN.items():
        copies = max(2, -(-(96 << 20) // (n * k * 2)))
        ws = [torch.randn(n, k, device=dev, dtype=dt) * 0.02 for _ in range(copies)]
        for m in [int(r) for r in a.rows.split(",")]:
            gus = [torch.randn(m, 2 * k, device=dev, dtype=dt) for _ in range(copies)]
            res = torch.randn(m, n, device=dev, dtype=dt)
            g, u = gus[0].float().chunk(2, dim=1)
            want = res.float() + (F.silu(g) * u) @ ws[0].float().T
            row = {"model": model, "n": n, "k": k, "m": m}
            for name, fn in (("apart", apart), ("fused", fused)):
                err = (fn(gus[0], ws[0], res).float() - want).abs().max().item()
                us = time_us(lambda x, w, f=fn, r=res: f(x, w, r), gus, ws)
                row[f"{name}_us"], row[f"{name}_err"] = round(us, 2), round(err, 4)
            print(json.dumps(row), flush=True)
            rows_out.append(row)
        del ws
        torch.cuda.empty_cache()
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "triton": triton.__version__, "rows": rows_out}, f)


if __name__ == "__main__":
    main()
