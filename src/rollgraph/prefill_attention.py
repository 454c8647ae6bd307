"""Prefill attention as one Triton kernel: RoPE on q and k, causal attention of a prompt over itself, and the
rotated K and V written into the cache, for every query head of a KV group at once (GQA, no repeat).

Why: a compiled prefill layer spends four to five kernels between the QKV and output projections (RoPE on q, RoPE on
k fused with its cache write, the V cache write, cuDNN's attention). On an H100 they take ~11 µs a layer for a
16-token prompt and ~30 µs for 432 tokens on llama-2-7b (perf-notes v18's profiles), most of it ramp-up and launch
gaps, not bytes. Here one launch reads the QKV rows and writes the output and the cache.

Each program owns BLOCK_M prompt positions of one (row, KV head): their GROUP query heads are the rows of its tiles.
It walks the key positions up to its last own position from the QKV rows themselves (rotating k as it loads it), so
no program waits for another's cache write, and it writes the cache entries of its own positions only. Programs
start with the longest walks (the last positions), and key blocks wholly below a program's positions skip the
causal mask.

Numerics follow the reference path (llama._rope + SDPA), as decode_attention.py does: RoPE rounds `x * cos` to the
input dtype before the fused multiply-add, scores and softmax in float32, probabilities cast to the value dtype for
the P·V product, IEEE products for float32 inputs.

Checked on the CPU in Triton's interpreter and on the GPU (tests/test_gpu.py); on by default where the fused decode
kernel runs (`ENABLED`). Timed against inductor's compiled RoPE, cache writes and cuDNN attention in perf-notes v21
and v23.
"""

from __future__ import annotations

import math

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the runner keeps SDPA
    triton = None

ENABLED = True
"""Whether LlamaRunner uses this kernel for prefill wherever the fused decode kernel runs (`--attention triton`, the
default on CUDA; `sdpa` turns both off). Read when a runner is made; pool_figures.py's `no-pa` option clears it for
one spec."""
LONG = 320
"""Prompts of at least this many positions take LAUNCH_LONG; shorter ones LAUNCH_SHORT by head dim."""
LAUNCH_LONG = (128, 128, 8, 1)
LAUNCH_SHORT = {128: (64, 64, 8, 1), 64: (64, 128, 4, 1)}
"""(query rows per program, key positions per step, warps, pipeline stages): for short prompts keyed by head dim (128
for 128 and up, else 64). Each is the fastest or within 12% of it at every prefill bucket on an H100 for
llama-2-7b's and llama-3.2-1b's shapes, among 36 choices (scripts/prefill_attention_probe.py, perf-notes v23)."""


