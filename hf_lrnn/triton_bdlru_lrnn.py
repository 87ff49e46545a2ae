"""Triton kernels of the BD-LRU scan, forward and backward (the planner and autograd live in
``scan_triton_lrnn``).

Shapes: v (B, T, N, k), gate_logits (B, T, N, k, k+1) ([..., i, 0] row i's input gate,
[..., i, 1+j] = A[i, j]), state (B, N, k). Forward ``h_t = A_t h_{t-1} + a_0 * v_t``; backward
``g = lam + dh_t``, ``lam <- A_t^T g``, ``dA_t = g h_{t-1}^T``.

- Sequential kernels (k <= 8): a block per thread, its state in registers, U steps loaded per loop
  iteration; h, dv and the gate gradients leave a thread as a row tile (``_store_rows``), so that
  neighbouring threads write neighbouring addresses.
- Step kernels (k > 8, whose dense k x k maps do not fit in one thread's registers): a program owns a
  (blocks, KP rows i, KP columns c) tile of gates, KP = next power of two >= k+1: column c < k holds
  A[i, c] (logit 1 + c), column k the input gate a_0[i] (logit 0); one step per loop iteration; the gate
  normalisation runs along the tile's last axis.

Both families run in time chunks (program axis 1; ``scan_triton_lrnn`` plans them). A summary pass runs each
chunk from k + 1 state copies to get its affine map [e | P]: the sequential kernels hold all copies in one
thread; the step kernels hold them in one program as a vector e and a matrix P (the unit copies), normalise
each step's gates once for all copies and update P by one batched matrix product (``_step_summary``).

Document starts (``resets``, int8 (B, T), 0 at t = 0): the state entering a start step is zeroed in
registers before the step (forward); backward, h_{t-1} counts as zero there and lam is zeroed after the
step (the adjoint of that zeroing).
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
    _gate_inverse,
    _gate_numerator,
    _load_values,
    _normalize,
    _normalize_axis,
    _normalize_axis_bwd,
    _normalize_bwd,
    _slice,
    _step_flags,
    _store_copies,
    _store_rows,
    _store_state,
    _zero_where,
)


# ---------------------------------------------------------------------------------------------
# Sequential kernels (k <= 8).
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
    v_ptr, g_ptr, mask_ptr, resets_ptr, start_ptr, h_ptr, out_ptr,
    T, N, L, start_stride_b, start_stride_c,
    K: tl.constexpr, NORM: tl.constexpr, EPS: tl.constexpr, HAS_START: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_RESETS: tl.constexpr, SUMMARY: tl.constexpr, U: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """h_t = A_t h_{t-1} + a_0 * v_t for one (block tile, time chunk, sequence), a block per thread.

    Main mode: start from start (B, C, N, K) (or zeros), write h (B, T, N, K) and the chunk-end state to
    out (B, C, N, K). SUMMARY: K + 1 copies of the state (0: zero with the input, 1 + j: e_j without input)
    give the chunk's [e | P] in out (B, C, N, K, K+1). A document start zeroes every copy before its step.
    """
    pid_c, b, t0, t1 = _chunk_bounds(T, L)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    zero = tl.zeros((BLOCK_N,), dtype=tl.float32)
    s = _chunk_start(start_ptr, start_stride_b, start_stride_c, b, pid_c, n, n_ok, zero, K, SUMMARY, HAS_START)
    for tb in range(t0, t1, U):
        vs = ()
        gs = ()
        starts = ()  # per step: a document starts there
        kept = ()  # per step: in the chunk and unmasked
        for u in tl.static_range(U):  # issue all loads of the U steps (flags included) first
            in_chunk = n * 0 + tb + u < t1
            ok = n_ok & in_chunk
            off = (b * T + tb + u) * N + n
            vs = vs + _load_values(v_ptr + off * K, ok, K)
            gs = gs + _load_values(g_ptr + off * (K * (K + 1)), ok, K * (K + 1))
            starts, kept = _step_flags(starts, kept, resets_ptr, mask_ptr, b * T + tb + u + n * 0, in_chunk,
                                       HAS_RESETS, HAS_MASK)
        for u in tl.static_range(U):
            keep = kept[u]
            if HAS_RESETS:
                s = _zero_where(starts[u], s)
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
    v_ptr, g_ptr, mask_ptr, resets_ptr, init_ptr, h_ptr, dh_ptr, lam_ptr, dv_ptr, dg_ptr, out_ptr,
    T, N, L, lam_stride_b, lam_stride_c,
    K: tl.constexpr, NORM: tl.constexpr, EPS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_LAM: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_RESETS: tl.constexpr, SUMMARY: tl.constexpr, U: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Reverse-time adjoint scan of one chunk, a block per thread. lam = dL/d(state after step t) from
    the later steps (dh_t not included). Step t: g = lam + dh_t = dL/dh_t; unmasked lam <- A_t^T g,
    masked lam <- g; dA_t = g h_{t-1}^T, da_{t,0} = g * v_t, dv_t = g * a_{t,0}, with h_{-1} the initial
    state (h_{t-1} is read back from h: a masked step repeats the state there; zero at a document start,
    which also zeroes lam after its step).

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
        starts = ()
        for u in tl.static_range(U):
            ok = n_ok & (n * 0 + tb - u >= t0)
            off = (b * T + tb - u) * N + n
            if HAS_RESETS:  # a document starts at step tb - u (false outside this chunk)
                starts = starts + (tl.load(resets_ptr + b * T + tb - u + n * 0, mask=ok, other=0) != 0,)
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
                    if HAS_RESETS:
                        x = tl.where(starts[u], 0.0, x)
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
            if HAS_RESETS:
                lam = _zero_where(starts[u], lam)
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
# Step kernels (k > 8).
# ---------------------------------------------------------------------------------------------


@triton.jit
def _step_tile(N, K: tl.constexpr, KP: tl.constexpr, BLOCK_N: tl.constexpr):
    """The (BLOCK_N blocks, KP rows i, KP columns c) gate tile of a step-kernel program: blocks n and n_ok,
    the index c (rows and columns alike), vec_ok (BLOCK_N, KP) for i < K, valid (BLOCK_N, KP, KP) for i < K and
    c <= K, and the offsets of one step's logits (column c < K: A[i, c], logit 1 + c; column K: a_0[i], logit 0)
    and of its values v[n, i]."""
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    c = tl.arange(0, KP)
    vec_ok = n_ok[:, None] & (c < K)[None, :]
    valid = vec_ok[:, :, None] & (c <= K)[None, None, :]
    g_offs = n[:, None, None] * (K * (K + 1)) + c[None, :, None] * (K + 1) + tl.where(c == K, 0, c + 1)[None, None, :]
    return n, n_ok, c, vec_ok, valid, g_offs, n[:, None] * K + c[None, :]


@triton.jit
def _step_gate_tiles(g_ptr, n, n_ok, K: tl.constexpr, KS: tl.constexpr, AXIS: tl.constexpr, NORM: tl.constexpr,
                     EPS: tl.constexpr):
    """One step's gates of a block tile, normalised once for all state copies of a summary pass: the
    (BLOCK_N, KS, KS) tile of A (AXIS = 2: [b, i, j] = A[i, j]) or of A^T (AXIS = 1: [b, j, i] = A[i, j]),
    zero outside i, j < K, and a_0 (BLOCK_N, KS) by row i. g_ptr points at the step's logits (N, K, K+1);
    row i of [a_0 | A] is normalised along AXIS together with its a_0."""
    r = tl.arange(0, KS)
    if AXIS == 2:
        i = r[None, :, None]
        j = r[None, None, :]
    else:
        i = r[None, None, :]
        j = r[None, :, None]
    ok = n_ok[:, None, None] & (i < K) & (j < K)
    row_ok = n_ok[:, None] & (r < K)[None, :]
    logits_a = tl.load(g_ptr + n[:, None, None] * (K * (K + 1)) + i * (K + 1) + 1 + j, mask=ok, other=0.0)
    logits_a = logits_a.to(tl.float32)
    logits_0 = tl.load(g_ptr + n[:, None] * (K * (K + 1)) + r[None, :] * (K + 1), mask=row_ok, other=0.0)
    logits_0 = logits_0.to(tl.float32)
    shift = tl.maximum(tl.max(tl.where(ok, logits_a, -1e30), AXIS), logits_0)  # (BLOCK_N, KS) by row i
    num_a = tl.where(ok, _gate_numerator(logits_a, tl.expand_dims(shift, AXIS), NORM), 0.0)
    num_0 = tl.where(row_ok, _gate_numerator(logits_0, shift, NORM), 0.0)
    inv = _gate_inverse(tl.sum(tl.abs(num_a), AXIS) + tl.abs(num_0), NORM, EPS)  # inf in padded rows
    return tl.where(ok, num_a * tl.expand_dims(inv, AXIS), 0.0), tl.where(row_ok, num_0 * inv, 0.0)


@triton.jit
def _step_summary(x_ptr, g_ptr, mask_ptr, resets_ptr, out_ptr, T, N, L, K: tl.constexpr, KS: tl.constexpr,
                  NORM: tl.constexpr, EPS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_RESETS: tl.constexpr,
                  ADJOINT: tl.constexpr, BLOCK_N: tl.constexpr, NUM_STAGES: tl.constexpr):
    """The summary pass of the step kernels: a chunk's affine map [e | P] for one (block tile, time chunk,
    sequence), all K + 1 state copies in one program. Copy 0, e (BLOCK_N, KS), starts at zero and takes the
    input; copies 1 + j, the columns j of P (BLOCK_N, KS, KS), start at the unit vectors e_j (P = identity)
    and take none. KS = next power of two >= K (16 for K = 9..16: tl.dot's smallest size).

    Forward (x = v (B, T, N, K)), t = t0..t1-1: a document start zeroes e and P before the step; unmasked
    steps e <- A_t e + a_0 * v_t, P <- A_t P. Adjoint (ADJOINT, x = dh), t = t1-1..t0: e <- e + dh_t;
    unmasked steps e <- A_t^T e, P <- A_t^T P; a document start zeroes e and P after the step. The gates are
    normalised once a step (``_step_gate_tiles``); P's update is one batched (KS x KS) @ (KS x KS) product
    (fp32, input_precision="ieee"), e's a broadcast multiply-sum. Writes out (B, C, N, K, K+1), [i, 0] = e[i],
    [i, 1 + j] = P[i, j] (``_chunk_combine_kernel``'s layout).
    """
    pid_c, b, t0, t1 = _chunk_bounds(T, L)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    r = tl.arange(0, KS)
    vec_ok = n_ok[:, None] & (r < K)[None, :]
    x_offs = n[:, None] * K + r[None, :]
    e = tl.zeros((BLOCK_N, KS), dtype=tl.float32)
    p = tl.where(vec_ok[:, :, None] & (r[None, :, None] == r[None, None, :]), 1.0, 0.0)
    for s in tl.range(0, t1 - t0, num_stages=NUM_STAGES):
        t = t1 - 1 - s if ADJOINT else t0 + s
        bt = b * T + t
        x = tl.load(x_ptr + bt * (N * K) + x_offs, mask=vec_ok, other=0.0).to(tl.float32)
        a, a0 = _step_gate_tiles(g_ptr + bt * (N * K * (K + 1)), n, n_ok, K, KS, 1 if ADJOINT else 2, NORM, EPS)
        if HAS_RESETS:
            doc_start = tl.load(resets_ptr + bt) != 0
        if ADJOINT:
            e += x
        elif HAS_RESETS:
            e = tl.where(doc_start, 0.0, e)
            p = tl.where(doc_start, 0.0, p)
        e_new = tl.sum(a * e[:, None, :], axis=2)  # A e, or A^T e (a holds A^T)
        if not ADJOINT:
            e_new += a0 * x
        p_new = tl.dot(a, p, input_precision="ieee")
        if HAS_MASK:
            keep = tl.load(mask_ptr + bt) != 0
            e = tl.where(keep, e_new, e)
            p = tl.where(keep, p_new, p)
        else:
            e = e_new
            p = p_new
        if ADJOINT and HAS_RESETS:
            e = tl.where(doc_start, 0.0, e)
            p = tl.where(doc_start, 0.0, p)
    chunk = (b * tl.num_programs(1) + pid_c) * N + n
    rows = out_ptr + chunk[:, None] * (K * (K + 1)) + r[None, :] * (K + 1)
    tl.store(rows, e, mask=vec_ok)
    tl.store(rows[:, :, None] + 1 + r[None, None, :], p, mask=vec_ok[:, :, None] & (r < K)[None, None, :])


@triton.jit
def _bdlru_step_fwd_kernel(
    v_ptr, g_ptr, mask_ptr, resets_ptr, start_ptr, h_ptr, out_ptr,
    T, N, L, start_stride_b, start_stride_c,
    K: tl.constexpr, KP: tl.constexpr, KS: tl.constexpr, NORM: tl.constexpr, EPS: tl.constexpr,
    HAS_START: tl.constexpr, HAS_MASK: tl.constexpr, HAS_RESETS: tl.constexpr, SUMMARY: tl.constexpr,
    BLOCK_N: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    """h_t = A_t h_{t-1} + a_0 * v_t for one (block tile, time chunk, sequence), state (BLOCK_N, KP); a
    document start zeroes the state entering its step.

    Main mode: start from start (B, C, N, K) (or zeros), write h (B, T, N, K) and the chunk-end state to
    out (B, C, N, K). SUMMARY: the chunk's [e | P] in out (B, C, N, K, K+1), all K + 1 state copies in
    this program (``_step_summary``).
    """
    if SUMMARY:
        _step_summary(v_ptr, g_ptr, mask_ptr, resets_ptr, out_ptr, T, N, L, K, KS, NORM, EPS, HAS_MASK, HAS_RESETS,
                      False, BLOCK_N, NUM_STAGES)
    else:
        pid_c, b, t0, t1 = _chunk_bounds(T, L)
        n, n_ok, col, vec_ok, valid, g_offs, v_offs = _step_tile(N, K, KP, BLOCK_N)
        h = tl.zeros((BLOCK_N, KP), dtype=tl.float32)
        if HAS_START:
            h = tl.load(start_ptr + b * start_stride_b + pid_c * start_stride_c + v_offs, mask=vec_ok,
                        other=0.0).to(tl.float32)
        for t in tl.range(t0, t1, num_stages=NUM_STAGES):
            bt = b * T + t
            v = tl.load(v_ptr + bt * (N * K) + v_offs, mask=vec_ok, other=0.0).to(tl.float32)
            g = tl.load(g_ptr + bt * (N * K * (K + 1)) + g_offs, mask=valid, other=0.0)
            a = _normalize_axis(g.to(tl.float32), valid, NORM, 2, EPS)
            if HAS_RESETS:
                h = tl.where(tl.load(resets_ptr + bt) != 0, 0.0, h)
            x = tl.where((col < K)[None, None, :], h[:, None, :],
                         tl.where((col == K)[None, None, :], v[:, :, None], 0.0))
            h_new = tl.sum(a * x, axis=2)
            if HAS_MASK:
                h = tl.where(tl.load(mask_ptr + bt) != 0, h_new, h)
            else:
                h = h_new
            tl.store(h_ptr + bt * (N * K) + v_offs, h.to(h_ptr.dtype.element_ty), mask=vec_ok)
        chunk = (b * tl.num_programs(1) + pid_c) * N + n
        tl.store(out_ptr + chunk[:, None] * K + col[None, :], h, mask=vec_ok)


@triton.jit
def _bdlru_step_bwd_kernel(
    v_ptr, g_ptr, mask_ptr, resets_ptr, init_ptr, h_ptr, dh_ptr, lam_ptr, dv_ptr, dg_ptr, out_ptr,
    T, N, L, lam_stride_b, lam_stride_c,
    K: tl.constexpr, KP: tl.constexpr, KS: tl.constexpr, NORM: tl.constexpr, EPS: tl.constexpr,
    HAS_INIT: tl.constexpr, HAS_LAM: tl.constexpr, HAS_MASK: tl.constexpr, HAS_RESETS: tl.constexpr,
    SUMMARY: tl.constexpr, BLOCK_N: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    """Reverse-time adjoint scan of one chunk, lam = dL/d(state after step t) from the later steps.
    Step t: lam += dh_t; unmasked: dA_t = lam h_{t-1}^T, da_{t,0} = lam * v_t, dv_t = lam * a_{t,0},
    lam <- A_t^T lam (h_{t-1} read from h, or the initial state at t = 0, or zero at a document start,
    which also zeroes lam after its step).

    Main mode: lam at the chunk end from lam_ptr (B, C, N, K) (or zeros); writes dv, dgate_logits and, for
    chunk 0, lam after step 0 (the initial state's gradient) to out (B, N, K). SUMMARY: the chunk's adjoint
    map [e | P] in out (B, C, N, K, K+1), all K + 1 copies of lam in this program (``_step_summary``).
    """
    if SUMMARY:
        _step_summary(dh_ptr, g_ptr, mask_ptr, resets_ptr, out_ptr, T, N, L, K, KS, NORM, EPS, HAS_MASK, HAS_RESETS,
                      True, BLOCK_N, NUM_STAGES)
    else:
        pid_c, b, t0, t1 = _chunk_bounds(T, L)
        n, n_ok, col, vec_ok, valid, g_offs, v_offs = _step_tile(N, K, KP, BLOCK_N)
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
                keep = t >= 0  # true
            v = tl.load(v_ptr + bt * (N * K) + v_offs, mask=vec_ok, other=0.0).to(tl.float32)
            h_prev = tl.load(h_ptr + (bt - 1) * (N * K) + v_offs, mask=tl.where(t > 0, vec_ok, False), other=0.0)
            h_prev = h_prev.to(tl.float32)
            if HAS_INIT:
                h_prev += tl.load(init_ptr + b * (N * K) + v_offs, mask=tl.where(t == 0, vec_ok, False),
                                  other=0.0).to(tl.float32)
            if HAS_RESETS:
                doc_start = tl.load(resets_ptr + bt) != 0
                h_prev = tl.where(doc_start, 0.0, h_prev)
            x = tl.where((col < K)[None, None, :], h_prev[:, None, :],
                         tl.where((col == K)[None, None, :], v[:, :, None], 0.0))
            dg = _normalize_axis_bwd(g, a, lam[:, :, None] * x, valid, NORM, 2, EPS)
            a0 = tl.sum(tl.where((col == K)[None, None, :], a, 0.0), axis=2)
            tl.store(dv_ptr + bt * (N * K) + v_offs, tl.where(keep, lam * a0, 0.0).to(dv_ptr.dtype.element_ty),
                     mask=vec_ok)
            tl.store(dg_ptr + bt * (N * K * (K + 1)) + g_offs, tl.where(keep, dg, 0.0).to(dg_ptr.dtype.element_ty),
                     mask=valid)
            lam_prev = tl.sum(a * lam[:, :, None], axis=1)  # A^T lam, indexed by column
            lam = tl.where(keep, tl.where((col < K)[None, :], lam_prev, 0.0), lam)
            if HAS_RESETS:
                lam = tl.where(doc_start, 0.0, lam)
        tl.store(out_ptr + b * (N * K) + v_offs, lam, mask=tl.where(pid_c == 0, vec_ok, False))
