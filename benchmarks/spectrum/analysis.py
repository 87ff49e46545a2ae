"""Eigenvalues of the learned transitions (M_t from :mod:`hf_lrnn.spectrum`) and how close their window products are
to permutation matrices. :func:`eigenvalues` refuses non-finite matrices by name (the CPU eigenvalue routine can
corrupt the heap on NaN)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from hf_lrnn.spectrum import transition_matrices, window_products

# Quantiles reported for the spectral radius and the eigenvalue moduli.
SUMMARY_QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
# The largest matrix size permutation_distance accepts (its assignment search is O(2^D D) per matrix).
MAX_PERMUTATION_SIZE = 12
# A product within this Frobenius distance of a permutation counts as permutation-like (e.g. 0.94 P for D = 4
# is at 0.12, 0.85 P at 0.3).
PERMUTATION_TOL = 0.25


def eigenvalues(matrices: torch.Tensor, what: str = "matrices") -> torch.Tensor:
    """Eigenvalues (..., D) complex128 of matrices (..., D, D) in float64; ValueError naming ``what`` if any
    entry is NaN or infinite."""
    M = matrices.double()
    bad = ~torch.isfinite(M).flatten(-2).all(-1)  # (...): matrices with a non-finite entry
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{what}: {int(bad.sum()):,} of {bad.numel():,} matrices have NaN or infinite entries (the first at "
            f"index {first} of shape {tuple(bad.shape)}); eigenvalues need finite matrices (a diverged "
            "checkpoint, or window products that overflow: try shorter windows)")
    return torch.linalg.eigvals(M)


def permutation_distance(matrices: torch.Tensor, signed: bool = False) -> torch.Tensor:
    """Distance (...) float64 of each matrix (..., D, D) from the nearest (``signed``: signed) permutation
    matrix, min_P ||M - P||_F. As ||M - P||_F^2 = ||M||_F^2 + D - 2 sum_i M[i, sigma(i)], the nearest P is the
    maximum-weight assignment (weights |M| when signed), found exactly in O(2^D D) per matrix, D <= 12."""
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
    """max over permutations sigma of sum_i weights[:, i, sigma(i)], (n, D, D) -> (n,), by dynamic programming
    over the sets S of used columns (best[S]: rows 0..|S|-1 assigned to S)."""
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
    """Closeness of products (..., N, D, D) (N blocks or channels) to permutations, unsigned and signed
    (``signed_`` prefix): ``permutation_distance`` (quantiles), ``fraction_near_permutation`` (d <= tol),
    ``block_permutation_distance`` (quantiles over blocks of each block's median d) and
    ``fraction_permutation_blocks`` (blocks whose median d <= tol)."""
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
    """Summary of eigenvalues eigs (..., D) as plain floats: ``num_matrices``, ``size``, quantiles of
    ``spectral_radius`` and ``modulus``, fractions ``negative_real`` (Re < -tol), ``complex`` (|Im| > tol),
    ``unit_modulus`` (||lambda| - 1| <= unit_tol); with ``products``, :func:`permutation_summary`."""
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
    """One layer's ``step_eigenvalues`` (B, T, N, D), ``window_eigenvalues[w]`` (B, T // w, N, D) and
    ``summary`` = {"steps": ..., "windows": {w: ...}} (:func:`spectrum_summary`)."""

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
        name = f"layer {layer.layer} ({layer.label}, {layer.gate_normalization})"
        eigs = eigenvalues(M, f"{name}, single steps")
        summary = {"steps": spectrum_summary(eigs), "windows": {}}
        window_eigs = {}
        for w in windows:
            products = window_products(M, w, stride=w)  # (B, floor(T / w), N, D, D)
            window_eigs[w] = eigenvalues(products, f"{name}, products over windows of {w} steps")
            with_distance = products if layer.size <= MAX_PERMUTATION_SIZE else None
            summary["windows"][w] = spectrum_summary(window_eigs[w], with_distance)
            if with_distance is None:
                summary["windows"][w]["permutation_distance"] = None  # D too large for the exact search
        spectra.append(LayerSpectrum(layer.layer, layer.mixer, layer.size, layer.label, layer.gate_normalization,
                                     eigs, window_eigs, summary))
    return spectra
