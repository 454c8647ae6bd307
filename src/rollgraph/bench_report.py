"""What `rollgraph bench` measured, summarized: statistics, floor ratios, the results JSON, markdown tables, a plot.

No torch here, and nothing measured here: `Sample`s come from the bench (through a server) or from `peers`
(transformers in-process), and everything below is arithmetic on them. Statistics are numpy-free; P99 interpolates
linearly between order statistics (numpy's default), so a handful of samples still gives a defined figure. Latency
key names follow vLLM's `benchmark_serving` (`median_ttft_ms`, `p99_itl_ms`, ...); a ratio is a latency divided by
its floor (`floors.Floors`): TTFT by the prefill floor of its prompt length, ITL and TPOT by the decode floor.

results.json, as `build_results` makes it (null wherever a figure is unknown, e.g. every floor on CPU):
    schema, date, command, argv, model, dtype, device, gpu, torch, transformers, python, rollgraph, out,
    settings: the BenchSettings fields,
    machine: device, cuda, copy_bandwidth (B/s), matmul_flops, matmul_dtype, versions,
             host {wake_after_1ms_us {median, p90}, parse_400_tokens_us} (host_probe.py),
    floors: copy_bandwidth_GBps, matmul_TFLOPs, weight_bytes, params, decode_floor_ms, prefill_floor_ms {"10": ms},
    token_agreement: {mode: share of its requests whose tokens equal the first mode's for the same prompt},
    token_prefix: {mode: median count of leading tokens equal to the first mode's for the same prompt},
    modes: {mode: {mode, kind (server | peer), status (ok | failed | skipped), error,
                   startup_s, capture_s, graphs, graph_bytes, memory_after_start_bytes, memory_peak_bytes, ...,
                   graphs_used, sources, {mean,median,p99}_{ttft,itl,tpot,e2el}_ms,
                   {mean,median,p99}_{ttft,itl,tpot}_floor_ratio, cpu_steal_pct (the share of the host's CPU
                   time the hypervisor stole during the requests, host_probe.py), completed, total_output_tokens,
                   num_itl,
                   rows: [{prompt_len, the same statistics, prefill_floor_ms, graphs_used, sources,
                           prefix_reused_tokens, memory_reserved_bytes}]}}
"""

from __future__ import annotations

import math
import statistics
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from rollgraph import __version__
from rollgraph.floors import Floors, Machine

METRICS = ("ttft", "itl", "tpot", "e2el")
STATS = ("mean", "median", "p99")
RATIO_METRICS = ("ttft", "itl", "tpot")
GRAPH_MODES = ("graphs", "compile+graphs", "seed")
PEER_MODES = ("hf-eager", "hf-static-compile")
"""transformers' own generation, measured by `rollgraph.peers` (see its docstring)."""

_CATEGORY = {"pre": "pre", "background": "later", "inline": "later", "eager": "eager", "compiled": "compiled"}


@dataclass(frozen=True)
class Sample:
    """One measured request, timed on the client side (or around `generate` for a peer)."""

    prompt_len: int
    repeat: int
    ttft_ms: float
    """Request sent -> first token received."""
    itl_ms: tuple[float, ...]
    """Gaps between consecutive tokens received (tokens - 1 of them)."""
    e2el_ms: float
    """Request sent -> final frame received."""
    output_tokens: tuple[int, ...]
    sources: dict[str, int] = field(default_factory=dict)
    """Steps per source, from the final frame's `graphs`: pre, background, inline, eager, compiled."""
    prefix_reused: int = 0
    server_ttft_ms: float | None = None
    """The server's own TTFT (queue + prefill), from the final frame's timings; None for a peer."""
    server_decode_ms: float | None = None
    """The server's own mean decode step time (engine thread), from the final frame; None for a peer."""
    server_transport_ms: dict | None = None
    """The connection's time around the engine (frame_to_queue_ms, first_token_out_ms); None for a peer."""
    cpu_steal_ms: float | None = None
    """CPU time the hypervisor stole from this machine during the request, summed over its CPUs (host_probe.py)."""
    cpu_all_ms: float | None = None
    """All CPU time that passed during the request, summed over the CPUs: the steal's denominator."""
    client_cpu_ms: float | None = None
    """The measuring thread's own time on a CPU during the request (host_probe.sched_fields)."""
    client_runqueue_ms: float | None = None
    """How long the measuring thread was runnable but waiting for a CPU during the request: a late interval the
    server did not cause, with this near zero, was not the client's scheduling inside the guest."""

    @property
    def tokens(self) -> int:
        return len(self.output_tokens)

    @property
    def tpot_ms(self) -> float | None:
        """Time per output token after the first, vLLM's TPOT; None for a one-token request."""
        return (self.e2el_ms - self.ttft_ms) / (self.tokens - 1) if self.tokens > 1 else None

    @classmethod
    def from_dict(cls, d: dict) -> Sample:
        return cls(**{**d, "itl_ms": tuple(d["itl_ms"]), "output_tokens": tuple(d["output_tokens"])})


