"""Spectral analysis of the learned transitions: per-token transition matrices, their products over a
window, eigenvalues and summary statistics.

Every layer's recurrence is linear in its state, s_t = M_t s_{t-1} + (input term), with M_t chosen per
token by the gates (after normalisation):

- BD-LRU (block size k): per block, M_t = A_t (k x k), ``A_t[i, j] = a[..., i, 1 + j]`` where ``a`` is the
  row-wise normalised gate logits (B, T, N, k, k+1) and ``a[..., i, 0]`` row i's input gate.
- H-LRU (order m): per channel, M_t = C_t, the m x m companion matrix of s_t = [h_t, ..., h_{t-m+1}]:
  first row (a_{t,1}, ..., a_{t,m}), ones on the sub-diagonal, zeros elsewhere. Its eigenvalues are the
  roots of lambda^m - a_{t,1} lambda^{m-1} - ... - a_{t,m}. m = 1 is the diagonal LRU (M_t = a_{t,1}).

Where the attention mask is 0 the scan leaves the state untouched, so M_t is the identity there.

The product P = M_t M_{t-1} ... M_{t-w+1} over a window of w steps is the map from s_{t-w} to s_t: what
tracks state over a sequence. A model that solves a permutation word problem exactly can do so with
blocks that are permutation matrices (eigenvalues at roots of unity, products again permutations); a
positive diagonal (softmax, m = k = 1) cannot flip a sign, which parity needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from .gates_lrnn import normalize_gates
from .scan_chunked_lrnn import companion_matrices, identity_where_masked
from .modeling_lrnn import BDLRUMixer, HLRUMixer, LRNNForCausalLM, LRNNModel

# Quantiles reported for the spectral radius and the eigenvalue moduli.
SUMMARY_QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
# The largest matrix size permutation_distance accepts (its assignment search is O(2^D D) per matrix).
MAX_PERMUTATION_SIZE = 12
# A product within this Frobenius distance of a permutation counts as permutation-like (e.g. 0.94 P for D = 4
# is at 0.12, 0.85 P at 0.3).
PERMUTATION_TOL = 0.25


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


def eigenvalues(matrices: torch.Tensor) -> torch.Tensor:
    """Eigenvalues (..., D) complex128 of matrices (..., D, D), computed in float64."""
    return torch.linalg.eigvals(matrices.double())


def permutation_distance(matrices: torch.Tensor, signed: bool = False) -> torch.Tensor:
    """Distance (...) float64 of each matrix (..., D, D) from the nearest permutation matrix:
    min_P ||M - P||_F over the D! permutation matrices P (with ``signed``, over signed permutations: each
    1 may be -1, i.e. the orthogonal matrices with integer entries).

    Since ||P||_F^2 = D, ||M - P||_F^2 = ||M||_F^2 + D - 2 sum_i M[i, sigma(i)], so the nearest P is the
    maximum-weight assignment of rows to columns (weights |M| when signed), found exactly by dynamic
    programming over the sets of used columns (O(2^D D) per matrix, D <= MAX_PERMUTATION_SIZE). It is 0
    exactly for a (signed) permutation matrix.
    """
    D = matrices.shape[-1]
    if matrices.dim() < 2 or matrices.shape[-2] != D:
        raise ValueError(f"matrices must be (..., D, D), got shape {tuple(matrices.shape)}")
    if D > MAX_PERMUTATION_SIZE:
        raise ValueError(f"permutation_distance supports D <= {MAX_PERMUTATION_SIZE}, got D = {D}")
    M = matrices.double().reshape(-1, D, D)
    weights = M.abs() if signed else M
    chunk = max(1, (1 << 22) // ((1 << D) * D))  # bounds the (chunk, 2^D) tables and (chunk, edges) values
    best = torch.cat([_max_assignment(w) for w in weights.split(chunk)]) if M.shape[0] else M.new_zeros(0)
    squared = (M * M).sum((-2, -1)) + D - 2 * best
    return squared.clamp_min(0).sqrt().reshape(matrices.shape[:-2])


def _max_assignment(weights: torch.Tensor) -> torch.Tensor:
    """max over permutations sigma of sum_i weights[:, i, sigma(i)], weights (n, D, D) -> (n,).

    best[S] is the best total weight of rows 0..|S|-1 assigned to the column set S; row |S| then extends S
    by one unused column j. The edges (S -> S + j) of each row are handled in one scatter."""
    n, D, _ = weights.shape
    device = weights.device
    masks = torch.arange(1 << D, device=device)
    popcount = sum((masks >> j) & 1 for j in range(D))
    best = weights.new_full((n, 1 << D), float("-inf"))
    best[:, 0] = 0.0
    columns = torch.arange(D, device=device)
    for row in range(D):
        sources = masks[popcount == row]
        free = ((sources[:, None] >> columns) & 1) == 0  # (S, D): column j unused in S
        source_idx, column_idx = free.nonzero(as_tuple=True)
        src, col = sources[source_idx], columns[column_idx]
        values = best[:, src] + weights[:, row, col]
        best.scatter_reduce_(1, (src | (1 << col)).expand(n, -1), values, reduce="amax")
    return best[:, -1]


def _quantiles(values: torch.Tensor) -> Dict[str, float]:
    """Mean and the SUMMARY_QUANTILES of a tensor (any shape), linear interpolation between order statistics."""
    flat = values.double().flatten().sort().values
    n = flat.numel()
    out = {"mean": float(flat.mean())}
    for q in SUMMARY_QUANTILES:
        pos = q * (n - 1)
        lo = int(pos)
        hi = min(lo + 1, n - 1)
        out[f"q{round(100 * q):02d}"] = float(flat[lo] + (pos - lo) * (flat[hi] - flat[lo]))
    return out


def permutation_summary(products: torch.Tensor, permutation_tol: float = PERMUTATION_TOL) -> Dict:
    """How close products (..., N, D, D) are to permutation matrices; N (dimension -3) indexes the blocks
    or channels, the leading dimensions the samples (sequences, windows). For the unsigned and the signed
    distance d of :func:`permutation_distance` (``signed_`` prefix):

    - ``permutation_distance``: mean and quantiles of d over all products;
    - ``fraction_near_permutation``: products with d <= permutation_tol;
    - ``block_permutation_distance``: mean and quantiles over the N blocks of each block's median d over
      the samples (q00: the most permutation-like block);
    - ``fraction_permutation_blocks``: blocks whose median d <= permutation_tol.
    """
    if products.dim() < 3:
        raise ValueError(f"products must be (..., N, D, D), got shape {tuple(products.shape)}")
    summary = {}
    for prefix, signed in (("", False), ("signed_", True)):
        distance = permutation_distance(products, signed=signed)  # (..., N)
        per_block = distance.reshape(-1, distance.shape[-1]).median(0).values  # (N,)
        summary[f"{prefix}permutation_distance"] = _quantiles(distance)
        summary[f"fraction_near_{prefix}permutation"] = float((distance <= permutation_tol).double().mean())
        summary[f"block_{prefix}permutation_distance"] = _quantiles(per_block)
        summary[f"fraction_{prefix}permutation_blocks"] = float((per_block <= permutation_tol).double().mean())
    return summary


def spectrum_summary(
    eigs: torch.Tensor, products: Optional[torch.Tensor] = None, tol: float = 1e-6, unit_tol: float = 0.05
) -> Dict:
    """Summary statistics of eigenvalues eigs (..., D) (one row of D per matrix), as plain floats:

    - ``num_matrices``, ``size`` (D);
    - ``spectral_radius``: mean and quantiles q00 ... q100 of max_i |lambda_i| per matrix;
    - ``modulus``: the same for every |lambda|;
    - ``fraction_negative_real``: eigenvalues with Re(lambda) < -tol;
    - ``fraction_complex``: eigenvalues with |Im(lambda)| > tol;
    - ``fraction_unit_modulus``: eigenvalues with | |lambda| - 1 | <= unit_tol;
    - with ``products`` (..., N, D, D) (window products, see :func:`window_products`): the entries of
      :func:`permutation_summary`.
    """
    if eigs.numel() == 0:
        raise ValueError("spectrum_summary needs at least one eigenvalue")
    modulus = eigs.abs()
    summary = {
        "num_matrices": int(eigs.numel() // eigs.shape[-1]),
        "size": int(eigs.shape[-1]),
        "spectral_radius": _quantiles(modulus.amax(-1)),
        "modulus": _quantiles(modulus),
        "fraction_negative_real": float((eigs.real < -tol).double().mean()),
        "fraction_complex": float((eigs.imag.abs() > tol).double().mean()),
        "fraction_unit_modulus": float(((modulus - 1).abs() <= unit_tol).double().mean()),
    }
    if products is not None:
        summary.update(permutation_summary(products))
    return summary


@dataclass
class LayerSpectrum:
    """Eigenvalues and their summaries for one layer (see :func:`layer_spectra`).

    ``step_eigenvalues`` (B, T, N, D) complex128 of the per-token M_t; ``window_eigenvalues[w]``
    (B, floor(T / w), N, D) of the products over consecutive, non-overlapping windows of w steps;
    ``summary`` = {"steps": spectrum_summary(...), "windows": {w: spectrum_summary(..., products)}}.
    """

    layer: int
    mixer: str
    size: int
    label: str
    gate_normalization: str
    step_eigenvalues: torch.Tensor
    window_eigenvalues: Dict[int, torch.Tensor]
    summary: Dict


def layer_spectra(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    windows=(),
) -> List[LayerSpectrum]:
    """Per layer: the eigenvalues of M_t and of the window products M_{s+w-1} ... M_s for s = 0, w, 2w, ...
    (non-overlapping windows, each w in ``windows``, 1 <= w <= T), with :func:`spectrum_summary` of each.
    The permutation distances are left out (``None``) where D > MAX_PERMUTATION_SIZE."""
    T = input_ids.shape[1]
    for w in windows:
        if not 1 <= w <= T:
            raise ValueError(f"every window must be in [1, seq_len={T}], got {w}")
    spectra = []
    for layer in transition_matrices(model, input_ids, attention_mask):
        M = layer.matrices
        eigs = eigenvalues(M)
        summary = {"steps": spectrum_summary(eigs), "windows": {}}
        window_eigs = {}
        for w in windows:
            products = window_products(M, w, stride=w)  # (B, floor(T / w), N, D, D)
            window_eigs[w] = eigenvalues(products)
            with_distance = products if layer.size <= MAX_PERMUTATION_SIZE else None
            summary["windows"][w] = spectrum_summary(window_eigs[w], with_distance)
            if with_distance is None:
                summary["windows"][w]["permutation_distance"] = None  # D too large for the exact search
        spectra.append(LayerSpectrum(layer.layer, layer.mixer, layer.size, layer.label, layer.gate_normalization,
                                     eigs, window_eigs, summary))
    return spectra
