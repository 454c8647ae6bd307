"""Sampled token ids on their way to the host: a pinned ring and one CUDA event per slot.

Pushing a token starts its device-to-host copy and returns a handle; popping waits for that copy alone. So the engine
can queue the next step before it reads this one, and can even keep a speculated step pending between requests. On
the CPU there is nothing to overlap: a push reads the value at once.
"""

from __future__ import annotations

import torch


class HostTokens:
    """A ring of `size` pinned slots; at most size - 1 tokens may be pending at once."""

    def __init__(self, device: torch.device, size: int = 8) -> None:
        self.cuda = device.type == "cuda"
        self._count = 0
        if self.cuda:
            self._host = torch.zeros(size, dtype=torch.int64, pin_memory=True)
            self._events = [torch.cuda.Event() for _ in range(size)]

    def push(self, token: torch.Tensor) -> int:
        """Start copying a one-element device tensor; returns the handle pop() takes."""
        if not self.cuda:
            return int(token)
        slot = self._count % len(self._events)
        self._count += 1
        self._host[slot : slot + 1].copy_(token, non_blocking=True)
        self._events[slot].record()
        return slot

    def pop(self, handle: int) -> int:
        """The token behind `handle`, waiting for its copy (the step's one host sync)."""
        if not self.cuda:
            return handle
        self._events[handle].synchronize()
        return int(self._host[handle])
