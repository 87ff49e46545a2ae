"""Document boundaries in every scan implementation: ``resets`` (B, T) bool, True where a document starts
(the state entering that step is zero; at t = 0 the initial state applies). A packed row must equal each
of its documents run alone through the float64 reference loop without resets (the first document of a row
from the row's initial state, the others from zero; the final state is the last document's), in h, the
final state and the gradients of v, gate_logits and initial_state. The torch scans run in float64 (to
1e-10), the Triton kernels in float32 through Triton's interpreter (TRITON_INTERPRET=1, conftest.py) at
tiny shapes (to 1e-5, as tests/test_scan_triton.py).
"""
import pytest
import torch

from hf_lrnn.gates import GATE_NORMALIZATIONS
from hf_lrnn.scan_chunked import bdlru_scan_chunked, hlru_scan_chunked
from hf_lrnn.scan_reference import bdlru_scan_reference, hlru_scan_reference

F64 = torch.float64
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
    mask = None
    if with_mask:
        mask = torch.rand(B, T, generator=g) > 0.3
        mask[0, 7 % T] = False  # a padding step on a document start
    resets = torch.zeros(B, T, dtype=torch.bool)
    for b, lengths in enumerate(splits):
        assert sum(lengths) == T
        resets[b, torch.tensor([0] + lengths[:-1]).cumsum(0)] = True
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


def _rel(x, ref):
    return ((x.to(F64) - ref).norm() / ref.norm().clamp_min(1e-30)).item()


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
    errors = [_rel(h, h_ref), _rel(final, final_ref)] + [_rel(a, b) for a, b in zip(grads, ref_grads)]
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


def _scan_outputs(scan, kind, D, resets, **kwargs):
    """h, final state and the gradients of v, gate_logits, initial_state of one scan call."""
    v, logits, state, mask, _ = _packed_inputs(kind, D, ROW_SPLITS, 3, "softmax", True, True, False, seed=5)
    dtype = kwargs.pop("dtype", F64)
    leaves = [x.to(dtype).requires_grad_() for x in (v, logits, state)]
    h, final = scan(leaves[0], leaves[1], initial_state=leaves[2], output_final_state=True, mask=mask,
                    resets=resets, **kwargs)
    g = torch.Generator().manual_seed(6)
    loss = (h * torch.randn(h.shape, generator=g, dtype=F64).to(h.dtype)).sum() + (final * torch.randn(final.shape, generator=g, dtype=F64).to(final.dtype)).sum()
    return (h, final) + torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("name", TORCH_SCANS)
@pytest.mark.parametrize("kind,D", [("hlru", 2), ("bdlru", 3)])
def test_torch_resets_without_starts_change_nothing(name, kind, D):
    """resets all False, or True only at t = 0, give bit for bit what resets=None gives."""
    scan, kwargs = _torch_scan(name, kind)
    T = sum(ROW_SPLITS[0])
    baseline = _scan_outputs(scan, kind, D, None, **kwargs)
    only_first = torch.zeros(2, T, dtype=torch.bool)
    only_first[:, 0] = True
    for resets in (torch.zeros(2, T, dtype=torch.bool), only_first):
        for a, b in zip(_scan_outputs(scan, kind, D, resets, **kwargs), baseline):
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
