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
        self._rows = torch.arange(max_batch, device=device)

    @property
    def nbytes(self) -> int:
        """Bytes held by all key and value buffers."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def write_span(self, layer: int, batch: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write k, v of shape [batch, kv_heads, T, head_dim] at positions start..start+T-1 of rows 0..batch-1."""
        t = k.shape[2]
        self.keys[layer][:batch, :, start : start + t].copy_(k)
        self.values[layer][:batch, :, start : start + t].copy_(v)

    def write_one(self, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write one token per row: k, v of shape [batch, kv_heads, head_dim] at each row's own position."""
        rows = self._rows[: positions.shape[0]]
        self.keys[layer][rows, :, positions] = k
        self.values[layer][rows, :, positions] = v

    def view(self, layer: int, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of rows 0..batch-1, positions 0..length-1 (views, no copy)."""
        return self.keys[layer][:batch, :, :length], self.values[layer][:batch, :, :length]

    def copy_row(self, src: int, dst: int) -> None:
        """Move one request's cache to another row (used to keep live rows contiguous)."""
        for buf in self.keys + self.values:
            buf[dst].copy_(buf[src])
