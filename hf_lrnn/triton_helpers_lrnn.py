"""Triton building blocks shared by the H-LRU and BD-LRU kernels: gate normalisations (selected by name),
loads and stores of small per-thread vectors, and the kernel that passes states along time chunks.

Values that belong together (the m+1 gates of a channel, the lags, the state copies of a chunk summary)
are tuples of equally shaped tensors, indexed with compile-time constants. In the kernels, ``n * 0 + x``
(n a block of channel or block indices) is the scalar x broadcast to n's shape, so that a per-step
condition or address combines lane by lane with the per-channel ones.
"""
from __future__ import annotations

try:  # inside try/except so that transformers' remote-code import check does not require triton
    import triton
    import triton.language as tl
except ImportError as err:
    raise ImportError("hf_lrnn's Triton kernels need the 'triton' package (pip install triton)") from err


# ---------------------------------------------------------------------------------------------
# Gate normalisations: the formulas of ``gates_lrnn.normalize_gates``, a = n(g) / (sum |n(g)| [+ eps]).
# Each normalisation is written once, elementwise (_gate_numerator, _gate_inverse, _gate_grad); the tuple
# form (_normalize) serves the sequential kernels, the tile form (_normalize_axis) the step kernels.
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
def _gate_numerator(g, shift, NORM: tl.constexpr):
    """n(g); ``shift`` is the row's largest logit (softmax and sigmoid_l1 use it)."""
    if NORM == "softmax":
        n = tl.exp(g - shift)
    elif NORM == "sigmoid_l1":  # exp(g - shift) sigmoid(-g) = sigmoid(g) exp(-shift): finite for any logits
        n = tl.where(shift > 0, tl.sigmoid(g), tl.exp(g - shift) * tl.sigmoid(-g))
    elif NORM == "relu_l1":
        n = tl.maximum(g, 0.0)
    elif NORM == "tanh_l1":
        n = _tanh(g)
    else:  # l1, none
        n = g
    return n


@triton.jit
def _gate_inverse(den, NORM: tl.constexpr, EPS: tl.constexpr):
    """1 / denominator from den = sum_j |n_j| (>= 1/2 for softmax and sigmoid_l1; 1 for none)."""
    if NORM == "softmax" or NORM == "sigmoid_l1":
        inv = 1.0 / den
    elif NORM == "none":
        inv = den * 0.0 + 1.0
    else:
        inv = 1.0 / (den + EPS)
    return inv


@triton.jit
def _gate_grad(g, n, a, da, ad, inv, NORM: tl.constexpr):
    """dL/dg_j from dL/da_j, with ad = sum_i a_i da_i."""
    if NORM == "softmax":
        d = a * (da - ad)
    elif NORM == "sigmoid_l1":
        d = (da - ad) * a * tl.sigmoid(-g)
    elif NORM == "relu_l1":
        d = tl.where(g > 0, da - ad, 0.0) * inv
    elif NORM == "tanh_l1":
        d = (da - _sign(n) * ad) * (1.0 - n * n) * inv
    elif NORM == "l1":
        d = (da - _sign(g) * ad) * inv
    else:
        d = da
    return d


@triton.jit
def _norm_parts(g, NORM: tl.constexpr, EPS: tl.constexpr):
    """(numerators, 1 / denominator) of normalize(g) over the tuple g."""
    shift = g[0]
    for j in tl.static_range(1, len(g)):
        shift = tl.maximum(shift, g[j])
    num = ()
    for j in tl.static_range(len(g)):
        num = num + (_gate_numerator(g[j], shift, NORM),)
    den = tl.abs(num[0])
    for j in tl.static_range(1, len(g)):
        den += tl.abs(num[j])
    return num, _gate_inverse(den, NORM, EPS)


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
    """dL/dg (a tuple) from dL/da for a = normalize(g)."""
    ad = a[0] * da[0]
    for j in tl.static_range(1, len(g)):
        ad += a[j] * da[j]
    num, inv = _norm_parts(g, NORM, EPS)
    dg = ()
    for j in tl.static_range(len(g)):
        dg = dg + (_gate_grad(g[j], num[j], a[j], da[j], ad, inv, NORM),)
    return dg


@triton.jit
def _norm_parts_axis(g, valid, NORM: tl.constexpr, AXIS: tl.constexpr, EPS: tl.constexpr):
    """(numerators, 1 / denominator) of normalize(g) along AXIS of a tile; numerators 0 where not valid."""
    shift = tl.expand_dims(tl.max(tl.where(valid, g, -1e30), AXIS), AXIS)  # finite fill: no NaN in empty rows
    num = tl.where(valid, _gate_numerator(g, shift, NORM), 0.0)
    inv = _gate_inverse(tl.expand_dims(tl.sum(tl.abs(num), AXIS), AXIS), NORM, EPS)
    return num, inv


@triton.jit
def _normalize_axis(g, valid, NORM: tl.constexpr, AXIS: tl.constexpr, EPS: tl.constexpr):
    """a = normalize(g) along AXIS of a tile; a = 0 where not ``valid``."""
    num, inv = _norm_parts_axis(g, valid, NORM, AXIS, EPS)
    return tl.where(valid, num * inv, 0.0)  # rows with no valid entry have inv = inf


