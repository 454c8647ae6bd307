"""Programmatic dependent launch between rollgraph's own Triton kernels (Hopper and later; perf-notes v36).

A kernel launched with it may be scheduled while the kernel before it on the stream still runs. Each of
rollgraph's kernels then waits at its start (`griddepcontrol.wait`) until the kernel before it has finished and its
writes are visible, and right after lets the next kernel in (`griddepcontrol.launch_dependents`). So the next
kernel's programs take SM slots as this kernel's free them, instead of being launched after it drains. Before its
wait a kernel may only touch what no earlier kernel writes: skinny_linear asks L2 for the first bytes of its weight
rows there (PREFETCH_BYTES). Every kernel that is launched this way waits before any other memory access, so a
kernel finishes only after the one before it has: the stream's order holds for the allocator and for every kernel
that is launched without it (PyTorch's, cuBLAS's), which waits for the whole kernel before it, as always.
"""

from __future__ import annotations

import logging
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - torch's CPU wheels on some platforms come without Triton
    triton = None

logger = logging.getLogger(__name__)

ENABLED = False
"""The knob, read at each launch (pool_figures option `pdl`); off until it is measured."""
INDUCTOR = True
"""With ENABLED, inductor's generated kernels in the compile modes use PDL too, where the installed torch has that
switch (`torch._inductor.config.triton.enable_pdl`); pool_figures option `no-ipdl` leaves them out."""
PREFETCH_BYTES = 0
"""With PDL, how many bytes of each of its weight rows skinny_linear asks L2 for before its wait (0: none;
pool_figures option `pfN`)."""

_refused: set[int] = set()
"""CUDA devices where the load-time probe failed: no PDL there for this process."""
_hopper: dict[int, bool] = {}
"""Whether each CUDA device seen has compute capability 9.0 or later (griddepcontrol), asked once."""


def active(device: torch.device) -> bool:
    """Whether kernels launched on `device` now use PDL: the knob is on, a CUDA device of compute capability 9 or
    later, not Triton's CPU interpreter, and no failed probe on that device."""
    if not ENABLED or device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1" or triton is None:
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _hopper:
        _hopper[index] = torch.cuda.get_device_capability(index)[0] >= 9
    return _hopper[index] and index not in _refused


def refuse(device: torch.device, why: str) -> None:
    """A probe of the PDL forms failed on `device`: launch there without it from now on, with a warning."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    _refused.add(index)
    logger.warning("programmatic dependent launch unavailable on cuda:%d (%s); kernels launch one by one", index, why)


def prefetch_bytes(w: torch.Tensor) -> int:
    """PREFETCH_BYTES for w's rows as the bulk prefetch takes them: a multiple of 16 bytes, no more than a row,
    and 0 where w's rows do not start on 16-byte boundaries."""
    row = w.shape[1] * w.element_size()
    if w.data_ptr() % 16 or (w.stride(0) * w.element_size()) % 16 or w.stride(1) != 1:
        return 0
    return min(PREFETCH_BYTES, row) // 16 * 16


if triton is not None:

    @triton.jit
    def enter(PDL: tl.constexpr):
        """At a kernel's start, before it reads anything an earlier kernel wrote: with PDL, wait for the kernel
        before it, then let the next one be scheduled. Without PDL nothing is emitted."""
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()

    @triton.jit
    def prefetch_l2(ptrs, NBYTES: tl.constexpr):
        """Ask L2 for NBYTES from each address in `ptrs` (16-byte aligned; a hint, no data comes back)."""
        tl.inline_asm_elementwise(
            "cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0;",
            "=r,l,r",
            [ptrs, tl.full(ptrs.shape, NBYTES, tl.int32)],
            dtype=tl.int32,
            is_pure=False,
            pack=1,
        )
