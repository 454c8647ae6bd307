"""Time prefill_attention.py's fused kernel against what a compiled prefill layer runs in its place (RoPE, the cache
write and cuDNN/flash attention, compiled by inductor), at each prefill bucket, for llama-2-7b's and llama-3.2-1b's
attention shapes, over a grid of launch choices (perf-notes v23). Each time is one call's share of a CUDA graph that
holds 20 calls, so launch gaps count as they do in a replayed prefill. Every fused result is checked against the
reference before it is timed.

    PYTHONPATH=src python3 scripts/prefill_attention_probe.py --out OUT/prefill_attention.json

With --rotate (perf-notes v84) it times the split path at the long buckets over ROTATE_GRID, `_rotate_keys`'
positions per program and warps (the attention kernel's launch as it is), each checked against the reference first.

With --split (perf-notes v67) it times instead, at the long buckets, the kernel with its default launch against the
split path (the keys rotated once by `_rotate_keys`, then the attention kernel reading them rotated) over a grid of
the attention kernel's launch choices, each checked against the reference first.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json

import torch
import torch.nn.functional as F

from rollgraph import llama
from rollgraph import prefill_attention as pa

SHAPES = {"llama-2-7b": (32, 32, 128), "llama-3.2-1b": (32, 8, 64)}  # query heads, KV heads, head dim
LENGTHS = (16, 32, 64, 128, 256, 320, 384, 432, 512)
REFERENCE_LENGTHS = (16, 128, 256, 432)
GRID = list(itertools.product((32, 64, 128), (32, 64, 128), (4, 8), (1, 3)))  # rows, BLOCK_N, warps, stages
SPLIT_LENGTHS = (256, 320, 384, 400, 432, 512)
SPLIT_GRID = list(itertools.product((64, 128), (64, 128), (4, 8), (1, 2, 3)))
ROTATE_LENGTHS = (320, 400, 432, 512)
ROTATE_GRID = list(itertools.product((8, 16, 32, 64, 128), (1, 2, 4, 8)))  # positions per program, warps


def reference(qkv, cos, sin, write, kc, vc, h: int, kv: int):
    """prefill_layer's part between the QKV and output projections (llama.py), as the compiled step runs it."""
    b, t, _ = qkv.shape
    d = kc.shape[-1]
    q, k, v = llama.rotated_heads(qkv, cos[None, :t, None, :], sin[None, :t, None, :], h, kv, d)
    kc[:b, :, :t] = torch.where(write, k, kc[:b, :, :t])
    vc[:b, :, :t] = torch.where(write, v, vc[:b, :, :t])
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return o.transpose(1, 2).reshape(b, t, h * d)


def graph_time_us(fn, calls: int = 20, replays: int = 20) -> float:
    """One call's share of a replayed graph of `calls` calls, in µs."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    for _ in range(3):
        g.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(3):
        start.record()
        for _ in range(replays):
            g.replay()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) * 1e3 / (calls * replays))
    return round(best, 2)


def sdpa_only(qkv, h: int, kv: int, d: int):
    """cuDNN/flash causal attention alone on the (unrotated) heads, what the fused kernel's attention part races."""
    heads = qkv.view(qkv.shape[0], qkv.shape[1], h + 2 * kv, d).transpose(1, 2)
    return F.scaled_dot_product_attention(
        heads[:, :h], heads[:, h : h + kv], heads[:, h + kv :], is_causal=True, enable_gqa=True
    )


def probe_length(name: str, t: int, h: int, kv: int, d: int, tables, compiled) -> dict:
    """One shape and prompt length: the references' times, then every launch choice's error and time."""
    cos, sin, write, kc, vc = tables
    qkv = torch.randn(1, t, (h + 2 * kv) * d, device="cuda", dtype=kc.dtype)
    row = {"model": name, "T": t}
    want = reference(qkv, cos, sin, write, kc.clone(), vc.clone(), h, kv).float()
    row["sdpa_us"] = graph_time_us(functools.partial(sdpa_only, qkv, h, kv, d))
    row["eager_ref_us"] = graph_time_us(functools.partial(reference, qkv, cos, sin, write, kc, vc, h, kv))
    if t in REFERENCE_LENGTHS:
        row["compiled_ref_us"] = graph_time_us(functools.partial(compiled, qkv, cos, sin, write, kc, vc, h, kv))
    fused_call = functools.partial(pa.prefill_attention, qkv, cos[:t], sin[:t], write, kc, vc, h, kv)
    old = (64, 64, 8 if d >= 128 else 4, 3, False)  # v21's choice: positions in order
    choices = {choice_key(old) + "_old": old} | {choice_key(c) + "_hf": (*c, True) for c in GRID}
    fused, best = time_choices(fused_call, want, choices)
    row.update(best=best, best_us=fused[best]["us"], old_us=fused[next(iter(fused))].get("us"), fused=fused)
    return row


