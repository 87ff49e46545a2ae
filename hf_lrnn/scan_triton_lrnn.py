"""Triton scans for H-LRU and BD-LRU: drivers, autograd and the entry points
``hlru_scan_triton`` / ``bdlru_scan_triton`` (the kernels are in ``triton_hlru_lrnn`` and ``triton_bdlru_lrnn``).

Shapes (B batch, T time, N channels or blocks, m order, k block size), as in ``scan_reference_lrnn``:
- H-LRU: v (B, T, N), gate_logits (B, T, N, m+1), state (B, N, m) = [h_{t-1}, ..., h_{t-m}].
- BD-LRU: v (B, T, N, k), gate_logits (B, T, N, k, k+1), state (B, N, k).

Two kernel families: sequential kernels (H-LRU, and BD-LRU with k <= 8; a thread owns a channel or a
block, its state in registers) and step kernels (BD-LRU with k > 8). The gate normalisation is fused: the
normalised gates are never written to memory, and the backward pass recomputes them from the logits.

Time chunking (every kernel: H-LRU m <= 16, BD-LRU k <= 16), so that small batches fill the GPU: the map
over a chunk is affine, ``s_end = P s_start + e``. A summary pass runs every chunk from zero (with the inputs)
and from the unit states (without) to get [e | P] (H-LRU m > 8: the m + 1 copies split over several programs,
``summary_copies``, so that they stay in registers; BD-LRU k > 8: all copies in one program of the step
kernels, as a matrix updated by one batched matrix product a step),
a small sequential kernel passes the true start states along the chunks, and the main pass reruns every
chunk from its start state. The backward pass
does the same in reverse time. Forward saves its inputs and h for backward (no chunk summaries or start
states: backward recomputes them). Masked steps (mask == 0) are the identity on the state; h there
repeats the most recent state entry. Document starts (``resets`` True at t > 0)
zero the state entering the step inside the same kernels (a flag load per step, no extra pass), so a
chunk that holds one has P = 0 in its summary.

The state and all accumulations are float32; inputs may be float32, bfloat16 or float16 (float64 is
refused with a ScanUnsupportedError); h is returned in v's dtype, the final state in float32. Offsets are int64.
The launch plans (kernel choice, constants, time chunks, from the shapes and the device's SM count) are in
``triton_plan_lrnn``.
"""
from __future__ import annotations

import re
from typing import Optional, Tuple

import torch

from .constants_lrnn import ScanUnsupportedError
from .gates_lrnn import GATE_NORMALIZATIONS, L1_EPS
from .scan_reference_lrnn import check_resets
from .triton_bdlru_lrnn import (
    _bdlru_seq_bwd_kernel,
    _bdlru_seq_fwd_kernel,
    _bdlru_step_bwd_kernel,
    _bdlru_step_fwd_kernel,
)
from .triton_helpers_lrnn import _chunk_combine_kernel
from .triton_hlru_lrnn import _hlru_bwd_kernel, _hlru_fwd_kernel
from .triton_plan_lrnn import (
    KERNEL_DTYPES,
    NUM_WARPS,
    MAX_SEQUENTIAL_BLOCK,
    NUM_STAGES,
    cdiv,
    combine_geometry,
    scan_chunk_plan,
    interpreting,
    next_power_of_2,
    sequential_config,
    step_geometry,
    summary_copies,
    triton_unsupported_reason,
)


def _combine(summary: torch.Tensor, x0: Optional[torch.Tensor], reverse: bool) -> torch.Tensor:
    """States entering each chunk (B, C, N, D) from the chunk summaries (B, C, N, D, D+1)."""
    B, C, N, D = summary.shape[:4]
    out = torch.empty(B, C, N, D, dtype=torch.float32, device=summary.device)
    DP, block = combine_geometry(D)
    _chunk_combine_kernel[(cdiv(N, block), B)](
        summary, x0 if x0 is not None else summary, out, N, C, D=D, DP=DP, HAS_X0=x0 is not None, REVERSE=reverse,
        BLOCK_N=block, NUM_STAGES=NUM_STAGES, num_warps=NUM_WARPS)
    return out


