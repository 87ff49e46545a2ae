"""Public scan ops: ``hlru_scan`` and ``bdlru_scan``, checked in one place (``check_scan_inputs``) and run
by the implementation that one function picks (``select_scan``; its docstring tables the rules).

Every implementation has one signature, called by keyword: ``(v, gate_logits, *, initial_state=None,
output_final_state=False, normalization="softmax", mask=None, resets=None) -> (h, final_state or None)``;
the ops add ``backend``:
- ``"torch"``: PyTorch, differentiable by autograd: the chunked scan (``scan_chunked_lrnn``) or the plain loop
  (``scan_reference_lrnn``), whichever is cheaper for the shape.
- ``"reference"``: the step-by-step loop (``scan_reference_lrnn``), for tests and benchmarks.
- ``"triton"``: the fused Triton kernels (``scan_triton_lrnn``), CUDA tensors (or ``TRITON_INTERPRET=1``).
- ``"auto"``: ``"triton"`` where it runs well, else ``"torch"``.
A refusal of the chosen implementation raises :class:`ScanUnsupportedError`.

What enters and leaves step t of row b (every implementation, every backend):

=================================  ==========================================================================
``resets[b, t]`` (document start)  the state entering step t
=================================  ==========================================================================
None or False                      the state after step t-1; ``initial_state`` (zeros if None) at t = 0
True, t > 0                        zero (H-LRU: all m lags): no state or lag reaches across the boundary
True, t = 0                        ``initial_state``: a row's first document starts from it
=================================  ==========================================================================

then the step: where ``mask[b, t]`` is 0 it is the identity (the state is kept and h_t repeats its newest
entry, which is zero on a masked document start), else the recurrence.
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Tuple

import torch

from .constants_lrnn import GATE_NORMALIZATIONS, SCAN_BACKENDS, ScanUnsupportedError
from .scan_chunked_lrnn import bdlru_scan_chunked, hlru_scan_chunked
from .scan_reference_lrnn import bdlru_scan_reference, check_resets, hlru_scan_reference

BACKENDS = SCAN_BACKENDS
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
LOOP_MAX_T = 16  # the torch backend runs the plain loop up to this length
# On the CPU the chunked scan pays off while a step is small: past B * N * (m or k) = 512 values per
# step the loop's T small steps beat its L + T/L bigger ones (benchmarks/kernels/bench_torch_scan.py, 2 cores).
CHUNKED_MAX_CPU_WORK = 512
_warned_fallbacks = set()

try:  # a relative "from .x import" so that transformers ships the kernels with remote code
    from .scan_triton_lrnn import bdlru_scan_triton, hlru_scan_triton, triton_unsupported_reason

    TRITON_IMPORT_ERROR = None
except ImportError as err:  # triton not installed (e.g. a CPU-only machine without it)
    TRITON_IMPORT_ERROR = f"triton could not be imported ({err})"

# kind -> (loop, chunked, Triton) implementation
_IMPLEMENTATIONS = {
    "hlru": (hlru_scan_reference, hlru_scan_chunked, None if TRITON_IMPORT_ERROR else hlru_scan_triton),
    "bdlru": (bdlru_scan_reference, bdlru_scan_chunked, None if TRITON_IMPORT_ERROR else bdlru_scan_triton),
}


def _triton_unavailable_reason(kind: str, size: int) -> Optional[str]:
    return TRITON_IMPORT_ERROR or triton_unsupported_reason(kind, size)


def select_scan(kind: str, size: int, v: torch.Tensor, backend: str) -> Callable:
    """The implementation that runs a scan of ``kind`` ("hlru" or "bdlru") with order or block size ``size``
    on values ``v`` (B, T, N[, k]), for ``backend``. The rules, first match wins:

    ============  =====================================================  ===================================
    backend       condition                                              implementation
    ============  =====================================================  ===================================
    "reference"   always                                                 loop (``scan_reference_lrnn``)
    "triton"      Triton importable and ``size`` <= 16                   Triton kernels
    "triton"      otherwise                                              ScanUnsupportedError naming why
    "auto"        v on CUDA, not under torch.compile with T <= 16,       Triton kernels
                  Triton importable and ``size`` <= 16
    "auto"        v on CUDA otherwise                                    as "torch" (a one-time warning
                                                                         says why, unless compiling)
    "auto"        v not on CUDA                                          as "torch"
    "torch"       T <= LOOP_MAX_T (16): decode steps, which inductor     loop
                  fuses under torch.compile
    "torch"       CPU and B * N * size > CHUNKED_MAX_CPU_WORK (512)      loop
    "torch"       otherwise                                              chunked (``scan_chunked_lrnn``)
    ============  =====================================================  ===================================

    Inside the Triton implementation (``scan_triton_lrnn``), from the shapes and the SM count: BD-LRU with k = 1 runs the
    H-LRU kernels with m = 1 (the same recurrence); BD-LRU with k > 8 runs the step kernels, everything
    else the sequential kernels, both in time chunks on CUDA (``chunk_plan``); the custom operator (autograd,
    torch.compile) runs only where gradients or compilation need it, else the kernels are called directly.
    """
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"{kind}_scan: backend must be one of {SCAN_BACKENDS}, got {backend!r}")
    loop, chunked, triton_scan = _IMPLEMENTATIONS[kind]
    B, T, N = v.shape[:3]
    if backend == "reference":
        return loop
    if backend == "triton":
        reason = _triton_unavailable_reason(kind, size)
        if reason is not None:
            raise ScanUnsupportedError(f"{kind}_scan: backend='triton' is unavailable: {reason}")
        return triton_scan
    if backend == "auto" and v.is_cuda and not (torch.compiler.is_compiling() and T <= LOOP_MAX_T):
        reason = _triton_unavailable_reason(kind, size)
        if reason is None:
            return triton_scan
        if (kind, reason) not in _warned_fallbacks:
            _warned_fallbacks.add((kind, reason))
            warnings.warn(f"{kind}_scan: backend='auto' uses the torch backend on CUDA because {reason}", stacklevel=4)
    if T <= LOOP_MAX_T or (not v.is_cuda and B * N * size > CHUNKED_MAX_CPU_WORK):
        return loop
    return chunked


def mask_may_be_dropped(mask: Optional[torch.Tensor]) -> bool:
    """Whether a (B, T) mask may be dropped where it is all ones, so that the unmasked, cheaper scans run: in
    eager code, with T > LOOP_MAX_T (``LRNNModel.forward`` reads ``mask.all()`` with its other checks, in one
    host sync). Decode steps and compiled code keep the mask: no data-dependent branch, no sync."""
    return mask is not None and mask.shape[1] > LOOP_MAX_T and not torch.compiler.is_compiling()


def check_scan_inputs(kind: str, v, gate_logits, initial_state, mask, normalization: str, resets=None) -> int:
    """Every check of a scan's inputs (shapes, dtypes, devices, names; no values read, so no host sync);
    ValueError or TypeError naming the tensor. Returns the order m (H-LRU) or block size k (BD-LRU). The
    implementations check ``resets`` again (``check_resets``), as they are also called directly."""
    name = f"{kind}_scan"
    if not isinstance(v, torch.Tensor) or not isinstance(gate_logits, torch.Tensor):
        raise TypeError(f"{name}: v and gate_logits must be torch.Tensors")
    if kind == "hlru":
        if v.dim() != 3:
            raise ValueError(f"{name}: v must have shape (B, T, N), got {tuple(v.shape)}")
        B, T, N = v.shape
        if gate_logits.dim() != 4 or tuple(gate_logits.shape[:3]) != (B, T, N) or gate_logits.shape[3] < 2:
            raise ValueError(
                f"{name}: gate_logits must have shape (B, T, N, m+1) = ({B}, {T}, {N}, m+1) with m >= 1, "
                f"got {tuple(gate_logits.shape)}"
            )
        size = gate_logits.shape[3] - 1
    else:
        if v.dim() != 4:
            raise ValueError(f"{name}: v must have shape (B, T, N, k), got {tuple(v.shape)}")
        B, T, N, size = v.shape
        if gate_logits.dim() != 5 or tuple(gate_logits.shape) != (B, T, N, size, size + 1):
            raise ValueError(
                f"{name}: gate_logits must have shape (B, T, N, k, k+1) = ({B}, {T}, {N}, {size}, {size + 1}), "
                f"got {tuple(gate_logits.shape)}"
            )
    if v.dtype not in FLOAT_DTYPES or gate_logits.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name}: v and gate_logits must be floating point ({FLOAT_DTYPES}), "
            f"got v {v.dtype}, gate_logits {gate_logits.dtype}"
        )
    if gate_logits.device != v.device:
        raise ValueError(f"{name}: gate_logits is on {gate_logits.device}, v on {v.device}")
    if normalization not in GATE_NORMALIZATIONS:
        raise ValueError(f"{name}: normalization must be one of {GATE_NORMALIZATIONS}, got {normalization!r}")
    if initial_state is not None:
        if tuple(initial_state.shape) != (B, N, size):
            raise ValueError(f"{name}: initial_state must have shape {(B, N, size)}, got {tuple(initial_state.shape)}")
        if initial_state.dtype not in FLOAT_DTYPES or initial_state.device != v.device:
            raise ValueError(f"{name}: initial_state must be a floating tensor on {v.device}")
    check_mask(name, mask, v)
    check_resets(name, resets, v)
    return size


def check_mask(name: str, mask: Optional[torch.Tensor], x: torch.Tensor) -> None:
    """ValueError unless ``mask`` is None or (B, T) on the device of x (B, T, ...), the tensor it masks."""
    if mask is None:
        return
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"{name}: mask must have shape (B, T) = {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
    if mask.device != x.device:
        raise ValueError(f"{name}: mask is on {mask.device}, the inputs on {x.device}")


def hlru_scan(
    v: torch.Tensor,
    gate_logits: torch.Tensor,
    *,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    normalization: str = "softmax",
    mask: Optional[torch.Tensor] = None,
    resets: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """m-th order selective linear recurrence per channel.

    ``(a_0, ..., a_m) = normalize(gate_logits[b, t, n])``,
    ``h_t = sum_{k=1..m} a_k h_{t-k} + a_0 v_t`` with ``h_{t-k}`` from ``initial_state`` before t = 0.

    Args:
        v: (B, T, N) values.
        gate_logits: (B, T, N, m+1); index 0 is the input gate, index k the weight of h_{t-k}.
        initial_state: optional (B, N, m) = [h_{-1}, ..., h_{-m}] (most recent first); zeros if None.
        output_final_state: also return the state after the last step, (B, N, m).
        normalization: one of ``GATE_NORMALIZATIONS``.
        mask: optional (B, T); where 0 the state is left untouched and h repeats the last h.
        resets: optional bool (B, T); True where a document starts: the state entering step t > 0 is zero,
            all m lags (module docstring's table; packed rows, e.g. from ``DataCollatorWithFlattening``).
        backend: one of ``BACKENDS`` (see :func:`select_scan`).
    Returns:
        h (B, T, N) in v's dtype, final_state (B, N, m) in float32 (float64 for float64 inputs) or None.
    """
    return _scan("hlru", v, gate_logits, initial_state, output_final_state, normalization, mask, resets, backend)


def hlru_lagged_states(h: torch.Tensor, initial_state: torch.Tensor, mask: Optional[torch.Tensor],
                       resets: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The H-LRU readout's states s_t = [h_t, h_{t-1}, ..., h_{t-m+1}]: (B, T, N) -> (B, T, N, m).

    Before t = 0 the lags come from ``initial_state`` (B, N, m) = [h_{-1}, ..., h_{-m}].
    Masked steps (mask == 0) do not shift the lags (the scan keeps the state there), so lag j is the
    j-th most recent unmasked step; at a masked step s_t equals the state at the last unmasked one.
    After a document start (``resets`` (B, T) True at t > 0) the lags from before it read zero, as in the scan.
    ValueError or TypeError naming the tensor for a wrong shape, dtype or device (no values read).
    """
    name = "hlru_lagged_states"
    if not isinstance(h, torch.Tensor) or h.dim() != 3:
        got = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
        raise ValueError(f"{name}: h must be a (B, T, N) tensor, got {got}")
    B, T, N = h.shape
    if not isinstance(initial_state, torch.Tensor) or initial_state.dim() != 3 or tuple(initial_state.shape[:2]) != (B, N):
        got = tuple(initial_state.shape) if isinstance(initial_state, torch.Tensor) else type(initial_state).__name__
        raise ValueError(f"{name}: initial_state must have shape (B, N, m) = ({B}, {N}, m), got {got}")
    if initial_state.device != h.device:
        raise ValueError(f"{name}: initial_state is on {initial_state.device}, h on {h.device}")
    check_mask(name, mask, h)
    check_resets(name, resets, h)
    m = initial_state.shape[-1]
    past = initial_state.flip(-1).transpose(1, 2).to(h.dtype)  # (B, m, N) = h_{-m}, ..., h_{-1}
    ext = torch.cat([past, h], dim=1)  # ext[:, m + t] = h_t
    if mask is None:
        lags = [ext[:, m - j : m - j + T] for j in range(m)]
        if resets is not None:  # lag 0 (h_t) is never cut; lag j >= 1 where no start lies in (t - j, t]
            since_start = torch.arange(T, device=h.device) - _latest_starts(resets, m)  # (B, T), >= 0
            lags = [lags[0]] + [torch.where((since_start >= j)[..., None], lags[j], 0.0) for j in range(1, m)]
        return torch.stack(lags, dim=-1)
    keep = torch.cat([mask.new_ones(B, m), mask], dim=1).bool()  # the initial lags count as kept steps
    rank = keep.long().cumsum(1) - 1  # index of the latest kept step at or before each position
    slots = torch.where(keep, rank, torch.full_like(rank, m + T))  # unkept positions go to a spare slot
    position_of_rank = torch.zeros(B, m + T + 1, dtype=torch.long, device=h.device)
    position_of_rank.scatter_(1, slots, torch.arange(m + T, device=h.device).expand(B, -1))
    lag_ranks = rank[:, m:, None] - torch.arange(m, device=h.device)  # (B, T, m), all >= 0
    positions = position_of_rank.gather(1, lag_ranks.reshape(B, T * m))  # (B, T*m)
    lagged = ext.gather(1, positions[..., None].expand(B, T * m, N)).view(B, T, m, N).transpose(2, 3)
    return lagged if resets is None else _zero_lags_before_starts(lagged, positions.view(B, T, m) - m, resets)


def _latest_starts(resets: torch.Tensor, m: int) -> torch.Tensor:
    """(B, T): the latest document start at or before t (``resets`` True at t > 0), or -m - 1 where none
    (before every initial-state lag, whose source times are -m..-1)."""
    times = torch.arange(resets.shape[1], device=resets.device)
    return torch.where(resets & (times > 0), times, -m - 1).cummax(1).values


def _zero_lags_before_starts(lagged: torch.Tensor, source_times: torch.Tensor, resets: torch.Tensor) -> torch.Tensor:
    """``lagged`` (B, T, N, m) with zero where its lag's step (``source_times`` (B, T, m); < 0: from the
    initial state) lies before the latest document start at or before t (resets True at t > 0)."""
    last_start = _latest_starts(resets, lagged.shape[-1])
    return torch.where((source_times >= last_start[..., None])[:, :, None, :], lagged, 0.0)


def bdlru_scan(
    v: torch.Tensor,
    gate_logits: torch.Tensor,
    *,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    normalization: str = "softmax",
    mask: Optional[torch.Tensor] = None,
    resets: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Block-diagonal selective linear recurrence with dense k x k blocks.

    Per block n and row i: ``(a_{i,0}, A_{i,1..k}) = normalize(gate_logits[b, t, n, i])``,
    ``h_t = A_t h_{t-1} + a_0 * v_t``.

    Args:
        v: (B, T, N, k) values.
        gate_logits: (B, T, N, k, k+1); ``[..., i, 0]`` is row i's input gate, ``[..., i, 1+j] = A[i, j]``.
        initial_state: optional (B, N, k); zeros if None.
        output_final_state, normalization, mask, backend: as in :func:`hlru_scan`.
        resets: optional bool (B, T); True where a document starts: the state entering step t > 0 is zero.
    Returns:
        h (B, T, N, k) in v's dtype, final_state (B, N, k) in float32 (float64 for float64 inputs) or None.
    """
    return _scan("bdlru", v, gate_logits, initial_state, output_final_state, normalization, mask, resets, backend)


def _scan(kind, v, gate_logits, initial_state, output_final_state, normalization, mask, resets, backend):
    size = check_scan_inputs(kind, v, gate_logits, initial_state, mask, normalization, resets)
    scan = select_scan(kind, size, v, backend)
    return scan(v, gate_logits, initial_state=initial_state, output_final_state=output_final_state,
                normalization=normalization, mask=mask, resets=resets)
