"""In-process figures for the graph pool: capture time and bytes per graph, decode ITL in graphs mode vs eager.

Usage: PYTHONPATH=src python scripts/pool_figures.py --models llama-3.2-1b,llama-2-7b --out DIR
Prints one JSON object per model and writes them to DIR/pool_figures.json. Speed is measured here, never asserted.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import torch

from rollgraph import blas_choice, llama, prefill_attention, sampling, silu_mul, tune_timing
from rollgraph import decode_attention as fused
from rollgraph import skinny_linear as skinny
from rollgraph.config import EngineConfig, ModelConfig, PoolConfig
from rollgraph.engine import Engine
from rollgraph.floors import measure_copy_bandwidth
from rollgraph.models import load_model
from rollgraph.params import GenerationParams

DEFAULT_SPLIT_AT = fused.SPLIT_AT
DEFAULT_SPLIT_ABOVE = fused.SPLIT_ABOVE


def itl(engine: Engine, prompt_len: int, new: int = 64, repeats: int = 3) -> dict:
    steps, ttft, sources = [], [], {}
    for r in range(repeats + 1):
        ids = [(7 * i + r) % 30000 + 3 for i in range(prompt_len)]
        gen = engine.generate(GenerationParams(tuple(ids), new))
        for _ in gen:
            pass
        if r:  # the first run is a warm-up
            steps += gen.result.step_ms
            ttft.append(gen.result.prefill_ms)
            sources = dict(gen.result.sources)
    steps.sort()
    return {
        "prompt": prompt_len,
        "ttft_ms": round(statistics.median(ttft), 3),
        "itl_median_ms": round(statistics.median(steps), 3),
        "itl_p99_ms": round(steps[int(0.99 * (len(steps) - 1))], 3),
        "sources": sources,
    }


def engine_config(spec: str) -> EngineConfig:
    """MODE[/OPTION...]: sdpa or triton (decode attention), share or private (one memory pool for all prefill graphs,
    the default since v7, or one per graph),
    pbN (prefill buckets the powers of two 16, 32, ... up to N, longer prompts without a graph; the default since v17
    is EngineConfig's),
    mm-torch or mm-triton (few-row matmuls: cuBLAS or skinny_linear),
    splitN (the fused decode attention's split buckets walk at most N positions a piece, 512 by default, so more
    pieces than SPLITS where a bucket is longer than SPLITS · N: an experiment knob, set process-wide for this spec
    and put back after it),
    no-pa (prefill's RoPE, cache write and attention as separate kernels instead of prefill_attention.py's one Triton
    kernel, on by default since v23: likewise a knob; `pa`, its name while it was off by default, is still taken),
    am-aten (ATen's single-block argmax instead of sampling.argmax_rows's two reductions: likewise a knob),
    no-res (the residual added in a kernel of its own after skinny_linear, not in its epilogue: likewise a knob),
    no-gate (SiLU · up as kernels of their own after the gate/up projection, not in its epilogue: likewise a knob),
    no-norm (the norms by F.rms_norm apart, not carried in skinny_linear's sums of squares, perf-notes v35: likewise
    a knob),
    no-halves (compiled decode's gate/up projection as one product over the stacked weight, SiLU · up then fused into
    the down projection by inductor, as before v47: likewise a knob),
    no-clean (inductor times the configs it tunes its own way, not by tune_timing.py's, as before v50: likewise a
    knob),
    no-addmm (with more rows than skinny_linear takes, the residual added in a kernel of its own after cuBLAS's
    product, not in its epilogue by addmm, as before v55: likewise a knob),
    no-lt (every such product through cuBLAS's default, none through cuBLASLt where start-up timed it faster, as
    before v57: likewise a knob),
    no-rot (long prompts' keys rotated by the attention kernel as it loads them, not once by a kernel of their
    own, as before v67: likewise a knob),
    no-algo (no algorithm of cuBLASLt's list where start-up timed one faster, only the chosen library, as before
    v65: likewise a knob),
    no-last (the last layer's output projection and MLP over every prefill row, as before v68: likewise a knob),
    no-silu (SiLU · up past the few-row kernels as PyTorch's two kernels, not silu_mul.py's one, as before v70:
    likewise a knob),
    inline (`compile` mode's decode attention as a Triton op whose launches inductor makes, not the opaque op, v73;
    off by default until timed: likewise a knob),
    one-prog (KV buckets up to 512 positions decoded by one attention program per KV head, not split 8 ways, as
    before v81: likewise a knob),
    rot64 (long prompts' keys rotated by `_rotate_keys` 64 positions a program, not 8, as before v84: likewise a
    knob),
    no-plain (prefill's plain products, QKV and gate/up, through torch's own product, none through the cuBLASLt
    configuration start-up timed faster, as before v85: likewise a knob),
    plusN (prefill bucket N added to EngineConfig's default ones).
    (Inductor's coordinate-descent tuning, option `cdt` in v4's figures, is now always on in compile modes.)"""
    mode, *opts = spec.split("/")
    kw: dict = {}
    for opt in opts:
        if opt in ("sdpa", "triton"):
            kw["attention"] = opt
        elif opt == "share":
            kw["pool"] = PoolConfig(share_prefill_pool=True)
        elif opt == "private":
            kw["pool"] = PoolConfig(share_prefill_pool=False)
        elif opt.startswith("pb") and opt[2:].isdigit():
            kw["prefill_buckets"] = tuple(1 << i for i in range(4, int(opt[2:]).bit_length()))
        elif opt.startswith("plus") and opt[4:].isdigit():
            kw["prefill_buckets"] = tuple(sorted({*EngineConfig().prefill_buckets, int(opt[4:])}))
        elif opt in ("mm-torch", "mm-triton"):
            kw["matmul"] = opt[3:]
        elif opt.startswith("split") and opt[5:].isdigit():
            pass  # applied around the spec's run by split_at()
        elif opt in KNOBS:
            pass  # process-wide knobs, applied around the spec's run by set_knobs()
        else:
            raise SystemExit(f"unknown option {opt!r} in {spec!r}")
    return EngineConfig(mode=mode, **kw)


def split_at(spec: str) -> int:
    """The spec's splitN, or the module's default."""
    for opt in spec.split("/")[1:]:
        if opt.startswith("split") and opt[5:].isdigit():
            return int(opt[5:])
    return DEFAULT_SPLIT_AT


def figures(name: str, bandwidth: float, modes: list[str], repeats: int = 3, prompts=(10, 100, 400)) -> dict:
    out = {"model": name}
    for run, spec in enumerate(modes):
        label = spec if modes.count(spec) == 1 else f"{spec}#{modes[:run].count(spec) + 1}"
        mode = spec.split("/")[0]
        set_knobs(spec)
        model = load_model(ModelConfig(name, dtype="bfloat16"))
        engine = Engine(model, engine_config(spec))
        start = time.perf_counter()
        engine.warm_up(progress=False)
        out[f"{label}_startup_s"] = round(time.perf_counter() - start, 2)
        out[f"{label}_kernels"] = "fused" if getattr(engine.runner, "fused_decode", False) else "sdpa"
        out[f"{label}_prefill_kernel"] = "fused" if getattr(engine.runner, "fused_prefill", False) else "sdpa"
        out[f"{label}_skinny"] = sorted(getattr(engine.runner, "skinny_phases", ()))
        if mode in ("graphs", "compile+graphs"):
            rep = engine.pool.report()
            out[f"{label}_pool"] = {"graphs": rep["graphs"], "bytes": rep["bytes"]}
            if mode == "graphs":
                out["per_graph"] = [{k: g[k] for k in ("key", "bytes", "capture_ms")} for g in rep["per_graph"]]
        out["weight_bytes"] = engine.runner.weight_bytes
        out["kv_cache_bytes"] = engine.runner.cache.nbytes
        out["decode_floor_ms"] = round(engine.runner.weight_bytes / bandwidth * 1e3, 3)
        if blas_choice.ENABLED:
            lt = {k: lib for k, lib in blas_choice.choices().items() if lib != "cublas"}
            out[f"{label}_cublaslt"] = [
                k if lib == "cublaslt" or not blas_choice.ALGORITHMS else (*k, lib) for k, lib in lt.items()
            ]
        out[label] = [itl(engine, n, repeats=repeats) for n in prompts]
        del engine, model
        torch._dynamo.reset()  # compiled code is cached per function: a later spec must compile afresh
        gc.collect()
        torch.cuda.empty_cache()
    set_knobs("")
    return out


KNOBS = (
    "pa",
    "no-pa",
    "am-aten",
    "no-res",
    "no-gate",
    "no-norm",
    "no-halves",
    "no-clean",
    "no-addmm",
    "no-lt",
    "no-algo",
    "no-rot",
    "no-last",
    "no-silu",
    "inline",
    "one-prog",
    "rot64",
    "no-plain",
)
"""The spec options set_knobs() reads (with splitN); `pa` is no-pa's old opposite, the default now."""


DEFAULT_SPLIT_FROM = prefill_attention.SPLIT_FROM
DEFAULT_ROTATE_ROWS = prefill_attention.ROTATE_ROWS
DEFAULT_LAST_ROW_FROM = llama.LAST_ROW_FROM


def set_knobs(spec: str) -> None:
    """Set the process-wide knobs a spec's options name (KNOBS, splitN) and put every other back to its
    default; "" puts them all back."""
    opts = spec.split("/")[1:]
    fused.SPLIT_AT = split_at(spec) if spec else DEFAULT_SPLIT_AT
    fused.SPLIT_ABOVE = 512 if "one-prog" in opts else DEFAULT_SPLIT_ABOVE  # v81's A/B: buckets up to 512 unsplit
    prefill_attention.ENABLED = "no-pa" not in opts
    prefill_attention.SPLIT_FROM = None if "no-rot" in opts else DEFAULT_SPLIT_FROM
    prefill_attention.ROTATE_ROWS = 64 if "rot64" in opts else DEFAULT_ROTATE_ROWS
    sampling.SPLIT_ARGMAX = "am-aten" not in opts
    skinny.FUSE_RESIDUAL = "no-res" not in opts
    skinny.FUSE_GATE = "no-gate" not in opts
    skinny.FUSE_NORM = "no-norm" not in opts
    llama.GATE_HALVES = "no-halves" not in opts
    tune_timing.ENABLED = "no-clean" not in opts
    llama.RESIDUAL_IN_GEMM = "no-addmm" not in opts
    blas_choice.ENABLED = "no-lt" not in opts
    blas_choice.ALGORITHMS = "no-algo" not in opts
    blas_choice.PLAIN = "no-plain" not in opts
    llama.LAST_ROW_FROM = None if "no-last" in opts else DEFAULT_LAST_ROW_FROM
    silu_mul.ENABLED = "no-silu" not in opts
    fused.INLINE = "inline" in opts


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="llama-3.2-1b,llama-2-7b")
    p.add_argument("--modes", default="graphs,eager")
    p.add_argument("--out", default=".")
    p.add_argument("--repeats", type=int, default=3, help="measured requests per prompt length (after one warm-up)")
    p.add_argument("--prompts", default="10,100,400", help="prompt lengths (comma-separated)")
    a = p.parse_args()
    bw = measure_copy_bandwidth()
    results = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "copy_bandwidth_TBps": round(bw / 1e12, 3),
        "models": [],
    }
    for name in a.models.split(","):
        r = figures(name, bw, a.modes.split(","), a.repeats, [int(n) for n in a.prompts.split(",")])
        results["models"].append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "per_graph"}), flush=True)
    with open(f"{a.out}/pool_figures.json", "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
