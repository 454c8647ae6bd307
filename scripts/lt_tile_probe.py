"""cuBLASLt configurations outside its heuristic's list, on the prefill products that add into the residual (perf-notes
v79). At 400 rows llama-2-7b's output and down projections (N = 4096) run one wave of 128 x 128 tiles, which cover
512 rows for 400; cuBLASLt's Hopper kernels also take tiles whose token side fits the row count (128 x 104 covers
416), but its heuristic never ranks them. This probe lists every algorithm id (lt_matmul.algorithm_ids), configures
each with every tile whose grid is close to one wave and every stage count it takes, keeps what cuBLASLt's check
accepts, screens them by a few back-to-back calls, tries cluster shapes, split-K, swizzling and each of the algorithm's
custom options (opaque kernel variants that the heuristic pairs with cluster shapes on Hopper) on the best, and
times the finalists against cuBLAS, torch's cuBLASLt path and the heuristic's list after a read of other memory, by
median (tune_timing), in alternating rounds, each checked against a float32 product.

Usage: PYTHONPATH=src:scripts python3 scripts/lt_tile_probe.py --out FILE [--rows 400] [--shapes wo,w_down]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from lt_algo_probe import SHAPES, lib_fn
from skinny_bench import write_rows

from rollgraph import lt_matmul
from rollgraph.blas_choice import BORROW_ROWS
from rollgraph.lt_tiles import STAGES_AUTO, TILE
from rollgraph.lt_tiles import name as tile_name
from rollgraph.tune_timing import time_after_clean_reads

CLUSTERS = {"1x1x1": 2, "2x1x1": 3, "1x2x1": 5, "2x2x1": 6}


def close_to_a_wave(tile: int, m: int, n: int, sms: int) -> bool:
    """Whether `tile` splits r[m, n] into about one or two waves with little padding on either side."""
    if tile not in TILE:
        return tile == 0
    tn, tm = TILE[tile]  # cuBLASLt's M is our n (the weight's rows), its N our m (the prompt's rows)
    if tn < 64 or tm < 32:
        return False
    ctas = math.ceil(n / tn) * math.ceil(m / tm)
    padding = math.ceil(m / tm) * tm / m * math.ceil(n / tn) * tn / n
    return padding <= 1.12 and sms // 2 <= ctas <= 2 * sms


def quick_us(prod, cand, r, x, w, calls: int = 6) -> float:
    """Mean µs of `calls` back-to-back runs after one (a screen, not a measurement)."""
    prod.run(cand, r, x, w)
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(calls):
        prod.run(cand, r, x, w)
    b.record()
    b.synchronize()
    return a.elapsed_time(b) * 1e3 / calls


def search(prod, r, x, w, sms: int, budget_s: float, log) -> dict[str, tuple]:
    """{name: (candidate, config, screen µs)} of every configuration cuBLASLt accepts and that ran. Each algorithm's
    tiles are tried from its defaults, and from a copy of each of the heuristic's candidates of that algorithm (its
    cluster shape and inner shape kept), with only the tile and stages changed."""
    m, n = prod.m, prod.n
    found: dict[str, tuple] = {}
    refused: dict[str, int] = {}
    t0 = time.perf_counter()
    caps = {}
    for algo_id in lt_matmul.algorithm_ids(prod.dtype):
        try:
            caps[algo_id] = lt_matmul.capabilities(algo_id, prod.dtype)
        except lt_matmul.CublasLtError as e:
            refused[f"capabilities: {e}"] = refused.get(f"capabilities: {e}", 0) + 1
    heur = prod.candidates(32, BORROW_ROWS)
    bases: list[tuple[str, int, object]] = [(f"a{i}", i, i) for i in caps]
    for c in heur:
        d = c.describe()
        if d.get("id") in caps:
            bases.append((f"h{c.rank}", d["id"], c))
    log(f"  {len(caps)} algorithms, {len(heur)} heuristic candidates: " + "; ".join(describe(c) for c in heur[:12]))

    def try_config(label: str, base, algo_id: int, config: dict) -> None:
        try:
            cand = prod.configured(base, **config)
            us = quick_us(prod, cand, r, x, w)
        except lt_matmul.CublasLtError as e:
            reason = str(e).split(" returned")[0] + " " + str(e).split()[-1]
            refused[reason] = refused.get(reason, 0) + 1
            return
        name = label + "/" + "/".join(f"{k}{tile_name(v) if k == 'tile' else v}" for k, v in config.items())
        found[name] = (cand, (algo_id, config), us)

    for label, algo_id, base in bases:
        cap = caps[algo_id]
        tiles = [t for t in cap["tiles"] if close_to_a_wave(t, m, n, sms)]
        stages = [s for s in cap["stages"] if s in STAGES_AUTO] or cap["stages"][:6] or [0]
        for tile in tiles:
            for st in stages:
                if time.perf_counter() - t0 > budget_s:
                    log(f"  search budget spent; refused: {refused}")
                    return found
                try_config(label, base, algo_id, {"tile": tile, "stages": st})
    log(f"  refused: {refused}")
    best = sorted(found.items(), key=lambda kv: kv[1][2])[:16]
    for name, (cand, (algo_id, _config), _us) in best:
        cap = caps[algo_id]
        variants = [{"cluster": c} for c in CLUSTERS.values()]
        if cap["split_k"]:
            variants += [
                {"split_k": sk, "reduction": red} for sk in (2, 3, 4) for red in (1, 2, 4) if cap["reductions"] & red
            ]
        if cap["swizzle"]:
            variants.append({"swizzle": 1})
        variants += [{"custom": c} for c in range(cap.get("custom_max", 0) + 1)]  # the kernel's own variants
        for v in variants:
            try_config(name, cand, algo_id, v)
    return found


def describe(c) -> str:
    d = c.describe()
    tile = tile_name(d.get("tile", 0))
    return f"h{c.rank}=a{d.get('id')}/{tile}/s{d.get('stages')}/c{d.get('cluster')}/k{d.get('split_k')}"


def screen_clean(prod, cands: dict, r, x, w, calls: int = 5) -> dict[str, float]:
    return {key: time_after_clean_reads(lambda c=c: prod.run(c, r, x, w), calls) * 1e3 for key, c in cands.items()}


def probe(name: str, m: int, n: int, k: int, accumulate: bool, finalists: int, budget_s: float, log) -> dict:
    torch.manual_seed(m)
    t0 = time.perf_counter()
    dev, dt = torch.device("cuda"), torch.bfloat16
    w = torch.randn(n, k, device=dev, dtype=dt) * 0.02
    x = torch.randn(m, k, device=dev, dtype=dt)
    r0 = torch.randn(m, n, device=dev, dtype=dt)
    want = ((r0.float() if accumulate else 0) + x.float() @ w.float().t()).to(dt).float()
    prod = lt_matmul.product(m, n, k, dt)
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    r = r0.clone()
    found = search(prod, r, x, w, sms, budget_s, log)
    quick = {key: v[2] for key, v in found.items()}
    # back-to-back screening ranks differently from the clean timing that predicts the step (v65): the best 48 of it
    # are screened again after clean reads
    top = sorted(quick, key=quick.get)[:48]
    screen = {key: round(v, 2) for key, v in screen_clean(prod, {k: found[k][0] for k in top}, r, x, w).items()}
    heur_list = prod.candidates(32, BORROW_ROWS)
    heur = {f"heur{c.rank}": c for c in heur_list}
    heur_screen = screen_clean(prod, heur, r, x, w)
    fns = {"cublas": lib_fn("cublas", accumulate), "cublaslt": lib_fn("cublaslt", accumulate)}
    for key in sorted(heur_screen, key=heur_screen.get)[:3]:
        fns[key] = lambda r, x, w, c=heur[key]: prod.run(c, r, x, w, accumulate)
    for key in sorted(screen, key=screen.get)[:finalists]:
        fns[key] = lambda r, x, w, c=found[key][0]: prod.run(c, r, x, w, accumulate)
    errors = {}
    for key, fn in fns.items():
        rr = r0.clone()
        fn(rr, x, w)
        torch.cuda.synchronize()
        errors[key] = round((rr.float() - want).abs().max().item(), 4)
    times: dict[str, list[float]] = {key: [] for key in fns}
    for rnd in range(3):
        for key in list(fns) if rnd % 2 == 0 else list(reversed(fns)):
            times[key].append(time_after_clean_reads(lambda fn=fns[key]: fn(r, x, w)) * 1e3)
    med = {key: round(statistics.median(v), 2) for key, v in times.items()}
    fastest = min(med, key=med.get)
    return {
        "product": name,
        "rows": m,
        "n": n,
        "k": k,
        "configs_accepted": len(found),
        "clean_us": dict(sorted(med.items(), key=lambda kv: kv[1])),
        "max_abs_error": errors,
        "fastest": fastest,
        "tflops_fastest": round(2 * m * n * k / med[fastest] / 1e6, 1),
        "screen_top": dict(sorted(screen.items(), key=lambda kv: kv[1])[:40]),
        "heuristic_screen": {key: round(v, 2) for key, v in sorted(heur_screen.items(), key=lambda kv: kv[1])},
        "heuristic": [describe(c) for c in heur_list],
        "quick_top": {key: round(quick[key], 2) for key in top},
        "finalist_configs": {key: found[key][1] for key in fns if key in found},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rows", default="400")
    p.add_argument("--shapes", default="w_down,wo")
    p.add_argument("--finalists", type=int, default=8)
    p.add_argument("--budget-s", type=float, default=60.0, help="seconds of configuration search per shape")
    a = p.parse_args()
    out = []

    def log(msg: str) -> None:
        print(msg, flush=True)

    for name in a.shapes.split(","):
        n, k, accumulate = SHAPES[name]
        for m in [int(s) for s in a.rows.split(",")]:
            log(f"{name} rows={m}")
            row = probe(name, m, n, k, accumulate, a.finalists, a.budget_s, log)
            out.append(row)
            log(
                f"{name} rows={m}: {row['configs_accepted']} configs; clean µs {row['clean_us']}; "
                f"errors {row['max_abs_error']}; {row['seconds']} s"
            )
            write_rows(a.out, out)


if __name__ == "__main__":
    main()
