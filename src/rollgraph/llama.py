"""rollgraph's own forward pass for the Llama family (Llama, Mistral, Qwen2) over a static KV cache.

Weights come from the transformers model that `models.py` loaded (a folder or a built-in), with Q/K/V and gate/up
fused into single matrices: at batch 1 a step is a string of matrix-vector products, and fewer, larger ones read
memory faster. The numerics follow transformers' modeling code (RMSNorm in float32, RoPE tables in float32 cast to
the weights' dtype), so greedy tokens match it. Everything here is shape-static for a given (batch, length) and
free of host syncs, so a step can be captured in a CUDA graph.
"""

from __future__ import annotations

import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rollgraph import blas_choice, prefill_attention, silu_mul
from rollgraph import decode_attention as fused
from rollgraph import skinny_linear as skinny
from rollgraph.config import ATTENTION, MATMUL
from rollgraph.kv_cache import StaticKVCache

SUPPORTED = ("llama", "mistral", "qwen2")
logger = logging.getLogger(__name__)
GATE_HALVES = True
"""Compiled decode multiplies by the gate and the up half of the stacked [gate; up] weight as two products (two views,
no copy) and has inductor write SiLU(gate) · up to memory, so that one reduction kernel makes gate and up and writes
the product in its epilogue. With one product over the stacked weight, inductor inlines SiLU · up into the down
projection's loads instead, and every program of that kernel recomputes it (perf-notes v47, v48). Read by
`LlamaRunner.compile()`; pool_figures option `no-halves` turns it off."""
RESIDUAL_IN_GEMM = True
"""With more rows than skinny_linear takes, `residual + x @ w.T` is one product that cuBLAS runs in place on the
residual with beta = 1, adding it in its epilogue before its one rounding, instead of a separate add kernel that reads
both and writes the sum (perf-notes v55). False adds apart, as before (the A/B knob, read at every call; pool_figures
option `no-addmm`)."""
LAST_ROW_FROM: int | None = 256
"""Prefills of at least this many rows run their last layer's output projection and MLP on each sequence's last row
alone: the head reads nothing else, and QKV and attention still cover every row for the cache. Below ~256 rows those
products cost a weight read whatever the row count, so there is nothing to take (perf-notes v68). None runs every row
(the A/B knob, read at every prefill; pool_figures option `no-last`)."""


