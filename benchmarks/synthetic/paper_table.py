"""The paper's table from the synthetic suite's JSON lines: one markdown table, claim by claim.

    python -m benchmarks.synthetic.paper_table benchmarks/results/paper_table.jsonl [more.jsonl ...] [--out FILE]

Columns: the claim, the paper's value, ours (the H-LRU / BD-LRU model the claim is about), each baseline
(the diagonal LRU, Mamba2, DeltaNet, Gated DeltaNet, LSTM, Llama), the budget of our model's runs and a
verdict. A cell is ``per-token ± std / macro ± std (n)``: the mean over seeds of the test accuracy over the
target positions and of the macro accuracy (the paper's metric, torchmetrics' MulticlassAccuracy), with the
standard deviation over the n seeds; ``@0.12x`` marks runs that made less than 95% of the paper's budget
(200 epochs) on average (``@0.01-0.12x``: the seeds' least and most, where they differ). Cells without a
finished run say "not run" and the latest record's reason. Models are compared at d = 128 (compression: at
every width run, over the seeds both models ran). Verdicts compare the macro means: "reproduced"
within 0.02 of the paper, "inconclusive" when the paper's value lies within 2 std of our mean but not within
0.02, "above" / "below" beyond both; gaps between models count past max(0.02, 2 std).
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from benchmarks.synthetic.suite import BASELINES, PAPER_EPOCHS, RECALL_LADDER, smoke_job
from benchmarks.synthetic.tasks import default_spec

BASELINE_COLUMNS = ("diag", *BASELINES)
TOL = 0.02
FULL_BUDGET = 0.95  # share of the paper's steps from which a run counts as at the paper's budget
WIDTH = 128


@dataclass
class Row:
    """One claim. ``kind``: "accuracy" (one task, or one recall point), "perm_mean" (mean over S3-S5),
    "recall_score" (mean over the recall ladder points run) or "compression" (accuracy vs parameters)."""

    claim: str
    kind: str
    ours: str
    paper: str = "–"
    paper_value: Optional[float] = None
    task: Optional[str] = None
    overrides: Dict = field(default_factory=dict)
    paper_baselines: Dict[str, str] = field(default_factory=dict)
    baselines: bool = True  # fill the baseline columns (the diagonal model's is always filled)


def _point_name(name, over):
    if not over:
        return "base (vocab 16, length 128, 12,800 examples)"
    (key, value), = over.items()
    return {"vocab_size": f"vocab {value}", "seq_len": f"length {value}", "num_train": f"{value:,} examples"}[key]


ROWS = [
    Row("S3: BD-LRU solves S3", "accuracy", "bdlru_k4", "1.000", 1.0, task="s3"),
    Row("S4: BD-LRU solves S4", "accuracy", "bdlru_k4", "1.000", 1.0, task="s4"),
    Row("S5: BD-LRU 0.930 (block sizes up to about 5), k = 4", "accuracy", "bdlru_k4", "0.930", 0.93, task="s5"),
    Row("S5 at k = 5 (26 blocks of 5, width 130)", "accuracy", "bdlru_k5", "0.930", 0.93, task="s5", baselines=False),
    Row("Permutations, mean over S3-S5: BD-LRU above Mamba2 0.350, DeltaNet 0.402, LSTM 0.738", "perm_mean",
        "bdlru_k4", "0.977 (BD-LRU)", 0.977,
        paper_baselines={"mamba2": "0.350", "deltanet": "0.402", "lstm": "0.738"}),
    Row("Recall, MAD task score (mean over the ladder points run): BD-LRU k = 4 1.000 vs diagonal 0.775",
        "recall_score", "bdlru_k4", "1.000", 1.0, task="recall", paper_baselines={"diag": "0.775"}, baselines=False),
] + [
    Row(f"Recall, {_point_name(name, over)}", "accuracy", "bdlru_k4", task="recall", overrides=dict(over),
        baselines=name == "base")
    for name, over in RECALL_LADDER
] + [
    Row("Compression: H-LRU m = 2 the most parameter-efficient (largest gain from m = 1 to 2)", "compression",
        "hlru_m2", task="compression"),
]


def setting(rec: dict) -> dict:
    """task, model label, width and the task's sizes of a record, finished or not."""
    if rec.get("status") == "ok":
        tc = rec["task_config"]
        return {"task": rec["task"], "model": rec["model"], "hidden": rec["config"]["hidden_size"],
                "vocab": tc["vocab_size"], "seq_len": tc["seq_len"], "num_train": tc["num_train"]}
    spec = rec.get("spec", {})
    task = default_spec(rec["task"], **(spec.get("task_overrides") or {}))
    return {"task": rec["task"], "model": rec["model"], "hidden": spec.get("hidden_size", 128),
            "vocab": task.vocab_size, "seq_len": task.seq_len, "num_train": task.num_train}


