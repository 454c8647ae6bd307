"""The fused decode attention kernel (decode_attention.py): checked on CPU through Triton's interpreter (float32 and
float16; the interpreter's bfloat16 dot is broken in Triton 3.9, so bfloat16 is checked on the GPU in test_gpu.py),
and how the runner chooses it."""

from __future__ import annotations

import pytest
import torch

from interpreter import run_check
from rollgraph import llama
from rollgraph.config import EngineConfig, ModelConfig
from rollgraph.engine import Engine
from rollgraph.errors import ModelLoadError, RequestError
from rollgraph.models import load_model
from rollgraph.params import GenerationParams


def test_fused_kernel_matches_the_reference_path_in_the_triton_interpreter():
    errors = run_check("attention_check.py")
    assert errors["float32"]["out"] < 1e-5 and errors["float32"]["cache"] < 1e-5, errors
    assert errors["split_at_128"]["out"] < 1e-5 and errors["split_at_128"]["cache"] < 1e-5, errors
    for inline in ("inline", "inline_split_at_128"):  # the Triton op that `compile` mode can take (perf-notes v74)
        assert errors[inline]["out"] < 1e-5 and errors[inline]["cache"] < 1e-5, errors
    assert errors["float16"]["out"] < 4e-3 and errors["float16"]["cache"] <= 2e-3, errors
    assert errors["engine"]["same_tokens"], errors
    assert errors["engine"]["logits"] < 1e-4, errors
    assert errors["probe"] is None, errors


def test_without_cuda_auto_keeps_sdpa_and_triton_is_a_clear_load_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = load_model(ModelConfig("llama-tiny", device="cpu"))
    eng = Engine(model, EngineConfig(mode="eager", max_seq_len=128))
    assert eng.runner.fused_decode is False
    with pytest.raises(ModelLoadError, match="fused decode attention cannot run: it needs Triton and CUDA"):
        Engine(load_model(ModelConfig("llama-tiny", device="cpu")), EngineConfig(mode="eager", attention="triton"))


def test_attention_choice_is_validated():
    with pytest.raises(RequestError, match="attention"):
        EngineConfig(attention="flash")
    with pytest.raises(ValueError, match="attention must be one of"):
        llama._choose_attention("flash", torch.device("cpu"), torch.float32, (4, 2, 64))
    assert llama._choose_attention("sdpa", torch.device("cuda"), torch.bfloat16, (4, 2, 128)) is False
    assert llama._choose_attention("auto", torch.device("cuda"), torch.bfloat16, (4, 2, 96)) is False  # not 2^k


def test_a_kernel_that_cannot_be_built_falls_back_under_auto_and_is_an_error_under_triton(monkeypatch, caplog):
    """Where the kernel should run but Triton cannot build it, `auto` serves with SDPA (and says so) instead of
    failing every request at its first decode step; `triton` refuses to load."""
    from rollgraph import decode_attention as fused

    def broken(*args):
        raise RuntimeError("PassManager::run failed\n(the rest of a compiler log)")

    monkeypatch.setattr(fused, "available", lambda *a: True)
    monkeypatch.setattr(fused, "decode_attention", broken)
    with caplog.at_level("WARNING", logger="rollgraph.llama"):
        # graphs mode (eager on a CPU): eager mode's `auto` never tries the Triton kernels
        eng = Engine(load_model(ModelConfig("llama-tiny", device="cpu")), EngineConfig(mode="graphs", max_seq_len=64))
    assert eng.runner.fused_decode is False
    assert "fused decode attention unavailable (RuntimeError: PassManager::run failed)" in caplog.text
    assert len(list(eng.generate(GenerationParams((1, 2, 3), 4)))) == 4
    with pytest.raises(ModelLoadError, match="cannot run: RuntimeError: PassManager::run failed; use attention"):
        Engine(load_model(ModelConfig("llama-tiny", device="cpu")), EngineConfig(mode="eager", attention="triton"))


def test_kv_buckets_over_256_positions_split_eight_ways_and_pieces_stay_within_split_at():
    """perf-notes v81: one program per KV head up to 256 positions; beyond, 8 pieces of whole steps, more (a power of
    two) where a piece would pass SPLIT_AT; every piece's positions together cover the bucket."""
    from rollgraph import decode_attention as fused

    assert fused._splits(10) == (1, 64)
    assert fused._splits(256) == (1, 256)
    for kv_len, want in ((320, 8), (512, 8), (1024, 8), (2048, 8), (4096, 8), (8192, 16)):
        splits, chunk = fused._splits(kv_len)
        assert splits == want and chunk % fused.BLOCK_T == 0 and chunk <= fused.SPLIT_AT, (kv_len, splits, chunk)
        assert splits * chunk >= kv_len and (splits & (splits - 1)) == 0, (kv_len, splits, chunk)
