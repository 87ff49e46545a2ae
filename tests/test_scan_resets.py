"""Document boundaries in every scan implementation: ``resets`` (B, T) bool, True where a document starts
(the state entering that step is zero; at t = 0 the initial state applies). A packed row must equal each
of its documents run alone through the float64 reference loop without resets (the first document of a row
from the row's initial state, the others from zero; the final state is the last document's), in h, the
final state and the gradients of v, gate_logits and initial_state. The torch scans run in float64 (to
1e-10), the Triton kernels in float32 through Triton's interpreter (TRITON_INTERPRET=1, conftest.py) at
tiny shapes (to 1e-5, as tests/test_scan_triton.py).
"""
import importlib

import pytest
import torch

from hf_lrnn.gates_lrnn import GATE_NORMALIZATIONS
from hf_lrnn.scan_chunked_lrnn import bdlru_scan_chunked, hlru_scan_chunked
from hf_lrnn.scan_reference_lrnn import bdlru_scan_reference, hlru_scan_reference
from helpers import F64, relative_error

MIXERS = [("hlru", 1), ("hlru", 2), ("hlru", 3), ("bdlru", 1), ("bdlru", 2), ("bdlru", 4)]  # (kind, m or k)
# Two rows of 42 steps split differently; documents of one token; with chunks of 4 steps, starts fall on chunk
# edges (8), on a chunk's last step (7, 41) and inside chunks.
ROW_SPLITS = ([7, 1, 13, 5, 16], [1, 20, 4, 16, 1])
# Starts on chunk edges only, for chunks of 4 steps (and 8 for the second row).
EDGE_SPLITS = ([4, 4, 1, 3, 8, 4], [8, 4, 4, 4, 4])
REFERENCES = {"hlru": hlru_scan_reference, "bdlru": bdlru_scan_reference}
TORCH_SCANS = {  # name -> (H-LRU scan, BD-LRU scan, extra keyword arguments)
    "reference": (hlru_scan_reference, bdlru_scan_reference, {}),
    "chunked": (hlru_scan_chunked, bdlru_scan_chunked, {"chunk_size": 4}),
}


def _packed_inputs(kind, D, splits, N, normalization, with_state, with_mask, extreme, seed):
    """float64 v, gate logits, initial state (or None), mask (or None) and the resets of rows packed from
    documents of the lengths in ``splits`` (one list per row)."""
    B, T = len(splits), sum(splits[0])
    g = torch.Generator().manual_seed(seed)
    tail = (N,) if kind == "hlru" else (N, D)
    v = torch.randn(B, T, *tail, dtype=F64, generator=g)
    logits = torch.randn(B, T, *tail, D + 1, dtype=F64, generator=g)
    if extreme:  # +-1e4: saturated gates (ties at +1e4 within a row, exp underflow)
        logits = 1e4 * logits.sign()
    else:
        logits = (0.3 if normalization == "none" else 2.0) * logits  # raw gates: keep the recurrence bounded
    state = torch.randn(B, N, D, dtype=F64, generator=g) if with_state else None
    resets = torch.zeros(B, T, dtype=torch.bool)
    for b, lengths in enumerate(splits):
        assert sum(lengths) == T
        resets[b, torch.tensor([0] + lengths[:-1]).cumsum(0)] = True
    mask = None
    if with_mask:
        mask = torch.rand(B, T, generator=g) > 0.3
        mask[0, resets[0].nonzero()[-1]] = False  # a padding step on a document start (row 0's last)
    return v, logits, state, mask, resets


def _documents_alone(kind, v, logits, state, mask, splits, normalization):
    """h (B, T, ...) and final state of every document run alone through the reference, without resets."""
    hs, finals = [], []
    for b, lengths in enumerate(splits):
        pieces, start = [], 0
        for i, length in enumerate(lengths):
            steps = slice(start, start + length)
            h, final = REFERENCES[kind](
                v[b : b + 1, steps], logits[b : b + 1, steps],
                initial_state=state[b : b + 1] if state is not None and i == 0 else None,
                output_final_state=True, normalization=normalization,
                mask=mask[b : b + 1, steps] if mask is not None else None)
            pieces.append(h)
            start += length
        hs.append(torch.cat(pieces, 1))
        finals.append(final)
    return torch.cat(hs), torch.cat(finals)


