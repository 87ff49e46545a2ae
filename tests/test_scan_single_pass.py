"""The single-pass H-LRU kernels, m = 1 and m = 2 (hf_lrnn/triton_hlru_single_pass_lrnn.py, switched on by
``triton_plan_lrnn.single_pass_override``) against the float64 loop reference, forward and backward: h, the final
state and the gradients of v, gate_logits and initial_state (the loss also reads the final state), with masks
(m = 1; m = 2 with a mask keeps the other kernels), document starts (resets), initial states, every normalisation
and logits of +-1e4. Through Triton's interpreter (TRITON_INTERPRET=1, conftest.py) at tiny odd shapes; plans
with tiles shorter than T and partial channel blocks.
"""
import itertools

import pytest
import torch

pytest.importorskip("triton")

from hf_lrnn import scan_triton_lrnn as scan_triton  # noqa: E402
from hf_lrnn import triton_plan_lrnn as triton_plan  # noqa: E402
from hf_lrnn.gates_lrnn import GATE_NORMALIZATIONS  # noqa: E402
from hf_lrnn.scan_reference_lrnn import hlru_scan_reference  # noqa: E402
from helpers import F64, relative_error  # noqa: E402

PLANS = [(4, 8, 4), (8, 16, 2)]  # (BLOCK_N, L, num_warps): N = 5 leaves a partial block; T = 37 partial tiles


