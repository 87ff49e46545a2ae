"""The Triton scans against the float64 loop reference, forward and backward (v, gate_logits,
initial_state; the loss also reads the final state). On the CPU they run through Triton's interpreter
(TRITON_INTERPRET=1, set by conftest.py), so the shapes are small and odd. The same comparisons at
large shapes on a GPU: benchmarks/kernels/check_scan_gpu.py.
"""
import itertools

import pytest
import torch

pytest.importorskip("triton")

from hf_lrnn import ops_lrnn as ops  # noqa: E402
from hf_lrnn import scan_triton_lrnn as scan_triton  # noqa: E402
from hf_lrnn.gates_lrnn import GATE_NORMALIZATIONS  # noqa: E402
from hf_lrnn.scan_reference_lrnn import bdlru_scan_reference, hlru_scan_reference  # noqa: E402
from helpers import F64, relative_error, scan_inputs  # noqa: E402

KERNELS = {
    "hlru": (scan_triton.hlru_scan_triton, hlru_scan_reference),
    "bdlru": (scan_triton.bdlru_scan_triton, bdlru_scan_reference),
}


def _errors(kind, D, T, N, normalization, with_state, with_mask, chunk_size=None, dtype=torch.float32, B=2, seed=0):
    """Relative errors of h, the final state and the gradients of v, gate_logits (and initial_state)."""
    triton_fn, reference_fn = KERNELS[kind]
    v, logits, state, mask = scan_inputs(kind, B, T, N, D, normalization=normalization, with_state=with_state,
                                         with_mask=with_mask, seed=seed)
    inputs = [x.to(dtype) for x in (v, logits)] + ([state] if with_state else [])
    for x in inputs:
        x.requires_grad_(True)
    h, final = triton_fn(inputs[0], inputs[1], initial_state=inputs[2] if with_state else None,
                         output_final_state=True, normalization=normalization, mask=mask, chunk_size=chunk_size)
    assert h.dtype == dtype and h.shape == v.shape and final.dtype == torch.float32
    g = torch.Generator().manual_seed(seed + 1)
    dh, dfinal = torch.randn(h.shape, generator=g), torch.randn(final.shape, generator=g)
    grads = torch.autograd.grad((h.float() * dh).sum() + (final * dfinal).sum(), inputs)

    ref_inputs = [x.detach().to(F64).requires_grad_(True) for x in inputs]
    h_ref, final_ref = reference_fn(ref_inputs[0], ref_inputs[1], initial_state=ref_inputs[2] if with_state else None,
                                    output_final_state=True, normalization=normalization, mask=mask)
    ref_grads = torch.autograd.grad((h_ref * dh.to(F64)).sum() + (final_ref * dfinal.to(F64)).sum(), ref_inputs)
    names = ["h", "final", "dv", "dgate_logits", "dinitial_state"]
    errors = [relative_error(h, h_ref), relative_error(final, final_ref)] + [relative_error(a, b) for a, b in zip(grads, ref_grads)]
    assert all(torch.isfinite(x).all() for x in (h, final, *grads))
    return dict(zip(names, errors))


def _assert_close(errors, tol):
    bad = {k: e for k, e in errors.items() if not e <= tol}
    assert not bad, f"relative errors above {tol}: {bad} (all: {errors})"


# every normalisation x initial state x mask, at an odd length and width
@pytest.mark.parametrize("kind", ["hlru", "bdlru"])
@pytest.mark.parametrize(
    "normalization,with_state,with_mask", list(itertools.product(GATE_NORMALIZATIONS, [False, True], [False, True]))
)
def test_every_normalization(kind, normalization, with_state, with_mask):
    _assert_close(_errors(kind, 2, 7, 5, normalization, with_state, with_mask), 1e-5)


# lengths 1, 7, 63, 65, widths that are not powers of two, orders and block sizes up to 16 (BD-LRU k = 1
# runs the H-LRU m = 1 kernels, k <= 8 the sequential kernels, k = 16 the step kernels); a chunk size
# forces the chunked (summary, combine, rescan) path that GPUs take when B * N is small.
SHAPES = [
    # (D, T, N, normalization, with_state, with_mask, chunk_size)
    (1, 1, 5, "softmax", False, False, None),
    (3, 1, 5, "tanh_l1", True, True, None),
    (3, 63, 5, "relu_l1", True, True, None),
    (1, 63, 7, "none", True, True, 8),
    (2, 65, 3, "tanh_l1", False, True, 16),
    (4, 65, 5, "l1", True, False, 16),
    (5, 9, 3, "sigmoid_l1", True, True, 4),
    (8, 65, 3, "softmax", True, True, 20),
    (16, 7, 3, "softmax", True, True, None),
]


@pytest.mark.parametrize("kind", ["hlru", "bdlru"])
@pytest.mark.parametrize("D,T,N,normalization,with_state,with_mask,chunk_size", SHAPES)
def test_shapes(kind, D, T, N, normalization, with_state, with_mask, chunk_size):
    _assert_close(_errors(kind, D, T, N, normalization, with_state, with_mask, chunk_size), 1e-5)


