"""Triton kernels for the H-LRU and BD-LRU scans, forward and backward.

Shapes (B batch, T time, N channels or blocks, m order, k block size), as in ``scan_torch``:
- H-LRU: v (B, T, N), gate_logits (B, T, N, m+1), state (B, N, m) = [h_{t-1}, ..., h_{t-m}].
- BD-LRU: v (B, T, N, k), gate_logits (B, T, N, k, k+1), state (B, N, k).

Design (one ``torch.autograd.Function`` per op, reference loops in ``scan_torch``):
- A program owns a tile of channels (H-LRU) or blocks (BD-LRU) of one sequence and one chunk of time,
  and loops over the chunk with the state in registers, in float32. The gate normalisation is fused:
  each step loads the raw logits, normalises them in registers and never writes the coefficients out.
- H-LRU keeps its m lags in a ring: at count c (unmasked steps so far in the chunk) lag j sits in
  ring slot (c - j) mod m, and a step overwrites the slot of lag m with the new h. Instead of shifting
  the state, each step loads the logits in the matching (rotated) order, so
  ``h_t = sum_slots a[slot] * ring[slot] + a_0 v_t`` is one multiply-and-sum over a (channels, slots) tile.
- Time chunking (when B * N cannot fill the GPU): the state update is affine, ``s_end = P s_start + e``.
  The forward kernel in summary mode scans every chunk from the zero state and from the m (or k) unit
  states (as extra rows of its tile), which gives [e | P] per chunk; a combine kernel passes the true start
  states along the chunks; the forward kernel in main mode then rescans every chunk from its start state
  and writes h. The backward pass uses the same
  decomposition in reverse time with P^T: ``lambda_start = P^T lambda_end + local``.
- Backward: reverse-time adjoint scan. For H-LRU the adjoint of the lags follows
  ``lambda_{t-1}[j-1] = g_t a_{t,j} + lambda_t[j]`` (lambda_t[m] = 0), with ``g_t = lambda_t[0]`` the total
  gradient of h_t (dh_t plus what later steps passed back),
  and ``da_{t,j} = g_t h_{t-j}``, ``da_{t,0} = g_t v_t``, ``dv_t = g_t a_{t,0}``. The forward lags are rebuilt
  backwards from the saved chunk-end states: a step overwrote lag m, whose value is read back from h
  (or from the initial state). For BD-LRU ``g_t = lambda_t``, ``dA_t = g_t h_{t-1}^T``,
  ``lambda_{t-1} = A_t^T g_t``. The gates are renormalised in the kernel from the logits, and the
  normalisation's Jacobian is applied there too. Only h and chunk-boundary states are saved.
- Masked steps (mask == 0) are the identity on the state; h there repeats the most recent state entry.

The state and all accumulations are float32; inputs may be float32, bfloat16 or float16 (float64 is
refused with a TypeError); h is returned in v's dtype, the final state in float32. Offsets are int64.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch

try:  # inside try/except so that transformers' remote-code import check does not require triton
    import triton
    import triton.language as tl
except ImportError as err:
    raise ImportError("hf_lrnn.scan_triton needs the 'triton' package (pip install triton)") from err

from .scan_torch import GATE_NORMALIZATIONS, L1_EPS

MAX_HLRU_ORDER = 16  # largest supported m
MAX_BDLRU_BLOCK = 16  # largest supported k
MAX_CHUNKED_SIZE = 8  # time chunking (chunk summaries) for m <= 8 and k <= 8
MIN_CHUNK_LEN = 64  # shortest time chunk the planner picks
# The planner splits time until about this many programs per multiprocessor. The chunk summary costs
# about one extra read of the inputs for H-LRU, but E = next_pow2(k+1) times the main pass's arithmetic for
# BD-LRU, so BD-LRU is split only to fill one wave.
PROGRAMS_PER_SM = {"hlru": 8, "bdlru": 1}
NUM_STAGES = 3  # software-pipelining depth of the time loops
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def triton_unsupported_reason(kind: str, size: int) -> Optional[str]:
    """None if the Triton kernels support H-LRU order ``size`` (kind "hlru") or BD-LRU block size
    ``size`` (kind "bdlru"), else a human-readable reason."""
    limit = {"hlru": MAX_HLRU_ORDER, "bdlru": MAX_BDLRU_BLOCK}.get(kind)
    if limit is None:
        return f"unknown scan kind {kind!r} (expected 'hlru' or 'bdlru')"
    name = "order m" if kind == "hlru" else "block size k"
    if not 1 <= size <= limit:
        return f"the Triton {kind} kernels support {name} in 1..{limit}, got {size}"
    return None


# ---------------------------------------------------------------------------------------------
# Gate normalisation, forward and backward, on a tile whose axis AXIS holds one coefficient row.
# ---------------------------------------------------------------------------------------------


@triton.jit
def _normalize(g, valid, NORM: tl.constexpr, AXIS: tl.constexpr, EPS: tl.constexpr):
    """a = normalize(g) along AXIS (codes follow GATE_NORMALIZATIONS); a = 0 where not ``valid``.

    0 softmax: exp(g)/sum exp(g); 1 sigmoid_l1: s/sum s, s = sigmoid(g); 2 relu_l1: r/(sum r + eps);
    3 tanh_l1: t/(sum |t| + eps); 4 l1: g/(sum |g| + eps); 5 none: g.
    """
    if NORM == 0:
        gm = tl.where(valid, g, -1e30)  # a finite fill keeps all-invalid rows free of NaN
        e = tl.exp(gm - tl.expand_dims(tl.max(gm, AXIS), AXIS))
        a = e / tl.expand_dims(tl.sum(e, AXIS), AXIS)
    elif NORM == 1:
        s = tl.where(valid, tl.sigmoid(g), 0.0)
        den = tl.sum(s, AXIS)
        a = s / tl.expand_dims(tl.where(den > 0, den, 1.0), AXIS)
    elif NORM == 2:
        r = tl.where(valid, tl.maximum(g, 0.0), 0.0)
        a = r / tl.expand_dims(tl.sum(r, AXIS) + EPS, AXIS)
    elif NORM == 3:
        t = tl.where(valid, _tanh(g), 0.0)
        a = t / tl.expand_dims(tl.sum(tl.abs(t), AXIS) + EPS, AXIS)
    elif NORM == 4:
        x = tl.where(valid, g, 0.0)
        a = x / tl.expand_dims(tl.sum(tl.abs(x), AXIS) + EPS, AXIS)
    else:
        a = g
    return tl.where(valid, a, 0.0)


@triton.jit
def _normalize_bwd(g, a, da, valid, NORM: tl.constexpr, AXIS: tl.constexpr, EPS: tl.constexpr):
    """dL/dg from dL/da for a = normalize(g) along AXIS, with ad = sum_j a_j da_j:
    softmax a (da - ad); sigmoid_l1 (da - ad) s (1 - s) / sum s; relu_l1 (da - ad) [g > 0] / (sum r + eps);
    tanh_l1 (da - sign(t) ad)(1 - t^2) / (sum |t| + eps); l1 (da - sign(g) ad) / (sum |g| + eps); none da.
    """
    ad = tl.expand_dims(tl.sum(a * da, AXIS), AXIS)
    if NORM == 0:
        dg = a * (da - ad)
    elif NORM == 1:
        s = tl.where(valid, tl.sigmoid(g), 0.0)
        den = tl.sum(s, AXIS)
        dg = (da - ad) * s * (1.0 - s) / tl.expand_dims(tl.where(den > 0, den, 1.0), AXIS)
    elif NORM == 2:
        r = tl.where(valid, tl.maximum(g, 0.0), 0.0)
        dg = tl.where(g > 0, da - ad, 0.0) / tl.expand_dims(tl.sum(r, AXIS) + EPS, AXIS)
    elif NORM == 3:
        t = tl.where(valid, _tanh(g), 0.0)
        den = tl.expand_dims(tl.sum(tl.abs(t), AXIS) + EPS, AXIS)
        dg = (da - _sign(t) * ad) * (1.0 - t * t) / den
    elif NORM == 4:
        x = tl.where(valid, g, 0.0)
        dg = (da - _sign(x) * ad) / tl.expand_dims(tl.sum(tl.abs(x), AXIS) + EPS, AXIS)
    else:
        dg = da
    return tl.where(valid, dg, 0.0)


@triton.jit
def _tanh(x):
    """tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|) (no overflow for large |x|)."""
    e = tl.exp(-2.0 * tl.abs(x))
    return _sign(x) * (1.0 - e) / (1.0 + e)


@triton.jit
def _sign(x):
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))


@triton.jit
def _chunk_bounds(T, L):
    """Time range [t0, t1) of this program's chunk (program axis 1) and the sequence (axis 2)."""
    pid_c = tl.program_id(1)
    t0 = pid_c * L
    t1 = tl.minimum(t0 + L, T)
    return pid_c, tl.program_id(2).to(tl.int64), t0, t1


