"""Where a decode step's time goes, and a prefill's: kernel count and device time by kernel, for each mode, from
torch.profiler.

Usage: PYTHONPATH=src python scripts/profile_decode.py --model llama-3.2-1b --modes graphs,compile+graphs --out DIR
       [--prefill 10,400]   (also profile one prefill at each of these prompt lengths)
Writes DIR/profile_<model>.json and prints a short table. Replayed graphs show their kernels to the profiler.
A mode is a pool_figures spec (MODE[/OPTION...]). With --host the decode profile also records the host and lists its
top items by self CPU time a token (perf-notes v73): where a mode without graphs spends the time it launches in. The
profiler's own host cost inflates that run's ITL, so compare host items between modes, not with unprofiled ITL.
"""

from __future__ import annotations

import argparse
import collections
import json

import torch
from pool_figures import engine_config, set_knobs
from torch.profiler import ProfilerActivity, profile

from rollgraph.config import ModelConfig
from rollgraph.engine import Engine
from rollgraph.models import load_model
from rollgraph.params import GenerationParams

STEPS = 32


def kernel_table(prof) -> tuple[int, float, list]:
    """(kernels, device us, every kernel by device time, most first) of a profile."""
    by_name: dict[str, list[float]] = collections.defaultdict(list)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            by_name[ev.name].append(ev.device_time_total)
    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))
    return (
        sum(len(v) for v in by_name.values()),
        sum(sum(v) for v in by_name.values()),
        [{"name": k[:90], "calls": len(v), "us": round(sum(v), 1)} for k, v in top],
    )


def timeline(prof) -> dict:
    """How the kernels of a profile sit in time: their span, the idle time between them (gaps in the union of
    their intervals), and how many started before the one before them had ended. Programmatic dependent launch
    (perf-notes v36) shows as overlap: a kernel's programs are scheduled, and wait, while the one before finishes, so
    its device time then counts that wait too, and the span and the gaps are what to compare."""
    spans = sorted(
        (ev.time_range.start, ev.time_range.end)
        for ev in prof.events()
        if ev.device_type == torch.autograd.DeviceType.CUDA
    )
    if not spans:
        return {}
    gaps, overlapping, reach = 0.0, 0, spans[0][1]
    for start, end in spans[1:]:
        gaps += max(0.0, start - reach)
        overlapping += start < reach
        reach = max(reach, end)
    return {"span_us": round(reach - spans[0][0], 1), "gap_us": round(gaps, 1), "overlapping": overlapping}


def profile_prefill(engine: Engine, n: int) -> dict:
    """One prefill (a request for one token) of an n-token prompt, after two unprofiled ones."""
    ids = tuple(range(3, 3 + n))
    for _ in range(2):
        for _ in engine.generate(GenerationParams(ids, 1)):
            pass
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        gen = engine.generate(GenerationParams(ids, 1))
        for _ in gen:
            pass
        torch.cuda.synchronize()
    kernels, us, top = kernel_table(prof)
    return {
        "prompt": n,
        "kernels": kernels,
        "device_us": round(us, 1),
        "timeline": timeline(prof),
        "ttft_ms": gen.result.prefill_ms,
        "top": top,
    }


def host_table(prof, tokens: int) -> list:
    """The host's top 15 items of a profile by self CPU time, in µs a token."""
    top = sorted(prof.key_averages(), key=lambda a: -a.self_cpu_time_total)[:15]
    return [
        {"name": a.key[:90], "calls": a.count, "us_per_token": round(a.self_cpu_time_total / tokens, 1)} for a in top
    ]


def profile_mode(name: str, mode: str, prefill: list[int], host: bool = False) -> dict:
    """`mode` is a pool_figures spec: MODE[/OPTION...]; `host`: record the host too (host_table)."""
    torch._dynamo.reset()
    set_knobs(mode)
    engine = Engine(load_model(ModelConfig(name, dtype="bfloat16")), engine_config(mode))
    engine.warm_up(progress=False)
    ids = tuple(range(3, 103))
    for _ in engine.generate(GenerationParams(ids, STEPS + 1)):
        pass
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if host else [ProfilerActivity.CUDA]
    with profile(activities=activities) as prof:
        gen = engine.generate(GenerationParams(ids, STEPS + 1))
        for _ in gen:
            pass
        torch.cuda.synchronize()
    kernels, total_us, top = kernel_table(prof)
    from torch._dynamo.utils import counters

    return {
        "mode": mode,
        # Inductor's work in this process so far: FX graph cache hits and misses, and how many configs coordinate
        # descent benchmarked (0 on a warm cache when the tuned configs were found there).
        "inductor_counters": {k: int(v) for k, v in counters["inductor"].items() if "cache" in k or "coordesc" in k},
        "kernels_per_token": round(kernels / (STEPS + 1), 1),
        "device_us_per_token": round(total_us / (STEPS + 1), 1),
        "timeline": timeline(prof),  # of all STEPS + 1 tokens together, the idle time between requests' steps too
        "itl_median_ms": sorted(gen.result.step_ms)[len(gen.result.step_ms) // 2],
        "top": top,
        "host_top": host_table(prof, STEPS + 1) if host else None,
        "prefill": [profile_prefill(engine, n) for n in prefill],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="llama-3.2-1b")
    p.add_argument("--modes", default="graphs,compile+graphs")
    p.add_argument("--out", default=".")
    p.add_argument("--prefill", default="", help="prompt lengths whose prefill to profile too, e.g. 10,400")
    p.add_argument("--host", action="store_true", help="record the host in the decode profile too (v73)")
    a = p.parse_args()
    prefill = [int(n) for n in a.prefill.split(",") if n]
    rows = [profile_mode(a.model, m, prefill, a.host) for m in a.modes.split(",")]
    with open(f"{a.out}/profile_{a.model}.json", "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(), "model": a.model, "modes": rows}, f, indent=1)
    for r in rows:
        print(
            f"{a.model} {r['mode']}: {r['kernels_per_token']} kernels/token, {r['device_us_per_token']} us device "
            f"time/token, ITL median {r['itl_median_ms']:.3f} ms, inductor {r['inductor_counters']}, "
            f"timeline {r['timeline']}"
        )
        for t in r["top"][:12]:
            print(f"   {t['us']:9.1f} us {t['calls']:6d}x  {t['name']}")
        for t in r["host_top"] or []:
            print(f"   host {t['us_per_token']:9.1f} us/token {t['calls']:6d}x  {t['name']}")
        for pf in r["prefill"]:
            print(
                f"  prefill {pf['prompt']}: {pf['kernels']} kernels, {pf['device_us']} us device (a decode step "
                f"launched ahead included), TTFT {pf['ttft_ms']} ms, timeline {pf['timeline']}"
            )
            for t in pf["top"][:10]:
                print(f"   {t['us']:9.1f} us {t['calls']:6d}x  {t['name']}")


if __name__ == "__main__":
    main()