@pytest.mark.parametrize("D,N,C", [(1, 5, 3), (3, 7, 4), (4, 17, 2), (8, 5, 3), (12, 3, 2), (16, 2, 3)])
@pytest.mark.parametrize("reverse,with_x0", [(False, True), (True, True), (False, False)])
def test_combine_kernel(D, N, C, reverse, with_x0):
    """The combine kernel against a float64 loop: the state entering each chunk from the chunk summaries [e | P]
    (B, C, N, D, D + 1), in time order or reversed, from x0 or zero (odd N: partial channel tiles)."""
    g = torch.Generator().manual_seed(D * 100 + N)
    summary = torch.randn(2, C, N, D, D + 1, generator=g)
    x0 = torch.randn(2, N, D, generator=g) if with_x0 else None
    out = scan_triton._combine(summary, x0, reverse)
    x = x0.to(F64) if with_x0 else torch.zeros(2, N, D, dtype=F64)
    expected = torch.empty(2, C, N, D, dtype=F64)
    for c in (reversed(range(C)) if reverse else range(C)):
        expected[:, c] = x
        s = summary[:, c].to(F64)
        x = s[..., 0] + (s[..., 1:] @ x[..., None])[..., 0]
    assert out.shape == expected.shape and out.dtype == torch.float32
    assert relative_error(out, expected) < 1e-6


