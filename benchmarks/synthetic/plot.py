"""Tables and plots from the synthetic suite's JSON lines.

    python -m benchmarks.synthetic.plot benchmarks/results/synthetic.jsonl --out-dir benchmarks/results

Writes ``synthetic_table.md`` (rows models, columns tasks, at d = 128; the paper's numbers beside ours),
``synthetic_params.png`` (accuracy vs parameter count per task) and ``synthetic_blocksize.png``
(S3/S4/S5 accuracy vs BD-LRU block size, k = 1 being the diagonal LRU). A run that made fewer than
``MIN_STEPS`` optimizer steps (its time budget went to kernel compilation) is shown as "n/t" (not
trained) and left out of means and plots.
"""
from __future__ import annotations

import argparse
import collections
import json
import os

from benchmarks.synthetic.suite import MAIN_MODELS
from benchmarks.synthetic.tasks import TASKS

MIN_STEPS = 10
TASK_ORDER = list(TASKS)
MODEL_ORDER = [label for label, _, _ in MAIN_MODELS]
# The paper's numbers (arXiv 2602.12021) for cells it reports; "perm" = its permutation-composition average.
PAPER = {("bdlru_k4", "s3"): "1.00*", ("bdlru_k4", "s4"): "1.00*", ("bdlru_k4", "s5"): "0.93*",
         ("bdlru_k4", "recall"): "1.00", ("diag", "recall"): "0.775"}
PAPER_PERM_AVG = {"mamba2": "0.350", "deltanet": "0.402", "lstm": "0.738"}


def load(path):
    """(the environment record, the records of finished runs, all other records) of a suite's JSON lines."""
    env, ok, other = None, [], []
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if rec["status"] == "env":
                env = rec
            elif rec["status"] == "ok":
                ok.append(rec)
            else:
                other.append(rec)
    return env, ok, other


def model_of(rec):
    """A record's model label, from its spec when the run did not happen."""
    if "model" in rec and rec["model"] not in (None, "?"):
        return rec["model"]
    spec = rec.get("spec", {})
    kind = spec.get("model")
    if kind == "hlru":
        return "diag" if spec.get("order") == 1 else f"hlru_m{spec.get('order')}"
    if kind == "bdlru":
        return "diag" if spec.get("block_size") == 1 else f"bdlru_k{spec.get('block_size')}"
    return kind


def fmt(values):
    """A cell: the mean, and the per-seed values when there are several."""
    if not values:
        return ""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ({'/'.join(f'{v:.2f}' for v in values)})"


def table(ok, other, hidden=128):
    """The markdown table (rows models, columns tasks) at width ``hidden``, and its cells."""
    cells = collections.defaultdict(list)
    untrained = collections.defaultdict(int)
    for r in ok:
        if r["config"]["hidden_size"] != hidden:
            continue
        key = (r["model"], r["task"])
        if r["steps"] < MIN_STEPS:
            untrained[key] += 1
        else:
            cells[key].append(r["accuracy"])
    failed = {}
    for r in other:
        spec = r.get("spec", {})
        if spec.get("hidden_size", hidden) != hidden:
            continue
        key = (model_of(r), r["task"])
        if "deadline" in r.get("reason", "") or "unfinished" in r.get("reason", ""):
            failed.setdefault(key, "budget")
        elif "Triton" in r.get("reason", "") and "Hopper" in r.get("reason", ""):
            failed.setdefault(key, "fla-err")
        else:
            failed.setdefault(key, r["status"])
    lines = ["| model | " + " | ".join(TASK_ORDER) + " | paper |", "|" + "---|" * (len(TASK_ORDER) + 2)]
    for m in MODEL_ORDER:
        row = []
        for t in TASK_ORDER:
            text = fmt(cells.get((m, t), []))
            if untrained.get((m, t)):
                text = (text + " " if text else "") + f"n/t×{untrained[(m, t)]}"
            if not text and (m, t) in failed:
                text = failed[(m, t)]
            if (m, t) in PAPER:
                text += f" [paper {PAPER[(m, t)]}]"
            row.append(text or "–")
        paper = f"perm. avg {PAPER_PERM_AVG[m]}" if m in PAPER_PERM_AVG else ""
        lines.append(f"| {m} | " + " | ".join(row) + f" | {paper} |")
    return "\n".join(lines), cells


