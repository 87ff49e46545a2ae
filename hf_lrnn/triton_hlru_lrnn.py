"""Triton kernels of the H-LRU scan: sequential kernels, one channel per thread, U steps loaded per loop
iteration, forward and backward (the planner and autograd live in ``scan_triton_lrnn``).

Shapes: v (B, T, N), gate_logits (B, T, N, m+1), state (B, N, m) = [h_{t-1}, ..., h_{t-m}].
Forward ``h_t = sum_j a_{t,j} h_{t-j} + a_{t,0} v_t``; the backward pass runs the adjoint of the lags in
reverse time, ``g = lam[0] + dh_t; lam <- (lam[1] + a_1 g, ..., lam[m-1] + a_{m-1} g, a_m g)`` with
g = dL/dh_t, ``da_{t,0} = g v_t``, ``da_{t,j} = g h_{t-j}``, ``dv_t = g a_{t,0}`` (h_{t-j} read back from h).
Document starts (``resets``, int8 (B, T), 0 at t = 0): the lags entering a start step are zeroed in
registers before the step (forward), and lam is zeroed after it (backward, the adjoint of that zeroing);
a lag h_{t-j} read back from h counts as zero when a document starts in (t - j, t].
Time chunks (m <= 16): the summary passes run m + 1 copies of the lags (or lam), COPIES a program
(``triton_plan_lrnn.summary_copies``): all of them for m <= 8, in groups over several programs above (m = 16:
4 copies x 16 lags a thread, where 17 x 16 spill registers).
"""
from __future__ import annotations

try:  # inside try/except so that transformers' remote-code import check does not require triton
    import triton
    import triton.language as tl
except ImportError as err:
    raise ImportError("hf_lrnn's Triton kernels need the 'triton' package (pip install triton)") from err

from .triton_helpers_lrnn import (
    _chunk_bounds,
    _chunk_start,
    _load_values,
    _normalize,
    _normalize_bwd,
    _slice,
    _step_flags,
    _store_copies,
    _store_copy_group,
    _store_state,
    _unit_copy_group,
    _zero_where,
)


@triton.jit
def _program_start(start_ptr, stride_b, stride_c, b, pid_c, N, M: tl.constexpr, SUMMARY: tl.constexpr,
                   HAS_START: tl.constexpr, COPIES: tl.constexpr, BLOCK_N: tl.constexpr):
    """(n, n_ok, in_ok, first, state) of a sequential H-LRU program: its BLOCK_N channels n (n_ok: n < N); in_ok,
    the lanes that take the input (v forward, dh backward: in a summary pass split into GROUPS = cdiv(M + 1,
    COPIES) groups, only the group holding copy 0); the first copy it runs (program axis 0 = channel tile * GROUPS
    + group); and its starting lags or lam (``_chunk_start``, or the group's unit copies)."""
    GROUPS: tl.constexpr = (M + COPIES) // COPIES
    zero = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if SUMMARY and GROUPS > 1:
        n = tl.program_id(0) // GROUPS * BLOCK_N + tl.arange(0, BLOCK_N)
        first = n * 0 + tl.program_id(0) % GROUPS * COPIES
        n_ok = n < N
        in_ok = n_ok & (first == 0)
        state = _unit_copy_group(zero, first, COPIES, M)
    else:
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        first = n * 0
        n_ok = n < N
        in_ok = n_ok
        state = _chunk_start(start_ptr, stride_b, stride_c, b, pid_c, n, n_ok, zero, M, SUMMARY, HAS_START)
    return n, n_ok, in_ok, first, state


@triton.jit
def _store_summary(ptr, state, n_ok, first, M: tl.constexpr, COPIES: tl.constexpr):
    """Store a summary pass's copies ([e | P], (M, M + 1) per channel at ptr): all M + 1, or its group's."""
    if (M + COPIES) // COPIES > 1:
        _store_copy_group(ptr, state, n_ok, first, COPIES, M)
    else:
        _store_copies(ptr, state, n_ok, M)


