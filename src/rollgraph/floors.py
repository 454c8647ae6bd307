"""Machine floors: the fastest a step could possibly run on this GPU, so every latency can be read as a ratio.

Decode at batch 1 reads every weight once per token and does only 2 FLOPs per weight read, far too little
arithmetic to keep the tensor cores busy: it is memory-bound, so its floor is weight bytes / device bandwidth.
Prefill of T tokens does 2 · params · T FLOPs over the same weight read: short prompts are still memory-bound, long
ones compute-bound, so its floor is max(weight bytes / bandwidth, 2 · params · T / matmul rate).

Both rates are measured here, not taken from a data sheet: a large device-to-device copy (bytes read + written,
timed with CUDA events) and a bf16 8192³ matmul (fp16 where the GPU lacks bf16; median of several). Without CUDA the
rates are None and so are the floors. The host's own figures (host_probe.py) are measured either way: they are not
floors, but short-prompt TTFT and the P99 move with the host a run gets. `python -m rollgraph.floors` prints the
machine's figures as one JSON line; `rollgraph bench` runs it in a short subprocess, so the rates are measured
before any server holds the GPU and the bench process itself never creates a CUDA context.
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import sys
from dataclasses import asdict, dataclass
from importlib import metadata

from rollgraph.host_probe import measure_host

logger = logging.getLogger(__name__)

COPY_BYTES = 1 << 30
MATMUL_N = 8192


@dataclass(frozen=True)
class Machine:
    """What `python -m rollgraph.floors` reports: the device, its two rates (None without CUDA), the versions."""

    device: str
    cuda: bool
    copy_bandwidth: float | None
    """Bytes/s of a device-to-device copy, counting bytes read plus bytes written."""
    matmul_flops: float | None
    """FLOP/s of a square half-precision matmul (bf16, or fp16 where bf16 is missing)."""
    matmul_dtype: str | None
    torch: str | None
    transformers: str | None
    python: str
    host: dict | None = None
    """The host's figures (host_probe.measure_host): a process's wake after 1 ms idle, a 400-token request's parse."""


@dataclass(frozen=True)
class Floors:
    """Lower bounds on step latency for one model on one machine; None where a rate is unknown."""

    weight_bytes: int | None
    params: int | None
    copy_bandwidth: float | None
    matmul_flops: float | None

    @property
    def decode_ms(self) -> float | None:
        """One decode step at batch 1: every weight read once."""
        if not self.weight_bytes or not self.copy_bandwidth:
            return None
        return self.weight_bytes / self.copy_bandwidth * 1e3

    def prefill_ms(self, tokens: int) -> float | None:
        """Prefill of `tokens` tokens: the weight read, or the matmul work when that takes longer."""
        read = self.decode_ms
        if read is None or not self.params or not self.matmul_flops:
            return read
        return max(read, 2 * self.params * tokens / self.matmul_flops * 1e3)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def measure_copy_bandwidth(nbytes: int = COPY_BYTES, iters: int = 20) -> float:
    """Device-to-device copy rate in bytes/s (read + write). Raises torch.cuda.OutOfMemoryError if 2 × nbytes
    do not fit."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3
    del src, dst
    torch.cuda.empty_cache()
    return 2 * iters * nbytes / seconds


def measure_matmul_rate(n: int = MATMUL_N, repeats: int = 10) -> tuple[float, str]:
    """FLOP/s of an n×n×n half-precision matmul, the median of `repeats` timed runs, and the dtype used."""
    import torch

    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    a = torch.randn(n, n, dtype=dtype, device="cuda")
    b = torch.randn(n, n, dtype=dtype, device="cuda")
    out = torch.empty(n, n, dtype=dtype, device="cuda")
    for _ in range(3):
        torch.matmul(a, b, out=out)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.matmul(a, b, out=out)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del a, b, out
    torch.cuda.empty_cache()
    return 2 * n**3 / statistics.median(times), str(dtype).removeprefix("torch.")


def measure_machine() -> Machine:
    """The device and its rates; without CUDA only the device name ('cpu') and versions."""
    import torch

    versions = dict(torch=_version("torch"), transformers=_version("transformers"), python=platform.python_version())
    host = measure_host()
    if not torch.cuda.is_available():
        return Machine("cpu", False, None, None, None, **versions, host=host)
    bandwidth = measure_copy_bandwidth()
    flops, dtype = measure_matmul_rate()
    return Machine(torch.cuda.get_device_name(), True, bandwidth, flops, dtype, **versions, host=host)


def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print(json.dumps(asdict(measure_machine())), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
