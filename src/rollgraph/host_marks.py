"""Stamps along the engine thread's path from a request's frame to token 0's launch (perf-notes v77).

Off unless the server runs with ROLLGRAPH_HOST_MARKS=1: then `mark(name)` records time.perf_counter() under `name`,
and a generation's final frame carries the stamps since its first one as `timings.host_marks_ms`
(scripts/ttft_overhead.py prints their medians). Only the engine thread marks, one request at a time.
"""

from __future__ import annotations

import os
import time

ENABLED = os.environ.get("ROLLGRAPH_HOST_MARKS") == "1"

_marks: list[tuple[str, float]] = []


def mark(name: str) -> None:
    if ENABLED:
        _marks.append((name, time.perf_counter()))


def begin(name: str) -> None:
    """Drop any earlier stamps and take the first of a new request."""
    if ENABLED:
        _marks.clear()
        _marks.append((name, time.perf_counter()))


def drain() -> dict[str, float] | None:
    """The stamps since the last drain, in ms after the first one, each name at its first stamp (None when off or
    none was taken)."""
    if not ENABLED or not _marks:
        _marks.clear()
        return None
    t0 = _marks[0][1]
    out: dict[str, float] = {}
    for name, t in _marks:
        out.setdefault(name, round((t - t0) * 1e3, 4))
    _marks.clear()
    return out
