"""The fused decode attention kernel against the reference path (llama._rope + cache writes + SDPA), on fresh random
inputs. Imported by the GPU tests; run as a script (with TRITON_INTERPRET=1 on a CPU) it prints one JSON object of
the largest errors, which tests/test_decode_attention.py checks.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

from rollgraph import decode_attention as fused
from rollgraph import llama

# (query heads, kv heads, head dim, cache length, kv bucket, positions): MHA and GQA, position 0, the last position of
# a bucket, a bucket split across programs, and the cache's last slot (a capture's warm-up writes there).
CASES = [
    (4, 2, 16, 64, 64, [0, 5]),
    (8, 2, 32, 256, 128, [70, 127]),
    (4, 4, 32, 2048, 1024, [3, 600, 1023]),
    (6, 2, 16, 2048, 2048, [2047, 1500]),
    (32, 8, 64, 1024, 512, [511, 100]),
]


def rope_tables(n: int, d: int, dtype: torch.dtype, device: str):
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, device=device).float() / d))
    freqs = torch.arange(n, device=device).float()[:, None] * inv[None]
    emb = torch.cat([freqs, freqs], -1)
    sign = torch.cat([-torch.ones(d // 2, device=device), torch.ones(d // 2, device=device)])
    return emb.cos().to(dtype), emb.sin().to(dtype) * sign.to(dtype)


def reference(qkv, cos, sin, pos, kc, vc, kv_len, h, kv):
    """What the SDPA decode layer does: rotate, write the new K/V, attend over the bucket behind a mask."""
    b, d = len(pos), kc.shape[-1]
    heads = qkv.view(b, 1, h + 2 * kv, d)
    c, s = cos[pos][:, None, None, :], sin[pos][:, None, None, :]
    qk = llama._rope(heads[:, :, : h + kv], c, s)
    q, k = qk[:, :, :h].transpose(1, 2), qk[:, :, h:].transpose(1, 2)
    v = heads[:, :, h + kv :].transpose(1, 2)
    rows = torch.arange(b, device=qkv.device)
    kc[rows, :, pos] = k[:, :, 0]
    vc[rows, :, pos] = v[:, :, 0]
    mask = (torch.arange(kv_len, device=qkv.device)[None, :] <= pos[:, None])[:, None, None, :]
    qg = q.reshape(b, kv, h // kv, d).float()
    o = F.scaled_dot_product_attention(qg, kc[:, :, :kv_len].float(), vc[:, :, :kv_len].float(), attn_mask=mask)
    return o.reshape(b, h * d)


def max_errors(dtype: torch.dtype, device: str, seed: int = 0, op=None) -> dict:
    """Largest |fused - reference| over CASES, for the output and for the cache after the write; `op` the kernel's
    op (decode_attention by default; decode_attention_inline, its Triton op, called eagerly)."""
    op = op or fused.decode_attention
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out_err = cache_err = 0.0
    for h, kv, d, max_len, kv_len, positions in CASES:
        b = len(positions)

        def rand(*shape):
            return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

        pos = torch.tensor(positions, device=device)
        kc, vc, qkv = rand(b, kv, max_len, d), rand(b, kv, max_len, d), rand(b, (h + 2 * kv) * d)
        cos, sin = rope_tables(max_len, d, dtype, device)
        kc_ref, vc_ref = kc.clone(), vc.clone()
        want = reference(qkv, cos, sin, pos, kc_ref, vc_ref, kv_len, h, kv)
        write = torch.ones(1, dtype=torch.bool, device=device)
        got = op(qkv, cos[pos], sin[pos], pos, write, kc, vc, kv_len, h, kv)
        before = (kc.clone(), vc.clone())
        op(qkv, cos[pos], sin[pos], pos, ~write, kc, vc, kv_len, h, kv)
        if not (torch.equal(kc, before[0]) and torch.equal(vc, before[1])):
            cache_err = float("inf")  # write_kv off must leave the cache untouched
        out_err = max(out_err, (got.float() - want).abs().max().item())
        cache_err = max(cache_err, (kc - kc_ref).abs().max().item(), (vc - vc_ref).abs().max().item())
    return {"out": out_err, "cache": cache_err}


def engine_tokens(attention: str, device: str, dtype: str = "float32", n: int = 12) -> tuple[list, torch.Tensor]:
    """Greedy tokens and last logits of llama-tiny in eager mode with the given decode attention."""
    from rollgraph.config import EngineConfig, ModelConfig
    from rollgraph.engine import Engine
    from rollgraph.models import load_model
    from rollgraph.params import GenerationParams

    model = load_model(ModelConfig("llama-tiny", dtype=dtype, device=device))
    eng = Engine(model, EngineConfig(mode="eager", attention=attention, max_seq_len=256))
    gen = eng.generate(GenerationParams(tuple(range(3, 40)), n))
    return list(gen), eng.buffers.logits[0].clone()


if __name__ == "__main__":
    result = {str(dt).removeprefix("torch."): max_errors(dt, "cpu") for dt in (torch.float32, torch.float16)}
    # finer splits: 8 for a 128 bucket (six of them past every live position), 16 for 2048 (the merge padded past
    # its default 8); the default run splits the 512, 1024 and 2048 buckets 8 ways
    defaults = fused.SPLIT_ABOVE, fused.SPLIT_AT
    fused.SPLIT_ABOVE, fused.SPLIT_AT = 64, 128
    result["split_at_128"] = max_errors(torch.float32, "cpu")
    result["inline_split_at_128"] = max_errors(torch.float32, "cpu", op=fused.decode_attention_inline)
    fused.SPLIT_ABOVE, fused.SPLIT_AT = defaults
    result["inline"] = max_errors(torch.float32, "cpu", op=fused.decode_attention_inline)
    toks_t, logits_t = engine_tokens("triton", "cpu")
    toks_s, logits_s = engine_tokens("sdpa", "cpu")
    result["engine"] = {"same_tokens": toks_t == toks_s, "logits": (logits_t - logits_s).abs().max().item()}
    result["probe"] = fused.probe(torch.device("cpu"), torch.float32, 32, 8, 64)
    json.dump(result, sys.stdout)
