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


def engine_tokens(matmul: str, device: str, dtype: str = "float32", n: int = 12) -> tuple[list, torch.Tensor, list]:
    """Greedy tokens, last logits and the skinny phases of llama-tiny in eager mode with the given matmul choice."""
    from rollgraph.config import EngineConfig, ModelConfig
    from rollgraph.engine import Engine
    from rollgraph.models import load_model
    from rollgraph.params import GenerationParams

    model = load_model(ModelConfig("llama-tiny", dtype=dtype, device=device))
    eng = Engine(model, EngineConfig(mode="eager", matmul=matmul, max_seq_len=256))
    gen = eng.generate(GenerationParams(tuple(range(3, 40)), n))
    return list(gen), eng.buffers.logits[0].clone(), sorted(eng.runner.skinny_phases)


if __name__ == "__main__":
    result = {str(dt).removeprefix("torch."): max_error(dt, "cpu") for dt in (torch.float32, torch.float16)}
    toks_t, logits_t, phases = engine_tokens("triton", "cpu")
    toks_c, logits_c, _ = engine_tokens("torch", "cpu")
    result["engine"] = {
        "same_tokens": toks_t == toks_c,
        "logits": (logits_t - logits_c).abs().max().item(),
        "phases": phases,
    }
    result["probe"] = sk.probe(torch.device("cpu"), torch.float32)
    json.dump(result, sys.stdout)
