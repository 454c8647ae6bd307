"""Token choice on the device, inside the step, with no host sync: greedy, temperature, top-k, top-p, seed.

Sampling draws its noise from a counter-based hash of (seed, position, token id) instead of a stateful generator, so
the same seed gives the same tokens in every mode (eager, compiled, replayed graph) and in every process. It uses the
exponential race: argmax(p_i / E_i) with E_i ~ Exp(1) picks token i with probability p_i.
"""

from __future__ import annotations

import functools

import torch

_M32 = 0xFFFFFFFF

SPLIT_ARGMAX = True
"""argmax_rows's two reductions (True) or ATen's single-block argmax (False): an A/B knob for perf-notes v22 (the
`am-aten` option of scripts/pool_figures.py), read when a step is traced or run, so set it before an engine is built."""


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer held in int64; each product stays below 2**63, so nothing overflows."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x5BD1E995) & _M32
    return x ^ (x >> 16)


def uniform_noise(seeds: torch.Tensor, steps: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Uniform floats in (0, 1), a pure function of (seed, step, token id); seeds, steps: [B], token_ids: [B, V]."""
    s = _mix32((seeds ^ (seeds >> 32)) & _M32)
    s = _mix32(s ^ ((steps * 0x27D4EB2D) & _M32))
    h = _mix32((s[:, None] + token_ids * 0x165667B1) & _M32)
    return ((h >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The argmax token of each row: [B, V] -> [B] int64."""
    return argmax_rows(logits)


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """torch.argmax(x, dim=-1) of a [B, V] tensor, the first maximum on ties, as two reductions over many blocks.

    PyTorch reduces a single long row in one thread block: on an H100, 28 µs for llama-3.2-1b's 128256 logits and
    10 µs for llama-2-7b's 32000, 2.5% and 0.2% of a decode step (perf-notes v18's profiles). Here each of up to 512
    equal parts of the row finds its maximum and that maximum's first index, then the first part holding the
    largest maximum gives the token: the same index as torch.argmax, ties and NaN included (ATen's max and argmax
    reductions share one comparison: the larger value, NaN above all, the lower index on a tie)."""
    b, v = x.shape
    parts = _parts(v) if SPLIT_ARGMAX else 1
    if parts == 1:
        return torch.argmax(x, dim=-1)
    width = v // parts
    best, where = x.reshape(b, parts, width).max(dim=-1)
    part = torch.argmax(best, dim=-1, keepdim=True)
    return (part * width + torch.gather(where, 1, part)).squeeze(1)


@functools.cache
def _parts(v: int) -> int:
    """The most equal parts (at most 512, each at least 32 wide) that a row of v splits into; 1 if none does."""
    return next((p for p in range(min(512, v // 32), 1, -1) if v % p == 0), 1)


def sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    seeds: torch.Tensor,
    steps: torch.Tensor,
) -> torch.Tensor:
    """One token per row from float32 logits [B, V]; rows with temperature 0 take the argmax.

    top_k 0 means no top-k cut; top_p 1.0 means no nucleus cut; the most likely token always survives both cuts.
    """
    vocab = logits.shape[-1]
    scaled = logits / temperature.clamp_min(1e-6)[:, None]
    sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)
    ranks = torch.arange(vocab, device=logits.device)[None, :]
    k = torch.where(top_k > 0, top_k, vocab)[:, None]
    sorted_logits = sorted_logits.masked_fill(ranks >= k, float("-inf"))
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    probs = probs.masked_fill(mass_before > top_p[:, None], 0.0)
    race = probs / -torch.log(uniform_noise(seeds, steps, order))
    choice = torch.gather(order, 1, argmax_rows(race)[:, None]).squeeze(1)
    return torch.where(temperature > 0, choice, argmax_rows(logits))
