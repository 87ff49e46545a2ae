"""Chunked PyTorch scans for H-LRU and BD-LRU: O(L + T/L) Python steps for chunks of L steps instead of
T, differentiable by autograd (the torch backend for sequences longer than a few steps).

Shapes as in ``scan_reference_lrnn``. Both recurrences are affine maps of a D-dimensional state per channel
(D = m or k): ``s_t = M_t s_{t-1} + u_t``. H-LRU uses the companion matrix (first row a_{t,1..m}, ones
below the diagonal) and ``u_t = a_{t,0} v_t e_1``; BD-LRU uses ``M_t = A_t`` and ``u_t = a_{t,0} * v_t``.
Where ``mask`` is 0 the step is the identity (M = I, u = 0); where ``resets`` starts a document (t > 0) the
transition is zero (M = 0), so that no state crosses the boundary. ``benchmarks/kernels/bench_torch_scan.py``
measures what the chunking buys against the loop. All arithmetic runs in float32 (float64 for float64
inputs); h is returned in v's dtype.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .gates_lrnn import compute_dtype, normalize_gates
from .scan_reference_lrnn import check_resets


def _apply_dense(M: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """M X for M (..., D, D) and X (..., D, C). D is small (<= 16): a broadcast multiply-and-sum
    beats batched matmul of tiny matrices on the CPU, forward and backward."""
    return (M[..., :, :, None] * X[..., None, :, :]).sum(-2)


def _chunked_affine_scan(
    M: torch.Tensor, u: torch.Tensor, s0: torch.Tensor, chunk_size: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """All states of s_t = M_t s_{t-1} + u_t.

    M (B, T, N, D, D), u (B, T, N, D), s0 (B, N, D) -> states (B, T, N, D), final (B, N, D).
    Within each chunk of L steps (all chunks at once) we scan from a zero state while carrying the
    cumulative product P_t = M_t ... M_1, as D extra columns of one (D, D+1) matrix X. A loop over the
    chunks then passes the boundary state on: s_t = local_t + P_t s_start. Cost: L + T/L Python steps.
    """
    B, T, N, D = u.shape
    L = min(chunk_size, T)
    n_chunks = math.ceil(T / L)
    pad = n_chunks * L - T
    if pad:  # steps past T (any transition, zero input) are computed and dropped
        M = torch.cat([M, M.new_zeros(B, pad, N, D, D)], dim=1)
        u = torch.cat([u, u.new_zeros(B, pad, N, D)], dim=1)
    M = M.view(B, n_chunks, L, N, D, D)
    u = u.view(B, n_chunks, L, N, D)

    # X = [local state | cumulative product], starting from [0 | I].
    start = torch.cat([M.new_zeros(D, 1), torch.eye(D, dtype=M.dtype, device=M.device)], dim=1)
    X = start.expand(B, n_chunks, N, D, D + 1)
    steps = []
    for M_i, u_i in zip(M.unbind(2), u.unbind(2)):
        X = _apply_dense(M_i, X)
        X = torch.cat([X[..., :1] + u_i[..., None], X[..., 1:]], dim=-1)
        steps.append(X)
    X = torch.stack(steps, dim=2)  # (B, n_chunks, L, N, D, D+1)
    local, P = X[..., 0], X[..., 1:]

    s = s0
    chunk_starts = [s0]
    for P_c, local_c in zip(P[:, :-1, -1].unbind(1), local[:, :-1, -1].unbind(1)):
        s = (P_c * s[..., None, :]).sum(-1) + local_c
        chunk_starts.append(s)
    S0 = torch.stack(chunk_starts, dim=1)  # (B, n_chunks, N, D)
    states = local + (P * S0[:, :, None, :, None, :]).sum(-1)
    states = states.reshape(B, n_chunks * L, N, D)[:, :T]
    return states, states[:, -1]


def companion_matrices(coefficients: torch.Tensor) -> torch.Tensor:
    """Companion matrices (..., m, m) from coefficients (..., m) = (a_1, ..., a_m): first row a, ones on the
    sub-diagonal, so that [h_t, ..., h_{t-m+1}] = C [h_{t-1}, ..., h_{t-m}] for h_t = sum_j a_j h_{t-j}."""
    m = coefficients.shape[-1]
    shift = torch.eye(m - 1, m, dtype=coefficients.dtype, device=coefficients.device)
    return torch.cat([coefficients[..., None, :], shift.expand(*coefficients.shape[:-1], m - 1, m)], dim=-2)


def identity_where_masked(M: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Transition matrices M (B, T, ..., D, D) with the identity at the steps where mask (B, T) is 0."""
    keep = mask.bool().view(*mask.shape, *([1] * (M.dim() - 2)))
    return torch.where(keep, M, torch.eye(M.shape[-1], dtype=M.dtype, device=M.device))


