"""Decode attention as one Triton kernel: RoPE on q and k, the new K/V written into the cache, and attention of
one query token per row over that row's live cache, for every query head of a KV group at once (GQA, no repeat).

Why: on the reference path a decode layer spends about ten small kernels between the QKV and output projections
(RoPE, two cache writes, mask and layout copies, cuDNN attention that costs ~6.6 us for a 256-long bucket on an H100),
each a launch and a gap inside the graph. Here that is one launch that reads the QKV row once and the live cache once.

The kernel reads each row's position from device memory, so a captured graph serves every position; the loop stops
at the position, never reading past the live length. `kv_len` (the graph key's KV bucket) only decides how many
programs split the cache: up to SPLIT_ABOVE positions one program per (row, KV head) writes the output directly;
beyond, SPLITS programs (or more) each keep a partial softmax and a second small kernel merges them (flash-decoding).

Numerics follow the reference path: RoPE rounds `x * cos` to the cache dtype before the fused multiply-add, scores
and softmax in float32, probabilities cast to the value dtype for the P·V product. fp32 models use IEEE dot products
(never TF32). Triton is optional: `available()` says whether this path can run, the runner falls back to SDPA.
"""

from __future__ import annotations

import math
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the runner keeps the SDPA path
    triton = None

SPLIT_ABOVE = 256
"""KV buckets of up to this many positions take one program per (row, KV head); longer ones are split into SPLITS
pieces, or into more (a power of two) where a piece would pass SPLIT_AT positions. One program walking a 400-position
cache took 10.3 µs a layer for llama-2-7b's 32 heads on an H200 and eight pieces with their merge 7.9; at 10
positions one program took 4.0 µs and four pieces 5.5 (perf-notes v81)."""
SPLITS = 8
SPLIT_AT = 512
"""The most positions one piece of a split bucket walks (rounded up to BLOCK_T)."""
SPLIT_WARPS = {128: 8, 64: 4}
"""Warps of a split bucket's programs by head dim (128 for 128 and up, else 64): the fastest in v81's probe for
llama-2-7b's and llama-3.2-1b's shapes. An unsplit bucket's take 4."""
BLOCK_T = 64
INLINE = False
"""Whether `compile` mode (torch.compile without CUDA graphs) calls `decode_attention_inline`, whose launches inductor
makes itself, instead of the opaque op (perf-notes v73). Read when a runner compiles; pool_figures option `inline`.
Graph modes keep the opaque op: a captured graph replays the kernels without any host time."""
OVERRIDE: tuple[int, int, int | None, int] | None = None
"""(positions per step, warps, pipeline stages or None for Triton's default, splits) for every launch instead of
BLOCK_T, 4 warps, the default stages and `_splits`: for scripts/decode_attention_probe.py, which times the choices."""
MERGE_PAD = 8
"""The merge kernel reads its splits padded to this power of two (more where a bucket has more splits), so one build
of it serves every split bucket of a cache up to SPLITS · SPLIT_AT positions, and `_attend` one build per warp count
(the chunk and split count are run-time arguments): a fresh machine compiles them once, not once per bucket, before
the default set is captured."""


