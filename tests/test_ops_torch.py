"""The torch backends of hlru_scan / bdlru_scan against the float64 loop reference, fwd and bwd; the public
ops' checks and dispatch; every backend on extreme logits."""
import pytest
import torch

from hf_lrnn import ops_lrnn as ops
from hf_lrnn.gates_lrnn import GATE_NORMALIZATIONS, normalize_gates
from hf_lrnn.scan_chunked_lrnn import bdlru_scan_chunked, hlru_scan_chunked
from hf_lrnn.scan_reference_lrnn import bdlru_scan_reference, hlru_scan_reference
from helpers import F64, relative_error, scan_inputs

DIVIDING = [n for n in GATE_NORMALIZATIONS if n != "none"]  # the normalisations that divide by a sum
BACKENDS = ["reference", "torch"] + (["triton"] if ops.TRITON_IMPORT_ERROR is None else [])


def _grads(fn, inputs):
    """Forward through fn, backward a random cotangent through h and the final state."""
    leaves = [x.detach().clone().requires_grad_() if x is not None else None for x in inputs]
    h, final = fn(*leaves)
    g = torch.Generator().manual_seed(123)
    loss = (h * torch.randn(h.shape, dtype=h.dtype, generator=g)).sum() + (final * torch.randn(final.shape, dtype=final.dtype, generator=g)).sum()
    loss.backward()
    return [h.detach(), final.detach()] + [x.grad if x is not None else None for x in leaves]


def _assert_close(a, b, tol, what):
    err = relative_error(a, b)
    assert err < tol, f"{what}: relative error {err:.2e} >= {tol:.0e}"


@pytest.mark.parametrize("normalization", GATE_NORMALIZATIONS)
@pytest.mark.parametrize("T", [1, 7, 63, 65])
@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("with_state,with_mask", [(False, False), (True, False), (True, True)])
def test_hlru_chunked_matches_reference_fwd_bwd(normalization, T, m, with_state, with_mask):
    v, logits, state, mask = scan_inputs("hlru", 2, T, 5, m, with_state=with_state, with_mask=with_mask, dtype=F64, seed=T * 10 + m)
    ref = _grads(lambda v, g, s: hlru_scan_reference(v, g, initial_state=s, output_final_state=True, normalization=normalization, mask=mask), [v, logits, state])
    out = _grads(lambda v, g, s: hlru_scan_chunked(v, g, initial_state=s, output_final_state=True, normalization=normalization, mask=mask, chunk_size=8), [v, logits, state])
    for a, b, name in zip(out, ref, ["h", "final_state", "dv", "dgate_logits", "dinitial_state"]):
        if b is not None:
            _assert_close(a, b, 1e-10, name)


@pytest.mark.parametrize("normalization", GATE_NORMALIZATIONS)
@pytest.mark.parametrize("T", [1, 7, 65])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("with_state,with_mask", [(False, False), (True, True)])
def test_bdlru_chunked_matches_reference_fwd_bwd(normalization, T, k, with_state, with_mask):
    v, logits, state, mask = scan_inputs("bdlru", 2, T, 3, k, with_state=with_state, with_mask=with_mask, dtype=F64, seed=T * 10 + k)
    ref = _grads(lambda v, g, s: bdlru_scan_reference(v, g, initial_state=s, output_final_state=True, normalization=normalization, mask=mask), [v, logits, state])
    out = _grads(lambda v, g, s: bdlru_scan_chunked(v, g, initial_state=s, output_final_state=True, normalization=normalization, mask=mask, chunk_size=8), [v, logits, state])
    for a, b, name in zip(out, ref, ["h", "final_state", "dv", "dgate_logits", "dinitial_state"]):
        if b is not None:
            _assert_close(a, b, 1e-10, name)


