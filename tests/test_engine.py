"""Engine on CPU: tokens against transformers' own generate, every mode, sampling, prefix reuse, bad requests."""

import pytest
import torch

from rollgraph.config import EngineConfig, ModelConfig
from rollgraph.engine import Engine
from rollgraph.errors import RequestError
from rollgraph.models import load_model
from rollgraph.params import GenerationParams, SamplingParams


def make_engine(name, **kw):
    return Engine(load_model(ModelConfig(name)), EngineConfig(max_seq_len=kw.pop("max_seq_len", 256), **kw))


def run(engine, ids, n=12, **sampling):
    gen = engine.generate(GenerationParams(tuple(ids), n, SamplingParams(**sampling)))
    toks = list(gen)
    assert toks == gen.result.output_tokens
    return toks


def hf_greedy(folder, ids, n):
    ref = load_model(ModelConfig(folder)).model
    x = torch.tensor([ids])  # an explicit mask: otherwise generate() masks every id equal to pad_token_id
    out = ref.generate(
        x,
        attention_mask=torch.ones_like(x),
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    return out[0, len(ids) :].tolist()


@pytest.mark.parametrize("folder", ["llama_dir", "qwen2_dir"])
def test_greedy_equals_transformers_generate(folder, request):
    path = request.getfixturevalue(folder)
    engine = make_engine(path, mode="eager")
    g = torch.Generator().manual_seed(5)
    for length in (1, 7, 16, 17, 40):
        ids = torch.randint(0, 300, (length,), generator=g).tolist()
        assert run(engine, ids, 20) == hf_greedy(path, ids, 20), f"prompt length {length}"


@pytest.mark.parametrize("folder", ["llama_dir", "qwen2_dir"])
def test_last_layer_on_the_last_row_alone_equals_transformers_generate(folder, request, monkeypatch):
    """LAST_ROW_FROM lowered so the tiny models' prompts take it: the last layer's output projection and MLP on the
    last row alone still give transformers' greedy tokens (the wrong row, or a row of padding, would not)."""
    from rollgraph import llama

    taken = []
    monkeypatch.setattr(llama, "LAST_ROW_FROM", 8)
    rows = llama._last_rows
    monkeypatch.setattr(llama, "_last_rows", lambda t, i: taken.append(t.shape) or rows(t, i))
    path = request.getfixturevalue(folder)
    engine = make_engine(path, mode="eager")
    g = torch.Generator().manual_seed(6)
    for length in (8, 17, 40):
        ids = torch.randint(0, 300, (length,), generator=g).tolist()
        assert run(engine, ids, 12) == hf_greedy(path, ids, 12), f"prompt length {length}"
    assert len(taken) == 2 * 3  # the residual stream and the attention output, once a prefill


def test_transformers_fallback_runner_matches_generate(gpt2_dir):
    engine = make_engine(gpt2_dir, mode="eager")
    assert type(engine.runner).__name__ == "HFRunner"
    ids = [5, 17, 250, 3, 9]
    assert run(engine, ids, 10) == hf_greedy(gpt2_dir, ids, 10)


def test_hf_runner_equals_native_runner(llama_dir):
    ids = [4, 8, 15, 16, 23, 42]
    assert run(make_engine(llama_dir, runner="hf"), ids) == run(make_engine(llama_dir, runner="native"), ids)


@pytest.mark.parametrize("mode", ["graphs", "compile+graphs", "seed"])
def test_every_mode_matches_eager_on_cpu(mode, caplog):
    ids = [1, 50, 60, 70, 80]
    want = run(make_engine("llama-tiny", mode="eager"), ids)
    engine = make_engine("llama-tiny", mode=mode)
    assert run(engine, ids) == want
    assert "CUDA graphs are off" in caplog.text
    assert engine.stats()["pool"]["graphs"] == 0


def test_stats_name_the_kernels_the_runner_settled_on(gpt2_dir):
    # On the CPU Triton cannot run: `auto` falls back to PyTorch's kernels in every mode, and naming them is allowed.
    assert make_engine("llama-tiny", mode="graphs").stats()["kernels"] == {"attention": "sdpa", "matmul": "torch"}
    eager = make_engine("llama-tiny", mode="eager", attention="sdpa", matmul="torch")
    assert eager.kernels() == {"attention": "sdpa", "matmul": "torch"}
    assert make_engine(gpt2_dir, mode="eager").kernels() == {"attention": None, "matmul": None}


def test_compile_mode_matches_eager_on_cpu():
    ids = [1, 50, 60]
    want = run(make_engine("llama-tiny", mode="eager"), ids, 4)
    engine = make_engine("llama-tiny", mode="compile")
    gen = engine.generate(GenerationParams(tuple(ids), 4))
    assert list(gen) == want
    assert gen.result.sources == {"compiled": 4}


def test_sampling_is_seeded_and_same_in_every_mode():
    ids = [1, 2, 3]
    a = run(make_engine("llama-tiny", mode="eager"), ids, 16, temperature=1.0, seed=7)
    b = run(make_engine("llama-tiny", mode="seed"), ids, 16, temperature=1.0, seed=7)
    c = run(make_engine("llama-tiny", mode="eager"), ids, 16, temperature=1.0, seed=8)
    assert a == b and a != c
    greedy = run(make_engine("llama-tiny", mode="eager"), ids, 16)
    assert run(make_engine("llama-tiny", mode="eager"), ids, 16, temperature=1.0, top_k=1, seed=3) == greedy
    assert run(make_engine("llama-tiny", mode="eager"), ids, 16, temperature=1.0, top_p=1e-6, seed=3) == greedy


def test_stop_tokens_and_finish_reasons():
    engine = make_engine("llama-tiny", mode="eager")
    toks = run(engine, [1, 2, 3], 12)
    stop = toks[4]
    gen = engine.generate(GenerationParams((1, 2, 3), 12, stop_token_ids=(stop,)))
    got = list(gen)
    assert got == toks[: toks.index(stop) + 1] and gen.result.finish_reason == "stop"
    gen = engine.generate(GenerationParams((1, 2, 3), 3))
    list(gen)
    assert gen.result.finish_reason == "length"


def steps_run_at_each_token(engine, ids, n):
    """How many steps had run when each token came out (a step is counted once its source is known)."""
    gen = engine.generate(GenerationParams(tuple(ids), n))
    return [sum(gen.result.sources.values()) for _ in gen], gen.result.output_tokens


def test_a_step_is_launched_ahead_only_where_it_replays(monkeypatch):
    engine = make_engine("llama-tiny", mode="eager")
    ids = [3, 1, 4, 1, 5]
    counts, plain = steps_run_at_each_token(engine, ids, 6)
    assert counts == [1, 2, 3, 4, 5, 6]  # nothing replays here: step i+1 starts after token i is out
    monkeypatch.setattr(engine, "_replays", lambda key: key.phase == "decode")  # as if each step were a graph
    counts, ahead = steps_run_at_each_token(engine, ids, 6)
    assert counts == [2, 3, 4, 5, 6, 6] and ahead == plain  # step i+1 launched before token i is read
    engine = make_engine("llama-tiny", mode="eager", kv_bucket=8)  # steps 1-3 read 8 cache entries, 4-5 16
    monkeypatch.setattr(engine, "_replays", lambda key: key.length > 8)  # as if only the 16 graph were held
    counts, mixed = steps_run_at_each_token(engine, ids, 6)
    assert counts == [1, 2, 3, 5, 6, 6] and mixed == plain


@pytest.mark.parametrize("replays", [False, True])
def test_resend_loop_reuses_the_row_and_changes_no_token(replays, monkeypatch):
    ids = [1, 9, 8, 7]
    fresh = run(make_engine("llama-tiny", mode="eager"), ids, 10)
    engine = make_engine("llama-tiny", mode="eager")
    if replays:  # as if every decode step were a held graph: the resend's step is speculated
        monkeypatch.setattr(engine, "_replays", lambda key: key.phase == "decode")
    seq, got, steps = list(ids), [], []
    for _ in range(10):  # the original client's loop: resend the whole sequence for each token
        gen = engine.generate(GenerationParams(tuple(seq), 1))
        tok = next(iter(gen))
        got.append(tok)
        steps.append(sum(gen.result.sources.values()))
        reused = gen.result.prefix_reused
        seq.append(tok)
    assert got == fresh
    if replays:
        assert reused == len(seq) - 1  # the last request found its token already made by the speculated step
        assert engine.counters == {"prefill": 1, "ahead_hit": 9}
    else:  # a step run op by op is not speculated: each resend feeds its one new token
        assert reused == len(seq) - 2
        assert engine.counters == {"prefill": 1, "extend": 9}
        assert steps == [1] * 10  # no request ran a step after its own token


def test_reuse_after_streaming_equals_streaming():
    """A resend that starts from a streamed generation's prompt must not reuse a decode-made position."""
    engine = make_engine("llama-tiny", mode="eager")
    ids = [2, 30, 31, 32, 33]
    streamed = run(engine, ids, 8)
    seq = list(ids)
    for _ in range(8):
        seq.append(next(iter(engine.generate(GenerationParams(tuple(seq), 1)))))
    assert seq[len(ids) :] == streamed
    assert engine.counters["prefill"] == 2  # the prompt alone is a prefix of the held row: prefilled afresh


def test_extend_by_a_token_the_model_did_not_choose(monkeypatch):
    ids = [5, 6, 7]
    engine = make_engine("llama-tiny", mode="eager")
    monkeypatch.setattr(engine, "_replays", lambda key: key.phase == "decode")  # so the one-token reply speculates
    first = run(engine, ids, 1)[0]
    other = (first + 1) % 300
    got = run(engine, [*ids, first, other], 6)  # held row + speculated token + one new token
    assert got == run(make_engine("llama-tiny", mode="eager"), [*ids, first, other], 6)
    assert engine.counters["ahead_wasted"] == 1 and engine.counters["extend"] == 1


def test_cancel_frees_and_reports():
    engine = make_engine("llama-tiny", mode="eager")
    gen = engine.generate(GenerationParams((1, 2, 3), 50))
    next(iter(gen))
    gen.close()
    assert gen.result.finish_reason == "cancelled"
    assert run(engine, [1, 2, 3], 5) == run(make_engine("llama-tiny", mode="eager"), [1, 2, 3], 5)


def test_long_prompt_past_every_bucket_runs_eagerly():
    engine = make_engine("llama-tiny", mode="graphs", prefill_buckets=(16,), max_seq_len=64)
    ids = list(range(10, 50))
    assert run(engine, ids, 5) == run(make_engine("llama-tiny", mode="eager", max_seq_len=64), ids, 5)


@pytest.mark.parametrize(
    ("ids", "n", "code", "text"),
    [
        ([1, 320], 4, "invalid_token", "[0, 320)"),
        ([1, 2], 255, "too_long", "maximum sequence length 256"),
        ([1, 2], 5000, "invalid_value", "cap"),
    ],
)
def test_bad_requests_are_typed_errors(ids, n, code, text):
    engine = make_engine("llama-tiny", mode="eager")
    with pytest.raises(RequestError) as e:
        engine.generate(GenerationParams(tuple(ids), n))
    assert e.value.code == code and text in e.value.message
    assert run(engine, [1, 2], 3)  # still serving


def test_ids_of_an_int_subclass_are_checked_by_value():
    """GenerationParams takes int subclasses (not bool); the engine's range check must too (it used to fail on them
    with an IndexError, an `internal` error, even in range)."""
    import enum

    class Tok(enum.IntEnum):
        A = 5
        B = 7
        FAR = 999

    engine = make_engine("llama-tiny", mode="eager")
    assert run(engine, [Tok.A, Tok.B, 3], 4) == run(make_engine("llama-tiny", mode="eager"), [5, 7, 3], 4)
    for ids, shown in (((Tok.A, Tok.FAR), "999"), ((4, -1), "-1")):
        with pytest.raises(RequestError, match=rf"token id {shown} is out of range") as e:
            engine.generate(GenerationParams(ids, 2))
        assert e.value.code == "invalid_token"


def test_ids_the_protocol_checked_are_range_checked_by_their_largest():
    """perf-notes v83: ids from a parsed request are TokenIds, which the engine checks by their largest id alone; one
    past the vocabulary anywhere in the prompt is refused as for plain tuples, and the rest run as plain ids do."""
    from rollgraph.params import TokenIds
    from rollgraph.protocol import parse_request

    engine = make_engine("llama-tiny", mode="eager")
    vocab = engine.vocab_size
    ok = parse_request({"type": "generate", "input_tokens": [3, vocab - 1, 0], "max_new_tokens": 3}).params
    assert type(ok.input_ids) is TokenIds and ok.input_ids.top == vocab - 1
    assert list(engine.generate(ok)) == run(engine, [3, vocab - 1, 0], 3)
    for ids in ([vocab, 1, 2], [1, vocab + 7, 2], [1, 2, vocab]):
        params = parse_request({"type": "generate", "input_tokens": ids}).params
        with pytest.raises(RequestError, match=rf"token id {max(ids)} is out of range") as e:
            engine.validate(params)
        assert e.value.code == "invalid_token"
    assert run(engine, [1, 2], 3)  # still serving


@pytest.mark.parametrize(
    "kw",
    [
        dict(temperature=-1),
        dict(top_k=-2),
        dict(top_p=0),
        dict(top_p=1.5),
        dict(seed=-1),
        dict(temperature=True),
    ],
)
def test_bad_sampling_values(kw):
    with pytest.raises(RequestError, match="must be"):
        SamplingParams(**kw)


@pytest.mark.parametrize("kw", [dict(mode="fast"), dict(prefill_buckets=(32, 16)), dict(max_seq_len=1)])
def test_bad_engine_config(kw):
    with pytest.raises(ValueError, match="must"):
        EngineConfig(**kw)


def test_steps_run_from_threads_leave_the_cache_and_buffers_as_they_were(caplog):
    """What warm_up does before capturing on a GPU (to build Triton kernels in parallel), here on CPU: every default
    key's step from four threads, none failing, no cache entry written, the engine's buffers untouched, and the
    engine's tokens the same afterwards; a step that cannot run is counted and logged, not raised."""
    from rollgraph.graphs import GraphKey
    from rollgraph.steps import _spread, run_once_in_threads

    engine = make_engine("llama-tiny", mode="eager")
    ids = [1, 50, 60, 70, 80]
    want = run(engine, ids)  # row 0 now holds this sequence
    cache = [t.clone() for t in engine.runner.cache.keys + engine.runner.cache.values]
    buffers = engine.buffers.snapshot()
    keys = engine._bucket_keys()
    assert sorted(map(str, _spread(keys))) == sorted(map(str, keys))
    assert run_once_in_threads(engine.runner, keys, engine.vocab_size, engine.device, 4) == 0
    after = engine.runner.cache.keys + engine.runner.cache.values
    assert all(torch.equal(a, b) for a, b in zip(cache, after, strict=True))
    assert all(torch.equal(v, getattr(engine.buffers, k)) for k, v in buffers.items())
    assert run(engine, ids) == want
    too_wide = GraphKey("prefill", 4, 16)  # four rows against a one-row cache
    assert run_once_in_threads(engine.runner, [too_wide], engine.vocab_size, engine.device, 2) == 1
    assert "building the kernels of prefill/b4/T16/greedy failed" in caplog.text


def test_launch_ms_is_reported_up_to_token_0s_launch():
    engine = make_engine("llama-tiny", mode="eager")
    gen = engine.generate(GenerationParams((1, 2, 3), 4))
    list(gen)
    assert 0 <= gen.result.launch_ms <= gen.result.prefill_ms
    assert gen.result.to_dict()["timings"]["launch_ms"] == round(gen.result.launch_ms, 3)
    seed = make_engine("llama-tiny", mode="seed")
    gen = seed.generate(GenerationParams((1, 2, 3), 2))
    list(gen)
    assert gen.result.launch_ms is None  # the seed loop launches token 0 itself


@pytest.mark.parametrize("mode", ["eager", "seed"])
def test_start_launches_token_0_before_it_returns_and_yields_what_generate_does(mode, monkeypatch):
    engine, ids = make_engine("llama-tiny", mode=mode), [4, 8, 15, 16, 23]
    launched = []
    monkeypatch.setattr(engine, "_first_token", _counting(engine._first_token, launched))
    gen = engine.start(GenerationParams(tuple(ids), 6))
    assert launched == ([] if mode == "seed" else [1])  # seed mode's loop launches every step itself
    assert engine.requests == 1 and gen.result.output_tokens == []
    assert list(gen) == run(make_engine("llama-tiny", mode=mode), ids, 6)


def _counting(fn, calls):
    def wrapped(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return wrapped


def test_start_refuses_a_bad_request_before_launching_anything():
    engine = make_engine("llama-tiny", mode="eager")
    with pytest.raises(RequestError, match=r"\[0, 320\)"):
        engine.start(GenerationParams((1, 320), 4))
    assert engine.requests == 0


def test_a_failed_launch_raises_at_the_first_next_and_the_engine_goes_on(monkeypatch):
    engine = make_engine("llama-tiny", mode="eager")
    ids = [7, 6, 5]
    with monkeypatch.context() as m:
        m.setattr(engine, "_prefill", lambda *a: (_ for _ in ()).throw(RuntimeError("injected launch failure")))
        gen = engine.start(GenerationParams(tuple(ids), 3))  # the error waits for the iteration, as generate's does
        with pytest.raises(RuntimeError, match="injected"):
            next(iter(gen))
        gen.close()
    assert run(engine, ids, 3) == run(make_engine("llama-tiny", mode="eager"), ids, 3)


def test_a_started_generation_closed_unread_leaves_row_0_unheld():
    engine = make_engine("llama-tiny", mode="eager")
    ids = [9, 8, 7, 6]
    first = run(engine, ids, 1)  # row 0 now holds ids, ready to be extended by `first`
    engine.start(GenerationParams((1, 2), 5)).close()  # launched over row 0, never read
    assert run(engine, [*ids, *first], 4) == run(make_engine("llama-tiny", mode="eager"), [*ids, *first], 4)
    assert engine.counters == {"prefill": 3}  # nothing was reused after the unread launch


def test_the_residual_rides_in_the_product_only_past_skinny_rows(monkeypatch):
    """`residual + x @ w.T` is one product in place on the residual with more rows than skinny_linear takes (cuBLAS
    adds it in its epilogue), a product and an add with fewer; the same values either way, and the same tokens in
    compiled code and with the knob off."""
    from rollgraph import llama

    calls = []
    addmm = torch.addmm
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 64, generator=g)
    with monkeypatch.context() as m:  # count the products that take the residual
        m.setattr(torch, "addmm", lambda *a: calls.append(a[1].shape) or addmm(*a))
        m.setattr(torch.Tensor, "addmm_", lambda r, *a: calls.append(a[0].shape) or addmm(r, *a, out=r))
        for rows in (1, 32, 33, 40):
            x, r = torch.randn(1, rows, 64, generator=g), torch.randn(1, rows, 48, generator=g)
            want = r + torch.nn.functional.linear(x, w)  # first: past skinny rows the sum may land in r's storage
            torch.testing.assert_close(llama._linear(x, w, None, False, residual=r), want)
    assert calls == [(33, 64), (40, 64)]  # 1 and 32 rows are few: a product and an add
    ids = list(range(7, 47))  # 40 rows: the prefill's residuals go through addmm
    on = run(make_engine("llama-tiny", mode="eager"), ids)
    assert run(make_engine("llama-tiny", mode="compile"), ids) == on  # through the rollgraph::add_product op
    monkeypatch.setattr(llama, "RESIDUAL_IN_GEMM", False)
    assert run(make_engine("llama-tiny", mode="eager"), ids) == on


def test_plain_products_past_skinny_rows_go_through_blas_choice_with_the_flag(monkeypatch):
    """perf-notes v85: with LlamaRunner.plain_choice (set by choose_blas on CUDA, except in compile mode without
    graphs), a product with no residual and no bias is blas_choice.product's with more rows than skinny_linear takes
    (eagerly, and through the rollgraph::plain_product op in compiled code), F.linear with fewer or with a bias; the
    same values as F.linear, and the same tokens as without the flag."""
    from rollgraph import blas_choice, llama

    seen = []
    product = blas_choice.product
    monkeypatch.setattr(blas_choice, "product", lambda x, w: seen.append((x.shape, w.shape)) or product(x, w))
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(48, 64, generator=g), torch.randn(48, generator=g)
    for rows in (1, 32, 33, 40):
        x = torch.randn(1, rows, 64, generator=g)
        torch.testing.assert_close(llama._linear(x, w, None, False, plain=True), torch.nn.functional.linear(x, w))
        torch.testing.assert_close(llama._linear(x, w, b, False, plain=True), torch.nn.functional.linear(x, w, b))
        torch.testing.assert_close(llama._linear(x, w, None, False), torch.nn.functional.linear(x, w))
    assert seen == [((33, 64), (48, 64)), ((40, 64), (48, 64))]  # few rows, a bias, no flag: F.linear
    ids = list(range(7, 47))
    seen.clear()
    off = run(make_engine("llama-tiny", mode="eager"), ids)
    assert seen == []  # nothing is timed on this CPU: choose_blas never sets the flag

    def flagged(mode):
        engine = make_engine("llama-tiny", mode=mode)
        engine.runner.plain_choice = True  # as choose_blas sets it for a graph mode on CUDA
        return engine

    on = run(flagged("eager"), ids)
    weights = {w for _, w in seen}
    model = load_model(ModelConfig("llama-tiny")).model.config
    qkv = (model.num_attention_heads + 2 * model.num_key_value_heads) * model.head_dim
    assert weights == {(qkv, model.hidden_size), (2 * model.intermediate_size, model.hidden_size)}, weights
    assert on == off
    seen.clear()
    assert run(flagged("compile"), ids) == on
    assert {w for _, w in seen} == weights  # the op called blas_choice.product in compiled code too
