"""Which BLAS library runs each prefill product that adds into the residual: cuBLAS's own heuristic or cuBLASLt's,
chosen per shape by timing both once at start-up (perf-notes v57); and, from ALGORITHM_ROWS rows, the plain products
(QKV and gate/up, r = x @ w.T) likewise (`product`, perf-notes v85).

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

With enough rows (ALGORITHM_ROWS), cuBLASLt's ranked algorithms are candidates too (lt_matmul, perf-notes v65):
torch's cuBLASLt path only ever runs the heuristic's first, and on an H100 another in the list (a split-K one) ran
llama-2-7b's down projection ~4.5 µs faster at 384 and 400 rows. They are screened with a few calls each, and the
fastest few are timed with the two libraries; one is taken where it beats the better library by MARGIN. So are
configurations outside the list (perf-notes v82): copies of the heuristic's first FIT_BASES candidates with a tile
whose token side fits the rows (lt_tiles.fitted: 64 x 200 or 128 x 104 for 400 rows, where the heuristic may rank
128 x 128, which covers 512), each accepted by cuBLASLt's check for the shape, with the candidate's cluster shape or
without one. On an H200 such tiles ran gate/up 4% faster at 400 rows (256 x 136, 408 rows, against 256 x 144's 432)
and gate/up and QKV 8% and 12% faster at 320 rows (perf-notes v85).

Every product is timed as tune_timing times inductor's candidates: after a read of other memory, by median. A product
timed back to back with one weight misjudged cuBLAS's 384-row down projection by ~9 µs (v60).

A shape is timed once per process: a later engine (a second warm-up, another mode in `pool_figures.py`, a test's
eager reference) keeps the first choice. The two libraries round differently, so two engines in one process that
chose apart from each other on a near-tie would give different bf16 tokens for the same prompt. A new process times
again, and on a near-tie may choose the other library.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import statistics
import threading
import time
from collections.abc import Iterable

import torch

from rollgraph import blas_store, lt_matmul, lt_tiles, tune_timing

logger = logging.getLogger(__name__)
ENABLED = True
"""False runs every product through the process's default library (the A/B knob, read at every call; pool_figures
option `no-lt`)."""
ALGORITHMS = True
"""False runs no chosen cuBLASLt algorithm, only the chosen library (read at every call; pool_figures option
`no-algo`). Start-up times the algorithms either way, so one process can compare both."""
PLAIN = True
"""False runs the plain products (`product`) through torch's own choice and times none of them at start-up (read at
every call; pool_figures option `no-plain`)."""
MARGIN = 0.97
"""cuBLASLt is taken only where it timed at most this fraction of cuBLAS's time: a tie keeps the default; likewise
an algorithm of cuBLASLt's list against the better library."""
ALGORITHM_ROWS = 256
"""Products with at least this many rows also time cuBLASLt's ranked algorithms (fewer rows: the two libraries)."""
SCREEN_CALLS = 8
"""Calls per algorithm in the screening; FINALISTS of them are then timed with the two libraries."""
FINALISTS = 3
CALLS = 20
BORROW_ROWS = (256, 320, 384, 400, 432, 448, 512)
"""Row counts whose ranked algorithms are also tried on a product (where cuBLASLt's check says they run it): at 400
rows on an H100, algorithms ranked for neighbouring row counts were among the fastest (perf-notes v65)."""
FIT_BASES = 2
"""The heuristic's first candidates that fitted tiles are configured from (their cluster shape and the rest kept)."""
UNSPLIT = {"split_k": 1, "reduction": 0}
"""A split-K base's copies made without the split (cuBLASLt's reduction scheme NONE)."""
LIBRARIES = ("cublas", "cublaslt")
_chosen: dict[tuple, str] = {}  # the library by shape (_key)
_algos: dict[tuple, tuple[str, lt_matmul.Candidate]] = {}  # cuBLASLt's algorithm by shape (its name, itself)
_timings: dict[tuple, dict[str, float]] = {}  # the medians each choice came from, by the same keys
_switch = threading.Lock()  # one switch of the process-wide library at a time (module docstring)


def _key(rows: int, w: torch.Tensor, accumulate: bool = True) -> tuple:
    return (rows, w.shape[0], w.shape[1], w.dtype, w.device, accumulate)


def shape_of(key: tuple) -> tuple:
    """A choice's name in `choose`'s, `choices`' and `describe`'s dicts: (rows, n, k) for a product that adds into the
    residual, (rows, n, k, "plain") for a plain one."""
    return key[:3] if key[5] else (*key[:3], "plain")


def library_for(x: torch.Tensor, w: torch.Tensor, accumulate: bool = True) -> str | None:
    """The library chosen for x @ w.T (added into a residual, or plain), or None where none was (the default runs
    it)."""
    return _chosen.get(_key(x.shape[0], w, accumulate)) if ENABLED else None