def probe_split(name: str, t: int, h: int, kv: int, d: int, tables) -> dict:
    """One shape and prompt length: the kernel as it runs by default, then the split path over SPLIT_GRID."""
    cos, sin, write, kc, vc = tables
    qkv = torch.randn(1, t, (h + 2 * kv) * d, device="cuda", dtype=kc.dtype)
    want = reference(qkv, cos, sin, write, kc.clone(), vc.clone(), h, kv).float()
    call = functools.partial(pa.prefill_attention, qkv, cos[:t], sin[:t], write, kc, vc, h, kv)
    row = {"model": name, "T": t, "sdpa_us": graph_time_us(functools.partial(sdpa_only, qkv, h, kv, d))}
    was = pa.SPLIT_FROM
    pa.SPLIT_FROM = None
    row["fused_us"] = graph_time_us(call)
    row["fused_err"] = round((call().float() - want).abs().max().item(), 4)
    pa.SPLIT_FROM = 1
    split, best = time_choices(call, want, {choice_key(c): (*c, True) for c in SPLIT_GRID})
    row["split_default_us"] = graph_time_us(call)  # LAUNCH_SPLIT
    pa.SPLIT_FROM = was
    row.update(split_best=best, split_best_us=split[best]["us"], split=split)
    return row


def probe_rotate(name: str, t: int, h: int, kv: int, d: int, tables) -> dict:
    """One shape and prompt length: the split path with each of ROTATE_GRID's launches of `_rotate_keys`."""
    cos, sin, write, kc, vc = tables
    qkv = torch.randn(1, t, (h + 2 * kv) * d, device="cuda", dtype=kc.dtype)
    want = reference(qkv, cos, sin, write, kc.clone(), vc.clone(), h, kv).float()
    call = functools.partial(pa.prefill_attention, qkv, cos[:t], sin[:t], write, kc, vc, h, kv)
    was, pa.SPLIT_FROM = pa.SPLIT_FROM, 1
    default = (pa.ROTATE_ROWS, pa.ROTATE_WARPS)
    row: dict = {"model": name, "T": t, "default": "rows{}_w{}".format(*default), "us": {}, "err": {}}
    for rows, warps in ROTATE_GRID:
        pa.ROTATE_ROWS, pa.ROTATE_WARPS = rows, warps
        key = f"rows{rows}_w{warps}"
        row["err"][key] = round((call().float() - want).abs().max().item(), 4)
        row["us"][key] = graph_time_us(call)
    pa.ROTATE_ROWS, pa.ROTATE_WARPS = default
    pa.SPLIT_FROM = was
    ok = {k: v for k, v in row["us"].items() if row["err"][k] < 0.06}
    row["best"] = min(ok, key=ok.get)
    return row


def choice_key(choice: tuple) -> str:
    """A launch choice's name in the results: rows, BLOCK_N, warps, stages."""
    return "r{}_n{}_w{}_s{}".format(*choice[:4])


def time_choices(call, want, choices: dict) -> tuple[dict, str]:
    """Each launch choice (name -> OVERRIDE tuple) in turn: its error against `want`, then its time; and the fastest
    whose error is within bf16's (0.06)."""
    timed = {}
    for key, choice in choices.items():
        pa.OVERRIDE = choice
        try:
            err = (call().float() - want).abs().max().item()
            timed[key] = {"us": graph_time_us(call), "err": round(err, 4)}
        except Exception as e:  # a choice that does not fit (shared memory, registers)
            timed[key] = {"error": f"{type(e).__name__}: {str(e)[:120]}"}
    pa.OVERRIDE = None
    ok = {k: v for k, v in timed.items() if "us" in v and v["err"] < 0.06}
    return timed, min(ok, key=lambda k: ok[k]["us"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--split", action="store_true", help="the split path against the kernel's default (v67)")
    ap.add_argument("--rotate", action="store_true", help="the split path over _rotate_keys' launches (v84)")
    ap.add_argument("--shapes", default=",".join(SHAPES), help="which of SHAPES to time (comma-separated)")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch._inductor.config.coordinate_descent_tuning = True  # as the compile modes set it (steps.py)
    torch._dynamo.config.recompile_limit = 64  # one compiled reference per shape and length
    dev, dt = "cuda", torch.bfloat16
    rows_out = []
    for name in args.shapes.split(","):
        h, kv, d = SHAPES[name]
        max_len = 2048
        kc = torch.randn(1, kv, max_len, d, device=dev, dtype=dt)
        pos = torch.arange(max_len, device=dev, dtype=torch.float32)[:, None]
        freqs = pos * (10000.0 ** (-torch.arange(0, d, 2, device=dev) / d))[None, :]
        emb = torch.cat((freqs, freqs), -1)
        sign = torch.cat((-torch.ones(d // 2, device=dev), torch.ones(d // 2, device=dev)))
        write = torch.ones(1, dtype=torch.bool, device=dev)
        tables = (emb.cos().to(dt), (emb.sin() * sign).to(dt), write, kc, torch.randn_like(kc))
        if args.rotate:
            for t in ROTATE_LENGTHS:
                row = probe_rotate(name, t, h, kv, d, tables)
                shown = {k: row[k] for k in ("model", "T", "default", "best", "us")}
                print(json.dumps(shown), flush=True)
                rows_out.append(row)
            continue
        if args.split:
            for t in SPLIT_LENGTHS:
                row = probe_split(name, t, h, kv, d, tables)
                print(json.dumps({k: v for k, v in row.items() if k != "split"}), flush=True)
                rows_out.append(row)
            continue
        compiled = torch.compile(reference, fullgraph=True, dynamic=False)
        for t in LENGTHS:
            row = probe_length(name, t, h, kv, d, tables, compiled)
            print(json.dumps({k: v for k, v in row.items() if k != "fused"}), flush=True)
            rows_out.append(row)
    with open(args.out, "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows_out}, f, indent=1)


if __name__ == "__main__":
    main()