@dataclass
class ModeRun:
    """Everything one mode produced: its samples, and what its server (or peer process) reported."""

    mode: str
    kind: str
    """server (a `rollgraph serve` subprocess) or peer (transformers, `rollgraph.peers`)."""
    status: str = "ok"
    """ok, failed (`error` says why; samples up to the failure are kept) or skipped."""
    error: str | None = None
    samples: list[Sample] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    """startup_s, capture_s, graphs, graph_bytes, memory_* (bytes or None), memory_by_length, weight_bytes..."""


# ---------------------------------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between order statistics; raises ValueError for no values."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> dict[str, float | None]:
    """mean, median and p99 of `values` (all None for no values)."""
    if not values:
        return dict.fromkeys(STATS)
    return {"mean": statistics.fmean(values), "median": statistics.median(values), "p99": percentile(values, 99)}


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def metric_values(samples: Iterable[Sample]) -> dict[str, list[float]]:
    """Per-metric values: ttft/tpot/e2el one per request, itl pooled over requests."""
    samples = list(samples)
    return {
        "ttft": [s.ttft_ms for s in samples],
        "itl": [gap for s in samples for gap in s.itl_ms],
        "tpot": [s.tpot_ms for s in samples if s.tpot_ms is not None],
        "e2el": [s.e2el_ms for s in samples],
    }


def ratio_values(samples: Iterable[Sample], floors: Floors) -> dict[str, list[float]]:
    """Latencies over their floors; empty lists where a floor is unknown."""
    samples, decode = list(samples), floors.decode_ms
    out: dict[str, list[float]] = {m: [] for m in RATIO_METRICS}
    for s in samples:
        prefill = floors.prefill_ms(s.prompt_len)
        if prefill:
            out["ttft"].append(s.ttft_ms / prefill)
        if decode:
            out["itl"] += [gap / decode for gap in s.itl_ms]
            if s.tpot_ms is not None:
                out["tpot"].append(s.tpot_ms / decode)
    return out


def metric_block(samples: Sequence[Sample], floors: Floors) -> dict:
    """vLLM-named latency statistics, floor ratios and counts for a set of requests."""
    block: dict = {}
    for name, values in metric_values(samples).items():
        for stat, v in summarize(values).items():
            block[f"{stat}_{name}_ms"] = _round(v)
    for name, values in ratio_values(samples, floors).items():
        for stat, v in summarize(values).items():
            block[f"{stat}_{name}_floor_ratio"] = _round(v)
    server = [s.server_ttft_ms for s in samples if s.server_ttft_ms is not None]
    block["median_server_ttft_ms"] = _round(statistics.median(server)) if server else None
    server = [s.server_decode_ms for s in samples if s.server_decode_ms is not None]
    block["mean_server_decode_ms"] = _round(statistics.fmean(server)) if server else None
    block["cpu_steal_pct"] = steal_pct(samples)
    block["completed"] = len(samples)
    block["total_output_tokens"] = sum(s.tokens for s in samples)
    block["num_itl"] = sum(len(s.itl_ms) for s in samples)
    return block


def steal_pct(samples: Sequence[Sample]) -> float | None:
    """The share of all CPU time that was stolen during these requests, in percent; None where none was read."""
    read = [s for s in samples if s.cpu_steal_ms is not None and s.cpu_all_ms]
    if not read:
        return None
    return _round(100 * sum(s.cpu_steal_ms for s in read) / sum(s.cpu_all_ms for s in read))


# ---------------------------------------------------------------------------------------------------- graph labels


def request_label(sources: dict[str, int], uses_graphs: bool) -> str:
    """What served a request, as the original table's 'Graphs Used': one source, or Mixed."""
    kinds = {_CATEGORY.get(k, k) for k, n in sources.items() if n}
    if len(kinds) != 1:
        return "Mixed" if kinds else "None"
    kind = kinds.pop()
    fallback = " fallback" if uses_graphs else ""
    names = {"pre": "Pre-captured", "later": "Captured later", "eager": "Eager", "compiled": "Compiled"}
    return names[kind] if kind in ("pre", "later") else f"{names.get(kind, kind)}{fallback}"


def group_label(samples: Iterable[Sample], uses_graphs: bool) -> str:
    labels = {request_label(s.sources, uses_graphs) for s in samples}
    return labels.pop() if len(labels) == 1 else ("Mixed" if labels else "None")


def summed_sources(samples: Iterable[Sample]) -> dict[str, int]:
    total: Counter = Counter()
    for s in samples:
        total.update(s.sources)
    return dict(total)


# ---------------------------------------------------------------------------------------------------- results JSON


