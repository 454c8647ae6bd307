"""Programmatic dependent launch (pdl.py, perf-notes v36): where it is on, and what the kernels built with it do
first. The builds are compiled here for a Hopper GPU (sm_90) without one, with the Triton that is installed: every
memory access of the kernel before griddepcontrol.wait would be a race with the kernel before it on the stream."""

from __future__ import annotations

import logging

import pytest
import torch

from rollgraph import llama, pdl, steps
from rollgraph.config import ModelConfig
from rollgraph.models import load_model

triton = pytest.importorskip("triton")


def _ptx(fn, types: dict, constants: dict, **options) -> list[str]:
    """fn compiled for sm_90 (no GPU needed): its PTX lines. Arguments not in `types` or `constants` are i32."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(fn.arg_names)
    signature = {n: "constexpr" if n in constants else types.get(n, "i32") for n in names}
    source = ASTSource(fn, signature, {(names.index(k),): v for k, v in constants.items()})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"].splitlines()


def _first(lines: list[str], what: str) -> int | None:
    return next((i for i, line in enumerate(lines) if what in line), None)


def _kernels(on: bool, prefetch: int = 0):
    """(name, PTX) of skinny_linear's kernels (their fullest form: norm in, sums of squares out, residual) and both
    attention kernels, each built with PDL on or off."""
    from rollgraph import decode_attention, prefill_attention, skinny_linear

    bf, f32 = "*bf16", "*fp32"
    yield "skinny", _ptx(
        skinny_linear._skinny,
        dict(x=bf, w=bf, bias=bf, res=bf, y=bf, parts=f32, eps="fp32"),
        dict(HAS_BIAS=False, HAS_RES=True, GATED=False, STATS=True, NORM=True, BLOCK_P=256, EVEN_K=True, BLOCK_M=16,
             BLOCK_N=64, BLOCK_K=256, PRECISION="tf32", PDL=on, PREFETCH=prefetch),
        num_warps=4, num_stages=3, launch_pdl=on,
    )  # fmt: skip
    yield "gemv", _ptx(
        skinny_linear._gemv,
        dict(x=bf, w=bf, bias=bf, res=bf, y=bf, parts=f32, eps="fp32"),
        dict(HAS_BIAS=False, HAS_RES=True, GATED=False, STATS=True, NORM=True, BLOCK_P=256, EVEN_K=True, BLOCK_N=16,
             BLOCK_K=256, PDL=on, PREFETCH=prefetch),
        num_warps=4, num_stages=1, launch_pdl=on,
    )  # fmt: skip
    heads = dict(H=32, KV=8, D=128, GROUP=4, G_PAD=16, PRECISION="tf32", PDL=on)
    cache = dict(qkv=bf, cos=bf, sin=bf, write_kv="*i1", k_cache=bf, v_cache=bf, out=bf, qk_scale="fp32")
    yield "decode attention", _ptx(
        decode_attention._attend,
        dict(cache, positions="*i64", part_m=f32, part_l=f32, part_acc=f32),
        dict(heads, BLOCK=64),
        num_warps=4, launch_pdl=on,
    )  # fmt: skip
    yield "prefill attention", _ptx(
        prefill_attention._prefill_attend, cache, dict(heads, BLOCK_M=16, BLOCK_N=64, HEAVY_FIRST=False),
        num_warps=4, num_stages=2, launch_pdl=on,
    )  # fmt: skip


def test_with_pdl_each_kernel_waits_before_any_memory_access_but_the_weight_prefetch(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for name, ptx in _kernels(True, prefetch=2048):
        wait, release = _first(ptx, "griddepcontrol.wait"), _first(ptx, "griddepcontrol.launch_dependents")
        assert wait is not None and release is not None and wait < release, name
        for access in ("ld.global", "st.global", "cp.async.cg", "cp.async.ca", "atom.global", "red.global"):
            at = _first(ptx, access)
            assert at is None or at > wait, f"{name}: {access} at PTX line {at}, before the wait at {wait}"
        if name in ("skinny", "gemv"):  # the one access allowed before the wait: L2 prefetches of the weight rows
            assert _first(ptx, "cp.async.bulk.prefetch.L2") < wait
    for name, ptx in _kernels(False):
        assert _first(ptx, "griddepcontrol") is None and _first(ptx, "cp.async.bulk.prefetch") is None, name


def test_pdl_is_on_only_where_asked_and_possible(monkeypatch, caplog):
    cuda0 = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(pdl, "_refused", set())
    monkeypatch.setattr(pdl, "_hopper", {})
    monkeypatch.setattr(pdl, "ENABLED", False)
    assert not pdl.active(cuda0)  # off by default
    monkeypatch.setattr(pdl, "ENABLED", True)
    assert pdl.active(cuda0) and not pdl.active(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (8, 0))
    assert not pdl.active(torch.device("cuda", 2))  # Ampere has no griddepcontrol
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    assert not pdl.active(torch.device("cuda", 2)) and pdl.active(cuda0)  # asked once a device
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not pdl.active(cuda0)  # the interpreter runs no PTX
    monkeypatch.delenv("TRITON_INTERPRET")
    with caplog.at_level(logging.WARNING, logger="rollgraph.pdl"):
        pdl.refuse(cuda0, "CUDA error: not supported")
    assert not pdl.active(cuda0) and pdl.active(torch.device("cuda", 1))
    assert "programmatic dependent launch unavailable on cuda:0 (CUDA error: not supported)" in caplog.text


def test_prefetch_takes_whole_16_byte_pieces_of_aligned_rows(monkeypatch):
    w = torch.empty(8, 104, dtype=torch.float16)  # rows of 208 bytes
    monkeypatch.setattr(pdl, "PREFETCH_BYTES", 1000)
    assert pdl.prefetch_bytes(w) == 208  # at most a row
    monkeypatch.setattr(pdl, "PREFETCH_BYTES", 100)
    assert pdl.prefetch_bytes(w) == 96  # in 16-byte pieces
    assert pdl.prefetch_bytes(w[:, 4:]) == 0  # rows start 8 bytes off a 16-byte boundary
    assert pdl.prefetch_bytes(torch.empty(8, 20, dtype=torch.float16)[:, :10]) == 0  # 40-byte rows: row 1 is off


def test_inductor_pdl_follows_the_knob(monkeypatch):
    import torch._inductor.config as inductor_config

    if not hasattr(inductor_config.triton, "enable_pdl"):
        pytest.skip(f"torch {torch.__version__}'s inductor has no PDL switch")
    monkeypatch.setattr(inductor_config.triton, "enable_pdl", False)
    monkeypatch.setattr(pdl, "active", lambda device: True)
    steps._inductor_pdl(torch.device("cuda", 0))
    assert inductor_config.triton.enable_pdl
    monkeypatch.setattr(pdl, "INDUCTOR", False)
    steps._inductor_pdl(torch.device("cuda", 0))
    assert not inductor_config.triton.enable_pdl
    monkeypatch.setattr(pdl, "INDUCTOR", True)
    monkeypatch.setattr(pdl, "active", lambda device: False)
    steps._inductor_pdl(torch.device("cpu"))
    assert not inductor_config.triton.enable_pdl


def test_a_pdl_chain_that_fails_its_probe_turns_pdl_off_and_keeps_the_kernels(monkeypatch):
    """The runner probes the few-row kernel's chain once more with PDL where PDL is on; a failure there costs PDL,
    not the kernel or its fusions."""
    from rollgraph import skinny_linear as sk

    refused = []
    monkeypatch.setattr(sk, "available", lambda *a: True)
    monkeypatch.setattr(sk, "probe", lambda *a, pdl_on=False, **k: "CUDA error: invalid argument" if pdl_on else None)
    monkeypatch.setattr(pdl, "active", lambda device: not refused)
    monkeypatch.setattr(pdl, "refuse", lambda device, why: refused.append(why))
    runner = llama.LlamaRunner(load_model(ModelConfig("llama-tiny", device="cpu")).model, 1, 64)
    assert refused == ["CUDA error: invalid argument"]
    assert runner.skinny_phases == {"prefill", "decode", "full"} and runner.gated_epilogue and runner.fused_norm