@triton.jit
def _ring_lag(cnt, col, M: tl.constexpr):
    """Lag j in 1..M held by ring column ``col`` (1..M, slot col-1) after ``cnt`` unmasked steps:
    slot (cnt - j) mod M, so j = (cnt - col + 1) mod M with 0 read as M."""
    j = (cnt - col + 1 + M) % M
    return tl.where(j == 0, M, j)


# ---------------------------------------------------------------------------------------------
# H-LRU kernels. Tile (BLOCK_N channels, MP columns): column 0 is the input (v, a_0), columns 1..m
# the ring slots 0..m-1 of the lags; MP = next power of two >= m+1.
# ---------------------------------------------------------------------------------------------


@triton.jit
def _hlru_fwd_kernel(
    v_ptr, g_ptr, h_ptr, start_ptr, out_ptr, mask_ptr,
    T, N, L, start_stride_b, start_stride_c,
    M: tl.constexpr, MP: tl.constexpr, NORM: tl.constexpr, EPS: tl.constexpr, HAS_START: tl.constexpr,
    HAS_MASK: tl.constexpr, SUMMARY: tl.constexpr, E: tl.constexpr, BLOCK_N: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """One (channel tile, chunk, sequence). Rows of the tile are (channel, copy) pairs, E copies per channel.

    Main mode (E = 1): start from the lags at ``start_ptr`` (lag order, or zeros), write h (B, T, N) and
    the chunk's end lags to out (B, C, N, M).
    SUMMARY mode: [e | P] of the chunk, the affine map s_end = P s_start + e of its lags. Copy 0 runs from
    zero lags with the input (gives e), copy j in 1..M from lag j = 1 without input (column j of P); writes
    out (B, C, N, M, M+1) with [..., i, 0] = e[i], [..., i, j] = P[i, j-1]; no h.
    """
    pid_c, b, t0, t1 = _chunk_bounds(T, L)
    r = tl.arange(0, BLOCK_N * E)
    n = tl.program_id(0) * BLOCK_N + r // E
    cp = r % E  # copy index
    n_ok = n < N
    col = tl.arange(0, MP)
    is_lag = (col >= 1) & (col <= M)
    valid = n_ok[:, None] & (col <= M)[None, :]
    lag_io = n_ok[:, None] & is_lag[None, :]

    if SUMMARY:  # copy j starts from lag j = 1, which sits in ring column M + 1 - j at count 0
        ring = tl.where((col[None, :] == M + 1 - cp[:, None]) & (cp[:, None] >= 1), 1.0, 0.0)
        v_ok = n_ok & (cp == 0)
    else:
        ring = tl.zeros((BLOCK_N * E, MP), dtype=tl.float32)
        if HAS_START:  # at count 0, ring column c holds lag M + 1 - c
            s_ptr = start_ptr + b * start_stride_b + pid_c * start_stride_c + n[:, None] * M
            ring = tl.load(s_ptr + (M - col)[None, :], mask=lag_io, other=0.0).to(tl.float32)
        v_ok = n_ok

    cnt = t0 - t0  # unmasked steps so far in this chunk
    for t in tl.range(t0, t1, num_stages=NUM_STAGES):
        bt = b * T + t
        v = tl.load(v_ptr + bt * N + n, mask=v_ok, other=0.0).to(tl.float32)
        gidx = tl.where(col == 0, 0, _ring_lag(cnt, col, M))  # logit index read into each column
        g = tl.load(g_ptr + (bt * N + n[:, None]) * (M + 1) + gidx[None, :], mask=valid, other=0.0)
        a = _normalize(g.to(tl.float32), valid, NORM, 1, EPS)
        h = tl.sum(a * tl.where(col == 0, v[:, None], ring), axis=1)
        write = col == cnt % M + 1  # the slot of lag m receives h
        if HAS_MASK:
            keep = tl.load(mask_ptr + bt) != 0
            ring = tl.where(write[None, :] & keep, h[:, None], ring)
            cnt += keep.to(tl.int32)
            if not SUMMARY:
                newest = col == (cnt - 1 + M) % M + 1
                h = tl.sum(tl.where(newest[None, :], ring, 0.0), axis=1)
        else:
            ring = tl.where(write[None, :], h[:, None], ring)
            cnt += 1
        if not SUMMARY:
            tl.store(h_ptr + bt * N + n, h.to(h_ptr.dtype.element_ty), mask=n_ok)

    lag = _ring_lag(cnt, col, M)
    if SUMMARY:
        o_ptr = out_ptr + ((b * tl.num_programs(1) + pid_c) * N + n[:, None]) * (M * (M + 1))
        o_ptr += (lag - 1)[None, :] * (M + 1) + cp[:, None]
        tl.store(o_ptr, ring, mask=lag_io & (cp <= M)[:, None])
    else:
        o_ptr = out_ptr + ((b * tl.num_programs(1) + pid_c) * N + n[:, None]) * M
        tl.store(o_ptr + (lag - 1)[None, :], ring, mask=lag_io)


@triton.jit
def _hlru_bwd_kernel(
    v_ptr, g_ptr, h_ptr, dh_ptr, dv_ptr, dg_ptr, init_ptr, end_ptr, lam_ptr, lam_out_ptr,
    src_ptr, mask_ptr, T, N, L, lam_stride_b, lam_stride_c,
    M: tl.constexpr, MP: tl.constexpr, NORM: tl.constexpr, EPS: tl.constexpr,
    HAS_INIT: tl.constexpr, HAS_LAM: tl.constexpr, HAS_MASK: tl.constexpr,
    WRITE_GRADS: tl.constexpr, BLOCK_N: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    """Reverse-time adjoint scan of one chunk, ``lam`` = dL/d(lags) in the ring.

    WRITE_GRADS: start from the adjoint at the chunk end (``lam_ptr``, lag order, or zeros), rebuild
    the forward lags from the chunk-end lags (end (B, C, N, M)) and h, write dv and dgate_logits, and
    for chunk 0 the adjoint at t = 0 (the initial state's gradient) to lam_out (B, N, M).
    Otherwise (chunk summary): start from zero, write the chunk-start adjoint to lam_out (B, C, N, M).
    """
    pid_c, b, t0, t1 = _chunk_bounds(T, L)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    col = tl.arange(0, MP)
    is_lag = (col >= 1) & (col <= M)
    valid = n_ok[:, None] & (col <= M)[None, :]
    lag_io = n_ok[:, None] & is_lag[None, :]

    if HAS_MASK:
        cnt = t0 - t0
        for t in range(t0, t1):
            cnt += (tl.load(mask_ptr + b * T + t) != 0).to(tl.int32)
    else:
        cnt = t1 - t0
    lag = _ring_lag(cnt, col, M)
    lam = tl.zeros((BLOCK_N, MP), dtype=tl.float32)
    if HAS_LAM:
        l_ptr = lam_ptr + b * lam_stride_b + pid_c * lam_stride_c + n[:, None] * M
        lam = tl.load(l_ptr + (lag - 1)[None, :], mask=lag_io, other=0.0)
    if WRITE_GRADS:
        e_ptr = end_ptr + ((b * tl.num_programs(1) + pid_c) * N + n[:, None]) * M
        ring = tl.load(e_ptr + (lag - 1)[None, :], mask=lag_io, other=0.0)

    for i in tl.range(0, t1 - t0, num_stages=NUM_STAGES):
        t = t1 - 1 - i
        bt = b * T + t
        if HAS_MASK:
            keep = tl.load(mask_ptr + bt) != 0
        else:
            keep = t0 == t0  # true
        newest = col == (cnt - 1 + M) % M + 1  # slot of h_t, the slot the step wrote
        dh = tl.load(dh_ptr + bt * N + n, mask=n_ok, other=0.0).to(tl.float32)
        lam += tl.where(newest[None, :], dh[:, None], 0.0)
        cnt -= keep.to(tl.int32)  # count before the step
        gidx = tl.where(col == 0, 0, _ring_lag(cnt, col, M))
        g = tl.load(g_ptr + (bt * N + n[:, None]) * (M + 1) + gidx[None, :], mask=valid, other=0.0)
        g = g.to(tl.float32)
        a = _normalize(g, valid, NORM, 1, EPS)
        gh = tl.sum(tl.where(newest[None, :], lam, 0.0), axis=1)  # total gradient of h_t
        if WRITE_GRADS:
            v = tl.load(v_ptr + bt * N + n, mask=n_ok, other=0.0).to(tl.float32)
            # the step overwrote lag m: read it back from h (or from the initial state)
            if HAS_MASK:
                src = tl.load(src_ptr + bt).to(tl.int64)
            else:
                src = (t - M).to(tl.int64)
            old = tl.load(h_ptr + (b * T + tl.maximum(src, 0)) * N + n, mask=tl.where(src >= 0, n_ok, False), other=0.0)
            old = old.to(tl.float32)
            if HAS_INIT:
                i_ptr = init_ptr + (b * N + n) * M + tl.maximum(-src - 1, 0)
                old += tl.load(i_ptr, mask=tl.where(src < 0, n_ok, False), other=0.0).to(tl.float32)
            ring_old = tl.where(newest[None, :], old[:, None], ring)
            da = gh[:, None] * tl.where(col == 0, v[:, None], ring_old)
            dg = _normalize_bwd(g, a, da, valid, NORM, 1, EPS)
            a0 = tl.sum(tl.where((col == 0)[None, :], a, 0.0), axis=1)
            dv = tl.where(keep, gh * a0, 0.0)
            tl.store(dv_ptr + bt * N + n, dv.to(dv_ptr.dtype.element_ty), mask=n_ok)
            dg = tl.where(keep, dg, 0.0)
            dg_ptrs = dg_ptr + (bt * N + n[:, None]) * (M + 1) + gidx[None, :]
            tl.store(dg_ptrs, dg.to(dg_ptr.dtype.element_ty), mask=valid)
            ring = tl.where(keep, ring_old, ring)
        lam_step = tl.where(newest[None, :], 0.0, lam) + gh[:, None] * a
        lam = tl.where(keep, tl.where(is_lag[None, :], lam_step, 0.0), lam)

    lag = _ring_lag(cnt, col, M)
    if WRITE_GRADS:
        o_ptr = lam_out_ptr + (b * N + n[:, None]) * M
        tl.store(o_ptr + (lag - 1)[None, :], lam, mask=tl.where(pid_c == 0, lag_io, False))
    else:
        o_ptr = lam_out_ptr + ((b * tl.num_programs(1) + pid_c) * N + n[:, None]) * M
        tl.store(o_ptr + (lag - 1)[None, :], lam, mask=lag_io)


# ---------------------------------------------------------------------------------------------
# BD-LRU kernels. Tile (BLOCK_N blocks, KP rows i, KP columns c), KP = next power of two >= k+1:
# column c < k holds A[i, c] (logit 1 + c), column k the input gate a_0[i] (logit 0).
# ---------------------------------------------------------------------------------------------


@triton.jit
def _bdlru_fwd_kernel(
    v_ptr, g_ptr, h_ptr, start_ptr, out_ptr, mask_ptr,
    T, N, L, start_stride_b, start_stride_c,
    K: tl.constexpr, KP: tl.constexpr, NORM: tl.constexpr, EPS: tl.constexpr, HAS_START: tl.constexpr,
    HAS_MASK: tl.constexpr, SUMMARY: tl.constexpr, E: tl.constexpr, BLOCK_N: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """h_t = A_t h_{t-1} + a_0 * v_t for one (block tile, chunk, sequence); rows are (block, copy) pairs.

    Main mode (E = 1): the state starts from start (or zeros); writes h (B, T, N, K) and the chunk's end
    state to out (B, C, N, K). SUMMARY mode: copy 0 from zero with the input, copy j in 1..K from the unit
    vector e_{j-1} without input; writes [e | P] to out (B, C, N, K, K+1) and no h.
    """
    pid_c, b, t0, t1 = _chunk_bounds(T, L)
    r = tl.arange(0, BLOCK_N * E)
    n = tl.program_id(0) * BLOCK_N + r // E
    cp = r % E
    n_ok = n < N
    row = tl.arange(0, KP)
    col = tl.arange(0, KP)
    vec_ok = n_ok[:, None] & (row < K)[None, :]
    valid = vec_ok[:, :, None] & (col <= K)[None, None, :]
    g_offs = n[:, None, None] * (K * (K + 1)) + row[None, :, None] * (K + 1) + tl.where(col == K, 0, col + 1)[None, None, :]
    v_offs = n[:, None] * K + row[None, :]

    if SUMMARY:
        h = tl.where((row[None, :] == cp[:, None] - 1), 1.0, 0.0)
        v_ok = vec_ok & (cp == 0)[:, None]
    else:
        h = tl.zeros((BLOCK_N * E, KP), dtype=tl.float32)
        if HAS_START:
            s_ptr = start_ptr + b * start_stride_b + pid_c * start_stride_c
            h = tl.load(s_ptr + v_offs, mask=vec_ok, other=0.0).to(tl.float32)
        v_ok = vec_ok

    for t in tl.range(t0, t1, num_stages=NUM_STAGES):
        bt = b * T + t
        v = tl.load(v_ptr + bt * (N * K) + v_offs, mask=v_ok, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + bt * (N * K * (K + 1)) + g_offs, mask=valid, other=0.0)
        a = _normalize(g.to(tl.float32), valid, NORM, 2, EPS)
        x = tl.where((col < K)[None, None, :], h[:, None, :], tl.where((col == K)[None, None, :], v[:, :, None], 0.0))
        h_new = tl.sum(a * x, axis=2)
        if HAS_MASK:
            h = tl.where(tl.load(mask_ptr + bt) != 0, h_new, h)
        else:
            h = h_new
        if not SUMMARY:
            tl.store(h_ptr + bt * (N * K) + v_offs, h.to(h_ptr.dtype.element_ty), mask=vec_ok)

    if SUMMARY:
        o_ptr = out_ptr + ((b * tl.num_programs(1) + pid_c) * N + n[:, None]) * (K * (K + 1))
        tl.store(o_ptr + row[None, :] * (K + 1) + cp[:, None], h, mask=vec_ok & (cp <= K)[:, None])
    else:
        tl.store(out_ptr + (b * tl.num_programs(1) + pid_c) * (N * K) + v_offs, h, mask=vec_ok)


@triton.jit
def _bdlru_bwd_kernel(
    v_ptr, g_ptr, h_ptr, dh_ptr, dv_ptr, dg_ptr, init_ptr, lam_ptr, lam_out_ptr,
    mask_ptr, T, N, L, lam_stride_b, lam_stride_c,
    K: tl.constexpr, KP: tl.constexpr, NORM: tl.constexpr, EPS: tl.constexpr,
    HAS_INIT: tl.constexpr, HAS_LAM: tl.constexpr, HAS_MASK: tl.constexpr,
    WRITE_GRADS: tl.constexpr, BLOCK_N: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    """Reverse-time adjoint scan of one chunk, lam = dL/dh. WRITE_GRADS: start from lam_ptr (or zeros),
    write dv and dgate_logits (h_{t-1} read from h, or the initial state at t = 0), and for chunk 0 the
    initial state's gradient to lam_out (B, N, K). Otherwise (chunk summary) start from zero and write
    the chunk-start adjoint to lam_out (B, C, N, K)."""
    pid_c, b, t0, t1 = _chunk_bounds(T, L)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    row = tl.arange(0, KP)
    col = tl.arange(0, KP)
    vec_ok = n_ok[:, None] & (row < K)[None, :]
    valid = vec_ok[:, :, None] & (col <= K)[None, None, :]
    g_offs = n[:, None, None] * (K * (K + 1)) + row[None, :, None] * (K + 1) + tl.where(col == K, 0, col + 1)[None, None, :]
    v_offs = n[:, None] * K + row[None, :]
    col_offs = n[:, None] * K + col[None, :]
    col_ok = n_ok[:, None] & (col < K)[None, :]

    lam = tl.zeros((BLOCK_N, KP), dtype=tl.float32)
    if HAS_LAM:
        lam = tl.load(lam_ptr + b * lam_stride_b + pid_c * lam_stride_c + v_offs, mask=vec_ok, other=0.0)

    for i in tl.range(0, t1 - t0, num_stages=NUM_STAGES):
        t = t1 - 1 - i
        bt = b * T + t
        lam += tl.load(dh_ptr + bt * (N * K) + v_offs, mask=vec_ok, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + bt * (N * K * (K + 1)) + g_offs, mask=valid, other=0.0).to(tl.float32)
        a = _normalize(g, valid, NORM, 2, EPS)
        if HAS_MASK:
            keep = tl.load(mask_ptr + bt) != 0
        else:
            keep = t0 == t0  # true
        if WRITE_GRADS:
            v = tl.load(v_ptr + bt * (N * K) + v_offs, mask=vec_ok, other=0.0).to(tl.float32)
            h_prev = tl.load(h_ptr + (bt - 1) * (N * K) + col_offs, mask=tl.where(t > 0, col_ok, False), other=0.0)
            h_prev = h_prev.to(tl.float32)
            if HAS_INIT:
                h_prev += tl.load(init_ptr + b * (N * K) + col_offs, mask=tl.where(t == 0, col_ok, False), other=0.0).to(tl.float32)
            x = tl.where((col < K)[None, None, :], h_prev[:, None, :], tl.where((col == K)[None, None, :], v[:, :, None], 0.0))
            dg = _normalize_bwd(g, a, lam[:, :, None] * x, valid, NORM, 2, EPS)
            a0 = tl.sum(tl.where((col == K)[None, None, :], a, 0.0), axis=2)
            dv = tl.where(keep, lam * a0, 0.0)
            tl.store(dv_ptr + bt * (N * K) + v_offs, dv.to(dv_ptr.dtype.element_ty), mask=vec_ok)
            dg = tl.where(keep, dg, 0.0)
            tl.store(dg_ptr + bt * (N * K * (K + 1)) + g_offs, dg.to(dg_ptr.dtype.element_ty), mask=valid)
        lam_prev = tl.sum(a * lam[:, :, None], axis=1)  # A^T lam, indexed by column
        lam_prev = tl.where((col < K)[None, :], lam_prev, 0.0)
        lam = tl.where(keep, lam_prev, lam)

    if WRITE_GRADS:
        tl.store(lam_out_ptr + b * (N * K) + v_offs, lam, mask=tl.where(pid_c == 0, vec_ok, False))
    else:
        tl.store(lam_out_ptr + (b * tl.num_programs(1) + pid_c) * (N * K) + v_offs, lam, mask=vec_ok)


# ---------------------------------------------------------------------------------------------
# Passing states across chunks (used by both ops, forward and backward).
# ---------------------------------------------------------------------------------------------


@triton.jit
def _chunk_combine_kernel(
    sum_ptr, x0_ptr, loc_ptr, out_ptr, N, C,
    D: tl.constexpr, DP: tl.constexpr, HAS_X0: tl.constexpr, REVERSE: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Sequential pass over the C chunks of one (channel tile, sequence); sum (B, C, N, D, D+1) = [e | P].

    Forward: out[c] = state at the start of chunk c, out[0] = x0 (B, N, D) or 0, out[c+1] = P_c out[c] + e_c.
    Reverse: out[c] = adjoint at the end of chunk c, out[C-1] = x0 or 0, out[c-1] = P_c^T out[c] + loc_c,
    with loc (B, C, N, D) the chunk-start adjoints from a zero end adjoint.
    """
    b = tl.program_id(1).to(tl.int64)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    i = tl.arange(0, DP)
    j = tl.arange(0, DP)
    vec_ok = n_ok[:, None] & (i < D)[None, :]
    p_ok = vec_ok[:, :, None] & (j < D)[None, None, :]
    p_offs = n[:, None, None] * (D * (D + 1)) + i[None, :, None] * (D + 1) + 1 + j[None, None, :]
    vec_offs = n[:, None] * D + i[None, :]
    e_offs = n[:, None] * (D * (D + 1)) + i[None, :] * (D + 1)

    x = tl.zeros((BLOCK_N, DP), dtype=tl.float32)
    if HAS_X0:
        x = tl.load(x0_ptr + b * (N * D) + vec_offs, mask=vec_ok, other=0.0).to(tl.float32)
    for s in range(0, C):
        c = (C - 1 - s) if REVERSE else s
        bc = b * C + c
        tl.store(out_ptr + bc * (N * D) + vec_offs, x, mask=vec_ok)
        p = tl.load(sum_ptr + bc * (N * D * (D + 1)) + p_offs, mask=p_ok, other=0.0)
        if REVERSE:
            loc = tl.load(loc_ptr + bc * (N * D) + vec_offs, mask=vec_ok, other=0.0)
            x = tl.sum(p * x[:, :, None], axis=1) + loc
        else:
            e = tl.load(sum_ptr + bc * (N * D * (D + 1)) + e_offs, mask=vec_ok, other=0.0)
            x = tl.sum(p * x[:, None, :], axis=2) + e


# ---------------------------------------------------------------------------------------------
# Launch planning and drivers.
# ---------------------------------------------------------------------------------------------

_NORM_CODES = {name: code for code, name in enumerate(GATE_NORMALIZATIONS)}
# tile budgets (fp32 elements per program): main/backward kernels and chunk-summary kernels
_TILE = 1024
_SUMMARY_TILE = 1024
_NUM_WARPS = 4


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _geometry(kind: str, N: int, D: int) -> dict:
    """Padded widths and channel (block) tile sizes of the main, summary and combine kernels."""
    P = triton.next_power_of_2(D + 1)  # MP (H-LRU columns) or KP (BD-LRU rows and columns)
    DP = triton.next_power_of_2(D)  # the combine kernel's padded state size
    per_channel = P if kind == "hlru" else P * P
    cap = triton.next_power_of_2(N)
    return dict(
        P=P,
        DP=DP,
        block=max(1, min(cap, _TILE // per_channel)),
        block_sum=max(1, min(cap, _SUMMARY_TILE // (per_channel * P))),
        block_comb=max(1, min(cap, 4096 // (DP * DP))),
    )


def _num_chunks(kind: str, B: int, T: int, n_tiles: int, D: int, device: torch.device,
                chunk_size: Optional[int]) -> Tuple[int, int]:
    """(chunk length L, number of chunks C). Split time only when B * channel tiles is fewer programs than
    PROGRAMS_PER_SM[kind] per multiprocessor (and D <= MAX_CHUNKED_SIZE), into chunks of at least
    MIN_CHUNK_LEN steps."""
    if chunk_size is not None:
        L = chunk_size
    elif device.type == "cuda" and D <= MAX_CHUNKED_SIZE:
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        want = triton.cdiv(PROGRAMS_PER_SM[kind] * sms, B * n_tiles)
        L = triton.cdiv(T, max(1, min(want, T // MIN_CHUNK_LEN)))
    else:
        L = T
    L = max(1, min(L, T))
    C = triton.cdiv(T, L)
    if C > 1 and D > MAX_CHUNKED_SIZE:
        raise ValueError(f"time chunking supports state sizes up to {MAX_CHUNKED_SIZE}, got {D}")
    return L, C


def _scan_forward(kind, v, g, init, mask, norm, chunk_size):
    """Launch the forward kernels. Returns h, chunk-end states (B, C, N, D) and the chunk summaries
    (B, C, N, D, D+1) (None for a single chunk), and the chunk length L."""
    B, T, N = v.shape[:3]
    D = g.shape[-1] - 1
    geo = _geometry(kind, N, D)
    L, C = _num_chunks(kind, B, T, triton.cdiv(N, geo["block"]), D, v.device, chunk_size)
    f32 = dict(dtype=torch.float32, device=v.device)
    h = torch.empty_like(v)
    ends = torch.empty(B, C, N, D, **f32)
    summary = None
    mask_arg = mask if mask is not None else v
    common = dict(NORM=_NORM_CODES[norm], EPS=L1_EPS, HAS_MASK=mask is not None, NUM_STAGES=NUM_STAGES, num_warps=_NUM_WARPS)
    kernel = _hlru_fwd_kernel if kind == "hlru" else _bdlru_fwd_kernel
    sizes = dict(M=D, MP=geo["P"]) if kind == "hlru" else dict(K=D, KP=geo["P"])
    if C > 1:
        summary = torch.empty(B, C, N, D, D + 1, **f32)
        grid = (triton.cdiv(N, geo["block_sum"]), C, B)
        kernel[grid](v, g, v, v, summary, mask_arg, T, N, L, 0, 0, HAS_START=False, SUMMARY=True, E=geo["P"],
                     BLOCK_N=geo["block_sum"], **sizes, **common)
        starts = torch.empty(B, C, N, D, **f32)
        _chunk_combine_kernel[(triton.cdiv(N, geo["block_comb"]), B)](
            summary, init if init is not None else v, v, starts, N, C, D=D, DP=geo["DP"],
            HAS_X0=init is not None, REVERSE=False, BLOCK_N=geo["block_comb"], num_warps=_NUM_WARPS,
        )
        start, has_start, strides = starts, True, (C * N * D, N * D)
    else:
        start, has_start, strides = (init if init is not None else v), init is not None, (N * D, 0)
    grid = (triton.cdiv(N, geo["block"]), C, B)
    kernel[grid](v, g, h, start, ends, mask_arg, T, N, L, *strides, HAS_START=has_start, SUMMARY=False, E=1,
                 BLOCK_N=geo["block"], **sizes, **common)
    return h, ends, summary, L


def _lag_m_source(mask: torch.Tensor, m: int) -> torch.Tensor:
    """For H-LRU with a mask: at each unmasked step, where the lag m that the step overwrites was
    written. With c the unmasked steps before t: the time of unmasked step number c - m if c >= m, else
    c - m < 0, meaning initial_state[..., m - 1 - c] (i.e. entry -src-1). (B, T) int32."""
    B, T = mask.shape
    keep = mask != 0
    before = torch.cumsum(keep, 1, dtype=torch.int64) - keep.long()
    times = torch.arange(T, device=mask.device).expand(B, T)
    pos = torch.zeros(B, T + 1, dtype=torch.int64, device=mask.device)  # pos[b, c] = time of step c
    pos.scatter_(1, torch.where(keep, before, T), times)
    src = torch.where(before >= m, pos.gather(1, (before - m).clamp(min=0)), before - m)
    return src.to(torch.int32).contiguous()


def _scan_backward(kind, v, g, init, mask, h, ends, summary, L, dh, dfinal, norm):
    """Launch the backward kernels. Returns dv, dgate_logits and the initial state's gradient (fp32)."""
    B, T, N = v.shape[:3]
    D = g.shape[-1] - 1
    C = ends.shape[1]
    geo = _geometry(kind, N, D)
    f32 = dict(dtype=torch.float32, device=v.device)
    dv, dg = torch.empty_like(v), torch.empty_like(g)
    d_init = torch.empty(B, N, D, **f32)
    mask_arg = mask if mask is not None else v
    common = dict(NORM=_NORM_CODES[norm], EPS=L1_EPS, HAS_MASK=mask is not None, NUM_STAGES=NUM_STAGES,
                  num_warps=_NUM_WARPS, BLOCK_N=geo["block"])
    init_arg = init if init is not None else v
    if kind == "hlru":
        kernel, sizes = _hlru_bwd_kernel, dict(M=D, MP=geo["P"])
        head = (v, g, h, dh, dv, dg, init_arg, ends)
        tail = (_lag_m_source(mask, D) if mask is not None else v, mask_arg)
    else:
        kernel, sizes = _bdlru_bwd_kernel, dict(K=D, KP=geo["P"])
        head = (v, g, h, dh, dv, dg, init_arg)
        tail = (mask_arg,)
    grid = (triton.cdiv(N, geo["block"]), C, B)
    if C > 1:
        local = torch.empty(B, C, N, D, **f32)
        kernel[grid](*head, v, local, *tail, T, N, L, 0, 0, HAS_INIT=init is not None,
                     HAS_LAM=False, WRITE_GRADS=False, **sizes, **common)
        lam_ends = torch.empty(B, C, N, D, **f32)
        _chunk_combine_kernel[(triton.cdiv(N, geo["block_comb"]), B)](
            summary, dfinal if dfinal is not None else v, local, lam_ends, N, C, D=D, DP=geo["DP"],
            HAS_X0=dfinal is not None, REVERSE=True, BLOCK_N=geo["block_comb"], num_warps=_NUM_WARPS,
        )
        lam, has_lam, strides = lam_ends, True, (C * N * D, N * D)
    else:
        lam, has_lam, strides = (dfinal if dfinal is not None else v), dfinal is not None, (N * D, 0)
    kernel[grid](*head, lam, d_init, *tail, T, N, L, *strides, HAS_INIT=init is not None,
                 HAS_LAM=has_lam, WRITE_GRADS=True, **sizes, **common)
    return dv, dg, d_init


# ---------------------------------------------------------------------------------------------
# Autograd functions and the public entry points.
# ---------------------------------------------------------------------------------------------


def _function_forward(ctx, kind, v, gate_logits, initial_state, mask, normalization, chunk_size):
    """Forward of both autograd functions: saves the inputs, h and the chunk-boundary states."""
    h, ends, summary, L = _scan_forward(kind, v, gate_logits, initial_state, mask, normalization, chunk_size)
    ctx.save_for_backward(v, gate_logits, initial_state, mask, h, ends, summary)
    ctx.kind, ctx.normalization, ctx.L = kind, normalization, L
    return h, ends[:, -1]


def _function_backward(ctx, dh, dfinal):
    """Backward of both autograd functions: gradients for v, gate_logits and initial_state."""
    v, g, init, mask, h, ends, summary = ctx.saved_tensors
    dh = torch.zeros_like(h) if dh is None else dh.contiguous()
    dfinal = None if dfinal is None else dfinal.float().contiguous()
    dv, dg, d_init = _scan_backward(ctx.kind, v, g, init, mask, h, ends, summary, ctx.L, dh, dfinal, ctx.normalization)
    d_init = d_init.to(init.dtype) if init is not None and ctx.needs_input_grad[2] else None
    return dv, dg, d_init, None, None, None


class HLRUScanFunction(torch.autograd.Function):
    """H-LRU scan: ``apply(v, gate_logits, initial_state, mask, normalization, chunk_size) -> (h, final)``."""

    @staticmethod
    def forward(ctx, v, gate_logits, initial_state, mask, normalization, chunk_size):
        return _function_forward(ctx, "hlru", v, gate_logits, initial_state, mask, normalization, chunk_size)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh, dfinal):
        return _function_backward(ctx, dh, dfinal)


class BDLRUScanFunction(torch.autograd.Function):
    """BD-LRU scan: ``apply(v, gate_logits, initial_state, mask, normalization, chunk_size) -> (h, final)``."""

    @staticmethod
    def forward(ctx, v, gate_logits, initial_state, mask, normalization, chunk_size):
        return _function_forward(ctx, "bdlru", v, gate_logits, initial_state, mask, normalization, chunk_size)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh, dfinal):
        return _function_backward(ctx, dh, dfinal)


def _prepare(name, kind, v, gate_logits, initial_state, mask, normalization, D):
    """Check what the kernels need beyond ops' shape checks; make the inputs contiguous."""
    reason = triton_unsupported_reason(kind, D)
    if reason is not None:
        raise ValueError(f"{name}: {reason}")
    for label, x in (("v", v), ("gate_logits", gate_logits), ("initial_state", initial_state)):
        if x is not None and x.dtype not in _KERNEL_DTYPES:
            raise TypeError(f"{name}: the Triton kernels take float32, bfloat16 or float16 {label}, got {x.dtype}; "
                            "use backend='torch' or 'reference' for float64")
    if normalization not in _NORM_CODES:
        raise ValueError(f"{name}: normalization must be one of {GATE_NORMALIZATIONS}, got {normalization!r}")
    if not v.is_cuda and not _interpreting():
        raise RuntimeError(f"{name}: the Triton backend needs CUDA tensors (or TRITON_INTERPRET=1 for the "
                           f"interpreter), got tensors on {v.device}")
    init = initial_state.contiguous() if initial_state is not None else None
    mask = (mask != 0).to(torch.int8).contiguous() if mask is not None else None
    return v.contiguous(), gate_logits.contiguous(), init, mask


def _empty_scan(v, initial_state, B, N, D):
    final = initial_state.float() if initial_state is not None else v.new_zeros(B, N, D, dtype=torch.float32)
    return v.clone(), final


def hlru_scan_triton(
    v: torch.Tensor,
    gate_logits: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    normalization: str = "softmax",
    mask: Optional[torch.Tensor] = None,
    *,
    chunk_size: Optional[int] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """H-LRU scan ``h_t = sum_{j=1..m} a_{t,j} h_{t-j} + a_{t,0} v_t``, ``a_t = normalize(gate_logits[:, t])``.

    v (B, T, N); gate_logits (B, T, N, m+1) (index 0 the input gate, j the weight of h_{t-j});
    initial_state (B, N, m) = [h_{-1}, ..., h_{-m}] or None (zeros); mask (B, T) or None (0: identity step).
    Returns h (B, T, N) in v's dtype and, if output_final_state, the final lags (B, N, m) in float32.
    ``chunk_size`` forces the time-chunk length (default: planned from the GPU's size).
    """
    B, T, N = v.shape
    m = gate_logits.shape[-1] - 1
    v, g, init, mask = _prepare("hlru_scan_triton", "hlru", v, gate_logits, initial_state, mask, normalization, m)
    if T == 0:
        h, final = _empty_scan(v, init, B, N, m)
    else:
        h, final = HLRUScanFunction.apply(v, g, init, mask, normalization, chunk_size)
    return h, (final if output_final_state else None)


def bdlru_scan_triton(
    v: torch.Tensor,
    gate_logits: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    normalization: str = "softmax",
    mask: Optional[torch.Tensor] = None,
    *,
    chunk_size: Optional[int] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """BD-LRU scan ``h_t = A_t h_{t-1} + a_{t,0} * v_t`` per block, rows of [a_0 | A] normalised.

    v (B, T, N, k); gate_logits (B, T, N, k, k+1) ([..., i, 0] row i's input gate, [..., i, 1+j] = A[i, j]);
    initial_state (B, N, k) or None; mask (B, T) or None. Returns h (B, T, N, k) in v's dtype and, if
    output_final_state, the final state (B, N, k) in float32.
    """
    B, T, N, k = v.shape
    v, g, init, mask = _prepare("bdlru_scan_triton", "bdlru", v, gate_logits, initial_state, mask, normalization, k)
    if T == 0:
        h, final = _empty_scan(v, init, B, N, k)
    else:
        h, final = BDLRUScanFunction.apply(v, g, init, mask, normalization, chunk_size)
    return h, (final if output_final_state else None)