@dataclass
class Layer:
    """One decoder layer's weights; wqkv/bqkv are [q; k; v] stacked, w_gate_up is [gate; up] stacked. With the norms
    carried in skinny_linear's sums of squares (LlamaRunner.fused_norm) the two RMSNorm weights are folded into the
    columns of wqkv and w_gate_up, norm(x)·g·Wᵀ = norm(x)·(W·g)ᵀ, and attn_norm and mlp_norm are None."""

    attn_norm: torch.Tensor | None
    wqkv: torch.Tensor
    bqkv: torch.Tensor | None
    wo: torch.Tensor
    mlp_norm: torch.Tensor | None
    w_gate_up: torch.Tensor
    w_down: torch.Tensor

    @property
    def tensors(self) -> tuple:
        """The weights in the order the layer functions unpack them."""
        return (self.attn_norm, self.wqkv, self.bqkv, self.wo, self.mlp_norm, self.w_gate_up, self.w_down)


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
        self,
        hf_model: torch.nn.Module,
        max_batch: int,
        max_seq_len: int,
        release: bool = True,
        attention: str = "auto",
        matmul: str = "auto",
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
        self._weights = [ly.tensors for ly in self.layers]
        _start_triton(self.device)
        # Each choice builds its kernel once: two Triton builds side by side on a GPU. Triton's CPU interpreter is not
        # thread-safe (two kernels interpreted at once can fail either probe), so there they run one after the other.
        with ThreadPoolExecutor(1 if os.environ.get("TRITON_INTERPRET") == "1" else 2) as pool:
            matmul_choice = pool.submit(_matmul_kernels, matmul, self.device, self.dtype)
            heads = (self.n_heads, self.n_kv, self.head_dim)
            attention_choice = pool.submit(_choose_attention, attention, self.device, self.dtype, heads)
        self.skinny_phases, self.gated_epilogue, self.fused_norm = matmul_choice.result()
        """Phases whose matmuls of at most skinny.MAX_ROWS rows use the skinny_linear kernel instead of F.linear;
        whether its gate/up projection computes SiLU(gate) · up in its epilogue there; whether there the layers'
        RMSNorms ride in its sums of squares (perf-notes v35)."""
        if self.fused_norm:
            for ly in self.layers:
                ly.wqkv, ly.attn_norm = _fold_norm(ly.wqkv, ly.attn_norm), None
                ly.w_gate_up, ly.mlp_norm = _fold_norm(ly.w_gate_up, ly.mlp_norm), None
            self._weights = [ly.tensors for ly in self.layers]
        self.plain_choice = False
        """Whether prefill's plain products (QKV, gate/up) with more rows than skinny_linear takes go through
        blas_choice.product (perf-notes v85): set by choose_blas, for engines whose steps replay CUDA graphs or run
        eagerly (graphs replay the kernels eager runs), not for compile mode without graphs, whose host-bound steps
        would pay the op's dispatch on every product."""
        self.fused_decode = attention_choice.result()
        self.fused_prefill = self.fused_decode and prefill_attention.ENABLED
        """Prefill's RoPE, cache write and attention in one Triton kernel (prefill_attention.py), where fused_decode."""
        self._decode_layer, self._prefill_layer, self._full_layer, self._head = (
            fused_decode_layer if self.fused_decode else decode_layer,
            fused_prefill_layer if self.fused_prefill else prefill_layer,
            full_layer,
            head,
        )
        self.halves_phases: frozenset = frozenset()
        """Phases whose gate/up projection runs as two products, one per half of the stacked weight (GATE_HALVES)."""
        self._write_on = torch.ones(1, dtype=torch.bool, device=self.device)
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
    def triton_kernels(self) -> bool:
        """Whether some step runs a Triton kernel of rollgraph's own (built at its first call)."""
        return self.fused_decode or bool(self.skinny_phases)

    def choose_blas(self, rows: list[int], plain: bool = False, store: str | None = None) -> dict:
        """Time the products that prefill adds into the residual (the output and down projections) at each row
        count past skinny_linear's, through cuBLAS and cuBLASLt (from 256 rows also cuBLASLt's ranked algorithms and
        fitted tiles), and with `plain` (`plain_choice`) from blas_choice.ALGORITHM_ROWS rows the plain ones (QKV
        unless it has a bias, gate/up) likewise; keep the fastest per shape (blas_choice), and with `store` take and
        keep the choices in that file (blas_store)."""
        self.plain_choice = plain
        if not self.layers:
            return {}
        rows = [m for m in rows if m > skinny.MAX_ROWS]
        first, timings = self.layers[0], {}
        if RESIDUAL_IN_GEMM:
            timings |= blas_choice.choose(rows, (first.wo, first.w_down), store=store)
        weights = [w for w, b in ((first.wqkv, first.bqkv), (first.w_gate_up, None)) if b is None]
        long_rows = [m for m in rows if m >= blas_choice.ALGORITHM_ROWS]
        if plain and blas_choice.PLAIN and long_rows:
            timings |= blas_choice.choose(long_rows, weights, accumulate=False, store=store)
        return timings

    @property
    def weight_bytes(self) -> int:
        """Bytes a decode step must read: every weight once (the embedding row read is negligible)."""
        tensors = [self.norm, self.lm_head]
        for ly in self.layers:
            tensors += [ly.wqkv, ly.wo, ly.w_gate_up, ly.w_down]
            tensors += [t for t in (ly.attn_norm, ly.mlp_norm, ly.bqkv) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def _dims(self, phase: str) -> tuple:
        """The layer functions' static settings: head layout, norm epsilon, whether few-row matmuls use skinny,
        whether its gate/up projection gates in its epilogue, whether the norms ride in its sums of squares, whether
        the gate/up projection runs as two products (halves_phases), and whether plain products go through
        blas_choice (plain_choice)."""
        few = phase in self.skinny_phases
        return (
            self.n_heads,
            self.n_kv,
            self.head_dim,
            self.eps,
            few,
            few and self.gated_epilogue,
            few and self.fused_norm,
            phase in self.halves_phases,
            self.plain_choice,
        )

    # ---- steps -------------------------------------------------------------------------------------------------

    def compile(self, graphs: bool = True) -> None:
        """Compile the per-layer functions (not the unrolled model): one compilation serves every layer, since the
        weights are arguments, and automatic dynamic shapes make one more cover every length bucket, so start-up
        stays short. Under compile+graphs the guards run only at capture; replays see just the kernels. Without
        graphs (`graphs` False) every launch costs host time, so decode's attention kernel is launched by inductor's
        code where fused.INLINE says so, not through the opaque op (perf-notes v73)."""
        layer = self._decode_layer
        if not graphs and fused.INLINE and layer is fused_decode_layer and self.device.type == "cuda":
            layer = functools.partial(fused_decode_layer, attend=fused.decode_attention_inline)
        self._decode_layer = torch.compile(layer, fullgraph=True)
        # One-row matmuls: inductor's generated reductions read as fast as skinny_linear (perf-notes v6) and fuse
        # the norms and residual adds around them, so compiled decode leaves them to inductor.
        self.skinny_phases = self.skinny_phases - {"decode"}
        if GATE_HALVES and _can_write_values():
            self.halves_phases = frozenset({"decode"})
        self._prefill_layer = torch.compile(
            fused_prefill_layer if self.fused_prefill else prefill_layer, fullgraph=True
        )
        self._full_layer = torch.compile(full_layer, fullgraph=True)
        self._head = torch.compile(head, fullgraph=True)

    def prefill(self, tokens: torch.Tensor, start: int, last_index: torch.Tensor, write_kv=None) -> torch.Tensor:
        """Run prompt tokens [B, T] at positions start..start+T-1 of rows 0..B-1, filling the cache.

        Returns float32 logits [B, V] at each row's `last_index` (a position inside this chunk). Padding past a
        row's real length writes cache entries that decode overwrites before it ever attends to them.
        `write_kv` (a [1] bool tensor on the device, None = True) off leaves the cache untouched: a capture's
        warm-ups run so, since row 0 may hold a sequence that prefix reuse will extend.
        """
        if start:
            return self._prefill_after(tokens, start, last_index)
        b, t = tokens.shape
        cos, sin = self.cos[None, :t, None, :], self.sin[None, :t, None, :]
        if self.fused_prefill:  # the kernel takes [T, D] tables and a flag tensor
            cos, sin = self.cos[:t], self.sin[:t]
            write_kv = self._write_on if write_kv is None else write_kv
        x, parts = F.embedding(tokens, self.embed), None
        dims = self._dims("prefill")
        layers = list(zip(self._weights, self.cache.keys, self.cache.values, strict=True))
        last_rows = LAST_ROW_FROM is not None and t >= LAST_ROW_FROM and bool(layers)
        for w, kc, vc in layers[:-1] if last_rows else layers:
            x, parts = self._prefill_layer(x, parts, w, kc, vc, cos, sin, write_kv, dims)
        if not last_rows:
            return self._head(x[torch.arange(b, device=x.device), last_index], self.norm, self.lm_head, self.eps)
        w, kc, vc = layers[-1]
        x, parts = self._prefill_layer(x, parts, w, kc, vc, cos, sin, write_kv, dims, last_index)
        return self._head(x[:, 0], self.norm, self.lm_head, self.eps)

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, kv_len: int, write_kv=None) -> torch.Tensor:
        """One token per row: tokens, positions [B]; attention reads cache positions 0..kv_len-1 behind a mask (the
        fused kernel reads only up to each row's position; kv_len then only decides how it splits the work).

        kv_len must exceed every position; reading only the live bucket instead of the whole cache is what keeps
        a decode step's memory traffic near the weights' size. `write_kv` as in prefill.
        """
        if write_kv is None:
            write_kv = self._write_on
        x, parts = F.embedding(tokens[:, None], self.embed), None
        dims = self._dims("decode")
        if self.fused_decode:
            cos, sin = self.cos[positions], self.sin[positions]
            for w, kc, vc in zip(self._weights, self.cache.keys, self.cache.values, strict=True):
                x, parts = self._decode_layer(x, parts, w, kc, vc, positions, cos, sin, kv_len, write_kv, dims)
            return self._head(x[:, 0], self.norm, self.lm_head, self.eps)
        cos, sin = self.cos[positions][:, None, None, :], self.sin[positions][:, None, None, :]
        mask = (torch.arange(kv_len, device=x.device)[None, :] <= positions[:, None])[:, None, None, :]
        for w, kc, vc in zip(self._weights, self.cache.keys, self.cache.values, strict=True):
            x, parts = self._decode_layer(x, parts, w, kc, vc, positions, cos, sin, mask, write_kv, dims)
        return self._head(x[:, 0], self.norm, self.lm_head, self.eps)

    def full(self, tokens: torch.Tensor) -> torch.Tensor:
        """The original design's step: the whole sequence [1, T] with no cache; float32 logits of the last token."""
        t = tokens.shape[1]
        cos, sin = self.cos[None, :t, None, :], self.sin[None, :t, None, :]
        x, parts = F.embedding(tokens, self.embed), None
        dims = self._dims("full")
        for w in self._weights:
            x, parts = self._full_layer(x, parts, w, cos, sin, dims)
        return self._head(x[:, -1], self.norm, self.lm_head, self.eps)

    def _prefill_after(self, tokens: torch.Tensor, start: int, last_index: torch.Tensor) -> torch.Tensor:
        """Prefill a chunk after `start` cached positions (eager only: the offset would be a graph key of its own)."""
        b, t = tokens.shape
        pos = torch.arange(start, start + t, device=tokens.device)
        cos, sin = self.cos[pos][None, :, None, :], self.sin[pos][None, :, None, :]
        mask = torch.arange(start + t, device=tokens.device)[None, :] <= pos[:, None]
        x, parts = F.embedding(tokens, self.embed), None
        dims = self._dims("prefill")
        for w, kc, vc in zip(self._weights, self.cache.keys, self.cache.values, strict=True):
            q, k, v = _qkv(x, parts, w, cos, sin, dims)
            kc[:b, :, start : start + t] = k
            vc[:b, :, start : start + t] = v
            o = F.scaled_dot_product_attention(
                q, kc[:b, :, : start + t], vc[:b, :, : start + t], attn_mask=mask, enable_gqa=True
            )
            x, parts = _finish(x, _merge_heads(o), w, dims)
        return head(x[torch.arange(b, device=x.device), last_index], self.norm, self.lm_head, self.eps)


