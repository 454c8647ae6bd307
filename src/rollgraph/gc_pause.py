"""The benchmark's timed regions run with Python's cyclic garbage collector paused, as `timeit` does.

A collection that lands inside a timed request stops the measuring process for milliseconds (the bench process holds
torch, which it uses to measure the floors, so its heap is large), and shows up as an inter-token spike that neither
the server nor the peer caused: in the llama-2-7b bench of 2026-11-27 (perf-notes v10) the client saw intervals of
6–9 ms while the server's own stamps of the same frames were 5.3–6.0 ms apart. Collections still run, between
requests: re-enabling the collector lets the next allocation outside the timed region trigger the one that is due.
Both rollgraph's client loop and the transformers peers are timed under the same rule.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Collector off for the block (if it was on), back on afterwards."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()
