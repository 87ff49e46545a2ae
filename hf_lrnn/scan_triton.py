"""Triton kernels for the H-LRU and BD-LRU scans, forward and backward.

Shapes (B batch, T time, N channels or blocks, m order, k block size), as in ``scan_torch``:
- H-LRU: v (B, T, N), gate_logits (B, T, N, m+1), state (B, N, m) = [h_{t-1}, ..., h_{t-m}].
- BD-LRU: v (B, T, N, k), gate_logits (B, T, N, k, k+1), state (B, N, k).

Three kernel families (one ``torch.autograd.Function`` per op; float64 reference loops in ``scan_torch``):
- H-LRU (and BD-LRU with k = 1, which is the same recurrence): sequential kernels. Every thread owns one
  channel and runs ``h_t = sum_j a_{t,j} h_{t-j} + a_{t,0} v_t`` step by step with the m lags in registers;
  a loop iteration first loads U steps (U vectors per input, so many loads are in flight), then runs them.
  The backward pass runs the adjoint of the lags in reverse time,
  ``g = lam[0] + dh_t; lam <- (lam[1] + a_1 g, ..., lam[m-1] + a_{m-1} g, a_m g)``, with g = dL/dh_t,
  ``da_{t,0} = g v_t``, ``da_{t,j} = g h_{t-j}``, ``dv_t = g a_{t,0}``; h_{t-j} is read back from h.
- BD-LRU, k <= 4: tile scans. A program owns a (blocks, BLOCK_T steps) tile and scans it along time with
  ``tl.associative_scan`` over affine elements ``x -> A x + u`` (k*k + k numbers, composed in registers),
  then applies the state carried from the previous tile. The backward pass scans the adjoint elements
  ``(A_{t+1}^T, dh_t)`` in reverse time: ``lam_t = dh_t + A_{t+1}^T lam_{t+1}``, ``dA_t = lam_t h_{t-1}^T``.
- BD-LRU, k > 4: step kernels. A program owns a (blocks, k, k+1) tile of gates and runs one step per loop
  iteration (the dense k*k + k scan elements do not fit in registers for large k).

All of them fuse the gate normalisation (the normalised gates are never written to memory; the backward
pass recomputes them from the logits). Time chunking, when B * N alone cannot fill the GPU: the map over a
chunk is affine, ``s_end = P s_start + e``; a summary pass computes [e | P] per chunk, a small sequential
kernel passes the true start states along the chunks, and the main pass reruns every chunk from its start
state. The backward pass does the same in reverse time. Only h (and, for the step kernels, chunk-boundary
states) is saved for backward. Masked steps (mask == 0) are the identity on the state; h there repeats the
most recent state entry.

The state and all accumulations are float32; inputs may be float32, bfloat16 or float16 (float64 is
refused with a TypeError); h is returned in v's dtype, the final state in float32. Offsets are int64.
Tile sizes and chunk counts come from sweeps on an H200 (``scripts/bench_scan.py``).
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
MAX_TILE_SCAN_BLOCK = 4  # BD-LRU block sizes run by the tile scans; larger ones by the step kernels
MIN_CHUNK_LEN = 64  # shortest time chunk of the BD-LRU kernels
HLRU_MIN_CHUNK_LEN = 128  # shortest time chunk of the H-LRU kernels
# H-LRU: split time into C chunks with B * N * (m + 1) * C about this many (channel, lag) updates in
# flight; H200 sweep at B = 8, T = 4096 and B = 1, T = 32k: best C 16-64 and 128.
HLRU_TARGET_WORK = 1 << 19
# (U steps per loop iteration, channels per program, warps) of the sequential H-LRU kernels, by order m
# (H200 sweep); other orders use _hlru_config's defaults.
HLRU_FWD_CONFIG = {1: (2, 128, 4), 2: (4, 128, 4), 3: (4, 128, 4), 4: (4, 128, 4), 8: (4, 128, 4)}
HLRU_BWD_CONFIG = {1: (4, 128, 4), 2: (2, 128, 4), 3: (8, 128, 4), 4: (4, 128, 4), 8: (2, 128, 4)}
# (BLOCK_T steps, blocks per program, warps) of the BD-LRU tile scans, by block size k (H200 sweep).
BDLRU_FWD_TILE = {2: (16, 16, 1), 3: (16, 16, 4), 4: (16, 8, 2)}
BDLRU_BWD_TILE = {2: (32, 16, 4), 3: (16, 16, 4), 4: (8, 16, 4)}
# BD-LRU tile scans: with fewer programs than multiprocessors, split time into chunks until there are
# about this many programs per multiprocessor (H200, B = 1, T = 32k: 32 chunks of 1024 steps were best).
BDLRU_TILE_PROGRAMS_PER_SM = 8
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
# Shared helpers. Values that belong together (the m+1 gates of a channel, the lags, the entries of an
# affine element) are tuples of equally shaped tensors, indexed with compile-time constants.
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
def _load_state(ptr, ok, D: tl.constexpr):
    """The D float32 entries ptr[0..D-1] (ptr a tensor of pointers), as a tuple."""
    out = ()
    for i in tl.static_range(D):
        out = out + (tl.load(ptr + i, mask=ok, other=0.0).to(tl.float32),)
    return out


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
def _chunk_combine_kernel(sum_ptr, x0_ptr, out_ptr, N, C, D: tl.constexpr, HAS_X0: tl.constexpr,
                          REVERSE: tl.constexpr, BLOCK_N: tl.constexpr):
    """The state entering each chunk, sequentially over the C chunks of one (channel tile, sequence):
    x = x0 (B, N, D) or 0; for c = 0..C-1 (REVERSE: C-1..0): out[c] = x, x = P_c x + e_c, with the chunk
    summaries sum (B, C, N, D, D+1) = [e | P]; out (B, C, N, D)."""
    b = tl.program_id(1).to(tl.int64)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    if HAS_X0:
        x = _load_state(x0_ptr + (b * N + n) * D, n_ok, D)
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
    if SUMMARY:
        lags = _unit_states(zero, M)
    elif HAS_START:
        lags = _load_state(start_ptr + b * start_stride_b + pid_c * start_stride_c + n * M, n_ok, M)
    else:
        lags = _zero_state(zero, M)
    for tb in range(t0, t1, U):
        vs = ()
        gs = ()
        for u in tl.static_range(U):  # issue all loads of the U steps first
            ok = n_ok & (n * 0 + tb + u < t1)
            off = (b * T + tb + u) * N + n
            vs = vs + (tl.load(v_ptr + off, mask=ok, other=0.0).to(tl.float32),)
            for j in tl.static_range(M + 1):
                gs = gs + (tl.load(g_ptr + off * (M + 1) + j, mask=ok, other=0.0).to(tl.float32),)
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
    if SUMMARY:
        lam = _unit_states(zero, M)
    elif HAS_LAM:
        lam = _load_state(lam_ptr + b * lam_stride_b + pid_c * lam_stride_c + n * M, n_ok, M)
    else:
        lam = _zero_state(zero, M)
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
            for j in tl.static_range(M + 1):
                gs = gs + (tl.load(g_ptr + off * (M + 1) + j, mask=ok, other=0.0).to(tl.float32),)
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
# BD-LRU tile scans (k <= 4). Affine elements x -> A x + u on a state of size D, stored as a tuple of
# D*D + D equally shaped (BLOCK_N, BLOCK_T) tiles: A row-major, then u. Channels (blocks) run along axis 0,
# so that neighbouring threads load neighbouring addresses, and time along axis 1.
# ---------------------------------------------------------------------------------------------


@triton.jit
def _compose(first, then, D: tl.constexpr):
    """The element ``then o first``: (A_t A_f, A_t u_f + u_t)."""
    out = ()
    for i in tl.static_range(D):
        for j in tl.static_range(D):
            acc = then[i * D] * first[j]
            for q in tl.static_range(1, D):
                acc += then[i * D + q] * first[q * D + j]
            out = out + (acc,)
    for i in tl.static_range(D):
        acc = then[D * D + i]
        for q in tl.static_range(D):
            acc += then[i * D + q] * first[D * D + q]
        out = out + (acc,)
    return out


@triton.jit
def _combine_1(a0, u0, b0, w0):
    return _compose((a0, u0), (b0, w0), 1)


@triton.jit
def _combine_2(a0, a1, a2, a3, u0, u1, b0, b1, b2, b3, w0, w1):
    return _compose((a0, a1, a2, a3, u0, u1), (b0, b1, b2, b3, w0, w1), 2)


@triton.jit
def _combine_3(a0, a1, a2, a3, a4, a5, a6, a7, a8, u0, u1, u2,
               b0, b1, b2, b3, b4, b5, b6, b7, b8, w0, w1, w2):
    return _compose((a0, a1, a2, a3, a4, a5, a6, a7, a8, u0, u1, u2),
                    (b0, b1, b2, b3, b4, b5, b6, b7, b8, w0, w1, w2), 3)


@triton.jit
def _combine_4(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, u0, u1, u2, u3,
               b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15, w0, w1, w2, w3):
    return _compose((a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, u0, u1, u2, u3),
                    (b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15, w0, w1, w2, w3), 4)


@triton.jit
def _scan_time(elem, D: tl.constexpr):
    """Inclusive scan of a tuple of (BLOCK_N, BLOCK_T) element tiles along time (axis 1)."""
    if D == 1:
        out = tl.associative_scan(elem, 1, _combine_1)
    elif D == 2:
        out = tl.associative_scan(elem, 1, _combine_2)
    elif D == 3:
        out = tl.associative_scan(elem, 1, _combine_3)
    else:
        tl.static_assert(D == 4, "tile scans support state sizes up to 4")
        out = tl.associative_scan(elem, 1, _combine_4)
    return out


@triton.jit
def _apply(elem, x, D: tl.constexpr):
    """The states A x + u of a tile of elements for a start state x (tuple of D (BLOCK_N,) vectors)."""
    out = ()
    for i in tl.static_range(D):
        acc = elem[D * D + i]
        for j in tl.static_range(D):
            acc += elem[i * D + j] * x[j][:, None]
        out = out + (acc,)
    return out


@triton.jit
def _last_step(tiles, BLOCK_T: tl.constexpr):
    """Column BLOCK_T - 1 (the last time step) of every (BLOCK_N, BLOCK_T) tile in a tuple."""
    rows = tl.arange(0, BLOCK_T)[None, :]
    out = ()
    for i in tl.static_range(len(tiles)):
        out = out + (tl.sum(tl.where(rows == BLOCK_T - 1, tiles[i], 0.0), axis=1),)
    return out


@triton.jit
def _transpose(mat, D: tl.constexpr):
    """The transpose of a row-major D x D tuple."""
    out = ()
    for i in tl.static_range(D):
        for j in tl.static_range(D):
            out = out + (mat[j * D + i],)
    return out


@triton.jit
def _identity(shape_like, D: tl.constexpr):
    """The identity element as a tuple of tensors shaped like ``shape_like``."""
    zero = tl.zeros_like(shape_like)
    out = ()
    for i in tl.static_range(D):
        for j in tl.static_range(D):
            if i == j:
                out = out + (zero + 1.0,)
            else:
                out = out + (zero,)
    for i in tl.static_range(D):
        out = out + (zero,)
    return out


@triton.jit
def _store_summary(ptr, elem, ok, D: tl.constexpr):
    """[e | P] of an element, (D, D+1) per channel: [i, 0] = u_i, [i, 1 + j] = A_ij."""
    for i in tl.static_range(D):
        tl.store(ptr + i * (D + 1), elem[D * D + i], mask=ok)
        for j in tl.static_range(D):
            tl.store(ptr + i * (D + 1) + 1 + j, elem[i * D + j], mask=ok)


@triton.jit
def _bdlru_gates(g_ptr, off, ok, K: tl.constexpr, NORM: tl.constexpr, EPS: tl.constexpr):
    """Logits and gates of the blocks at ``off``, row-major tuples of K rows of K + 1 tiles."""
    g = ()
    a = ()
    for i in tl.static_range(K):
        row = ()
        for c in tl.static_range(K + 1):
            row = row + (tl.load(g_ptr + off * (K * (K + 1)) + i * (K + 1) + c, mask=ok, other=0.0).to(tl.float32),)
        g = g + row
        a = a + _normalize(row, NORM, EPS)
    return g, a


@triton.jit
def _bdlru_element(a, x, step, K: tl.constexpr, TRANSPOSE: tl.constexpr):
    """(A, x) from the gates a (identity where not ``step``); TRANSPOSE: (A^T, x)."""
    zero = tl.zeros_like(x[0])
    out = ()
    for i in tl.static_range(K):
        for j in tl.static_range(K):
            if i == j:
                out = out + (tl.where(step, a[i * (K + 1) + 1 + j], zero + 1.0),)
            else:
                out = out + (tl.where(step, a[i * (K + 1) + 1 + j], zero),)
    if TRANSPOSE:
        out = _transpose(out, K)
    return out + x


@triton.jit
def _bdlru_tile_fwd_kernel(
    v_ptr, g_ptr, mask_ptr, start_ptr, h_ptr, out_ptr,
    T, N, L, start_stride_b, start_stride_c,
    K: tl.constexpr, NORM: tl.constexpr, EPS: tl.constexpr, HAS_START: tl.constexpr, HAS_MASK: tl.constexpr,
    SUMMARY: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """h_t = A_t h_{t-1} + a_0 * v_t for one (block tile, time chunk, sequence), in tiles of BLOCK_T steps.

    Main mode: start from start (B, C, N, K) (or zeros), write h (B, T, N, K) and the chunk-end state to
    out (B, C, N, K). SUMMARY: the chunk's element [e | P] (s_end = P s_start + e) to out (B, C, N, K, K+1).
    """
    pid_c, b, t0, t1 = _chunk_bounds(T, L)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    rows = tl.arange(0, BLOCK_T)
    vec_zero = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if SUMMARY:
        acc = _identity(vec_zero, K)
    else:
        if HAS_START:
            state = _load_state(start_ptr + b * start_stride_b + pid_c * start_stride_c + n * K, n_ok, K)
        else:
            state = _zero_state(vec_zero, K)
    for ts in range(t0, t1, BLOCK_T):
        t = ts + rows
        ok = (t < t1)[None, :] & n_ok[:, None]
        step = ok
        if HAS_MASK:
            step = step & (tl.load(mask_ptr + b * T + t, mask=t < t1, other=0) != 0)[None, :]
        off = (b * T + t)[None, :] * N + n[:, None]
        g, a = _bdlru_gates(g_ptr, off, ok, K, NORM, EPS)
        u = ()
        for i in tl.static_range(K):
            v = tl.load(v_ptr + off * K + i, mask=ok, other=0.0).to(tl.float32)
            u = u + (tl.where(step, a[i * (K + 1)] * v, 0.0),)
        elem = _scan_time(_bdlru_element(a, u, step, K, False), K)
        if SUMMARY:
            acc = _compose(acc, _last_step(elem, BLOCK_T), K)
        else:
            s = _apply(elem, state, K)
            for i in tl.static_range(K):
                tl.store(h_ptr + off * K + i, s[i].to(h_ptr.dtype.element_ty), mask=ok)
            state = _last_step(s, BLOCK_T)
    if SUMMARY:
        o_ptr = out_ptr + ((b * tl.num_programs(1) + pid_c) * N + n) * (K * (K + 1))
        _store_summary(o_ptr, acc, n_ok, K)
    else:
        _store_state(out_ptr + ((b * tl.num_programs(1) + pid_c) * N + n) * K, state, n_ok, K)


@triton.jit
def _bdlru_tile_bwd_kernel(
    v_ptr, g_ptr, mask_ptr, init_ptr, h_ptr, dh_ptr, lam_ptr, dv_ptr, dg_ptr, out_ptr,
    T, N, L, lam_stride_b, lam_stride_c,
    K: tl.constexpr, NORM: tl.constexpr, EPS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_LAM: tl.constexpr,
    HAS_MASK: tl.constexpr, SUMMARY: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Reverse-time adjoint scan of one chunk, lam_t = dL/dh_t = dh_t + A_{t+1}^T lam_{t+1}, in tiles of
    BLOCK_T steps (tile column r is time t1 - 1 - i * BLOCK_T - r). dA_t = lam_t h_{t-1}^T,
    da_{t,0} = lam_t * v_t, dv_t = lam_t * a_{t,0}, with h_{-1} the initial state.

    Main mode: lam_{t1} from lam (B, C, N, K) (or zeros); writes dv, dgate_logits and, for chunk 0, the
    initial state's gradient A_0^T lam_0 to out (B, N, K). SUMMARY: the chunk's adjoint element [e | P]
    (lam_{t0} = P lam_{t1} + e) to out (B, C, N, K, K+1).
    """
    pid_c, b, t0, t1 = _chunk_bounds(T, L)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    rows = tl.arange(0, BLOCK_T)
    vec_zero = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if SUMMARY:
        acc = _identity(vec_zero, K)
    else:
        if HAS_LAM:
            lam = _load_state(lam_ptr + b * lam_stride_b + pid_c * lam_stride_c + n * K, n_ok, K)
        else:
            lam = _zero_state(vec_zero, K)
    for i in range(0, tl.cdiv(t1 - t0, BLOCK_T)):
        t = t1 - 1 - i * BLOCK_T - rows
        ok = (t >= t0)[None, :] & n_ok[:, None]
        nxt = ok & (t + 1 < T)[None, :]
        if HAS_MASK:
            nxt = nxt & (tl.load(mask_ptr + b * T + t + 1, mask=t + 1 < T, other=0) != 0)[None, :]
        off = (b * T + t)[None, :] * N + n[:, None]
        dh = ()
        for r in tl.static_range(K):
            dh = dh + (tl.load(dh_ptr + off * K + r, mask=ok, other=0.0).to(tl.float32),)
        _, an = _bdlru_gates(g_ptr, off + N, nxt, K, NORM, EPS)
        elem = _scan_time(_bdlru_element(an, dh, nxt, K, True), K)
        if SUMMARY:
            acc = _compose(acc, _last_step(elem, BLOCK_T), K)
        else:
            lam_t = _apply(elem, lam, K)
            step = ok
            if HAS_MASK:
                step = step & (tl.load(mask_ptr + b * T + t, mask=t >= t0, other=0) != 0)[None, :]
            g, a = _bdlru_gates(g_ptr, off, ok, K, NORM, EPS)
            h_prev = ()
            for c in tl.static_range(K):
                x = tl.load(h_ptr + (off - N) * K + c, mask=ok & (t > 0)[None, :], other=0.0).to(tl.float32)
                if HAS_INIT:
                    x += tl.load(init_ptr + (b * N + n[:, None]) * K + c + 0 * t[None, :],
                                 mask=ok & (t == 0)[None, :], other=0.0).to(tl.float32)
                h_prev = h_prev + (x,)
            for r in tl.static_range(K):
                v = tl.load(v_ptr + off * K + r, mask=ok, other=0.0).to(tl.float32)
                da = (lam_t[r] * v,)
                for c in tl.static_range(K):
                    da = da + (lam_t[r] * h_prev[c],)
                dg = _normalize_bwd(_slice(g, r * (K + 1), K + 1), _slice(a, r * (K + 1), K + 1), da, NORM, EPS)
                for c in tl.static_range(K + 1):
                    tl.store(dg_ptr + off * (K * (K + 1)) + r * (K + 1) + c,
                             tl.where(step, dg[c], 0.0).to(dg_ptr.dtype.element_ty), mask=ok)
                tl.store(dv_ptr + off * K + r, tl.where(step, lam_t[r] * a[r * (K + 1)], 0.0).to(dv_ptr.dtype.element_ty),
                         mask=ok)
            lam = _last_step(lam_t, BLOCK_T)
    if SUMMARY:
        o_ptr = out_ptr + ((b * tl.num_programs(1) + pid_c) * N + n) * (K * (K + 1))
        _store_summary(o_ptr, acc, n_ok, K)
    else:
        chunk0 = n_ok & (n * 0 + pid_c == 0)
        step0 = chunk0
        if HAS_MASK:
            step0 = step0 & (tl.load(mask_ptr + b * T + n * 0) != 0)
        _, a0 = _bdlru_gates(g_ptr, b * T * N + n, step0, K, NORM, EPS)
        d_init = ()
        for c in tl.static_range(K):
            d = a0[1 + c] * lam[0]
            for r in tl.static_range(1, K):
                d += a0[r * (K + 1) + 1 + c] * lam[r]
            d_init = d_init + (tl.where(step0, d, lam[c]),)
        _store_state(out_ptr + (b * N + n) * K, d_init, chunk0, K)




