"""Gate normalisations: how the m+1 (H-LRU) or k+1 (BD-LRU) logits of a channel or block row become the
recurrence's coefficients, along the last dimension.

With n_j the numerator of logit g_j and S = sum_j |n_j|, every variant but ``none`` is ``a_j = n_j / S``
(plus eps in the denominators that can be zero), so ``sum_j |a_j| <= 1`` and the state stays bounded by the
inputs; ``none`` leaves the logits as they are, and the state can grow without bound:

- ``softmax``: n = exp(g - max g), the paper's default;
- ``sigmoid_l1``: n = sigmoid(g); for rows whose logits are all negative it is computed as
  exp(g - max g) * sigmoid(-g) (the same ratio, scaled by exp(-max g)), so that rows of very negative
  logits give the formula's limit (softmax) instead of 0 / 0;
- ``relu_l1``: n = relu(g), S + eps; an all-negative row gives zero gates;
- ``tanh_l1``: n = tanh(g), S + eps (signed coefficients: negative eigenvalues become possible);
- ``l1``: n = g, S + eps (signed);
- ``none``: a = g, unnormalised (the paper's unstable ablation).

The Triton kernels implement the same formulas (``triton_helpers_lrnn``); all arithmetic is float32 (float64
for float64 inputs).
"""
from __future__ import annotations

import torch

from .constants_lrnn import GATE_NORMALIZATIONS
# Added to the denominators of relu_l1 / tanh_l1 / l1, which can be zero: an all-zero row gives zero gates.
L1_EPS = 1e-6


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the state and accumulations use: float64 for float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def normalize_gates(gate_logits: torch.Tensor, normalization: str) -> torch.Tensor:
    """Coefficients (..., K) from logits (..., K), normalised along the last dimension (module docstring)."""
    g = gate_logits
    if normalization == "softmax":
        return torch.softmax(g, dim=-1)
    if normalization == "sigmoid_l1":
        shift = g.detach().amax(-1, keepdim=True)  # a is invariant to the per-row scale exp(-shift)
        n = torch.where(shift > 0, torch.sigmoid(g), torch.exp(g - shift) * torch.sigmoid(-g))
        return n / n.sum(-1, keepdim=True)
    if normalization == "relu_l1":
        n = torch.relu(g)
        return n / (n.sum(-1, keepdim=True) + L1_EPS)
    if normalization == "tanh_l1":
        n = torch.tanh(g)
        return n / (n.abs().sum(-1, keepdim=True) + L1_EPS)
    if normalization == "l1":
        return g / (g.abs().sum(-1, keepdim=True) + L1_EPS)
    if normalization == "none":
        return g
    raise ValueError(f"normalization must be one of {GATE_NORMALIZATIONS}, got {normalization!r}")
