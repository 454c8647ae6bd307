"""v53 probe: at long prefill buckets on llama-2-7b's shape, the fused prefill kernel against RoPE + cache write
compiled by inductor followed by cuDNN/flash attention that reads K and V from the cache. One call's share of a CUDA
graph of 20 calls (prefill_attention_probe.graph_time_us); each variant also after a 432-row QKV GEMM, less that GEMM
alone, so the QKV rows come fresh from the GEMM as in a prefill."""

import functools
import json
import sys

import torch
import torch.nn.functional as F
from prefill_attention_probe import graph_time_us, reference

from rollgraph import llama
from rollgraph import prefill_attention as pa

H = KV = 32
D = 128


def split(qkv, cos, sin, write, kc, vc, where: bool):
    b, t, _ = qkv.shape
    q, k, v = llama.rotated_heads(qkv, cos[None, :t, None, :], sin[None, :t, None, :], H, KV, D)
    if where:
        kc[:b, :, :t] = torch.where(write, k, kc[:b, :, :t])
        vc[:b, :, :t] = torch.where(write, v, vc[:b, :, :t])
    else:
        kc[:b, :, :t] = k
        vc[:b, :, :t] = v
    o = F.scaled_dot_product_attention(q, kc[:b, :, :t], vc[:b, :, :t], is_causal=True)
    return o.transpose(1, 2).reshape(b, t, H * D)


def main() -> None:
    torch.manual_seed(0)
    torch._inductor.config.coordinate_descent_tuning = True
    torch._dynamo.config.recompile_limit = 64
    dev, dt = "cuda", torch.bfloat16
    max_len = 2048
    kc = torch.randn(1, KV, max_len, D, device=dev, dtype=dt)
    vc = torch.randn_like(kc)
    pos = torch.arange(max_len, device=dev, dtype=torch.float32)[:, None]
    freqs = pos * (10000.0 ** (-torch.arange(0, D, 2, device=dev) / D))[None, :]
    emb = torch.cat((freqs, freqs), -1)
    sign = torch.cat((-torch.ones(D // 2, device=dev), torch.ones(D // 2, device=dev)))
    cos, sin = emb.cos().to(dt), (emb.sin() * sign).to(dt)
    write = torch.ones(1, dtype=torch.bool, device=dev)
    comp_ref = torch.compile(reference, fullgraph=True, dynamic=False)
    comp_where = torch.compile(functools.partial(split, where=True), fullgraph=True, dynamic=False)
    comp_copy = torch.compile(functools.partial(split, where=False), fullgraph=True, dynamic=False)
    w = torch.randn((H + 2 * KV) * D, 4096, device=dev, dtype=dt) * 0.02
    rows = []
    for t in (256, 320, 384, 432, 512):
        x = torch.randn(1, t, 4096, device=dev, dtype=dt)
        qkv = torch.empty(1, t, (H + 2 * KV) * D, device=dev, dtype=dt)

        def gemm(x=x, qkv=qkv):
            torch.matmul(x, w.t(), out=qkv)

        gemm()
        want = reference(qkv, cos, sin, write, kc.clone(), vc.clone(), H, KV).float()
        variants = {
            "fused": lambda qkv=qkv, t=t: pa.prefill_attention(qkv, cos[:t], sin[:t], write, kc, vc, H, KV),
            "compiled_ref": lambda qkv=qkv: comp_ref(qkv, cos, sin, write, kc, vc, H, KV),
            "split_where": lambda qkv=qkv: comp_where(qkv, cos, sin, write, kc, vc),
            "split_copy": lambda qkv=qkv: comp_copy(qkv, cos, sin, write, kc, vc),
        }
        row = {"T": t, "gemm_us": graph_time_us(gemm)}
        for name, fn in variants.items():
            err = (fn().float() - want).abs().max().item()
            alone = graph_time_us(fn)

            def both(fn=fn):
                gemm()
                fn()

            row[name] = {"alone_us": alone, "after_gemm_us": round(graph_time_us(both) - row["gemm_us"], 2),
                         "err": round(err, 4)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    with open(sys.argv[1], "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