def packed_errors(scan, kind, D, splits, normalization, with_state=True, with_mask=False, extreme=False,
                  dtype=F64, N=3, seed=0, **scan_kwargs):
    """Relative errors of the packed scan ``scan`` (inputs in ``dtype``) against the documents alone."""
    v, logits, state, mask, resets = _packed_inputs(kind, D, splits, N, normalization, with_state, with_mask,
                                                    extreme, seed)
    inputs = [v.to(dtype), logits.to(dtype)] + ([state.to(dtype)] if with_state else [])
    leaves = [x.clone().requires_grad_() for x in inputs]
    h, final = scan(leaves[0], leaves[1], initial_state=leaves[2] if with_state else None, output_final_state=True,
                    normalization=normalization, mask=mask, resets=resets, **scan_kwargs)
    g = torch.Generator().manual_seed(seed + 1)
    dh, dfinal = torch.randn(h.shape, dtype=F64, generator=g), torch.randn(final.shape, dtype=F64, generator=g)
    grads = torch.autograd.grad((h.to(F64) * dh).sum() + (final.to(F64) * dfinal).sum(), leaves)

    ref_leaves = [x.detach().to(F64).requires_grad_() for x in inputs]
    h_ref, final_ref = _documents_alone(kind, ref_leaves[0], ref_leaves[1], ref_leaves[2] if with_state else None,
                                        mask, splits, normalization)
    ref_grads = torch.autograd.grad((h_ref * dh).sum() + (final_ref * dfinal).sum(), ref_leaves)
    assert all(torch.isfinite(x).all() for x in (h, final, *grads))
    names = ["h", "final", "dv", "dgate_logits", "dinitial_state"]
    errors = [relative_error(h, h_ref), relative_error(final, final_ref)] + [
        relative_error(a, b) for a, b in zip(grads, ref_grads)]
    return dict(zip(names, errors))


def assert_below(errors, tol):
    bad = {name: e for name, e in errors.items() if not e <= tol}
    assert not bad, f"relative errors above {tol}: {bad} (all: {errors})"


def _torch_scan(name, kind):
    hlru, bdlru, kwargs = TORCH_SCANS[name]
    return (hlru if kind == "hlru" else bdlru), kwargs


@pytest.mark.parametrize("name", TORCH_SCANS)
@pytest.mark.parametrize("kind,D", MIXERS)
@pytest.mark.parametrize("normalization", GATE_NORMALIZATIONS)
@pytest.mark.parametrize("with_state,with_mask", [(False, False), (True, False), (True, True)])
def test_torch_packed_equals_documents_alone(name, kind, D, normalization, with_state, with_mask):
    scan, kwargs = _torch_scan(name, kind)
    errors = packed_errors(scan, kind, D, ROW_SPLITS, normalization, with_state, with_mask, **kwargs)
    assert_below(errors, 1e-10)


@pytest.mark.parametrize("kind,D", MIXERS)
@pytest.mark.parametrize("chunk_size", [1, 3, 4, 8])
@pytest.mark.parametrize("with_mask", [False, True])
def test_chunked_with_starts_on_chunk_edges(kind, D, chunk_size, with_mask):
    scan, _ = _torch_scan("chunked", kind)
    for splits in (EDGE_SPLITS, ROW_SPLITS):
        errors = packed_errors(scan, kind, D, splits, "softmax", True, with_mask, chunk_size=chunk_size)
        assert_below(errors, 1e-10)


