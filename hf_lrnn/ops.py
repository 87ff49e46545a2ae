"""Public scan ops: ``hlru_scan`` and ``bdlru_scan`` with input checks and backend dispatch.

Every implementation has one signature, called by keyword: ``(v, gate_logits, *, initial_state=None,
output_final_state=False, normalization="softmax", mask=None) -> (h, final_state or None)``; the ops
add ``backend``.

Backends:
- ``"torch"``: PyTorch, differentiable by autograd: the chunked scan (``scan_chunked``), or the plain
  loop where that is cheaper: short sequences (T <= ``LOOP_MAX_T``, e.g. a decode step) and, on the
  CPU, wide steps (B * N * (m or k) > ``CHUNKED_MAX_CPU_WORK``).
- ``"reference"``: the step-by-step loop (``scan_reference``), for tests and benchmarks.
- ``"triton"``: the fused Triton kernels (``scan_triton``), CUDA tensors (or ``TRITON_INTERPRET=1``).
- ``"auto"``: ``"triton"`` for CUDA tensors when Triton is installed and supports the size, else
  ``"torch"`` (with a one-time warning on CUDA saying why). Under torch.compile, sequences of at most
  ``LOOP_MAX_T`` steps (decode steps) take the torch loop, which inductor fuses.
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch

from .gates import GATE_NORMALIZATIONS
from .scan_chunked import bdlru_scan_chunked, hlru_scan_chunked
from .scan_reference import bdlru_scan_reference, hlru_scan_reference

BACKENDS = ("auto", "torch", "triton", "reference")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
LOOP_MAX_T = 16  # the torch backend runs the plain loop up to this length
# On the CPU the chunked scan pays off while a step is small: past B * N * (m or k) = 512 values per
# step the loop's T small steps beat its L + T/L bigger ones (benchmarks/kernels/bench_torch_scan.py, 2 cores).
CHUNKED_MAX_CPU_WORK = 512
_warned = set()

try:  # a relative "from .x import" so that transformers ships the kernels with remote code
    from .scan_triton import bdlru_scan_triton, hlru_scan_triton, triton_unsupported_reason

    TRITON_IMPORT_ERROR = None
except ImportError as err:  # triton not installed (e.g. a CPU-only machine without it)
    TRITON_IMPORT_ERROR = f"triton could not be imported ({err})"


def _resolve_backend(backend: str, v: torch.Tensor, kind: str, size: int) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if not v.is_cuda or (torch.compiler.is_compiling() and v.shape[1] <= LOOP_MAX_T):
        return "torch"  # compiled decode steps: inductor fuses the torch loop's step into one kernel
    reason = TRITON_IMPORT_ERROR or triton_unsupported_reason(kind, size)
    if reason is None:
        return "triton"
    if (kind, reason) not in _warned:
        _warned.add((kind, reason))
        warnings.warn(f"{kind}_scan: backend='auto' uses the torch backend on CUDA because {reason}", stacklevel=4)
    return "torch"


def _check_common(name, v, gate_logits, initial_state, mask, normalization, state_shape):
    if not isinstance(v, torch.Tensor) or not isinstance(gate_logits, torch.Tensor):
        raise TypeError(f"{name}: v and gate_logits must be torch.Tensors")
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
        if tuple(initial_state.shape) != state_shape:
            raise ValueError(
                f"{name}: initial_state must have shape {state_shape}, got {tuple(initial_state.shape)}"
            )
        if initial_state.dtype not in FLOAT_DTYPES or initial_state.device != v.device:
            raise ValueError(f"{name}: initial_state must be a floating tensor on {v.device}")
    if mask is not None:
        if tuple(mask.shape) != tuple(v.shape[:2]):
            raise ValueError(f"{name}: mask must have shape (B, T) = {tuple(v.shape[:2])}, got {tuple(mask.shape)}")
        if mask.device != v.device:
            raise ValueError(f"{name}: mask is on {mask.device}, v on {v.device}")


def hlru_scan(
    v: torch.Tensor,
    gate_logits: torch.Tensor,
    *,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    normalization: str = "softmax",
    mask: Optional[torch.Tensor] = None,
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
        backend: one of ``BACKENDS``.
    Returns:
        h (B, T, N) in v's dtype, final_state (B, N, m) in float32 (float64 for float64 inputs) or None.
    """
    if v.dim() != 3:
        raise ValueError(f"hlru_scan: v must have shape (B, T, N), got {tuple(v.shape)}")
    B, T, N = v.shape
    if gate_logits.dim() != 4 or tuple(gate_logits.shape[:3]) != (B, T, N) or gate_logits.shape[3] < 2:
        raise ValueError(
            f"hlru_scan: gate_logits must have shape (B, T, N, m+1) = ({B}, {T}, {N}, m+1) with m >= 1, "
            f"got {tuple(gate_logits.shape)}"
        )
    m = gate_logits.shape[3] - 1
    return _scan("hlru", m, v, gate_logits, initial_state, output_final_state, normalization, mask, backend)


def bdlru_scan(
    v: torch.Tensor,
    gate_logits: torch.Tensor,
    *,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    normalization: str = "softmax",
    mask: Optional[torch.Tensor] = None,
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
    Returns:
        h (B, T, N, k) in v's dtype, final_state (B, N, k) in float32 (float64 for float64 inputs) or None.
    """
    if v.dim() != 4:
        raise ValueError(f"bdlru_scan: v must have shape (B, T, N, k), got {tuple(v.shape)}")
    B, T, N, k = v.shape
    if gate_logits.dim() != 5 or tuple(gate_logits.shape) != (B, T, N, k, k + 1):
        raise ValueError(
            f"bdlru_scan: gate_logits must have shape (B, T, N, k, k+1) = ({B}, {T}, {N}, {k}, {k + 1}), "
            f"got {tuple(gate_logits.shape)}"
        )
    return _scan("bdlru", k, v, gate_logits, initial_state, output_final_state, normalization, mask, backend)


_IMPLEMENTATIONS = {  # kind -> (loop, chunked)
    "hlru": (hlru_scan_reference, hlru_scan_chunked),
    "bdlru": (bdlru_scan_reference, bdlru_scan_chunked),
}


def _scan(kind, size, v, gate_logits, initial_state, output_final_state, normalization, mask, backend):
    """Check the shared arguments, pick the backend and run it. ``size`` is m (H-LRU) or k (BD-LRU)."""
    B, T, N = v.shape[:3]
    _check_common(f"{kind}_scan", v, gate_logits, initial_state, mask, normalization, (B, N, size))
    backend = _resolve_backend(backend, v, kind, size)
    if backend == "triton":
        _require_triton(kind, size)
        scan = hlru_scan_triton if kind == "hlru" else bdlru_scan_triton
    else:
        loop, chunked = _IMPLEMENTATIONS[kind]
        use_loop = backend == "reference" or T <= LOOP_MAX_T or (not v.is_cuda and B * N * size > CHUNKED_MAX_CPU_WORK)
        scan = loop if use_loop else chunked
    return scan(v, gate_logits, initial_state=initial_state, output_final_state=output_final_state,
                normalization=normalization, mask=mask)


def _require_triton(kind: str, size: int) -> None:
    reason = TRITON_IMPORT_ERROR or triton_unsupported_reason(kind, size)
    if reason is not None:
        raise RuntimeError(f"{kind}_scan: backend='triton' is unavailable: {reason}")