def test_reference_is_the_recurrence_written_out():
    """Second-order H-LRU by hand for 3 steps, and a 2x2 BD-LRU step."""
    v = torch.tensor([[[1.0], [2.0], [3.0]]], dtype=F64)  # (1, 3, 1)
    logits = torch.randn(1, 3, 1, 3, dtype=F64)
    a = torch.softmax(logits, -1)[0, :, 0]  # (3, 3)
    s0 = torch.tensor([[[0.5, -0.25]]], dtype=F64)  # h_{-1}, h_{-2}
    h0 = a[0, 1] * 0.5 + a[0, 2] * -0.25 + a[0, 0] * 1
    h1 = a[1, 1] * h0 + a[1, 2] * 0.5 + a[1, 0] * 2
    h2 = a[2, 1] * h1 + a[2, 2] * h0 + a[2, 0] * 3
    h, final = hlru_scan_reference(v, logits, initial_state=s0, output_final_state=True)
    assert torch.allclose(h[0, :, 0], torch.stack([h0, h1, h2]))
    assert torch.allclose(final[0, 0], torch.stack([h2, h1]))

    v = torch.randn(1, 1, 1, 2, dtype=F64)
    logits = torch.randn(1, 1, 1, 2, 3, dtype=F64)
    s0 = torch.randn(1, 1, 2, dtype=F64)
    a = torch.softmax(logits[0, 0, 0], -1)
    expected = a[:, 1:] @ s0[0, 0] + a[:, 0] * v[0, 0, 0]
    h, _ = bdlru_scan_reference(v, logits, initial_state=s0)
    assert torch.allclose(h[0, 0, 0], expected)


@pytest.mark.parametrize("normalization", ["softmax", "sigmoid_l1", "relu_l1", "tanh_l1", "l1"])
def test_l1_normalisations_have_unit_l1_norm_at_most(normalization):
    coeffs = normalize_gates(5 * torch.randn(1000, 6, dtype=F64), normalization)
    assert (coeffs.abs().sum(-1) <= 1 + 1e-12).all()