def load(paths) -> tuple:
    """(environment records, finished records, the others) from JSON-lines files."""
    envs, ok, other = [], [], []
    for path in paths:
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                (envs if rec["status"] == "env" else ok if rec["status"] == "ok" else other).append(rec)
    return envs, ok, other


class Results:
    """The records, indexed by setting; the latest record of a seed wins. With ``smoke``, a row's setting is
    looked up at the size ``suite.smoke_job`` gives it (to check the table on the output of ``--smoke``)."""

    def __init__(self, ok, other, smoke=False):
        self.smoke = smoke
        self.ok = {}
        for rec in ok:
            s = setting(rec)
            self.ok[(s["task"], s["model"], s["hidden"], s["vocab"], s["seq_len"], s["num_train"], rec["seed"])] = rec
        self.other = [(setting(r), r) for r in other]

    def _setting(self, model, task, overrides, hidden) -> dict:
        if self.smoke:
            small = smoke_job({"task": task, "model": model, "task_overrides": dict(overrides or {})})
            overrides, hidden = small["task_overrides"], small["hidden_size"]
        spec = default_spec(task, **(overrides or {}))
        return {"task": task, "model": model, "hidden": hidden, "vocab": spec.vocab_size, "seq_len": spec.seq_len,
                "num_train": spec.num_train}

    def runs(self, model, task, overrides=None, hidden=WIDTH) -> List[dict]:
        key = tuple(self._setting(model, task, overrides, hidden).values())
        return [rec for k, rec in sorted(self.ok.items(), key=lambda kv: kv[0][-1]) if k[:6] == key]

    def why_not(self, model, task, overrides=None, hidden=WIDTH) -> str:
        want = self._setting(model, task, overrides, hidden)
        for s, rec in reversed(self.other):  # the latest record says why
            if s == want:
                return f"not run: {rec.get('reason', rec['status'])[:70]}"
        return "not run: no record"


def mean_std(values):
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


@dataclass
class Stat:
    """Mean and std over seeds of per-token and macro accuracy, and the mean share of the paper's steps."""

    acc: tuple
    macro: tuple
    n: int
    share: float
    share_range: tuple = (0.0, 0.0)  # the least and most of the paper's steps one seed made

    def text(self) -> str:
        low, high = (f"{v:.2f}" for v in self.share_range)
        budget = "" if self.share >= FULL_BUDGET else f" @{self.share:.2f}x" if low == high else f" @{low}-{high}x"
        return (f"{self.acc[0]:.3f}±{self.acc[1]:.3f} / {self.macro[0]:.3f}±{self.macro[1]:.3f} "
                f"({self.n}){budget}")


def stat(per_seed: List[tuple]) -> Optional[Stat]:
    """From (accuracy, macro accuracy, share of the paper's steps) per seed."""
    if not per_seed:
        return None
    shares = [s for _, _, s in per_seed]
    return Stat(mean_std([a for a, _, _ in per_seed]), mean_std([m for _, m, _ in per_seed]), len(per_seed),
                sum(shares) / len(shares), (min(shares), max(shares)))


def _share(rec):
    return rec["steps"] / rec["paper_steps"] if rec["stopped"] != "solved" else 1.0


def _seed_values(runs):
    return [(r["accuracy"], r["macro_accuracy"], _share(r)) for r in runs]