def add_product_(r: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> None:
    """r += x @ w.T in place (beta = 1 on r itself), through the algorithm or library chosen for this shape. A
    chosen algorithm whose call finds its tensors unaligned or strided takes the chosen library instead."""
    chosen = _algos.get(_key(x.shape[0], w)) if ENABLED and ALGORITHMS else None
    if chosen is not None:
        prod = lt_matmul.product(x.shape[0], w.shape[0], w.shape[1], w.dtype)
        if prod.fits(r, x, w):
            prod.run(chosen[1], r, x, w)
            return
    library = library_for(x, w)
    if library is None:
        r.addmm_(x, w.t())
        return
    with _switch, using(library):
        r.addmm_(x, w.t())


def product(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w.T into a new tensor, through the algorithm or library chosen for this plain product's shape (torch's
    default where none was: the same call as F.linear without a bias)."""
    if not PLAIN:
        return torch.mm(x, w.t())
    key = _key(x.shape[0], w, False)
    chosen = _algos.get(key) if ENABLED and ALGORITHMS else None
    if chosen is not None:
        prod = lt_matmul.product(x.shape[0], w.shape[0], w.shape[1], w.dtype)
        r = x.new_empty(x.shape[0], w.shape[0])
        if prod.fits(r, x, w):
            prod.run(chosen[1], r, x, w, accumulate=False)
            return r
    library = library_for(x, w, accumulate=False)
    if library is None:
        return torch.mm(x, w.t())
    with _switch, using(library):
        return torch.mm(x, w.t())


@contextlib.contextmanager
def using(library: str):
    """torch's preferred BLAS library set to `library` inside the block, and put back after it."""
    before = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library(library)
    try:
        yield
    finally:
        torch.backends.cuda.preferred_blas_library(before)


def choose(
    rows: Iterable[int],
    weights: Iterable[torch.Tensor],
    rounds: int = 3,
    calls: int = CALLS,
    accumulate: bool = True,
    store: str | None = None,
) -> dict:
    """Time r.addmm_(x, w.T) (with `accumulate` off, the plain r = x @ w.T) through each library for every row count
    and weight (CUDA only), and from ALGORITHM_ROWS rows on the finalists of cuBLASLt's ranked algorithms too,
    alternating them `rounds` times, and remember the faster by medians; shapes chosen earlier in this process keep
    their choice and are not timed again. With `store` (a file, blas_store), shapes another process chose on this
    machine take its choice too, and the shapes timed here are added to the file. Returns {shape_of(key): {name: µs}}
    ("cublas", "cublaslt", "algoN" for the heuristic's N-th, "fitMxN/algoN" for its N-th with tile M x N,
    `_algorithms`) for the log and reports; {} where the device is not CUDA or torch lacks cuBLASLt."""
    weights = list(weights)
    if not weights or not _can_time(weights[0]):
        return {}
    machine = _machine(weights[0].device) if store else ""
    stored = blas_store.load(store, machine) if store else {}
    timings, timed, restored, new, start = {}, 0, 0, {}, time.perf_counter()
    for m in sorted(set(rows)):
        for w in weights:
            key = _key(m, w, accumulate)
            if key not in _timings and _restore(key, stored.get(_entry_name(key))):
                restored += 1
            elif key not in _timings:
                medians, candidates = _time_all(m, w, rounds, calls, accumulate)
                _timings[key] = medians
                _chosen[key] = "cublaslt" if _lt_wins(medians) else "cublas"
                best = min((n for n in medians if n in candidates), key=medians.get, default=None)
                if best is not None and medians[best] <= MARGIN * medians[_chosen[key]]:
                    _algos[key] = (best, candidates[best])
                timed += 1
                new[_entry_name(key)] = _entry(key)
            timings[shape_of(key)] = _timings[key]
    if store and new:
        blas_store.save(store, machine, new)
    lt = [k for k, v in timings.items() if _lt_wins(v)]
    algos = {k: name for k, name in choices().items() if k in timings and name not in LIBRARIES}
    secs = time.perf_counter() - start
    kind = "prefill products" if accumulate else "plain prefill products"
    kept = f", {restored} as chosen before in {store}" if restored else ""
    logger.info(
        "cuBLASLt for %d of %d %s (%d timed now in %.1f s%s): %s", len(lt), len(timings), kind, timed, secs, kept, lt
    )
    if algos:
        logger.info("cuBLASLt algorithms chosen by timing: %s", algos)
    return timings


def _machine(device: torch.device) -> str:
    return blas_store.machine(device, lt_matmul.version() if lt_matmul.available() else None)


def _entry_name(key: tuple) -> str:
    """A shape's name in blas_store's file: `400x4096x11008 bfloat16 add` (into the residual) or `... plain`."""
    rows, n, k, dtype, _, accumulate = key
    return f"{rows}x{n}x{k} {str(dtype).removeprefix('torch.')} {'add' if accumulate else 'plain'}"


def _entry(key: tuple) -> dict:
    """What blas_store keeps of a shape's choice: the library, the algorithm's name and bytes (or None), the medians."""
    name, cand = _algos.get(key, (None, None))
    return {
        "library": _chosen[key],
        "algo": name,
        "bytes": None if cand is None else bytes(cand.algo).hex(),
        "us": _timings[key],
    }


def _restore(key: tuple, entry: object) -> bool:
    """Take a kept entry as this shape's choice; False (the shape is timed) where there is none, it is malformed (the
    two libraries' medians among them), or cuBLASLt's check refuses its algorithm for the shape here."""
    if not isinstance(entry, dict) or entry.get("library") not in LIBRARIES or not isinstance(entry.get("us"), dict):
        return False
    try:
        medians = {str(name): float(us) for name, us in entry["us"].items()}
    except (TypeError, ValueError):
        return False
    if not set(LIBRARIES) <= set(medians):  # `choose` compares the two libraries' medians of every shape
        return False
    algo = None
    if entry.get("algo") is not None:
        rows, n, k, dtype, _, _ = key
        try:
            cand = lt_matmul.product(rows, n, k, dtype).restore(bytes.fromhex(entry["bytes"]))
        except (lt_matmul.CublasLtError, ValueError, TypeError) as exc:
            logger.info("timing %s again: its kept algorithm is refused here (%s)", shape_of(key), exc)
            return False
        algo = (str(entry["algo"]), cand)
    _timings[key] = medians
    _chosen[key] = entry["library"]
    if algo is not None:
        _algos[key] = algo
    return True


def _lt_wins(medians: dict[str, float]) -> bool:
    return medians["cublaslt"] <= MARGIN * medians["cublas"]


def _time_all(m: int, w: torch.Tensor, rounds: int, calls: int, accumulate: bool) -> tuple[dict[str, float], dict]:
    """Median µs of r += x @ w.T (or r = x @ w.T) with `m` rows by each library and, from ALGORITHM_ROWS rows, by the
    finalists of cuBLASLt's algorithms, alternated `rounds` times; and those algorithms by name."""
    x = torch.randn(m, w.shape[1], device=w.device, dtype=w.dtype)
    r = torch.zeros(m, w.shape[0], device=w.device, dtype=w.dtype)
    fns = {lib: functools.partial(_library_product, lib, r, x, w, accumulate) for lib in LIBRARIES}
    candidates = _algorithms(m, w) if m >= ALGORITHM_ROWS else {}
    if candidates:
        prod = lt_matmul.product(m, w.shape[0], w.shape[1], w.dtype)
        runs = {name: functools.partial(prod.run, c, r, x, w, accumulate) for name, c in candidates.items()}
        screen = {name: _time_us(fn, SCREEN_CALLS) for name, fn in runs.items()}
        fns.update({name: runs[name] for name in sorted(screen, key=screen.get)[:FINALISTS]})
    us: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(rounds):
        for name in list(fns) if i % 2 == 0 else list(reversed(fns)):
            us[name].append(_time_us(fns[name], calls))
    return {name: round(statistics.median(v), 2) for name, v in us.items()}, candidates


def _algorithms(m: int, w: torch.Tensor) -> dict[str, lt_matmul.Candidate]:
    """cuBLASLt's ranked algorithms for this product, with those it ranks at the other prefill row counts that can
    run it (lt_matmul.Product.candidates), and the fitted tiles configured from the first FIT_BASES of them
    (`_fitted`); {} where cuBLASLt cannot be called."""
    if not lt_matmul.available() or w.dtype not in (torch.float16, torch.bfloat16):
        return {}
    prod = lt_matmul.product(m, w.shape[0], w.shape[1], w.dtype)
    cands = prod.candidates(borrow_rows=BORROW_ROWS)
    sms = torch.cuda.get_device_properties(w.device).multi_processor_count
    return {f"algo{c.rank}": c for c in cands} | _fitted(prod, cands, sms)


def _fitted(prod: lt_matmul.Product, cands: list[lt_matmul.Candidate], sms: int) -> dict[str, lt_matmul.Candidate]:
    """{"fitMxN/algoR": candidate, "fitMxN/algoR/c1": the same without a cluster, ".../k1": without a split-K}: for
    each tile of the first FIT_BASES candidates' algorithms that fits the product in whole waves (lt_tiles.fitted),
    copies of those candidates (the heuristic's rank R) and of the first candidate of the list whose own tile is as
    wide on the weight's side (cuBLASLt took gate/up's 256 x 112 at 320 rows on an H200 only from candidates with
    256-wide tiles, perf-notes v85), each with its cluster shape and with none, where cuBLASLt's check accepts it: with
    the base's stages, or else with the first of the automatic stage counts it takes. A base that splits K (some of
    llama-3.2-1b's down projection's first candidates on an H200) is copied with its split and also without one:
    `fitted` counts the waves of an unsplit product (perf-notes v86). Configurations that repeat one of the list's,
    or one made before, are left out."""
    out: dict[str, lt_matmul.Candidate] = {}
    seen = {bytes(c.algo) for c in cands}
    described = [(c, c.describe()) for c in cands]
    for base, info in described[:FIT_BASES]:
        algo_id = info.get("id")
        try:
            caps = _capabilities(algo_id, prod.dtype) if algo_id is not None else None
        except lt_matmul.CublasLtError:  # an algorithm that does not say what it takes: its list entries stay
            caps = None
        if caps is None:
            continue
        stages = [None, *(s for s in lt_tiles.STAGES_AUTO if s in caps["stages"])]
        for tile in lt_tiles.fitted(caps["tiles"], prod.m, prod.n, sms):
            width = lt_tiles.TILE[tile][0]
            alike = next(((c, d) for c, d in described if d.get("id") == algo_id and _width(d) == width), None)
            bases = [(base, info)] if alike is None or alike[0].rank < FIT_BASES else [(base, info), alike]
            for b, b_info in bases:
                unsplit = ({}, UNSPLIT) if b_info.get("split_k", 1) > 1 else ({},)
                for split in unsplit:
                    for cluster in ({}, {"cluster": lt_tiles.CLUSTER_1X1}):
                        cand = _configured(prod, b, {"tile": tile, **split, **cluster}, stages)
                        if cand is not None and bytes(cand.algo) not in seen:
                            seen.add(bytes(cand.algo))
                            tags = ("/c1" if cluster else "") + ("/k1" if split else "")
                            out[f"fit{lt_tiles.name(tile)}/algo{b.rank}{tags}"] = cand
    return out


def _configured(
    prod: lt_matmul.Product, base: lt_matmul.Candidate, config: dict, stages: list[int | None]
) -> lt_matmul.Candidate | None:
    """`base` copied with `config` and the first of `stages` (None: the base's own) that cuBLASLt's check accepts for
    the product, or None where it accepts none."""
    for st in stages:
        try:
            return prod.configured(base, **config, **({} if st is None else {"stages": st}))
        except lt_matmul.CublasLtError:
            continue
    return None


def _width(described: dict) -> int | None:
    """A described candidate's tile size on the weight's side (cuBLASLt's M), None where its tile is not known."""
    tile = lt_tiles.TILE.get(described.get("tile", 0))
    return tile[0] if tile else None


@functools.cache
def _capabilities(algo_id: int, dtype: torch.dtype) -> dict:
    return lt_matmul.capabilities(algo_id, dtype)


def _library_product(library: str, r: torch.Tensor, x: torch.Tensor, w: torch.Tensor, accumulate: bool) -> None:
    with _switch, using(library):
        if accumulate:
            r.addmm_(x, w.t())
        else:
            torch.mm(x, w.t(), out=r)


def describe(shape: tuple) -> dict | None:
    """The cuBLASLt algorithm chosen for `shape` (shape_of: (rows, n, k), or with "plain"), as lt_matmul describes it
    with its `choice` name, or None."""
    for key, (name, algo) in _algos.items():
        if shape_of(key) == tuple(shape):
            return {"choice": name, **algo.describe()}
    return None


def choices() -> dict:
    """{shape_of(key): library} for every shape chosen so far (the algorithm's name, `choose`, where one was)."""
    return {shape_of(key): (_algos[key][0] if key in _algos else lib) for key, lib in _chosen.items()}


def forget() -> None:
    """Drop every choice and its timings (tests)."""
    _chosen.clear()
    _algos.clear()
    _timings.clear()


def _time_us(fn, calls: int) -> float:
    """Median microseconds of fn()'s GPU work over `calls` calls, each after a read of other memory (tune_timing)."""
    return tune_timing.time_after_clean_reads(fn, calls) * 1e3


def _can_time(w: torch.Tensor) -> bool:
    return w.device.type == "cuda" and _has_cublaslt()


def _has_cublaslt() -> bool:
    try:
        with _switch, using("cublaslt"):
            return True
    except RuntimeError:  # "Cannot set preferred backend to cuBLASLt if PyTorch has not been compiled with cuBLASLt"
        return False
