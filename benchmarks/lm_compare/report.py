"""Table and loss-curve plot from the results.json files that run_device.sh writes.

    python -m benchmarks.lm_compare.report benchmarks/results/lm_compare_call1.json benchmarks/results/lm_compare_call2.json

Later files' runs replace earlier ones of the same name (e.g. a rerun of one model).

Writes benchmarks/results/lm_compare.md and benchmarks/results/lm_compare_loss.png.
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"
MODELS = ["hlru_m2", "bdlru_k4", "lru_m1", "llama", "mamba"]
LABELS = {"hlru_m2": "H-LRU (m=2)", "bdlru_k4": "BD-LRU (k=4)", "lru_m1": "diagonal LRU (m=1)", "llama": "Llama",
          "mamba": "Mamba"}
MULTI = ["hlru_m2", "hlru_m2_ddp2", "hlru_m2_fsdp2"]
PAIRS = [  # (1-GPU run, run, label)
    ("hlru_m2", "hlru_m2", "10m, 1 GPU"), ("hlru_m2", "hlru_m2_ddp2", "10m, DDP"), ("hlru_m2", "hlru_m2_fsdp2", "10m, FSDP2"),
    ("hlru_125m", "hlru_125m", "125m (seq 512), 1 GPU"), ("hlru_125m", "hlru_125m_ddp2", "125m (seq 512), DDP"),
]


def curve(run, key):
    """[(step, value)] of ``key`` in a run's Trainer log history."""
    return [(e["step"], e[key]) for e in run["log_history"] if key in e]


def main(paths):
    """Merge the results files, print the tables and write lm_compare.md and lm_compare_loss.png."""
    results = {"env": "", "status": "", "runs": {}}
    for i, path in enumerate(paths):
        part = json.loads(Path(path).read_text())
        results["env"] += f"[call {i + 1}] " + part["env"]
        results["status"] += part["status"]
        results["runs"].update(part["runs"])
    runs = results["runs"]
    lines = ["| model | parameters | steps | tokens | final val loss | val ppl | bits/char | best val loss (step) | train tokens/s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in MODELS:
        if name in runs:
            r = runs[name]
            lines.append(f"| {LABELS[name]} | {r['parameters'] / 1e6:.2f}M | {r['steps']} | {r['train_tokens'] / 1e6:.2f}M | "
                         f"{r['eval_loss']:.4f} | {r['eval_perplexity']:.2f} | {r['eval_bits_per_char']:.3f} | "
                         "{:.4f} ({}) | ".format(*min((v, s) for s, v in curve(r, "eval_loss"))) +
                         f"{r['train_tokens_per_second']:,.0f} |")
        else:
            lines.append(f"| {name} | (no result: see the status and logs) | | | | | | | |")
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
    table = "\n".join(lines)
    (RESULTS / "lm_compare.md").write_text(
        "# Language-model comparison and multi-GPU check (scripts/train.py)\n\n"
        "Produced by `bash benchmarks/lm_compare/run_device.sh` on one machine with 4 x H200, run twice (call 1: "
        "the five models and the 10m DDP/FSDP2 check; call 2, `PLAN=scaling`: Mamba again with `mambapy` installed, "
        "which replaces call 1's Mamba (19 steps: transformers' sequential fallback scan), and the 125m DDP scaling "
        f"pair), and `python -m benchmarks.lm_compare.report {' '.join(Path(p).name for p in paths)}`; raw numbers "
        "and loss histories in those JSON files.\n\n"
        f"```\n{results['env'].strip()}\n{results['status'].strip()}\n```\n\n{table}\n")
    print(table)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in MODELS:
        if name in runs:
            if not curve(runs[name], "loss"):
                continue
            steps, losses = zip(*curve(runs[name], "loss"))
            axes[0].plot(steps, losses, label=LABELS[name])
            eval_steps, eval_losses = zip(*curve(runs[name], "eval_loss"))
            axes[0].plot(eval_steps, eval_losses, "o--", color=axes[0].lines[-1].get_color(), markersize=4)
    axes[0].set(title="tinyshakespeare, preset 10m: train (lines) and validation (dots) loss", xlabel="step",
                ylabel="loss (nats/token)")
    axes[0].set_ylim(top=6)
    axes[0].legend()
    for name in MULTI:
        if name in runs:
            if not curve(runs[name], "loss"):
                continue
            steps, losses = zip(*curve(runs[name], "loss"))
            axes[1].plot(steps, losses, label={"hlru_m2": "1 GPU", "hlru_m2_ddp2": "2 GPUs DDP",
                                               "hlru_m2_fsdp2": "2 GPUs FSDP2"}[name], linestyle=["-", "--", ":"][MULTI.index(name)])
    axes[1].set(title="H-LRU (m=2): 1 GPU vs 2 GPUs (same global batch)", xlabel="step", ylabel="train loss")
    axes[1].set_ylim(top=6)
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "lm_compare_loss.png", dpi=110)


if __name__ == "__main__":
    main(sys.argv[1:] or [RESULTS / "lm_compare_call1.json", RESULTS / "lm_compare_call2.json"])
