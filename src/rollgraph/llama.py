"""rollgraph's own forward pass for the Llama family (Llama, Mistral, Qwen2) over a static KV cache.

Weights come from the transformers model that `models.py` loaded (a folder or a built-in), with Q/K/V and gate/up
fused into single matrices: at batch 1 a step is a string of matrix-vector products, and fewer, larger ones read
memory faster. The numerics follow transformers' modeling code (RMSNorm in float32, RoPE tables in float32 cast to
the weights' dtype), so greedy tokens match it. Everything here is shape-static for a given (batch, length) and
free of host syncs, so a step can be captured in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rollgraph.kv_cache import StaticKVCache

SUPPORTED = ("llama", "mistral", "qwen2")


@dataclass
class Layer:
    """One decoder layer's weights; wqkv/bqkv are [q; k; v] stacked, w_gate_up is [gate; up] stacked."""

    attn_norm: torch.Tensor
    wqkv: torch.Tensor
    bqkv: torch.Tensor | None
    wo: torch.Tensor
    mlp_norm: torch.Tensor
    w_gate_up: torch.Tensor
    w_down: torch.Tensor


def supports(hf_config, max_seq_len: int) -> str | None:
    """None if the native runner can run this config up to `max_seq_len`, else the reason it cannot."""
    mt = getattr(hf_config, "model_type", "?")
    if mt not in SUPPORTED:
        return f"model_type {mt!r} is not one of {SUPPORTED}"
    if getattr(hf_config, "hidden_act", "silu") != "silu":
        return f"hidden_act {hf_config.hidden_act!r} is not silu"
    window = getattr(hf_config, "sliding_window", None)
    if mt == "qwen2" and not getattr(hf_config, "use_sliding_window", False):
        window = None
    if window is not None and window < max_seq_len:  # a window at least as long as the cache changes nothing
        return f"sliding-window attention ({window} < max_seq_len {max_seq_len}) is not supported"
    if getattr(hf_config, "mlp_bias", False) or (mt != "qwen2" and getattr(hf_config, "attention_bias", False)):
        return "biases other than Qwen2's QKV bias are not supported"
    return None