def _lag_sources(mask: torch.Tensor, m: int, resets: Optional[torch.Tensor] = None) -> torch.Tensor:
    """For H-LRU with a mask: where lag j = 1..m of each step was written, (B, T, m) int32. With c the
    unmasked steps before t: the time of unmasked step number c - j if c >= j, else c - j < 0, meaning
    initial_state[..., j - c - 1] (entry -src - 1); -(m + 1) (a zero lag) where a document start
    (``resets`` (B, T) int8, 0 at t = 0) lies after the source, at or before t."""
    B, T = mask.shape
    keep = mask != 0
    before = torch.cumsum(keep, 1, dtype=torch.int64) - keep.long()
    times = torch.arange(T, device=mask.device).expand(B, T)
    pos = torch.zeros(B, T + 1, dtype=torch.int64, device=mask.device)  # pos[b, c] = time of step c
    pos.scatter_(1, torch.where(keep, before, T), times)
    count = before[..., None] - torch.arange(1, m + 1, device=mask.device)
    src = torch.where(count >= 0, pos.gather(1, count.clamp(min=0).reshape(B, T * m)).reshape(B, T, m), count)
    if resets is not None:  # the latest document start at or before t; initial-state sources lie before any
        last_start = torch.cummax(torch.where(resets != 0, times, -(m + 1)), 1).values
        src = torch.where(src < last_start[..., None], -(m + 1), src)
    return src.to(torch.int32).contiguous()


def _launch(kind, D, N, backward):
    """(kernel, launch constants, program-axis-0 size of the main pass, of the summary pass) of a scan of order or
    block size D over N channels or blocks. Sequential kernels: U steps a loop iteration, BLOCK_N channels or
    blocks a program; H-LRU's summary pass runs its D + 1 copies COPIES a program, in cdiv(D + 1, COPIES) groups
    per channel tile (``summary_copies``). Step kernels (BD-LRU k > 8): a (BLOCK_N, KP, KP) gate tile a program;
    the summary pass holds all K + 1 state copies of a tile in one program (KS = next power of two >= K, the
    size of its matrices)."""
    if kind == "bdlru" and D > MAX_SEQUENTIAL_BLOCK:
        KP, block = step_geometry(N, D)
        tiles = cdiv(N, block)
        kernel = _bdlru_step_bwd_kernel if backward else _bdlru_step_fwd_kernel
        constants = dict(K=D, KP=KP, KS=next_power_of_2(D), BLOCK_N=block, NUM_STAGES=NUM_STAGES,
                         num_warps=NUM_WARPS)
        return kernel, constants, tiles, tiles
    U, block, warps = sequential_config(kind, D, backward)
    tiles = cdiv(N, block)
    constants = dict(U=U, BLOCK_N=block, num_warps=warps)
    if kind == "bdlru":
        kernel = _bdlru_seq_bwd_kernel if backward else _bdlru_seq_fwd_kernel
        return kernel, dict(K=D, **constants), tiles, tiles
    copies = summary_copies(D)
    kernel = _hlru_bwd_kernel if backward else _hlru_fwd_kernel
    return kernel, dict(M=D, COPIES=copies, **constants), tiles, tiles * cdiv(D + 1, copies)


def _chunked_forward(kind, v, g, init, mask, norm, L, resets=None):
    """h and the final state of a scan in chunks of L steps: for more than one chunk, a summary pass ([e | P] of
    every chunk), the combine kernel (the state entering each chunk) and the main pass from those states."""
    B, T, N = v.shape[:3]
    D = g.shape[-1] - 1
    C = cdiv(T, L)
    kernel, constants, tiles, summary_tiles = _launch(kind, D, N, backward=False)
    h = torch.empty_like(v)
    ends = torch.empty(B, C, N, D, dtype=torch.float32, device=v.device)
    mask_arg = mask if mask is not None else v
    resets_arg = resets if resets is not None else v
    common = dict(NORM=norm, EPS=L1_EPS, HAS_MASK=mask is not None, HAS_RESETS=resets is not None, **constants)
    if C > 1:
        summary = torch.empty(B, C, N, D, D + 1, dtype=torch.float32, device=v.device)
        kernel[(summary_tiles, C, B)](v, g, mask_arg, resets_arg, v, v, summary, T, N, L, 0, 0, HAS_START=False,
                                      SUMMARY=True, **common)
        start, has_start, strides = _combine(summary, init, reverse=False), True, (C * N * D, N * D)
    else:
        start, has_start, strides = (init if init is not None else v), init is not None, (N * D, 0)
    kernel[(tiles, C, B)](v, g, mask_arg, resets_arg, start, h, ends, T, N, L, *strides, HAS_START=has_start,
                          SUMMARY=False, **common)
    return h, ends[:, -1].contiguous()


