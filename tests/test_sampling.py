import pytest
import torch

from rollgraph.sampling import _parts, argmax_rows, sample, uniform_noise


def _args(b, temperature=1.0, top_k=0, top_p=1.0, seed=0):
    return (
        torch.full((b,), temperature),
        torch.full((b,), top_k, dtype=torch.int64),
        torch.full((b,), top_p),
        torch.full((b,), seed, dtype=torch.int64),
    )


def test_noise_is_a_pure_function_in_range():
    ids = torch.arange(1000)[None, :].repeat(2, 1)
    a = uniform_noise(torch.tensor([1, 2]), torch.tensor([5, 5]), ids)
    b = uniform_noise(torch.tensor([1, 2]), torch.tensor([5, 5]), ids)
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])
    assert a.min() > 0 and a.max() < 1
    assert abs(a.mean().item() - 0.5) < 0.03


def test_sample_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2, 1e-9]]))
    counts = torch.zeros(4)
    for step in range(3000):
        t, k, p, s = _args(1, seed=11)
        counts[sample(logits, t, k, p, s, torch.tensor([step]))] += 1
    freq = counts / counts.sum()
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2, 0.0]), atol=0.04)


def test_top_k_and_top_p_cut():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    seen_k, seen_p = set(), set()
    for step in range(300):
        t, k, p, s = _args(1, top_k=2, seed=3)
        seen_k.add(int(sample(logits, t, k, p, s, torch.tensor([step]))))
        t, k, p, s = _args(1, top_p=0.65, seed=3)
        seen_p.add(int(sample(logits, t, k, p, s, torch.tensor([step]))))
    assert seen_k == {0, 1}
    assert seen_p == {0, 1}  # 0.4 + 0.3 covers 0.65; the third token is outside the nucleus


def test_temperature_zero_rows_are_greedy():
    logits = torch.randn(3, 50)
    t = torch.tensor([0.0, 1.0, 0.0])
    _, k, p, s = _args(3)
    out = sample(logits, t, k, p, s, torch.tensor([0, 0, 0]))
    assert out[0] == logits[0].argmax() and out[2] == logits[2].argmax()


@pytest.mark.parametrize("vocab", [128256, 32000, 151936, 512, 509, 40])
def test_argmax_in_parts_is_torch_argmax_ties_and_nan_included(vocab):
    gen = torch.Generator().manual_seed(vocab)
    x = torch.randn(5, vocab, generator=gen)
    x[1, vocab // 3] = x[1, vocab - 1] = x[1, 7 % vocab] = 50.0  # ties across parts: the first index wins
    x[2] = 1.0  # a flat row: index 0
    x[3, vocab // 2] = float("nan")  # argmax takes NaN as the largest value
    x[4, -1] = 50.0  # the last index of the last part
    assert torch.equal(argmax_rows(x), torch.argmax(x, dim=-1))
    assert torch.equal(argmax_rows(x.to(torch.bfloat16)), torch.argmax(x.to(torch.bfloat16), dim=-1))


def test_rows_split_into_many_parts_where_the_vocabulary_allows():
    assert _parts(128256) == 501 and _parts(32000) == 500 and _parts(151936) == 128
    assert _parts(509) == 1 and _parts(40) == 1  # prime, or too short to split