if triton is not None:

    @triton.jit
    def _rotated(rows, ok, pos, cos, sin, s_cos, D: tl.constexpr):
        """The D-wide rows at pointers `rows` ([N, 1]) rotated by RoPE at positions `pos` ([N]), in their own dtype;
        rows not `ok` are zeros."""
        d = tl.arange(0, D)
        d_swap = (d + D // 2) % D  # rotate_half's partner; its sign lives in the signed sin table
        x = tl.load(rows + d[None, :], mask=ok[:, None], other=0.0)
        x_sw = tl.load(rows + d_swap[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
        c = tl.load(cos + pos[:, None] * s_cos + d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
        s = tl.load(sin + pos[:, None] * s_cos + d[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
        return ((x.to(tl.float32) * c).to(x.dtype).to(tl.float32) + x_sw * s).to(x.dtype)

    @triton.jit
    def _attend_block(
        q,
        m,
        l_sum,
        acc,
        base,
        kr,
        tok,
        n0,
        hi,
        cos,
        sin,
        s_qt,
        s_rt,
        s_cos,
        qk_scale,
        H,
        KV,
        kvh,
        D: tl.constexpr,
        BLOCK_N: tl.constexpr,
        PRECISION: tl.constexpr,
        CAUSAL: tl.constexpr,
        PRE: tl.constexpr,
    ):
        """One step of the online softmax over key positions n0..n0+BLOCK_N-1 (those below `hi`); the causal mask
        only where a block reaches the program's own positions. With PRE the keys are read already rotated from
        `kr` (_rotate_keys' output), else rotated here from the QKV rows."""
        d = tl.arange(0, D)
        tk = n0 + tl.arange(0, BLOCK_N)
        k_ok = tk < hi
        if PRE:
            k = tl.load(kr + tk[:, None] * s_rt + kvh * D + d[None, :], mask=k_ok[:, None], other=0.0)
        else:
            k = _rotated(base + tk[:, None] * s_qt + (H + kvh) * D, k_ok, tk, cos, sin, s_cos, D)
        v = tl.load(base + tk[:, None] * s_qt + (H + KV + kvh) * D + d[None, :], mask=k_ok[:, None], other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        if CAUSAL:
            qk = tl.where((tk[None, :] <= tok[:, None]) & k_ok[None, :], qk, float("-inf"))
        m_new = tl.maximum(m, tl.max(qk, 1))  # finite from the first block on: position 0 is seen by every row
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m - m_new)
        l_sum = l_sum * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        return m_new, l_sum, acc

    @triton.jit(do_not_specialize=["T"])
    def _prefill_attend(
        qkv,
        cos,
        sin,
        write_kv,
        k_cache,
        v_cache,
        k_rot,
        out,
        T,
        s_qb,
        s_qt,
        s_cos,
        s_kb,
        s_kh,
        s_kt,
        s_rb,
        s_rt,
        s_ob,
        s_ot,
        qk_scale,
        H: tl.constexpr,
        KV: tl.constexpr,
        D: tl.constexpr,
        GROUP: tl.constexpr,
        G_PAD: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        PRECISION: tl.constexpr,
        HEAVY_FIRST: tl.constexpr,
        PRE: tl.constexpr,
    ):
        # the longest walks first: with more programs than SMs, the last wave then holds the short ones
        mb = tl.num_programs(0) - 1 - tl.program_id(0) if HEAVY_FIRST else tl.program_id(0)
        b = tl.program_id(1) // KV
        kvh = tl.program_id(1) % KV
        d = tl.arange(0, D)
        r = tl.arange(0, BLOCK_M * G_PAD)
        tok = mb * BLOCK_M + r // G_PAD
        g = r % G_PAD
        live = (tok < T) & (g < GROUP)
        base = qkv + b * s_qb
        kr = k_rot + b * s_rb
        q = _rotated(base + tok[:, None] * s_qt + (kvh * GROUP + g)[:, None] * D, live, tok, cos, sin, s_cos, D)

        m = tl.full([BLOCK_M * G_PAD], float("-inf"), tl.float32)
        l_sum = tl.zeros([BLOCK_M * G_PAD], tl.float32)
        acc = tl.zeros([BLOCK_M * G_PAD, D], tl.float32)
        hi = tl.minimum((mb + 1) * BLOCK_M, T)
        lo = (mb * BLOCK_M // BLOCK_N) * BLOCK_N  # key blocks below every own position: no causal mask
        # fmt: off
        for n0 in range(0, lo, BLOCK_N):
            m, l_sum, acc = _attend_block(q, m, l_sum, acc, base, kr, tok, n0, hi, cos, sin, s_qt, s_rt, s_cos,
                                          qk_scale, H, KV, kvh, D, BLOCK_N, PRECISION, False, PRE)
        for n0 in range(lo, hi, BLOCK_N):
            m, l_sum, acc = _attend_block(q, m, l_sum, acc, base, kr, tok, n0, hi, cos, sin, s_qt, s_rt, s_cos,
                                          qk_scale, H, KV, kvh, D, BLOCK_N, PRECISION, True, PRE)
        # fmt: on

        o = acc / l_sum[:, None]
        op = out + b * s_ob + tok[:, None] * s_ot + (kvh * GROUP + g)[:, None] * D + d[None, :]
        tl.store(op, o.to(out.dtype.element_ty), mask=live[:, None])

        if not PRE:  # with PRE, _rotate_keys wrote the cache
            # fmt: off
            _write_cache(qkv, cos, sin, write_kv, k_cache, v_cache, b, kvh, mb * BLOCK_M, T, s_qb, s_qt, s_cos, s_kb,
                         s_kh, s_kt, H, KV, D, BLOCK_M)
            # fmt: on

    @triton.jit
    def _write_cache(
        qkv,
        cos,
        sin,
        write_kv,
        k_cache,
        v_cache,
        b,
        kvh,
        t0,
        T,
        s_qb,
        s_qt,
        s_cos,
        s_kb,
        s_kh,
        s_kt,
        H: tl.constexpr,
        KV: tl.constexpr,
        D: tl.constexpr,
        ROWS: tl.constexpr,
    ):
        """Positions t0..t0+ROWS-1 (those below T) of KV head `kvh` of row `b`: their keys rotated and their values
        into the cache, if the one-element flag `write_kv` is set."""
        if tl.load(write_kv) != 0:  # off during a capture's warm-ups: they must leave the cache as it was
            d = tl.arange(0, D)
            base = qkv + b * s_qb
            tw = t0 + tl.arange(0, ROWS)
            w_ok = tw < T
            k = _rotated(base + tw[:, None] * s_qt + (H + kvh) * D, w_ok, tw, cos, sin, s_cos, D)
            v = tl.load(base + tw[:, None] * s_qt + (H + KV + kvh) * D + d[None, :], mask=w_ok[:, None], other=0.0)
            cp = b * s_kb + kvh * s_kh + tw[:, None] * s_kt + d[None, :]
            tl.store(k_cache + cp, k, mask=w_ok[:, None])
            tl.store(v_cache + cp, v, mask=w_ok[:, None])

    @triton.jit(do_not_specialize=["T"])
    def _rotate_keys(
        qkv,
        cos,
        sin,
        write_kv,
        k_cache,
        v_cache,
        k_rot,
        T,
        s_qb,
        s_qt,
        s_cos,
        s_kb,
        s_kh,
        s_kt,
        s_rb,
        s_rt,
        H: tl.constexpr,
        KV: tl.constexpr,
        D: tl.constexpr,
        ROWS: tl.constexpr,
    ):
        """The keys of ROWS positions of one (row, KV head) rotated once into k_rot [B, T, KV, D], and, with the
        flag set, the rotated keys and the values into the cache (SPLIT_FROM)."""
        b = tl.program_id(1) // KV
        kvh = tl.program_id(1) % KV
        t = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        ok = t < T
        d = tl.arange(0, D)
        base = qkv + b * s_qb + t[:, None] * s_qt
        k = _rotated(base + (H + kvh) * D, ok, t, cos, sin, s_cos, D)
        tl.store(k_rot + b * s_rb + t[:, None] * s_rt + kvh * D + d[None, :], k, mask=ok[:, None])
        if tl.load(write_kv) != 0:  # the keys just rotated, stored as they are (perf-notes v69)
            v = tl.load(base + (H + KV + kvh) * D + d[None, :], mask=ok[:, None], other=0.0)
            cp = b * s_kb + kvh * s_kh + t[:, None] * s_kt + d[None, :]
            tl.store(k_cache + cp, k, mask=ok[:, None])
            tl.store(v_cache + cp, v, mask=ok[:, None])


SPLIT_FROM: int | None = 320
"""Prompts of at least this many positions rotate their keys once, in a kernel of their own that also writes the
cache (`_rotate_keys`), before the attention kernel reads them rotated (perf-notes v67); shorter ones, or all with
None, rotate each key block in the attention kernel as it is loaded. Once the programs' walks hold several key
blocks, the rotation repeated per query block (four loads and the rounding for each key block) outweighs the extra
launch: on an H100, llama-2-7b's layer took 18.9 µs against 22.1 at 400 positions, 16.6 against 19.0 at 320, and
13.4 against 13.0 at 256."""
LAUNCH_SPLIT = {128: (128, 64, 8, 3), 64: (64, 64, 4, 3)}
"""(query rows per program, key positions per step, warps, pipeline stages) of the attention kernel when the keys come
rotated, by head dim as LAUNCH_SHORT: plain loads, so the key and value loads are pipelined. The fastest of 24 choices
at 320, 400 and 432 positions for llama-2-7b's shape and at 400-512 for llama-3.2-1b's (v67)."""
ROTATE_ROWS = 8
"""Positions per program of `_rotate_keys`: many small programs. On an H200 the split path at 320-512 positions took
1.0-1.5 µs a layer less with 8 than with 64 on both shapes, the fastest of 8-128 positions at 1-8 warps at every
length (perf-notes v84)."""
ROTATE_WARPS = 4
"""Warps per program of `_rotate_keys`."""

OVERRIDE: tuple[int, int, int, int, bool] | None = None
"""(rows, BLOCK_N, num_warps, num_stages, heavy_first) for every launch instead of the tables above: for
scripts/prefill_attention_probe.py, which times the choices."""


def _launch(t: int, group: int, d: int, pre: bool = False) -> tuple[int, int, int, int, int, bool]:
    """(G_PAD, BLOCK_M, BLOCK_N, num_warps, num_stages, heavy_first): the group padded to a power of two, positions
    per program so that a program has about `rows` query rows (at least 16, the smallest tile the tensor-core dot
    takes; fewer for a short prompt), key positions per step, and the launch's warps and pipeline stages; `pre`:
    the keys come rotated (SPLIT_FROM)."""
    if OVERRIDE is not None:
        rows, block_n, warps, stages, heavy_first = OVERRIDE
    elif pre:
        (rows, block_n, warps, stages), heavy_first = LAUNCH_SPLIT[128 if d >= 128 else 64], True
    else:
        rows, block_n, warps, stages = LAUNCH_LONG if t >= LONG else LAUNCH_SHORT[128 if d >= 128 else 64]
        heavy_first = True
    g_pad = triton.next_power_of_2(group)
    rows = max(16, min(rows, triton.next_power_of_2(t) * g_pad))
    block_n = max(16, min(block_n, triton.next_power_of_2(t)))
    return g_pad, max(1, rows // g_pad), block_n, warps, stages, heavy_first


@torch.library.custom_op("rollgraph::prefill_attention", mutates_args=("k_cache", "v_cache"))
def prefill_attention(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    write_kv: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    n_heads: int,
    n_kv: int,
) -> torch.Tensor:
    """qkv [B, T, (H + 2·KV)·D] straight from the fused projection (q, k, v not yet rotated), for positions 0..T-1;
    cos, sin [T, D] (or longer); caches [rows, KV, max_len, D]. Returns the causal attention output [B, T, H·D] and,
    if the one-element bool `write_kv` is set, writes the rotated K and V at positions 0..T-1 of rows 0..B-1."""
    b, t, width = qkv.shape
    d = width // (n_heads + 2 * n_kv)
    group = n_heads // n_kv
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    out = qkv.new_empty(b, t, n_heads * d)
    pre = SPLIT_FROM is not None and t >= SPLIT_FROM
    g_pad, block_m, block_n, warps, stages, heavy_first = _launch(t, group, d, pre)
    qk_scale = (1.0 / math.sqrt(d)) * math.log2(math.e)
    cache_strides = (k_cache.stride(0), k_cache.stride(1), k_cache.stride(2))
    k_rot = qkv  # not read unless `pre`
    if pre:
        k_rot = qkv.new_empty(b, t, n_kv, d)
        _rotate_keys[(triton.cdiv(t, ROTATE_ROWS), b * n_kv)](
            qkv, cos, sin, write_kv, k_cache, v_cache, k_rot, t, qkv.stride(0), qkv.stride(1), cos.stride(0),
            *cache_strides, k_rot.stride(0), k_rot.stride(1), H=n_heads, KV=n_kv, D=d, ROWS=ROTATE_ROWS,
            num_warps=ROTATE_WARPS,
        )  # fmt: skip
    _prefill_attend[(triton.cdiv(t, block_m), b * n_kv)](
        qkv,
        cos,
        sin,
        write_kv,
        k_cache,
        v_cache,
        k_rot,
        out,
        t,
        qkv.stride(0),
        qkv.stride(1),
        cos.stride(0),
        *cache_strides,
        k_rot.stride(0) if pre else 0,
        k_rot.stride(1) if pre else 0,
        out.stride(0),
        out.stride(1),
        qk_scale,
        H=n_heads,
        KV=n_kv,
        D=d,
        GROUP=group,
        G_PAD=g_pad,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        PRECISION="ieee" if qkv.dtype == torch.float32 else "tf32",
        HEAVY_FIRST=heavy_first,
        PRE=pre,
        num_warps=warps,
        num_stages=stages,
    )
    return out


@prefill_attention.register_fake
def _(qkv, cos, sin, write_kv, k_cache, v_cache, n_heads, n_kv):
    b, t, width = qkv.shape
    d = width // (n_heads + 2 * n_kv)
    return qkv.new_empty(b, t, n_heads * d)