@pytest.mark.parametrize("name", TORCH_SCANS)
@pytest.mark.parametrize("kind,D", MIXERS)
@pytest.mark.parametrize("with_mask", [False, True])
def test_torch_single_step_rows(name, kind, D, with_mask):
    """T = 1: a start at t = 0 changes nothing (the initial state applies)."""
    scan, kwargs = _torch_scan(name, kind)
    assert_below(packed_errors(scan, kind, D, ([1], [1]), "softmax", True, with_mask, **kwargs), 1e-10)


@pytest.mark.parametrize("name", TORCH_SCANS)
@pytest.mark.parametrize("kind,D", MIXERS)
@pytest.mark.parametrize("normalization", [n for n in GATE_NORMALIZATIONS if n != "none"])
def test_torch_extreme_logits(name, kind, D, normalization):
    scan, kwargs = _torch_scan(name, kind)
    errors = packed_errors(scan, kind, D, ROW_SPLITS, normalization, True, True, extreme=True, **kwargs)
    assert_below(errors, 1e-10)


def _scan_outputs(scan, kind, D, T, resets, dtype=F64, **kwargs):
    """h, final state and the gradients of v, gate_logits, initial_state of one scan call (B = 2, T, N = 2)."""
    v, logits, state, mask, _ = _packed_inputs(kind, D, ([T], [T]), 2, "softmax", True, True, False, seed=5)
    leaves = [x.to(dtype).requires_grad_() for x in (v, logits, state)]
    h, final = scan(leaves[0], leaves[1], initial_state=leaves[2], output_final_state=True, mask=mask,
                    resets=resets, **kwargs)
    g = torch.Generator().manual_seed(6)
    dh, dfinal = torch.randn(h.shape, generator=g, dtype=F64), torch.randn(final.shape, generator=g, dtype=F64)
    loss = (h * dh.to(h.dtype)).sum() + (final * dfinal.to(final.dtype)).sum()
    return (h, final) + torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("name", TORCH_SCANS)
@pytest.mark.parametrize("kind,D", [("hlru", 2), ("bdlru", 3)])
def test_torch_resets_without_starts_change_nothing(name, kind, D):
    """resets all False, or True only at t = 0, give bit for bit what resets=None gives."""
    scan, kwargs = _torch_scan(name, kind)
    T = sum(ROW_SPLITS[0])
    baseline = _scan_outputs(scan, kind, D, T, None, **kwargs)
    only_first = torch.zeros(2, T, dtype=torch.bool)
    only_first[:, 0] = True
    for resets in (torch.zeros(2, T, dtype=torch.bool), only_first):
        for a, b in zip(_scan_outputs(scan, kind, D, T, resets, **kwargs), baseline):
            assert torch.equal(a, b)


def _bad_resets_cases(T):
    return [
        (torch.zeros(2, T + 1, dtype=torch.bool), ValueError, r"resets must have shape \(B, T\)"),
        (torch.zeros(2, T), TypeError, "resets must be a bool tensor"),
        (torch.zeros(2, T, dtype=torch.int8), TypeError, "resets must be a bool tensor"),
        (torch.zeros(2, T, dtype=torch.bool, device="meta"), ValueError, "resets is on meta"),
        ([[True] * T] * 2, TypeError, "resets must be a bool"),
    ]


@pytest.mark.parametrize("scan", [hlru_scan_reference, bdlru_scan_reference, hlru_scan_chunked, bdlru_scan_chunked])
def test_torch_bad_resets_raise_naming_resets(scan):
    kind = "hlru" if scan.__name__.startswith("hlru") else "bdlru"
    v, logits, _, _, _ = _packed_inputs(kind, 2, ([3], [3]), 2, "softmax", False, False, False, seed=0)
    for resets, error, message in _bad_resets_cases(3):
        with pytest.raises(error, match=message):
            scan(v, logits, resets=resets)


# ---------------------------------------------------------------------------------------------
# Triton kernels (float32, interpreter): sequential kernels (H-LRU; BD-LRU k = 1 through H-LRU m = 1,
# k <= 8), step kernels (BD-LRU k = 9, 16), and the chunked path (summary, combine, rescan) forced by chunk_size.
# ---------------------------------------------------------------------------------------------

