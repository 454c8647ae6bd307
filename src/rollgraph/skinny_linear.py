"""y = x @ w.T (+ b) for few rows of x, as one Triton kernel that reads the weight matrix once.

Why: a short prompt's prefill (up to 32 rows) is, like a decode step, bound by reading every weight once. Measured
on an H100 (docs/perf-notes.md, v6), cuBLAS reads llama-2-7b's matrices at 1.8-2.65 TB/s for 1 or 16 rows, this
kernel at 2.0-2.75 (the copy bandwidth is ~3.0): a few percent of a short prefill, and of a decode step outside the
compile modes (inside them inductor's generated reductions do as well at one row).

Each program owns BLOCK_N output columns for all rows: it streams its BLOCK_N weight rows through shared memory once
(pipelined over K) and multiplies them with the few rows of x on the tensor cores, accumulating in float32. With
BLOCK_N small enough the grid has a few programs per SM, enough bytes in flight to keep memory busy.

Numerics: float32 accumulation, one rounding to the output dtype (as cuBLAS without split-K); fp32 inputs use IEEE
products, never TF32.

Optionally it gates (`gated`): w is [gate; up] stacked, each program loads BLOCK_N/2 gate rows and the matching up
rows, and writes silu(gate) · up, an output half as wide: a gated MLP's first half in one kernel (perf-notes v34).

And optionally it carries an RMSNorm across two matmuls (perf-notes v35): a kernel that writes the residual stream
(`skinny_linear_stats`) also writes each program's sum of squares of the rows it stored, [programs, rows] in
float32; the next matmul (`norm_parts`) reads them, scales its accumulator by rsqrt(mean + eps) per row, and so
multiplies the raw residual stream, as loaded, by a weight with the norm's weight folded in (llama.py).

`available()` says whether it can run; callers keep F.linear otherwise.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: callers keep F.linear
    triton = None

MAX_ROWS = 32
"""The most rows of x the runner gives this kernel. On an H100 (perf-notes v6) it reads llama-2-7b's matrices 0-10%
faster than cuBLAS at 1 and 16 rows, and up to 20% slower at 64 rows, where cuBLAS's matrix kernels win."""
FUSE_RESIDUAL = True
"""The runner's `x + linear(h)` with few rows as one kernel (the residual added in the epilogue, perf-notes v33);
False adds it in a kernel of its own, as before (the A/B knob; pool_figures option `no-res`)."""
FUSE_NORM = True
"""The runner's RMSNorms carried in skinny_linear's partial sums of squares, their weights folded into the next
projections (perf-notes v35); False runs F.rms_norm apart (the A/B knob, read when a runner is built; pool_figures
option `no-norm`)."""
FUSE_GATE = True
"""The runner's `silu(gate) * up` after its gate/up projection with few rows in that projection's epilogue
(perf-notes v34); False runs it as kernels of their own (the A/B knob, read when a runner is built; pool_figures
option `no-gate`)."""
SHARED_MEMORY = 200 << 10
"""Shared memory a program may use for its pipeline stages (an H100 SM has 227 KiB)."""


