"""The spectrum study: train small LRNNs on state-tracking tasks, then analyse the spectra of their transitions.

    python -m benchmarks.spectrum.run --device cuda           # the full grid, one process
    python -m benchmarks.spectrum.run --smoke --out /tmp/sp   # 2 tiny models on the CPU, under a minute

Grid: TASKS x MODELS x NORMALIZATIONS, d = 128, two mixer layers, each trained by ``benchmarks.synthetic.run.fit``
(project recipe) for ``TASK_STEPS``. Written to ``--out`` (default benchmarks/results/spectrum/): ``jobs.jsonl``
(a record per job, failures included), ``samples/<job>.npz`` (eigenvalue samples), ``spectrum.json``,
``summary.md`` and ``eigenvalues_<task>.png``."""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from benchmarks.models import display_name
from benchmarks.spectrum.analysis import layer_spectra
from benchmarks.spectrum.cli import complex_plane
from benchmarks.synthetic.run import default_run, fit

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("s5", "s3", "parity", "mod_count")
MODELS = ("bdlru_k4", "bdlru_k8", "hlru_m2", "diag")
NORMALIZATIONS = ("softmax", "tanh_l1")
# Training steps per task: S5 needs the most; the others are solved in far fewer or plateau (the first grid,
# with time budgets of 180 s and 70 s, made about 11,000 and 4,000 steps).
TASK_STEPS = {"s5": 11_000, "s3": 4_000, "parity": 4_000, "mod_count": 4_000}
# The smoke mode: two tiny models on parity (length 8) on the CPU.
SMOKE_JOBS = [("parity", "diag", "tanh_l1"), ("parity", "bdlru_k4", "softmax")]
SMOKE_STEPS = 40
SMOKE_ANALYSIS_BATCH = 64
SAMPLES_PER_LAYER = 2000  # eigenvalues kept per layer and kind for the plots


def job_name(job: dict) -> str:
    return f"{job['task']}_{job['model']}_{job['normalization']}_s{job['seed']}"


def analyse(model, data, analysis_batch: int, window: int, seed: int):
    """Per-layer spectrum summaries and eigenvalue samples for the first test sequences, on the CPU:
    windows of ``window`` steps and of the whole sequence."""
    model = model.float().cpu()
    input_ids = data.test_inputs[:analysis_batch]
    T = input_ids.shape[1]
    windows = sorted({min(window, T), T})
    gen = torch.Generator().manual_seed(seed)
    layers, samples = [], {}
    for spectrum in layer_spectra(model, input_ids, windows=windows):
        by_window = {str(w): summary for w, summary in spectrum.summary["windows"].items()}  # JSON's keys
        layers.append({"layer": spectrum.layer, "mixer": spectrum.mixer, "size": spectrum.size,
                       "label": spectrum.label, "gate_normalization": spectrum.gate_normalization,
                       "steps": spectrum.summary["steps"], "windows": by_window})
        for kind, eigs in (("steps", spectrum.step_eigenvalues), ("sequence", spectrum.window_eigenvalues[T])):
            flat = eigs.flatten()
            keep = torch.randperm(flat.numel(), generator=gen)[:SAMPLES_PER_LAYER]
            samples[f"layer{spectrum.layer}_{kind}"] = flat[keep].numpy().astype(np.complex64)
    return {"windows": windows, "layers": layers}, samples


def run_job(job: dict, options: dict) -> dict:
    """Train and analyse one job; writes its eigenvalue samples; returns its record."""
    t0 = time.time()
    smoke = options["smoke"]
    run = default_run(task=job["task"], model=job["model"], seed=job["seed"], hidden_size=options["hidden_size"],
                      recipe="project", smoke=smoke, device=options["device"], gate_normalization=job["normalization"],
                      task_overrides={"seq_len": 8} if smoke else {})
    run["steps"] = SMOKE_STEPS if smoke else options["steps"] or TASK_STEPS[job["task"]]
    model, data, result = fit(run, log=lambda line: print(line, flush=True))
    final = result["final"][str(data.spec.seq_len)]
    record = {key: result[key] for key in ("steps", "stopped", "final_train_loss", "seconds", "first_step_s", "bf16")}
    record.update(accuracy=final["accuracy"], last_position_accuracy=final["per_position"][-1],
                  seq_len=data.spec.seq_len, num_train=data.spec.num_train)
    t_analysis = time.time()
    spectrum, samples = analyse(model, data, options["analysis_batch"], options["window"], job["seed"])
    np.savez_compressed(Path(options["out"]) / "samples" / f"{job_name(job)}.npz", **samples)
    return {**job, "status": "ok", "hidden_size": run["hidden_size"], "lr": run["lr"], "batch_size": run["batch_size"],
            **record, **spectrum, "analysis_s": round(time.time() - t_analysis, 1),
            "wall_time_s": round(time.time() - t0, 1)}