def budget_text(runs) -> str:
    """Our model's budget: steps (median over seeds), epochs, share of the paper's, steps/s, how it stopped."""
    if not runs:
        return "–"
    runs = sorted(runs, key=lambda r: r["steps"])
    mid = runs[len(runs) // 2]
    stops = ",".join(sorted({r["stopped"] for r in runs}))
    graph = " graph" if mid.get("cuda_graph") else ""
    rate = f"{mid['steps_per_s']:,.0f} steps/s{graph}" if mid.get("steps_per_s") else ""
    return (f"{mid['steps']:,} steps = {mid['epochs']:g} ep, {mid['steps'] / mid['paper_steps']:.2f}x paper "
            f"({stops}); {rate}")


def verdict_accuracy(s: Optional[Stat], paper: Optional[float]) -> str:
    if s is None:
        return "not run"
    if paper is None:
        return ""
    m, spread = s.macro[0], 2 * s.macro[1]
    if m > paper + max(TOL, spread):
        return f"above the paper (+{m - paper:.3f})"
    if m >= paper - TOL:
        return "reproduced"
    budget = f" at {s.share:.2f}x the paper's budget" if s.share < FULL_BUDGET else ""
    if m >= paper - spread:  # the paper's value is inside our seeds' spread, but the mean is not at it
        return f"inconclusive: mean {m:.3f}, 2 std {spread:.3f} over {s.n} seeds{budget}"
    return f"below the paper (-{paper - m:.3f}){budget}"


def verdict_gap(ours: Optional[Stat], other: Optional[Stat], other_name: str) -> str:
    if ours is None or other is None:
        return "not run"
    gap = ours.macro[0] - other.macro[0]
    tol = max(TOL, 2 * ours.macro[1], 2 * other.macro[1])
    if gap > tol:
        return f"separates: k = 4 − {other_name} = +{gap:.3f}"
    return f"no separation ({gap:+.3f})"


def cell(results, model, row, stat_of) -> str:
    s = stat_of(model)
    text = s.text() if s is not None else results.why_not(model, row.task or "s5", row.overrides)
    if model in row.paper_baselines:
        text += f" [paper {row.paper_baselines[model]}]"
    return text


def accuracy_row(results, row):
    def stat_of(model):
        return stat(_seed_values(results.runs(model, row.task, row.overrides)))

    ours = stat_of(row.ours)
    cells = [cell(results, m, row, stat_of) if row.baselines or m == "diag" else "–" for m in BASELINE_COLUMNS]
    if row.task == "recall":  # the ladder points: does k = 4 separate from the diagonal model?
        verdict = verdict_gap(ours, stat_of("diag"), "diag")
        if row.paper_value is not None:
            verdict = verdict_accuracy(ours, row.paper_value) + "; " + verdict
    else:
        verdict = verdict_accuracy(ours, row.paper_value)
    return ours.text() if ours else results.why_not(row.ours, row.task, row.overrides), cells, \
        budget_text(results.runs(row.ours, row.task, row.overrides)), verdict


def perm_mean_row(results, row):
    tasks = ("s3", "s4", "s5")

    def stat_of(model):
        by_seed = {}
        for task in tasks:
            for r in results.runs(model, task):
                by_seed.setdefault(r["seed"], {})[task] = r
        complete = [v for v in by_seed.values() if len(v) == len(tasks)]
        if not complete:
            return None
        return stat([tuple(sum(v) / len(tasks) for v in zip(*_seed_values([rs[t] for t in tasks])))
                     for rs in complete])

    ours = stat_of(row.ours)
    baselines = {m: stat_of(m) for m in BASELINE_COLUMNS}
    cells = [baselines[m].text() + (f" [paper {row.paper_baselines[m]}]" if m in row.paper_baselines else "")
             if baselines[m] else ("not run: needs S3, S4 and S5 of one seed"
                                   + (f" [paper {row.paper_baselines[m]}]" if m in row.paper_baselines else ""))
             for m in BASELINE_COLUMNS]
    if ours is None:
        verdict = "not run"
    else:
        run = {m: s for m, s in baselines.items() if s is not None and m != "diag"}
        above = [m for m, s in run.items() if s.macro[0] >= ours.macro[0] - max(TOL, 2 * s.macro[1])]
        if not run:
            verdict = "no baseline run"
        elif above:
            verdict = f"not supported: {', '.join(above)} within tolerance of or above BD-LRU"
        else:
            verdict = f"supported: BD-LRU above every baseline run ({', '.join(run)})"
    runs = [r for t in tasks for r in results.runs(row.ours, t)]
    return ours.text() if ours else "not run: needs S3, S4 and S5 of one seed", cells, budget_text(runs), verdict


def recall_score_row(results, row):
    """MAD's task score: per seed, the mean over the ladder points that both models ran for every seed."""
    points = [over for _, over in RECALL_LADDER]
    models = (row.ours, "diag")
    per_point = {m: [{r["seed"]: r for r in results.runs(m, "recall", over)} for over in points] for m in models}
    seeds = sorted(set.intersection(*[set(p) for m in models for p in per_point[m] if p] or [set()]))
    used = [i for i in range(len(points)) if all(per_point[m][i] for m in models)]

    def stat_of(model):
        rows = []
        for seed in seeds:
            recs = [per_point[model][i].get(seed) for i in used]
            if all(recs) and recs:
                vals = _seed_values(recs)
                rows.append(tuple(sum(v) / len(vals) for v in zip(*vals)))
        return stat(rows)

    ours, diag = stat_of(row.ours), stat_of("diag")
    note = f" ({len(used)} of {len(points)} points)" if used else ""
    cells = [(diag.text() + note if diag else "not run") + f" [paper {row.paper_baselines['diag']}]"
             if m == "diag" else "–" for m in BASELINE_COLUMNS]
    verdict = verdict_accuracy(ours, row.paper_value) + "; " + verdict_gap(ours, diag, "diag") if ours else "not run"
    runs = [r for i in used for r in per_point[row.ours][i].values()]
    return (ours.text() + note if ours else "not run"), cells, budget_text(runs), verdict


def compression_row(results, row):
    """Accuracy against parameters at every width run. Two models are compared over the seeds both ran (runs
    of one seed share the suite call, so a seed cut short by a deadline is cut for both)."""
    widths = sorted({k[2] for k in results.ok if k[0] == "compression"})
    groups = {}  # (model, width) -> ({seed: record}, parameters)
    for (task, model, hidden, *_rest), _ in results.ok.items():
        if task == "compression" and (model, hidden) not in groups:
            runs = results.runs(model, "compression", hidden=hidden)
            if runs:
                groups[(model, hidden)] = ({r["seed"]: r for r in runs}, runs[0]["parameters"])

    def text(model):
        parts = [f"d{w}: {stat(_seed_values(groups[(model, w)][0].values())).text()}, "
                 f"{groups[(model, w)][1] / 1e3:.0f}k params" for w in widths if (model, w) in groups]
        return "; ".join(parts) if parts else results.why_not(model, "compression")

    def gap(a, b):
        """(macro mean of a - that of b, tolerance) over the seeds both ran; None without a common seed."""
        common = sorted(set(groups[a][0]) & set(groups[b][0]))
        if not common:
            return None
        sa, sb = (stat(_seed_values(groups[g][0][s] for s in common)) for g in (a, b))
        return sa.macro[0] - sb.macro[0], max(TOL, 2 * sa.macro[1], 2 * sb.macro[1])

    mine = [w for w in widths if (row.ours, w) in groups]
    if not mine:
        verdict = "not run"
    else:
        beaten = []  # models at least as small and more accurate than m = 2 at some width
        for (model, w), (_, params) in groups.items():
            for w_m in mine:
                g = gap((model, w), (row.ours, w_m)) if model != row.ours else None
                if g is not None and params <= groups[(row.ours, w_m)][1] and g[0] > g[1]:
                    beaten.append(f"{model} d{w} (vs d{w_m})")
        over_diag = [w for w in mine if ("diag", w) in groups and (g := gap((row.ours, w), ("diag", w)))
                     and g[0] > g[1]]
        verdict = ("supported: no model with as many or fewer parameters is more accurate" if not beaten
                   else f"not supported: {', '.join(beaten)} more accurate with as many or fewer parameters")
        verdict += f"; m = 2 above m = 1 (same seeds) at d = {', '.join(map(str, over_diag)) or 'none'}"
    cells = [text(m) if m == "diag" or any(k[0] == m for k in groups) else results.why_not(m, "compression")
             for m in BASELINE_COLUMNS]
    runs = [r for w in widths for r in results.runs(row.ours, "compression", hidden=w)]
    return text(row.ours), cells, budget_text(runs), verdict


BUILDERS = {"accuracy": accuracy_row, "perm_mean": perm_mean_row, "recall_score": recall_score_row,
            "compression": compression_row}


def table(ok, other, rows=ROWS, smoke=False) -> str:
    """The markdown table of ``rows`` from finished and other records (``smoke``: see :class:`Results`)."""
    results = Results(ok, other, smoke)
    head = ["claim", "paper", "ours", *BASELINE_COLUMNS, "budget (ours)", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        ours, cells, budget, verdict = BUILDERS[row.kind](results, row)
        label = f"{row.claim} [ours: {row.ours}]"
        lines.append("| " + " | ".join([label, row.paper, ours, *cells, budget, verdict]) + " |")
    return "\n".join(lines)


def header(envs) -> str:
    """Where and when the records were made, from the suite's environment records."""
    lines = []
    for env in envs:
        gpus = f"{len(env['gpus'])}x {env['gpus'][0]}" if env.get("gpus") else "CPU"
        lines.append(f"- `{env['command']}` on {gpus}, {env['date_utc']} UTC (torch {env['torch']}, transformers "
                     f"{env['transformers']}, fla {env['fla']}, commit {env.get('git_commit')})")
    legend = (f"Cells: per-token ± std / macro ± std (seeds); @0.12x: the runs made that share of the paper's budget "
              f"({PAPER_EPOCHS} epochs) on average (@0.01-0.12x: the seeds' least and most, where they differ). "
              f"Width d = {WIDTH} unless a cell says otherwise.")
    return ("Runs:\n" + "\n".join(lines) + "\n\n" if lines else "") + legend + "\n\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.synthetic.paper_table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="JSON-lines files of the suite (or of run.py --out)")
    p.add_argument("--out", default=None, help="also write the markdown here")
    p.add_argument("--smoke", action="store_true", help="the records are the suite's --smoke output")
    a = p.parse_args(argv)
    envs, ok, other = load(a.results)
    text = header(envs) + table(ok, other, smoke=a.smoke)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
