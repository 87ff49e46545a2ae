"""Pure-PyTorch scans for H-LRU and BD-LRU: the step-by-step reference and a chunked fast path.

Shapes (B batch, T time, N channels or blocks, m order, k block size):
- H-LRU: v (B, T, N), gate_logits (B, T, N, m+1), state (B, N, m) = [h_{t-1}, ..., h_{t-m}].
- BD-LRU: v (B, T, N, k), gate_logits (B, T, N, k, k+1), state (B, N, k).

Both recurrences are affine maps of a D-dimensional state per channel (D = m or k):
``s_t = M_t s_{t-1} + u_t``. H-LRU uses the companion matrix (first row a_{t,1..m}, ones below the
diagonal) and ``u_t = a_{t,0} v_t e_1``; BD-LRU uses ``M_t = A_t`` and ``u_t = a_{t,0} * v_t``.
Where ``mask`` is 0 the step is the identity (M = I, u = 0): the state is left untouched.

All arithmetic runs in float32 (float64 when the inputs are float64); h is returned in v's dtype.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

GATE_NORMALIZATIONS = ("softmax", "sigmoid_l1", "relu_l1", "tanh_l1", "l1", "none")
# Added to the L1 denominators of relu_l1 / tanh_l1 / l1 so an all-zero row gives zero gates, not NaN.
L1_EPS = 1e-6


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the state and accumulations use: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def normalize_gates(gate_logits: torch.Tensor, normalization: str) -> torch.Tensor:
    """Map logits (..., K) to coefficients (..., K) along the last dimension.

    softmax: exp(g) / sum exp(g); sigmoid_l1: sigmoid(g) / sum sigmoid(g);
    relu_l1: relu(g) / (sum relu(g) + eps); tanh_l1: tanh(g) / (sum |tanh(g)| + eps);
    l1: g / (sum |g| + eps); none: g. Every variant but ``none`` gives sum_k |a_k| <= 1.
    """
    g = gate_logits
    if normalization == "softmax":
        return torch.softmax(g, dim=-1)
    if normalization == "sigmoid_l1":
        s = torch.sigmoid(g)
        return s / s.sum(-1, keepdim=True)
    if normalization == "relu_l1":
        r = torch.relu(g)
        return r / (r.sum(-1, keepdim=True) + L1_EPS)
    if normalization == "tanh_l1":
        t = torch.tanh(g)
        return t / (t.abs().sum(-1, keepdim=True) + L1_EPS)
    if normalization == "l1":
        return g / (g.abs().sum(-1, keepdim=True) + L1_EPS)
    if normalization == "none":
        return g
    raise ValueError(f"normalization must be one of {GATE_NORMALIZATIONS}, got {normalization!r}")


# ---------------------------------------------------------------------------------------------
# Reference: a Python loop over T, written to read like the maths.
# ---------------------------------------------------------------------------------------------


def hlru_scan_reference(
    v: torch.Tensor,
    gate_logits: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None,
    normalization: str = "softmax",
    mask: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """h_t = sum_{k=1..m} a_{t,k} h_{t-k} + a_{t,0} v_t, one step at a time. Returns (h, final_state)."""
    cd = compute_dtype(v.dtype)
    B, T, N = v.shape
    m = gate_logits.shape[-1] - 1
    a = normalize_gates(gate_logits.to(cd), normalization)
    vc = v.to(cd)
    lags = initial_state.to(cd) if initial_state is not None else v.new_zeros(B, N, m, dtype=cd)
    hs = []
    for t, (a_t, v_t) in enumerate(zip(a.unbind(1), vc.unbind(1))):
        h_t = (a_t[..., 1:] * lags).sum(-1) + a_t[..., 0] * v_t
        new_lags = torch.cat([h_t.unsqueeze(-1), lags[..., :-1]], dim=-1)
        if mask is not None:
            new_lags = torch.where(mask[:, t, None, None].bool(), new_lags, lags)
        lags = new_lags
        hs.append(lags[..., 0])
    h = torch.stack(hs, dim=1) if T > 0 else vc
    return h.to(v.dtype), lags


def bdlru_scan_reference(
    v: torch.Tensor,
    gate_logits: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None,
    normalization: str = "softmax",
    mask: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """h_t = A_t h_{t-1} + a_{t,0} * v_t per block, one step at a time. Returns (h, final_state)."""
    cd = compute_dtype(v.dtype)
    B, T, N, k = v.shape
    a = normalize_gates(gate_logits.to(cd), normalization)
    vc = v.to(cd)
    h = initial_state.to(cd) if initial_state is not None else v.new_zeros(B, N, k, dtype=cd)
    hs = []
    for t, (a_t, v_t) in enumerate(zip(a.unbind(1), vc.unbind(1))):
        A_t = a_t[..., 1:]  # (B, N, k, k): A_t[i, j] multiplies h_{t-1}[j]
        h_new = (A_t * h[..., None, :]).sum(-1) + a_t[..., 0] * v_t
        if mask is not None:
            h_new = torch.where(mask[:, t, None, None].bool(), h_new, h)
        h = h_new
        hs.append(h)
    out = torch.stack(hs, dim=1) if T > 0 else vc
    return out.to(v.dtype), h


# ---------------------------------------------------------------------------------------------
# Chunked scan: O(sqrt(T)) Python steps instead of T, differentiable by autograd.
# ---------------------------------------------------------------------------------------------


def _apply_dense(M: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """M X for M (..., D, D) and X (..., D, C). D is small (<= 16): a broadcast multiply-and-sum
    beats batched matmul of tiny matrices on the CPU, forward and backward."""
    return (M[..., :, :, None] * X[..., None, :, :]).sum(-2)


def _apply_companion(first_row: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """C X for the companion matrix C with first row (...,  m) and ones below the diagonal."""
    new_first = (first_row[..., :, None] * X).sum(-2, keepdim=True)
    return torch.cat([new_first, X[..., :-1, :]], dim=-2)


def _chunked_affine_scan(
    M: torch.Tensor, u: torch.Tensor, s0: torch.Tensor, chunk_size: int, companion: bool
) -> Tuple[torch.Tensor, torch.Tensor]:
    """All states of s_t = M_t s_{t-1} + u_t.

    M (B, T, N, D, D) or, if ``companion``, the companion matrices' first rows (B, T, N, D);
    u (B, T, N, D), s0 (B, N, D) -> states (B, T, N, D), final (B, N, D).
    Within each chunk of L steps (all chunks at once) we scan from a zero state while carrying the
    cumulative product P_t = M_t ... M_1, as D extra columns of one (D, D+1) matrix X. A loop over the
    chunks then passes the boundary state on: s_t = local_t + P_t s_start. Cost: L + T/L Python steps.
    """
    B, T, N, D = u.shape
    L = min(chunk_size, T)
    n_chunks = math.ceil(T / L)
    pad = n_chunks * L - T
    if pad:  # steps past T (any transition, zero input) are computed and dropped
        M = torch.cat([M, M.new_zeros(B, pad, N, *M.shape[3:])], dim=1)
        u = torch.cat([u, u.new_zeros(B, pad, N, D)], dim=1)
    M = M.view(B, n_chunks, L, N, *M.shape[3:])
    u = u.view(B, n_chunks, L, N, D)
    apply = _apply_companion if companion else _apply_dense

    # X = [local state | cumulative product], starting from [0 | I].
    start = torch.cat([M.new_zeros(D, 1), torch.eye(D, dtype=M.dtype, device=M.device)], dim=1)
    X = start.expand(B, n_chunks, N, D, D + 1)
    steps = []
    for M_i, u_i in zip(M.unbind(2), u.unbind(2)):
        X = apply(M_i, X)
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


def _identity_where_masked(M, u, mask):
    """Replace masked steps (mask == 0) by the identity map: M = I, u = 0."""
    keep = mask.bool()[:, :, None, None]
    eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
    return torch.where(keep[..., None], M, eye), torch.where(keep, u, torch.zeros_like(u))


def hlru_scan_chunked(
    v: torch.Tensor,
    gate_logits: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None,
    normalization: str = "softmax",
    mask: Optional[torch.Tensor] = None,
    chunk_size: int = 64,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Same result as :func:`hlru_scan_reference`, via the companion form and a chunked scan."""
    cd = compute_dtype(v.dtype)
    B, T, N = v.shape
    m = gate_logits.shape[-1] - 1
    a = normalize_gates(gate_logits.to(cd), normalization)
    u = torch.cat([(a[..., 0] * v.to(cd)).unsqueeze(-1), v.new_zeros(B, T, N, m - 1, dtype=cd)], -1)
    M = a[..., 1:]  # first rows of the companion matrices
    if mask is not None:  # masked steps are the identity, which is not a companion matrix: go dense
        shift = torch.eye(m - 1, m, dtype=cd, device=v.device).expand(B, T, N, m - 1, m)
        M, u = _identity_where_masked(torch.cat([M.unsqueeze(-2), shift], dim=-2), u, mask)
    s0 = initial_state.to(cd) if initial_state is not None else v.new_zeros(B, N, m, dtype=cd)
    states, final = _chunked_affine_scan(M, u, s0, chunk_size, companion=mask is None)
    return states[..., 0].to(v.dtype), final


def bdlru_scan_chunked(
    v: torch.Tensor,
    gate_logits: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None,
    normalization: str = "softmax",
    mask: Optional[torch.Tensor] = None,
    chunk_size: int = 64,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Same result as :func:`bdlru_scan_reference`, via a chunked scan."""
    cd = compute_dtype(v.dtype)
    B, T, N, k = v.shape
    a = normalize_gates(gate_logits.to(cd), normalization)
    M, u = a[..., 1:], a[..., 0] * v.to(cd)
    if mask is not None:
        M, u = _identity_where_masked(M, u, mask)
    s0 = initial_state.to(cd) if initial_state is not None else v.new_zeros(B, N, k, dtype=cd)
    states, final = _chunked_affine_scan(M, u, s0, chunk_size, companion=False)
    return states.to(v.dtype), final
