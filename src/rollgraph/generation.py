"""What a generation hands back: an iterator of token ids, and the result record filled in as it runs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class GenerationResult:
    """What a finished (or cancelled) generation reports besides its tokens."""

    output_tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    prefill_ms: float = 0.0
    launch_ms: float | None = None
    """Host time from the generation's start to the return of token 0's launch (None in seed mode, whose loop
    launches it); prefill_ms runs on to token 0's read-back."""
    step_ms: list[float] = field(default_factory=list)
    sources: Counter = field(default_factory=Counter)
    prefix_reused: int = 0
    host_marks: dict[str, float] | None = None
    """host_marks.py's stamps of this request (only with ROLLGRAPH_HOST_MARKS=1)."""

    def to_dict(self) -> dict:
        steps = self.step_ms
        return {
            "output_tokens": self.output_tokens,
            "finish_reason": self.finish_reason,
            "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": len(self.output_tokens)},
            "timings": {
                "prefill_ms": round(self.prefill_ms, 3),
                "launch_ms": round(self.launch_ms, 3) if self.launch_ms is not None else None,
                "decode_ms_mean": round(sum(steps) / len(steps), 3) if steps else None,
                "step_ms": [round(s, 3) for s in steps],
                **({"host_marks_ms": self.host_marks} if self.host_marks else {}),
            },
            "graphs": dict(self.sources),
            "prefix_reused_tokens": self.prefix_reused,
        }


class Generation:
    """An iterator of generated token ids; `result` is complete once it is exhausted or closed."""

    def __init__(self, run, result: GenerationResult) -> None:
        self.result = result
        self._it = run

    def __iter__(self) -> Iterator[int]:
        return self._it

    def __next__(self) -> int:
        return next(self._it)

    def close(self) -> None:
        """Stop early (the client went away); the row is freed and the reason is 'cancelled'."""
        self._it.close()
        if self.result.finish_reason is None:
            self.result.finish_reason = "cancelled"
