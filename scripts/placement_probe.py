"""Does a one-row matmul's speed depend on where its weight lies in GPU memory?

perf-notes v18: in three processes of the same code and the same cached kernels, 7B's gate/up kernel took 66.8, 59.3
and 59.2 us and the down kernel 37.2, 35.6 and 39.9 us, at the same clocks. This probe allocates several copies of
one weight shape (spacer allocations between them, so each copy lands on other pages), and times the same kernel
on each copy, twice, in one process. If a copy's time repeats between the two passes but differs between copies,
placement decides the speed. Each shape is also stored with a padded row stride (`pad` elements more per row, the
matrix a view of the wider buffer), which changes which addresses a wave of programs reads at once.

Kernels: inductor's generated reduction for x[1, K] @ W.T (coordinate-descent tuned, as in compiled decode) and
cuBLAS (F.linear). Usage: PYTHONPATH=src python scripts/placement_probe.py --out FILE [--copies 10] [--pads 0,64]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics

import torch
import torch.nn.functional as F
from skinny_bench import time_us

SHAPES = {"gate_up": (22016, 4096), "down": (4096, 11008), "qkv": (12288, 4096)}  # llama-2-7b's (N, K)
CALLS = 8  # calls of one copy per graph: every shape here is larger than the L2, so each call reads DRAM


def copies(n: int, k: int, pad: int, count: int, spacers: list) -> list[torch.Tensor]:
    out = []
    for _ in range(count):
        spacers.append(torch.empty(random.randint(1, 96) << 20, dtype=torch.uint8, device="cuda"))
        buf = torch.randn(n, k + pad, device="cuda", dtype=torch.bfloat16) * 0.02
        out.append(buf[:, :k])
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--copies", type=int, default=10)
    p.add_argument("--pads", default="0,64")
    a = p.parse_args()
    import torch._inductor.config as ic

    ic.coordinate_descent_tuning = True
    random.seed(0)
    kernels = {"inductor": torch.compile(lambda x, w: F.linear(x, w), dynamic=False), "cublas": F.linear}
    rows = []
    for shape, (n, k) in SHAPES.items():
        for pad in [int(s) for s in a.pads.split(",")]:
            spacers: list = []
            ws = copies(n, k, pad, a.copies, spacers)
            x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
            for name, fn in kernels.items():
                passes = [[time_us(fn, [x] * CALLS, [w] * CALLS) for w in ws] for _ in range(2)]
                per_copy = [round(statistics.mean(t), 2) for t in zip(*passes, strict=True)]
                row = {
                    "shape": shape,
                    "n": n,
                    "k": k,
                    "pad": pad,
                    "kernel": name,
                    "us_per_copy": per_copy,
                    "pass_gap_us": round(statistics.median(abs(u - v) for u, v in zip(*passes, strict=True)), 2),
                    "spread": round(max(per_copy) / min(per_copy) - 1, 3),
                    "tb_s_best": round(n * k * 2 / min(per_copy) / 1e6, 2),
                    "addr_mod_2mb": [w.data_ptr() % (2 << 20) for w in ws],
                }
                rows.append(row)
                print(json.dumps({key: v for key, v in row.items() if key != "addr_mod_2mb"}), flush=True)
            del ws, spacers
            torch.cuda.empty_cache()
    with open(a.out, "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
