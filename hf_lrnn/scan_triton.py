"""Triton kernels for the H-LRU and BD-LRU scans, forward and backward.

Shapes (B batch, T time, N channels or blocks, m order, k block size), as in ``scan_torch``:
- H-LRU: v (B, T, N), gate_logits (B, T, N, m+1), state (B, N, m) = [h_{t-1}, ..., h_{t-m}].
- BD-LRU: v (B, T, N, k), gate_logits (B, T, N, k, k+1), state (B, N, k).

Two kernel families (one ``torch.autograd.Function`` per op; float64 reference loops in ``scan_torch``):
- Sequential kernels (H-LRU, and BD-LRU with k <= 8): every thread owns one channel (H-LRU) or one block
  (BD-LRU) and runs the recurrence step by step with its state in registers; a loop iteration first
  loads U steps (U vectors per input, so that many loads are in flight), then runs them.
  H-LRU: ``h_t = sum_j a_{t,j} h_{t-j} + a_{t,0} v_t``; the backward pass runs the adjoint of the lags in
  reverse time, ``g = lam[0] + dh_t; lam <- (lam[1] + a_1 g, ..., lam[m-1] + a_{m-1} g, a_m g)`` with
  g = dL/dh_t, ``da_{t,0} = g v_t``, ``da_{t,j} = g h_{t-j}``, ``dv_t = g a_{t,0}`` (h_{t-j} read back
  from h). BD-LRU: ``h_t = A_t h_{t-1} + a_0 * v_t``; backward ``g = lam + dh_t``, ``lam <- A_t^T g``,
  ``dA_t = g h_{t-1}^T``.
- BD-LRU's outputs (h; dv and the gate gradients) leave a thread as a row tile (``_store_rows``), so that
  neighbouring threads write neighbouring addresses.
- Step kernels (BD-LRU with k > 8, whose dense k x k state maps do not fit in one thread's registers): a
  program owns a (blocks, k, k+1) tile of gates and runs one step per loop iteration.

The gate normalisation is fused: the normalised gates are never written to memory, and the backward pass
recomputes them from the logits. Time chunking (sequential kernels, state size <= 8), so that small
batches fill the GPU: the map over a chunk is affine, ``s_end = P s_start + e``. A summary pass runs
every chunk from zero (with the inputs) and from the unit states (without) to get [e | P], a small
sequential kernel passes the true start states along the chunks, and the main pass reruns every chunk
from its start state. The backward pass does the same in reverse time. Only h is saved for backward.
Masked steps (mask == 0) are the identity on the state; h there repeats the most recent state entry.

The state and all accumulations are float32; inputs may be float32, bfloat16 or float16 (float64 is
refused with a TypeError); h is returned in v's dtype, the final state in float32. Offsets are int64.
Unrolling and chunk counts come from H200 sweeps (``scripts/tune_scan.py``).
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
MAX_CHUNKED_SIZE = 8  # time chunking for m <= 8 and k <= 8 (the summaries carry (D + 1) * D numbers)
MAX_SEQUENTIAL_BLOCK = 8  # BD-LRU block sizes run by the sequential kernels; larger ones by the step kernels
# Time chunking of the sequential kernels (H200 sweeps, scripts/tune_scan.py, at B = 8, T = 4096 and
# B = 1, T = 32k): chunks of at least MIN_CHUNK_LEN steps, as many as bring H-LRU to about
# HLRU_TARGET_WORK = B * N * (m + 1) * chunks and BD-LRU to BDLRU_TARGET_THREADS = B * N * chunks.
MIN_CHUNK_LEN = 128
HLRU_TARGET_WORK = 1 << 19
BDLRU_TARGET_THREADS = 1 << 18
# (U steps per loop iteration, channels or blocks per program, warps) of the sequential kernels, by m or k
# (H200 sweeps); other sizes use _sequential_config's default.
HLRU_FWD_CONFIG = {1: (2, 128, 4), 2: (4, 128, 4), 3: (4, 128, 4), 4: (4, 128, 4), 8: (4, 128, 4)}
HLRU_BWD_CONFIG = {1: (4, 128, 4), 2: (2, 128, 4), 3: (8, 128, 4), 4: (4, 128, 4), 8: (2, 128, 4)}
BDLRU_FWD_CONFIG = {2: (4, 128, 4), 3: (2, 128, 4), 4: (2, 128, 4), 8: (1, 128, 4)}
BDLRU_BWD_CONFIG = {2: (4, 128, 4), 3: (2, 128, 4), 4: (2, 128, 4), 8: (1, 128, 4)}
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
# Shared helpers. Values that belong together (the m+1 gates of a channel, the lags, the state copies of
# a chunk summary) are tuples of equally shaped tensors, indexed with compile-time constants.
# ---------------------------------------------------------------------------------------------


@triton.jit
def _sign(x):
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))


@triton.jit
def _tanh(x):
    """tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|) (no overflow for large |x|)."""
    e = tl.exp(-2.0 * tl.abs(x))
    return _sign(x) * (1.0 - e) / (1.0 + e)


@triton.jit
def _norm_parts(g, NORM: tl.constexpr, EPS: tl.constexpr):
    """(numerators, 1 / denominator) of normalize(g) over the tuple g, a_j = num_j * inv. Codes follow
    GATE_NORMALIZATIONS: 0 softmax exp(g - max); 1 sigmoid_l1 sigmoid(g); 2 relu_l1 relu(g) (+ eps);
    3 tanh_l1 tanh(g) (sum |.| + eps); 4 l1 g (sum |.| + eps); 5 none (inv = 1)."""
    num = ()
    if NORM == 0:
        mx = g[0]
        for j in tl.static_range(1, len(g)):
            mx = tl.maximum(mx, g[j])
        for j in tl.static_range(len(g)):
            num = num + (tl.exp(g[j] - mx),)
    elif NORM == 1:
        for j in tl.static_range(len(g)):
            num = num + (tl.sigmoid(g[j]),)
    elif NORM == 2:
        for j in tl.static_range(len(g)):
            num = num + (tl.maximum(g[j], 0.0),)
    elif NORM == 3:
        for j in tl.static_range(len(g)):
            num = num + (_tanh(g[j]),)
    else:
        num = g
    if NORM <= 2:  # non-negative numerators
        den = num[0]
        for j in tl.static_range(1, len(g)):
            den += num[j]
    else:
        den = tl.abs(num[0])
        for j in tl.static_range(1, len(g)):
            den += tl.abs(num[j])
    if NORM == 0:
        inv = 1.0 / den
    elif NORM == 1:
        inv = 1.0 / tl.where(den > 0, den, 1.0)
    elif NORM == 5:
        inv = den * 0.0 + 1.0
    else:
        inv = 1.0 / (den + EPS)
    return num, inv


@triton.jit
def _normalize(g, NORM: tl.constexpr, EPS: tl.constexpr):
    """a = normalize(g), elementwise across the tuple g of equally shaped tensors."""
    num, inv = _norm_parts(g, NORM, EPS)
    a = ()
    for j in tl.static_range(len(g)):
        a = a + (num[j] * inv,)
    return a


@triton.jit
def _normalize_bwd(g, a, da, NORM: tl.constexpr, EPS: tl.constexpr):
    """dL/dg from dL/da for a = normalize(g), with ad = sum_j a_j da_j: softmax a (da - ad);
    sigmoid_l1 (da - ad) s (1 - s) inv; relu_l1 (da - ad) [g > 0] inv; tanh_l1 (da - sign(t) ad)(1 - t^2) inv;
    l1 (da - sign(g) ad) inv; none da."""
    ad = a[0] * da[0]
    for j in tl.static_range(1, len(g)):
        ad += a[j] * da[j]
    if NORM != 0:
        num, inv = _norm_parts(g, NORM, EPS)
    dg = ()
    for j in tl.static_range(len(g)):
        if NORM == 0:
            d = a[j] * (da[j] - ad)
        elif NORM == 1:
            d = (da[j] - ad) * num[j] * (1.0 - num[j]) * inv
        elif NORM == 2:
            d = tl.where(g[j] > 0, da[j] - ad, 0.0) * inv
        elif NORM == 3:
            d = (da[j] - _sign(num[j]) * ad) * (1.0 - num[j] * num[j]) * inv
        elif NORM == 4:
            d = (da[j] - _sign(g[j]) * ad) * inv
        else:
            d = da[j]
        dg = dg + (d,)
    return dg


@triton.jit
def _slice(x, start: tl.constexpr, count: tl.constexpr):
    """x[start:start + count] of a tuple."""
    out = ()
    for i in tl.static_range(count):
        out = out + (x[start + i],)
    return out


@triton.jit
def _chunk_bounds(T, L):
    """Time range [t0, t1) of this program's chunk (program axis 1) and the sequence (axis 2)."""
    pid_c = tl.program_id(1)
    t0 = pid_c * L
    t1 = tl.minimum(t0 + L, T)
    return pid_c, tl.program_id(2).to(tl.int64), t0, t1


