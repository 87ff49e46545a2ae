"""Run the synthetic studies: presets of runs (:data:`PRESETS`), trained concurrently in one process.

    python -m benchmarks.synthetic.study --preset s5_blocks --out s5_blocks.jsonl > s5_blocks.log
    python -m benchmarks.synthetic.study --preset perm_common --steps 10000 --out perm_common.jsonl
    python -m benchmarks.synthetic.study --preset s5_common --steps 40000 --out s5_common.jsonl   # every model, S5
    python -m benchmarks.synthetic.study --preset perm_common --steps 20 --smoke --out /tmp/t.jsonl   # tiny, CPU

Seeds 0, 1, 2 unless ``--seeds``; ``--steps`` replaces a preset's budget (perm_common, recall_ladder and mad_tasks
need it). Runs already in ``--out`` are skipped (resume: the same command again); a baseline that cannot run here
gets a ``not_run`` record with the reason; a run whose CUDA graph capture fails runs again eagerly."""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from pathlib import Path

from benchmarks.models import model_entry
from benchmarks.synthetic.baselines import BaselineUnavailable
from benchmarks.synthetic.run import (RECIPES, GraphCaptureError, append_record, default_run, environment, job_fields,
                                      train_concurrently)

LENGTHS = (16, 32, 64, 128, 256)
SEEDS = (0, 1, 2)
STUDY_STEPS = 100_000
PERM_MODELS = ("bdlru_k4", "bdlru_k5", "diag", "hlru_m2", "lstm", "mamba2", "deltanet", "llama")
# MAD's in-context recall ladder (configs/tasks/in-context-recall.yml): the base instance, then one setting
# changed at a time: (name, task overrides)
RECALL_LADDER = [("base", {}), ("vocab32", {"vocab_size": 32}), ("vocab64", {"vocab_size": 64}),
                 ("vocab128", {"vocab_size": 128}), ("len256", {"seq_len": 256}), ("len512", {"seq_len": 512}),
                 ("len1024", {"seq_len": 1024}), ("train6400", {"num_train": 6400}), ("train3200", {"num_train": 3200}),
                 ("train1600", {"num_train": 1600}), ("train800", {"num_train": 800})]
# preset -> (tasks with their overrides, model labels, default steps or None where --steps is required)
PRESETS = {
    "s5_blocks": ([("s5", {})], ("bdlru_k4", "bdlru_k5", "bdlru_k8"), STUDY_STEPS),
    "s5_more_blocks": ([("s5", {})], ("diag", "bdlru_k2", "bdlru_k3", "bdlru_k6", "hlru_m2"), STUDY_STEPS),
    "s5_widths": ([("s5", {})], ("bdlru_k4_x4", "bdlru_k5_x4"), STUDY_STEPS),
    "a5_blocks": ([("a5", {})], ("bdlru_k4", "bdlru_k5", "bdlru_k6"), STUDY_STEPS),
    "perm_common": ([("s3", {}), ("s4", {}), ("s5", {})], PERM_MODELS, None),
    "s5_common": ([("s5", {})], PERM_MODELS + ("bdlru_k8",), None),
    "recall_ladder": ([("recall", over) for _, over in RECALL_LADDER], ("diag", "bdlru_k4"), None),
    "mad_tasks": ([("selective_copy", {}), ("compression", {}), ("recall", {})], PERM_MODELS, None),
}
SMOKE_STEPS = 20
SMOKE_LENGTHS = (16, 32)