def _inputs(B, T, N, m, normalization, with_state, with_mask, with_resets, extreme, seed):
    """float64 v (B, T, N), logits (B, T, N, m+1), initial state (B, N, m) or None, mask and resets or None."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(B, T, N, dtype=F64, generator=g)
    logits = torch.randn(B, T, N, m + 1, dtype=F64, generator=g)
    logits = 1e4 * logits.sign() if extreme else (0.3 if normalization == "none" else 2.0) * logits
    state = torch.randn(B, N, m, dtype=F64, generator=g) if with_state else None
    mask = torch.rand(B, T, generator=g) > 0.3 if with_mask else None
    resets = torch.rand(B, T, generator=g) < 0.15 if with_resets else None
    if resets is not None:
        resets[:, 0] = True  # at t = 0 the initial state applies all the same
        resets[0, T - 1] = True  # a document of one step at the end
    return v, logits, state, mask, resets


def _errors(plan, m=1, B=2, T=37, N=5, normalization="softmax", with_state=True, with_mask=None, with_resets=True,
            extreme=False, dtype=torch.float32, seed=0):
    """Relative errors against the float64 reference; a mask by default at m = 1 only (m = 2 does not take one)."""
    with_mask = m == 1 if with_mask is None else with_mask
    v, logits, state, mask, resets = _inputs(B, T, N, m, normalization, with_state, with_mask, with_resets, extreme,
                                             seed)
    inputs = [x.to(dtype).requires_grad_(True) for x in (v, logits)]
    if state is not None:
        inputs.append(state.float().requires_grad_(True))
    with triton_plan.single_pass_override(plan):
        h, final = scan_triton.hlru_scan_triton(inputs[0], inputs[1], initial_state=inputs[2] if state is not None
                                                else None, output_final_state=True, normalization=normalization,
                                                mask=mask, resets=resets)
        g = torch.Generator().manual_seed(seed + 1)
        dh, dfinal = torch.randn(h.shape, generator=g), torch.randn(final.shape, generator=g)
        grads = torch.autograd.grad((h.float() * dh).sum() + (final * dfinal).sum(), inputs)
    assert h.dtype == dtype and final.dtype == torch.float32 and final.shape == (B, N, m)
    ref = [x.detach().to(F64).requires_grad_(True) for x in inputs]
    h_ref, final_ref = hlru_scan_reference(ref[0], ref[1], initial_state=ref[2] if state is not None else None,
                                           output_final_state=True, normalization=normalization, mask=mask,
                                           resets=resets)
    ref_grads = torch.autograd.grad((h_ref * dh.to(F64)).sum() + (final_ref * dfinal.to(F64)).sum(), ref)
    assert all(torch.isfinite(x).all() for x in (h, final, *grads))
    names = ["h", "final", "dv", "dgate_logits", "dinitial_state"]
    values = [(h, h_ref), (final, final_ref)] + list(zip(grads, ref_grads))
    return {name: relative_error(x, r) for name, (x, r) in zip(names, values)}


def _assert_close(errors, tol):
    bad = {k: e for k, e in errors.items() if not e <= tol}
    assert not bad, f"relative errors above {tol}: {bad} (all: {errors})"


@pytest.mark.parametrize("m", [1, 2])
def test_the_override_runs_the_single_pass_kernels(monkeypatch, m):
    """Inside single_pass_override an H-LRU scan of order 1 or 2 runs _single_pass_forward and
    _single_pass_backward (and the planner finds no plan outside it, for other orders, for m = 2 with a mask, or
    with a forced chunk_size)."""
    calls = []
    for name in ("_single_pass_forward", "_single_pass_backward"):
        original = getattr(scan_triton, name)
        monkeypatch.setattr(scan_triton, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    _errors(PLANS[0], m=m, T=9, N=3)
    assert calls == ["_single_pass_forward", "_single_pass_backward"]
    v = torch.zeros(1, 4, 3)
    assert triton_plan.scan_single_pass_plan("hlru", v, 1, None, False) is None
    with triton_plan.single_pass_override(PLANS[0]):
        assert triton_plan.scan_single_pass_plan("hlru", v, 1, None, True) == PLANS[0]
        assert triton_plan.scan_single_pass_plan("hlru", v, 2, None, False) == PLANS[0]
        assert triton_plan.scan_single_pass_plan("hlru", v, 2, None, True) is None
        assert triton_plan.scan_single_pass_plan("hlru", v, 3, None, False) is None
        assert triton_plan.scan_single_pass_plan("bdlru", v, 1, None, False) is None
        assert triton_plan.scan_single_pass_plan("hlru", v, 1, 4, False) is None


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("with_state,with_mask,with_resets", list(itertools.product([False, True], repeat=3)))
def test_states_masks_resets(plan, with_state, with_mask, with_resets):
    _assert_close(_errors(plan, with_state=with_state, with_mask=with_mask, with_resets=with_resets), 1e-5)


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("with_state,with_resets", list(itertools.product([False, True], repeat=2)))
def test_order_2_states_resets(plan, with_state, with_resets):
    _assert_close(_errors(plan, m=2, with_state=with_state, with_resets=with_resets, seed=1), 1e-5)


def test_order_2_with_a_mask_keeps_the_other_kernels():
    """m = 2 with a mask is refused by the planner: the scan runs the chunked kernels, and is still right."""
    _assert_close(_errors(PLANS[0], m=2, with_mask=True, seed=2), 1e-5)


@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("normalization", GATE_NORMALIZATIONS)
def test_every_normalization(m, normalization):
    _assert_close(_errors(PLANS[0], m=m, normalization=normalization, seed=3), 1e-5)


@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("normalization", ["softmax", "sigmoid_l1", "relu_l1"])
def test_extreme_logits(m, normalization):
    """Logits of +-1e4: saturated gates, ties within a row."""
    _assert_close(_errors(PLANS[1], m=m, normalization=normalization, extreme=True, seed=5), 1e-5)


@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("T", [1, 2, 8, 16, 17])
def test_lengths_around_the_tile(m, T):
    """T of one or two steps, exactly one or two tiles (L = 8), and one step past them."""
    _assert_close(_errors(PLANS[0], m=m, T=T, seed=T), 1e-5)


@pytest.mark.parametrize("m", [1, 2])
def test_bfloat16(m):
    _assert_close(_errors(PLANS[0], m=m, dtype=torch.bfloat16, seed=7), 2e-2)


def test_bdlru_block_size_1_runs_it_too():
    """BD-LRU with k = 1 is the H-LRU m = 1 recurrence and takes the same kernels."""
    from hf_lrnn.scan_reference_lrnn import bdlru_scan_reference

    v, logits, state, mask, resets = _inputs(2, 13, 3, 1, "softmax", True, True, True, False, 11)
    with triton_plan.single_pass_override(PLANS[0]):
        h, final = scan_triton.bdlru_scan_triton(v[..., None].float(), logits[..., None, :].float(),
                                                 initial_state=state.float(), output_final_state=True, mask=mask,
                                                 resets=resets)
    h_ref, final_ref = bdlru_scan_reference(v[..., None], logits[..., None, :], initial_state=state,
                                            output_final_state=True, mask=mask, resets=resets)
    assert relative_error(h, h_ref) < 1e-5 and relative_error(final, final_ref) < 1e-5