@triton.jit
def _zero_state(zero, D: tl.constexpr):
    out = ()
    for i in tl.static_range(D):
        out = out + (zero,)
    return out


@triton.jit
def _unit_states(zero, D: tl.constexpr):
    """D + 1 copies of a state of size D, flattened: copy 0 zero, copy 1 + j the unit vector e_j."""
    out = ()
    for c in tl.static_range(D + 1):
        for j in tl.static_range(D):
            if c == j + 1:
                out = out + (zero + 1.0,)
            else:
                out = out + (zero,)
    return out


@triton.jit
def _load_values(ptr, ok, D: tl.constexpr):
    """The D consecutive values ptr[0..D-1] (ptr a tensor of pointers) as a tuple of float32 tensors."""
    out = ()
    for i in tl.static_range(D):
        out = out + (tl.load(ptr + i, mask=ok, other=0.0).to(tl.float32),)
    return out


@triton.jit
def _chunk_start(ptr, stride_b, stride_c, b, pid_c, n, n_ok, zero, D: tl.constexpr, SUMMARY: tl.constexpr,
                 HAS_START: tl.constexpr):
    """The state a sequential kernel starts its chunk from: the D + 1 copies of a summary pass
    (_unit_states), entry (b, pid_c) of ptr (strides stride_b, stride_c; D values per channel), or zeros."""
    if SUMMARY:
        x = _unit_states(zero, D)
    elif HAS_START:
        x = _load_values(ptr + b * stride_b + pid_c * stride_c + n * D, n_ok, D)
    else:
        x = _zero_state(zero, D)
    return x


@triton.jit
def _store_state(ptr, x, ok, D: tl.constexpr):
    for i in tl.static_range(D):
        tl.store(ptr + i, x[i], mask=ok)


@triton.jit
def _store_copies(ptr, x, ok, D: tl.constexpr):
    """Store D + 1 state copies (from _unit_states' start) as a chunk summary [e | P], (D, D + 1) per
    channel: [i, c] = entry i of copy c."""
    for i in tl.static_range(D):
        for c in tl.static_range(D + 1):
            tl.store(ptr + i * (D + 1) + c, x[c * D + i], mask=ok)


@triton.jit
def _stack_columns(vals, LOG2P: tl.constexpr):
    """A (BLOCK, P) tile whose column j is vals[j], from a tuple of P = 2**LOG2P (BLOCK,) tensors. Built by
    interleaving: the columns in residue class r mod 2^d are those of r mod 2^(d+1) (even positions) and
    of r + 2^d (odd positions)."""
    groups = vals
    for d in tl.static_range(LOG2P - 1, -1, -1):
        joined_all = ()
        for r in tl.static_range(1 << d):
            joined = tl.join(groups[r], groups[r + (1 << d)])
            if len(joined.shape) == 3:
                joined = tl.reshape(joined, (joined.shape[0], joined.shape[1] * 2))
            joined_all = joined_all + (joined,)
        groups = joined_all
    return groups[0]


