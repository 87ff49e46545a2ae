#!/usr/bin/env python
"""Eigenvalues of a trained LRNN's transition matrices, per layer: a PNG and a JSON summary.

For a batch of input sequences, every layer's per-token transition matrices after gate normalisation
(BD-LRU's k x k blocks A_t, H-LRU's m x m companion matrices, hf_lrnn.spectrum) and their products over
non-overlapping windows of w steps (the map from the state before the window to the state at its end) are
decomposed into eigenvalues. Written to --out:

- ``layer{i}.png``: the eigenvalues in the complex plane with the unit circle, histograms of |lambda| and
  arg(lambda); top row the single steps, further rows one per window;
- ``spectrum.json``: per layer and window the summary of hf_lrnn.spectrum.spectrum_summary (spectral
  radius quantiles, fractions with negative real part, complex, on the unit circle; for the window
  products the Frobenius distance to the nearest permutation and signed permutation matrix).

Examples:
    python scripts/spectrum.py path/to/model --random-tokens 64 --out spectrum_out
    PYTHONPATH=. python scripts/spectrum.py path/to/model --task s5 --window 4 16 --out spectrum_s5

``--task`` draws the test split of a synthetic task (benchmarks.synthetic.tasks, importable from the
repository root: hence PYTHONPATH=.); ``--random-tokens T`` uses uniform random ids of length T.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

import hf_lrnn  # noqa: F401  (registers model_type "lrnn" with the Auto classes)
from hf_lrnn.spectrum import layer_spectra

# At most this many eigenvalues are drawn per scatter plot (a random subset; the histograms use all).
MAX_SCATTER_POINTS = 40_000


def import_pyplot():
    """matplotlib.pyplot on the Agg backend, or a clear error naming the missing package."""
    try:
        import matplotlib
    except ImportError as err:
        raise SystemExit("scripts/spectrum.py draws its plots with matplotlib: pip install matplotlib") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def task_inputs(task: str, batch_size: int, seq_len, seed: int) -> torch.Tensor:
    """The first batch_size test sequences (batch_size, T) of a synthetic task."""
    try:
        from benchmarks.synthetic.tasks import make_task
    except ImportError as err:
        raise SystemExit(
            f"--task needs benchmarks.synthetic.tasks ({err}); run from the repository root with "
            "PYTHONPATH=. (or use --random-tokens)"
        ) from err
    overrides = {"num_train": batch_size, "num_test": batch_size}
    if seq_len is not None:
        overrides["seq_len"] = seq_len
    data = make_task(task, seed=seed, **overrides)
    if data.spec.probe:
        raise SystemExit(f"--task {task}: a probe task (decoded from the last state); pick a sequence task")
    return data.test_inputs[:batch_size]


def draw_eigenvalues(axes, eigs: torch.Tensor, title: str, generator: torch.Generator) -> None:
    """Three panels on ``axes``: complex plane with the unit circle, histogram of |lambda|, of arg(lambda)."""
    flat = eigs.flatten()
    shown = flat if flat.numel() <= MAX_SCATTER_POINTS else flat[torch.randperm(flat.numel(), generator=generator)[:MAX_SCATTER_POINTS]]
    plane, modulus, angle = axes
    circle = torch.linspace(0, 2 * math.pi, 361)
    plane.plot(torch.cos(circle), torch.sin(circle), color="0.6", lw=0.8)
    plane.axhline(0, color="0.85", lw=0.5)
    plane.axvline(0, color="0.85", lw=0.5)
    plane.scatter(shown.real, shown.imag, s=2, alpha=0.25, color="C0", linewidths=0)
    plane.set_aspect("equal")
    limit = max(1.1, float(flat.abs().max()) * 1.05)
    plane.set_xlim(-limit, limit)
    plane.set_ylim(-limit, limit)
    plane.set_xlabel("Re(lambda)")
    plane.set_ylabel("Im(lambda)")
    plane.set_title(title, fontsize=9)
    modulus.hist(flat.abs().numpy(), bins=60, range=(0.0, limit), color="C1")
    modulus.axvline(1.0, color="0.4", lw=0.8, ls="--")
    modulus.set_xlabel("|lambda|")
    modulus.set_yscale("log")
    angle.hist(flat.angle().numpy(), bins=72, range=(-math.pi, math.pi), color="C2")
    angle.set_xlabel("arg(lambda) (rad)")
    angle.set_yscale("log")


def plot_layer(plt, spectrum, path: str) -> None:
    """One PNG for a layer: a row for the single steps, then one per window."""
    rows = [("single steps", spectrum.step_eigenvalues)]
    rows += [(f"products over {w} steps", e) for w, e in spectrum.window_eigenvalues.items()]
    fig, axes = plt.subplots(len(rows), 3, figsize=(12, 3.8 * len(rows)), squeeze=False)
    generator = torch.Generator().manual_seed(0)
    for ax_row, (what, eigs) in zip(axes, rows):
        draw_eigenvalues(ax_row, eigs.cpu(), f"layer {spectrum.layer} {spectrum.label} "
                         f"({spectrum.gate_normalization}): {what}", generator)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a saved model folder or a Hub id (loaded with AutoModelForCausalLM)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", help="draw inputs from this synthetic task's test split (s3, s5, parity, ...)")
    source.add_argument("--random-tokens", type=int, metavar="T", help="uniform random token ids of length T")
    p.add_argument("--seq-len", type=int, default=None, help="override the task's sequence length (with --task)")
    p.add_argument("--batch-size", type=int, default=32, help="number of sequences")
    p.add_argument("--window", type=int, nargs="*", default=None,
                   help="window lengths for the products (default: min(16, T)); none to skip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--out", default="spectrum_out", help="output folder (created)")
    p.add_argument("--trust-remote-code", action="store_true")
    a = p.parse_args(argv)
    if a.seq_len is not None and a.task is None:
        p.error("--seq-len applies to --task; with --random-tokens the length is its argument")
    if a.random_tokens is not None and a.random_tokens < 1:
        p.error(f"--random-tokens must be >= 1, got {a.random_tokens}")
    if a.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {a.batch_size}")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    plt = import_pyplot()
    from transformers import AutoModelForCausalLM

    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = AutoModelForCausalLM.from_pretrained(a.model, trust_remote_code=a.trust_remote_code).to(device).eval()
    vocab_size = model.config.vocab_size
    if a.task is not None:
        input_ids = task_inputs(a.task, a.batch_size, a.seq_len, a.seed)
        if int(input_ids.max()) >= vocab_size:
            raise SystemExit(f"--task {a.task} uses token ids up to {int(input_ids.max())}, but the model's "
                             f"vocab_size is {vocab_size}")
        source = {"task": a.task}
    else:
        generator = torch.Generator().manual_seed(a.seed)
        input_ids = torch.randint(0, vocab_size, (a.batch_size, a.random_tokens), generator=generator)
        source = {"random_tokens": a.random_tokens}
    T = input_ids.shape[1]
    windows = [min(16, T)] if a.window is None else a.window
    bad = [w for w in windows if not 1 <= w <= T]
    if bad:
        raise SystemExit(f"--window values must lie in [1, seq_len={T}], got {bad}")

    spectra = layer_spectra(model, input_ids.to(device), windows=windows)
    os.makedirs(a.out, exist_ok=True)
    layers = []
    for spectrum in spectra:
        png = os.path.join(a.out, f"layer{spectrum.layer}.png")
        plot_layer(plt, spectrum, png)
        layers.append({"layer": spectrum.layer, "mixer": spectrum.mixer, "size": spectrum.size,
                       "label": spectrum.label, "gate_normalization": spectrum.gate_normalization,
                       "plot": os.path.basename(png), **spectrum.summary})
    report = {"model": a.model, "input": {**source, "batch_size": int(input_ids.shape[0]), "seq_len": T,
                                          "seed": a.seed},
              "windows": windows, "device": str(device), "layers": layers}
    with open(os.path.join(a.out, "spectrum.json"), "w") as f:
        json.dump(report, f, indent=1)
    for entry in layers:
        steps = entry["steps"]
        print(f"layer {entry['layer']} {entry['label']} ({entry['gate_normalization']}): spectral radius median "
              f"{steps['spectral_radius']['q50']:.3f}, negative real {steps['fraction_negative_real']:.3f}, "
              f"complex {steps['fraction_complex']:.3f}")
    print(f"wrote {a.out}/spectrum.json and {len(layers)} PNGs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
