"""GPU tests (marker `gpu`, skipped without CUDA): modes against eager, the byte budget, eviction, background capture.

Run on an H100 with `scripts/gpu_run.sh`; results are recorded under bench/results/.
"""

import gc

import pytest
import torch

from rollgraph.config import EngineConfig, ModelConfig, PoolConfig
from rollgraph.engine import Engine
from rollgraph.models import load_model
from rollgraph.params import GenerationParams, SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SMALL = dict(max_seq_len=256, prefill_buckets=(16, 32, 64), kv_bucket=128)
PROMPTS = [[1, 5, 9], list(range(20, 50)), list(range(7, 107, 3))]  # 3, 30 and 34 tokens


def engine_for(name, mode, dtype="float32", **kw):
    """float32 where kernels differ between the compared paths: random weights give flat logits, and bf16
    rounding would flip near-tied argmaxes. Same-kernel comparisons (graphs against eager) also run in bf16."""
    cfg = EngineConfig(mode=mode, **{**SMALL, **kw})
    eng = Engine(load_model(ModelConfig(name, dtype=dtype)), cfg)
    eng.warm_up(progress=False)
    return eng


def generate(engine, ids, n=24, **sampling):
    gen = engine.generate(GenerationParams(tuple(ids), n, SamplingParams(**sampling)))
    toks = list(gen)
    return toks, gen.result, engine.buffers.logits[0].clone()


def free(*engines):
    for e in engines:
        e.pool.clear()
    del engines
    gc.collect()
    torch.cuda.empty_cache()


@pytest.fixture(scope="module", params=["llama-tiny", "llama-3.2-1b"])
def eager_reference(request):
    eng = engine_for(request.param, "eager")
    torch.backends.cuda.matmul.allow_tf32 = False
    out = {tuple(p): generate(eng, p) for p in PROMPTS}
    sampled = generate(eng, PROMPTS[1], temperature=0.9, top_p=0.95, seed=4)[0]
    free(eng)
    return request.param, out, sampled


@pytest.mark.parametrize("mode", ["graphs", "compile+graphs", "compile", "seed"])
def test_mode_tokens_equal_eager(eager_reference, mode):
    name, want, sampled = eager_reference
    if mode == "compile" and name != "llama-tiny":
        pytest.skip("compile alone on llama-3.2-1b is covered by compile+graphs and the benchmark (compile time)")
    # Compiling a 1B model costs tens of seconds per shape: give compile modes one prefill and one decode shape.
    eng = engine_for(name, mode, **(dict(prefill_buckets=(64,), kv_bucket=0) if "compile" in mode else {}))
    for ids in PROMPTS:
        toks, result, logits = generate(eng, ids)
        ref_toks, _, ref_logits = want[tuple(ids)]
        assert toks == ref_toks, f"{mode} {name} prompt of {len(ids)}"
        if mode != "seed":  # seed's logits come from a full forward: same tokens, other rounding
            torch.testing.assert_close(logits, ref_logits, atol=1e-3, rtol=1e-3)
        if mode in ("graphs", "compile+graphs", "seed"):
            assert "eager" not in result.sources or mode == "seed", result.sources
    assert generate(eng, PROMPTS[1], temperature=0.9, top_p=0.95, seed=4)[0] == sampled
    free(eng)


@pytest.mark.parametrize("name", ["llama-tiny", "llama-3.2-1b"])
def test_graphs_equal_eager_in_bf16(name):
    """Replay runs the very kernels eager runs, so even bf16 tokens and logits must be identical. Eager mode's `auto`
    picks PyTorch's kernels, so the eager engine names the ones graphs mode settled on (`kernels()`, as the soak's
    reference does); on a GPU with Triton, `auto` settles on the Triton kernels."""
    graphs = engine_for(name, "graphs", dtype="bfloat16")
    kernels = graphs.kernels()
    assert kernels == {"attention": "triton", "matmul": "triton"}
    got = [generate(graphs, p) for p in PROMPTS]
    free(graphs)
    eager = engine_for(name, "eager", dtype="bfloat16", **kernels)
    for p, (toks, result, logits) in zip(PROMPTS, got, strict=True):
        want, _, want_logits = generate(eager, p)
        assert toks == want
        torch.testing.assert_close(logits, want_logits, atol=0, rtol=0)
        assert "eager" not in result.sources
    free(eager)


