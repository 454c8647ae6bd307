"""The few-row matmul kernel (skinny_linear.py): checked on CPU through Triton's interpreter (float32 and float16;
bfloat16 on the GPU in test_gpu.py), and how the runner chooses it."""

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


def test_skinny_kernel_matches_f_linear_in_the_triton_interpreter():
    errors = run_check("skinny_check.py")
    assert errors["float32"] < 1e-6, errors
    assert errors["float16"] < 2e-3, errors  # one fp16 rounding of the output
    assert errors["engine"]["phases"] == ["decode", "full", "prefill"], errors
    assert errors["engine"]["same_tokens"], errors
    assert errors["engine"]["logits"] < 1e-4, errors
    assert errors["norm"]["float32"] < 1e-6 and errors["norm"]["float16"] < 2e-3, errors  # perf-notes v35
    assert errors["silu_mul"]["float32"] < 1e-6 and errors["silu_mul"]["float16"] < 2e-3, errors  # perf-notes v70
    for prompt in (12, 37):  # norms carried in the kernel's sums of squares against F.rms_norm, random norm weights
        assert errors[f"engine_norm_{prompt}"]["same_tokens"], errors
        assert errors[f"engine_norm_{prompt}"]["logits"] < 1e-4, errors
    assert errors["compile_norm_12"]["same_tokens"] and errors["compile_norm_12"]["logits"] < 1e-4, errors
    assert errors["probe"] is None, errors


def test_without_cuda_auto_keeps_f_linear_and_triton_is_a_clear_load_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    eng = Engine(load_model(ModelConfig("llama-tiny", device="cpu")), EngineConfig(mode="eager", max_seq_len=64))
    assert eng.runner.skinny_phases == frozenset()
    with pytest.raises(ModelLoadError, match="skinny matmul kernel cannot run: it needs Triton and CUDA"):
        Engine(load_model(ModelConfig("llama-tiny", device="cpu")), EngineConfig(mode="eager", matmul="triton"))


def test_matmul_choice_is_validated():
    with pytest.raises(RequestError, match="matmul"):
        EngineConfig(matmul="cutlass")
    with pytest.raises(ValueError, match="matmul must be one of"):
        llama._choose_matmul("cutlass", torch.device("cpu"), torch.float32)
    assert llama._choose_matmul("torch", torch.device("cuda"), torch.bfloat16) == frozenset()


def test_a_kernel_that_cannot_be_built_falls_back_under_auto_and_is_an_error_under_triton(monkeypatch, caplog):
    from rollgraph import skinny_linear as sk

    def broken(*args):
        raise RuntimeError("PassManager::run failed\n(the rest of a compiler log)")

    monkeypatch.setattr(sk, "available", lambda *a: True)
    monkeypatch.setattr(sk, "skinny_linear", broken)
    with caplog.at_level("WARNING", logger="rollgraph.llama"):
        # graphs mode (eager on a CPU): eager mode's `auto` never tries the Triton kernels
        eng = Engine(load_model(ModelConfig("llama-tiny", device="cpu")), EngineConfig(mode="graphs", max_seq_len=64))
    assert eng.runner.skinny_phases == frozenset()
    assert "skinny matmul kernel unavailable (RuntimeError: PassManager::run failed)" in caplog.text
    assert len(list(eng.generate(GenerationParams((1, 2, 3), 4)))) == 4
    with pytest.raises(ModelLoadError, match="cannot run: RuntimeError: PassManager::run failed; use matmul"):
        Engine(load_model(ModelConfig("llama-tiny", device="cpu")), EngineConfig(mode="eager", matmul="triton"))