def plots(ok, out_dir, env):
    """Write synthetic_params.png and synthetic_blocksize.png to ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stamp = (f"synthetic suite; {len(env['gpus'])}x {env['gpus'][0] if env['gpus'] else 'CPU'};\n"
             f"{env['date_utc']} UTC; time-capped runs (see benchmarks/README.md)") if env else ""
    good = [r for r in ok if r["steps"] >= MIN_STEPS]
    tasks = [t for t in TASK_ORDER if any(r["task"] == t for r in good)]
    cols = 3
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    colors = {m: plt.cm.tab20(i / len(MODEL_ORDER)) for i, m in enumerate(MODEL_ORDER)}
    for ax, task in zip(axes.flat, tasks):
        for m in MODEL_ORDER:
            by_p = collections.defaultdict(list)
            for r in good:
                if r["task"] == task and r["model"] == m:
                    by_p[r["parameters"]].append(r["accuracy"])
            if not by_p:
                continue
            ps = sorted(by_p)
            ax.plot(ps, [sum(by_p[p]) / len(by_p[p]) for p in ps], "o-", color=colors[m], label=m, ms=4)
        ax.set_xscale("log")
        ax.set_title(task)
        ax.set_xlabel("parameters")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    seen = {}
    for ax in axes.flat:
        handles, labels = ax.get_legend_handles_labels()
        for h, l in zip(handles, labels):
            seen.setdefault(l, h)
    fig.legend([seen[l] for l in MODEL_ORDER if l in seen], [l for l in MODEL_ORDER if l in seen],
               loc="lower center", ncol=6, fontsize=8)
    fig.suptitle("Synthetic tasks: accuracy vs parameters (d = 64/128/256 where swept)\n" + stamp.replace("\n", " "), fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(os.path.join(out_dir, "synthetic_params.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for task, marker in (("s3", "o"), ("s4", "s"), ("s5", "^")):
        ks, accs = [], []
        for k, label in ((1, "diag"), (2, "bdlru_k2"), (4, "bdlru_k4"), (8, "bdlru_k8")):
            vals = [r["accuracy"] for r in good
                    if r["task"] == task and r["model"] == label and r["config"]["hidden_size"] == 128]
            if vals:
                ks.append(k)
                accs.append(sum(vals) / len(vals))
        ax.plot(ks, accs, marker + "-", label=task.upper())
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 4, 8], ["1 (diag)", "2", "4", "8"])
    ax.set_xlabel("BD-LRU block size k")
    ax.set_ylabel("test accuracy (all positions)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Permutation composition vs block size (d = 128)\n" + stamp, fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "synthetic_blocksize.png"), dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.synthetic.plot",
                                description=__doc__)
    p.add_argument("results", nargs="?", default="benchmarks/results/synthetic.jsonl")
    p.add_argument("--out-dir", default="benchmarks/results")
    a = p.parse_args(argv)
    env, ok, other = load(a.results)
    text, _ = table(ok, other)
    header = ""
    if env:
        header = (f"Command: `{env['command']}` on {len(env['gpus'])}x {env['gpus'][0] if env['gpus'] else 'CPU'} "
                  f"(Python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, fla {env['fla']}), "
                  f"{env['date_utc']} UTC.\n\n")
    legend = ("Test accuracy at d = 128, 2 mixer + 2 SwiGLU blocks; mean over seeds with the per-seed values in "
              "brackets. n/t: the run's time budget went to kernel compilation (fewer than "
              f"{MIN_STEPS} steps), not a result. budget: not started within the suite's time budget. "
              "fla-err: flash-linear-attention refused to run (see benchmarks/README.md). [paper x]: the paper's number for "
              "that cell; * the paper reports S3/S4/S5 for BD-LRU without saying k here, shown at k = 4.\n\n")
    os.makedirs(a.out_dir, exist_ok=True)
    with open(os.path.join(a.out_dir, "synthetic_table.md"), "w") as f:
        f.write(header + legend + text + "\n")
    print(header + legend + text)
    plots(ok, a.out_dir, env)


if __name__ == "__main__":
    main()
