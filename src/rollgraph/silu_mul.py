"""silu(gate) · up of a gate/up projection's output, as one Triton kernel.

Why: past skinny_linear's rows, the runner's gate/up projection is a cuBLAS product whose output [M, 2H] holds gate and
up side by side, and PyTorch's `F.silu(gate) * up` then runs two element-wise kernels: SiLU writes an [M, H] temporary
that the product kernel reads back. At 400 rows on llama-2-7b the pair took 14.4 + 12.3 µs a layer on an H100 (the
`graphs` profile, perf-notes v70), where one pass that reads gate and up once and writes the result is ~26 MB of
traffic, ~9 µs at the copy rate. Compiled modes leave this to inductor, which fuses the two itself.

Numerics: float32 from the loads to the one rounding of the result, as skinny_linear's gated epilogue and inductor's
fused kernel compute it (PyTorch's two kernels round SiLU's output to the input dtype first).
"""

from __future__ import annotations

import torch

from rollgraph import skinny_linear

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: callers keep F.silu(gate) * up
    triton = None

ENABLED = True
"""Use the kernel where the runner's few-row kernels run (read at every call; pool_figures option `no-silu` clears
it). On an H100 it took a `graphs` prefill's TTFT down 0.58 ms at 400 tokens and 0.3 at 100 (perf-notes v70)."""
BLOCK = 1024
"""Output columns a program writes (of one row)."""


def available(y: torch.Tensor) -> bool:
    """Whether the kernel can run on `y` here: skinny_linear's conditions (CUDA, or the CPU interpreter)."""
    return ENABLED and skinny_linear.available(y.device, y.dtype)


def silu_mul(y: torch.Tensor) -> torch.Tensor:
    """y [..., 2H] = [gate, up] along its last dim -> silu(gate) · up [..., H] in y's dtype."""
    n2 = y.shape[-1]
    if n2 % 2:
        raise ValueError(f"the last dim holds gate and up side by side, so it must be even; got {n2}")
    y2 = y.reshape(-1, n2)
    if y2.stride(-1) != 1:
        y2 = y2.contiguous()
    h = n2 // 2
    out = torch.empty(y2.shape[0], h, device=y.device, dtype=y.dtype)
    if out.numel():
        _silu_mul[(y2.shape[0], triton.cdiv(h, BLOCK))](y2, out, h, y2.stride(0), out.stride(0), BLOCK=BLOCK)
    return out.view(*y.shape[:-1], h)


if triton is not None:

    @triton.jit
    def _silu_mul(y, out, H, s_y, s_out, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = cols < H
        gate = tl.load(y + row * s_y + cols, mask=ok, other=0.0).to(tl.float32)
        up = tl.load(y + row * s_y + H + cols, mask=ok, other=0.0).to(tl.float32)
        tl.store(out + row * s_out + cols, (gate * tl.sigmoid(gate) * up).to(out.dtype.element_ty), mask=ok)
