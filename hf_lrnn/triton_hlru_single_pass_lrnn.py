"""Single-pass Triton kernels of the H-LRU scan at orders m = 1 and m = 2 (issue 22): one read of v and the
logits, one write of h, the gate normalisation in registers (the planner and autograd live in
``scan_triton_lrnn``). m = 1 is described here; m = 2 (no mask) is the same with 2 x 2 maps (its section below).

Shapes: v (B, T, N), gate_logits (B, T, N, 2), initial state and final state (B, N, 1); mask and resets the
kernels' int8 (B, T) forms (``scan_triton_lrnn._prepare``). Every step is an affine map of the state,
``h_t = A_t h_{t-1} + b_t`` with ``(a_0, a_1) = normalize(logits)``:
    kept step (mask != 0):  A_t = a_1, b_t = a_0 v_t;     masked step:  A_t = 1, b_t = 0;
    a document start at t (resets, 0 at t = 0) zeroes the state entering the step:  A_t = 0.
A program owns BLOCK_N channels of one sequence and walks time in tiles of L steps: it loads an (L, BLOCK_N)
tile of v and of each logit, composes the maps inside the tile with ``tl.associative_scan``
(``(A, b) then (A', b')`` is ``(A A', A' b + b')``), applies them to the state carried from the previous
tile, and stores h. Parallelism is B * N / BLOCK_N programs and nothing else, so the planner uses these
kernels only where that fills the GPU.

Backward: ``lam_t = dL/dh_t = dh_t + A_{t+1} lam_{t+1}`` with ``lam_T = dfinal`` and A_T taken as 1, the same
scan over tiles loaded in decreasing time (row i of a tile is step t1 - 1 - i); then ``dA_t = lam_t h_{t-1}``,
``db_t = lam_t``: ``da_1 = lam_t s_t`` (s_t the state entering step t: h_{t-1} read back from h, the initial
state at t = 0, 0 after a document start), ``da_0 = lam_t v_t``, ``dv_t = lam_t a_0`` on kept steps (0 on
masked ones), and dL/dh_{-1} = A_0 lam_0. The gates are recomputed from the logits; fp32 throughout.
"""
from __future__ import annotations

try:  # inside try/except so that transformers' remote-code import check does not require triton
    import triton
    import triton.language as tl
except ImportError as err:
    raise ImportError("hf_lrnn's Triton kernels need the 'triton' package (pip install triton)") from err

from .triton_helpers_lrnn import _normalize, _normalize_bwd


@triton.jit
def _affine_then(a_l, b_l, a_r, b_r):
    """The map x -> a_l x + b_l followed by x -> a_r x + b_r."""
    return a_l * a_r, a_r * b_l + b_r


@triton.jit
def _step_maps(g_ptr, mask_ptr, resets_ptr, b, t, n, ok, T, N, NORM: tl.constexpr, EPS: tl.constexpr,
               HAS_MASK: tl.constexpr, HAS_RESETS: tl.constexpr):
    """Logits (g0, g1), gates (a0, a1), kept-step flags and the transition A (1 where not ``ok``) of the steps
    t (L,) of sequence b, channels n (BLOCK_N,): tiles (L, BLOCK_N)."""
    t_ok = (t >= 0) & (t < T)
    off = ((b * T + t)[:, None] * N + n[None, :]) * 2  # the logit pairs (L, BLOCK_N, 2): one load, then split
    pair = tl.arange(0, 2)[None, None, :]
    g0, g1 = tl.split(tl.load(g_ptr + off[:, :, None] + pair, mask=ok[:, :, None], other=0.0).to(tl.float32))
    a0, a1 = _normalize((g0, g1), NORM, EPS)
    keep = ok
    if HAS_MASK:
        keep = keep & (tl.load(mask_ptr + b * T + t, mask=t_ok, other=0) != 0)[:, None]
    A = tl.where(keep, a1, 1.0)
    if HAS_RESETS:
        A = tl.where(ok & (tl.load(resets_ptr + b * T + t, mask=t_ok, other=0) != 0)[:, None], 0.0, A)
    return g0, g1, a0, a1, keep, A