@pytest.mark.parametrize("name", ["llama-3.2-1b", "llama-2-7b"])
def test_native_runner_logits_match_transformers(name):
    """Norm weights drawn away from their initial ones (the same in both loads), as in trained models; the native
    runner's decode steps run skinny_linear, SiLU · up in its epilogue, against transformers' separate kernels.
    float32, so a near-tie in random weights' flat logits cannot flip a token (7B: two copies, ~54 GB)."""

    from skinny_check import draw_norm_weights

    def engine(runner, **kw):
        model = load_model(ModelConfig(name, dtype="float32"))
        draw_norm_weights(model.model, 11)
        eng = Engine(model, EngineConfig(mode="eager", runner=runner, **SMALL, **kw))
        eng.warm_up(progress=False)
        return eng

    native, hf = engine("native", matmul="triton"), engine("hf")
    ids = list(range(100, 160))
    a, _, la = generate(native, ids, 8)
    b, _, lb = generate(hf, ids, 8)
    assert a == b
    torch.testing.assert_close(la, lb, atol=1e-3, rtol=1e-3)
    free(native, hf)


@pytest.mark.parametrize("share", [False, True], ids=["private-pools", "shared-prefill-pool"])
def test_byte_budget_holds_and_eviction_returns_memory(share):
    eng = engine_for(
        "llama-3.2-1b",
        "graphs",
        precapture=False,
        max_seq_len=1024,
        kv_bucket=128,
        prefill_buckets=(16, 32, 64, 128, 256, 512),
    )
    keys = eng.default_keys()
    one = eng.pool.capture(keys[0], "pre").graph.nbytes
    budget = 3 * max(one, 1 << 21)
    eng.pool.config = PoolConfig(max_graphs=64, max_bytes=budget, share_prefill_pool=share)
    for key in keys:
        eng.pool.capture(key, "pre")
        assert eng.pool.total_bytes <= budget
    report = eng.pool.report()
    assert report["evictions"] > 0 and report["graphs"] < len(keys)
    held = eng.pool.total_bytes
    torch.cuda.synchronize()
    before = torch.cuda.memory_reserved()
    eng.pool.clear()
    after = torch.cuda.memory_reserved()
    assert before - after >= 0.9 * held, (before, after, held)
    toks, _result, _ = generate(eng, PROMPTS[0], 8)  # still serves, eagerly, after everything was evicted
    assert len(toks) == 8
    free(eng)


def test_background_and_inline_captures_change_no_token():
    ref = engine_for("llama-3.2-1b", "eager", max_seq_len=512)
    prompts = [list(range(3, 3 + n)) for n in (5, 20, 40, 70, 130, 20, 5)]
    want = [generate(ref, p, 40)[0] for p in prompts]
    free(ref)
    bg = engine_for("llama-3.2-1b", "graphs", precapture=False, max_seq_len=512)
    sources = []
    for p, w in zip(prompts, want, strict=False):
        toks, result, _ = generate(bg, p, 40)
        assert toks == w
        sources.append(dict(result.sources))
        while bg.idle_work():  # what the server's engine thread does between requests
            pass
    assert sources[0] == {"eager": 40}
    assert "background" in sources[-1] and "eager" not in sources[-1]
    free(bg)
    inline = engine_for("llama-3.2-1b", "graphs", precapture=False, max_seq_len=512, pool=PoolConfig(on_miss="capture"))
    for p, w in zip(prompts, want, strict=False):  # captures happen mid-request, between this request's own steps
        assert generate(inline, p, 40)[0] == w
    assert inline.pool.report()["captures"]["inline"] > 0
    free(inline)


