"""hf_lrnn.spectrum: the per-token transition matrices of tiny models (against the scan they describe) and
their window products. (Eigenvalues and summaries are the experiment's: benchmarks/tests/test_spectrum.py.)"""
import numpy as np
import pytest
import torch

from hf_lrnn import LRNNConfig, LRNNForCausalLM
from hf_lrnn.gates_lrnn import normalize_gates
from hf_lrnn.scan_reference_lrnn import bdlru_scan_reference, hlru_scan_reference
from hf_lrnn.spectrum import companion_matrices, transition_matrices, window_products


def test_companion_eigenvalues_are_polynomial_roots():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(20, 4, generator=gen, dtype=torch.float64)  # h_t = sum_j a_j h_{t-j}
    C = companion_matrices(a)
    assert torch.equal(C[:, 0], a) and torch.equal(C[:, 1:, :-1], torch.eye(3, dtype=torch.float64).expand(20, 3, 3))
    assert (C[:, 1:, -1] == 0).all()
    for coefficients, eigs in zip(a.numpy(), torch.linalg.eigvals(C).numpy()):
        roots = np.roots(np.concatenate([[1.0], -coefficients]))  # lambda^m - a_1 lambda^{m-1} - ... - a_m
        np.testing.assert_allclose(np.sort_complex(eigs), np.sort_complex(roots), atol=1e-8)


def test_window_products_match_explicit_matmuls():
    gen = torch.Generator().manual_seed(1)
    M = torch.randn(2, 7, 3, 4, 4, generator=gen)
    for window in (1, 3, 7):
        P = window_products(M, window)
        assert P.shape == (2, 8 - window, 3, 4, 4) and P.dtype == torch.float64
        for s in range(8 - window):
            expected = torch.eye(4, dtype=torch.float64).expand(2, 3, 4, 4)
            for t in range(s, s + window):
                expected = M[:, t].double() @ expected  # M_{s+w-1} ... M_s: the latest step on the left
            torch.testing.assert_close(P[:, s], expected)
    for window, stride in ((2, 3), (3, 2), (7, 5)):
        torch.testing.assert_close(window_products(M, window, stride), window_products(M, window)[:, ::stride])
    with pytest.raises(ValueError, match="window"):
        window_products(M, 8)
    with pytest.raises(ValueError, match="stride"):
        window_products(M, 2, stride=0)


def test_products_of_permutations_stay_permutations():
    P = torch.eye(3)[[1, 2, 0]]
    M = P.expand(1, 6, 1, 3, 3)
    products = window_products(M, 3)  # a 3-cycle cubed is the identity
    torch.testing.assert_close(products, torch.eye(3, dtype=torch.float64).expand_as(products))


# ------------------------------------------------------------------------------- tiny models
def tiny_model(mixer, size, normalization="softmax", vocab_size=11):
    torch.manual_seed(0)
    config = LRNNConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, mixer=mixer, order=size,
                        block_size=size, gate_normalization=normalization, scan_backend="torch", use_cache=False)
    model = LRNNForCausalLM(config).eval()
    with torch.no_grad():  # gates far from uniform, so that the matrices differ from token to token
        for layer in model.model.layers:
            layer.mixer.gate_logit_proj.weight.normal_(0.0, 1.0)
    return model


def mixer_inputs(model, input_ids, mask):
    """Each layer's mixer input, computed layer by layer without hooks."""
    hidden = model.model.embed_tokens(input_ids)
    inputs = []
    for layer in model.model.layers:
        inputs.append(layer.mixer_norm(hidden))
        hidden = layer(hidden, mask)
    return inputs


@pytest.mark.parametrize("mixer,size,normalization", [("bdlru", 4, "softmax"), ("hlru", 2, "softmax"),
                                                       ("bdlru", 4, "tanh_l1"), ("hlru", 2, "tanh_l1")])
def test_transitions_of_tiny_model(mixer, size, normalization):
    model = tiny_model(mixer, size, normalization)
    gen = torch.Generator().manual_seed(3)
    input_ids = torch.randint(0, 11, (3, 9), generator=gen)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 4:6] = 0
    mask[2, 0] = 0
    layers = transition_matrices(model, input_ids, mask)
    assert [(l.layer, l.mixer, l.size, l.gate_normalization) for l in layers] == [(i, mixer, size, normalization) for i in range(2)]
    assert layers[0].label == f"{mixer}_{'k' if mixer == 'bdlru' else 'm'}{size}"
    with torch.no_grad():
        xs = mixer_inputs(model, input_ids, mask)
        for layer, x in zip(layers, xs):
            M = layer.matrices
            mixer_module = model.model.layers[layer.layer].mixer
            N = mixer_module.num_blocks if mixer == "bdlru" else mixer_module.num_channels
            assert M.shape == (3, 9, N, size, size) and M.dtype == torch.float32
            a = normalize_gates(mixer_module.gate_logits(x).float(), normalization)
            eye = torch.eye(size)
            keep = mask.bool()[:, :, None, None, None]
            if mixer == "bdlru":
                expected = a[..., 1:]
                if normalization == "softmax":  # each row of [a_0 | A] is a probability vector
                    torch.testing.assert_close(a.sum(-1), torch.ones_like(a[..., 0]))
                    assert (expected > 0).all()
            else:
                expected = torch.zeros(3, 9, N, size, size)
                expected[..., 0, :] = a[..., 1:]
                expected[..., 1, 0] = 1.0
            torch.testing.assert_close(M, torch.where(keep, expected, eye))
            assert torch.equal(M[1, 4], eye.expand(N, size, size)) and torch.equal(M[2, 0], eye.expand(N, size, size))
            # the matrices reproduce the scan: s_t = M_t s_{t-1} + a_0 * v_t (input on the first lag for H-LRU)
            v = mixer_module.value_proj(x).double()
            a0 = a[..., 0].double()
            a0 = a0 * mask.double().view(3, 9, *[1] * (a0.dim() - 2))  # no input where the step is masked
            if mixer == "bdlru":
                v = v.view(3, 9, N, size)
                h_scan, _ = bdlru_scan_reference(v, mixer_module.gate_logits(x).double(), normalization=normalization, mask=mask)
            else:
                h_scan, _ = hlru_scan_reference(v, mixer_module.gate_logits(x).double(), normalization=normalization, mask=mask)
            state = torch.zeros(3, N, size, dtype=torch.float64)
            for t in range(9):
                drive = a0[:, t] * v[:, t]
                if mixer == "hlru":
                    drive = torch.nn.functional.pad(drive[..., None], (0, size - 1))
                state = (M[:, t].double() @ state[..., None])[..., 0] + drive
                torch.testing.assert_close(state if mixer == "bdlru" else state[..., 0], h_scan[:, t], atol=1e-5, rtol=1e-5)


def test_transition_matrices_rejects_other_models():
    with pytest.raises(TypeError, match="LRNNForCausalLM or LRNNModel"):
        transition_matrices(torch.nn.Linear(2, 2), torch.zeros(1, 3, dtype=torch.long))