def _chunked_backward(kind, v, g, init, mask, h, L, dh, dfinal, norm, resets=None):
    """dv, dgate_logits and the initial state's gradient (float32) of a scan in chunks of L steps (summary,
    reverse combine and main pass, as ``_chunked_forward``)."""
    B, T, N = v.shape[:3]
    D = g.shape[-1] - 1
    C = cdiv(T, L)
    kernel, constants, tiles, summary_tiles = _launch(kind, D, N, backward=True)
    dv, dg = torch.empty_like(v), torch.empty_like(g)
    d_init = torch.empty(B, N, D, dtype=torch.float32, device=v.device)
    head = (v, g, mask if mask is not None else v, resets if resets is not None else v,
            init if init is not None else v, h)
    if kind == "hlru":  # where the lags of each step were written
        head += (_lag_sources(mask, D, resets) if mask is not None else v,)
    head += (dh,)
    common = dict(NORM=norm, EPS=L1_EPS, HAS_INIT=init is not None, HAS_MASK=mask is not None,
                  HAS_RESETS=resets is not None, **constants)
    if C > 1:
        summary = torch.empty(B, C, N, D, D + 1, dtype=torch.float32, device=v.device)
        kernel[(summary_tiles, C, B)](*head, v, v, v, summary, T, N, L, 0, 0, HAS_LAM=False, SUMMARY=True, **common)
        lam, has_lam, strides = _combine(summary, dfinal, reverse=True), True, (C * N * D, N * D)
    else:
        lam, has_lam, strides = (dfinal if dfinal is not None else v), dfinal is not None, (N * D, 0)
    kernel[(tiles, C, B)](*head, lam, dv, dg, d_init, T, N, L, *strides, HAS_LAM=has_lam, SUMMARY=False, **common)
    return dv, dg, d_init


# ---------------------------------------------------------------------------------------------
# PyTorch custom operators (torch.library): opaque to torch.compile, with fake implementations for
# tracing and a registered autograd formula. Forward saves the inputs and h; backward is its own operator.
# ---------------------------------------------------------------------------------------------

# A copy of this file loaded as remote code (transformers_modules...) registers its operators under its own
# namespace, so that it can live in one process with an installed hf_lrnn.
OP_NAMESPACE = "hf_lrnn" if __name__ == "hf_lrnn.scan_triton_lrnn" else "hf_lrnn_" + re.sub(r"\W", "_", __name__)


def _scan_forward(kind, v, g, init, mask, normalization, chunk_size, resets=None):
    L, _ = scan_chunk_plan(kind, v, g.shape[-1] - 1, chunk_size)
    return _chunked_forward(kind, v, g, init, mask, normalization, L, resets)


def _scan_backward(kind, v, g, init, mask, h, dh, dfinal, normalization, chunk_size, resets=None):
    L, _ = scan_chunk_plan(kind, v, g.shape[-1] - 1, chunk_size)
    return _chunked_backward(kind, v, g, init, mask, h, L, dh, dfinal, normalization, resets)


def _output_grads(h, dh, dfinal):
    """The gradients autograd passes for (h, final state) in the backward kernels' forms: dh contiguous (zeros for
    None), dfinal float32 contiguous or None (the kernels start from zero)."""
    dh = torch.zeros_like(h) if dh is None else dh.contiguous()
    return dh, (None if dfinal is None else dfinal.float().contiguous())


