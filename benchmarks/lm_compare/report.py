"""Table and loss-curve plot of the language-model comparison (scripts/train.py runs; commands in the README).

    python -m benchmarks.lm_compare.report runs/hlru_m2 runs/bdlru_k4 ... --out benchmarks/results

Each input is a train.py output folder (metrics.json; the folder's name is a model label, or ``<label>_ddp2`` /
``_fsdp2`` / ``hlru_125m[_ddp2]``) or a JSON file of runs (``{"env", "status", "runs": {name: metrics}}``); later
inputs replace earlier runs of the same name. Writes ``lm_compare.md`` and ``lm_compare_loss.png`` to --out."""
import argparse
import json
from pathlib import Path

from benchmarks.models import display_name

MODELS = ["hlru_m2", "bdlru_k4", "diag", "llama", "mamba"]
OLD_RUN_NAMES = {"lru_m1": "diag"}  # the committed files name the diagonal LRU's run lru_m1
HIDDEN_SIZE = 320  # train.py's 10m preset
MULTI = {"hlru_m2": "1 GPU", "hlru_m2_ddp2": "2 GPUs DDP", "hlru_m2_fsdp2": "2 GPUs FSDP2"}
PAIRS = [  # (1-GPU run, run, label)
    ("hlru_m2", "hlru_m2", "10m, 1 GPU"), ("hlru_m2", "hlru_m2_ddp2", "10m, DDP"), ("hlru_m2", "hlru_m2_fsdp2", "10m, FSDP2"),
    ("hlru_125m", "hlru_125m", "125m (seq 512), 1 GPU"), ("hlru_125m", "hlru_125m_ddp2", "125m (seq 512), DDP"),
]


def curve(run, key):
    """[(step, value)] of ``key`` in a run's Trainer log history."""
    return [(e["step"], e[key]) for e in run["log_history"] if key in e]


def load(paths):
    """{run name: metrics} of every input, and the inputs' environment / status notes."""
    runs, notes = {}, []
    for path in map(Path, paths):
        if path.is_dir():
            runs[path.name] = json.loads((path / "metrics.json").read_text())
            continue
        part = json.loads(path.read_text())
        notes.append(f"[{path.name}] {part.get('env', '')}{part.get('status', '')}".strip())
        runs.update(part["runs"])
    return {OLD_RUN_NAMES.get(name, name): run for name, run in runs.items()}, notes


def tables(runs) -> str:
    lines = ["| model | parameters | steps | tokens | final val loss | val ppl | bits/char | best val loss (step) | train tokens/s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in MODELS:
        if name not in runs:
            lines.append(f"| {display_name(name, HIDDEN_SIZE)} | (no result) | | | | | | | |")
            continue
        r = runs[name]
        best_loss, best_step = min((v, s) for s, v in curve(r, "eval_loss"))
        lines.append(f"| {display_name(name, HIDDEN_SIZE)} | {r['parameters'] / 1e6:.2f}M | {r['steps']} | "
                     f"{r['train_tokens'] / 1e6:.2f}M | {r['eval_loss']:.4f} | {r['eval_perplexity']:.2f} | "
                     f"{r['eval_bits_per_char']:.3f} | {best_loss:.4f} ({best_step}) | {r['train_tokens_per_second']:,.0f} |")
    lines += ["", "| H-LRU (m=2) run | GPUs | val loss | train tokens/s | scaling vs 1 GPU | max abs train-loss diff vs 1 GPU |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for base_name, name, label in PAIRS:
        if base_name not in runs or name not in runs:
            lines.append(f"| {label} | | (no result) | | | |")
            continue
        base, r = runs[base_name], runs[name]
        base_curve = dict(curve(base, "loss"))
        diff = max((abs(loss - base_curve[step]) for step, loss in curve(r, "loss") if step in base_curve), default=float("nan"))
        scale = r["train_tokens_per_second"] / base["train_tokens_per_second"]
        lines.append(f"| {label} | {r['world_size']} | {r['eval_loss']:.4f} | {r['train_tokens_per_second']:,.0f} | "
                     f"{scale:.2f}x | {diff:.4f} |")
    return "\n".join(lines)


def plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in MODELS:
        if name in runs and curve(runs[name], "loss"):
            axes[0].plot(*zip(*curve(runs[name], "loss")), label=display_name(name, HIDDEN_SIZE))
            axes[0].plot(*zip(*curve(runs[name], "eval_loss")), "o--", color=axes[0].lines[-1].get_color(), markersize=4)
    axes[0].set(title="tinyshakespeare, preset 10m: train (lines) and validation (dots) loss", xlabel="step",
                ylabel="loss (nats/token)")
    for style, (name, label) in zip(("-", "--", ":"), MULTI.items()):
        if name in runs and curve(runs[name], "loss"):
            axes[1].plot(*zip(*curve(runs[name], "loss")), label=label, linestyle=style)
    axes[1].set(title="H-LRU (m=2): 1 GPU vs 2 GPUs (same global batch)", xlabel="step", ylabel="train loss")
    for ax in axes:
        ax.set_ylim(top=6)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.lm_compare.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="train.py output folders or JSON files of runs")
    p.add_argument("--out", default="benchmarks/results", help="folder for lm_compare.md and lm_compare_loss.png")
    args = p.parse_args(argv)
    missing = [path for path in args.inputs if not Path(path).exists()]
    if missing:
        p.error(f"no such file or folder: {', '.join(missing)}")
    runs, notes = load(args.inputs)
    table = tables(runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.lm_compare.report " + " ".join(args.inputs)
    notes_block = "```\n" + "\n".join(notes) + "\n```\n\n" if notes else ""
    (out / "lm_compare.md").write_text("# Language-model comparison and multi-GPU check (scripts/train.py)\n\n"
                                       f"`{command}`; commands, machine and date of the runs: benchmarks/README.md."
                                       f"\n\n{notes_block}{table}\n")
    plot(runs, out / "lm_compare_loss.png")
    print(table)


if __name__ == "__main__":
    main()