def test_a_fused_form_that_cannot_be_built_loses_only_that_fusion(monkeypatch, caplog):
    """The gated epilogue and the norm carried in the sums of squares are probed on their own: if one build fails,
    the few-row kernel still runs, without that fusion (and with the norm weights unfolded if it is the norm's)."""
    from rollgraph import skinny_linear as sk

    def runner_where(fails: str):
        def probe(device, dtype, gated=False, norm=False):
            form = "norm" if norm else "gated" if gated else "plain"
            return "CompilationError: split" if form == fails else None

        monkeypatch.setattr(sk, "probe", probe)
        caplog.clear()
        with caplog.at_level("WARNING", logger="rollgraph.llama"):
            return llama.LlamaRunner(load_model(ModelConfig("llama-tiny", device="cpu")).model, 1, 64)

    monkeypatch.setattr(sk, "available", lambda *a: True)
    runner = runner_where("gated")
    assert runner.skinny_phases == {"prefill", "decode", "full"} and not runner.gated_epilogue and runner.fused_norm
    assert "gated epilogue unavailable (CompilationError: split)" in caplog.text
    assert runner._dims("decode")[4:7] == (True, False, True)
    runner = runner_where("norm")
    assert runner.gated_epilogue and not runner.fused_norm
    assert "norm in its sums of squares unavailable (CompilationError: split)" in caplog.text
    assert runner._dims("decode")[4:7] == (True, True, False)
    assert all(ly.attn_norm is not None and ly.mlp_norm is not None for ly in runner.layers)
    runner = runner_where("")
    assert runner.gated_epilogue and runner.fused_norm and runner._dims("decode")[4:7] == (True, True, True)
    assert all(ly.attn_norm is None and ly.mlp_norm is None for ly in runner.layers)
    monkeypatch.setattr(sk, "FUSE_GATE", False)  # the A/B knobs, read when a runner is built
    monkeypatch.setattr(sk, "FUSE_NORM", False)
    runner = runner_where("")
    assert not runner.gated_epilogue and not runner.fused_norm


def test_compiled_decode_leaves_one_row_matmuls_to_inductor(monkeypatch):
    """In compile modes decode keeps inductor's generated reductions (as fast at one row, and they fuse the norm)."""
    from rollgraph import skinny_linear as sk

    monkeypatch.setattr(sk, "available", lambda *a: True)
    monkeypatch.setattr(sk, "probe", lambda *a, **k: None)
    runner = llama.LlamaRunner(load_model(ModelConfig("llama-tiny", device="cpu")).model, 1, 64)
    assert runner.skinny_phases == {"prefill", "decode", "full"}
    runner.compile()
    assert runner.skinny_phases == {"prefill", "full"}
    assert runner._dims("decode")[7] and not runner._dims("prefill")[7]  # gate/up as two products (v47)


def test_gate_up_halves_give_the_stacked_products_values(monkeypatch):
    """Compiled decode's gate/up as two products over the halves of the stacked weight (GATE_HALVES) computes what
    the one product over [gate; up] does; the knob off keeps the one product."""
    runner = llama.LlamaRunner(load_model(ModelConfig("llama-tiny", device="cpu")).model, 1, 64)
    tokens, positions = torch.tensor([7]), torch.tensor([3])
    runner.prefill(torch.tensor([[1, 2, 3]]), 0, torch.tensor([2]))
    stacked = runner.decode(tokens, positions, 64, torch.zeros(1, dtype=torch.bool))
    assert llama._can_write_values()  # registers the op that has inductor write SiLU · up (v48)
    runner.halves_phases = frozenset({"decode"})
    halves = runner.decode(tokens, positions, 64, torch.zeros(1, dtype=torch.bool))
    torch.testing.assert_close(halves, stacked, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(llama, "GATE_HALVES", False)
    off = llama.LlamaRunner(load_model(ModelConfig("llama-tiny", device="cpu")).model, 1, 64)
    off.compile()
    assert not off._dims("decode")[7]


def test_eager_mode_auto_picks_pytorch_kernels_and_keeps_an_explicit_triton(monkeypatch):
    """`eager` stays the plain-PyTorch baseline unless the Triton kernels are named."""
    from rollgraph import engine as engine_mod

    assert engine_mod._kernel_choices(EngineConfig(mode="eager")) == ("sdpa", "torch")
    assert engine_mod._kernel_choices(EngineConfig(mode="eager", attention="triton", matmul="triton")) == (
        "triton",
        "triton",
    )
    for mode in ("graphs", "compile", "compile+graphs", "seed"):
        assert engine_mod._kernel_choices(EngineConfig(mode=mode)) == ("auto", "auto")