# ---------------------------------------------------------------------------------------------
# BD-LRU step kernels (k > 4). Tile (BLOCK_N blocks, KP rows i, KP columns c), KP = next power of two
# >= k+1: column c < k holds A[i, c] (logit 1 + c), column k the input gate a_0[i] (logit 0); one time
# step per loop iteration. The gate normalisation runs along an axis of that tile.
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
        a = _normalize_axis(g.to(tl.float32), valid, NORM, 2, EPS)
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
def _bdlru_step_bwd_kernel(
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
        a = _normalize_axis(g, valid, NORM, 2, EPS)
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
            dg = _normalize_axis_bwd(g, a, lam[:, :, None] * x, valid, NORM, 2, EPS)
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



# ---------------------------------------------------------------------------------------------
# Launch planning and drivers.
# ---------------------------------------------------------------------------------------------

_NORM_CODES = {name: code for code, name in enumerate(GATE_NORMALIZATIONS)}
NUM_STAGES = 3  # software-pipelining depth of the step kernels' time loops
_STEP_TILE = 1024  # fp32 elements per program of the step kernels (main and summary passes)
_NUM_WARPS = 4
_COMBINE_BLOCK = 64


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _hlru_config(m: int, backward: bool) -> Tuple[int, int, int]:
    """(U, BLOCK_N, num_warps) of the sequential H-LRU kernels."""
    table = HLRU_BWD_CONFIG if backward else HLRU_FWD_CONFIG
    default = (2 if m <= 8 else 1, 128, 4)
    return table.get(m, default)


def _plan_chunks(T: int, D: int, want: int, chunk_size: Optional[int], granule: int,
                 min_len: int = MIN_CHUNK_LEN) -> Tuple[int, int]:
    """(chunk length L, number of chunks C): ``chunk_size`` if given, else ``want`` chunks of at least
    ``min_len`` steps (one chunk for D > MAX_CHUNKED_SIZE); L is rounded up to a multiple of ``granule``."""
    if chunk_size is not None:
        L = chunk_size
    elif D <= MAX_CHUNKED_SIZE:
        L = triton.cdiv(T, max(1, min(want, T // min_len)))
    else:
        L = T
    L = triton.cdiv(max(1, min(L, T)), granule) * granule
    C = triton.cdiv(T, L)
    if C > 1 and D > MAX_CHUNKED_SIZE:
        raise ValueError(f"time chunking supports state sizes up to {MAX_CHUNKED_SIZE}, got {D}")
    return L, C


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


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


def _hlru_forward(v, g, init, mask, norm, chunk_size):
    """h, the final lags and the chunk length of the sequential H-LRU scan."""
    B, T, N = v.shape
    M = g.shape[-1] - 1
    U, block, warps = _hlru_config(M, backward=False)
    want = triton.cdiv(HLRU_TARGET_WORK, B * N * (M + 1)) if v.is_cuda else 1
    L, C = _plan_chunks(T, M, want, chunk_size, 1, HLRU_MIN_CHUNK_LEN)
    h = torch.empty_like(v)
    ends = torch.empty(B, C, N, M, dtype=torch.float32, device=v.device)
    mask_arg = mask if mask is not None else v
    common = dict(M=M, NORM=_NORM_CODES[norm], EPS=L1_EPS, HAS_MASK=mask is not None, U=U, BLOCK_N=block,
                  num_warps=warps)
    grid = (triton.cdiv(N, block), C, B)
    if C > 1:
        summary = torch.empty(B, C, N, M, M + 1, dtype=torch.float32, device=v.device)
        _hlru_fwd_kernel[grid](v, g, mask_arg, v, v, summary, T, N, L, 0, 0, HAS_START=False, SUMMARY=True, **common)
        start, has_start, strides = _combine(summary, init, reverse=False), True, (C * N * M, N * M)
    else:
        start, has_start, strides = (init if init is not None else v), init is not None, (N * M, 0)
    _hlru_fwd_kernel[grid](v, g, mask_arg, start, h, ends, T, N, L, *strides, HAS_START=has_start, SUMMARY=False,
                           **common)
    return h, ends[:, -1], L


def _hlru_backward(v, g, init, mask, h, L, dh, dfinal, norm):
    """dv, dgate_logits and the initial state's gradient (float32) of the sequential H-LRU scan."""
    B, T, N = v.shape
    M = g.shape[-1] - 1
    C = triton.cdiv(T, L)
    U, block, warps = _hlru_config(M, backward=True)
    dv, dg = torch.empty_like(v), torch.empty_like(g)
    d_init = torch.empty(B, N, M, dtype=torch.float32, device=v.device)
    head = (v, g, mask if mask is not None else v, init if init is not None else v, h,
            _lag_sources(mask, M) if mask is not None else v, dh)
    common = dict(M=M, NORM=_NORM_CODES[norm], EPS=L1_EPS, HAS_INIT=init is not None, HAS_MASK=mask is not None,
                  U=U, BLOCK_N=block, num_warps=warps)
    grid = (triton.cdiv(N, block), C, B)
    if C > 1:
        summary = torch.empty(B, C, N, M, M + 1, dtype=torch.float32, device=v.device)
        _hlru_bwd_kernel[grid](*head, v, v, v, summary, T, N, L, 0, 0, HAS_LAM=False, SUMMARY=True, **common)
        lam, has_lam, strides = _combine(summary, dfinal, reverse=True), True, (C * N * M, N * M)
    else:
        lam, has_lam, strides = (dfinal if dfinal is not None else v), dfinal is not None, (N * M, 0)
    _hlru_bwd_kernel[grid](*head, lam, dv, dg, d_init, T, N, L, *strides, HAS_LAM=has_lam, SUMMARY=False, **common)
    return dv, dg, d_init


def _tile_plan(B, T, N, K, device, chunk_size):
    """Tile shapes (fwd, bwd) and (L, C) of the BD-LRU tile scans; L is a multiple of both BLOCK_Ts."""
    fwd, bwd = BDLRU_FWD_TILE[K], BDLRU_BWD_TILE[K]
    programs, sms = B * triton.cdiv(N, fwd[1]), _sm_count(device)
    want = triton.cdiv(BDLRU_TILE_PROGRAMS_PER_SM * sms, programs) if programs < sms else 1
    L, C = _plan_chunks(T, K, want, chunk_size, max(fwd[0], bwd[0]))
    return fwd, bwd, L, C


def _bdlru_tile_forward(v, g, init, mask, norm, chunk_size):
    B, T, N, K = v.shape
    (block_t, block, warps), _, L, C = _tile_plan(B, T, N, K, v.device, chunk_size)
    h = torch.empty_like(v)
    ends = torch.empty(B, C, N, K, dtype=torch.float32, device=v.device)
    mask_arg = mask if mask is not None else v
    common = dict(K=K, NORM=_NORM_CODES[norm], EPS=L1_EPS, HAS_MASK=mask is not None, BLOCK_T=block_t,
                  BLOCK_N=block, num_warps=warps)
    grid = (triton.cdiv(N, block), C, B)
    if C > 1:
        summary = torch.empty(B, C, N, K, K + 1, dtype=torch.float32, device=v.device)
        _bdlru_tile_fwd_kernel[grid](v, g, mask_arg, v, v, summary, T, N, L, 0, 0, HAS_START=False, SUMMARY=True,
                                     **common)
        start, has_start, strides = _combine(summary, init, reverse=False), True, (C * N * K, N * K)
    else:
        start, has_start, strides = (init if init is not None else v), init is not None, (N * K, 0)
    _bdlru_tile_fwd_kernel[grid](v, g, mask_arg, start, h, ends, T, N, L, *strides, HAS_START=has_start,
                                 SUMMARY=False, **common)
    return h, ends[:, -1], L


def _bdlru_tile_backward(v, g, init, mask, h, L, dh, dfinal, norm):
    B, T, N, K = v.shape
    C = triton.cdiv(T, L)
    block_t, block, warps = BDLRU_BWD_TILE[K]
    dv, dg = torch.empty_like(v), torch.empty_like(g)
    d_init = torch.empty(B, N, K, dtype=torch.float32, device=v.device)
    head = (v, g, mask if mask is not None else v, init if init is not None else v, h, dh)
    common = dict(K=K, NORM=_NORM_CODES[norm], EPS=L1_EPS, HAS_INIT=init is not None, HAS_MASK=mask is not None,
                  BLOCK_T=block_t, BLOCK_N=block, num_warps=warps)
    grid = (triton.cdiv(N, block), C, B)
    if C > 1:
        summary = torch.empty(B, C, N, K, K + 1, dtype=torch.float32, device=v.device)
        _bdlru_tile_bwd_kernel[grid](*head, v, v, v, summary, T, N, L, 0, 0, HAS_LAM=False, SUMMARY=True, **common)
        lam, has_lam, strides = _combine(summary, dfinal, reverse=True), True, (C * N * K, N * K)
    else:
        lam, has_lam, strides = (dfinal if dfinal is not None else v), dfinal is not None, (N * K, 0)
    _bdlru_tile_bwd_kernel[grid](*head, lam, dv, dg, d_init, T, N, L, *strides, HAS_LAM=has_lam, SUMMARY=False,
                                 **common)
    return dv, dg, d_init


def _step_geometry(N: int, K: int) -> dict:
    """Padded width KP and block tile sizes of the step kernels' main and summary passes."""
    KP = triton.next_power_of_2(K + 1)
    cap = triton.next_power_of_2(N)
    return dict(KP=KP, block=max(1, min(cap, _STEP_TILE // (KP * KP))),
                block_sum=max(1, min(cap, _STEP_TILE // (KP * KP * KP))))


def _bdlru_step_forward(v, g, init, mask, norm, chunk_size):
    """h, the final state, the chunk-end states (B, C, N, K), the summaries [e | P] (or None) and L."""
    B, T, N, K = v.shape
    geo = _step_geometry(N, K)
    L, C = _plan_chunks(T, K, triton.cdiv(_sm_count(v.device), B * triton.cdiv(N, geo["block"])), chunk_size, 1)
    h = torch.empty_like(v)
    ends = torch.empty(B, C, N, K, dtype=torch.float32, device=v.device)
    summary = None
    mask_arg = mask if mask is not None else v
    common = dict(K=K, KP=geo["KP"], NORM=_NORM_CODES[norm], EPS=L1_EPS, HAS_MASK=mask is not None,
                  NUM_STAGES=NUM_STAGES, num_warps=_NUM_WARPS)
    if C > 1:
        summary = torch.empty(B, C, N, K, K + 1, dtype=torch.float32, device=v.device)
        _bdlru_step_fwd_kernel[(triton.cdiv(N, geo["block_sum"]), C, B)](
            v, g, v, v, summary, mask_arg, T, N, L, 0, 0, HAS_START=False, SUMMARY=True, E=geo["KP"],
            BLOCK_N=geo["block_sum"], **common)
        start, has_start, strides = _combine(summary, init, reverse=False), True, (C * N * K, N * K)
    else:
        start, has_start, strides = (init if init is not None else v), init is not None, (N * K, 0)
    _bdlru_step_fwd_kernel[(triton.cdiv(N, geo["block"]), C, B)](
        v, g, h, start, ends, mask_arg, T, N, L, *strides, HAS_START=has_start, SUMMARY=False, E=1,
        BLOCK_N=geo["block"], **common)
    return h, ends[:, -1], ends, summary, L


def _bdlru_step_backward(v, g, init, mask, h, summary, L, dh, dfinal, norm):
    B, T, N, K = v.shape
    C = triton.cdiv(T, L)
    geo = _step_geometry(N, K)
    dv, dg = torch.empty_like(v), torch.empty_like(g)
    d_init = torch.empty(B, N, K, dtype=torch.float32, device=v.device)
    mask_arg = mask if mask is not None else v
    common = dict(K=K, KP=geo["KP"], NORM=_NORM_CODES[norm], EPS=L1_EPS, HAS_MASK=mask is not None,
                  HAS_INIT=init is not None, NUM_STAGES=NUM_STAGES, num_warps=_NUM_WARPS, BLOCK_N=geo["block"])
    head = (v, g, h, dh, dv, dg, init if init is not None else v)
    grid = (triton.cdiv(N, geo["block"]), C, B)
    if C > 1:
        local = torch.empty(B, C, N, K, dtype=torch.float32, device=v.device)
        _bdlru_step_bwd_kernel[grid](*head, v, local, mask_arg, T, N, L, 0, 0, HAS_LAM=False, WRITE_GRADS=False,
                                     **common)
        # adjoint map of chunk c: lam at its start = P_c^T lam at its end + local_c
        adjoint = torch.cat([local.unsqueeze(-1), summary[..., 1:].transpose(-1, -2)], dim=-1).contiguous()
        lam, has_lam, strides = _combine(adjoint, dfinal, reverse=True), True, (C * N * K, N * K)
    else:
        lam, has_lam, strides = (dfinal if dfinal is not None else v), dfinal is not None, (N * K, 0)
    _bdlru_step_bwd_kernel[grid](*head, lam, d_init, mask_arg, T, N, L, *strides, HAS_LAM=has_lam,
                                 WRITE_GRADS=True, **common)
    return dv, dg, d_init


# ---------------------------------------------------------------------------------------------
# Autograd functions and the public entry points.
# ---------------------------------------------------------------------------------------------


def _grads_out(ctx, dv, dg, d_init, init):
    d_init = d_init.to(init.dtype) if init is not None and ctx.needs_input_grad[2] else None
    return dv, dg, d_init, None, None, None


class HLRUScanFunction(torch.autograd.Function):
    """H-LRU scan: ``apply(v, gate_logits, initial_state, mask, normalization, chunk_size) -> (h, final)``."""

    @staticmethod
    def forward(ctx, v, gate_logits, initial_state, mask, normalization, chunk_size):
        h, final, L = _hlru_forward(v, gate_logits, initial_state, mask, normalization, chunk_size)
        ctx.save_for_backward(v, gate_logits, initial_state, mask, h)
        ctx.normalization, ctx.L = normalization, L
        return h, final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh, dfinal):
        v, g, init, mask, h = ctx.saved_tensors
        dh = torch.zeros_like(h) if dh is None else dh.contiguous()
        dfinal = None if dfinal is None else dfinal.float().contiguous()
        dv, dg, d_init = _hlru_backward(v, g, init, mask, h, ctx.L, dh, dfinal, ctx.normalization)
        return _grads_out(ctx, dv, dg, d_init, init)


class BDLRUScanFunction(torch.autograd.Function):
    """BD-LRU scan (k >= 2): ``apply(v, gate_logits, initial_state, mask, normalization, chunk_size)
    -> (h, final)``; tile scans for k <= MAX_TILE_SCAN_BLOCK, step kernels above."""

    @staticmethod
    def forward(ctx, v, gate_logits, initial_state, mask, normalization, chunk_size):
        if v.shape[-1] <= MAX_TILE_SCAN_BLOCK:
            h, final, L = _bdlru_tile_forward(v, gate_logits, initial_state, mask, normalization, chunk_size)
            summary = None
        else:
            h, final, _, summary, L = _bdlru_step_forward(v, gate_logits, initial_state, mask, normalization,
                                                          chunk_size)
        ctx.save_for_backward(v, gate_logits, initial_state, mask, h, summary)
        ctx.normalization, ctx.L = normalization, L
        return h, final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh, dfinal):
        v, g, init, mask, h, summary = ctx.saved_tensors
        dh = torch.zeros_like(h) if dh is None else dh.contiguous()
        dfinal = None if dfinal is None else dfinal.float().contiguous()
        if v.shape[-1] <= MAX_TILE_SCAN_BLOCK:
            dv, dg, d_init = _bdlru_tile_backward(v, g, init, mask, h, ctx.L, dh, dfinal, ctx.normalization)
        else:
            dv, dg, d_init = _bdlru_step_backward(v, g, init, mask, h, summary, ctx.L, dh, dfinal, ctx.normalization)
        return _grads_out(ctx, dv, dg, d_init, init)


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
        h, final = HLRUScanFunction.apply(v.view(B, T, N), g.view(B, T, N, 2), init, mask, normalization, chunk_size)
        h = h.view(B, T, N, 1)
    else:
        h, final = BDLRUScanFunction.apply(v, g, init, mask, normalization, chunk_size)
    return h, (final if output_final_state else None)