@pytest.mark.parametrize(("dtype", "out_tol", "cache_tol"), [("float32", 1e-4, 1e-5), ("bfloat16", 3e-2, 6.3e-2)])
def test_fused_decode_attention_kernel_matches_the_reference(dtype, out_tol, cache_tol):
    """bf16 here (the CPU interpreter cannot): outputs within bf16 rounding of P, cache entries within one ulp."""
    from attention_check import max_errors

    for seed in range(3):
        errors = max_errors(getattr(torch, dtype), "cuda", seed)
        assert errors["out"] < out_tol and errors["cache"] <= cache_tol, errors


def test_fused_decode_attention_equals_sdpa_on_llama_1b():
    """Greedy tokens equal and logits close (fp32) with the fused kernel and with SDPA, across a split KV bucket."""
    prompts = [PROMPTS[1], [(5 * i) % 9000 + 3 for i in range(600)]]  # KV buckets 256 (one program) and 768 (split)
    runs = {}
    for attention in ("sdpa", "triton"):
        eng = engine_for("llama-3.2-1b", "eager", attention=attention, max_seq_len=1024)
        assert eng.runner.fused_decode is (attention == "triton")
        runs[attention] = [generate(eng, p, 24) for p in prompts]
        free(eng)
    for (a, _, la), (b, _, lb) in zip(runs["sdpa"], runs["triton"], strict=True):
        assert a == b
        torch.testing.assert_close(la, lb, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("split_from", [None, 1])
@pytest.mark.parametrize(("dtype", "out_tol", "cache_tol"), [("float32", 1e-4, 1e-5), ("bfloat16", 3e-2, 6.3e-2)])
def test_fused_prefill_attention_kernel_matches_the_reference(dtype, out_tol, cache_tol, split_from):
    """bf16 here (the CPU interpreter cannot): outputs within bf16 rounding of P, cache entries within one ulp; with
    the keys rotated in place by the attention kernel and (split_from 1) once by a kernel of their own."""
    from prefill_attention_check import max_errors

    for seed in range(3):
        errors = max_errors(getattr(torch, dtype), "cuda", seed, split_from)
        assert errors["out"] < out_tol and errors["cache"] <= cache_tol, errors


@pytest.mark.parametrize("mode", ["eager", "compile+graphs"])
def test_fused_prefill_attention_equals_sdpa_on_llama_1b(mode, monkeypatch):
    """Greedy tokens equal and logits close (fp32) with the fused prefill kernel and with SDPA, for prompts in the
    16- and 64-row buckets and one of 400 tokens (the long-prompt launch choice), eagerly and compiled into graphs."""
    from rollgraph import prefill_attention

    runs = {}
    for on in (False, True):
        monkeypatch.setattr(prefill_attention, "ENABLED", on)
        eng = engine_for("llama-3.2-1b", mode, attention="triton", max_seq_len=512, prefill_buckets=(16, 64, 432))
        assert eng.runner.fused_prefill is on
        runs[on] = [generate(eng, p, 16) for p in [*PROMPTS, [(7 * i) % 1000 + 3 for i in range(400)]]]
        free(eng)
    for (a, _, la), (b, _, lb) in zip(runs[False], runs[True], strict=True):
        assert a == b
        torch.testing.assert_close(la, lb, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("mode", ["graphs", "compile+graphs"])
def test_last_layer_on_the_last_row_alone_equals_every_row_on_llama_1b(mode, monkeypatch):
    """Prompts of 300 and 400 tokens (one 432-row bucket) with the last layer's output projection and MLP on the last
    row alone (LAST_ROW_FROM) and on every row: the same greedy tokens, logits close (fp32), replayed from graphs."""
    from rollgraph import llama

    prompts = [[(7 * i) % 1000 + 3 for i in range(n)] for n in (300, 400)]
    runs = {}
    for last in (None, 256):
        monkeypatch.setattr(llama, "LAST_ROW_FROM", last)
        eng = engine_for("llama-3.2-1b", mode, max_seq_len=512, prefill_buckets=(16, 432))
        runs[last] = [generate(eng, p, 16) for p in prompts]
        free(eng)
    for (a, ra, la), (b, rb, lb) in zip(runs[None], runs[256], strict=True):
        assert a == b
        torch.testing.assert_close(la, lb, atol=1e-3, rtol=1e-3)
        assert "eager" not in ra.sources and "eager" not in rb.sources


@pytest.mark.parametrize(("dtype", "tol"), [("float32", 1e-6), ("bfloat16", 8e-3)])
def test_silu_mul_matches_silu_times_up(dtype, tol):
    """Relative to the largest output: fp32 to rounding, bf16 within one rounding of the output (perf-notes v70)."""
    from skinny_check import silu_mul_error

    assert silu_mul_error(getattr(torch, dtype), "cuda") < tol


def test_silu_mul_in_graphs_equals_two_kernels_on_llama_1b(monkeypatch):
    """`graphs` with SiLU · up in one kernel past the few-row kernels (silu_mul.ENABLED, perf-notes v70) against
    PyTorch's two: prompts in the 64- and 128-row buckets, the same greedy tokens, logits close (fp32)."""
    from rollgraph import silu_mul

    prompts = [PROMPTS[2], [(11 * i) % 1000 + 3 for i in range(100)]]
    runs, calls, kernel = {}, [], silu_mul.silu_mul
    monkeypatch.setattr(silu_mul, "silu_mul", lambda y: calls.append(y.shape) or kernel(y))
    for on in (False, True):
        monkeypatch.setattr(silu_mul, "ENABLED", on)
        calls.clear()
        eng = engine_for("llama-3.2-1b", "graphs", prefill_buckets=(16, 64, 128))
        runs[on] = [generate(eng, p, 16) for p in prompts]
        free(eng)
        assert bool(calls) == on, f"silu_mul ran {len(calls)} times with ENABLED={on}"
    for (a, _, la), (b, rb, lb) in zip(runs[False], runs[True], strict=True):
        assert a == b
        torch.testing.assert_close(la, lb, atol=1e-3, rtol=1e-3)
        assert "eager" not in rb.sources


def test_compile_mode_inline_decode_attention_equals_the_opaque_op_on_llama_1b(monkeypatch):
    """`compile` mode (no graphs) with decode's attention as a Triton op that inductor launches (INLINE, perf-notes
    v73) against the opaque op: prompts in the one-program and the split KV buckets (merge kernel), the same greedy
    tokens, logits close (fp32)."""
    from torch.profiler import ProfilerActivity, profile

    from rollgraph import decode_attention as fused

    prompts = [PROMPTS[2], [(7 * i) % 1000 + 3 for i in range(600)]]
    runs = {}
    torch._dynamo.reset()  # as a server process starts: no entries compiled for other models' shapes
    for inline in (False, True):
        monkeypatch.setattr(fused, "INLINE", inline)
        # One prefill shape and two decode ones (one program, split): each compiled shape costs tens of seconds.
        eng = engine_for("llama-3.2-1b", "compile", max_seq_len=1024, prefill_buckets=(64,), kv_bucket=512)
        with profile(activities=[ProfilerActivity.CPU]) as prof:  # which op the compiled layer runs
            runs[inline] = [generate(eng, p, 16) for p in prompts]
        free(eng)
        names = {e.name for e in prof.events()}
        assert ("rollgraph::decode_attention" in names) != inline, sorted(n for n in names if "attend" in n)
        assert any(n.startswith("_attend") for n in names) == inline, sorted(n for n in names if "attend" in n)
    for (a, _, la), (b, _, lb) in zip(runs[False], runs[True], strict=True):
        assert a == b
        torch.testing.assert_close(la, lb, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize(("dtype", "tol"), [("float32", 1e-5), ("bfloat16", 8e-3)])
def test_skinny_linear_matches_f_linear(dtype, tol):
    """Relative to the largest output: fp32 without TF32, bf16 within one rounding of the output."""
    from skinny_check import max_error, norm_error

    for seed in range(3):
        assert max_error(getattr(torch, dtype), "cuda", seed) < tol
        assert norm_error(getattr(torch, dtype), "cuda", seed) < 2 * tol  # x is stored once, then normalised


def test_skinny_matmul_equals_cublas_on_llama_1b():
    """Greedy tokens equal and logits close (fp32) with skinny_linear and with F.linear, for prompts in the 16- and
    32-row buckets (skinny) and the 64-row one (cuBLAS either way), in eager and in graphs mode."""
    runs = {}
    for mode in ("eager", "graphs"):
        for matmul in ("torch", "triton"):
            eng = engine_for("llama-3.2-1b", mode, matmul=matmul)
            assert eng.runner.skinny_phases == (frozenset() if matmul == "torch" else {"prefill", "decode", "full"})
            runs[mode, matmul] = [generate(eng, p) for p in PROMPTS]
            free(eng)
    for mode in ("eager", "graphs"):
        for (a, _, la), (b, _, lb) in zip(runs[mode, "torch"], runs[mode, "triton"], strict=True):
            assert a == b
            torch.testing.assert_close(la, lb, atol=1e-3, rtol=1e-3)


def test_norms_carried_in_skinny_equal_separate_norms_on_llama_1b(monkeypatch):
    """perf-notes v35, on by default: the norms carried in skinny_linear's sums of squares (their weights folded into
    the projections) against F.rms_norm, fp32, norm weights drawn away from one; eager and graphs, prompts in the
    16- and 32-row buckets (the norm in the kernel from the second layer on) and in the 64-row one (cuBLAS)."""
    from rollgraph import skinny_linear as sk
    from skinny_check import draw_norm_weights

    def run(mode, fused):
        monkeypatch.setattr(sk, "FUSE_NORM", fused)
        model = load_model(ModelConfig("llama-3.2-1b", dtype="float32"))
        draw_norm_weights(model.model, 11)
        eng = Engine(model, EngineConfig(mode=mode, matmul="triton", **SMALL))
        eng.warm_up(progress=False)
        assert eng.runner.fused_norm == fused
        out = [generate(eng, p) for p in PROMPTS]
        free(eng)
        return out

    for mode in ("eager", "graphs"):
        for (a, _, la), (b, _, lb) in zip(run(mode, True), run(mode, False), strict=True):
            assert a == b
            torch.testing.assert_close(la, lb, atol=1e-3, rtol=1e-3)


def test_configs_are_timed_after_clean_reads():
    """perf-notes v50: the compile modes route inductor's timing of configs through tune_timing, and it gives a
    plausible time: a 64 MB copy (read + write) at 0.5-10 TB/s (an H100 copies at ~3 TB/s, an H200 at ~4.3)."""
    from torch._inductor.runtime import benchmarking

    from rollgraph import tune_timing
    from rollgraph.steps import _generate_batch1_matmuls

    _generate_batch1_matmuls()
    assert type(benchmarking.benchmarker).benchmark_gpu._rollgraph_clean
    src = torch.ones(32 << 20, dtype=torch.float16, device="cuda")
    dst = torch.empty_like(src)
    ms = tune_timing.time_after_clean_reads(lambda: dst.copy_(src))
    assert 2 * src.nbytes / 10e12 * 1e3 < ms < 2 * src.nbytes / 0.5e12 * 1e3
    assert benchmarking.benchmarker.benchmark_gpu(lambda: dst.copy_(src), rep=40) == pytest.approx(ms, rel=0.3)


@pytest.mark.parametrize("mode, want", [("eager", [1, 2, 3, 4, 5]), ("graphs", [2, 3, 4, 5, 5])])
def test_only_a_replayed_step_is_launched_before_the_token_before_it(mode, want):
    """An op-by-op step's launch takes as long as the step: token 0 must not wait for step 1's launch in eager."""
    eng = engine_for("llama-tiny", mode)
    gen = eng.generate(GenerationParams(tuple(PROMPTS[1]), 5))
    counts = [sum(gen.result.sources.values()) for _ in gen]
    assert counts == want, counts  # steps run when each token came out
    free(eng)


def force_choice(key: tuple, choice: str, candidates: dict) -> None:
    """Make blas_choice run `choice` (a library, or one of `candidates` by name) for the shape `key`."""
    from rollgraph import blas_choice

    blas_choice._algos.pop(key, None)
    if choice in candidates:
        blas_choice._algos[key] = (choice, candidates[choice])
    else:
        blas_choice._chosen[key] = choice


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_blas_choice_times_both_libraries_and_every_choice_adds_the_product_in_graphs(dtype):
    """perf-notes v57, v65: choose() times cuBLAS, cuBLASLt and (from ALGORITHM_ROWS rows) the finalists of
    cuBLASLt's ranked algorithms on prefill-sized products and keeps one per shape; each library's and each
    finalist's in-place product equals the float product, run as it is and replayed from a CUDA graph."""
    from rollgraph import blas_choice

    blas_choice.forget()
    g = torch.Generator(device="cuda").manual_seed(3)
    w = torch.randn(2048, 8192, device="cuda", dtype=dtype, generator=g) * 0.02  # llama-3.2-1b's down projection
    timings = blas_choice.choose([48, 400], [w])
    assert set(timings) == {(48, 2048, 8192), (400, 2048, 8192)}
    assert set(timings[(48, 2048, 8192)]) == {"cublas", "cublaslt"}
    finalists = [n for n in timings[(400, 2048, 8192)] if n not in blas_choice.LIBRARIES]
    assert 1 <= len(finalists) <= blas_choice.FINALISTS, timings
    for us in timings.values():
        assert {"cublas", "cublaslt"} <= set(us) and all(0 < t < 5000 for t in us.values()), us
    assert set(blas_choice.choices().values()) <= {"cublas", "cublaslt", *finalists}
    assert len(blas_choice.choices()) == 2
    assert blas_choice.choose([400, 48], [w]) == timings  # chosen once a process: the second call times nothing
    x = torch.randn(400, 8192, device="cuda", dtype=dtype, generator=g)
    r0 = torch.randn(400, 2048, device="cuda", dtype=dtype, generator=g)
    want = (r0.float() + x.float() @ w.float().T).to(dtype)
    default = torch.backends.cuda.preferred_blas_library()
    key = blas_choice._key(400, w)
    candidates = blas_choice._algorithms(400, w)
    for choice in (*blas_choice.LIBRARIES, *finalists):
        force_choice(key, choice, candidates)
        r = r0.clone()
        blas_choice.add_product_(r, x, w)
        torch.testing.assert_close(r, want, atol=2e-2, rtol=2e-2)
        assert torch.backends.cuda.preferred_blas_library() == default  # put back after the product
        r.copy_(r0)
        graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            blas_choice.add_product_(r.clone(), x, w)  # warm the library's handle and workspace on this stream
            with torch.cuda.graph(graph, stream=stream):
                blas_choice.add_product_(r, x, w)
        torch.testing.assert_close(r, r0)  # captured, not run
        torch.cuda.current_stream().wait_stream(stream)
        graph.replay()
        torch.testing.assert_close(r, want, atol=2e-2, rtol=2e-2)
    blas_choice.forget()


def test_plain_products_are_chosen_apart_and_every_choice_gives_the_product_in_graphs():
    """perf-notes v85: choose(accumulate=False) times the plain product r = x @ w.T (llama-3.2-1b's gate/up at 400
    rows) apart from the residual one of the same weight, and blas_choice.product gives the float product through
    each library and each finalist, run as it is and replayed from a CUDA graph."""
    from rollgraph import blas_choice

    blas_choice.forget()
    g = torch.Generator(device="cuda").manual_seed(5)
    w = torch.randn(16384, 2048, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
    timings = blas_choice.choose([400], [w], accumulate=False)
    assert set(timings) == {(400, 16384, 2048, "plain")}
    finalists = [n for n in timings[(400, 16384, 2048, "plain")] if n not in blas_choice.LIBRARIES]
    assert 1 <= len(finalists) <= blas_choice.FINALISTS, timings
    assert blas_choice.choose([400], [w]).keys() == {(400, 16384, 2048)}  # the residual product: its own choice
    x = torch.randn(400, 2048, device="cuda", dtype=torch.bfloat16, generator=g)
    want = (x.float() @ w.float().T).to(torch.bfloat16)
    key = blas_choice._key(400, w, False)
    candidates = blas_choice._algorithms(400, w)
    for choice in (*blas_choice.LIBRARIES, *finalists):
        force_choice(key, choice, candidates)
        torch.testing.assert_close(blas_choice.product(x, w), want, atol=2e-2, rtol=2e-2)
        graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            blas_choice.product(x, w)  # warm the library's handle and workspace on this stream
            with torch.cuda.graph(graph, stream=stream):
                out = blas_choice.product(x, w)
        torch.cuda.current_stream().wait_stream(stream)
        graph.replay()
        torch.testing.assert_close(out, want, atol=2e-2, rtol=2e-2, msg=lambda m, c=choice: f"{c} (graph): {m}")
    blas_choice.forget()


@pytest.mark.parametrize("rows", [256, 320, 384, 400, 432])
def test_every_cublaslt_algorithm_listed_for_a_shape_adds_the_product_and_unaligned_tensors_are_refused(rows):
    """perf-notes v65: every algorithm lt_matmul lists for llama-2-7b's down projection (the heuristic's own, and
    those borrowed from other row counts after cuBLASLt's check) gives the float product within bf16 tolerance;
    a tensor off the alignment the heuristic was told of is refused by `fits`, so the library runs it instead."""
    from rollgraph import blas_choice, lt_matmul

    g = torch.Generator(device="cuda").manual_seed(5)
    w = torch.randn(4096, 11008, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
    x = torch.randn(rows, 11008, device="cuda", dtype=torch.bfloat16, generator=g)
    r0 = torch.randn(rows, 4096, device="cuda", dtype=torch.bfloat16, generator=g)
    want = (r0.float() + x.float() @ w.float().T).to(torch.bfloat16)
    prod = lt_matmul.product(rows, 4096, 11008, torch.bfloat16)
    cands = prod.candidates(borrow_rows=blas_choice.BORROW_ROWS)
    assert len(cands) >= 2 and len({bytes(c.algo) for c in cands}) == len(cands)
    for c in cands:
        r = r0.clone()
        assert prod.fits(r, x, w)
        prod.run(c, r, x, w)
        torch.testing.assert_close(r, want, atol=3e-2, rtol=2e-2, msg=lambda m, c=c: f"{c.describe()}: {m}")
    buf = torch.empty(rows * 11008 + 8, device="cuda", dtype=torch.bfloat16)
    unaligned = buf[8:].view(rows, 11008)  # 16 bytes past an aligned block
    assert not prod.fits(r0.clone(), unaligned, w) and not prod.fits(r0.clone(), x, w.t().contiguous().t())


_KEPT_CHOICES_CHILD = """
import json, sys, torch
from rollgraph import blas_choice
def no_timing(*args, **kwargs):
    raise AssertionError("a kept shape was timed again")
blas_choice._time_all = no_timing
rows, store = json.loads(sys.argv[1]), sys.argv[2]
g = torch.Generator(device="cuda").manual_seed(3)
w = torch.randn(2048, 8192, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
blas_choice.choose(rows, [w], store=store)
errors = {}
for m in rows:
    x = torch.randn(m, 8192, device="cuda", dtype=torch.bfloat16, generator=g)
    r0 = torch.randn(m, 2048, device="cuda", dtype=torch.bfloat16, generator=g)
    want = r0.float() + x.float() @ w.float().T
    r = r0.clone()
    blas_choice.add_product_(r, x, w)
    bound = 3e-2 + 2e-2 * want.abs()  # assert_close's bf16 tolerance, as the other product tests use
    plain = ((r.float() - want).abs() - bound).max().item()
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    r.copy_(r0)
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        blas_choice.add_product_(r, x, w)
    torch.cuda.current_stream().wait_stream(stream)
    r.copy_(r0)
    graph.replay()
    errors[m] = [plain, ((r.float() - want).abs() - bound).max().item()]
print(json.dumps({"choices": {str(k[0]): v for k, v in blas_choice.choices().items()}, "errors": errors}))
"""


def test_blas_choices_kept_in_a_store_are_taken_by_another_process(tmp_path):
    """blas_store: the choices this process timed for llama-3.2-1b's down projection at 256-432 rows are written to
    the file; another process takes them all, cuBLASLt algorithms as kept bytes that cuBLASLt's check accepts again,
    times none (its timing raises), and every product it then runs is the float one within bf16 tolerance, plainly
    and replayed from a CUDA graph (no element past assert_close's atol 3e-2, rtol 2e-2)."""
    import json
    import os
    import subprocess
    import sys

    from rollgraph import blas_choice

    rows, store = [256, 320, 384, 400, 432], str(tmp_path / "choices.json")
    blas_choice.forget()
    try:
        w = torch.randn(2048, 8192, device="cuda", dtype=torch.bfloat16) * 0.02
        blas_choice.choose(rows, [w], store=store)
        here = {str(k[0]): v for k, v in blas_choice.choices().items()}
    finally:
        blas_choice.forget()
    if torch.cuda.get_device_capability() == (9, 0):
        assert any(v not in blas_choice.LIBRARIES for v in here.values()), here  # at least one algorithm is kept
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["src", os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run(
        [sys.executable, "-c", _KEPT_CHOICES_CHILD, json.dumps(rows), store],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    there = json.loads(child.stdout.strip().splitlines()[-1])
    assert there["choices"] == here
    for m, (plain, graphed) in there["errors"].items():
        assert plain <= 0 and graphed <= 0, (m, here[m], plain, graphed)


@pytest.mark.parametrize(
    ("rows", "n", "k", "accumulate"),
    [
        (400, 4096, 11008, True),
        (400, 4096, 4096, True),
        (320, 4096, 11008, True),
        (400, 22016, 4096, False),
        (320, 12288, 4096, False),
        (256, 2048, 8192, True),
    ],
)
def test_fitted_tile_configurations_add_the_product_and_fit_the_rows(rows, n, k, accumulate):
    """perf-notes v82, v85: the configurations blas_choice builds outside cuBLASLt's list, a tile whose token side fits
    the rows on a copy of the heuristic's first candidates, each give the float product within bf16 tolerance, in a
    CUDA graph too: added into the residual (llama-2-7b's output and down projections; on Hopper at 400 rows at least
    one, 64 x 200 or 128 x 104) or plain, where the output's old values are never read (its gate/up and QKV,
    blas_choice.product); and where one of the bases splits K (llama-3.2-1b's down projection at 256 rows on an
    H200), copies without the split (perf-notes v86)."""
    from rollgraph import blas_choice, lt_matmul, lt_tiles

    g = torch.Generator(device="cuda").manual_seed(7)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16, generator=g)
    r0 = torch.randn(rows, n, device="cuda", dtype=torch.bfloat16, generator=g)
    if not accumulate:
        r0.fill_(float("nan"))  # beta 0: a NaN read would show in every output
    want = ((r0.float() if accumulate else 0) + x.float() @ w.float().T).to(torch.bfloat16)
    fitted = {name: c for name, c in blas_choice._algorithms(rows, w).items() if name.startswith("fit")}
    if torch.cuda.get_device_capability() == (9, 0):
        assert fitted, "no fitted configuration on a Hopper GPU"
    prod = lt_matmul.product(rows, n, k, torch.bfloat16)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    bases = [c.describe() for c in prod.candidates(borrow_rows=blas_choice.BORROW_ROWS)[: blas_choice.FIT_BASES]]
    if any(b.get("split_k", 1) > 1 for b in bases):
        assert any(name.endswith("/k1") for name in fitted), f"no unsplit copy of a split-K base: {sorted(fitted)}"
    for name, c in fitted.items():
        tile = c.describe()["tile"]
        if name.endswith("/k1"):
            assert c.describe().get("split_k", 1) == 1, name
        assert name.startswith(f"fit{lt_tiles.name(tile)}/algo") and tile in lt_tiles.fitted([tile], rows, n, sms)
        r = r0.clone()
        prod.run(c, r, x, w, accumulate)
        torch.testing.assert_close(r, want, atol=3e-2, rtol=2e-2, msg=lambda m, name=name: f"{name}: {m}")
        r.copy_(r0)
        graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
            prod.run(c, r, x, w, accumulate)
        torch.cuda.current_stream().wait_stream(stream)
        graph.replay()
        torch.testing.assert_close(r, want, atol=3e-2, rtol=2e-2, msg=lambda m, name=name: f"{name} (graph): {m}")