TRITON_MIXERS = MIXERS + [("bdlru", 9)]
# 13 steps; with chunks of 4, starts on a chunk's last step (3, 11), on chunk edges (4, 8) and inside (1, 7, 9).
TRITON_SPLITS = ([3, 1, 5, 4], [1, 6, 2, 3, 1])
TRITON_EDGE_SPLITS = ([4, 4, 1, 3, 1], [8, 4, 1])


def _triton_scan(kind):
    scan_triton = importlib.import_module("hf_lrnn.scan_triton_lrnn")
    return scan_triton.hlru_scan_triton if kind == "hlru" else scan_triton.bdlru_scan_triton


@pytest.mark.parametrize("kind,D", TRITON_MIXERS)
@pytest.mark.parametrize("normalization", GATE_NORMALIZATIONS)
def test_triton_packed_equals_documents_alone(kind, D, normalization):
    with_state, with_mask = GATE_NORMALIZATIONS.index(normalization) % 2 == 0, normalization in ("softmax", "l1")
    errors = packed_errors(_triton_scan(kind), kind, D, TRITON_SPLITS, normalization, with_state, with_mask,
                           dtype=torch.float32, N=2)
    assert_below(errors, 1e-5)


@pytest.mark.parametrize("kind,D", [m for m in MIXERS if m != ("bdlru", 1)])
@pytest.mark.parametrize("with_mask", [False, True])
def test_triton_chunked_with_starts_on_chunk_edges(kind, D, with_mask):
    """Chunks of 4 steps: the chunk summaries, the combine kernel and the rescan, forward and backward."""
    for splits in (TRITON_EDGE_SPLITS, TRITON_SPLITS):
        errors = packed_errors(_triton_scan(kind), kind, D, splits, "softmax", True, with_mask, dtype=torch.float32,
                               N=2, chunk_size=4)
        assert_below(errors, 1e-5)


# Sizes above 8: H-LRU m > 8 (the summaries' copy groups) and BD-LRU k > 8 (the step kernels, all summary copies in
# one program); N = 3 blocks fill 3 of a k = 9 tile's 4 and make 3 tiles of one block at k = 16. Size 16 costs
# ~25 s a case in the interpreter, so it runs once each way.
@pytest.mark.parametrize("kind,D,with_mask", [("hlru", 9, False), ("hlru", 9, True), ("hlru", 16, True),
                                              ("bdlru", 9, False), ("bdlru", 9, True), ("bdlru", 16, True)])
def test_triton_chunked_sizes_above_8_with_starts(kind, D, with_mask):
    """m or k > 8 in chunks of 4 steps: the summary passes, the combine kernel and the rescan, with document
    starts on and between chunk edges, forward and backward."""
    for splits in (TRITON_EDGE_SPLITS, TRITON_SPLITS):
        errors = packed_errors(_triton_scan(kind), kind, D, splits, "softmax", True, with_mask,
                               dtype=torch.float32, N=3, chunk_size=4)
        assert_below(errors, 1e-5)


@pytest.mark.parametrize("kind,D,normalization", [("hlru", 9, "sigmoid_l1"), ("hlru", 16, "softmax"),
                                                  ("bdlru", 9, "sigmoid_l1"), ("bdlru", 16, "softmax")])
def test_triton_chunked_sizes_above_8_extreme_logits(kind, D, normalization):
    """Logits of +-1e4 (saturated gates) with chunks of 4 steps: finite and equal to the documents alone."""
    errors = packed_errors(_triton_scan(kind), kind, D, TRITON_SPLITS, normalization, True, True, extreme=True,
                           dtype=torch.float32, N=3, chunk_size=4)
    assert_below(errors, 1e-5)