@triton.jit
def _normalize_axis_bwd(g, a, da, valid, NORM: tl.constexpr, AXIS: tl.constexpr, EPS: tl.constexpr):
    """dL/dg from dL/da for a = normalize(g) along AXIS of a tile; 0 where not ``valid``."""
    ad = tl.expand_dims(tl.sum(a * da, AXIS), AXIS)
    num, inv = _norm_parts_axis(g, valid, NORM, AXIS, EPS)
    return tl.where(valid, _gate_grad(g, num, a, da, ad, inv, NORM), 0.0)


# ---------------------------------------------------------------------------------------------
# Per-thread vectors: slices, chunk bounds, start states, loads and stores.
# ---------------------------------------------------------------------------------------------


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
def _unit_copy_group(zero, first, COPIES: tl.constexpr, D: tl.constexpr):
    """Copies first, ..., first + COPIES - 1 (``first`` a run-time value broadcast to zero's shape) of
    _unit_states, flattened: copy 0 zero, copy 1 + j the unit vector e_j; copies past D (not stored) zero."""
    out = ()
    for i in tl.static_range(COPIES):
        for j in tl.static_range(D):
            out = out + (tl.where(first + i == j + 1, zero + 1.0, zero),)
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
def _zero_where(cond, x):
    """The tuple x with every entry set to zero where cond (a document starts: no state crosses it)."""
    out = ()
    for i in tl.static_range(len(x)):
        out = out + (tl.where(cond, 0.0, x[i]),)
    return out


@triton.jit
def _step_flags(starts, kept, resets_ptr, mask_ptr, bt, in_chunk, HAS_RESETS: tl.constexpr, HAS_MASK: tl.constexpr):
    """The tuples ``starts`` and ``kept`` extended by step bt (row-major (b, t), broadcast over the lanes):
    whether a document starts there (HAS_RESETS), and whether it is ``in_chunk`` and unmasked. Loaded with
    the step's values, ahead of the recurrence, so that the flags' latency is not on its critical path."""
    if HAS_RESETS:
        starts = starts + (tl.load(resets_ptr + bt, mask=in_chunk, other=0) != 0,)
    if HAS_MASK:
        in_chunk = in_chunk & (tl.load(mask_ptr + bt, mask=in_chunk, other=0) != 0)
    return starts, kept + (in_chunk,)


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
def _store_copy_group(ptr, x, ok, first, COPIES: tl.constexpr, D: tl.constexpr):
    """Store copies first, ..., first + COPIES - 1 (from _unit_copy_group's start) into a chunk summary [e | P],
    (D, D + 1) per channel ([i, c] = entry i of copy c); copies past D are not stored."""
    for k in tl.static_range(COPIES):
        for i in tl.static_range(D):
            tl.store(ptr + i * (D + 1) + first + k, x[k * D + i], mask=ok & (first + k <= D))


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


# ---------------------------------------------------------------------------------------------
# Time chunking: the state entering each chunk, from the chunk summaries.
# ---------------------------------------------------------------------------------------------


@triton.jit
def _chunk_combine_kernel(sum_ptr, x0_ptr, out_ptr, N, C, D: tl.constexpr, DP: tl.constexpr, HAS_X0: tl.constexpr,
                          REVERSE: tl.constexpr, BLOCK_N: tl.constexpr, NUM_STAGES: tl.constexpr):
    """The state entering each chunk, sequentially over the C chunks of one (channel tile, sequence):
    x = x0 (B, N, D) or 0; for c = 0..C-1 (REVERSE: C-1..0): out[c] = x, x = P_c x + e_c, with the chunk
    summaries sum (B, C, N, D, D+1) = [e | P]; out (B, C, N, D). A program holds BLOCK_N channels' x as a
    (BLOCK_N, DP) tile (DP = next power of two >= D) and loads each chunk's (BLOCK_N, DP, DP) tile of P and
    (BLOCK_N, DP) of e whole (the next chunks' loads in flight while one is combined, NUM_STAGES deep)."""
    b = tl.program_id(1).to(tl.int64)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    i = tl.arange(0, DP)
    ok = (n < N)[:, None] & (i < D)[None, :]  # (BLOCK_N, DP)
    ok3 = ok[:, :, None] & (i < D)[None, None, :]  # (BLOCK_N, DP, DP)
    if HAS_X0:
        x = tl.load(x0_ptr + (b * N + n)[:, None] * D + i[None, :], mask=ok, other=0.0).to(tl.float32)
    else:
        x = tl.zeros((BLOCK_N, DP), dtype=tl.float32)
    for s in tl.range(0, C, num_stages=NUM_STAGES):
        c = (C - 1 - s) if REVERSE else s
        row = (b * C + c) * N + n  # (BLOCK_N,)
        tl.store(out_ptr + row[:, None] * D + i[None, :], x, mask=ok)
        e_ptr = sum_ptr + row[:, None] * (D * (D + 1)) + i[None, :] * (D + 1)  # (BLOCK_N, DP): [n, i, 0]
        e = tl.load(e_ptr, mask=ok, other=0.0)
        p = tl.load(e_ptr[:, :, None] + 1 + i[None, None, :], mask=ok3, other=0.0)
        x = e + tl.sum(p * x[:, None, :], axis=2)
