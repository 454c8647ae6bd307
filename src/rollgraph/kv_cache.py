"""Static KV cache: fixed buffers, one row per request, written in place so captured graphs stay valid.

Layout per layer: keys and values of shape [max_batch, kv_heads, max_seq_len, head_dim]. A step over batch B uses
rows 0..B-1; the engine keeps live requests in the lowest rows.
"""

from __future__ import annotations

import torch


class StaticKVCache:
    """Per-layer key/value buffers with in-place writes; nothing here allocates after construction."""

    def __init__(
        self,
        layers: int,
        max_batch: int,
        kv_heads: int,
        max_seq_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (max_batch, kv_heads, max_seq_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.max_batch = max_batch
        self.max_seq_len = max_seq_len

    @property
    def nbytes(self) -> int:
        """Bytes held by all key and value buffers."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)