def available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the kernel can run here (CUDA, or Triton's CPU interpreter when TRITON_INTERPRET=1)."""
    if triton is None or dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def probe(device: torch.device, dtype: torch.dtype, gated: bool = False, norm: bool = False) -> str | None:
    """Build and run the kernel once on a tiny input (its gated form, or the norm carried in the sums of squares, if
    asked): None if it matched PyTorch, else why not (a Triton or driver that cannot build it shows up at load, not
    at a request's first step)."""
    F = torch.nn.functional
    try:
        gen = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(3, 128, generator=gen).to(device, dtype)
        w = torch.randn(40, 128, generator=gen).to(device, dtype)
        b = torch.randn(40, generator=gen).to(device, dtype)
        if norm:  # the producer writes h = x + x·w1ᵀ and its sums of squares; the consumer normalises h
            w1 = (torch.randn(128, 128, generator=gen) / 8).to(device, dtype)
            h, parts = skinny_linear_stats(x, w1, x)
            got = skinny_linear(h, w, None, None, gated, parts, 1e-5).float()
            x = F.rms_norm(h.float(), (128,), eps=1e-5)
            b = None
        if gated:
            gate, up = F.linear(x.float(), w.float()).chunk(2, dim=-1)
            want = F.silu(gate) * up
            got = got if norm else skinny_linear(x, w, None, None, True).float()
        else:
            want = F.linear(x.float(), w.float(), None if b is None else b.float())
            got = got if norm else skinny_linear(x, w, b).float()
        if not torch.allclose(got, want, rtol=2e-2, atol=2e-1):
            return "it ran but gave wrong values on a probe input"
    except Exception as exc:  # whatever Triton or the driver raises
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def config(m: int, n: int, k: int, itemsize: int = 2) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps, num_stages) for an [m, k] x [n, k]^T product.

    BLOCK_N is the largest of 64/32/16 that still gives every SM of a large GPU about two programs (fewer, larger
    programs read longer runs of memory; too few leave SMs idle); the pipeline is as deep as shared memory allows, up
    to 4 stages. Chosen from scripts/skinny_bench.py's sweep on an H100 (within 2% of the best config it found at 1 and
    16 rows)."""
    block_n = 64
    while block_n > 16 and triton.cdiv(n, block_n) < 256:
        block_n //= 2
    block_k = 256 if k % 256 == 0 else 128 if k % 128 == 0 else 64
    block_m = max(16, triton.next_power_of_2(m))
    stages = 4
    while stages > 2 and stages * (block_m + block_n) * block_k * itemsize > SHARED_MEMORY:
        stages -= 1
    return block_n, block_k, 4, stages


if triton is not None:

    @triton.jit(do_not_specialize=["M"])  # one build serves 1 to 16 rows (decode and 16-row prefill)
    def _skinny(
        x,
        w,
        bias,
        res,
        y,
        parts,
        M,
        N,
        K,
        s_xm,
        s_wn,
        s_rm,
        s_ym,
        P_IN,
        eps,
        HAS_BIAS: tl.constexpr,
        HAS_RES: tl.constexpr,
        GATED: tl.constexpr,
        STATS: tl.constexpr,
        NORM: tl.constexpr,
        BLOCK_P: tl.constexpr,
        EVEN_K: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        if GATED:  # weight rows: BLOCK_N/2 gate rows, then the up rows of the same outputs, N/2 further on
            r = tl.arange(0, BLOCK_N)
            col = tl.program_id(0) * (BLOCK_N // 2) + r % (BLOCK_N // 2)
            rn = col + (r >= BLOCK_N // 2).to(tl.int32) * (N // 2)
            n_ok = col < N // 2
        else:
            rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
            n_ok = rn < N
        rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        rk = tl.arange(0, BLOCK_K)
        m_ok = rm < M
        xp = x + rm[:, None] * s_xm + rk[None, :]
        wp = w + rn[:, None] * s_wn + rk[None, :]
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        if NORM:  # the previous kernel's partial sums of squares of x's rows; loaded now, needed after the loop
            rp = tl.arange(0, BLOCK_P)
            sq = tl.load(parts + rp[:, None] * M + rm[None, :], mask=(rp[:, None] < P_IN) & m_ok[None, :], other=0.0)
        for k0 in range(0, K, BLOCK_K):
            if EVEN_K:
                xt = tl.load(xp, mask=m_ok[:, None], other=0.0)
                wt = tl.load(wp, mask=n_ok[:, None], other=0.0)
            else:
                k_ok = (rk + k0) < K
                xt = tl.load(xp, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
                wt = tl.load(wp, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            acc = tl.dot(xt, tl.trans(wt), acc, input_precision=PRECISION)
            xp += BLOCK_K
            wp += BLOCK_K
        if NORM:  # RMSNorm's scale is one factor per row of x, so it can wait until the product is done
            rstd = tl.rsqrt(tl.sum(sq, axis=0) / K + eps)
            acc *= rstd[:, None]
        if HAS_BIAS:
            acc += tl.load(bias + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        if GATED:  # columns j and BLOCK_N/2 + j are gate and up of output j
            halves = tl.permute(tl.reshape(acc, [BLOCK_M, 2, BLOCK_N // 2]), (0, 2, 1))
            gate, up = tl.split(halves)
            acc = gate * tl.sigmoid(gate) * up
            rn = tl.program_id(0) * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
            n_ok = rn < N // 2
        mn_ok = m_ok[:, None] & n_ok[None, :]
        if HAS_RES:  # the residual stream, added before the one rounding
            acc += tl.load(res + rm[:, None] * s_rm + rn[None, :], mask=mn_ok, other=0.0).to(tl.float32)
        out = y + rm[:, None] * s_ym + rn[None, :]
        stored = acc.to(y.dtype.element_ty)
        tl.store(out, stored, mask=mn_ok)
        if STATS:  # this program's share of each row's sum of squares, of the values as stored
            v = tl.where(mn_ok, stored.to(tl.float32), 0.0)
            tl.store(parts + tl.program_id(0) * M + rm, tl.sum(v * v, axis=1), mask=m_ok)


def launch(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    cfg: tuple[int, int, int, int],
    res: torch.Tensor | None = None,
    gated: bool = False,
    norm_parts: torch.Tensor | None = None,
    rms_eps: float = 0.0,
) -> torch.Tensor:
    """The kernel with an explicit config (the benchmark sweeps configs through this); x [M, K], w [N, K], res [M, N]
    (unit stride along N) or None; gated: w is [gate; up] stacked, the output is silu(gate) · up [M, N/2] (no
    residual then); norm_parts [P, M] float32: x's rows RMS-normalised (eps rms_eps) from these partial sums of
    squares."""
    return _launch(x, w, b, cfg, res, gated, norm_parts, rms_eps)[0]


def _launch(x, w, b, cfg, res=None, gated=False, norm_parts=None, rms_eps=0.0, stats=False):
    """launch(), and with `stats` also the output rows' partial sums of squares, [programs along N, M] float32."""
    m, k = x.shape
    n = w.shape[0]
    if gated and (n % 2 or res is not None):
        raise ValueError(f"a gated skinny_linear needs an even number of weight rows and no residual; got {n} rows")
    block_n, block_k, warps, stages = cfg
    block_m = max(16, triton.next_power_of_2(min(m, 64)))
    y = x.new_empty(m, n // 2 if gated else n)
    grid = (triton.cdiv(n // 2, block_n // 2) if gated else triton.cdiv(n, block_n), triton.cdiv(m, block_m))
    parts = x.new_empty(grid[0], m, dtype=torch.float32) if stats else norm_parts
    _skinny[grid](
        x,
        w,
        b if b is not None else w,
        res if res is not None else w,
        y,
        parts if parts is not None else y,
        m,
        n,
        k,
        x.stride(0),
        w.stride(0),
        res.stride(0) if res is not None else 0,
        y.stride(0),
        norm_parts.shape[0] if norm_parts is not None else 0,
        rms_eps,
        HAS_BIAS=b is not None,
        HAS_RES=res is not None,
        GATED=gated,
        STATS=stats,
        NORM=norm_parts is not None,
        BLOCK_P=triton.next_power_of_2(norm_parts.shape[0]) if norm_parts is not None else 1,
        EVEN_K=k % block_k == 0,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=warps,
        num_stages=stages,
    )
    return y, (parts if stats else None)


@torch.library.custom_op("rollgraph::skinny_linear", mutates_args=())
def skinny_linear(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    residual: torch.Tensor | None = None,
    gated: bool = False,
    norm_parts: torch.Tensor | None = None,
    rms_eps: float = 0.0,
) -> torch.Tensor:
    """F.linear(x, w, b) (+ residual) for x [..., K] with few rows (at most MAX_ROWS is where it pays); w [N, K]
    contiguous; residual [..., N] like the output or None. The residual is added in float32 before the output's one
    rounding: `x + linear(h)` of a transformer layer in one kernel instead of two (perf-notes v33). With gated set,
    w is [gate; up] stacked and the result is silu(gate) · up [..., N/2], in float32 before its one rounding
    (perf-notes v34). With norm_parts (from skinny_linear_stats over x), x's rows are RMS-normalised first (no
    weight: fold it into w), from those partial sums of squares (perf-notes v35)."""
    y, _ = _run(x, w, b, residual, gated=gated, norm_parts=norm_parts, rms_eps=rms_eps)
    return y.view(*x.shape[:-1], y.shape[-1])


@skinny_linear.register_fake
def _(x, w, b, residual=None, gated=False, norm_parts=None, rms_eps=0.0):
    return x.new_empty(*x.shape[:-1], w.shape[0] // 2 if gated else w.shape[0])


@torch.library.custom_op("rollgraph::skinny_linear_stats", mutates_args=())
def skinny_linear_stats(
    x: torch.Tensor, w: torch.Tensor, residual: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """skinny_linear(x, w, None, residual), and the output rows' partial sums of squares [programs, rows] in float32:
    what the next matmul's `norm_parts` takes to apply an RMSNorm to this output (perf-notes v35)."""
    y, parts = _run(x, w, None, residual, stats=True)
    return y.view(*x.shape[:-1], w.shape[0]), parts


@skinny_linear_stats.register_fake
def _(x, w, residual):
    m = x.numel() // x.shape[-1]
    programs = -(-w.shape[0] // config(m, w.shape[0], x.shape[-1], x.element_size())[0])
    return x.new_empty(*x.shape[:-1], w.shape[0]), x.new_empty(programs, m, dtype=torch.float32)


def _run(x, w, b, residual, **kw):
    """_launch on x and the residual as [rows, features], with config()'s launch choice for the shape."""
    x2 = _rows(x)
    m, k = x2.shape
    r2 = _rows(residual) if residual is not None else None
    return _launch(x2, w, b, config(m, w.shape[0], k, x2.element_size()), r2, **kw)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t as [rows, last dim] with unit stride along the last dim (a copy only when it has none)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()