def preset_runs(preset: str, steps=None, seeds=SEEDS, recipe="authors", smoke=False) -> list:
    """The run settings of ``preset`` (models in turn within each seed, so that a seed's cells finish together)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    tasks, models, default_steps = PRESETS[preset]
    steps = steps or default_steps
    if steps is None:
        raise ValueError(f"preset {preset!r} runs every model at one common budget: give it with --steps")
    lengths = SMOKE_LENGTHS if smoke else LENGTHS
    runs = []
    for task, over in tasks:
        for seed in seeds:
            for model in models:
                model_entry(model)
                run = default_run(task=task, model=model, seed=seed, recipe=recipe, task_overrides=dict(over),
                                  smoke=smoke, lengths=list(lengths) if task in ("s3", "s4", "s5", "a5") else None)
                run["steps"] = SMOKE_STEPS if smoke else steps
                runs.append(run)
    return runs


def run_key(run: dict) -> str:
    """:func:`benchmarks.synthetic.run.job_fields` of a run (or of a record's ``job``) as one string."""
    return json.dumps(job_fields(run), sort_keys=True)


def finished_keys(path) -> set:
    """Keys of the runs with an "ok" record in ``path`` (none if it does not exist)."""
    if not Path(path).exists():
        return set()
    with open(path) as f:
        return {run_key(r["job"]) for r in map(json.loads, filter(str.strip, f)) if r.get("status") == "ok"}


def run_study(runs: list, out: str, slots: int, log=print) -> dict:
    """Train ``runs`` (skipping those finished in ``out``), ``slots`` at a time; append each record to ``out``.
    Returns counts of "ok", "not_run" and "failed" runs and "skipped" ones."""
    done = finished_keys(out)
    todo = [r for r in runs if run_key(r) not in done]
    counts = {"skipped": len(runs) - len(todo), "ok": 0, "not_run": 0, "failed": 0}
    env, t0, steps_done, pending = environment(), time.time(), [0], deque(todo)
    log(f"{len(todo)} runs to train ({counts['skipped']} already in {out}), {slots} at a time; env {json.dumps(env)}")

    def on_result(run, record, error):
        if isinstance(error, GraphCaptureError) and run["cuda_graph"] == "auto":
            log(f"{run['task']}/{run['model']}/s{run['seed']}: {error}; running it eagerly")
            pending.append(dict(run, cuda_graph=False))
            return
        if error is not None:
            status = "not_run" if isinstance(error, BaselineUnavailable) else "failed"
            counts[status] += 1
            append_record(out, {"status": status, "reason": f"{type(error).__name__}: {error}", "job": job_fields(run),
                                "env": env})
            return
        counts["ok"] += 1
        steps_done[0] += record["steps"]
        append_record(out, {**record, "env": env})
        final = record["final"][str(record["task_config"]["seq_len"])]
        log(f"done {run['task']}/{run['model']}/s{run['seed']}: {record['steps']} steps in {record['seconds']} s, "
            f"final acc {final['accuracy']:.4f}; {sum(counts.values()) - counts['skipped']}/{len(runs) - counts['skipped']} "
            f"runs, {steps_done[0] / (time.time() - t0):.0f} steps/s summed")

    train_concurrently(lambda: pending.popleft() if pending else None, slots, on_result, log=log)
    log(f"finished in {time.time() - t0:.0f} s: {counts}")
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.synthetic.study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", nargs="+", required=True, choices=list(PRESETS))
    p.add_argument("--steps", type=int, default=None, help="the step budget of every run (required by some presets)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--recipe", default="authors", choices=list(RECIPES))
    p.add_argument("--models", nargs="+", default=None, help="keep only these model labels")
    p.add_argument("--slots", type=int, default=9, help="runs trained at once (one CUDA stream each)")
    p.add_argument("--smoke", action="store_true", help="tiny runs on the CPU (20 steps, seed 0, d = 32)")
    p.add_argument("--out", required=True, help="JSON-lines file the records are appended to")
    a = p.parse_args(argv)
    seeds = a.seeds[:1] if a.smoke else a.seeds
    runs = [r for preset in a.preset for r in preset_runs(preset, a.steps, seeds, a.recipe, a.smoke)
            if a.models is None or r["model"] in a.models]
    if a.smoke:
        for r in runs:
            r["device"] = "cpu"
    counts = run_study(runs, a.out, a.slots, log=lambda line: print(line, file=sys.stderr, flush=True))
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
