"""hf_lrnn.spectrum on hand-built matrices with known spectra and on tiny models; scripts/spectrum.py and
the spectrum experiment's smoke mode end to end."""
import cmath
import itertools
import json
import math

import numpy as np
import pytest
import torch
from script_loader import load_script

from hf_lrnn import LRNNConfig, LRNNForCausalLM
from hf_lrnn.gates_lrnn import normalize_gates
from hf_lrnn.scan_reference_lrnn import bdlru_scan_reference, hlru_scan_reference
from hf_lrnn.spectrum import (
    companion_matrices,
    eigenvalues,
    layer_spectra,
    permutation_distance,
    permutation_summary,
    spectrum_summary,
    transition_matrices,
    window_products,
)


def assert_same_multiset(actual, expected, atol=1e-6):
    """Eigenvalues as multisets: greedy nearest matching (the sets are small)."""
    remaining = [complex(e) for e in expected]
    assert len(remaining) == len(actual)
    for value in actual:
        nearest = min(range(len(remaining)), key=lambda i: abs(remaining[i] - complex(value)))
        assert abs(remaining[nearest] - complex(value)) < atol, (value, remaining)
        remaining.pop(nearest)


# ------------------------------------------------------------------------------- hand-built spectra
@pytest.mark.parametrize("cycle", [2, 3, 5])
def test_cyclic_permutation_has_roots_of_unity(cycle):
    P = torch.roll(torch.eye(cycle), 1, dims=0)  # one cycle of length `cycle`
    roots = [cmath.exp(2j * math.pi * r / cycle) for r in range(cycle)]
    assert_same_multiset(eigenvalues(P), roots)
    summary = spectrum_summary(eigenvalues(P)[None])
    assert summary["fraction_unit_modulus"] == 1.0
    assert summary["spectral_radius"]["q50"] == pytest.approx(1.0)
    real_roots = 1 + (cycle % 2 == 0)  # 1, and -1 for even cycles
    assert summary["fraction_complex"] == pytest.approx((cycle - real_roots) / cycle)
    negative = sum(math.cos(2 * math.pi * r / cycle) < 0 for r in range(cycle))
    assert summary["fraction_negative_real"] == pytest.approx(negative / cycle)


def test_block_of_permutation_cycles():
    # a 4 x 4 block made of a 3-cycle and a fixed point: eigenvalues 1, 1, exp(+-2 pi i / 3)
    P = torch.eye(4)[[1, 2, 0, 3]]
    w = cmath.exp(2j * math.pi / 3)
    assert_same_multiset(eigenvalues(P), [1, 1, w, w.conjugate()])


@pytest.mark.parametrize("theta", [0.3, 2.0, math.pi / 2])
def test_scaled_rotation(theta):
    r = 0.9
    R = r * torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64)
    eigs = eigenvalues(R)
    assert_same_multiset(eigs, [r * cmath.exp(1j * theta), r * cmath.exp(-1j * theta)])
    summary = spectrum_summary(eigs[None])
    assert summary["fraction_complex"] == 1.0
    assert summary["fraction_negative_real"] == (1.0 if math.cos(theta) < -1e-6 else 0.0)
    assert summary["spectral_radius"]["q100"] == pytest.approx(r)
    assert summary["fraction_unit_modulus"] == 0.0


def test_companion_eigenvalues_are_polynomial_roots():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(20, 4, generator=gen, dtype=torch.float64)  # h_t = sum_j a_j h_{t-j}
    C = companion_matrices(a)
    assert torch.equal(C[:, 0], a) and torch.equal(C[:, 1:, :-1], torch.eye(3, dtype=torch.float64).expand(20, 3, 3))
    assert (C[:, 1:, -1] == 0).all()
    for coefficients, eigs in zip(a.numpy(), eigenvalues(C)):
        roots = np.roots(np.concatenate([[1.0], -coefficients]))  # lambda^m - a_1 lambda^{m-1} - ... - a_m
        assert_same_multiset(eigs, roots, atol=1e-8)


def test_negative_diagonal_counts_as_negative_real():
    eigs = eigenvalues(torch.tensor([[[-0.5]], [[0.7]], [[-1.0]], [[0.0]]]))
    summary = spectrum_summary(eigs)
    assert summary["fraction_negative_real"] == 0.5 and summary["fraction_complex"] == 0.0
    assert summary["num_matrices"] == 4 and summary["size"] == 1
    assert summary["spectral_radius"]["q00"] == 0.0 and summary["spectral_radius"]["q100"] == 1.0


# ------------------------------------------------------------------------------- window products
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
    assert permutation_distance(products).abs().max() < 1e-12


