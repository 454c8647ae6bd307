# Which of the prefill attention's launches builds and finishes on the GPU, with the time of each first call.
import faulthandler, functools, sys, time
import torch
sys.path.insert(0, "scripts")
faulthandler.dump_traceback_later(int(sys.argv[1]), exit=True)
from rollgraph import prefill_attention as pa
from prefill_attention_probe import reference

dev, dt = "cuda", torch.bfloat16
h, kv, d = 32, 32, 128
max_len = 2048
kc = torch.randn(1, kv, max_len, d, device=dev, dtype=dt)
vc = torch.randn_like(kc)
pos = torch.arange(max_len, device=dev, dtype=torch.float32)[:, None]
freqs = pos * (10000.0 ** (-torch.arange(0, d, 2, device=dev) / d))[None, :]
emb = torch.cat((freqs, freqs), -1)
sign = torch.cat((-torch.ones(d // 2, device=dev), torch.ones(d // 2, device=dev)))
cos, sin = emb.cos().to(dt), (emb.sin() * sign).to(dt)
write = torch.ones(1, dtype=torch.bool, device=dev)
for label, t, split_from, pair_from in [("short", 64, pa.SPLIT_FROM, None), ("long-unsplit", 400, None, None),
                                        ("long-split", 400, pa.SPLIT_FROM, None), ("paired-split", 400, pa.SPLIT_FROM, 1),
                                        ("paired-unsplit", 400, None, 1), ("paired-256", 256, pa.SPLIT_FROM, 1)]:
    pa.SPLIT_FROM, pa.PAIR_FROM = split_from, pair_from
    qkv = torch.randn(1, t, (h + 2 * kv) * d, device=dev, dtype=dt)
    want = reference(qkv, cos, sin, write, kc.clone(), vc.clone(), h, kv).float()
    t0 = time.perf_counter()
    got = pa.prefill_attention(qkv, cos[:t], sin[:t], write, kc, vc, h, kv)
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    for _ in range(20):
        pa.prefill_attention(qkv, cos[:t], sin[:t], write, kc, vc, h, kv)
    torch.cuda.synchronize()
    t3 = time.perf_counter()
    err = (got.float() - want).abs().max().item()
    print(f"{label} T={t}: launch {t1 - t0:.2f} s, finish {t2 - t1:.3f} s, 20 calls {1e6 * (t3 - t2) / 20:.1f} us each, "
          f"err {err:.4f}", flush=True)
