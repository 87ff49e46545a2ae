"""Eigenvalues of a trained LRNN's transition matrices, per layer, and of their products over windows of w steps:
``layer{i}.png`` (complex plane, |lambda| and arg histograms) and ``spectrum.json``
(:func:`benchmarks.spectrum.analysis.spectrum_summary` per layer and window) in --out.

    python -m benchmarks.spectrum.cli path/to/model --random-tokens 64 --out spectrum_out
    python -m benchmarks.spectrum.cli path/to/model --task s5 --window 4 16 --out spectrum_s5

A bad argument ends the run with one line ``error: ...`` and status 2 before any work; non-finite matrices (a
diverged checkpoint, overflowing products) with ``error: ...`` naming layer and window, and status 1."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

# At most this many eigenvalues are drawn per scatter plot (a random subset; the histograms use all).
MAX_SCATTER_POINTS = 40_000


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line ``error: ...`` with exit status 2."""

    def error(self, message):
        self.exit(2, f"error: {message}\n")


def parse_args(argv=None):
    """The arguments, every one checked (and the model's config read) before any work is done."""
    p = OneLineErrorParser(prog="python -m benchmarks.spectrum.cli", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a saved model folder or a Hub id (loaded with AutoModelForCausalLM)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", help="draw inputs from this synthetic task's test split (s3, s5, parity, ...)")
    source.add_argument("--random-tokens", type=int, metavar="T", help="uniform random token ids of length T")
    p.add_argument("--seq-len", type=int, default=None, help="override the task's sequence length (with --task)")
    p.add_argument("--batch-size", type=int, default=32, help="number of sequences (default 32)")
    p.add_argument("--window", type=int, nargs="*", default=None,
                   help="window lengths for the products (default: min(16, T)); none to skip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--out", default="spectrum_out", help="output folder (created; default spectrum_out)")
    p.add_argument("--trust-remote-code", action="store_true")
    a = p.parse_args(argv)
    if a.seq_len is not None and a.task is None:
        p.error("--seq-len applies to --task; with --random-tokens the length is its argument")
    for name in ("random_tokens", "seq_len", "batch_size"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if os.path.exists(a.out) and not os.path.isdir(a.out):
        p.error(f"--out {a.out} is a file; give a folder")
    import torch

    try:
        device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        p.error(f"--device must be cpu or cuda[:N], got {a.device}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {a.device}: no CUDA device is available")
    a.device = device
    if Path(a.model).exists() and not (Path(a.model) / "config.json").is_file():
        p.error(f"model folder {a.model} has no config.json")
    local = a.model.startswith((".", "/", "~")) or a.model.count("/") > 1 or Path(a.model).parent.is_dir()
    if not Path(a.model).exists() and local and Path(a.model).parent != Path("."):  # a path, not a Hub id
        p.error(f"model folder {a.model} does not exist")
    from transformers import AutoConfig

    import hf_lrnn  # noqa: F401  (registers model_type "lrnn" with the Auto classes)

    try:
        a.config = AutoConfig.from_pretrained(a.model, trust_remote_code=a.trust_remote_code)
    except (OSError, ValueError) as err:
        p.error(f"cannot read the model's config from {a.model}: {str(err).splitlines()[0]}")
    if a.config.model_type != "lrnn":
        p.error(f"{a.model} is a {a.config.model_type!r} model; the spectra are of LRNN models (model_type 'lrnn')")
    if a.task is not None:
        from benchmarks.synthetic.tasks import default_spec

        try:
            spec = default_spec(a.task, seq_len=a.seq_len)
        except ValueError as err:
            p.error(f"--task: {err}")
        if spec.probe:
            p.error(f"--task {a.task} is a probe task (decoded from the last state); pick a sequence task")
        if spec.vocab_size > a.config.vocab_size:
            p.error(f"--task {a.task} uses token ids up to {spec.vocab_size - 1}, but the model's vocab_size is "
                    f"{a.config.vocab_size}")
        a.length = spec.seq_len
    else:
        a.length = a.random_tokens
    a.window = [min(16, a.length)] if a.window is None else a.window
    bad = [w for w in a.window if not 1 <= w <= a.length]
    if bad:
        p.error(f"--window values must lie in [1, seq_len={a.length}], got {bad}")
    try:
        import matplotlib
    except ImportError:
        p.error("the plots need matplotlib: pip install matplotlib")
    matplotlib.use("Agg")
    return a


def input_ids_of(a):
    """(batch_size, T) token ids: the first test sequences of --task, or uniform random ids."""
    import torch

    if a.task is not None:
        from benchmarks.synthetic.tasks import make_task

        data = make_task(a.task, seed=a.seed, num_train=a.batch_size, num_test=a.batch_size, seq_len=a.seq_len)
        return data.test_inputs[:a.batch_size], {"task": a.task}
    generator = torch.Generator().manual_seed(a.seed)
    ids = torch.randint(0, a.config.vocab_size, (a.batch_size, a.random_tokens), generator=generator)
    return ids, {"random_tokens": a.random_tokens}


def complex_plane(ax, limit: float) -> None:
    """Set ``ax`` up as the complex plane on [-limit, limit]^2, with the unit circle and both axes drawn."""
    circle = np.linspace(0, 2 * np.pi, 361)
    ax.plot(np.cos(circle), np.sin(circle), color="0.6", lw=0.7)
    ax.axhline(0, color="0.88", lw=0.5)
    ax.axvline(0, color="0.88", lw=0.5)
    ax.set(aspect="equal", xlim=(-limit, limit), ylim=(-limit, limit))


def draw_eigenvalues(axes, eigs, title: str, generator) -> None:
    """Three panels on ``axes``: complex plane with the unit circle, histogram of |lambda|, of arg(lambda)."""
    import torch

    flat = eigs.flatten()
    if flat.numel() > MAX_SCATTER_POINTS:
        shown = flat[torch.randperm(flat.numel(), generator=generator)[:MAX_SCATTER_POINTS]]
    else:
        shown = flat
    plane, modulus, angle = axes
    limit = max(1.1, float(flat.abs().max()) * 1.05)
    complex_plane(plane, limit)
    plane.scatter(shown.real, shown.imag, s=2, alpha=0.25, color="C0", linewidths=0)
    plane.set(xlabel="Re(lambda)", ylabel="Im(lambda)")
    plane.set_title(title, fontsize=9)
    modulus.hist(flat.abs().numpy(), bins=60, range=(0.0, limit), color="C1")
    modulus.axvline(1.0, color="0.4", lw=0.8, ls="--")
    modulus.set(xlabel="|lambda|", yscale="log")
    angle.hist(flat.angle().numpy(), bins=72, range=(-math.pi, math.pi), color="C2")
    angle.set(xlabel="arg(lambda) (rad)", yscale="log")


def plot_layer(spectrum, path) -> None:
    """One PNG for a layer: a row for the single steps, then one per window."""
    import matplotlib.pyplot as plt
    import torch

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


def main(argv=None) -> int:
    a = parse_args(argv)
    from transformers import AutoModelForCausalLM

    from benchmarks.spectrum.analysis import layer_spectra

    model = AutoModelForCausalLM.from_pretrained(a.model, trust_remote_code=a.trust_remote_code).to(a.device).eval()
    input_ids, source = input_ids_of(a)
    try:
        spectra = layer_spectra(model, input_ids.to(a.device), windows=a.window)
    except ValueError as err:  # non-finite transition matrices, named by layer and window
        print(f"error: {err}", file=sys.stderr)
        return 1
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    layers = []
    for spectrum in spectra:
        png = out / f"layer{spectrum.layer}.png"
        plot_layer(spectrum, png)
        layers.append({"layer": spectrum.layer, "mixer": spectrum.mixer, "size": spectrum.size,
                       "label": spectrum.label, "gate_normalization": spectrum.gate_normalization,
                       "plot": png.name, **spectrum.summary})
    report = {"model": a.model, "input": {**source, "batch_size": int(input_ids.shape[0]), "seq_len": a.length,
                                          "seed": a.seed},
              "windows": a.window, "device": str(a.device), "layers": layers}
    (out / "spectrum.json").write_text(json.dumps(report, indent=1))
    for entry in layers:
        steps = entry["steps"]
        print(f"layer {entry['layer']} {entry['label']} ({entry['gate_normalization']}): spectral radius median "
              f"{steps['spectral_radius']['q50']:.3f}, negative real {steps['fraction_negative_real']:.3f}, "
              f"complex {steps['fraction_complex']:.3f}")
    print(f"wrote {out}/spectrum.json and {len(layers)} PNGs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