@triton.jit
def _hlru_fwd_kernel(
    v_ptr, g_ptr, mask_ptr, resets_ptr, start_ptr, h_ptr, out_ptr,
    T, N, L, start_stride_b, start_stride_c,
    M: tl.constexpr, NORM: tl.constexpr, EPS: tl.constexpr, HAS_START: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_RESETS: tl.constexpr, SUMMARY: tl.constexpr, COPIES: tl.constexpr, U: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One (channel tile, time chunk, sequence); lags = (h_{t-1}, ..., h_{t-m}).

    Main mode: start from the lags at start (B, C, N, M) (or zeros), write h (B, T, N) and the chunk's end
    lags to out (B, C, N, M). SUMMARY: M + 1 copies of the lags, copy 0 from zero with the input (gives
    e), copy 1 + j from lag j = 1 without input (column j of P); writes [e | P] to out (B, C, N, M, M+1).
    A program runs COPIES of them (all M + 1, or GROUPS = cdiv(M + 1, COPIES) groups: program axis 0 =
    channel tile * GROUPS + group, copies group * COPIES + i; copies past M are not stored).
    A document start zeroes every copy's lags before its step.
    """
    pid_c, b, t0, t1 = _chunk_bounds(T, L)
    n, n_ok, v_ok, first, lags = _program_start(start_ptr, start_stride_b, start_stride_c, b, pid_c, N, M, SUMMARY,
                                                HAS_START, COPIES, BLOCK_N)
    for tb in range(t0, t1, U):
        vs = ()
        gs = ()
        starts = ()  # per step: a document starts there
        kept = ()  # per step: in the chunk and unmasked
        for u in tl.static_range(U):  # issue all loads of the U steps (flags included) first
            in_chunk = n * 0 + tb + u < t1
            ok = n_ok & in_chunk
            off = (b * T + tb + u) * N + n
            vs = vs + (tl.load(v_ptr + off, mask=v_ok & in_chunk, other=0.0).to(tl.float32),)
            gs = gs + _load_values(g_ptr + off * (M + 1), ok, M + 1)
            starts, kept = _step_flags(starts, kept, resets_ptr, mask_ptr, b * T + tb + u + n * 0, in_chunk,
                                       HAS_RESETS, HAS_MASK)
        for u in tl.static_range(U):
            keep = kept[u]
            if HAS_RESETS:
                lags = _zero_where(starts[u], lags)
            a = _normalize(_slice(gs, u * (M + 1), M + 1), NORM, EPS)
            new = ()
            for c in tl.static_range(COPIES if SUMMARY else 1):
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
        _store_summary(out_ptr + ((b * tl.num_programs(1) + pid_c) * N + n) * (M * (M + 1)), lags, n_ok, first, M,
                       COPIES)
    else:
        _store_state(out_ptr + ((b * tl.num_programs(1) + pid_c) * N + n) * M, lags, n_ok, M)


@triton.jit
def _hlru_bwd_kernel(
    v_ptr, g_ptr, mask_ptr, resets_ptr, init_ptr, h_ptr, src_ptr, dh_ptr, lam_ptr, dv_ptr, dg_ptr, out_ptr,
    T, N, L, lam_stride_b, lam_stride_c,
    M: tl.constexpr, NORM: tl.constexpr, EPS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_LAM: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_RESETS: tl.constexpr, SUMMARY: tl.constexpr, COPIES: tl.constexpr, U: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Reverse-time adjoint scan of one chunk. lam = dL/d(lags after step t) from the later steps
    (dh_t not included). Step t: g = lam[0] + dh_t; unmasked lam <- (lam[1] + a_1 g, ..., a_m g), masked
    lam[0] <- g.

    Main mode: lam at the chunk end from lam_ptr (B, C, N, M) (or zeros); writes dv, dgate_logits and, for
    chunk 0, lam after step 0 (the initial state's gradient) to out (B, N, M). The lag h_{t-j} is h at
    time t - j, or at src (B, T, M) with a mask (the j-th most recent unmasked step), or
    initial_state[..., -src - 1] where -M <= src < 0, or zero where src < -M (cut by a document start).
    A document start at step t zeroes lam after the step (every copy). SUMMARY: M + 1 copies (0: zero start
    with dh; 1 + j: unit lam[j], no dh) give the chunk's adjoint map [e | P] (lam at the chunk start = P lam at
    its end + e) in out (B, C, N, M, M+1), COPIES of them a program (in groups as the forward kernel's).
    """
    pid_c, b, t0, t1 = _chunk_bounds(T, L)
    n, n_ok, dh_ok, first, lam = _program_start(lam_ptr, lam_stride_b, lam_stride_c, b, pid_c, N, M, SUMMARY, HAS_LAM,
                                                COPIES, BLOCK_N)
    zero = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for i in range(0, tl.cdiv(t1 - t0, U)):
        tb = t1 - 1 - i * U  # this iteration runs steps tb, tb - 1, ..., tb - U + 1
        dhs = ()
        gs = ()
        vs = ()
        lagged = ()
        starts = ()  # document starts at steps tb, tb - 1, ..., tb - U - M + 2 (the lags' cuts reach M - 1 back)
        if HAS_RESETS:
            for w in tl.static_range(U + M - 1):
                step = n * 0 + tb - w
                starts = starts + (tl.load(resets_ptr + b * T + step, mask=n_ok & (step >= 0), other=0) != 0,)
        for u in tl.static_range(U):
            ok = n_ok & (n * 0 + tb - u >= t0)
            off = (b * T + tb - u) * N + n
            dhs = dhs + (tl.load(dh_ptr + off, mask=dh_ok & (n * 0 + tb - u >= t0), other=0.0).to(tl.float32),)
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
            for c in tl.static_range(COPIES if SUMMARY else 1):
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
            if HAS_RESETS:
                lam = _zero_where(starts[u] & (n * 0 + t >= t0), lam)
            if not SUMMARY:
                off = (b * T + t) * N + n
                da = (grad_h * vs[u],)
                cut = n * 0 != 0  # a document starts between h_{t-j} and step t
                for j in tl.static_range(1, M + 1):
                    if HAS_MASK:
                        src = tl.load(src_ptr + (b * T + t) * M + (j - 1) + n * 0, mask=ok, other=0).to(tl.int64)
                        x = tl.load(h_ptr + (b * T + tl.maximum(src, 0)) * N + n, mask=ok & (src >= 0), other=0.0)
                        x = x.to(tl.float32)
                        if HAS_INIT:
                            x += tl.load(init_ptr + (b * N + n) * M + tl.maximum(-src - 1, 0),
                                         mask=ok & (src < 0) & (src >= -M), other=0.0).to(tl.float32)
                    else:
                        x = lagged[u + j - 1]
                        if HAS_RESETS:
                            cut = cut | starts[u + j - 1]
                            x = tl.where(cut, 0.0, x)
                    da = da + (grad_h * x,)
                dg = _normalize_bwd(gu, a, da, NORM, EPS)
                for j in tl.static_range(M + 1):
                    tl.store(dg_ptr + off * (M + 1) + j, tl.where(keep, dg[j], 0.0).to(dg_ptr.dtype.element_ty), mask=ok)
                tl.store(dv_ptr + off, tl.where(keep, grad_h * a[0], 0.0).to(dv_ptr.dtype.element_ty), mask=ok)
    if SUMMARY:
        _store_summary(out_ptr + ((b * tl.num_programs(1) + pid_c) * N + n) * (M * (M + 1)), lam, n_ok, first, M,
                       COPIES)
    else:
        _store_state(out_ptr + (b * N + n) * M, lam, n_ok & (n * 0 + pid_c == 0), M)