# ------------------------------------------------------------------------------- permutation distance
def test_permutation_distance():
    for perm in itertools.permutations(range(4)):
        assert float(permutation_distance(torch.eye(4)[list(perm)])) == pytest.approx(0.0, abs=1e-12)
    P = torch.eye(4)[[3, 0, 1, 2]]
    assert float(permutation_distance(-P)) > 1.0
    assert float(permutation_distance(-P, signed=True)) == pytest.approx(0.0, abs=1e-12)
    E = 0.01 * torch.ones(4, 4)
    assert float(permutation_distance(P + E)) == pytest.approx(float(torch.linalg.norm(E)))
    uniform = torch.full((4, 4), 0.25)  # the stochastic matrix farthest from every permutation
    assert float(permutation_distance(uniform)) == pytest.approx(math.sqrt(3.0))


def test_permutation_distance_is_min_over_all_permutations():
    gen = torch.Generator().manual_seed(2)
    M = torch.randn(30, 5, 5, generator=gen, dtype=torch.float64)
    perms = torch.stack([torch.eye(5, dtype=torch.float64)[list(p)] for p in itertools.permutations(range(5))])
    brute = torch.linalg.norm(M[:, None] - perms[None], dim=(-2, -1)).amin(1)
    torch.testing.assert_close(permutation_distance(M), brute)
    signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=5)), dtype=torch.float64)
    signed_perms = (perms[:, None] * signs[None, :, :, None]).reshape(-1, 5, 5)
    brute_signed = torch.linalg.norm(M[:, None] - signed_perms[None], dim=(-2, -1)).amin(1)
    torch.testing.assert_close(permutation_distance(M, signed=True), brute_signed)


def test_summary_with_products():
    P = torch.eye(3)[[1, 2, 0]].double()
    products = torch.stack([P, torch.full((3, 3), 1 / 3, dtype=torch.float64)])
    summary = spectrum_summary(eigenvalues(products), products)
    assert summary["permutation_distance"]["q00"] == pytest.approx(0.0, abs=1e-12)
    assert summary["permutation_distance"]["q100"] == pytest.approx(math.sqrt(2.0))  # sqrt(1 + 3 - 3 * 2/3)
    assert summary["fraction_near_permutation"] == 0.5


def test_permutation_summary_per_block():
    P = torch.eye(3, dtype=torch.float64)[[1, 2, 0]]
    uniform = torch.full((3, 3), 1 / 3, dtype=torch.float64)
    # 3 samples x 2 blocks: block 0 is a permutation in 2 of 3 samples, block 1 never; block 1 is -P once
    products = torch.stack([torch.stack([P, uniform]), torch.stack([P, -P]), torch.stack([uniform, uniform])])
    summary = permutation_summary(products)
    assert summary["fraction_near_permutation"] == pytest.approx(2 / 6)
    assert summary["fraction_near_signed_permutation"] == pytest.approx(3 / 6)
    assert summary["block_permutation_distance"]["q00"] == pytest.approx(0.0, abs=1e-12)  # block 0's median
    assert summary["block_permutation_distance"]["q100"] == pytest.approx(math.sqrt(2.0))  # block 1's median
    assert summary["fraction_permutation_blocks"] == 0.5
    assert summary["fraction_signed_permutation_blocks"] == 0.5


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


def test_layer_spectra_on_tiny_model_accepts_base_model():
    model = tiny_model("bdlru", 4)
    input_ids = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(4))
    spectra = layer_spectra(model.model, input_ids, windows=[4])
    assert len(spectra) == 2
    for spectrum in spectra:
        assert spectrum.step_eigenvalues.shape == (2, 8, 4, 4)
        assert spectrum.window_eigenvalues[4].shape == (2, 2, 4, 4)
        steps = spectrum.summary["steps"]
        assert steps["spectral_radius"]["q100"] < 1.0  # softmax: A is strictly sub-stochastic
        # Perron-Frobenius: a positive matrix's eigenvalue of largest modulus is real and positive
        eigs = spectrum.step_eigenvalues
        top = eigs.gather(-1, eigs.abs().argmax(-1, keepdim=True))
        assert (top.real > 0).all() and (top.imag.abs() < 1e-9).all()
        assert 0.0 < spectrum.summary["windows"][4]["permutation_distance"]["q00"]
        assert spectrum.summary["windows"][4]["fraction_permutation_blocks"] == 0.0
    with pytest.raises(ValueError, match="window"):
        layer_spectra(model, input_ids, windows=[9])


# ------------------------------------------------------------------------------- the script
spectrum_script = load_script("spectrum")