def available(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether the fused kernel can run here (CUDA, or Triton's CPU interpreter when TRITON_INTERPRET=1)."""
    if triton is None or head_dim < 16 or head_dim & (head_dim - 1):
        return False
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return False
    return device.type == "cuda" or _interpreting()


def probe(device: torch.device, dtype: torch.dtype, n_heads: int, n_kv: int, head_dim: int) -> str | None:
    """Build and run the kernel once on a tiny input of this model's head layout: None if that worked, else why not
    (a Triton or driver that cannot compile it here shows up now, not at a request's first decode step)."""
    try:
        b, n = 1, 2 * BLOCK_T
        opts = dict(device=device, dtype=dtype)
        qkv = torch.ones(b, (n_heads + 2 * n_kv) * head_dim, **opts)
        cos, sin = torch.ones(b, head_dim, **opts), torch.zeros(b, head_dim, **opts)
        cache = torch.ones(b, n_kv, n, head_dim, **opts)
        pos = torch.tensor([BLOCK_T + 1], device=device)
        write = torch.zeros(1, dtype=torch.bool, device=device)
        out = decode_attention(qkv, cos, sin, pos, write, cache, cache.clone(), n, n_heads, n_kv)
        if not torch.allclose(out.float(), torch.ones_like(out, dtype=torch.float32)):  # attention over all-ones V
            return "it ran but gave wrong values on a probe input"
    except Exception as exc:  # whatever Triton or the driver raises
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit(do_not_specialize=["chunk", "splits"])  # one build serves every KV bucket
    def _attend(
        qkv,
        cos,
        sin,
        positions,
        write_kv,
        k_cache,
        v_cache,
        out,
        part_m,
        part_l,
        part_acc,
        s_qkv,
        s_cos,
        s_kb,
        s_kh,
        s_kt,
        s_out,
        qk_scale,
        chunk,
        splits,
        H: tl.constexpr,
        KV: tl.constexpr,
        D: tl.constexpr,
        GROUP: tl.constexpr,
        G_PAD: tl.constexpr,
        BLOCK: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        b = tl.program_id(0)
        kvh = tl.program_id(1)
        split = tl.program_id(2)
        qk_scale = tl.cast(qk_scale, tl.float32)  # inductor's launch (decode_attention_inline) passes it as fp64
        dt = qkv.dtype.element_ty
        pos = tl.load(positions + b)
        d = tl.arange(0, D)
        d_swap = (d + D // 2) % D  # rotate_half's partner; its sign lives in the signed sin table
        g = tl.arange(0, G_PAD)
        live = g < GROUP
        heads = kvh * GROUP + g
        row = qkv + b * s_qkv
        c = tl.load(cos + b * s_cos + d).to(tl.float32)
        s = tl.load(sin + b * s_cos + d).to(tl.float32)

        q = tl.load(row + heads[:, None] * D + d[None, :], mask=live[:, None], other=0.0).to(tl.float32)
        q_sw = tl.load(row + heads[:, None] * D + d_swap[None, :], mask=live[:, None], other=0.0).to(tl.float32)
        q = ((q * c[None, :]).to(dt).to(tl.float32) + q_sw * s[None, :]).to(dt)

        kv_base = b * s_kb + kvh * s_kh
        m = tl.full([G_PAD], float("-inf"), tl.float32)
        l_sum = tl.zeros([G_PAD], tl.float32)
        acc = tl.zeros([G_PAD, D], tl.float32)
        start = split * chunk
        end = tl.minimum(start + chunk, pos)
        for t0 in range(start, end, BLOCK):
            t = t0 + tl.arange(0, BLOCK)
            valid = t < end
            kt = tl.load(k_cache + kv_base + t[None, :] * s_kt + d[:, None], mask=valid[None, :], other=0.0)
            qk = tl.dot(q, kt, input_precision=PRECISION)
            qk = tl.where(valid[None, :], qk * qk_scale, float("-inf"))
            m_new = tl.maximum(m, tl.max(qk, 1))
            p = tl.exp2(qk - m_new[:, None])
            alpha = tl.exp2(m - m_new)
            l_sum = l_sum * alpha + tl.sum(p, 1)
            v = tl.load(v_cache + kv_base + t[:, None] * s_kt + d[None, :], mask=valid[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m = m_new

        if split == 0:  # the new token: attended from registers, then written to the cache at its position
            k = tl.load(row + (H + kvh) * D + d).to(tl.float32)
            k_sw = tl.load(row + (H + kvh) * D + d_swap).to(tl.float32)
            k = ((k * c).to(dt).to(tl.float32) + k_sw * s).to(dt)
            v_new = tl.load(row + (H + KV + kvh) * D + d)
            qk_new = tl.sum(q.to(tl.float32) * k.to(tl.float32)[None, :], 1) * qk_scale
            m_new = tl.maximum(m, qk_new)
            alpha = tl.exp2(m - m_new)
            p_new = tl.exp2(qk_new - m_new)
            l_sum = l_sum * alpha + p_new
            acc = acc * alpha[:, None] + p_new[:, None] * v_new.to(tl.float32)[None, :]
            m = m_new
            if tl.load(write_kv) != 0:  # off during a capture's warm-ups: they must leave the cache as it was
                tl.store(k_cache + kv_base + pos * s_kt + d, k)
                tl.store(v_cache + kv_base + pos * s_kt + d, v_new)

        if splits == 1:
            o = acc / l_sum[:, None]
            tl.store(out + b * s_out + heads[:, None] * D + d[None, :], o.to(out.dtype.element_ty), mask=live[:, None])
        else:
            at = (b * H + heads) * splits + split
            tl.store(part_m + at, m, mask=live)
            tl.store(part_l + at, l_sum, mask=live)
            tl.store(part_acc + at[:, None] * D + d[None, :], acc, mask=live[:, None])

    @triton.jit(do_not_specialize=["splits"])
    def _merge(part_m, part_l, part_acc, out, s_out, splits, H: tl.constexpr, D: tl.constexpr, PAD: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        sp = tl.arange(0, PAD)
        live = sp < splits
        d = tl.arange(0, D)
        at = (b * H + h) * splits + sp
        m = tl.load(part_m + at, mask=live, other=float("-inf"))
        l_sum = tl.load(part_l + at, mask=live, other=0.0)
        acc = tl.load(part_acc + at[:, None] * D + d[None, :], mask=live[:, None], other=0.0)
        top = tl.max(m, 0)
        w = tl.exp2(m - top)  # a split that saw no position has m = -inf: weight 0
        total = tl.sum(l_sum * w, 0)
        o = tl.sum(acc * w[:, None], 0) / total
        tl.store(out + b * s_out + h * D + d, o.to(out.dtype.element_ty))


def _splits(kv_len: int) -> tuple[int, int]:
    """(splits, positions per split) for a KV bucket; splits is a power of two for the merge kernel."""
    if kv_len <= SPLIT_ABOVE:
        return 1, max(BLOCK_T, kv_len)
    splits = max(SPLITS, 1 << math.ceil(math.log2(math.ceil(kv_len / SPLIT_AT))))
    return splits, math.ceil(kv_len / splits / BLOCK_T) * BLOCK_T


@torch.library.custom_op("rollgraph::decode_attention", mutates_args=("k_cache", "v_cache"))
def decode_attention(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    write_kv: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_len: int,
    n_heads: int,
    n_kv: int,
) -> torch.Tensor:
    """qkv [B, (H + 2·KV)·D] straight from the fused projection (q, k, v not yet rotated); cos, sin [B, D] at each
    row's position; caches [rows, KV, max_len, D]. Returns attention output [B, H·D] and, if the one-element bool
    `write_kv` is set, writes the new K/V at `positions`. Every position must be < kv_len.

    An opaque op to torch.compile: compiled code calls it through the dispatcher and it launches its kernels from
    Python, tens of microseconds of host time a call (perf-notes v73). Captured graphs do not see that host time;
    `compile` mode without graphs does, and uses `decode_attention_inline` where INLINE is set."""
    return _attend_and_merge(qkv, cos, sin, positions, write_kv, k_cache, v_cache, kv_len, n_heads, n_kv, _as_is)


def _as_is(kernel):
    return kernel


def _attend_and_merge(qkv, cos, sin, positions, write_kv, k_cache, v_cache, kv_len, n_heads, n_kv, launcher):
    """decode_attention's body; `launcher(kernel)[grid](...)` launches each kernel (`_as_is`, or torch.library's
    wrap_triton, which lets inductor see the launch and make it itself)."""
    b = qkv.shape[0]
    d = qkv.shape[1] // (n_heads + 2 * n_kv)
    group = n_heads // n_kv
    out = qkv.new_empty(b, n_heads * d)
    block, warps, stages = BLOCK_T, 4, None
    if OVERRIDE is None:
        splits, chunk = _splits(kv_len)
        warps = SPLIT_WARPS[128 if d >= 128 else 64] if splits > 1 else 4
    else:
        block, warps, stages, splits = OVERRIDE
        chunk = math.ceil(kv_len / splits / block) * block
    if splits > 1:
        f32 = dict(dtype=torch.float32, device=qkv.device)
        part_m = torch.empty(b * n_heads * splits, **f32)
        part_l = torch.empty(b * n_heads * splits, **f32)
        part_acc = torch.empty(b * n_heads * splits * d, **f32)
    else:
        part_m = part_l = part_acc = out  # unused
    qk_scale = (1.0 / math.sqrt(d)) * math.log2(math.e)
    launcher(_attend)[(b, n_kv, splits)](
        qkv,
        cos,
        sin,
        positions,
        write_kv,
        k_cache,
        v_cache,
        out,
        part_m,
        part_l,
        part_acc,
        qkv.stride(0),
        cos.stride(0),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        out.stride(0),
        qk_scale,
        chunk,
        splits,
        H=n_heads,
        KV=n_kv,
        D=d,
        GROUP=group,
        G_PAD=max(16, triton.next_power_of_2(group)),
        BLOCK=block,
        PRECISION="ieee" if qkv.dtype == torch.float32 else "tf32",
        num_warps=warps,
        **({} if stages is None else {"num_stages": stages}),
    )
    if splits > 1:
        pad = max(MERGE_PAD, splits)
        launcher(_merge)[(b, n_heads)](part_m, part_l, part_acc, out, out.stride(0), splits, H=n_heads, D=d, PAD=pad)
    return out


@decode_attention.register_fake
def _(qkv, cos, sin, positions, write_kv, k_cache, v_cache, kv_len, n_heads, n_kv):
    d = qkv.shape[1] // (n_heads + 2 * n_kv)
    return qkv.new_empty(qkv.shape[0], n_heads * d)


if triton is not None:  # where it could not run, nothing may call it

    @torch.library.triton_op("rollgraph::decode_attention_inline", mutates_args=("k_cache", "v_cache"))
    def decode_attention_inline(
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        positions: torch.Tensor,
        write_kv: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        kv_len: int,
        n_heads: int,
        n_kv: int,
    ) -> torch.Tensor:
        """decode_attention as a Triton op: torch.compile traces into it and inductor launches the two kernels from its
        own generated code, as it launches its own (CUDA only: inductor makes no such launch for the CPU)."""
        wrap = torch.library.wrap_triton
        return _attend_and_merge(qkv, cos, sin, positions, write_kv, k_cache, v_cache, kv_len, n_heads, n_kv, wrap)
