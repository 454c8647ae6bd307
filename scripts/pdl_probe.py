"""Does programmatic dependent launch (PDL) take the per-kernel cost out of a chain of weight-streaming matmuls?

Why (perf-notes, "Open measurements"): every few-row matmul on the H100 costs ~5-8 us more than its weight bytes
at 3 TB/s (skinny_bench, all of cuBLAS, inductor and skinny_linear alike): the kernel's ramp-up and its last wave.
A 7B decode step or short prefill runs 128 of them. With PDL the next kernel is launched while the previous one's
last programs still run; its programs can start reading their weights (which do not depend on the previous
kernel) into L2 before `gdc_wait`, and only then read the previous kernel's output.

Usage on the GPU: PYTHONPATH=src python scripts/pdl_probe.py [--out F.json]
Times chains of one-row matmuls (y_{i+1} = W_i y_i, distinct weights, > 1 GB in all so nothing stays in L2) replayed
as a CUDA graph, for: cuBLAS (F.linear), a plain Triton GEMV, the same launched with PDL, and with PDL plus an L2
prefetch of its weight slice before the wait. Prints one JSON line per chain and variant (us per matmul, TB/s) and
checks that every Triton variant gives the plain one's output bit for bit (a broken wait would read a stale input).
An experiment, not product code.
"""

from __future__ import annotations

import argparse
import json

import torch
import triton
import triton.language as tl

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # an older Triton: PDL variants are reported as unavailable
    gdc_launch_dependents = gdc_wait = None


@triton.jit
def _gemv(
    x_ptr,
    w_ptr,
    y_ptr,
    N,
    K,
    BN: tl.constexpr,
    BK: tl.constexpr,
    PDL: tl.constexpr,
    PREFETCH: tl.constexpr,
    FIRST: tl.constexpr,
):
    pid = tl.program_id(0)
    rn = pid * BN + tl.arange(0, BN)
    if PDL:
        gdc_launch_dependents()
    if PREFETCH:  # one prefetch per 128-byte line of this program's weight slice (64 bf16 values)
        for k0 in range(0, K, BK):
            rk = k0 + tl.arange(0, BK // 64) * 64
            lines = w_ptr + rn[:, None] * K + rk[None, :]
            tl.inline_asm_elementwise(
                "prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [lines], dtype=tl.int32, is_pure=False, pack=1
            )
    acc = tl.zeros((BN,), dtype=tl.float32)
    start = 0
    if FIRST:  # the first weight tile into registers before the wait, then the input
        rk = tl.arange(0, BK)
        w0 = tl.load(w_ptr + rn[:, None] * K + rk[None, :])
        if PDL:
            gdc_wait()
        acc += tl.sum(w0.to(tl.float32) * tl.load(x_ptr + rk)[None, :].to(tl.float32), axis=1)
        start = BK
    elif PDL:
        gdc_wait()
    for k0 in range(start, K, BK):
        rk = k0 + tl.arange(0, BK)
        w = tl.load(w_ptr + rn[:, None] * K + rk[None, :])
        x = tl.load(x_ptr + rk)
        acc += tl.sum(w.to(tl.float32) * x[None, :].to(tl.float32), axis=1)
    tl.store(y_ptr + rn, acc.to(y_ptr.dtype.element_ty))


BN, BK = 32, 256
VARIANTS = {
    "triton": (False, False, False),
    "triton+pdl": (True, False, False),
    "triton+pdl+prefetch": (True, True, False),
    "triton+first": (False, False, True),
    "triton+pdl+first": (True, False, True),
}


def gemv(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, pdl: bool, prefetch: bool, first: bool = False) -> None:
    n, k = w.shape
    kw = {"launch_pdl": True} if pdl else {}
    _gemv[(n // BN,)](
        x, w, y, n, k, BN=BN, BK=BK, PDL=pdl, PREFETCH=prefetch, FIRST=first, num_warps=4, num_stages=4, **kw
    )


def chain_shapes(name: str, length: int) -> list[tuple[int, int]]:
    if name == "square4096":
        return [(4096, 4096)] * length
    if name == "mlp":  # up 11008x4096 then down 4096x11008, alternating (a 7B MLP without the gate)
        return [(11008, 4096), (4096, 11008)] * (length // 2)
    raise ValueError(name)


def run_chain(weights, bufs, variant: str) -> None:
    for i, w in enumerate(weights):
        if variant == "cublas":
            torch.mm(w, bufs[i].unsqueeze(1), out=bufs[i + 1].unsqueeze(1))
        else:
            gemv(bufs[i], w, bufs[i + 1], *VARIANTS[variant])


def time_stream(fn, repeats: int = 20) -> float:
    """Milliseconds per call of `fn` launched on the stream (no graph)."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def time_graph(fn, replays: int = 20) -> float:
    """Milliseconds per replay of a graph of `fn`."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / replays


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--length", type=int, default=32, help="matmuls per chain")
    p.add_argument("--out")
    a = p.parse_args()
    torch.manual_seed(0)
    dev = torch.device("cuda")
    out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__, "rows": []}
    for name in ("square4096", "mlp"):
        shapes = chain_shapes(name, a.length)
        weights = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k**0.5 for n, k in shapes]
        nbytes = sum(w.numel() * 2 for w in weights)
        dims = [shapes[0][1]] + [n for n, _ in shapes]
        results = {}
        for variant in ("cublas", *VARIANTS):
            bufs = [torch.randn(d, device=dev, dtype=torch.bfloat16) for d in dims]
            bufs[0].copy_(torch.linspace(-1, 1, dims[0], device=dev))
            row = {"chain": name, "variant": variant, "matmuls": len(weights), "weight_GB": round(nbytes / 1e9, 3)}
            try:
                if "pdl" in variant and gdc_wait is None:
                    raise RuntimeError("this Triton has no gdc_wait")
                ms = time_graph(lambda ws=weights, b=bufs, v=variant: run_chain(ws, b, v))
                stream_ms = time_stream(lambda ws=weights, b=bufs, v=variant: run_chain(ws, b, v))
                row |= {
                    "us_per_matmul": round(ms * 1e3 / len(weights), 2),
                    "TBps": round(nbytes / (ms * 1e-3) / 1e12, 3),
                    "stream_us_per_matmul": round(stream_ms * 1e3 / len(weights), 2),
                }
                results[variant] = bufs[-1].clone()
                if variant != "triton" and variant != "cublas" and "triton" in results:
                    row["bit_equal_to_plain"] = bool(torch.equal(results[variant], results["triton"]))
                if variant == "triton":
                    ref = bufs[0].float()
                    for w in weights:
                        ref = (w.float() @ ref).to(torch.bfloat16).float()
                    row["max_rel_err_vs_fp32_chain"] = float((bufs[-1].float() - ref).abs().max() / ref.abs().max())
            except Exception as exc:  # an experiment: report and go on
                row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
        weights = results = None
        torch.cuda.empty_cache()
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