def _register_scan_ops(kind: str):
    """``{kind}_scan(v, gate_logits, initial_state, mask, normalization, chunk_size, resets=None) -> (h,
    final_state)`` and its backward as custom operators ``OP_NAMESPACE::{kind}_scan[_backward]``; returns the
    forward op. ``resets`` is the kernels' int8 (B, T) form (``_prepare``)."""

    @torch.library.custom_op(f"{OP_NAMESPACE}::{kind}_scan", mutates_args=())
    def scan_op(v: torch.Tensor, gate_logits: torch.Tensor, initial_state: Optional[torch.Tensor],
                mask: Optional[torch.Tensor], normalization: str, chunk_size: Optional[int],
                resets: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        return _scan_forward(kind, v, gate_logits, initial_state, mask, normalization, chunk_size, resets)

    @scan_op.register_fake
    def _(v, gate_logits, initial_state, mask, normalization, chunk_size, resets=None):
        B, N, D = v.shape[0], v.shape[2], gate_logits.shape[-1] - 1
        return torch.empty_like(v), v.new_empty(B, N, D, dtype=torch.float32)

    @torch.library.custom_op(f"{OP_NAMESPACE}::{kind}_scan_backward", mutates_args=())
    def backward_op(v: torch.Tensor, gate_logits: torch.Tensor, initial_state: Optional[torch.Tensor],
                    mask: Optional[torch.Tensor], h: torch.Tensor, dh: torch.Tensor, dfinal: Optional[torch.Tensor],
                    normalization: str, chunk_size: Optional[int],
                    resets: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _scan_backward(kind, v, gate_logits, initial_state, mask, h, dh, dfinal, normalization, chunk_size,
                              resets)

    @backward_op.register_fake
    def _(v, gate_logits, initial_state, mask, h, dh, dfinal, normalization, chunk_size, resets=None):
        B, N, D = v.shape[0], v.shape[2], gate_logits.shape[-1] - 1
        return torch.empty_like(v), torch.empty_like(gate_logits), v.new_empty(B, N, D, dtype=torch.float32)

    def setup_context(ctx, inputs, output):
        v, gate_logits, initial_state, mask, normalization, chunk_size, resets = inputs
        ctx.save_for_backward(v, gate_logits, initial_state, mask, resets, output[0])
        ctx.normalization, ctx.chunk_size = normalization, chunk_size

    def backward(ctx, dh, dfinal):
        v, g, init, mask, resets, h = ctx.saved_tensors
        dh, dfinal = _output_grads(h, dh, dfinal)
        dv, dg, d_init = backward_op(v, g, init, mask, h, dh, dfinal, ctx.normalization, ctx.chunk_size, resets)
        return dv, dg, (d_init.to(init.dtype) if init is not None else None), None, None, None, None

    scan_op.register_autograd(backward, setup_context=setup_context)
    return scan_op


hlru_scan_op = _register_scan_ops("hlru")
bdlru_scan_op = _register_scan_ops("bdlru")


def _prepare(name, kind, v, gate_logits, initial_state, mask, resets, normalization, D):
    """Check what the kernels need beyond ops' shape checks (and ``resets``); make the inputs contiguous.
    ``resets`` becomes int8 (B, T) with column 0 cleared (the initial state applies at t = 0)."""
    check_resets(name, resets, v)
    reason = triton_unsupported_reason(kind, D)
    if reason is not None:
        raise ScanUnsupportedError(f"{name}: {reason}")
    for label, x in (("v", v), ("gate_logits", gate_logits), ("initial_state", initial_state)):
        if x is not None and x.dtype not in KERNEL_DTYPES:
            raise ScanUnsupportedError(f"{name}: the Triton kernels take float32, bfloat16 or float16 {label}, got {x.dtype}; "
                            "use backend='torch' or 'reference' for float64")
    if normalization not in GATE_NORMALIZATIONS:
        raise ValueError(f"{name}: normalization must be one of {GATE_NORMALIZATIONS}, got {normalization!r}")
    if not v.is_cuda and not interpreting():
        raise ScanUnsupportedError(f"{name}: the Triton backend needs CUDA tensors (or TRITON_INTERPRET=1 for the "
                           f"interpreter), got tensors on {v.device}")
    init = initial_state.contiguous() if initial_state is not None else None
    mask = (mask != 0).to(torch.int8).contiguous() if mask is not None else None
    if resets is not None:
        resets = resets.to(torch.int8).contiguous()
        resets[:, :1] = 0
    return v.contiguous(), gate_logits.contiguous(), init, mask, resets


class _EagerScan(torch.autograd.Function):
    """The scan with its gradient for eager autograd: the custom operator's forward and backward without its
    dispatch (its Python cost against the operator's: ``benchmarks/kernels/scan_host_overhead.py``)."""

    @staticmethod
    def forward(ctx, kind, v, g, init, mask, normalization, chunk_size, resets):
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no zeros kernel for it
        h, final = _scan_forward(kind, v, g, init, mask, normalization, chunk_size, resets)
        ctx.save_for_backward(v, g, init, mask, resets, h)
        ctx.kind, ctx.normalization, ctx.chunk_size = kind, normalization, chunk_size
        return h, final

    @staticmethod
    def backward(ctx, dh, dfinal):
        v, g, init, mask, resets, h = ctx.saved_tensors
        dh, dfinal = _output_grads(h, dh, dfinal)
        dv, dg, d_init = _scan_backward(ctx.kind, v, g, init, mask, h, dh, dfinal, ctx.normalization, ctx.chunk_size,
                                        resets)
        return None, dv, dg, (d_init.to(init.dtype) if init is not None else None), None, None, None, None


def _run_scan(kind, v, g, init, mask, normalization, chunk_size, resets=None):
    """The scan's custom operator under torch.compile (opaque to the compiler, with fake implementations); in eager
    code ``_EagerScan`` where autograd needs the gradient, else the implementation directly (prefill, eager
    decoding): the operator's Python dispatch cost about 0.3 ms per call on the H200
    (``benchmarks.model.profile_prefill``, removed after commit ad1448b; its profile: benchmarks/README.md), paid
    once per layer. All three run the same kernels."""
    if torch.compiler.is_compiling():
        op = hlru_scan_op if kind == "hlru" else bdlru_scan_op
        return op(v, g, init, mask, normalization, chunk_size, resets)
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (v, g, init)):
        return _EagerScan.apply(kind, v, g, init, mask, normalization, chunk_size, resets)
    return _scan_forward(kind, v, g, init, mask, normalization, chunk_size, resets)


def _empty_scan(v, initial_state, B, N, D):
    final = initial_state.float() if initial_state is not None else v.new_zeros(B, N, D, dtype=torch.float32)
    return v.clone(), final


def hlru_scan_triton(
    v: torch.Tensor,
    gate_logits: torch.Tensor,
    *,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    normalization: str = "softmax",
    mask: Optional[torch.Tensor] = None,
    chunk_size: Optional[int] = None,
    resets: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """H-LRU scan ``h_t = sum_{j=1..m} a_{t,j} h_{t-j} + a_{t,0} v_t``, ``a_t = normalize(gate_logits[:, t])``.

    v (B, T, N); gate_logits (B, T, N, m+1) (index 0 the input gate, j the weight of h_{t-j});
    initial_state (B, N, m) = [h_{-1}, ..., h_{-m}] or None (zeros); mask (B, T) or None (0: identity step);
    resets (B, T) bool or None (True: a document starts, all m lags entering step t > 0 are zero).
    Returns h (B, T, N) in v's dtype and, if output_final_state, the final lags (B, N, m) in float32.
    ``chunk_size`` forces the time-chunk length (default: ``scan_chunk_plan``).
    """
    B, T, N = v.shape
    m = gate_logits.shape[-1] - 1
    v, g, init, mask, resets = _prepare("hlru_scan_triton", "hlru", v, gate_logits, initial_state, mask, resets,
                                        normalization, m)
    if T == 0:
        h, final = _empty_scan(v, init, B, N, m)
    else:
        h, final = _run_scan("hlru", v, g, init, mask, normalization, chunk_size, resets)
    return h, (final if output_final_state else None)


def bdlru_scan_triton(
    v: torch.Tensor,
    gate_logits: torch.Tensor,
    *,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    normalization: str = "softmax",
    mask: Optional[torch.Tensor] = None,
    chunk_size: Optional[int] = None,
    resets: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """BD-LRU scan ``h_t = A_t h_{t-1} + a_{t,0} * v_t`` per block, rows of [a_0 | A] normalised.

    v (B, T, N, k); gate_logits (B, T, N, k, k+1) ([..., i, 0] row i's input gate, [..., i, 1+j] = A[i, j]);
    initial_state (B, N, k) or None; mask (B, T) or None; resets (B, T) bool or None (True: the state
    entering step t > 0 is zero). Returns h (B, T, N, k) in v's dtype and, if output_final_state, the final
    state (B, N, k) in float32.
    """
    B, T, N, k = v.shape
    v, g, init, mask, resets = _prepare("bdlru_scan_triton", "bdlru", v, gate_logits, initial_state, mask, resets,
                                        normalization, k)
    if T == 0:
        h, final = _empty_scan(v, init, B, N, k)
    elif k == 1:  # the same recurrence as H-LRU with m = 1: logits [a_0, A]
        h, final = _run_scan("hlru", v.view(B, T, N), g.view(B, T, N, 2), init, mask, normalization, chunk_size,
                             resets)
        h = h.view(B, T, N, 1)
    else:
        h, final = _run_scan("bdlru", v, g, init, mask, normalization, chunk_size, resets)
    return h, (final if output_final_state else None)
