"""benchmarks.spectrum: the analysis on matrices of known spectra and tiny models, the CLI, the study's smoke mode."""
import cmath
import itertools
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from benchmarks.spectrum import cli
from benchmarks.spectrum import run as experiment
from benchmarks.spectrum.analysis import (
    eigenvalues,
    layer_spectra,
    permutation_distance,
    permutation_summary,
    spectrum_summary,
)
from hf_lrnn import LRNNConfig, LRNNForCausalLM
from hf_lrnn.spectrum import window_products


def tiny_model(mixer, size, normalization="softmax", vocab_size=11):
    """Two layers, d = 16, gate weights far from uniform (the matrices differ from token to token)."""
    torch.manual_seed(0)
    config = LRNNConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, mixer=mixer, order=size,
                        block_size=size, gate_normalization=normalization, scan_backend="torch", use_cache=False)
    model = LRNNForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mixer.gate_logit_proj.weight.normal_(0.0, 1.0)
    return model


def assert_same_multiset(actual, expected, atol=1e-6):
    """Eigenvalues as multisets: greedy nearest matching (the sets are small)."""
    remaining = [complex(e) for e in expected]
    assert len(remaining) == len(actual)
    for value in actual:
        nearest = min(range(len(remaining)), key=lambda i: abs(remaining[i] - complex(value)))
        assert abs(remaining[nearest] - complex(value)) < atol, (value, remaining)
        remaining.pop(nearest)


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


def test_negative_diagonal_counts_as_negative_real():
    eigs = eigenvalues(torch.tensor([[[-0.5]], [[0.7]], [[-1.0]], [[0.0]]]))
    summary = spectrum_summary(eigs)
    assert summary["fraction_negative_real"] == 0.5 and summary["fraction_complex"] == 0.0
    assert summary["num_matrices"] == 4 and summary["size"] == 1
    assert summary["spectral_radius"]["q00"] == 0.0 and summary["spectral_radius"]["q100"] == 1.0


def test_products_of_permutations_stay_permutations():
    P = torch.eye(3)[[1, 2, 0]]
    M = P.expand(1, 6, 1, 3, 3)
    products = window_products(M, 3)  # a 3-cycle cubed is the identity
    assert permutation_distance(products).abs().max() < 1e-12


def test_permutation_distance():
    P = torch.eye(4)[[3, 0, 1, 2]]
    assert float(permutation_distance(P)) == pytest.approx(0.0, abs=1e-12)
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


def test_eigenvalues_refuse_non_finite_matrices():
    M = torch.eye(3).repeat(2, 4, 1, 1)
    M[1, 2, 0, 1] = float("nan")
    M[1, 3, 2, 2] = float("inf")
    with pytest.raises(ValueError, match=r"layer 0 \(x\): 2 of 8 matrices have NaN or infinite entries "
                                         r"\(the first at index \(1, 2\) of shape \(2, 4\)\)"):
        eigenvalues(M, "layer 0 (x)")


def test_layer_spectra_names_the_layer_of_a_diverged_checkpoint():
    model = tiny_model("hlru", 2)
    with torch.no_grad():
        model.model.layers[1].mixer.gate_logit_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"layer 1 \(hlru_m2, softmax\), single steps: .* NaN or infinite"):
        layer_spectra(model, torch.randint(0, 11, (2, 8)), windows=[4])


def test_layer_spectra_names_the_window_whose_products_overflow():
    model = tiny_model("bdlru", 4, normalization="none")
    with torch.no_grad():  # unnormalised gates of 1e20 (products of 16 steps overflow float64); v = 0 keeps the
        for layer in model.model.layers:  # states of the step-by-step scan (T <= 16), and so the forward, finite
            layer.mixer.gate_logit_proj.weight.fill_(0.0)
            layer.mixer.gate_logit_proj.bias.fill_(1e20)
            layer.mixer.value_proj.weight.fill_(0.0)
    spectra = layer_spectra(model, torch.randint(0, 11, (1, 16)), windows=[2])  # 1e40: still finite
    assert torch.isfinite(spectra[1].window_eigenvalues[2]).all()
    with pytest.raises(ValueError, match=r"layer 0 \(bdlru_k4, none\), products over windows of 16 steps"):
        layer_spectra(model, torch.randint(0, 11, (1, 16)), windows=[2, 16])


def saved_model(tmp_path, mixer="hlru", size=2, **kwargs):
    folder = tmp_path / f"{mixer}{size}"
    tiny_model(mixer, size, **kwargs).save_pretrained(folder)
    return folder