def run_all(jobs: list, options: dict, log=print) -> list:
    """Run the jobs one after another; a failing job is recorded with its error and the grid goes on. Records
    are appended to jobs.jsonl as they come."""
    out = Path(options["out"])
    (out / "samples").mkdir(parents=True, exist_ok=True)
    jsonl = out / "jobs.jsonl"
    jsonl.write_text("")
    t0, records = time.time(), []
    for job in jobs:
        try:
            record = run_job(job, options)
        except Exception as err:  # noqa: BLE001 (any failure of one job is recorded and the grid goes on)
            record = {**job, "status": "failed", "reason": f"{type(err).__name__}: {err}",
                      "traceback": traceback.format_exc()}
        records.append(record)
        with open(jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")
        if record["status"] == "ok":
            log(f"[{len(records)}/{len(jobs)}] {job_name(record)}: accuracy {record['accuracy']:.3f}, "
                f"{record['steps']} steps, train {record['seconds']:.0f} s, analysis {record['analysis_s']:.0f} s, "
                f"at {time.time() - t0:.0f} s")
        else:
            log(f"[{len(records)}/{len(jobs)}] {job_name(record)}: failed ({record['reason']})")
    return records


# ------------------------------------------------------------------------------------------ reports
def layer_stat(record: dict, path: tuple, reduce):
    """reduce over the layers of record['layers'][i][path...] (None if any is missing)."""
    values = []
    for layer in record["layers"]:
        value = layer
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            return None
        values.append(value)
    return reduce(values)


# summary.md's columns: a record field, or (path into each layer's summary, reduction over the layers), where
# "seq" stands for the window of the whole sequence.
SUMMARY_COLUMNS = {
    "task": "task", "model": "model", "norm": "normalization", "seed": "seed", "accuracy": "accuracy",
    "steps": "steps", "stopped": "stopped", "median rho(M_t)": (("steps", "spectral_radius", "q50"), max),
    "Re<0": (("steps", "fraction_negative_real"), max), "complex": (("steps", "fraction_complex"), max),
    "abs~1": (("steps", "fraction_unit_modulus"), max), "abs~1 (seq)": (("seq", "fraction_unit_modulus"), max),
    "perm dist": (("seq", "block_permutation_distance", "q00"), min),
    "perm blocks": (("seq", "fraction_permutation_blocks"), max),
    "signed perm dist": (("seq", "block_signed_permutation_distance", "q00"), min),
    "signed perm blocks": (("seq", "fraction_signed_permutation_blocks"), max),
}


def summary_cell(record: dict, column) -> str:
    """One cell of summary.md: a column of SUMMARY_COLUMNS for a finished job, floats to 3 decimals."""
    if isinstance(column, str):
        value = record[column]
    else:
        path, reduce = column
        path = ("windows", str(record["windows"][-1])) + path[1:] if path[0] == "seq" else path
        value = layer_stat(record, path, reduce)
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def write_summary_md(records: list, path: Path) -> None:
    lines = ["| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    for r in records:
        if r["status"] == "ok":
            lines.append("| " + " | ".join(summary_cell(r, column) for column in SUMMARY_COLUMNS.values()) + " |")
    not_run = [job_name(r) + f" ({r['status']}: {r['reason']})" for r in records if r["status"] != "ok"]
    notes = [
        "", "Per job: median spectral radius of the single-step matrices M_t (max over layers); fractions of "
        "eigenvalues of M_t with Re < 0, complex, and with ||lambda| - 1| <= 0.05 (abs~1; max over layers); "
        "the last for the products over the whole sequence (seq). Products over the whole sequence: 'perm "
        "dist' is the median Frobenius distance from the nearest permutation matrix of the most "
        "permutation-like block or channel (min over blocks and layers), 'perm blocks' the fraction of "
        "blocks whose median distance is <= benchmarks.spectrum.analysis.PERMUTATION_TOL (max over layers); 'signed' "
        "the same for signed permutation matrices.",
    ]
    if not_run:
        notes.append("\nNot finished: " + ", ".join(not_run))
    path.write_text("\n".join(lines + notes) + "\n")


def import_pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise SystemExit("benchmarks.spectrum.run draws its plots with matplotlib: pip install matplotlib") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_task(plt, task: str, records: list, out: Path) -> None:
    """eigenvalues_<task>.png: a row per model; per normalisation, single steps and whole-sequence products."""
    ok = [r for r in records if r["status"] == "ok" and r["task"] == task]
    seed = min(r["seed"] for r in ok)
    by_key = {(r["model"], r["normalization"]): r for r in ok if r["seed"] == seed}
    models = [m for m in MODELS if any(key[0] == m for key in by_key)]
    norms = [n for n in NORMALIZATIONS if any(key[1] == n for key in by_key)]
    fig, axes = plt.subplots(len(models), 2 * len(norms), figsize=(2.9 * 2 * len(norms), 2.9 * len(models)),
                             squeeze=False)
    for row, model in enumerate(models):
        for col_group, norm in enumerate(norms):
            record = by_key.get((model, norm))
            for offset, kind in enumerate(("steps", "sequence")):
                ax = axes[row, 2 * col_group + offset]
                complex_plane(ax, 1.15)
                ax.tick_params(labelsize=6)
                if record is None:
                    ax.set_title(f"{display_name(model)} {norm}: not run", fontsize=7)
                    continue
                samples = np.load(out / "samples" / f"{job_name(record)}.npz")
                for layer in range(len(record["layers"])):
                    eigs = samples[f"layer{layer}_{kind}"]
                    ax.scatter(eigs.real, eigs.imag, s=3, alpha=0.3, linewidths=0, color=f"C{layer}",
                               label=f"layer {layer}")
                what = "M_t" if kind == "steps" else f"product over {record['windows'][-1]}"
                ax.set_title(f"{display_name(model, record['hidden_size'])} {norm}, acc {record['accuracy']:.2f}\n{what}",
                             fontsize=7)
    axes[0, 0].legend(fontsize=6, markerscale=3, loc="lower left")
    fig.suptitle(f"{task}: eigenvalues of the learned transitions (seed {seed}, layer 0 blue, layer 1 orange)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out / f"eigenvalues_{task}.png", dpi=120)
    plt.close(fig)


def write_reports(records: list, settings: dict, out: Path) -> None:
    plt = import_pyplot()
    with open(out / "spectrum.json", "w") as f:
        json.dump({**settings, "jobs": records}, f, indent=1)
    write_summary_md(records, out / "summary.md")
    finished = [r for r in records if r["status"] == "ok"]
    for task in TASKS:
        if any(r["task"] == task for r in finished):
            plot_task(plt, task, finished, out)


# ------------------------------------------------------------------------------------------ CLI
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.spectrum.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=TASKS, help="default: all")
    p.add_argument("--models", nargs="+", choices=MODELS, help="default: all")
    p.add_argument("--normalizations", nargs="+", choices=NORMALIZATIONS, help="default: all")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--hidden-size", type=int, default=None, help="model width d (default 128)")
    p.add_argument("--steps", type=int, default=None, help=f"training steps of every job (default per task: {TASK_STEPS})")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--analysis-batch", type=int, default=128, help="test sequences whose transitions are analysed")
    p.add_argument("--window", type=int, default=4, help="short window for the products (plus the whole sequence)")
    p.add_argument("--out", default=None,
                   help="output folder (default benchmarks/results/spectrum/; with --smoke a new temporary folder)")
    p.add_argument("--smoke", action="store_true",
                   help=f"{len(SMOKE_JOBS)} tiny models (d = 32, length 8, {SMOKE_STEPS} steps) on the CPU")
    a = p.parse_args(argv)
    grid_options = {"--tasks": a.tasks, "--models": a.models, "--normalizations": a.normalizations,
                    "--hidden-size": a.hidden_size, "--steps": a.steps}
    given = [name for name, value in grid_options.items() if value is not None]
    if a.smoke and given:
        p.error(f"--smoke trains its own {len(SMOKE_JOBS)} tiny models; it does not take {', '.join(given)}")
    a.tasks, a.models = a.tasks or list(TASKS), a.models or list(MODELS)
    a.normalizations = a.normalizations or list(NORMALIZATIONS)
    a.hidden_size = a.hidden_size or 128
    if a.device is None:
        a.device = "cpu" if a.smoke or not torch.cuda.is_available() else "cuda"
    for name in ("steps", "analysis_batch", "window", "hidden_size"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.out is None:
        a.out = tempfile.mkdtemp(prefix="spectrum_smoke_") if a.smoke else str(ROOT / "benchmarks" / "results" / "spectrum")
    if Path(a.out).is_file():
        p.error(f"--out {a.out} is a file; give a folder")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    out = Path(a.out)
    import_pyplot()  # fail before training if the plots cannot be drawn
    if a.smoke:
        jobs = [{"task": t, "model": m, "normalization": n, "seed": a.seeds[0]} for t, m, n in SMOKE_JOBS]
    else:
        jobs = [{"task": t, "model": m, "normalization": n, "seed": s}
                for t in a.tasks for m in a.models for n in a.normalizations for s in a.seeds]
    analysis_batch = min(a.analysis_batch, SMOKE_ANALYSIS_BATCH) if a.smoke else a.analysis_batch
    options = {"hidden_size": a.hidden_size, "steps": a.steps, "device": a.device, "analysis_batch": analysis_batch,
               "window": a.window, "out": str(out), "smoke": a.smoke}
    t0 = time.time()
    records = run_all(jobs, options)
    settings = {"command": "python -m benchmarks.spectrum.run " + " ".join(sys.argv[1:] if argv is None else argv),
                "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                "device": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else platform.processor() or "cpu",
                "torch": torch.__version__, "options": options, "total_time_s": round(time.time() - t0, 1)}
    write_reports(records, settings, out)
    print(f"{len(records)} jobs in {time.time() - t0:.0f} s; wrote {out}/spectrum.json, summary.md and PNGs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