@triton.jit
def _hlru1_fwd_kernel(
    v_ptr, g_ptr, mask_ptr, resets_ptr, init_ptr, h_ptr, final_ptr, T, N,
    NORM: tl.constexpr, EPS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_RESETS: tl.constexpr, L: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One (channel tile, sequence): h (B, T, N) and the final state (B, N) in float32."""
    b = tl.program_id(1).to(tl.int64)
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    rows = tl.arange(0, L)
    if HAS_INIT:
        state = tl.load(init_ptr + b * N + n, mask=n_ok, other=0.0).to(tl.float32)
    else:
        state = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for t0 in range(0, T, L):
        t = t0 + rows
        ok = (t < T)[:, None] & n_ok[None, :]
        off = (b * T + t)[:, None] * N + n[None, :]
        v = tl.load(v_ptr + off, mask=ok, other=0.0).to(tl.float32)
        _, _, a0, _, keep, A = _step_maps(g_ptr, mask_ptr, resets_ptr, b, t, n, ok, T, N, NORM, EPS, HAS_MASK,
                                          HAS_RESETS)
        P, Y = tl.associative_scan((A, tl.where(keep, a0 * v, 0.0)), 0, _affine_then)
        h = P * state[None, :] + Y
        tl.store(h_ptr + off, h.to(h_ptr.dtype.element_ty), mask=ok)
        state = tl.sum(tl.where(rows[:, None] == L - 1, h, 0.0), 0)  # rows past T are the identity
    tl.store(final_ptr + b * N + n, state, mask=n_ok)


@triton.jit
def _hlru1_bwd_kernel(
    v_ptr, g_ptr, mask_ptr, resets_ptr, init_ptr, h_ptr, dh_ptr, dfinal_ptr, dv_ptr, dg_ptr, dinit_ptr, T, N,
    NORM: tl.constexpr, EPS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_DFINAL: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_RESETS: tl.constexpr, L: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One (channel tile, sequence), tiles in decreasing time: dv, dlogits and dL/d(initial state) (float32)."""
    b = tl.program_id(1).to(tl.int64)
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    rows = tl.arange(0, L)
    if HAS_DFINAL:
        lam = tl.load(dfinal_ptr + b * N + n, mask=n_ok, other=0.0).to(tl.float32)
    else:
        lam = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if HAS_INIT:
        init = tl.load(init_ptr + b * N + n, mask=n_ok, other=0.0).to(tl.float32)
    else:
        init = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for t1 in range(T, 0, -L):
        t = t1 - 1 - rows
        ok = (t >= 0)[:, None] & n_ok[None, :]
        # lam_t = A_{t+1} lam_{t+1} + dh_t; A_T = 1 carries dfinal; rows before t = 0 are the identity
        next_ok = ok & (t + 1 < T)[:, None]
        _, _, _, _, _, A_next = _step_maps(g_ptr, mask_ptr, resets_ptr, b, t + 1, n, next_ok, T, N, NORM, EPS,
                                           HAS_MASK, HAS_RESETS)
        off = (b * T + t)[:, None] * N + n[None, :]
        dh = tl.load(dh_ptr + off, mask=ok, other=0.0).to(tl.float32)
        P, Y = tl.associative_scan((A_next, dh), 0, _affine_then)
        lam_t = P * lam[None, :] + Y
        lam = tl.sum(tl.where(rows[:, None] == L - 1, lam_t, 0.0), 0)
        # the step's own gradients
        g0, g1, a0, a1, keep, A = _step_maps(g_ptr, mask_ptr, resets_ptr, b, t, n, ok, T, N, NORM, EPS, HAS_MASK,
                                             HAS_RESETS)
        v = tl.load(v_ptr + off, mask=ok, other=0.0).to(tl.float32)
        prev = tl.load(h_ptr + off - N, mask=ok & (t > 0)[:, None], other=0.0).to(tl.float32)
        prev = tl.where((t == 0)[:, None], init[None, :], prev)
        if HAS_RESETS:  # the state entering a document start is zero
            prev = tl.where((tl.load(resets_ptr + b * T + t, mask=t >= 0, other=0) != 0)[:, None], 0.0, prev)
        da0 = tl.where(keep, lam_t * v, 0.0)
        da1 = tl.where(keep, lam_t * prev, 0.0)
        dg0, dg1 = _normalize_bwd((g0, g1), (a0, a1), (da0, da1), NORM, EPS)
        tl.store(dv_ptr + off, tl.where(keep, lam_t * a0, 0.0).to(dv_ptr.dtype.element_ty), mask=ok)
        pair = tl.arange(0, 2)[None, None, :]
        tl.store(dg_ptr + off[:, :, None] * 2 + pair, tl.join(dg0, dg1).to(dg_ptr.dtype.element_ty),
                 mask=ok[:, :, None])
        if t1 <= L:  # the tile holding t = 0: dL/dh_{-1} = A_0 lam_0
            tl.store(dinit_ptr + b * N + n, tl.sum(tl.where((t == 0)[:, None], A * lam_t, 0.0), 0), mask=n_ok)


# ---------------------------------------------------------------------------------------------
# Order m = 2, without a mask: the state (h_t, h_{t-1}) and the companion map
# A_t = [[a_1, a_2], [1, 0]] (0 after a document start), b_t = (a_0 v_t, 0). The backward scan runs
# lam_t = dL/d(h_t, h_{t-1}) = (dh_t, 0) + A_{t+1}^T lam_{t+1}; da_1 = lam_t[0] s_0, da_2 = lam_t[0] s_1 with
# s = (h_{t-1}, h_{t-2}) the state entering step t (read back from h, zero across a document start).
# ---------------------------------------------------------------------------------------------


@triton.jit
def _affine2_then(a00, a01, a10, a11, b0, b1, c00, c01, c10, c11, d0, d1):
    """The 2 x 2 affine map x -> A x + b followed by x -> C x + d: (C A, C b + d)."""
    return (c00 * a00 + c01 * a10, c00 * a01 + c01 * a11, c10 * a00 + c11 * a10, c10 * a01 + c11 * a11,
            c00 * b0 + c01 * b1 + d0, c10 * b0 + c11 * b1 + d1)


@triton.jit
def _step_maps2(g_ptr, resets_ptr, b, t, n, ok, T, N, NORM: tl.constexpr, EPS: tl.constexpr,
                HAS_RESETS: tl.constexpr):
    """Logits, gates and the first row (A00, A01) and second row (A10, A11) of the m = 2 maps of steps t (L,),
    channels n: tiles (L, BLOCK_N); the identity where not ``ok``."""
    off = ((b * T + t)[:, None] * N + n[None, :]) * 3
    g0 = tl.load(g_ptr + off, mask=ok, other=0.0).to(tl.float32)
    g1 = tl.load(g_ptr + off + 1, mask=ok, other=0.0).to(tl.float32)
    g2 = tl.load(g_ptr + off + 2, mask=ok, other=0.0).to(tl.float32)
    a0, a1, a2 = _normalize((g0, g1, g2), NORM, EPS)
    live = ok
    if HAS_RESETS:
        t_ok = (t >= 0) & (t < T)
        live = ok & (tl.load(resets_ptr + b * T + t, mask=t_ok, other=0) == 0)[:, None]
    A00 = tl.where(live, a1, tl.where(ok, 0.0, 1.0))
    A01 = tl.where(live, a2, 0.0)
    A10 = tl.where(live, 1.0, 0.0)
    A11 = tl.where(ok, 0.0, 1.0)
    return g0, g1, g2, a0, a1, a2, A00, A01, A10, A11


@triton.jit
def _hlru2_fwd_kernel(
    v_ptr, g_ptr, resets_ptr, init_ptr, h_ptr, final_ptr, T, N,
    NORM: tl.constexpr, EPS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_RESETS: tl.constexpr,
    L: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One (channel tile, sequence): h (B, T, N) and the final state (B, N, 2) = (h_{T-1}, h_{T-2}), float32."""
    b = tl.program_id(1).to(tl.int64)
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    rows = tl.arange(0, L)
    if HAS_INIT:
        s0 = tl.load(init_ptr + (b * N + n) * 2, mask=n_ok, other=0.0).to(tl.float32)
        s1 = tl.load(init_ptr + (b * N + n) * 2 + 1, mask=n_ok, other=0.0).to(tl.float32)
    else:
        s0 = tl.zeros((BLOCK_N,), dtype=tl.float32)
        s1 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for t0 in range(0, T, L):
        t = t0 + rows
        ok = (t < T)[:, None] & n_ok[None, :]
        off = (b * T + t)[:, None] * N + n[None, :]
        v = tl.load(v_ptr + off, mask=ok, other=0.0).to(tl.float32)
        _, _, _, a0, _, _, A00, A01, A10, A11 = _step_maps2(g_ptr, resets_ptr, b, t, n, ok, T, N, NORM, EPS,
                                                            HAS_RESETS)
        zero = tl.zeros_like(v)
        P00, P01, P10, P11, Y0, Y1 = tl.associative_scan((A00, A01, A10, A11, tl.where(ok, a0 * v, 0.0), zero), 0,
                                                         _affine2_then)
        h0 = P00 * s0[None, :] + P01 * s1[None, :] + Y0
        h1 = P10 * s0[None, :] + P11 * s1[None, :] + Y1
        tl.store(h_ptr + off, h0.to(h_ptr.dtype.element_ty), mask=ok)
        last = rows[:, None] == L - 1  # rows past T are the identity
        s0 = tl.sum(tl.where(last, h0, 0.0), 0)
        s1 = tl.sum(tl.where(last, h1, 0.0), 0)
    tl.store(final_ptr + (b * N + n) * 2, s0, mask=n_ok)
    tl.store(final_ptr + (b * N + n) * 2 + 1, s1, mask=n_ok)


@triton.jit
def _hlru2_bwd_kernel(
    v_ptr, g_ptr, resets_ptr, init_ptr, h_ptr, dh_ptr, dfinal_ptr, dv_ptr, dg_ptr, dinit_ptr, T, N,
    NORM: tl.constexpr, EPS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_DFINAL: tl.constexpr,
    HAS_RESETS: tl.constexpr, L: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One (channel tile, sequence), tiles in decreasing time: dv, dlogits and dL/d(initial state) (float32)."""
    b = tl.program_id(1).to(tl.int64)
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    rows = tl.arange(0, L)
    if HAS_DFINAL:
        lam0 = tl.load(dfinal_ptr + (b * N + n) * 2, mask=n_ok, other=0.0).to(tl.float32)
        lam1 = tl.load(dfinal_ptr + (b * N + n) * 2 + 1, mask=n_ok, other=0.0).to(tl.float32)
    else:
        lam0 = tl.zeros((BLOCK_N,), dtype=tl.float32)
        lam1 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if HAS_INIT:
        init0 = tl.load(init_ptr + (b * N + n) * 2, mask=n_ok, other=0.0).to(tl.float32)
        init1 = tl.load(init_ptr + (b * N + n) * 2 + 1, mask=n_ok, other=0.0).to(tl.float32)
    else:
        init0 = tl.zeros((BLOCK_N,), dtype=tl.float32)
        init1 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for tile in range(0, tl.cdiv(T, L)):
        t1 = T - tile * L  # this tile: steps t1 - 1 down to t1 - L
        t = t1 - 1 - rows
        ok = (t >= 0)[:, None] & n_ok[None, :]
        # lam_t = (dh_t, 0) + A_{t+1}^T lam_{t+1}; A_T = I carries dfinal; rows before t = 0 are the identity
        _, _, _, _, _, _, N00, N01, N10, N11 = _step_maps2(g_ptr, resets_ptr, b, t + 1, n, ok & (t + 1 < T)[:, None],
                                                           T, N, NORM, EPS, HAS_RESETS)
        off = (b * T + t)[:, None] * N + n[None, :]
        dh = tl.load(dh_ptr + off, mask=ok, other=0.0).to(tl.float32)
        P00, P01, P10, P11, Y0, Y1 = tl.associative_scan((N00, N10, N01, N11, dh, tl.zeros_like(dh)), 0,
                                                         _affine2_then)
        lam_t0 = P00 * lam0[None, :] + P01 * lam1[None, :] + Y0
        lam_t1 = P10 * lam0[None, :] + P11 * lam1[None, :] + Y1
        last = rows[:, None] == L - 1
        lam0 = tl.sum(tl.where(last, lam_t0, 0.0), 0)
        lam1 = tl.sum(tl.where(last, lam_t1, 0.0), 0)
        # the step's own gradients; s = (h_{t-1}, h_{t-2}) entering step t
        g0, g1, g2, a0, a1, a2, A00, A01, A10, A11 = _step_maps2(g_ptr, resets_ptr, b, t, n, ok, T, N, NORM, EPS,
                                                                 HAS_RESETS)
        v = tl.load(v_ptr + off, mask=ok, other=0.0).to(tl.float32)
        s0 = tl.load(h_ptr + off - N, mask=ok & (t > 0)[:, None], other=0.0).to(tl.float32)
        s0 = tl.where((t == 0)[:, None], init0[None, :], s0)
        s1 = tl.load(h_ptr + off - 2 * N, mask=ok & (t > 1)[:, None], other=0.0).to(tl.float32)
        s1 = tl.where((t == 1)[:, None], init0[None, :], tl.where((t == 0)[:, None], init1[None, :], s1))
        if HAS_RESETS:  # a start at t zeroes both lags, a start at t - 1 the older one
            start = (tl.load(resets_ptr + b * T + t, mask=t >= 0, other=0) != 0)[:, None]
            s0 = tl.where(start, 0.0, s0)
            s1 = tl.where(start | (tl.load(resets_ptr + b * T + t - 1, mask=t >= 1, other=0) != 0)[:, None], 0.0, s1)
        dg0, dg1, dg2 = _normalize_bwd((g0, g1, g2), (a0, a1, a2), (lam_t0 * v, lam_t0 * s0, lam_t0 * s1), NORM,
                                       EPS)
        tl.store(dv_ptr + off, (lam_t0 * a0).to(dv_ptr.dtype.element_ty), mask=ok)
        tl.store(dg_ptr + off * 3, dg0.to(dg_ptr.dtype.element_ty), mask=ok)
        tl.store(dg_ptr + off * 3 + 1, dg1.to(dg_ptr.dtype.element_ty), mask=ok)
        tl.store(dg_ptr + off * 3 + 2, dg2.to(dg_ptr.dtype.element_ty), mask=ok)
        if t1 <= L:  # the tile holding t = 0: dL/d(h_{-1}, h_{-2}) = A_0^T lam_0
            first = (t == 0)[:, None]
            tl.store(dinit_ptr + (b * N + n) * 2, tl.sum(tl.where(first, A00 * lam_t0 + A10 * lam_t1, 0.0), 0),
                     mask=n_ok)
            tl.store(dinit_ptr + (b * N + n) * 2 + 1, tl.sum(tl.where(first, A01 * lam_t0 + A11 * lam_t1, 0.0), 0),
                     mask=n_ok)
