"""The fused prefill attention kernel (prefill_attention.py, on by default where the fused decode kernel runs):
checked on CPU through Triton's interpreter in float32 and float16 (bfloat16 on the GPU, test_gpu.py), and how the
runner takes it."""

from __future__ import annotations

from interpreter import run_check
from rollgraph.config import EngineConfig, ModelConfig
from rollgraph.engine import Engine
from rollgraph.models import load_model


def test_fused_prefill_kernel_matches_the_reference_path_in_the_triton_interpreter():
    errors = run_check("prefill_attention_check.py")
    assert errors["float32"]["out"] < 1e-5 and errors["float32"]["cache"] < 1e-5, errors
    assert errors["float16"]["out"] < 4e-3 and errors["float16"]["cache"] <= 2e-3, errors
    # keys rotated once by a kernel of their own (SPLIT_FROM), at every case's length
    assert errors["split_float32"]["out"] < 1e-5 and errors["split_float32"]["cache"] < 1e-5, errors
    assert errors["split_float16"]["out"] < 4e-3 and errors["split_float16"]["cache"] <= 2e-3, errors
    assert errors["engine"]["fused"] and errors["engine"]["same_tokens"], errors
    assert errors["engine"]["logits"] < 1e-4, errors


def test_the_runner_fuses_prefill_attention_only_where_the_fused_decode_kernel_runs():
    eng = Engine(load_model(ModelConfig("llama-tiny", device="cpu")), EngineConfig(mode="eager", max_seq_len=64))
    assert eng.runner.fused_decode is False and eng.runner.fused_prefill is False