@pytest.mark.parametrize("normalization", ["softmax", "sigmoid_l1", "relu_l1", "tanh_l1", "l1"])
def test_state_is_bounded_by_inputs(normalization):
    """Prop. 1: with sum_k |a_k| <= 1, |h_t| <= max(|h_0|, max_s |v_s|), here over 3000 steps."""
    B, T = 2, 3000
    v, logits, state, _ = scan_inputs("hlru", B, T, 6, 3, with_state=True, dtype=F64, seed=7)
    logits = 4 * logits  # sharp gates: coefficients near 0 and 1 stress the bound
    bound = torch.maximum(state.abs().amax((1, 2)), v.abs().amax((1, 2)))  # per batch row
    h, _ = ops.hlru_scan(v.float(), logits.float(), initial_state=state.float(), normalization=normalization, backend="torch")
    assert torch.isfinite(h).all()
    assert (h.double().abs().amax((1, 2)) <= bound * (1 + 1e-5)).all()

    v, logits, state, _ = scan_inputs("bdlru", B, T, 4, 4, with_state=True, dtype=F64, seed=8)
    bound = torch.maximum(state.abs().amax((1, 2)), v.abs().amax((1, 2, 3)))
    h, _ = ops.bdlru_scan(v.float(), 4 * logits.float(), initial_state=state.float(), normalization=normalization, backend="torch")
    assert torch.isfinite(h).all()
    assert (h.double().abs().amax((1, 2, 3)) <= bound * (1 + 1e-5)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_inputs_accumulate_in_fp32(dtype):
    v, logits, state, _ = scan_inputs("hlru", 2, 300, 8, 2, with_state=True, dtype=F64, seed=3)
    h_ref, final_ref = hlru_scan_reference(v, logits, initial_state=state, output_final_state=True)
    h, final = ops.hlru_scan(v.to(dtype), logits.to(dtype), initial_state=state.float(), output_final_state=True, backend="torch")
    assert h.dtype == dtype and final.dtype == torch.float32
    # the error is that of rounding the inputs and h once, not one that grows with T
    _assert_close(h.double(), h_ref, 2e-2 if dtype != torch.float32 else 1e-5, "h")


def test_public_api_shapes_and_final_state_flag():
    v, logits, state, _ = scan_inputs("hlru", 3, 20, 7, 2, with_state=True, dtype=F64, seed=1)
    h, final = ops.hlru_scan(v, logits, initial_state=state)
    assert h.shape == v.shape and final is None
    h, final = ops.hlru_scan(v, logits, initial_state=state, output_final_state=True)
    assert final.shape == (3, 7, 2)
    v, logits, state, _ = scan_inputs("bdlru", 3, 20, 7, 3, with_state=True, dtype=F64, seed=1)
    h, final = ops.bdlru_scan(v, logits, initial_state=state, output_final_state=True, backend="reference")
    assert h.shape == v.shape and final.shape == (3, 7, 3)


def test_public_api_errors_name_the_problem():
    v, logits, state, _ = scan_inputs("hlru", 2, 5, 4, 2, with_state=True, dtype=F64, seed=0)
    with pytest.raises(ValueError, match=r"v must have shape \(B, T, N\)"):
        ops.hlru_scan(v[0], logits)
    with pytest.raises(ValueError, match="gate_logits must have shape"):
        ops.hlru_scan(v, logits[:, :, :3])
    with pytest.raises(ValueError, match="initial_state must have shape"):
        ops.hlru_scan(v, logits, initial_state=state[:, :, :1])
    with pytest.raises(ValueError, match="mask must have shape"):
        ops.hlru_scan(v, logits, mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="normalization must be one of"):
        ops.hlru_scan(v, logits, normalization="softmax2")
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.hlru_scan(v, logits, backend="cuda")
    with pytest.raises(TypeError, match="floating point"):
        ops.hlru_scan(v.long(), logits)
    bv, blogits, _, _ = scan_inputs("bdlru", 2, 5, 3, 4, with_state=False, dtype=F64, seed=0)
    with pytest.raises(ValueError, match=r"gate_logits must have shape \(B, T, N, k, k\+1\)"):
        ops.bdlru_scan(bv, blogits[..., :4])
    with pytest.raises(ValueError, match="initial_state must have shape"):
        ops.bdlru_scan(bv, blogits, initial_state=torch.zeros(2, 3, 5))


def test_auto_backend_on_cpu_is_torch_and_matches_reference():
    v, logits, state, _ = scan_inputs("bdlru", 2, 40, 3, 2, with_state=True, dtype=F64, seed=4)
    h_auto, f_auto = ops.bdlru_scan(v, logits, initial_state=state, output_final_state=True)
    h_ref, f_ref = bdlru_scan_reference(v, logits, initial_state=state, output_final_state=True)
    _assert_close(h_auto, h_ref, 1e-12, "h")
    _assert_close(f_auto, f_ref, 1e-12, "final")


def test_no_nan_on_long_sequences_with_extreme_logits():
    g = torch.Generator().manual_seed(0)
    v = 100 * torch.randn(1, 20000, 4, generator=g)
    logits = 50 * torch.randn(1, 20000, 4, 3, generator=g)
    h, final = ops.hlru_scan(v, logits, output_final_state=True, backend="torch")
    assert torch.isfinite(h).all() and torch.isfinite(final).all()
    assert h.abs().max() <= v.abs().max() * (1 + 1e-5)


@pytest.mark.parametrize("T", [2, 7, 13])
def test_hlru_chunked_with_chunks_shorter_than_the_order(T):
    """A chunk must hold at least m steps (its end lags are its own last m values of h)."""
    v, logits, state, _ = scan_inputs("hlru", 2, T, 3, 5, with_state=True, dtype=F64, seed=T)
    ref = _grads(lambda v, g, s: hlru_scan_reference(v, g, initial_state=s, output_final_state=True), [v, logits, state])
    out = _grads(lambda v, g, s: hlru_scan_chunked(v, g, initial_state=s, output_final_state=True, chunk_size=2), [v, logits, state])
    for a, b, name in zip(out, ref, ["h", "final_state", "dv", "dgate_logits", "dinitial_state"]):
        _assert_close(a, b, 1e-10, name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normalization", DIVIDING)
@pytest.mark.parametrize("kind", ["hlru", "bdlru"])
def test_extreme_logits_give_finite_equal_results_on_every_backend(kind, normalization, backend):
    """Logits of +-1e4 (every logit of a row below -89 included): finite h, final state and gradients, equal
    to the float64 reference's."""
    g = torch.Generator().manual_seed(1)
    B, T, N, D = 2, 9, 3, 2
    tail = (N,) if kind == "hlru" else (N, D)
    v = torch.randn(B, T, *tail, generator=g)
    logits = 1e4 * torch.sign(torch.randn(B, T, *tail, D + 1, generator=g))
    logits[:, 3] = -1e4  # whole rows far below sigmoid's underflow
    scan = ops.hlru_scan if kind == "hlru" else ops.bdlru_scan

    def run(dtype, backend):
        x, lg = v.to(dtype).requires_grad_(True), logits.to(dtype).requires_grad_(True)
        h, final = scan(x, lg, output_final_state=True, normalization=normalization, backend=backend)
        grads = torch.autograd.grad(h.double().sum() + final.double().sum(), (x, lg))
        return [h, final, *grads]

    got = run(torch.float32, backend)
    ref = run(torch.float64, "reference")
    for a, b in zip(got, ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)
