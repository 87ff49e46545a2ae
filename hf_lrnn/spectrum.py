"""The learned transitions as matrices: per-token transition matrices of every layer and their products
over windows of steps. (Their eigenvalues and summaries are an experiment: benchmarks/spectrum/.)

Every layer's recurrence is linear in its state, s_t = M_t s_{t-1} + (input term), with M_t chosen per
token by the gates (after normalisation):

- BD-LRU (block size k): per block, M_t = A_t (k x k), ``A_t[i, j] = a[..., i, 1 + j]`` where ``a`` is the
  row-wise normalised gate logits (B, T, N, k, k+1) and ``a[..., i, 0]`` row i's input gate.
- H-LRU (order m): per channel, M_t = C_t, the m x m companion matrix of s_t = [h_t, ..., h_{t-m+1}]:
  first row (a_{t,1}, ..., a_{t,m}), ones on the sub-diagonal, zeros elsewhere. Its eigenvalues are the
  roots of lambda^m - a_{t,1} lambda^{m-1} - ... - a_{t,m}. m = 1 is the diagonal LRU (M_t = a_{t,1}).

Where the attention mask is 0 the scan leaves the state untouched, so M_t is the identity there.

The product P = M_t M_{t-1} ... M_{t-w+1} over a window of w steps is the map from s_{t-w} to s_t: what
tracks state over a sequence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from .gates_lrnn import normalize_gates
from .scan_chunked_lrnn import companion_matrices, identity_where_masked
from .modeling_lrnn import BDLRUMixer, HLRUMixer, LRNNForCausalLM, LRNNModel


@dataclass
class LayerTransitions:
    """The transition matrices of one decoder layer.

    ``matrices`` (B, T, N, D, D) float32: N blocks (BD-LRU) or channels (H-LRU) per token, D = k or m.
    """

    layer: int
    mixer: str  # "bdlru" or "hlru"
    size: int  # k (BD-LRU block size) or m (H-LRU order)
    gate_normalization: str
    matrices: torch.Tensor

    @property
    def label(self) -> str:
        """A short name: ``bdlru_k4``, ``hlru_m2`` or ``diag`` (m = 1 or k = 1)."""
        if self.size == 1:
            return "diag"
        return f"bdlru_k{self.size}" if self.mixer == "bdlru" else f"hlru_m{self.size}"


def mixer_transitions(mixer: torch.nn.Module, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Transition matrices (B, T, N, D, D) float32 of one mixer for its input x (B, T, d); mask (B, T) or None
    (0 = padding: identity)."""
    a = normalize_gates(mixer.gate_logits(x).float(), mixer.gate_normalization)
    if isinstance(mixer, BDLRUMixer):
        M = a[..., 1:]  # (B, T, N, k, k)
    elif isinstance(mixer, HLRUMixer):
        M = companion_matrices(a[..., 1:])  # (B, T, N, m, m)
    else:
        raise TypeError(f"expected an HLRUMixer or BDLRUMixer, got {type(mixer).__name__}")
    if mask is not None:
        M = identity_where_masked(M, mask)
    return M.contiguous()


def transition_matrices(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
) -> List[LayerTransitions]:
    """One :class:`LayerTransitions` per decoder layer for input_ids (B, T) (and attention_mask (B, T)).

    Runs the model once without gradients; forward pre-hooks on ``layers[i].mixer`` capture each mixer's
    input x, and M_t is computed from ``mixer.gate_logits(x)`` normalised in float32 (module docstring).
    ``model`` is an LRNNForCausalLM or an LRNNModel.
    """
    base = model.model if isinstance(model, LRNNForCausalLM) else model
    if not isinstance(base, LRNNModel):
        raise TypeError(f"model must be an LRNNForCausalLM or LRNNModel, got {type(model).__name__}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask must have input_ids' shape {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}"
        )
    inputs: Dict[int, torch.Tensor] = {}

    def capture(index):
        def hook(module, args, kwargs):
            inputs[index] = args[0] if args else kwargs["x"]

        return hook

    handles = [
        layer.mixer.register_forward_pre_hook(capture(i), with_kwargs=True) for i, layer in enumerate(base.layers)
    ]
    try:
        with torch.no_grad():
            base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            mask = attention_mask.to(input_ids.device) if attention_mask is not None else None
            result = []
            for i, layer in enumerate(base.layers):
                mixer = layer.mixer
                hlru = isinstance(mixer, HLRUMixer)
                result.append(LayerTransitions(
                    layer=i, mixer="hlru" if hlru else "bdlru", size=mixer.order if hlru else mixer.block_size,
                    gate_normalization=mixer.gate_normalization, matrices=mixer_transitions(mixer, inputs[i], mask),
                ))
    finally:
        for handle in handles:
            handle.remove()
    return result


def window_products(matrices: torch.Tensor, window: int, stride: int = 1) -> torch.Tensor:
    """Products over windows of ``window`` consecutive steps starting every ``stride`` steps: matrices
    (..., T, N, D, D) -> (..., S, N, D, D) float64 with S = (T - window) // stride + 1, entry j (start
    s = j * stride) = M_{s+w-1} ... M_{s+1} M_s, the map from s_{s-1} to s_{s+w-1}. Time is dimension -4."""
    if matrices.dim() < 4 or matrices.shape[-1] != matrices.shape[-2]:
        raise ValueError(f"matrices must be (..., T, N, D, D), got shape {tuple(matrices.shape)}")
    T = matrices.shape[-4]
    if not 1 <= window <= T:
        raise ValueError(f"window must be in [1, T={T}], got {window}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    M = matrices.double()
    span = (T - window) // stride * stride + 1  # from the first to the last window start, inclusive

    def starts_shifted_by(step):  # M_{s + step} for every window start s
        return M[..., step:step + span:stride, :, :, :]

    product = starts_shifted_by(0)
    for step in range(1, window):
        product = starts_shifted_by(step) @ product
    return product