@pytest.mark.parametrize("kind,D", [("hlru", 3), ("bdlru", 1), ("bdlru", 4), ("bdlru", 9)])
def test_triton_single_step_rows(kind, D):
    errors = packed_errors(_triton_scan(kind), kind, D, ([1], [1]), "softmax", True, True, dtype=torch.float32, N=2)
    assert_below(errors, 1e-5)


@pytest.mark.parametrize("kind,D", [("hlru", 2), ("bdlru", 2), ("bdlru", 9)])
@pytest.mark.parametrize("normalization", [n for n in GATE_NORMALIZATIONS if n != "none"])
def test_triton_extreme_logits(kind, D, normalization):
    errors = packed_errors(_triton_scan(kind), kind, D, TRITON_SPLITS, normalization, True, True, extreme=True,
                           dtype=torch.float32, N=2)
    assert_below(errors, 1e-5)


@pytest.mark.parametrize("kind,D,chunk_size", [("hlru", 2, None), ("hlru", 3, 4), ("bdlru", 1, 4), ("bdlru", 2, 4),
                                               ("bdlru", 9, None)])
def test_triton_resets_without_starts_change_nothing(kind, D, chunk_size):
    """resets all False, or True only at t = 0, give bit for bit what resets=None gives."""
    scan = _triton_scan(kind)
    T = sum(TRITON_SPLITS[0])
    kwargs = dict(normalization="softmax", chunk_size=chunk_size, dtype=torch.float32)
    baseline = _scan_outputs(scan, kind, D, T, None, **kwargs)
    only_first = torch.zeros(2, T, dtype=torch.bool)
    only_first[:, 0] = True
    for resets in (torch.zeros(2, T, dtype=torch.bool), only_first):
        for a, b in zip(_scan_outputs(scan, kind, D, T, resets, **kwargs), baseline):
            assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["hlru", "bdlru"])
def test_triton_bad_resets_raise_naming_resets(kind):
    v, logits, _, _, _ = _packed_inputs(kind, 2, ([3], [3]), 2, "softmax", False, False, False, seed=0)
    for resets, error, message in _bad_resets_cases(3):
        with pytest.raises(error, match=message):
            _triton_scan(kind)(v.float(), logits.float(), resets=resets)


@pytest.mark.parametrize("kind,D", [("hlru", 2), ("bdlru", 2), ("bdlru", 9)])
def test_triton_custom_ops_with_resets_pass_opcheck(kind, D):
    """The operators' schema, fake implementations and autograd formula with the kernels' int8 resets."""
    scan_triton = importlib.import_module("hf_lrnn.scan_triton_lrnn")
    op = scan_triton.hlru_scan_op if kind == "hlru" else scan_triton.bdlru_scan_op
    v, logits, state, mask, resets = _packed_inputs(kind, D, ([2, 1, 2], [1, 4]), 2, "softmax", True, True, False,
                                                    seed=1)
    v, logits, state = (x.float().requires_grad_() for x in (v, logits, state))
    starts = resets.to(torch.int8)
    starts[:, 0] = 0
    torch.library.opcheck(op, (v, logits, state, mask.to(torch.int8), "softmax", None, starts))


@pytest.mark.parametrize("kind,D", [("hlru", 2), ("bdlru", 3)])
def test_triton_inference_path_equals_the_operator_with_resets(kind, D):
    """Without autograd the scan runs its implementation directly; with resets it equals the operator's result."""
    scan = _triton_scan(kind)
    v, logits, state, mask, resets = _packed_inputs(kind, D, TRITON_SPLITS, 2, "softmax", True, True, False, seed=2)
    kwargs = dict(initial_state=state.float(), output_final_state=True, mask=mask, resets=resets, chunk_size=4)
    with torch.no_grad():
        h_direct, final_direct = scan(v.float(), logits.float(), **kwargs)
    h_op, final_op = scan(v.float().requires_grad_(), logits.float(), **kwargs)
    assert h_op.requires_grad
    assert torch.equal(h_direct, h_op.detach()) and torch.equal(final_direct, final_op.detach())