# ---- layers: pure functions of their tensors, so one compilation serves every layer ------------------------------


def decode_layer(x, parts, w, kc, vc, positions, cos, sin, mask, write_kv, dims):
    """One layer for one token per row; writes this token's K/V into the cache rows at their positions. `parts`: x's
    rows' partial sums of squares from the layer before, or None (as every layer function; each returns (x, parts))."""
    n_heads, n_kv, head_dim = dims[:3]
    b = x.shape[0]
    q, k, v = _qkv(x, parts, w, cos, sin, dims)
    rows = torch.arange(b, device=x.device)
    kc[rows, :, positions] = torch.where(write_kv, k[:, :, 0], kc[rows, :, positions])
    vc[rows, :, positions] = torch.where(write_kv, v[:, :, 0], vc[rows, :, positions])
    kv_len = mask.shape[-1]
    # Query heads of one KV group become the "query length" axis: GQA with no repeat of K/V.
    qg = q.reshape(b, n_kv, n_heads // n_kv, head_dim)
    o = F.scaled_dot_product_attention(qg, kc[:b, :, :kv_len], vc[:b, :, :kv_len], attn_mask=mask)
    return _finish(x, o.reshape(b, 1, n_heads * head_dim), w, dims)


def fused_decode_layer(x, parts, w, kc, vc, positions, cos, sin, kv_len, write_kv, dims, attend=None):
    """decode_layer with RoPE, the cache write and attention in one Triton kernel (decode_attention.py);
    cos and sin are [B, D] at each row's position. `attend`: the op that runs the kernel (decode_attention's opaque
    one by default)."""
    n_heads, n_kv = dims[:2]
    b = x.shape[0]
    qkv = _project(x, parts, w[0], w[1], w[2], dims, gate=False).view(b, -1)
    o = (attend or fused.decode_attention)(qkv, cos, sin, positions, write_kv, kc, vc, kv_len, n_heads, n_kv)
    return _finish(x, o.view(b, 1, -1), w, dims)


def prefill_layer(x, parts, w, kc, vc, cos, sin, write_kv, dims, last_index=None):
    """One layer over a prompt starting at position 0; its K/V fill the cache's first T positions (if write_kv).
    Given `last_index` ([B]), the layer after attention runs on those rows alone, and x comes back [B, 1, H]
    (LAST_ROW_FROM)."""
    b, t = x.shape[:2]
    q, k, v = _qkv(x, parts, w, cos, sin, dims)
    if write_kv is None:
        kc[:b, :, :t] = k
        vc[:b, :, :t] = v
    else:  # attention below uses k and v themselves, so only the cache write depends on the flag
        kc[:b, :, :t] = torch.where(write_kv, k, kc[:b, :, :t])
        vc[:b, :, :t] = torch.where(write_kv, v, vc[:b, :, :t])
    o = _merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    if last_index is not None:
        x, o = _last_rows(x, last_index), _last_rows(o, last_index)
    return _finish(x, o, w, dims)


def fused_prefill_layer(x, parts, w, kc, vc, cos, sin, write_kv, dims, last_index=None):
    """prefill_layer with RoPE, the cache write and attention in one Triton kernel (prefill_attention.py); cos and
    sin are [T, D], write_kv a one-element bool tensor."""
    n_heads, n_kv = dims[:2]
    qkv = _project(x, parts, w[0], w[1], w[2], dims, gate=False)
    o = prefill_attention.prefill_attention(qkv, cos, sin, write_kv, kc, vc, n_heads, n_kv)
    if last_index is not None:
        x, o = _last_rows(x, last_index), _last_rows(o, last_index)
    return _finish(x, o, w, dims)


def _last_rows(t: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor:
    """[B, T, ...] -> [B, 1, ...]: each sequence's row at its `last_index` (a copy, which _finish may overwrite)."""
    return t[torch.arange(t.shape[0], device=t.device), last_index][:, None]


def full_layer(x, parts, w, cos, sin, dims):
    """One layer over the whole sequence with no cache (the original design's algorithm)."""
    q, k, v = _qkv(x, parts, w, cos, sin, dims)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return _finish(x, _merge_heads(o), w, dims)


def head(h: torch.Tensor, norm: torch.Tensor, lm_head: torch.Tensor, eps: float) -> torch.Tensor:
    """Final norm and LM head, float32 logits."""
    return F.linear(_rms_norm(h, norm, eps), lm_head).float()


def _qkv(x, parts, w, cos, sin, dims):
    """x [B, T, H] -> q [B, heads, T, D], k and v [B, kv_heads, T, D], RoPE applied to q and k."""
    n_heads, n_kv, head_dim = dims[:3]
    b, t, _ = x.shape
    qkv = _project(x, parts, w[0], w[1], w[2], dims, gate=False)
    return rotated_heads(qkv.view(b, t, -1), cos, sin, n_heads, n_kv, head_dim)


def rotated_heads(qkv, cos, sin, n_heads: int, n_kv: int, head_dim: int):
    """The fused projection's output [B, T, (heads + 2·kv_heads)·D] -> q [B, heads, T, D], k and v [B, kv_heads, T,
    D], RoPE applied to q and k (cos and sin broadcast against [B, T, heads, D])."""
    b, t, _ = qkv.shape
    heads = qkv.view(b, t, n_heads + 2 * n_kv, head_dim)
    qk = _rope(heads[:, :, : n_heads + n_kv], cos, sin)  # q and k rotated in one pass
    q, k = qk[:, :, :n_heads], qk[:, :, n_heads:]
    v = heads[:, :, n_heads + n_kv :]
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def _merge_heads(o: torch.Tensor) -> torch.Tensor:
    """[B, heads, T, D] -> [B, T, heads·D]."""
    b, _, t, _ = o.shape
    return o.transpose(1, 2).reshape(b, t, -1)


def _finish(x, attn_out, w, dims):
    """Output projection, residual, then the gated MLP and its residual; attn_out is [B, T, heads·D]. Returns the
    new x and, where the norms ride in skinny_linear's sums of squares, x's partial sums (else None)."""
    x, parts = _residual_linear(attn_out, w[3], x, dims)
    h = _project(x, parts, w[4], w[5], None, dims, gate=True)
    return _residual_linear(h, w[6], x, dims)


def _project(x, parts, norm_w, w, b, dims, gate: bool):
    """F.linear(rms_norm(x, norm_w), w, b), and with `gate` silu(gate) · up of it (w = [gate; up]). With few rows:
    skinny_linear, which gates in its epilogue (dims[5]) and, given x's partial sums of squares (`parts`, with
    norm_w folded into w and None), normalises in its epilogue too. With dims[7] (compiled decode) the gate and up
    halves are two products, which inductor fuses into one reduction that gates in its epilogue (GATE_HALVES).
    Elsewhere the norm, the product and SiLU · up run as kernels of their own (SiLU · up as one where the few-row
    kernels run and silu_mul.ENABLED), or inductor fuses them."""
    eps, few, gate_in_kernel = dims[3], dims[4], dims[5]
    if parts is not None and _is_few(x):  # the norm from the partials, inside the kernel
        h, norm = x, (parts, eps)
    else:
        h, norm = _rms_norm(x, norm_w, eps), (None, 0.0)
    if gate and gate_in_kernel and _is_few(x):
        return skinny.skinny_linear(h, w, b, None, True, *norm)
    if gate and dims[7] and norm[0] is None:
        half = w.shape[0] // 2
        return _written(F.silu(_linear(h, w[:half], None, few)) * _linear(h, w[half:], None, few))
    y = (
        skinny.skinny_linear(h, w, b, None, False, *norm)
        if norm[0] is not None
        else _linear(h, w, b, few, plain=dims[8])
    )
    if not gate:
        return y
    if few and not torch.compiler.is_compiling() and silu_mul.available(y):  # one pass instead of two (v70)
        return silu_mul.silu_mul(y)
    g, up = y.chunk(2, dim=-1)
    return F.silu(g) * up


def _written(t: torch.Tensor) -> torch.Tensor:
    """t, which inductor must write to memory (a no-op in eager). Inductor otherwise inlines an element-wise value
    into its consumer's loads: SiLU · up into the down projection, whose every program would then recompute it.
    Written, it can ride in the epilogue of the reduction that made gate and up (perf-notes v48). The op is inductor's
    stride-fixing prim, present since torch 2.1; `LlamaRunner.compile()` checks that it is there."""
    return torch.ops.prims.inductor_force_stride_order(t, t.stride())


def _can_write_values() -> bool:
    """Whether _written's op exists in this torch (inductor registers it on import)."""
    try:
        import torch._inductor.inductor_prims
    except ImportError:
        return False
    return hasattr(torch.ops.prims, "inductor_force_stride_order")


def _residual_linear(h, w, residual, dims):
    """residual + F.linear(h, w), and the result's partial sums of squares when the norms ride in skinny_linear's
    (dims[6]) and h has few rows, else None."""
    if dims[6] and _is_few(h):
        return skinny.skinny_linear_stats(h, w, residual)
    return _linear(h, w, None, dims[4], residual=residual), None


def _is_few(x: torch.Tensor) -> bool:
    """Whether x has at most skinny.MAX_ROWS rows: where skinny_linear beats F.linear."""
    return x.numel() <= skinny.MAX_ROWS * x.shape[-1]


def _linear(x, w, b, few: bool, residual=None, plain: bool = False):
    """F.linear (+ residual), or the skinny_linear kernel, which adds the residual itself, when `few` is set and x
    has at most skinny.MAX_ROWS rows; with more rows cuBLAS adds it (RESIDUAL_IN_GEMM), outside compiled code into
    the residual's own storage: callers pass a residual they no longer need (the layer's stream before the add). With
    `plain` (LlamaRunner.plain_choice), a product with neither residual nor bias and more rows goes through
    blas_choice.product."""
    if few and _is_few(x):
        if residual is None or skinny.FUSE_RESIDUAL:
            return skinny.skinny_linear(x, w, b, residual)
        return residual + skinny.skinny_linear(x, w, b)
    if residual is not None and b is None and RESIDUAL_IN_GEMM and not _is_few(x):
        # (few rows stay a product and an add: compiled decode's one-row product is inductor's generated reduction,
        # which takes the add into its epilogue, where an addmm would be an extern cuBLAS call)
        r, x2 = residual.reshape(-1, w.shape[0]), x.reshape(-1, x.shape[-1])
        if torch.compiler.is_compiling():  # a mutating op inductor keeps in place (a functional addmm would copy)
            add_product(r, x2, w)
        else:  # in place: cuBLAS (or cuBLASLt, blas_choice) reads and writes r, with no copy of it first
            blas_choice.add_product_(r, x2, w)
        return r.view(residual.shape)
    if plain and residual is None and b is None and not _is_few(x):
        # through blas_choice, whose start-up timing may have found a cuBLASLt configuration faster than torch's
        # (perf-notes v85); untimed shapes run torch's own product, as F.linear would
        x2 = x.reshape(-1, x.shape[-1])
        y = plain_product(x2, w) if torch.compiler.is_compiling() else blas_choice.product(x2, w)
        return y.view(*x.shape[:-1], w.shape[0])
    y = F.linear(x, w, b)
    return y if residual is None else residual + y


@torch.library.custom_op("rollgraph::add_product", mutates_args=("r",))
def add_product(r: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> None:
    """r += x @ w.T in place: cuBLAS's product with beta = 1 on r itself. ATen's functional addmm, which inductor
    would call otherwise, first copies its input into a new output (perf-notes v55). The library is blas_choice's
    for the shape, decided when the op runs (so at capture time for a graph)."""
    blas_choice.add_product_(r, x, w)


@add_product.register_fake
def _(r, x, w) -> None:
    return None


@torch.library.custom_op("rollgraph::plain_product", mutates_args=())
def plain_product(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w.T through blas_choice.product: the algorithm or library chosen for the shape, decided when the op runs
    (so at capture time for a graph); inductor would otherwise call torch's product directly."""
    return blas_choice.product(x, w)


@plain_product.register_fake
def _(x, w) -> torch.Tensor:
    return x.new_empty(x.shape[0], w.shape[0])


def _choose_attention(attention: str, device: torch.device, dtype: torch.dtype, heads: tuple[int, int, int]) -> bool:
    """True when decode uses the fused Triton kernel: `auto` wherever it can run, `triton` or an error, `sdpa` never.
    `heads` is (query heads, KV heads, head_dim)."""
    if attention not in ATTENTION:
        raise ValueError(f"attention must be one of {ATTENTION}; got {attention!r}")
    n_heads, n_kv, head_dim = heads
    return _use_kernel(
        attention,
        "sdpa",
        fused.available(device, dtype, head_dim),
        lambda: fused.probe(device, dtype, n_heads, n_kv, head_dim),
        f"a power-of-two head_dim and fp16/bf16/fp32 (here: {device.type}, {dtype}, head_dim {head_dim})",
        ("fused decode attention", "attention", "decode uses SDPA"),
    )


def _choose_matmul(matmul: str, device: torch.device, dtype: torch.dtype) -> frozenset[str]:
    """The phases whose few-row matmuls use skinny_linear: all where it runs under `auto`, all or an error under
    `triton`, none under `torch`."""
    if matmul not in MATMUL:
        raise ValueError(f"matmul must be one of {MATMUL}; got {matmul!r}")
    on = _use_kernel(
        matmul,
        "torch",
        skinny.available(device, dtype),
        lambda: skinny.probe(device, dtype),
        f"fp16/bf16/fp32 (here: {device.type}, {dtype})",
        ("skinny matmul kernel", "matmul", "few-row matmuls use F.linear"),
    )
    return frozenset({"prefill", "decode", "full"}) if on else frozenset()


def _matmul_kernels(matmul: str, device: torch.device, dtype: torch.dtype) -> tuple[frozenset[str], bool, bool]:
    """_choose_matmul's phases, whether skinny_linear's gated epilogue runs (skinny.FUSE_GATE and its gated build
    probed), and whether the norms ride in its sums of squares (skinny.FUSE_NORM and that build probed, in the gated
    form too where the gated epilogue runs). A Triton that cannot build a form loses only that fusion, with a
    warning."""
    phases = _choose_matmul(matmul, device, dtype)
    if not phases:
        return phases, False, False
    gated = skinny.FUSE_GATE and _probed(device, dtype, "gated epilogue", gated=True)
    norm = skinny.FUSE_NORM and _probed(device, dtype, "norm in its sums of squares", gated=gated, norm=True)
    return phases, gated, norm


def _probed(device: torch.device, dtype: torch.dtype, what: str, **form: bool) -> bool:
    why = skinny.probe(device, dtype, **form)
    if why is not None:
        logger.warning("skinny matmul kernel's %s unavailable (%s); that work runs apart", what, why)
    return why is None


def _start_triton(device: torch.device) -> None:
    """Triton's driver starts lazily at the first launch; start it here, before threads build kernels at once."""
    if skinny.triton is None or device.type != "cuda":
        return
    try:
        skinny.triton.runtime.driver.active.get_current_device()
    except Exception:  # the kernels' probes then fail with their own message and fall back
        logger.debug("Triton's driver did not start", exc_info=True)


def _use_kernel(choice: str, off: str, can: bool, probe, needs: str, words: tuple[str, str, str]) -> bool:
    """Whether a Triton kernel runs, for a setting of auto / triton / `off`. Where the kernel should run it is first
    built and run once on a tiny input (`probe()`: None or why not), so a Triton that cannot build it here makes
    `auto` fall back with a warning instead of failing every request at its first step, and `triton` a load error.
    `words` are (the kernel's name, the setting's name, what runs instead)."""
    if choice == off:
        return False
    why = probe() if can else f"it needs Triton and CUDA, {needs}"
    if why is None:
        return True
    name, setting, instead = words
    if choice == "triton":
        raise RuntimeError(f"the {name} cannot run: {why}; use {setting} '{off}' or 'auto'")
    if can:  # it should have run here: say why it does not
        logger.warning("%s unavailable (%s); %s", name, why, instead)
    return False


def _fold_norm(w: torch.Tensor, norm_weight: torch.Tensor) -> torch.Tensor:
    """w [N, K] with an RMSNorm's weight [K] folded into its columns, the product in float32 and rounded once.
    transformers rounds the normalised x to the dtype and then multiplies by the weight; here the weight meets w
    instead, so the two differ by about one rounding of the dtype."""
    return (w.float() * norm_weight.float()[None, :]).to(w.dtype)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm as one fused kernel (statistics in float32). transformers rounds before applying the weight and
    this does not, so the two differ in the last bit of a bf16 value, well inside the tests' tolerance."""
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def _rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding with rotated halves (transformers' rotate_half) in three kernels; x [B, T, heads, D].

    rotate_half(x) = cat(-x2, x1) is the halves swapped with the first one negated; the sign lives in
    `signed_sin` (see _rope_tables), so the swap is a flip and the rest is one fused multiply-add.
    """
    swapped = x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)
    return torch.addcmul(x * cos, swapped, signed_sin)


def _rope_tables(rotary: torch.nn.Module, n: int, dtype: torch.dtype, device: torch.device):
    """cos and signed sin for positions 0..n-1, from the model's own inv_freq and scaling (llama3 RoPE too)."""
    inv_freq = rotary.inv_freq.to(device=device, dtype=torch.float32)
    freqs = torch.arange(n, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    scale = getattr(rotary, "attention_scaling", 1.0)
    sign = torch.cat((-torch.ones_like(inv_freq), torch.ones_like(inv_freq)))
    return (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype) * sign.to(dtype)
