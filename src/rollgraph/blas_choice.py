"""Which BLAS library runs each prefill product that adds into the residual: cuBLAS's own heuristic or cuBLASLt's,
chosen per shape by timing both once at start-up (perf-notes v57).

At prefill row counts the two libraries' heuristics pick different kernels. On one H100, llama-2-7b's down projection
at 384 and 400 rows ran ~10 µs faster through cuBLASLt (61 and 68 µs against 71 and 78), while at 432 rows the two
were level and at 368 cuBLAS was ahead. Rather than carry a table for one GPU and one cuBLAS, `choose` times each
(rows, weight) shape the engine will capture, both ways, and `add_product_` runs each product through the faster one.

torch's choice of library is process-wide (`torch.backends.cuda.preferred_blas_library`) and read when a product is
launched, so for a CUDA graph at capture time. `add_product_` sets it around its one product and puts it back, under a
lock: warm-up runs steps from several threads at once (`steps.run_once_in_threads`), and two unlocked switches could
interleave and leave the process on the wrong library. Another thread's untimed product launched inside that window
takes the same library: both are correct, so that costs at most time. Shapes never timed (prompts longer than every
bucket, CPU) keep the process's default library.

A shape is timed once per process: a later engine (a second warm-up, another mode in `pool_figures.py`, a test's
eager reference) keeps the first choice. The two libraries round differently, so two engines in one process that
chose apart from each other on a near-tie would give different bf16 tokens for the same prompt. A new process times
again, and on a near-tie may choose the other library.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import threading
from collections.abc import Iterable

import torch

logger = logging.getLogger(__name__)
ENABLED = True
"""False runs every product through the process's default library (the A/B knob, read at every call; pool_figures
option `no-lt`)."""
MARGIN = 0.97
"""cuBLASLt is taken only where it timed at most this fraction of cuBLAS's time: a tie keeps the default."""
LIBRARIES = ("cublas", "cublaslt")
_chosen: dict[tuple, str] = {}
_timings: dict[tuple, dict[str, float]] = {}  # the medians each choice came from, by the same keys
_switch = threading.Lock()  # one switch of the process-wide library at a time (module docstring)


def _key(rows: int, w: torch.Tensor) -> tuple:
    return (rows, w.shape[0], w.shape[1], w.dtype, w.device)


def library_for(x: torch.Tensor, w: torch.Tensor) -> str | None:
    """The library chosen for x @ w.T, or None where none was (the default runs it)."""
    return _chosen.get(_key(x.shape[0], w)) if ENABLED else None


def add_product_(r: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> None:
    """r += x @ w.T in place (beta = 1 on r itself), through the library chosen for this shape."""
    library = library_for(x, w)
    if library is None:
        r.addmm_(x, w.t())
        return
    with _switch, using(library):
        r.addmm_(x, w.t())


@contextlib.contextmanager
def using(library: str):
    """torch's preferred BLAS library set to `library` inside the block, and put back after it."""
    before = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library(library)
    try:
        yield
    finally:
        torch.backends.cuda.preferred_blas_library(before)


def choose(rows: Iterable[int], weights: Iterable[torch.Tensor], rounds: int = 5, calls: int = 10) -> dict:
    """Time r.addmm_(x, w.T) through each library for every row count and weight (CUDA only), alternating the two
    `rounds` times over `calls` back-to-back products, and remember the faster by medians; shapes chosen earlier in
    this process keep their choice and are not timed again. Returns {(rows, n, k): {library: µs}} for the log and
    reports; {} where the device is not CUDA or torch lacks cuBLASLt."""
    weights = list(weights)
    if not weights or not _can_time(weights[0]):
        return {}
    timings, timed = {}, 0
    for m in sorted(set(rows)):
        for w in weights:
            key = _key(m, w)
            if key not in _timings:
                _timings[key] = _time_both(m, w, rounds, calls)
                _chosen[key] = "cublaslt" if _lt_wins(_timings[key]) else "cublas"
                timed += 1
            timings[key[:3]] = _timings[key]
    lt = [k for k, v in timings.items() if _lt_wins(v)]
    logger.info("cuBLASLt for %d of %d prefill products (%d timed now): %s", len(lt), len(timings), timed, lt)
    return timings


def _lt_wins(medians: dict[str, float]) -> bool:
    return medians["cublaslt"] <= MARGIN * medians["cublas"]


def _time_both(m: int, w: torch.Tensor, rounds: int, calls: int) -> dict[str, float]:
    """Median µs of r.addmm_(x, w.T) with `m` rows through each library, the two alternated `rounds` times."""
    x = torch.randn(m, w.shape[1], device=w.device, dtype=w.dtype)
    r = torch.zeros(m, w.shape[0], device=w.device, dtype=w.dtype)
    us: dict[str, list[float]] = {lib: [] for lib in LIBRARIES}
    for _ in range(rounds):
        for lib in LIBRARIES:
            with _switch, using(lib):
                us[lib].append(_time_us(r.addmm_, x, w.t(), calls))
    return {lib: round(statistics.median(v), 2) for lib, v in us.items()}


def choices() -> dict:
    """{(rows, n, k): library} for every shape chosen so far."""
    return {key[:3]: lib for key, lib in _chosen.items()}


def forget() -> None:
    """Drop every choice and its timings (tests)."""
    _chosen.clear()
    _timings.clear()


def _time_us(fn, a: torch.Tensor, b: torch.Tensor, calls: int) -> float:
    """Microseconds per call of fn(a, b), over `calls` back-to-back calls after one more."""
    fn(a, b)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn(a, b)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / calls


def _can_time(w: torch.Tensor) -> bool:
    return w.device.type == "cuda" and _has_cublaslt()


def _has_cublaslt() -> bool:
    try:
        with _switch, using("cublaslt"):
            return True
    except RuntimeError:  # "Cannot set preferred backend to cuBLASLt if PyTorch has not been compiled with cuBLASLt"
        return False