def _identity_map_where_masked(M, u, mask):
    """Replace masked steps (mask == 0) by the identity map: M = I, u = 0."""
    keep = mask.bool().view(*mask.shape, *([1] * (u.dim() - 2)))
    return identity_where_masked(M, mask), torch.where(keep, u, torch.zeros_like(u))


def _document_starts(resets: torch.Tensor) -> torch.Tensor:
    """The steps (B, T) whose entering state is zeroed: ``resets`` without t = 0, where the initial state applies."""
    return resets & (torch.arange(resets.shape[1], device=resets.device) > 0)


def _zero_where_starts(M: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Transition matrices M (B, T, ..., D, D) with zero at the steps where starts (B, T) is True."""
    return torch.where(starts.view(*starts.shape, *([1] * (M.dim() - 2))), 0.0, M)


def _hlru_chunked_scan(
    a: torch.Tensor, u: torch.Tensor, s0: torch.Tensor, chunk_size: int, starts: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Chunked H-LRU scan without a mask: a (B, T, N, m+1) normalised gates, u = a_0 v (B, T, N),
    s0 (B, N, m), optional document starts (B, T) bool -> h (B, T, N), final state (B, N, m).

    Inside a chunk h_t is affine in the chunk's start lags s: ``h_t = y_t[0] + y_t[1:] . s``, and the
    (m+1)-vector y_t obeys the recurrence itself: ``y_t = sum_k a_{t,k} y_{t-k} + (u_t, 0, ..., 0)``,
    started from ``y_{-k} = (0, e_k)``. That is m+1 numbers per step (not the m x m product of the
    companion matrices). A chunk's end lags are its own last m values of h, which start the next. At a
    document start the window of lagged y is zeroed, so the chunk's end lags are the window, not h.
    """
    B, T, N, _ = a.shape
    m = a.shape[-1] - 1
    L = max(min(chunk_size, T), m)  # a chunk holds at least m steps
    n_chunks = math.ceil(T / L)
    pad = n_chunks * L - T
    if pad:  # steps past T are computed and dropped
        a = torch.cat([a, a.new_zeros(B, pad, N, m + 1)], dim=1)
        u = torch.cat([u, u.new_zeros(B, pad, N)], dim=1)
    a = a.view(B, n_chunks, L, N, m + 1)
    u = u.view(B, n_chunks, L, N)
    if starts is not None:
        last_start = torch.where(starts.any(1), (starts * torch.arange(T, device=starts.device)).amax(1), -m)
        starts = F.pad(starts, (0, pad)).view(B, n_chunks, L)

    basis = torch.cat([a.new_zeros(m, 1), torch.eye(m, dtype=a.dtype, device=a.device)], dim=1)
    window = [basis[k].expand(B, n_chunks, N, m + 1) for k in range(m)]  # window[k - 1] = y_{t-k}
    ys = []
    for i, (a_i, u_i) in enumerate(zip(a.unbind(2), u.unbind(2))):
        if starts is not None:  # a document starts at step i of a chunk: its lags are zero
            window = [torch.where(starts[:, :, i, None, None], 0.0, w) for w in window]
        y = F.pad(u_i[..., None], (0, m))
        for k in range(m):
            y = y + a_i[..., k + 1, None] * window[k]
        window = [y] + window[:-1]
        ys.append(y)
    Y = torch.stack(ys, dim=2)  # (B, n_chunks, L, N, m+1)

    # One slice for all chunk ends, then unbind: slicing Y inside the loop would make every chunk's backward
    # build a gradient of Y's full size (quadratic in T).
    if starts is None:
        ends = Y[:, :-1, L - m :].flip(2).transpose(2, 3)  # (B, n_chunks-1, N, m, m+1): row j is step L-1-j
    else:
        ends = torch.stack(window, dim=3)[:, :-1]  # row j is lag j + 1 after the chunk's last step
    s = s0
    chunk_starts = [s0]
    for end in ends.unbind(1):
        s = end[..., 0] + (end[..., 1:] * s[:, :, None, :]).sum(-1)
        chunk_starts.append(s)
    S = torch.stack(chunk_starts, dim=1)  # (B, n_chunks, N, m)
    h = (Y[..., 0] + (Y[..., 1:] * S[:, :, None]).sum(-1)).reshape(B, n_chunks * L, N)[:, :T]
    lags = torch.cat([s0.flip(-1).transpose(1, 2), h], dim=1)[:, -m:]  # h_{T-m}, ..., h_{T-1}
    if starts is not None:  # lags written before the last document start are zero
        after_start = torch.arange(T - m, T, device=h.device) >= last_start[:, None]
        lags = torch.where(after_start[:, :, None], lags, 0.0)
    return h, lags.flip(1).transpose(1, 2)


def hlru_scan_chunked(
    v: torch.Tensor,
    gate_logits: torch.Tensor,
    *,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    normalization: str = "softmax",
    mask: Optional[torch.Tensor] = None,
    chunk_size: int = 64,
    resets: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Same result as :func:`hlru_scan_reference`, via a chunked scan."""
    check_resets("hlru_scan_chunked", resets, v)
    starts = _document_starts(resets) if resets is not None else None
    cd = compute_dtype(v.dtype)
    B, T, N = v.shape
    m = gate_logits.shape[-1] - 1
    a = normalize_gates(gate_logits.to(cd), normalization)
    u = a[..., 0] * v.to(cd)
    s0 = initial_state.to(cd) if initial_state is not None else v.new_zeros(B, N, m, dtype=cd)
    if mask is None:
        h, final = _hlru_chunked_scan(a, u, s0, chunk_size, starts)
        return h.to(v.dtype), (final if output_final_state else None)
    # A masked step is the identity on the lags, which no gate values give: scan the companion form,
    # s_t = C_t s_{t-1} + (u_t, 0, ..., 0), with C_t = I at masked steps.
    M, u = _identity_map_where_masked(companion_matrices(a[..., 1:]), F.pad(u[..., None], (0, m - 1)), mask)
    if starts is not None:
        M = _zero_where_starts(M, starts)
    states, final = _chunked_affine_scan(M, u, s0, chunk_size)
    return states[..., 0].to(v.dtype), (final if output_final_state else None)


def bdlru_scan_chunked(
    v: torch.Tensor,
    gate_logits: torch.Tensor,
    *,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    normalization: str = "softmax",
    mask: Optional[torch.Tensor] = None,
    chunk_size: int = 64,
    resets: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Same result as :func:`bdlru_scan_reference`, via a chunked scan."""
    check_resets("bdlru_scan_chunked", resets, v)
    cd = compute_dtype(v.dtype)
    B, T, N, k = v.shape
    a = normalize_gates(gate_logits.to(cd), normalization)
    M, u = a[..., 1:], a[..., 0] * v.to(cd)
    if mask is not None:
        M, u = _identity_map_where_masked(M, u, mask)
    if resets is not None:
        M = _zero_where_starts(M, _document_starts(resets))
    s0 = initial_state.to(cd) if initial_state is not None else v.new_zeros(B, N, k, dtype=cd)
    states, final = _chunked_affine_scan(M, u, s0, chunk_size)
    return states.to(v.dtype), (final if output_final_state else None)
