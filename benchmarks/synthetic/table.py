"""The study table from committed records: one block per task x step budget x recipe, final and best-epoch columns.

    python -m benchmarks.synthetic.table benchmarks/results/synthetic_s5_blocks.jsonl ... --out study.md

A cell is the mean +- std over seeds of the accuracy (``--metric``) at one evaluation length; "solved" counts seeds
at >= 0.99 at the training length, "generalises" at 4x it. Runs of another budget or recipe are never mixed into a
block ("not run at this budget"); two records of the same run are refused."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict

from benchmarks.models import MODELS, display_name

SOLVED = 0.99
RECIPE_NAMES = {"authors": "the authors' recipe", "project": "the project's recipe"}
PAPER_NOTES = {"s5": "The paper reports BD-LRU at 0.930 on S5 without naming a block size (\"moderate block sizes\"); "
                     "it is attached to no row here."}


def load(paths):
    """(ok records, other records) of JSON-lines files; ValueError on two ok records of one run."""
    ok, other, seen = [], [], {}
    for path in paths:
        with open(path) as f:
            for number, line in enumerate(filter(str.strip, f), 1):
                record = json.loads(line)
                if record.get("status") != "ok":
                    other.append(record)
                    continue
                key = json.dumps([block_key(record), record["model"], record["seed"]])
                if key in seen:
                    raise ValueError(f"{path}:{number} repeats the run of {seen[key]} ({record['task']}, "
                                     f"{record['model']}, seed {record['seed']}, {record['steps']} steps)")
                seen[key] = f"{path}:{number}"
                ok.append(record)
    return ok, other


def block_key(record: dict) -> tuple:
    """What a block shares: task, task sizes, width, step budget and recipe."""
    job = record["job"]
    return (job["task"], json.dumps(job["task_overrides"], sort_keys=True), job["hidden_size"], job["steps"],
            job["recipe"])


def mean_std(values) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def cell_columns(runs, lengths, metric):
    """The columns of one model: seeds, final and best-epoch values per length, solved and generalises counts."""
    train_length = runs[0]["task_config"]["seq_len"]

    def value(run, block, length):
        results = run["final"] if block == "final" else run["best_epoch"]["lengths"]
        return results[str(length)][metric] if str(length) in results else None

    columns = [str(len(runs))]
    for block in ("final", "best"):
        columns += [mean_std([v for r in runs if (v := value(r, block, n)) is not None]) for n in lengths]
    for length in (train_length, 4 * train_length):
        if str(length) not in runs[0]["final"]:
            columns.append("not evaluated")
            continue
        counts = [sum(1 for r in runs if value(r, block, length) >= SOLVED) for block in ("final", "best")]
        columns.append(f"{counts[0]} / {counts[1]}")
    return columns


def table(ok, other, metric="accuracy") -> str:
    """The markdown of every block (see the module docstring)."""
    blocks, models_of_task = defaultdict(lambda: defaultdict(list)), defaultdict(set)
    for record in ok:
        blocks[block_key(record)][record["model"]].append(record)
        models_of_task[record["task"]].add(record["model"])
    order = {label: i for i, label in enumerate(MODELS)}
    out = []
    for key in sorted(blocks, key=lambda k: (k[0], k[1], k[2], k[3], k[4])):
        task, overrides, width, steps, recipe = key
        cells = blocks[key]
        lengths = sorted({int(n) for runs in cells.values() for r in runs for n in r["final"]})
        train_length = next(iter(cells.values()))[0]["task_config"]["seq_len"]
        sizes = "" if overrides == "{}" else f", {overrides}"
        out += [f"### {task.upper() if task[0] in 'sa' and task[1:].isdigit() else task}{sizes}: {steps:,} steps, "
                f"{RECIPE_NAMES.get(recipe, recipe)}, d = {width} (training length {train_length})", ""]
        out.append("| model | seeds | " + " | ".join(f"final {n}" for n in lengths) + " | "
                   + " | ".join(f"best epoch {n}" for n in lengths)
                   + f" | solved (final / best) | generalises at {4 * train_length} (final / best) |")
        out.append("|" + "---|" * (2 + 2 * len(lengths) + 2))
        for label in sorted(cells, key=lambda m: order.get(m, len(order))):
            out.append(f"| {display_name(label, width)} | " + " | ".join(cell_columns(cells[label], lengths, metric)) + " |")
        missing = sorted(models_of_task[task] - set(cells), key=lambda m: order.get(m, len(order)))
        for label in missing:
            out.append(f"| {display_name(label, width)} | not run at this budget |" + " |" * (2 * len(lengths) + 2))
        for record in other:
            job = record.get("job", {})
            if (job.get("task"), json.dumps(job.get("task_overrides"), sort_keys=True), job.get("hidden_size"),
                    job.get("steps"), job.get("recipe")) == key:
                out.append(f"| {display_name(job['model'], width)} (seed {job['seed']}) | {record['status']}: "
                           f"{record['reason'][:120]} |" + " |" * (2 * len(lengths) + 2))
        if task in PAPER_NOTES:
            out += ["", PAPER_NOTES[task]]
        out.append("")
    return "\n".join(out)


def header(ok, metric, argv) -> str:
    """Where the numbers come from: the command, and the records' commits, GPUs and dates."""
    envs = {json.dumps({k: r["env"].get(k) for k in ("commit", "dirty", "gpu")}) for r in ok}
    dates = sorted(r["env"]["date"] for r in ok)
    lines = [f"Generated by `python -m benchmarks.synthetic.table {' '.join(argv)}`.",
             f"Cells: mean ± std over seeds of the {metric} over the target positions; \"final\" = the final "
             "weights, \"best epoch\" = the weights of the epoch of lowest test loss at the training length (the "
             f"authors' rule); solved = accuracy >= {SOLVED} at the training length.", "",
             f"Runs from {dates[0]} to {dates[-1]}; code and machines: "
             + "; ".join(f"commit {e['commit']}{' (dirty tree)' if e['dirty'] else ''} on {e['gpu'] or 'CPU'}"
                         for e in map(json.loads, sorted(envs))) + ".", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.synthetic.table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", nargs="+")
    p.add_argument("--metric", default="accuracy", choices=("accuracy", "macro_accuracy"))
    p.add_argument("--out", default=None, help="write the markdown here (default: print it)")
    a = p.parse_args(argv)
    ok, other = load(a.records)
    if not ok:
        raise SystemExit(f"no finished runs in {a.records}")
    text = header(ok, a.metric, argv) + "\n" + table(ok, other, a.metric)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