def test_script_end_to_end(tmp_path):
    model_dir = tmp_path / "model"
    tiny_model("hlru", 2).save_pretrained(model_dir)
    out = tmp_path / "out"
    assert spectrum_script.main([str(model_dir), "--random-tokens", "12", "--batch-size", "3", "--window", "4", "12",
                                 "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads((out / "spectrum.json").read_text())
    assert report["input"] == {"random_tokens": 12, "batch_size": 3, "seq_len": 12, "seed": 0}
    assert [entry["label"] for entry in report["layers"]] == ["hlru_m2", "hlru_m2"]
    for entry in report["layers"]:
        assert (out / entry["plot"]).stat().st_size > 10_000
        assert entry["steps"]["num_matrices"] == 3 * 12 * 16
        assert set(entry["windows"]) == {"4", "12"}
        assert entry["windows"]["12"]["num_matrices"] == 3 * 16
        assert entry["windows"]["4"]["num_matrices"] == 3 * 16 * 3  # 3 windows of 4 in each of the 3 sequences


def test_script_task_inputs(tmp_path):
    model_dir = tmp_path / "model"
    tiny_model("bdlru", 4).save_pretrained(model_dir)
    out = tmp_path / "out"
    assert spectrum_script.main([str(model_dir), "--task", "parity", "--seq-len", "6", "--batch-size", "2",
                                 "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads((out / "spectrum.json").read_text())
    assert report["input"] == {"task": "parity", "batch_size": 2, "seq_len": 6, "seed": 0} and report["windows"] == [6]
    with pytest.raises(SystemExit, match="vocab_size is 11"):  # S5 has 120 tokens
        spectrum_script.main([str(model_dir), "--task", "s5", "--batch-size", "2", "--out", str(out)])


def test_script_rejects_bad_window(tmp_path):
    model_dir = tmp_path / "model"
    tiny_model("bdlru", 4).save_pretrained(model_dir)
    with pytest.raises(SystemExit, match="window"):
        spectrum_script.main([str(model_dir), "--random-tokens", "5", "--window", "6", "--out", str(tmp_path / "o")])


# ------------------------------------------------------------------------------- the experiment's smoke mode
def test_experiment_plan_lists_the_grid(capsys):
    from benchmarks.spectrum import run as experiment

    assert experiment.main(["--plan", "--device", "cuda", "--workers", "8"]) == 0
    printed = capsys.readouterr().out
    assert printed.count(" budget ") == 4 * 4 * 2
    assert "s5_bdlru_k8_tanh_l1_s0" in printed and "mod_count_diag_softmax_s0" in printed
    assert "32 jobs on 8 workers" in printed


def test_experiment_smoke_refuses_grid_options(capsys):
    from benchmarks.spectrum import run as experiment

    with pytest.raises(SystemExit):
        experiment.parse_args(["--smoke", "--tasks", "s5"])
    err = capsys.readouterr().err
    assert "--smoke trains its own" in err and "--tasks" in err


def test_experiment_smoke(tmp_path):
    from benchmarks.spectrum import run as experiment

    assert experiment.main(["--smoke", "--workers", "2", "--out", str(tmp_path)]) == 0  # the GPU runs' process pool
    records = [json.loads(line) for line in (tmp_path / "jobs.jsonl").read_text().splitlines()]
    assert sorted((r["model"], r["normalization"], r["status"]) for r in records) == [
        ("bdlru_k4", "softmax", "ok"), ("diag", "tanh_l1", "ok")]
    for record in records:
        assert 1 <= record["steps"] <= experiment.SMOKE_STEPS
        assert record["windows"] == [4, 8] and len(record["layers"]) == 2
        for layer in record["layers"]:
            sequence = layer["windows"]["8"]
            assert sequence["permutation_distance"]["mean"] >= sequence["signed_permutation_distance"]["mean"] >= 0
            assert 0.0 <= sequence["fraction_permutation_blocks"] <= sequence["fraction_signed_permutation_blocks"] <= 1.0
            # sum_j |a_j| <= 1 per row bounds the spectral radius by 1 (softmax and tanh_l1 alike)
            assert layer["steps"]["spectral_radius"]["q100"] <= 1.0 + 1e-6
            if record["model"] == "diag":  # 1 x 1 transitions: real eigenvalues
                assert layer["steps"]["fraction_complex"] == 0.0
    report = json.loads((tmp_path / "spectrum.json").read_text())
    assert len(report["jobs"]) == 2 and report["options"]["smoke"] is True
    assert "| parity | diag | tanh_l1 | 0 |" in (tmp_path / "summary.md").read_text()
    for png in ("eigenvalues_parity.png", "summary.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    samples = np.load(tmp_path / "samples" / "parity_bdlru_k4_softmax_s0.npz")
    assert set(samples.files) == {"layer0_steps", "layer0_sequence", "layer1_steps", "layer1_sequence"}


def test_experiment_records_a_failing_job_and_goes_on(tmp_path, monkeypatch):
    from benchmarks.spectrum import run as experiment

    def fail(job, options):
        raise RuntimeError(f"no kernel for {job['model']}")

    monkeypatch.setattr(experiment, "run_job", fail)
    assert experiment.main(["--smoke", "--out", str(tmp_path)]) == 0
    records = [json.loads(line) for line in (tmp_path / "jobs.jsonl").read_text().splitlines()]
    assert [(r["status"], r["reason"]) for r in records] == [
        ("failed", "RuntimeError: no kernel for diag"), ("failed", "RuntimeError: no kernel for bdlru_k4")]
    assert "Not finished: parity_diag_tanh_l1_s0 (failed: RuntimeError: no kernel for diag)" in (tmp_path / "summary.md").read_text()