class LlamaRunner:
    """Prefill, decode and cache-free forward over the native weights and a StaticKVCache."""

    graph_phases = frozenset({"prefill", "decode", "full"})
    compilable = True

    def __init__(
        self, hf_model: torch.nn.Module, max_batch: int, max_seq_len: int, release: bool = True
    ) -> None:
        cfg = hf_model.config
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.vocab_size = cfg.vocab_size
        self.max_batch, self.max_seq_len = max_batch, max_seq_len
        inner = hf_model.model
        w = inner.embed_tokens.weight
        self.dtype, self.device = w.dtype, w.device
        self.embed = w
        self.norm = inner.norm.weight
        self.lm_head = hf_model.lm_head.weight
        self.layers = [self._take_layer(layer) for layer in inner.layers]
        if release:  # drop transformers' unfused copies as we go; the runner now owns the weights
            inner.layers = torch.nn.ModuleList()
        self.cos, self.sin = _rope_tables(inner.rotary_emb, max_seq_len, self.dtype, self.device)
        self.cache = StaticKVCache(
            len(self.layers), max_batch, self.n_kv, max_seq_len, self.head_dim, self.dtype, self.device
        )

    @staticmethod
    def _take_layer(layer: torch.nn.Module) -> Layer:
        a, m = layer.self_attn, layer.mlp
        wqkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        bias = None
        if a.q_proj.bias is not None:
            bias = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
        w_gate_up = torch.cat([m.gate_proj.weight, m.up_proj.weight])
        for lin in (a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj):
            lin.weight = None  # free the unfused copy now, so peak memory stays near one model
        return Layer(
            attn_norm=layer.input_layernorm.weight,
            wqkv=wqkv,
            bqkv=bias,
            wo=a.o_proj.weight,
            mlp_norm=layer.post_attention_layernorm.weight,
            w_gate_up=w_gate_up,
            w_down=m.down_proj.weight,
        )

    @property
    def weight_bytes(self) -> int:
        """Bytes a decode step must read: every weight once (the embedding row read is negligible)."""
        tensors = [self.norm, self.lm_head]
        for ly in self.layers:
            tensors += [ly.attn_norm, ly.wqkv, ly.wo, ly.mlp_norm, ly.w_gate_up, ly.w_down]
            tensors += [ly.bqkv] if ly.bqkv is not None else []
        return sum(t.numel() * t.element_size() for t in tensors)

    # ---- steps -------------------------------------------------------------------------------------------------

    def prefill(self, tokens: torch.Tensor, start: int, last_index: torch.Tensor) -> torch.Tensor:
        """Run prompt tokens [B, T] at positions start..start+T-1 of rows 0..B-1, filling the cache.

        Returns float32 logits [B, V] at each row's `last_index` (a position inside this chunk). Padding past a
        row's real length writes cache entries that decode overwrites before it ever attends to them.
        """
        b, t = tokens.shape
        pos = torch.arange(start, start + t, device=tokens.device)
        cos, sin = self.cos[pos][None, :, None, :], self.sin[pos][None, :, None, :]
        x = F.embedding(tokens, self.embed)
        for i, ly in enumerate(self.layers):
            q, k, v = self._qkv(x, ly, cos, sin)
            self.cache.write_span(i, b, start, k, v)
            if start == 0:
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            else:
                kc, vc = self.cache.view(i, b, start + t)
                mask = torch.arange(start + t, device=x.device)[None, :] <= pos[:, None]
                o = F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask, enable_gqa=True)
            x = self._finish_layer(x, o, ly)
        last = x[torch.arange(b, device=x.device), last_index]
        return self._logits(last)

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, kv_len: int) -> torch.Tensor:
        """One token per row: tokens, positions [B]; attention reads cache positions 0..kv_len-1 behind a mask.

        kv_len must exceed every position; reading only the live bucket instead of the whole cache is what keeps
        a decode step's memory traffic near the weights' size.
        """
        b = tokens.shape[0]
        cos, sin = self.cos[positions][:, None, None, :], self.sin[positions][:, None, None, :]
        x = F.embedding(tokens[:, None], self.embed)
        mask = (torch.arange(kv_len, device=x.device)[None, :] <= positions[:, None])[:, None, None, :]
        group = self.n_heads // self.n_kv
        for i, ly in enumerate(self.layers):
            q, k, v = self._qkv(x, ly, cos, sin)
            self.cache.write_one(i, positions, k[:, :, 0], v[:, :, 0])
            kc, vc = self.cache.view(i, b, kv_len)
            # Query heads of one KV group become the "query length" axis: GQA with no repeat of K/V.
            qg = q.reshape(b, self.n_kv, group, self.head_dim)
            o = F.scaled_dot_product_attention(qg, kc, vc, attn_mask=mask)
            x = self._finish_layer(x, o.reshape(b, self.n_heads, 1, self.head_dim), ly)
        return self._logits(x[:, 0])

    def full(self, tokens: torch.Tensor) -> torch.Tensor:
        """The original design's step: the whole sequence [1, T] with no cache; float32 logits of the last token."""
        t = tokens.shape[1]
        pos = torch.arange(t, device=tokens.device)
        cos, sin = self.cos[pos][None, :, None, :], self.sin[pos][None, :, None, :]
        x = F.embedding(tokens, self.embed)
        for ly in self.layers:
            q, k, v = self._qkv(x, ly, cos, sin)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            x = self._finish_layer(x, o, ly)
        return self._logits(x[:, -1])

    # ---- pieces ------------------------------------------------------------------------------------------------

    def _qkv(self, x, ly: Layer, cos, sin):
        """x [B, T, H] -> q [B, heads, T, D], k and v [B, kv_heads, T, D], RoPE applied to q and k."""
        b, t, _ = x.shape
        qkv = F.linear(_rms_norm(x, ly.attn_norm, self.eps), ly.wqkv, ly.bqkv)
        nq, nk = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        q = qkv[..., :nq].view(b, t, self.n_heads, self.head_dim)
        k = qkv[..., nq : nq + nk].view(b, t, self.n_kv, self.head_dim)
        v = qkv[..., nq + nk :].view(b, t, self.n_kv, self.head_dim)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def _finish_layer(self, x, attn_out, ly: Layer):
        """Output projection, residual, then the gated MLP and its residual; attn_out is [B, heads, T, D]."""
        b, _, t, _ = attn_out.shape
        x = x + F.linear(attn_out.transpose(1, 2).reshape(b, t, -1), ly.wo)
        gate, up = F.linear(_rms_norm(x, ly.mlp_norm, self.eps), ly.w_gate_up).chunk(2, dim=-1)
        return x + F.linear(F.silu(gate) * up, ly.w_down)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(_rms_norm(h, self.norm, self.eps), self.lm_head).float()


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' RMSNorm: statistics in float32, the weight applied in the input dtype."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, halves rotated (transformers' rotate_half); x [B, T, heads, D]."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def _rope_tables(rotary: torch.nn.Module, n: int, dtype: torch.dtype, device: torch.device):
    """cos/sin for positions 0..n-1, from the model's own inv_freq and scaling (llama3 RoPE included)."""
    inv_freq = rotary.inv_freq.to(device=device, dtype=torch.float32)
    freqs = torch.arange(n, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    scale = getattr(rotary, "attention_scaling", 1.0)
    return (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)
