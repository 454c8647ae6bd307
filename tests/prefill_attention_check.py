"""The fused prefill attention kernel against the reference path (llama._rope + cache writes + causal SDPA), on fresh
random inputs. Imported by the GPU tests; run as a script (with TRITON_INTERPRET=1 on a CPU) it prints one JSON
object of the largest errors, which tests/test_prefill_attention.py checks.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

from attention_check import rope_tables
from rollgraph import llama
from rollgraph import prefill_attention as pa

# (query heads, kv heads, head dim, prompt length, cache length, rows): MHA, GQA with groups of 4 and 3 (padded to 4),
# a one-token prompt, prompts that end inside a block and span several, two rows.
CASES = [
    (4, 4, 32, 16, 64, 1),
    (8, 2, 32, 37, 64, 1),
    (16, 4, 16, 100, 128, 2),
    (6, 2, 16, 70, 128, 1),
    (4, 2, 16, 1, 16, 1),
    (2, 1, 64, 130, 256, 1),
]


def reference(qkv, cos, sin, kc, vc, h, kv):
    """What prefill_layer does: rotate, write K/V at positions 0..T-1, causal attention (float32)."""
    b, t, _ = qkv.shape
    d = kc.shape[-1]
    q, k, v = llama.rotated_heads(qkv, cos[None, :t, None, :], sin[None, :t, None, :], h, kv, d)
    kc[:b, :, :t] = k
    vc[:b, :, :t] = v
    o = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True, enable_gqa=True)
    return o.transpose(1, 2).reshape(b, t, h * d)


def max_errors(dtype: torch.dtype, device: str, seed: int = 0, split_from: int | None = None) -> dict:
    """Largest |fused - reference| over CASES, for the output and for the cache after the write; a write_kv that is
    off must leave the cache as it was (else the cache error is inf). `split_from`: prefill_attention.SPLIT_FROM for
    the run (1: every prompt's keys rotated by a kernel of their own first)."""
    was, pa.SPLIT_FROM = pa.SPLIT_FROM, split_from
    try:
        return _max_errors(dtype, device, seed)
    finally:
        pa.SPLIT_FROM = was


def _max_errors(dtype: torch.dtype, device: str, seed: int) -> dict:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out_err = cache_err = 0.0
    for h, kv, d, t, max_len, b in CASES:

        def rand(*shape):
            return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

        kc, vc, qkv = rand(b, kv, max_len, d), rand(b, kv, max_len, d), rand(b, t, (h + 2 * kv) * d)
        cos, sin = rope_tables(max_len, d, dtype, device)
        kc_ref, vc_ref = kc.clone(), vc.clone()
        want = reference(qkv, cos, sin, kc_ref, vc_ref, h, kv)
        write = torch.ones(1, dtype=torch.bool, device=device)
        before = (kc.clone(), vc.clone())
        pa.prefill_attention(qkv, cos[:t], sin[:t], ~write, kc, vc, h, kv)
        if not (torch.equal(kc, before[0]) and torch.equal(vc, before[1])):
            cache_err = float("inf")
        got = pa.prefill_attention(qkv, cos[:t], sin[:t], write, kc, vc, h, kv)
        out_err = max(out_err, (got.float() - want).abs().max().item())
        cache_err = max(cache_err, (kc - kc_ref).abs().max().item(), (vc - vc_ref).abs().max().item())
    return {"out": out_err, "cache": cache_err}


def engine_tokens(fused: bool, device: str, dtype: str = "float32", n: int = 12) -> tuple[list, torch.Tensor, bool]:
    """Greedy tokens and last logits of llama-tiny in eager mode with the fused decode kernel, and the fused prefill
    kernel on or off; also whether the runner took it."""
    from rollgraph.config import EngineConfig, ModelConfig
    from rollgraph.engine import Engine
    from rollgraph.models import load_model
    from rollgraph.params import GenerationParams

    was, pa.ENABLED = pa.ENABLED, fused
    try:
        model = load_model(ModelConfig("llama-tiny", dtype=dtype, device=device))
        eng = Engine(model, EngineConfig(mode="eager", attention="triton", max_seq_len=256))
    finally:
        pa.ENABLED = was
    gen = eng.generate(GenerationParams(tuple(range(3, 40)), n))
    return list(gen), eng.buffers.logits[0].clone(), eng.runner.fused_prefill


if __name__ == "__main__":
    result = {str(dt).removeprefix("torch."): max_errors(dt, "cpu") for dt in (torch.float32, torch.float16)}
    for dt in (torch.float32, torch.float16):
        result["split_" + str(dt).removeprefix("torch.")] = max_errors(dt, "cpu", split_from=1)
    toks_f, logits_f, took = engine_tokens(True, "cpu")
    toks_s, logits_s, _ = engine_tokens(False, "cpu")
    result["engine"] = {
        "fused": took,
        "same_tokens": toks_f == toks_s,
        "logits": (logits_f - logits_s).abs().max().item(),
    }
    json.dump(result, sys.stdout)