@triton.jit
def _store_rows(ptr, row, ok, vals, F: tl.constexpr):
    """Store the F values vals[j] of every thread's row to ptr[row * F + j], as 2-D tiles (one per
    power-of-two piece of F) so that neighbouring threads write neighbouring addresses; values are cast to
    ptr's element type first."""
    for bit in tl.static_range(7, -1, -1):
        if (F >> bit) & 1:
            piece = ()
            for j in tl.static_range(1 << bit):
                piece = piece + (vals[((F >> (bit + 1)) << (bit + 1)) + j].to(ptr.dtype.element_ty),)
            start_ptr = ptr + row * F + ((F >> (bit + 1)) << (bit + 1))
            if bit == 0:
                tl.store(start_ptr, piece[0], mask=ok)
            else:
                col = tl.arange(0, 1 << bit)
                tl.store(start_ptr[:, None] + col[None, :], _stack_columns(piece, bit), mask=ok[:, None])


@triton.jit
def _chunk_combine_kernel(sum_ptr, x0_ptr, out_ptr, N, C, D: tl.constexpr, HAS_X0: tl.constexpr,
                          REVERSE: tl.constexpr, BLOCK_N: tl.constexpr):
    """The state entering each chunk, sequentially over the C chunks of one (channel tile, sequence):
    x = x0 (B, N, D) or 0; for c = 0..C-1 (REVERSE: C-1..0): out[c] = x, x = P_c x + e_c, with the chunk
    summaries sum (B, C, N, D, D+1) = [e | P]; out (B, C, N, D)."""
    b = tl.program_id(1).to(tl.int64)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    if HAS_X0:
        x = _load_values(x0_ptr + (b * N + n) * D, n_ok, D)
    else:
        x = _zero_state(tl.zeros((BLOCK_N,), dtype=tl.float32), D)
    for s in range(0, C):
        c = (C - 1 - s) if REVERSE else s
        _store_state(out_ptr + ((b * C + c) * N + n) * D, x, n_ok, D)
        e_ptr = sum_ptr + ((b * C + c) * N + n) * (D * (D + 1))
        new = ()
        for i in tl.static_range(D):
            acc = tl.load(e_ptr + i * (D + 1), mask=n_ok, other=0.0)
            for j in tl.static_range(D):
                acc += tl.load(e_ptr + i * (D + 1) + 1 + j, mask=n_ok, other=0.0) * x[j]
            new = new + (acc,)
        x = new


# ---------------------------------------------------------------------------------------------
# H-LRU: sequential kernels, one channel per thread, U steps loaded per loop iteration.
# ---------------------------------------------------------------------------------------------