@pytest.mark.parametrize("kind", ["hlru", "bdlru"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(kind, dtype):
    """h is stored in the input dtype; the state stays fp32 (against fp64 on the rounded inputs)."""
    _assert_close(_errors(kind, 3, 33, 6, "softmax", True, True, chunk_size=8, dtype=dtype), 2e-2)


@pytest.mark.parametrize("kind,size", [("hlru", 2), ("bdlru", 3)])
def test_through_ops(kind, size):
    """ops.hlru_scan / bdlru_scan with backend='triton' reach these kernels and agree with 'reference'."""
    fn = ops.hlru_scan if kind == "hlru" else ops.bdlru_scan
    v, logits, state, mask = scan_inputs(kind, 2, 5, 3, size, normalization="softmax", with_state=True, with_mask=True, seed=3)
    h, final = fn(v, logits, initial_state=state, output_final_state=True, backend="triton", mask=mask)
    h_ref, final_ref = fn(v.double(), logits.double(), initial_state=state.double(), output_final_state=True,
                          backend="reference", mask=mask)
    assert relative_error(h, h_ref) < 1e-5 and relative_error(final, final_ref) < 1e-5
    h, final = fn(v, logits, output_final_state=False, backend="triton")
    assert final is None and h.shape == v.shape


def test_unsupported_reasons():
    assert scan_triton.triton_unsupported_reason("hlru", 8) is None
    assert scan_triton.triton_unsupported_reason("bdlru", 16) is None
    assert "1..16" in scan_triton.triton_unsupported_reason("hlru", 17)
    assert "1..16" in scan_triton.triton_unsupported_reason("bdlru", 17)
    assert "unknown" in scan_triton.triton_unsupported_reason("lstm", 1)


def test_errors(monkeypatch):
    v, logits, _, _ = scan_inputs("hlru", 1, 3, 2, 1, normalization="softmax", with_state=False, with_mask=False, seed=0)
    with pytest.raises(TypeError, match="float64"):
        scan_triton.hlru_scan_triton(v.double(), logits.double())
    with pytest.raises(ValueError, match="1..16"):
        scan_triton.hlru_scan_triton(v, torch.zeros(1, 3, 2, 18))
    with pytest.raises(ValueError, match="normalization"):
        scan_triton.hlru_scan_triton(v, logits, normalization="relu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="CUDA"):
        scan_triton.hlru_scan_triton(v, logits)


# BD-LRU block sizes above 8 (the step kernels) chunk too: their summary passes hold a block tile's k + 1 state
# copies in one program (one batched matrix product a step). Chunks of 5 steps over T = 21 give 5 chunks, the last
# one step long; N = 3 at k = 9 leaves one of a tile's 4 blocks empty, N = 2 at k = 16 gives two tiles of one block.
@pytest.mark.parametrize("k,N,normalization,with_state,with_mask", [
    (9, 3, "tanh_l1", True, True),
    (16, 2, "softmax", True, True),
    (16, 2, "l1", False, False),
])
def test_bdlru_chunked_block_sizes_above_8(k, N, normalization, with_state, with_mask):
    _assert_close(_errors("bdlru", k, 21, N, normalization, with_state, with_mask, chunk_size=5), 1e-5)


# H-LRU orders above 8 chunk too: their summary passes run the m + 1 lag copies in groups over several programs
# (m = 9: 2 groups of 5, m = 16: 5 groups of 4, 3 copies unused). Chunks of
# 8 steps over T = 37 give 5 chunks, shorter than m = 9 and 16 lags (start states reach back over several chunks).
@pytest.mark.parametrize("m,normalization,with_state,with_mask", [
    (9, "tanh_l1", True, True),
    (9, "l1", False, False),
    (16, "softmax", True, True),  # ~25 s in the interpreter
])
def test_hlru_chunked_orders_above_8(m, normalization, with_state, with_mask):
    _assert_close(_errors("hlru", m, 37, 3, normalization, with_state, with_mask, chunk_size=8), 1e-5)


def test_empty_sequence():
    v, logits, state, _ = scan_inputs("bdlru", 2, 0, 3, 2, normalization="softmax", with_state=True, with_mask=False, seed=0)
    h, final = scan_triton.bdlru_scan_triton(v, logits, initial_state=state, output_final_state=True)
    assert h.shape == v.shape and torch.equal(final, state)



@pytest.mark.parametrize("kind,size", [("hlru", 2), ("bdlru", 3), ("bdlru", 1)])
def test_eager_paths_skip_the_operator_with_equal_results(kind, size, monkeypatch):
    """Eager code runs the kernels without the custom operator's dispatch: directly without autograd (prefill,
    eager decoding), through ``_EagerScan`` with it; the operator (what torch.compile calls) gives the same h,
    final state and gradients, bit for bit."""
    torch.manual_seed(0)
    B, T, N = 2, 37, 6
    v = torch.randn(B, T, N, size) if kind == "bdlru" else torch.randn(B, T, N)
    g = torch.randn(*v.shape, size + 1) if kind == "bdlru" else torch.randn(B, T, N, size + 1)
    init, mask = torch.randn(B, N, size), (torch.rand(B, T) > 0.2).long()
    scan = scan_triton.bdlru_scan_triton if kind == "bdlru" else scan_triton.hlru_scan_triton
    kwargs = dict(initial_state=init, output_final_state=True, mask=mask, chunk_size=8)
    calls = []
    for name in ("hlru_scan_op", "bdlru_scan_op"):
        op = getattr(scan_triton, name)
        monkeypatch.setattr(scan_triton, name, lambda *a, op=op: calls.append(1) or op(*a))
    with torch.no_grad():
        h_direct, final_direct = scan(v, g, **kwargs)
    leaves = [x.clone().requires_grad_() for x in (v, g, init)]
    h_eager, final_eager = scan(leaves[0], leaves[1], **{**kwargs, "initial_state": leaves[2]})
    assert not calls and h_eager.requires_grad
    grads_eager = torch.autograd.grad((h_eager.square().sum() + final_eager.sum()), leaves)
    # the operator on the kernels' inputs, as torch.compile calls it (scan_triton._prepare's forms)
    leaves_op = [x.clone().requires_grad_() for x in (v, g, init)]
    op_kind, op_v, op_g = ("hlru", leaves_op[0].view(B, T, N), leaves_op[1].view(B, T, N, 2)) if size == 1 else (
        kind, leaves_op[0], leaves_op[1])
    op = scan_triton.hlru_scan_op if op_kind == "hlru" else scan_triton.bdlru_scan_op
    h_op, final_op = op(op_v, op_g, leaves_op[2], (mask != 0).to(torch.int8), "softmax", 8, None)
    grads_op = torch.autograd.grad((h_op.square().sum() + final_op.sum()), leaves_op)
    assert torch.equal(h_direct, h_eager.detach()) and torch.equal(final_direct, final_eager.detach())
    assert torch.equal(h_eager.detach().view(h_op.shape), h_op.detach()) and torch.equal(final_eager, final_op)
    for got, want in zip(grads_eager, grads_op):
        assert torch.equal(got, want)


@pytest.mark.parametrize("kind,D", [("hlru", 2), ("bdlru", 3)])
@pytest.mark.parametrize("used", ["h", "final"])
def test_gradient_through_one_output(kind, D, used, monkeypatch):
    """A loss that reads only h, or only the final state: eager autograd passes None for the other output's gradient
    (``_EagerScan`` does not materialise zeros for it), and the gradients still match the float64 reference."""
    triton_fn, reference_fn = KERNELS[kind]
    received = []
    output_grads = scan_triton._output_grads
    monkeypatch.setattr(scan_triton, "_output_grads",
                        lambda h, dh, dfinal: received.append((dh, dfinal)) or output_grads(h, dh, dfinal))
    v, logits, state, _ = scan_inputs(kind, 2, 37, 5, D, normalization="softmax", with_state=True, with_mask=False)
    leaves = [x.clone().requires_grad_(True) for x in (v, logits, state)]
    ref_leaves = [x.detach().to(F64).requires_grad_(True) for x in (v, logits, state)]
    losses = []
    for fn, (x, g, s) in ((triton_fn, leaves), (reference_fn, ref_leaves)):
        kwargs = dict(chunk_size=8) if fn is triton_fn else {}
        h, final = fn(x, g, initial_state=s, output_final_state=True, **kwargs)
        losses.append(h.square().sum() if used == "h" else final.square().sum())
    grads = torch.autograd.grad(losses[0], leaves)
    ref_grads = torch.autograd.grad(losses[1], ref_leaves)
    assert len(received) == 1 and (received[0][1] is None if used == "h" else received[0][0] is None)
    for got, want in zip(grads, ref_grads):
        assert torch.isfinite(got).all() and relative_error(got, want) < 1e-5
