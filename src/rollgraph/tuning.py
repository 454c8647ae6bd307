"""A fixed grid before inductor's coordinate descent, for the one-row matmuls of compiled decode.

Why: inductor tunes each generated kernel by coordinate descent, one field a step from one heuristic start, and stops
where no single step helps. For a decode step's matrix-vector products the landscape is flat to a few percent with
many local minima, so two cold processes of the same code end on different configs for every kernel, and a 7B
decode step lands anywhere in 4.93-5.23 ms of device time (perf-notes v18, v45, v48: the same down projection took
33.8 us in one process and 39.8 in the next). Here every such kernel first times the same grid of configs (XBLOCK x
R0_BLOCK x num_warps), takes the best after timing the leaders again, and the descent goes on from there: each start
compares the same candidates, so only the timing noise is left to differ (perf-notes v49).

Applies to reductions whose size hints are one output axis and one reduction axis of at least MIN_SIZE each: the
one-row products (and lm head), not the norms. The tuner's own timing function is used, so what is compared is what
inductor would have compared, and the result goes into inductor's cache like any tuned config. The hook patches
inductor's `CoordescTuner.autotune` (a runtime internal: `install()` checks its signature and leaves it alone when
it differs).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import statistics

logger = logging.getLogger(__name__)

ENABLED = True
"""Read at each tune; pool_figures option `no-grid` turns it off (inductor's descent alone, as before v49)."""
XBLOCKS = (1, 2, 4, 8)
R0_BLOCKS = (1024, 2048, 4096)
WARPS = (8, 16, 32)
"""The grid: 35 configs once the per-thread bounds below are applied. Of the configs two cold descents settled on for
7B's products (perf-notes v45), all but one (2 warps, a kernel the descent can still reach) lie inside it."""
PER_THREAD = (1, 64)
"""Bounds on XBLOCK · R0_BLOCK / threads: fewer elements than threads leaves threads idle, more than 64 spills."""
MIN_SIZE = 1024
"""Output and reduction lengths from which a kernel counts as a matrix-vector product (7B's smallest: 4096)."""
LEADERS = 4
"""Configs timed again after the first pass, each REPEATS more times, before the best is chosen."""
REPEATS = 2


def grid(size_hints: dict, baseline) -> list:
    """The configs to time first for a kernel with these size hints, starting from `baseline` (a triton.Config);
    [] where the kernel is not a one-row product."""
    if set(size_hints) != {"x", "r0_"} or min(size_hints.values()) < MIN_SIZE:
        return []
    if set(baseline.kwargs) != {"XBLOCK", "R0_BLOCK"}:
        return []
    out = []
    for xb, rb, warps in itertools.product(XBLOCKS, R0_BLOCKS, WARPS):
        per_thread = xb * rb / (32 * warps)
        if xb > size_hints["x"] or rb > size_hints["r0_"] or not PER_THREAD[0] <= per_thread <= PER_THREAD[1]:
            continue
        cfg = _copy(baseline)
        cfg.kwargs.update(XBLOCK=xb, R0_BLOCK=rb)
        cfg.num_warps = warps
        out.append(cfg)
    return out


def pick(func, configs: list) -> tuple[int | None, list[float]]:
    """(index of the fastest of `configs` by `func`, each config's time in milliseconds): every config once, then
    the LEADERS fastest REPEATS more times each, alternated; a leader's time is then its median."""
    times = [[_time(func, c)] for c in configs]
    order = sorted(range(len(configs)), key=lambda i: (times[i][0], i))
    leaders = [i for i in order[:LEADERS] if times[i][0] != float("inf")]
    if not leaders:
        return None, [t[0] for t in times]
    for _ in range(REPEATS):
        for i in leaders:
            times[i].append(_time(func, configs[i]))
    medians = [statistics.median(t) for t in times]
    return min(leaders, key=lambda i: (medians[i], i)), medians


def install() -> bool:
    """Have inductor's coordinate descent start from the grid's best config for one-row products (process-wide, once;
    idempotent). False where this torch's tuner does not look as expected."""
    try:
        from torch._inductor.runtime.coordinate_descent_tuner import CoordescTuner
    except ImportError:
        return False
    original = CoordescTuner.autotune
    if getattr(original, "_rollgraph_grid", False):
        return True
    params = list(inspect.signature(original).parameters)
    if params[:3] != ["self", "func", "baseline_config"]:
        logger.warning("inductor's coordinate descent has another signature (%s); its tune stays as it is", params)
        return False

    @functools.wraps(original)
    def autotune(self, func, baseline_config, baseline_timing=None, *args, **kwargs):
        configs = grid(getattr(self, "size_hints", None) or {}, baseline_config) if ENABLED else []
        best, times = pick(func, configs) if configs else (None, [])
        if best is not None:
            if hasattr(self, "cache_benchmark_result"):  # the descent then reads the grid's figures, not new draws
                for cfg, t in zip(configs, times, strict=True):
                    self.cache_benchmark_result(cfg, t)
            baseline_config, baseline_timing = configs[best], times[best]
        return original(self, func, baseline_config, baseline_timing, *args, **kwargs)

    autotune._rollgraph_grid = True
    CoordescTuner.autotune = autotune
    return True


def _copy(config):
    import copy

    return copy.deepcopy(config)


def _time(func, config) -> float:
    try:
        return float(func(config))
    except Exception as exc:  # a config the compiler or the device rejects is just not a candidate
        logger.debug("config %s failed: %s", config, exc)
        return float("inf")
