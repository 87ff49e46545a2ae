"""Step-by-step PyTorch scans for H-LRU and BD-LRU: a Python loop over T, written to read like the maths.

The reference every other implementation is checked against (in float64), and the torch backend's path
for short sequences (decode steps). Shapes (B batch, T time, N channels or blocks, m order, k block size):
- H-LRU: v (B, T, N), gate_logits (B, T, N, m+1), state (B, N, m) = [h_{t-1}, ..., h_{t-m}].
- BD-LRU: v (B, T, N, k), gate_logits (B, T, N, k, k+1), state (B, N, k).
Where ``mask`` is 0 the step is the identity: the state is left untouched and h repeats the last state.
Where ``resets`` (B, T) is True a document starts: the state entering step t > 0 is zero (for H-LRU all m
lags), then the step (masked or not) applies; at t = 0 ``initial_state`` applies whatever the flag.
All arithmetic runs in float32 (float64 for float64 inputs); h is returned in v's dtype.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .gates_lrnn import compute_dtype, normalize_gates


def check_resets(name: str, resets: Optional[torch.Tensor], v: torch.Tensor) -> None:
    """Raise unless ``resets`` is None or a bool tensor of shape (B, T) on v's device."""
    if resets is None:
        return
    if not isinstance(resets, torch.Tensor):
        raise TypeError(f"{name}: resets must be a bool (B, T) torch.Tensor or None, got {type(resets).__name__}")
    if tuple(resets.shape) != tuple(v.shape[:2]):
        raise ValueError(f"{name}: resets must have shape (B, T) = {tuple(v.shape[:2])}, got {tuple(resets.shape)}")
    if resets.dtype != torch.bool:
        raise TypeError(f"{name}: resets must be a bool tensor (True where a document starts), got {resets.dtype}")
    if resets.device != v.device:
        raise ValueError(f"{name}: resets is on {resets.device}, v on {v.device}")


def hlru_scan_reference(
    v: torch.Tensor,
    gate_logits: torch.Tensor,
    *,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    normalization: str = "softmax",
    mask: Optional[torch.Tensor] = None,
    resets: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """h_t = sum_{k=1..m} a_{t,k} h_{t-k} + a_{t,0} v_t, one step at a time. Returns (h, final_state if output_final_state else None)."""
    check_resets("hlru_scan_reference", resets, v)
    cd = compute_dtype(v.dtype)
    B, T, N = v.shape
    m = gate_logits.shape[-1] - 1
    a = normalize_gates(gate_logits.to(cd), normalization)
    vc = v.to(cd)
    lags = initial_state.to(cd) if initial_state is not None else v.new_zeros(B, N, m, dtype=cd)
    hs = []
    for t, (a_t, v_t) in enumerate(zip(a.unbind(1), vc.unbind(1))):
        if resets is not None and t > 0:  # a document starts: no lag reaches back across the boundary
            lags = torch.where(resets[:, t, None, None], 0.0, lags)
        h_t = (a_t[..., 1:] * lags).sum(-1) + a_t[..., 0] * v_t
        new_lags = torch.cat([h_t.unsqueeze(-1), lags[..., :-1]], dim=-1)
        if mask is not None:
            new_lags = torch.where(mask[:, t, None, None].bool(), new_lags, lags)
        lags = new_lags
        hs.append(lags[..., 0])
    h = torch.stack(hs, dim=1) if T > 0 else vc
    return h.to(v.dtype), (lags if output_final_state else None)


def bdlru_scan_reference(
    v: torch.Tensor,
    gate_logits: torch.Tensor,
    *,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    normalization: str = "softmax",
    mask: Optional[torch.Tensor] = None,
    resets: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """h_t = A_t h_{t-1} + a_{t,0} * v_t per block, one step at a time. Returns (h, final_state if output_final_state else None)."""
    check_resets("bdlru_scan_reference", resets, v)
    cd = compute_dtype(v.dtype)
    B, T, N, k = v.shape
    a = normalize_gates(gate_logits.to(cd), normalization)
    vc = v.to(cd)
    h = initial_state.to(cd) if initial_state is not None else v.new_zeros(B, N, k, dtype=cd)
    hs = []
    for t, (a_t, v_t) in enumerate(zip(a.unbind(1), vc.unbind(1))):
        if resets is not None and t > 0:  # a document starts from the zero state
            h = torch.where(resets[:, t, None, None], 0.0, h)
        A_t = a_t[..., 1:]  # (B, N, k, k): A_t[i, j] multiplies h_{t-1}[j]
        h_new = (A_t * h[..., None, :]).sum(-1) + a_t[..., 0] * v_t
        if mask is not None:
            h_new = torch.where(mask[:, t, None, None].bool(), h_new, h)
        h = h_new
        hs.append(h)
    out = torch.stack(hs, dim=1) if T > 0 else vc
    return out.to(v.dtype), (h if output_final_state else None)
