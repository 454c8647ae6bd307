"""skinny_linear against F.linear in float64 on fresh random inputs. Imported by the GPU tests; run as a script (with
TRITON_INTERPRET=1 on a CPU) it prints one JSON object of the largest errors, which tests/test_skinny_linear.py checks.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

from rollgraph import skinny_linear as sk

# (rows, N, K, bias): one row (decode), a full 16- and 32-row block, rows that leave a block part empty, N not a
# multiple of any BLOCK_N, K not a multiple of 256 or 128 (the masked-K path), a bias (Qwen2's QKV).
CASES = [(1, 64, 256, False), (16, 96, 512, True), (32, 80, 768, False), (5, 48, 320, True), (27, 33, 200, False)]


def max_error(dtype: torch.dtype, device: str, seed: int = 0) -> float:
    """Largest |skinny - exact| relative to the largest exact output, over CASES: the first two gated (silu(gate) ·
    up, w = [gate; up]), the next two with a residual added in the epilogue; inputs are leading dims [2, rows/2]
    when rows are even, to check the reshape."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    worst = 0.0
    for i, (m, n, k, bias) in enumerate(CASES):
        x = torch.randn(m, k, generator=gen).to(device, dtype)
        w = torch.randn(n, k, generator=gen).to(device, dtype)
        gated = i < 2  # the gated MLP's first half, once with a bias
        b = torch.randn(n, generator=gen).to(device, dtype) if bias else None
        res = torch.randn(m, n, generator=gen).to(device, dtype) if i in (2, 3) else None
        if m % 2 == 0:
            x = x.view(2, m // 2, k)
            res = res.view(2, m // 2, n) if res is not None else None
        got = sk.skinny_linear(x, w, b, res, gated)
        want = F.linear(x.double(), w.double(), None if b is None else b.double())
        if gated:
            gate, up = want.chunk(2, dim=-1)
            want = F.silu(gate) * up
        elif res is not None:
            want = want + res.double()
        assert got.shape == want.shape and got.dtype == dtype, (got.shape, want.shape, got.dtype)
        worst = max(worst, ((got.double() - want).abs().max() / want.abs().max()).item())
    return worst


def silu_mul_error(dtype: torch.dtype, device: str, seed: int = 0) -> float:
    """silu_mul's kernel (perf-notes v70) against silu(gate) · up in float64: H below, at and past one program's
    columns, leading dims [2, rows], and an input whose rows are strided (a column slice of a wider tensor)."""
    from rollgraph.silu_mul import BLOCK, silu_mul

    gen = torch.Generator(device="cpu").manual_seed(seed)
    worst = 0.0
    for rows, h in ((1, 40), (6, BLOCK), (3, BLOCK + 37)):
        y = (torch.randn(2, rows, 2 * h + 8, generator=gen) * 3).to(device, dtype)[..., 4 : 4 + 2 * h]
        got = silu_mul(y)
        gate, up = y.double().chunk(2, dim=-1)
        want = F.silu(gate) * up
        assert got.shape == want.shape and got.dtype == dtype, (got.shape, want.shape, got.dtype)
        worst = max(worst, ((got.double() - want).abs().max() / want.abs().max()).item())
    return worst


# (rows, K of the first product, hidden size, N of the second): one row, a full 16-row block with a hidden size that
# is no multiple of any BLOCK_N, rows that leave a 32-row block part empty.
NORM_CASES = [(1, 64, 96, 64), (16, 48, 200, 80), (27, 80, 64, 32)]


def norm_error(dtype: torch.dtype, device: str, seed: int = 0) -> float:
    """The norm carried across two products (perf-notes v35): skinny_linear_stats writes x = res + a·woᵀ and its
    partial sums of squares, skinny_linear then takes rms_norm(x)·wᵀ from them, plain and gated. Largest error of
    the three outputs relative to their largest exact value, against float64 on the same inputs."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    worst = 0.0

    def rel(got, want):
        return ((got.double() - want).abs().max() / want.abs().max()).item()

    for m, k, h, n in NORM_CASES:
        a, wo = (torch.randn(m, k, generator=gen).to(device, dtype), torch.randn(h, k, generator=gen).to(device, dtype))
        res = (3 * torch.randn(m, h, generator=gen)).to(device, dtype)  # rows far from unit RMS: the norm shows
        w = torch.randn(n, h, generator=gen).to(device, dtype)
        x, parts = sk.skinny_linear_stats(a, wo, res)
        worst = max(worst, rel(x, F.linear(a.double(), wo.double()) + res.double()))
        assert parts.dtype == torch.float32 and parts.shape[1] == m, parts.shape
        xd = x.double()  # the stored x, as the next kernel reads it
        want = F.linear(xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-5), w.double())
        worst = max(worst, rel(sk.skinny_linear(x, w, None, None, False, parts, 1e-5), want))
        gate, up = want.chunk(2, dim=-1)
        worst = max(worst, rel(sk.skinny_linear(x, w, None, None, True, parts, 1e-5), F.silu(gate) * up))
    return worst


def draw_norm_weights(hf_model: torch.nn.Module, seed: int) -> None:
    """Every RMSNorm weight drawn from [0.5, 1.5), as in trained models, instead of transformers' initial ones."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in hf_model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)


def engine_tokens(
    matmul: str,
    device: str,
    dtype: str = "float32",
    n: int = 12,
    prompt: int = 37,
    fuse_norm: bool = False,
    random_norms: bool = False,
    mode: str = "eager",
) -> tuple[list, torch.Tensor, list]:
    """Greedy tokens, last logits and the skinny phases of llama-tiny in `mode` with the given matmul choice.
    fuse_norm: the norms ride in skinny_linear's sums of squares (their weights folded into the projections);
    random_norms: the norm weights drawn away from one (always the same draw), so that folding them counts."""
    from rollgraph.config import EngineConfig, ModelConfig
    from rollgraph.engine import Engine
    from rollgraph.models import load_model
    from rollgraph.params import GenerationParams

    model = load_model(ModelConfig("llama-tiny", dtype=dtype, device=device))
    if random_norms:
        draw_norm_weights(model.model, 3)
    knob, sk.FUSE_NORM = sk.FUSE_NORM, fuse_norm
    try:
        eng = Engine(model, EngineConfig(mode=mode, matmul=matmul, max_seq_len=256))
    finally:
        sk.FUSE_NORM = knob
    assert eng.runner.fused_norm == (fuse_norm and matmul == "triton"), "the norm path asked for did not run"
    gen = eng.generate(GenerationParams(tuple(range(3, 3 + prompt)), n))
    return list(gen), eng.buffers.logits[0].clone(), sorted(eng.runner.skinny_phases)


if __name__ == "__main__":
    import rollgraph.silu_mul

    rollgraph.silu_mul.ENABLED = True  # the default; the 37-token engine check below runs it past the few-row kernels
    result = {str(dt).removeprefix("torch."): max_error(dt, "cpu") for dt in (torch.float32, torch.float16)}
    toks_t, logits_t, phases = engine_tokens("triton", "cpu")
    toks_c, logits_c, _ = engine_tokens("torch", "cpu")
    result["engine"] = {
        "same_tokens": toks_t == toks_c,
        "logits": (logits_t - logits_c).abs().max().item(),
        "phases": phases,
    }
    result["norm"] = {str(dt).removeprefix("torch."): norm_error(dt, "cpu") for dt in (torch.float32, torch.float16)}
    result["silu_mul"] = {
        str(dt).removeprefix("torch."): silu_mul_error(dt, "cpu") for dt in (torch.float32, torch.float16)
    }
    for prompt in (12, 37):  # a 16-row prefill (skinny, the norm carried from layer 1 on) and a cuBLAS one
        toks_n, logits_n, _ = engine_tokens("triton", "cpu", prompt=prompt, fuse_norm=True, random_norms=True)
        toks_p, logits_p, _ = engine_tokens("torch", "cpu", prompt=prompt, random_norms=True)
        result[f"engine_norm_{prompt}"] = {
            "same_tokens": toks_n == toks_p,
            "logits": (logits_n - logits_p).abs().max().item(),
        }
        if prompt == 12:  # the compiled layer functions pass the partials along too (inductor calls the kernels)
            toks_c, logits_c, _ = engine_tokens(
                "triton", "cpu", prompt=12, fuse_norm=True, random_norms=True, mode="compile"
            )
            result["compile_norm_12"] = {
                "same_tokens": toks_c == toks_p,
                "logits": (logits_c - logits_p).abs().max().item(),
            }
    result["probe"] = sk.probe(torch.device("cpu"), torch.float32)
    json.dump(result, sys.stdout)