def mode_result(run: ModeRun, lengths: Sequence[int], floors: Floors) -> dict:
    """One mode's JSON: status, its server/peer figures, statistics over all its requests, and one row per length."""
    uses_graphs = run.mode in GRAPH_MODES
    memory_by_length = run.info.get("memory_by_length", {})
    rows = []
    for length in lengths:
        group = [s for s in run.samples if s.prompt_len == length]
        row = {"prompt_len": length, **metric_block(group, floors)}
        row["prefill_floor_ms"] = _round(floors.prefill_ms(length), 4)
        row["graphs_used"] = group_label(group, uses_graphs)
        row["sources"] = summed_sources(group)
        row["prefix_reused_tokens"] = sum(s.prefix_reused for s in group)
        row["memory_reserved_bytes"] = memory_by_length.get(length)
        rows.append(row)
    info = {k: v for k, v in run.info.items() if k != "memory_by_length"}
    return {
        "mode": run.mode,
        "kind": run.kind,
        "status": run.status,
        "error": run.error,
        **info,
        "graphs_used": group_label(run.samples, uses_graphs),
        "sources": summed_sources(run.samples),
        **metric_block(run.samples, floors),
        "rows": rows,
    }


def floors_result(floors: Floors, lengths: Sequence[int]) -> dict:
    return {
        "copy_bandwidth_GBps": _round(floors.copy_bandwidth and floors.copy_bandwidth / 1e9, 1),
        "matmul_TFLOPs": _round(floors.matmul_flops and floors.matmul_flops / 1e12, 1),
        "weight_bytes": floors.weight_bytes,
        "params": floors.params,
        "decode_floor_ms": _round(floors.decode_ms, 4),
        "prefill_floor_ms": {str(n): _round(floors.prefill_ms(n), 4) for n in lengths},
    }


def _paired_tokens(runs: Sequence[ModeRun]) -> dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]]:
    """Per mode, (its tokens, the first mode's) for each of its requests whose prompt the first mode also ran."""
    ok = [r for r in runs if r.samples]
    if not ok:
        return {}
    ref = {(s.prompt_len, s.repeat): s.output_tokens for s in ok[0].samples}
    return {
        run.mode: [(s.output_tokens, ref[k]) for s in run.samples if (k := (s.prompt_len, s.repeat)) in ref]
        for run in runs
    }


def token_agreement(runs: Sequence[ModeRun]) -> dict[str, float | None]:
    """Per mode, the fraction of requests whose greedy tokens equal the first mode's for the same prompt.
    Below 1.0 in half precision can be rounding (a near-tie in the logits); in float32 it is a bug."""
    return {
        mode: round(sum(a == b for a, b in pairs) / len(pairs), 4) if pairs else None
        for mode, pairs in _paired_tokens(runs).items()
    }


def _shared(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """How many leading tokens a and b have in common."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def token_prefix(runs: Sequence[ModeRun]) -> dict[str, float | None]:
    """Per mode, the median number of leading tokens its requests share with the first mode's for the same prompt.
    Where token_agreement is low, this says how far two paths go before a near-tie flips a token."""
    return {
        mode: statistics.median(_shared(a, b) for a, b in pairs) if pairs else None
        for mode, pairs in _paired_tokens(runs).items()
    }


def build_results(
    *, settings: dict, command: str, machine: Machine, floors: Floors, runs: Sequence[ModeRun], out: str, date: str
) -> dict:
    """The results JSON (shape in the module docstring)."""
    lengths = settings["prompt_lengths"]
    dtype = next((r.info["dtype"] for r in runs if r.info.get("dtype")), settings["dtype"])
    return {
        "schema": "rollgraph-bench/1",
        "date": date,
        "command": command,
        "argv": list(sys.argv),
        "model": settings["model"],
        "dtype": dtype,
        "device": machine.device,
        "gpu": machine.device if machine.cuda else None,
        "torch": machine.torch,
        "transformers": machine.transformers,
        "python": machine.python,
        "rollgraph": __version__,
        "out": out,
        "settings": settings,
        "machine": asdict(machine),
        "floors": floors_result(floors, lengths),
        "token_agreement": token_agreement(runs),
        "token_prefix": token_prefix(runs),
        "modes": {r.mode: mode_result(r, lengths, floors) for r in runs},
    }


def summary(results: dict) -> dict:
    """The compact last stdout line: per mode, median TTFT, median and P99 ITL, and their floor ratios."""
    keys = (
        "median_ttft_ms",
        "median_itl_ms",
        "p99_itl_ms",
        "median_ttft_floor_ratio",
        "median_itl_floor_ratio",
        "p99_itl_floor_ratio",
    )
    modes = {name: {"status": m["status"], **{k: m[k] for k in keys}} for name, m in results["modes"].items()}
    return {
        "model": results["model"],
        "device": results["device"],
        "decode_floor_ms": results["floors"]["decode_floor_ms"],
        "out": results["out"],
        "modes": modes,
    }
