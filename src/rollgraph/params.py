"""Request parameters, validated on construction; no torch import (the client and protocol use them too).

Validation raises `RequestError` naming the field, the value and the allowed range (mlx-lm style), so a bad value is
rejected the same way in-process, through the CLI and over the socket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rollgraph.errors import RequestError

MAX_SEED = 2**63 - 1


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class TokenIds(tuple):
    """Token ids found to be plain ints in [0, `top`] by `checked_ids`: GenerationParams does not check their types
    again, and the engine compares `top` with its vocabulary instead of walking them again. A 400-id request's ids
    were checked three times on the server before token 0's launch (the protocol, GenerationParams, the engine's
    range), ~75 µs of a CPU's time on the TTFT path; now once (perf-notes v83). Equal to, and hashed as, the plain
    tuple."""

    top: int

    def __new__(cls, values: tuple | list, top: int) -> TokenIds:
        ids = super().__new__(cls, values)
        ids.top = top
        return ids

    def __getnewargs__(self) -> tuple:  # copy and pickle
        return tuple(self), self.top


def checked_ids(values: tuple | list, high: int) -> TokenIds | None:
    """`values` as TokenIds when every one is a plain int in [0, high], from C-level passes; else None, which is not
    a verdict: int subclasses (bool excluded) are valid ids too, so callers fall back to their per-id loop, which also
    names the culprit. An empty `values` gives None."""
    if not values or not set(map(type, values)) <= {int}:
        return None
    top = max(values)
    return TokenIds(values, top) if top <= high and min(values) >= 0 else None


def _is_number(value: object) -> bool:
    """An int or a finite float; ints of any size count (math.isfinite would overflow on a huge one)."""
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _show(value: object) -> str:
    """A short repr for error messages: huge ints and long lists are cut, never expanded."""
    if _is_int(value) and value.bit_length() > 64:
        return f"<an integer of {value.bit_length()} bits>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. temperature 0 means greedy (argmax); top_k 0 and top_p 1.0 mean no cut-off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not _is_number(self.temperature) or not 0.0 <= self.temperature <= 100.0:
            raise RequestError(f"temperature must be a number in [0, 100] (0 = greedy), got {_show(self.temperature)}")
        if not _is_int(self.top_k) or not 0 <= self.top_k <= 2**31 - 1:
            raise RequestError(
                f"top_k must be an integer in [0, 2**31 - 1] (0 = no top-k cut), got {_show(self.top_k)}"
            )
        if not _is_number(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise RequestError(f"top_p must be a number in (0, 1] (1 = no nucleus cut), got {_show(self.top_p)}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            raise RequestError(f"seed must be null or an integer in [0, 2**63 - 1], got {_show(self.seed)}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class GenerationParams:
    """One generation request in token ids; the engine checks ids and length against the model it serves."""

    input_ids: tuple[int, ...]
    max_new_tokens: int = 64
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.input_ids, tuple) or not self.input_ids:
            raise RequestError("input_ids must be a non-empty list of token ids")
        if (
            type(self.input_ids) is not TokenIds
            and set(map(type, self.input_ids)) != {int}
            and not all(_is_int(t) for t in self.input_ids)
        ):
            bad = next(t for t in self.input_ids if not _is_int(t))
            raise RequestError(f"input_ids must hold integers only, got {_show(bad)}", code="invalid_token")
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise RequestError(f"max_new_tokens must be an integer >= 1, got {_show(self.max_new_tokens)}")
        if not all(_is_int(t) and t >= 0 for t in self.stop_token_ids):
            raise RequestError(
                f"stop_token_ids must be a list of integers >= 0, got {_show(list(self.stop_token_ids))}"
            )