@triton.jit
def _hlru_fwd_kernel(
    v_ptr, g_ptr, mask_ptr, start_ptr, h_ptr, out_ptr,
    T, N, L, start_stride_b, start_stride_c,
    M: tl.constexpr, NORM: tl.constexpr, EPS: tl.constexpr, HAS_START: tl.constexpr, HAS_MASK: tl.constexpr,
    SUMMARY: tl.constexpr, U: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One (channel tile, time chunk, sequence); lags = (h_{t-1}, ..., h_{t-m}).

    Main mode: start from the lags at start (B, C, N, M) (or zeros), write h (B, T, N) and the chunk's end
    lags to out (B, C, N, M). SUMMARY: M + 1 copies of the lags, copy 0 from zero with the input (gives
    e), copy 1 + j from lag j = 1 without input (column j of P); writes [e | P] to out (B, C, N, M, M+1).
    """
    pid_c, b, t0, t1 = _chunk_bounds(T, L)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    zero = tl.zeros((BLOCK_N,), dtype=tl.float32)
    lags = _chunk_start(start_ptr, start_stride_b, start_stride_c, b, pid_c, n, n_ok, zero, M, SUMMARY, HAS_START)
    for tb in range(t0, t1, U):
        vs = ()
        gs = ()
        for u in tl.static_range(U):  # issue all loads of the U steps first
            ok = n_ok & (n * 0 + tb + u < t1)
            off = (b * T + tb + u) * N + n
            vs = vs + (tl.load(v_ptr + off, mask=ok, other=0.0).to(tl.float32),)
            gs = gs + _load_values(g_ptr + off * (M + 1), ok, M + 1)
        for u in tl.static_range(U):
            keep = n * 0 + tb + u < t1
            if HAS_MASK:
                keep = keep & (tl.load(mask_ptr + b * T + tb + u + n * 0, mask=keep, other=0) != 0)
            a = _normalize(_slice(gs, u * (M + 1), M + 1), NORM, EPS)
            new = ()
            for c in tl.static_range(M + 1 if SUMMARY else 1):
                h = a[1] * lags[c * M]
                for j in tl.static_range(1, M):
                    h += a[1 + j] * lags[c * M + j]
                if c == 0:
                    h += a[0] * vs[u]
                new = new + (tl.where(keep, h, lags[c * M]),)
                for j in tl.static_range(1, M):
                    new = new + (tl.where(keep, lags[c * M + j - 1], lags[c * M + j]),)
            lags = new
            if not SUMMARY:
                tl.store(h_ptr + (b * T + tb + u) * N + n, lags[0].to(h_ptr.dtype.element_ty),
                         mask=n_ok & (n * 0 + tb + u < t1))
    if SUMMARY:
        _store_copies(out_ptr + ((b * tl.num_programs(1) + pid_c) * N + n) * (M * (M + 1)), lags, n_ok, M)
    else:
        _store_state(out_ptr + ((b * tl.num_programs(1) + pid_c) * N + n) * M, lags, n_ok, M)


@triton.jit
def _hlru_bwd_kernel(
    v_ptr, g_ptr, mask_ptr, init_ptr, h_ptr, src_ptr, dh_ptr, lam_ptr, dv_ptr, dg_ptr, out_ptr,
    T, N, L, lam_stride_b, lam_stride_c,
    M: tl.constexpr, NORM: tl.constexpr, EPS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_LAM: tl.constexpr,
    HAS_MASK: tl.constexpr, SUMMARY: tl.constexpr, U: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Reverse-time adjoint scan of one chunk. lam = dL/d(lags after step t) from the later steps
    (dh_t not included). Step t: g = lam[0] + dh_t; unmasked lam <- (lam[1] + a_1 g, ..., a_m g), masked
    lam[0] <- g.

    Main mode: lam at the chunk end from lam_ptr (B, C, N, M) (or zeros); writes dv, dgate_logits and, for
    chunk 0, lam after step 0 (the initial state's gradient) to out (B, N, M). The lag h_{t-j} is h at
    time t - j, or at src (B, T, M) with a mask (the j-th most recent unmasked step), or
    initial_state[..., -src - 1] where src < 0. SUMMARY: M + 1 copies (0: zero start with dh; 1 + j: unit
    lam[j], no dh) give the chunk's adjoint map [e | P] (lam at the chunk start = P lam at its end + e)
    in out (B, C, N, M, M+1).
    """
    pid_c, b, t0, t1 = _chunk_bounds(T, L)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    zero = tl.zeros((BLOCK_N,), dtype=tl.float32)
    lam = _chunk_start(lam_ptr, lam_stride_b, lam_stride_c, b, pid_c, n, n_ok, zero, M, SUMMARY, HAS_LAM)
    for i in range(0, tl.cdiv(t1 - t0, U)):
        tb = t1 - 1 - i * U  # this iteration runs steps tb, tb - 1, ..., tb - U + 1
        dhs = ()
        gs = ()
        vs = ()
        lagged = ()
        for u in tl.static_range(U):
            ok = n_ok & (n * 0 + tb - u >= t0)
            off = (b * T + tb - u) * N + n
            dhs = dhs + (tl.load(dh_ptr + off, mask=ok, other=0.0).to(tl.float32),)
            gs = gs + _load_values(g_ptr + off * (M + 1), ok, M + 1)
            if not SUMMARY:
                vs = vs + (tl.load(v_ptr + off, mask=ok, other=0.0).to(tl.float32),)
        if not SUMMARY and not HAS_MASK:  # h at tb - 1, ..., tb - U - M + 1: the lags of the U steps
            for w in tl.static_range(U + M - 1):
                src = n * 0 + tb - 1 - w
                x = tl.load(h_ptr + (b * T + src) * N + n, mask=n_ok & (src >= 0), other=0.0).to(tl.float32)
                if HAS_INIT:
                    x += tl.load(init_ptr + (b * N + n) * M - src - 1, mask=n_ok & (src < 0), other=0.0).to(tl.float32)
                lagged = lagged + (x,)
        for u in tl.static_range(U):
            t = tb - u
            ok = n_ok & (n * 0 + t >= t0)
            keep = n * 0 + t >= t0
            if HAS_MASK:
                keep = keep & (tl.load(mask_ptr + b * T + t + n * 0, mask=keep, other=0) != 0)
            gu = _slice(gs, u * (M + 1), M + 1)
            a = _normalize(gu, NORM, EPS)
            new = ()
            grad_h = zero
            for c in tl.static_range(M + 1 if SUMMARY else 1):
                g = lam[c * M]
                if c == 0:
                    g += dhs[u]
                    grad_h = g
                for j in tl.static_range(M):
                    if j + 1 < M:
                        x = lam[c * M + j + 1] + a[1 + j] * g
                    else:
                        x = a[1 + j] * g
                    if j == 0:
                        new = new + (tl.where(keep, x, g),)
                    else:
                        new = new + (tl.where(keep, x, lam[c * M + j]),)
            lam = new
            if not SUMMARY:
                off = (b * T + t) * N + n
                da = (grad_h * vs[u],)
                for j in tl.static_range(1, M + 1):
                    if HAS_MASK:
                        src = tl.load(src_ptr + (b * T + t) * M + (j - 1) + n * 0, mask=ok, other=0).to(tl.int64)
                        x = tl.load(h_ptr + (b * T + tl.maximum(src, 0)) * N + n, mask=ok & (src >= 0), other=0.0)
                        x = x.to(tl.float32)
                        if HAS_INIT:
                            x += tl.load(init_ptr + (b * N + n) * M + tl.maximum(-src - 1, 0), mask=ok & (src < 0),
                                         other=0.0).to(tl.float32)
                    else:
                        x = lagged[u + j - 1]
                    da = da + (grad_h * x,)
                dg = _normalize_bwd(gu, a, da, NORM, EPS)
                for j in tl.static_range(M + 1):
                    tl.store(dg_ptr + off * (M + 1) + j, tl.where(keep, dg[j], 0.0).to(dg_ptr.dtype.element_ty), mask=ok)
                tl.store(dv_ptr + off, tl.where(keep, grad_h * a[0], 0.0).to(dv_ptr.dtype.element_ty), mask=ok)
    if SUMMARY:
        _store_copies(out_ptr + ((b * tl.num_programs(1) + pid_c) * N + n) * (M * (M + 1)), lam, n_ok, M)
    else:
        _store_state(out_ptr + (b * N + n) * M, lam, n_ok & (n * 0 + pid_c == 0), M)


# ---------------------------------------------------------------------------------------------
# BD-LRU: sequential kernels, one block per thread, U steps loaded per loop iteration.
# ---------------------------------------------------------------------------------------------


@triton.jit
def _block_gates(gs, start: tl.constexpr, K: tl.constexpr, NORM: tl.constexpr, EPS: tl.constexpr):
    """The K rows of K + 1 gates [a_0 | A] of one step from the flat logits gs[start:], normalised per row."""
    a = ()
    for i in tl.static_range(K):
        a = a + _normalize(_slice(gs, start + i * (K + 1), K + 1), NORM, EPS)
    return a


@triton.jit
def _bdlru_seq_fwd_kernel(
    v_ptr, g_ptr, mask_ptr, start_ptr, h_ptr, out_ptr,
    T, N, L, start_stride_b, start_stride_c,
    K: tl.constexpr, NORM: tl.constexpr, EPS: tl.constexpr, HAS_START: tl.constexpr, HAS_MASK: tl.constexpr,
    SUMMARY: tl.constexpr, U: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """h_t = A_t h_{t-1} + a_0 * v_t for one (block tile, time chunk, sequence), a block per thread.

    Main mode: start from start (B, C, N, K) (or zeros), write h (B, T, N, K) and the chunk-end state to
    out (B, C, N, K). SUMMARY: K + 1 copies of the state (0: zero with the input, 1 + j: e_j without input)
    give the chunk's [e | P] in out (B, C, N, K, K+1).
    """
    pid_c, b, t0, t1 = _chunk_bounds(T, L)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    zero = tl.zeros((BLOCK_N,), dtype=tl.float32)
    s = _chunk_start(start_ptr, start_stride_b, start_stride_c, b, pid_c, n, n_ok, zero, K, SUMMARY, HAS_START)
    for tb in range(t0, t1, U):
        vs = ()
        gs = ()
        for u in tl.static_range(U):
            ok = n_ok & (n * 0 + tb + u < t1)
            off = (b * T + tb + u) * N + n
            vs = vs + _load_values(v_ptr + off * K, ok, K)
            gs = gs + _load_values(g_ptr + off * (K * (K + 1)), ok, K * (K + 1))
        for u in tl.static_range(U):
            keep = n * 0 + tb + u < t1
            if HAS_MASK:
                keep = keep & (tl.load(mask_ptr + b * T + tb + u + n * 0, mask=keep, other=0) != 0)
            a = _block_gates(gs, u * K * (K + 1), K, NORM, EPS)
            new = ()
            for c in tl.static_range(K + 1 if SUMMARY else 1):
                for i in tl.static_range(K):
                    x = a[i * (K + 1) + 1] * s[c * K]
                    for j in tl.static_range(1, K):
                        x += a[i * (K + 1) + 1 + j] * s[c * K + j]
                    if c == 0:
                        x += a[i * (K + 1)] * vs[u * K + i]
                    new = new + (tl.where(keep, x, s[c * K + i]),)
            s = new
            if not SUMMARY:
                ok = n_ok & (n * 0 + tb + u < t1)
                _store_rows(h_ptr, (b * T + tb + u) * N + n, ok, s, K)
    if SUMMARY:
        _store_copies(out_ptr + ((b * tl.num_programs(1) + pid_c) * N + n) * (K * (K + 1)), s, n_ok, K)
    else:
        _store_state(out_ptr + ((b * tl.num_programs(1) + pid_c) * N + n) * K, s, n_ok, K)


@triton.jit
def _bdlru_seq_bwd_kernel(
    v_ptr, g_ptr, mask_ptr, init_ptr, h_ptr, dh_ptr, lam_ptr, dv_ptr, dg_ptr, out_ptr,
    T, N, L, lam_stride_b, lam_stride_c,
    K: tl.constexpr, NORM: tl.constexpr, EPS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_LAM: tl.constexpr,
    HAS_MASK: tl.constexpr, SUMMARY: tl.constexpr, U: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Reverse-time adjoint scan of one chunk, a block per thread. lam = dL/d(state after step t) from
    the later steps (dh_t not included). Step t: g = lam + dh_t = dL/dh_t; unmasked lam <- A_t^T g,
    masked lam <- g; dA_t = g h_{t-1}^T, da_{t,0} = g * v_t, dv_t = g * a_{t,0}, with h_{-1} the initial
    state (h_{t-1} is read back from h: a masked step repeats the state there).

    Main mode: lam at the chunk end from lam_ptr (B, C, N, K) (or zeros); writes dv, dgate_logits and,
    for chunk 0, lam after step 0 (the initial state's gradient) to out (B, N, K). SUMMARY: K + 1 copies
    (0: zero with dh, 1 + j: unit lam[j] without dh) give the chunk's adjoint map [e | P] in out.
    """
    pid_c, b, t0, t1 = _chunk_bounds(T, L)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    zero = tl.zeros((BLOCK_N,), dtype=tl.float32)
    lam = _chunk_start(lam_ptr, lam_stride_b, lam_stride_c, b, pid_c, n, n_ok, zero, K, SUMMARY, HAS_LAM)
    for it in range(0, tl.cdiv(t1 - t0, U)):
        tb = t1 - 1 - it * U  # this iteration runs steps tb, tb - 1, ..., tb - U + 1
        dhs = ()
        gs = ()
        vs = ()
        prev = ()
        for u in tl.static_range(U):
            ok = n_ok & (n * 0 + tb - u >= t0)
            off = (b * T + tb - u) * N + n
            dhs = dhs + _load_values(dh_ptr + off * K, ok, K)
            gs = gs + _load_values(g_ptr + off * (K * (K + 1)), ok, K * (K + 1))
            if not SUMMARY:
                vs = vs + _load_values(v_ptr + off * K, ok, K)
                first = n * 0 + tb - u == 0
                for i in tl.static_range(K):  # h_{t-1}: h at t - 1, or the initial state at t = 0
                    x = tl.load(h_ptr + (off - N) * K + i, mask=ok & (n * 0 + tb - u > 0), other=0.0)
                    x = x.to(tl.float32)
                    if HAS_INIT:
                        x += tl.load(init_ptr + (b * N + n) * K + i, mask=ok & first, other=0.0).to(tl.float32)
                    prev = prev + (x,)
        for u in tl.static_range(U):
            t = tb - u
            keep = n * 0 + t >= t0
            if HAS_MASK:
                keep = keep & (tl.load(mask_ptr + b * T + t + n * 0, mask=keep, other=0) != 0)
            a = _block_gates(gs, u * K * (K + 1), K, NORM, EPS)
            new = ()
            for c in tl.static_range(K + 1 if SUMMARY else 1):
                g = _slice(lam, c * K, K)
                if c == 0:
                    g_dh = ()
                    for i in tl.static_range(K):
                        g_dh = g_dh + (g[i] + dhs[u * K + i],)
                    g = g_dh
                    grad_h = g
                for j in tl.static_range(K):
                    x = a[1 + j] * g[0]
                    for i in tl.static_range(1, K):
                        x += a[i * (K + 1) + 1 + j] * g[i]
                    new = new + (tl.where(keep, x, g[j]),)
            lam = new
            if not SUMMARY:
                off = (b * T + t) * N + n
                ok = n_ok & (n * 0 + t >= t0)
                dg_all = ()
                dv = ()
                for i in tl.static_range(K):
                    da = (grad_h[i] * vs[u * K + i],)
                    for j in tl.static_range(K):
                        da = da + (grad_h[i] * prev[u * K + j],)
                    dg = _normalize_bwd(_slice(gs, u * K * (K + 1) + i * (K + 1), K + 1), _slice(a, i * (K + 1), K + 1),
                                        da, NORM, EPS)
                    for c in tl.static_range(K + 1):
                        dg_all = dg_all + (tl.where(keep, dg[c], 0.0),)
                    dv = dv + (tl.where(keep, grad_h[i] * a[i * (K + 1)], 0.0),)
                _store_rows(dg_ptr, off, ok, dg_all, K * (K + 1))
                _store_rows(dv_ptr, off, ok, dv, K)
    if SUMMARY:
        _store_copies(out_ptr + ((b * tl.num_programs(1) + pid_c) * N + n) * (K * (K + 1)), lam, n_ok, K)
    else:
        _store_state(out_ptr + (b * N + n) * K, lam, n_ok & (n * 0 + pid_c == 0), K)


# ---------------------------------------------------------------------------------------------
# BD-LRU step kernels (k > 8). Tile (BLOCK_N blocks, KP rows i, KP columns c), KP = next power of two
# >= k+1: column c < k holds A[i, c] (logit 1 + c), column k the input gate a_0[i] (logit 0); one time
# step per loop iteration, no time chunking. The gate normalisation runs along an axis of that tile.
# ---------------------------------------------------------------------------------------------


@triton.jit
def _normalize_axis(g, valid, NORM: tl.constexpr, AXIS: tl.constexpr, EPS: tl.constexpr):
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
def _normalize_axis_bwd(g, a, da, valid, NORM: tl.constexpr, AXIS: tl.constexpr, EPS: tl.constexpr):
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
def _bdlru_step_fwd_kernel(
    v_ptr, g_ptr, mask_ptr, init_ptr, h_ptr, final_ptr, T, N,
    K: tl.constexpr, KP: tl.constexpr, NORM: tl.constexpr, EPS: tl.constexpr, HAS_INIT: tl.constexpr,
    HAS_MASK: tl.constexpr, BLOCK_N: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    """h_t = A_t h_{t-1} + a_0 * v_t for one (block tile, sequence): writes h (B, T, N, K) and the final
    state (B, N, K); the state starts from init (or zeros)."""
    b = tl.program_id(1).to(tl.int64)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    row = tl.arange(0, KP)
    col = tl.arange(0, KP)
    vec_ok = n_ok[:, None] & (row < K)[None, :]
    valid = vec_ok[:, :, None] & (col <= K)[None, None, :]
    g_offs = n[:, None, None] * (K * (K + 1)) + row[None, :, None] * (K + 1) + tl.where(col == K, 0, col + 1)[None, None, :]
    v_offs = n[:, None] * K + row[None, :]

    h = tl.zeros((BLOCK_N, KP), dtype=tl.float32)
    if HAS_INIT:
        h = tl.load(init_ptr + b * (N * K) + v_offs, mask=vec_ok, other=0.0).to(tl.float32)
    for t in tl.range(0, T, num_stages=NUM_STAGES):
        bt = b * T + t
        v = tl.load(v_ptr + bt * (N * K) + v_offs, mask=vec_ok, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + bt * (N * K * (K + 1)) + g_offs, mask=valid, other=0.0)
        a = _normalize_axis(g.to(tl.float32), valid, NORM, 2, EPS)
        x = tl.where((col < K)[None, None, :], h[:, None, :], tl.where((col == K)[None, None, :], v[:, :, None], 0.0))
        h_new = tl.sum(a * x, axis=2)
        if HAS_MASK:
            h = tl.where(tl.load(mask_ptr + bt) != 0, h_new, h)
        else:
            h = h_new
        tl.store(h_ptr + bt * (N * K) + v_offs, h.to(h_ptr.dtype.element_ty), mask=vec_ok)
    tl.store(final_ptr + b * (N * K) + v_offs, h, mask=vec_ok)


@triton.jit
def _bdlru_step_bwd_kernel(
    v_ptr, g_ptr, mask_ptr, init_ptr, h_ptr, dh_ptr, lam_ptr, dv_ptr, dg_ptr, d_init_ptr, T, N,
    K: tl.constexpr, KP: tl.constexpr, NORM: tl.constexpr, EPS: tl.constexpr,
    HAS_INIT: tl.constexpr, HAS_LAM: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_N: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """Reverse-time adjoint scan, lam = dL/dh, from the final state's gradient lam_ptr (B, N, K) (or
    zeros); writes dv, dgate_logits (h_{t-1} read from h, or the initial state at t = 0) and the initial
    state's gradient (B, N, K)."""
    b = tl.program_id(1).to(tl.int64)
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
        lam = tl.load(lam_ptr + b * (N * K) + v_offs, mask=vec_ok, other=0.0)
    for i in tl.range(0, T, num_stages=NUM_STAGES):
        t = T - 1 - i
        bt = b * T + t
        lam += tl.load(dh_ptr + bt * (N * K) + v_offs, mask=vec_ok, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + bt * (N * K * (K + 1)) + g_offs, mask=valid, other=0.0).to(tl.float32)
        a = _normalize_axis(g, valid, NORM, 2, EPS)
        if HAS_MASK:
            keep = tl.load(mask_ptr + bt) != 0
        else:
            keep = t >= 0  # true
        v = tl.load(v_ptr + bt * (N * K) + v_offs, mask=vec_ok, other=0.0).to(tl.float32)
        h_prev = tl.load(h_ptr + (bt - 1) * (N * K) + col_offs, mask=tl.where(t > 0, col_ok, False), other=0.0)
        h_prev = h_prev.to(tl.float32)
        if HAS_INIT:
            h_prev += tl.load(init_ptr + b * (N * K) + col_offs, mask=tl.where(t == 0, col_ok, False),
                              other=0.0).to(tl.float32)
        x = tl.where((col < K)[None, None, :], h_prev[:, None, :], tl.where((col == K)[None, None, :], v[:, :, None], 0.0))
        dg = _normalize_axis_bwd(g, a, lam[:, :, None] * x, valid, NORM, 2, EPS)
        a0 = tl.sum(tl.where((col == K)[None, None, :], a, 0.0), axis=2)
        tl.store(dv_ptr + bt * (N * K) + v_offs, tl.where(keep, lam * a0, 0.0).to(dv_ptr.dtype.element_ty), mask=vec_ok)
        tl.store(dg_ptr + bt * (N * K * (K + 1)) + g_offs, tl.where(keep, dg, 0.0).to(dg_ptr.dtype.element_ty), mask=valid)
        lam_prev = tl.sum(a * lam[:, :, None], axis=1)  # A^T lam, indexed by column
        lam = tl.where(keep, tl.where((col < K)[None, :], lam_prev, 0.0), lam)
    tl.store(d_init_ptr + b * (N * K) + v_offs, lam, mask=vec_ok)


# ---------------------------------------------------------------------------------------------
# Launch planning and drivers.
# ---------------------------------------------------------------------------------------------

_NORM_CODES = {name: code for code, name in enumerate(GATE_NORMALIZATIONS)}
NUM_STAGES = 3  # software-pipelining depth of the step kernels' time loops
_STEP_TILE = 1024  # fp32 gate entries per program of the step kernels
_NUM_WARPS = 4
_COMBINE_BLOCK = 64


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _sequential_config(kind: str, size: int, backward: bool) -> Tuple[int, int, int]:
    """(U, BLOCK_N, num_warps) of the sequential kernels for H-LRU order or BD-LRU block size ``size``."""
    tables = {"hlru": (HLRU_FWD_CONFIG, HLRU_BWD_CONFIG), "bdlru": (BDLRU_FWD_CONFIG, BDLRU_BWD_CONFIG)}
    return tables[kind][backward].get(size, (2 if size <= 4 else 1, 128, 4))


def _plan_chunks(T: int, D: int, want: int, chunk_size: Optional[int]) -> Tuple[int, int]:
    """(chunk length L, number of chunks C): ``chunk_size`` if given, else ``want`` chunks of at least
    MIN_CHUNK_LEN steps; one chunk for state sizes D > MAX_CHUNKED_SIZE."""
    if chunk_size is not None:
        L = max(1, min(chunk_size, T))
    elif D <= MAX_CHUNKED_SIZE:
        L = triton.cdiv(T, max(1, min(want, T // MIN_CHUNK_LEN)))
    else:
        L = T
    C = triton.cdiv(T, L)
    if C > 1 and D > MAX_CHUNKED_SIZE:
        raise ValueError(f"time chunking supports state sizes up to {MAX_CHUNKED_SIZE}, got {D}")
    return L, C


def _combine(summary: torch.Tensor, x0: Optional[torch.Tensor], reverse: bool) -> torch.Tensor:
    """States entering each chunk (B, C, N, D) from the chunk summaries (B, C, N, D, D+1)."""
    B, C, N, D = summary.shape[:4]
    out = torch.empty(B, C, N, D, dtype=torch.float32, device=summary.device)
    _chunk_combine_kernel[(triton.cdiv(N, _COMBINE_BLOCK), B)](
        summary, x0 if x0 is not None else summary, out, N, C, D=D, HAS_X0=x0 is not None, REVERSE=reverse,
        BLOCK_N=_COMBINE_BLOCK, num_warps=_NUM_WARPS)
    return out


def _lag_sources(mask: torch.Tensor, m: int) -> torch.Tensor:
    """For H-LRU with a mask: where lag j = 1..m of each step was written, (B, T, m) int32. With c the
    unmasked steps before t: the time of unmasked step number c - j if c >= j, else c - j < 0, meaning
    initial_state[..., j - c - 1] (entry -src - 1)."""
    B, T = mask.shape
    keep = mask != 0
    before = torch.cumsum(keep, 1, dtype=torch.int64) - keep.long()
    times = torch.arange(T, device=mask.device).expand(B, T)
    pos = torch.zeros(B, T + 1, dtype=torch.int64, device=mask.device)  # pos[b, c] = time of step c
    pos.scatter_(1, torch.where(keep, before, T), times)
    count = before[..., None] - torch.arange(1, m + 1, device=mask.device)
    src = torch.where(count >= 0, pos.gather(1, count.clamp(min=0).reshape(B, T * m)).reshape(B, T, m), count)
    return src.to(torch.int32).contiguous()


_SEQUENTIAL_KERNELS = {"hlru": (_hlru_fwd_kernel, _hlru_bwd_kernel), "bdlru": (_bdlru_seq_fwd_kernel, _bdlru_seq_bwd_kernel)}


def _sequential_forward(kind, v, g, init, mask, norm, chunk_size):
    """h, the final state and the chunk length of a sequential scan (H-LRU, or BD-LRU with k <= 8)."""
    B, T, N = v.shape[:3]
    D = g.shape[-1] - 1
    U, block, warps = _sequential_config(kind, D, backward=False)
    if not v.is_cuda:
        want = 1
    elif kind == "hlru":
        want = triton.cdiv(HLRU_TARGET_WORK, B * N * (D + 1))
    else:
        want = triton.cdiv(BDLRU_TARGET_THREADS, B * N)
    L, C = _plan_chunks(T, D, want, chunk_size)
    kernel = _SEQUENTIAL_KERNELS[kind][0]
    h = torch.empty_like(v)
    ends = torch.empty(B, C, N, D, dtype=torch.float32, device=v.device)
    mask_arg = mask if mask is not None else v
    common = dict(NORM=_NORM_CODES[norm], EPS=L1_EPS, HAS_MASK=mask is not None, U=U, BLOCK_N=block,
                  num_warps=warps, **{"M" if kind == "hlru" else "K": D})
    grid = (triton.cdiv(N, block), C, B)
    if C > 1:
        summary = torch.empty(B, C, N, D, D + 1, dtype=torch.float32, device=v.device)
        kernel[grid](v, g, mask_arg, v, v, summary, T, N, L, 0, 0, HAS_START=False, SUMMARY=True, **common)
        start, has_start, strides = _combine(summary, init, reverse=False), True, (C * N * D, N * D)
    else:
        start, has_start, strides = (init if init is not None else v), init is not None, (N * D, 0)
    kernel[grid](v, g, mask_arg, start, h, ends, T, N, L, *strides, HAS_START=has_start, SUMMARY=False, **common)
    return h, ends[:, -1].contiguous(), L


def _sequential_backward(kind, v, g, init, mask, h, L, dh, dfinal, norm):
    """dv, dgate_logits and the initial state's gradient (float32) of a sequential scan."""
    B, T, N = v.shape[:3]
    D = g.shape[-1] - 1
    C = triton.cdiv(T, L)
    U, block, warps = _sequential_config(kind, D, backward=True)
    kernel = _SEQUENTIAL_KERNELS[kind][1]
    dv, dg = torch.empty_like(v), torch.empty_like(g)
    d_init = torch.empty(B, N, D, dtype=torch.float32, device=v.device)
    head = (v, g, mask if mask is not None else v, init if init is not None else v, h)
    if kind == "hlru":  # where the lags of each step were written
        head += (_lag_sources(mask, D) if mask is not None else v,)
    head += (dh,)
    common = dict(NORM=_NORM_CODES[norm], EPS=L1_EPS, HAS_INIT=init is not None, HAS_MASK=mask is not None,
                  U=U, BLOCK_N=block, num_warps=warps, **{"M" if kind == "hlru" else "K": D})
    grid = (triton.cdiv(N, block), C, B)
    if C > 1:
        summary = torch.empty(B, C, N, D, D + 1, dtype=torch.float32, device=v.device)
        kernel[grid](*head, v, v, v, summary, T, N, L, 0, 0, HAS_LAM=False, SUMMARY=True, **common)
        lam, has_lam, strides = _combine(summary, dfinal, reverse=True), True, (C * N * D, N * D)
    else:
        lam, has_lam, strides = (dfinal if dfinal is not None else v), dfinal is not None, (N * D, 0)
    kernel[grid](*head, lam, dv, dg, d_init, T, N, L, *strides, HAS_LAM=has_lam, SUMMARY=False, **common)
    return dv, dg, d_init


def _step_geometry(N: int, K: int) -> Tuple[int, int]:
    """Padded width KP and blocks per program of the step kernels."""
    KP = triton.next_power_of_2(K + 1)
    return KP, max(1, min(triton.next_power_of_2(N), _STEP_TILE // (KP * KP)))


def _step_forward(v, g, init, mask, norm):
    B, T, N, K = v.shape
    KP, block = _step_geometry(N, K)
    h = torch.empty_like(v)
    final = torch.empty(B, N, K, dtype=torch.float32, device=v.device)
    _bdlru_step_fwd_kernel[(triton.cdiv(N, block), B)](
        v, g, mask if mask is not None else v, init if init is not None else v, h, final, T, N, K=K, KP=KP,
        NORM=_NORM_CODES[norm], EPS=L1_EPS, HAS_INIT=init is not None, HAS_MASK=mask is not None, BLOCK_N=block,
        NUM_STAGES=NUM_STAGES, num_warps=_NUM_WARPS)
    return h, final


def _step_backward(v, g, init, mask, h, dh, dfinal, norm):
    B, T, N, K = v.shape
    KP, block = _step_geometry(N, K)
    dv, dg = torch.empty_like(v), torch.empty_like(g)
    d_init = torch.empty(B, N, K, dtype=torch.float32, device=v.device)
    _bdlru_step_bwd_kernel[(triton.cdiv(N, block), B)](
        v, g, mask if mask is not None else v, init if init is not None else v, h, dh,
        dfinal if dfinal is not None else v, dv, dg, d_init, T, N, K=K, KP=KP, NORM=_NORM_CODES[norm], EPS=L1_EPS,
        HAS_INIT=init is not None, HAS_LAM=dfinal is not None, HAS_MASK=mask is not None, BLOCK_N=block,
        NUM_STAGES=NUM_STAGES, num_warps=_NUM_WARPS)
    return dv, dg, d_init


# ---------------------------------------------------------------------------------------------
# Autograd functions and the public entry points.
# ---------------------------------------------------------------------------------------------


def _function_forward(ctx, kind, v, gate_logits, initial_state, mask, normalization, chunk_size):
    """Forward of both autograd functions: the sequential kernels, or the step kernels for BD-LRU blocks
    larger than MAX_SEQUENTIAL_BLOCK. Saves the inputs and h."""
    ctx.step = kind == "bdlru" and v.shape[-1] > MAX_SEQUENTIAL_BLOCK
    if ctx.step:
        _plan_chunks(v.shape[1], v.shape[-1], 1, chunk_size)  # refuses a chunk_size that would split time
        h, final = _step_forward(v, gate_logits, initial_state, mask, normalization)
    else:
        h, final, ctx.L = _sequential_forward(kind, v, gate_logits, initial_state, mask, normalization, chunk_size)
    ctx.save_for_backward(v, gate_logits, initial_state, mask, h)
    ctx.kind, ctx.normalization = kind, normalization
    return h, final


def _function_backward(ctx, dh, dfinal):
    """Backward of both autograd functions: gradients for v, gate_logits and initial_state."""
    v, g, init, mask, h = ctx.saved_tensors
    dh = torch.zeros_like(h) if dh is None else dh.contiguous()
    dfinal = None if dfinal is None else dfinal.float().contiguous()
    if ctx.step:
        dv, dg, d_init = _step_backward(v, g, init, mask, h, dh, dfinal, ctx.normalization)
    else:
        dv, dg, d_init = _sequential_backward(ctx.kind, v, g, init, mask, h, ctx.L, dh, dfinal, ctx.normalization)
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
    elif k == 1:  # the same recurrence as H-LRU with m = 1: logits [a_0, A]
        h, final = HLRUScanFunction.apply(v.view(B, T, N), g.view(B, T, N, 2), init, mask, normalization,
                                          chunk_size)
        h = h.view(B, T, N, 1)
    else:
        h, final = BDLRUScanFunction.apply(v, g, init, mask, normalization, chunk_size)
    return h, (final if output_final_state else None)