def test_cli_end_to_end(tmp_path):
    out = tmp_path / "out"
    assert cli.main([str(saved_model(tmp_path)), "--random-tokens", "12", "--batch-size", "3", "--window", "4", "12",
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


def test_cli_task_inputs(tmp_path):
    out = tmp_path / "out"
    assert cli.main([str(saved_model(tmp_path, "bdlru", 4)), "--task", "parity", "--seq-len", "6", "--batch-size",
                     "2", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads((out / "spectrum.json").read_text())
    assert report["input"] == {"task": "parity", "batch_size": 2, "seq_len": 6, "seed": 0} and report["windows"] == [6]


def test_cli_checks_every_argument_before_any_work(tmp_path, capsys):
    model = str(saved_model(tmp_path, "bdlru", 4))
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    capsys.readouterr()  # save_pretrained's progress bar
    cases = [
        (["--random-tokens", "8", "--out", str(a_file)], f"--out {a_file} is a file"),
        (["--random-tokens", "5", "--window", "6"], r"--window values must lie in \[1, seq_len=5\], got \[6\]"),
        (["--task", "s5"], "uses token ids up to 119, but the model's vocab_size is 11"),
        (["--task", "compression"], "probe task"),
        (["--task", "nope"], "unknown task 'nope'"),
        (["--random-tokens", "0"], "--random-tokens must be >= 1, got 0"),
        (["--random-tokens", "4", "--seq-len", "3"], "--seq-len applies to --task"),
        (["--random-tokens", "4", "--device", "tpu"], "--device must be cpu or cuda"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([model, *extra])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), (extra, err)
        assert re.search(message, err), (extra, err)
    for missing in (str(tmp_path / "no_such_model"), str(tmp_path)):  # no folder; a folder without config.json
        with pytest.raises(SystemExit) as exit_info:
            cli.main([missing, "--random-tokens", "4"])
        assert exit_info.value.code == 2 and capsys.readouterr().err.startswith(f"error: model folder {missing}")
    assert not a_file.read_text() and not (tmp_path / "spectrum_out").exists()


def test_cli_refuses_a_diverged_checkpoint_without_crashing(tmp_path):
    """In its own process: the eigenvalue routine, handed NaN, could corrupt the heap instead of raising."""
    model = tiny_model("hlru", 2)
    with torch.no_grad():
        model.model.layers[0].mixer.gate_logit_proj.weight.fill_(float("nan"))
    model.save_pretrained(tmp_path / "diverged")
    result = subprocess.run([sys.executable, "-m", "benchmarks.spectrum.cli", str(tmp_path / "diverged"),
                             "--random-tokens", "8", "--device", "cpu", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    last_line = result.stderr.splitlines()[-1]  # after the weight loader's progress bar
    assert last_line.startswith("error: layer 0 (hlru_m2, softmax), single steps: 4,096 of 4,096 matrices have NaN")
    assert not (tmp_path / "out").exists()


def test_experiment_smoke_refuses_grid_options(capsys):
    with pytest.raises(SystemExit):
        experiment.parse_args(["--smoke", "--tasks", "s5"])
    err = capsys.readouterr().err
    assert "--smoke trains its own" in err and "--tasks" in err


def test_experiment_smoke(tmp_path):
    assert experiment.main(["--smoke", "--out", str(tmp_path)]) == 0
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
    assert (tmp_path / "eigenvalues_parity.png").stat().st_size > 10_000
    samples = np.load(tmp_path / "samples" / "parity_bdlru_k4_softmax_s0.npz")
    assert set(samples.files) == {"layer0_steps", "layer0_sequence", "layer1_steps", "layer1_sequence"}


def test_experiment_records_a_failing_job_and_goes_on(tmp_path, monkeypatch):
    def fail(job, options):
        raise RuntimeError(f"no kernel for {job['model']}")

    monkeypatch.setattr(experiment, "run_job", fail)
    assert experiment.main(["--smoke", "--out", str(tmp_path)]) == 0
    records = [json.loads(line) for line in (tmp_path / "jobs.jsonl").read_text().splitlines()]
    assert [(r["status"], r["reason"]) for r in records] == [
        ("failed", "RuntimeError: no kernel for diag"), ("failed", "RuntimeError: no kernel for bdlru_k4")]
    assert "Not finished: parity_diag_tanh_l1_s0 (failed: RuntimeError: no kernel for diag)" in (tmp_path / "summary.md").read_text()
