"""Run a grid of synthetic benchmark runs over every visible GPU, in priority order, within a time budget.

    python -m benchmarks.synthetic.suite --preset paper_table --dry-plan          # what fits in 2 calls of 540 s
    python -m benchmarks.synthetic.suite --preset paper_table --deadline 470 --out benchmarks/results/paper_table.jsonl
    python -m benchmarks.synthetic.suite --preset paper_table --deadline 470 --out benchmarks/results/paper_table.jsonl \
        --resume benchmarks/results/paper_table.jsonl                             # a second call: the jobs still missing
    python -m benchmarks.synthetic.suite --preset paper_table --smoke --out /tmp/t.jsonl   # the same grid, tiny, CPU
    python -m benchmarks.synthetic.suite --preset dry --out /tmp/dry.jsonl       # every model kind once, tiny, CPU

Presets: ``paper_table`` (the headline cells of the paper's table with three seeds, at the paper's budget of
200 epochs, in priority order; see :func:`paper_table_jobs`), ``ladder`` (MAD's recall ladder for the
diagonal LRU and BD-LRU k = 4), ``paper`` (the older time-capped grid over every model and task) and ``dry``.

Two kinds of worker process per GPU. A *graph worker* (``--graph-workers``, default 1) trains the jobs whose
training step is a CUDA graph (H-LRU / BD-LRU models; a job may ask for ``cuda_graph``) with up to
``--streams`` runs at once, each on its own CUDA stream (:func:`benchmarks.synthetic.run.train_concurrently`):
these tiny models are launch bound, and graphs on separate streams of one process overlap on the GPU, while
processes only time-slice it. *Eager workers* (``--workers-per-gpu``) train the other jobs one at a time. On a
machine without GPUs, ``--cpu-workers`` eager processes train everything.

Every result is appended to ``--out`` (JSON lines) as it arrives, with a progress line on stdout. With
``--deadline S`` every run's training ends EVAL_S (15 s, for its evaluation) before S seconds after the
start: a job starts only if at least half of its expected time is left, and its time budget shrinks to
what is left (the record's ``time_budget_s``). Jobs that do not start, and baselines that cannot run here,
are written as ``"status": "not_run"`` records with the reason. ``--resume FILE [FILE ...]`` skips the jobs
that already have a finished record in any of the files; ``--only-tier`` (comma-separated tier prefixes) and
``--only-model`` (comma-separated model labels) select jobs. ``--dry-plan`` prints, without running anything,
each job's expected steps/s, time and share of the paper's budget and which of ``--calls`` calls of
``--call-seconds`` it falls in, from the rate model below or from the rates measured in earlier results
(``--rates FILE``).
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import queue
import subprocess
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository root

# (label, model kind, kwargs for the run)
MAIN_MODELS = [
    ("diag", "hlru", {"order": 1}),
    ("hlru_m2", "hlru", {"order": 2}),
    ("hlru_m3", "hlru", {"order": 3}),
    ("hlru_m4", "hlru", {"order": 4}),
    ("bdlru_k2", "bdlru", {"block_size": 2}),
    ("bdlru_k4", "bdlru", {"block_size": 4}),
    ("bdlru_k5", "bdlru", {"block_size": 5, "recurrent_size": 130}),  # 26 blocks of 5 next to d = 128
    ("bdlru_k8", "bdlru", {"block_size": 8}),
    ("mamba", "mamba", {}),
    ("mamba2", "mamba2", {}),
    ("lstm", "lstm", {}),
    ("llama", "llama", {}),
    ("deltanet", "deltanet", {}),
    ("gated_deltanet", "gated_deltanet", {}),
]
GRAPH_KINDS = ("hlru", "bdlru", "diag")  # as benchmarks.synthetic.run.GRAPH_KINDS (not imported: no torch here)
HEADLINE_TASKS = ("s5", "recall", "compression")
OTHER_TASKS = ("s3", "s4", "selective_copy")
EXTENSION_TASKS = ("a5", "parity", "mod_count")
SWEEP_MODELS = ("diag", "hlru_m2", "bdlru_k4", "lstm", "llama", "mamba")
EXTENSION_MODELS = ("diag", "hlru_m2", "bdlru_k4", "bdlru_k8", "lstm", "llama", "mamba", "gated_deltanet")

PAPER_EPOCHS = 200  # as benchmarks.synthetic.run.PAPER_EPOCHS
PAPER_SEEDS = (0, 1, 2)
BASELINES = ("mamba2", "deltanet", "gated_deltanet", "lstm", "llama")
# MAD's in-context recall ladder (configs/tasks/in-context-recall.yml): the base instance, then one setting
# changed at a time. (name, task overrides)
RECALL_LADDER = [
    ("base", {}),
    ("vocab32", {"vocab_size": 32}),
    ("vocab64", {"vocab_size": 64}),
    ("len256", {"seq_len": 256}),
    ("len512", {"seq_len": 512}),
    ("train6400", {"num_train": 6400}),
    ("train3200", {"num_train": 3200}),
    ("train1600", {"num_train": 1600}),
    ("train800", {"num_train": 800}),
    ("vocab128", {"vocab_size": 128}),
    ("len1024", {"seq_len": 1024}),
]
RECALL_MODELS = ("diag", "bdlru_k4")

# The plan's rate model, until measured rates replace it (--rates): seconds per step of one run with the GPU to
# itself = a fixed cost (host-bound eager step, or one graph launch) + TOKEN_S per token of the batch (scaled with
# the width / 128). Graph runs on STREAMS of one process overlap: together they make at most STREAM_GAIN times
# the steps of one. Guesses from the eager runs of 2026-11 (about 110 steps/s with 2 processes per H200).
EAGER_STEP_S = {"default": 5e-3, "mamba2": 8e-3, "deltanet": 9e-3, "gated_deltanet": 9e-3}
GRAPH_STEP_S = 7e-4
TOKEN_S = 1.5e-8
STREAM_GAIN = 3.0
SETUP_S = 3.0  # data, model, compile steps and capture of one run (kernels already compiled)
EVAL_S = 15.0  # what a run needs after its training for evaluation, kept free before the deadline
MIN_SHARE = 0.5  # a job starts only if at least this share of its expected time is left before the deadline


def job(task, label, seed=0, hidden_size=128, max_time=60.0, steps=20000, tier="", **extra):
    """The run settings of model ``label`` (a MAIN_MODELS row) on ``task``, tagged with its ``tier``."""
    kind, kwargs = next((k, kw) for l, k, kw in MAIN_MODELS if l == label)
    run = dict(task=task, model=kind, seed=seed, hidden_size=hidden_size, max_time=max_time, steps=steps, **kwargs)
    run.update(extra)
    run["tier"] = tier
    run["label"] = label
    return run


# Job fields that are not run settings: the tier, the model label, whether a failed CUDA-graph capture is
# followed by an eager run (recorded), and that capture's error.
JOB_FIELDS = ("tier", "label", "graph_retry_eager", "graph_error")


def run_settings(spec: dict) -> dict:
    """The run settings of a job (its fields minus the suite's own)."""
    return {k: v for k, v in spec.items() if k not in JOB_FIELDS}


def job_key(spec: dict) -> str:
    """A job's identity across calls: task, model label, seed, width and task overrides."""
    over = ",".join(f"{k}={v}" for k, v in sorted((spec.get("task_overrides") or {}).items()))
    return f"{spec['task']}|{spec['label']}|s{spec['seed']}|d{spec.get('hidden_size', 128)}|{over}"


def recall_jobs(seeds, tier, max_time, labels=RECALL_MODELS, points=RECALL_LADDER):
    """Recall jobs for each ladder point in ``points`` (in that order), each seed and model in turn."""
    return [job("recall", label, seed, epochs=PAPER_EPOCHS, max_time=max_time, task_overrides=dict(over),
                tier=f"{tier}_{name}")
            for name, over in points for seed in seeds for label in labels]


def paper_table_jobs(baseline_graphs=False):
    """The headline cells of the paper's table, three seeds each, in priority order (what must run first first).

    1. S5 with BD-LRU k = 4 and k = 5 at the paper's budget (200 epochs = 156,250 steps).
    2. Recall, MAD's ladder (base, vocab 32/64, length 256/512, 6,400..800 examples), diag and k = 4, seed 0.
    3. S3 and S4 with k = 4 at the paper's budget (they stop once solved).
    4. Recall ladder, seeds 1 and 2 (the points that separated at seed 0 first); compression (diag, m = 2,
       k = 4 at d = 64 and 128); the diagonal LRU on S3-S5 at the paper's budget.
    5. Baselines (Mamba2, DeltaNet, Gated DeltaNet, LSTM, Llama) on S5, recall (base), S3, S4 and compression,
       in that order, each model's three seeds together, time-capped: eager, or with ``baseline_graphs`` in
       the graph workers (one suite process per model, ``--only-model``, keeps one model's autotuning from
       stalling the others); a baseline whose capture fails then runs again eagerly, and its record keeps the
       capture's error (``cuda_graph_error``).
    6. The longest recall points (vocab 128, length 1024) for both models, seeds 0-2.
    """
    jobs = []
    for seed in PAPER_SEEDS:
        jobs += [job("s5", label, seed, epochs=PAPER_EPOCHS, max_time=450.0, tier="s5_paper")
                 for label in ("bdlru_k4", "bdlru_k5")]
    main_points = RECALL_LADDER[:9]
    jobs += recall_jobs((0,), "recall_seed0", 240.0, points=main_points)
    jobs += [job(task, "bdlru_k4", seed, epochs=PAPER_EPOCHS, max_time=240.0, tier="perm_k4")
             for seed in PAPER_SEEDS for task in ("s3", "s4")]
    # seeds 1 and 2 of the points where seed 0 separated the models (2026-12-01: vocab 64, length 256) first
    separating = ("vocab64", "len256")
    jobs += recall_jobs((1, 2), "recall_seed12", 240.0, points=[p for p in main_points if p[0] in separating]
                        + [p for p in main_points if p[0] not in separating])
    jobs += [job("compression", label, seed, hidden_size=d, epochs=PAPER_EPOCHS, max_time=120.0, tier="compression")
             for seed in PAPER_SEEDS for d in (64, 128) for label in ("diag", "hlru_m2", "bdlru_k4")]
    jobs += [job(task, "diag", seed, epochs=PAPER_EPOCHS, max_time=240.0, tier="perm_diag")
             for seed in PAPER_SEEDS for task in ("s3", "s4", "s5")]
    mode = {"graph_retry_eager": True} if baseline_graphs else {"cuda_graph": False}
    for task, max_time in (("s5", 90.0), ("recall", 90.0), ("s3", 90.0), ("s4", 90.0), ("compression", 60.0)):
        jobs += [job(task, label, seed, epochs=PAPER_EPOCHS, max_time=max_time, tier=f"baselines_{task}", **mode)
                 for label in BASELINES for seed in PAPER_SEEDS]
    jobs += recall_jobs(PAPER_SEEDS, "recall_long", 300.0, points=RECALL_LADDER[9:])
    return jobs


def grid(preset: str, time_scale: float = 1.0, baseline_graphs: bool = False):
    """The jobs of a preset, in priority order (what must run first comes first)."""
    labels = [m[0] for m in MAIN_MODELS]
    jobs = []
    if preset == "paper":
        t_head, t_std, t_small = 75 * time_scale, 50 * time_scale, 40 * time_scale
        for seed in (0, 1):  # headline cells, two seeds
            jobs += [job(t, l, seed, max_time=t_head, tier=f"headline_seed{seed}") for t in HEADLINE_TASKS for l in labels]
        jobs += [job(t, l, 0, max_time=t_std, tier="main") for t in OTHER_TASKS for l in labels]
        for d in (64, 256):  # accuracy vs parameters (d = 128 comes from the main grid)
            jobs += [job(t, l, 0, hidden_size=d, max_time=t_small, tier="sweep") for t in ("compression", "s5")
                     for l in SWEEP_MODELS]
        jobs += [job(t, l, 0, max_time=t_small, tier="extension") for t in EXTENSION_TASKS for l in EXTENSION_MODELS]
    elif preset == "paper_table":
        jobs = paper_table_jobs(baseline_graphs)
        for j in jobs:
            j["max_time"] *= time_scale
    elif preset == "ladder":
        jobs = recall_jobs(PAPER_SEEDS, "ladder", 240.0 * time_scale)
    elif preset == "dry":  # end-to-end check on a CPU: tiny sizes, every model kind once
        small = {"task_overrides": {"seq_len": 16, "num_train": 512, "num_test": 128}}
        for i, l in enumerate(labels):
            task = ("s5", "recall", "compression")[i % 3]
            jobs.append(job(task, l, 0, hidden_size=32, max_time=5 * time_scale, steps=30, tier="dry", **small))
    else:
        raise ValueError(f"unknown preset {preset!r}")
    return jobs


def smoke_job(spec: dict) -> dict:
    """A job at CPU size, keeping what distinguishes it (task, model, seed, which ladder setting changed): width
    32, 30 steps, batch 32, lengths divided by 16 (at most 8 outside recall), training sets divided by 25."""
    from benchmarks.synthetic.tasks import default_spec

    over = dict(spec.get("task_overrides") or {})
    base = default_spec(spec["task"], **over)
    length = max(4, base.seq_len // 32 * 2) if spec["task"] == "recall" else min(base.seq_len, 8)
    over.update(seq_len=length, num_train=max(16, base.num_train // 25), num_test=64)
    small = dict(spec, hidden_size=max(16, spec.get("hidden_size", 128) // 4), steps=30, epochs=None, batch_size=32, max_time=5.0, task_overrides=over,
                 check_every=10)
    if "recurrent_size" in spec:
        small["recurrent_size"] = 30 if spec.get("block_size") == 5 else 32
    return small


# ----------------------------------------------------------------------------------------- the plan
def task_spec(spec: dict):
    """The task instance a job trains on (its task with its overrides)."""
    from benchmarks.synthetic.tasks import default_spec

    return default_spec(spec["task"], **(spec.get("task_overrides") or {}))


def _epoch_steps(epochs: float, spec: dict) -> int:
    return math.ceil(epochs * task_spec(spec).num_train / spec.get("batch_size", 128))


def _tokens_per_step(spec: dict) -> int:
    return spec.get("batch_size", 128) * task_spec(spec).seq_len


def steps_of(spec: dict) -> int:
    """The steps a job is set to make (those of its epochs, or its steps)."""
    return spec["steps"] if spec.get("epochs") is None else _epoch_steps(spec["epochs"], spec)


def paper_steps_of(spec: dict) -> int:
    return _epoch_steps(PAPER_EPOCHS, spec)


def is_graph_job(spec: dict, on_gpu: bool) -> bool:
    """Whether a job goes to a graph worker: on a GPU, cuda_graph True, or "auto" (the default) for the LRNN kinds
    and for jobs that allow an eager retry (``graph_retry_eager``)."""
    choice = spec.get("cuda_graph", "auto")
    auto = spec["model"] in GRAPH_KINDS or spec.get("graph_retry_eager")
    return on_gpu and (choice is True or (choice == "auto" and bool(auto)))


def measured_rates(path) -> dict:
    """Steps/s measured in earlier results, by (task, model label, length, graph): the rate of one run with the
    GPU to itself (``graph_steps_per_s`` or ``eager_steps_per_s``), and the streams' gain ("gain")."""
    rates, gains = {}, []
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("status") != "ok" or rec.get("smoke"):
                continue
            graph = bool(rec.get("cuda_graph"))
            alone = rec.get("graph_steps_per_s") if graph else rec.get("eager_steps_per_s")
            if alone:
                rates[(rec["task"], rec["model"], rec["task_config"]["seq_len"], graph)] = alone
            if graph and alone and rec.get("steps_per_s") and rec.get("concurrent_runs", 1) > 1:
                gains.append(rec["steps_per_s"] * rec["concurrent_runs"] / alone)
    if gains:
        rates["gain"] = sorted(gains)[len(gains) // 2]
    return rates


def expected_rate(spec: dict, graph: bool, rates: dict) -> float:
    """Steps/s of one run of ``spec`` with the GPU to itself: measured if ``rates`` has it, else the model above."""
    key = (spec["task"], spec["label"], task_spec(spec).seq_len, graph)
    if key in rates:
        return rates[key]
    fixed = GRAPH_STEP_S if graph else EAGER_STEP_S.get(spec["model"], EAGER_STEP_S["default"])
    return 1.0 / (fixed + TOKEN_S * _tokens_per_step(spec) * spec.get("hidden_size", 128) / 128)


def plan(jobs, calls=2, call_seconds=540.0, deadline=None, streams=12, graph_workers=1, eager_workers=2, gpus=1,
         rates=None):
    """Simulate the suite over ``calls`` calls: which call each job runs in, its expected steps and time.

    Each call has ``deadline`` seconds (default: call_seconds - 70, for start-up and evaluation) in which
    graph jobs share ``streams`` slots per graph worker (aggregate rate min(n, gain) / n per run) and eager jobs
    run one at a time per eager worker; admission and time caps as the suite's. Returns one dict per job."""
    rates = rates or {}
    gain = rates.get("gain", STREAM_GAIN)
    deadline = deadline if deadline is not None else call_seconds - 70.0
    on_gpu = gpus > 0
    left = list(enumerate(jobs))
    out = {}
    for call in range(1, calls + 1):
        graph_q = [(i, j) for i, j in left if is_graph_job(j, on_gpu)]
        eager_q = [(i, j) for i, j in left if not is_graph_job(j, on_gpu)]
        started = set()
        clocks = [0.0] * max(1, eager_workers * max(gpus, 1))
        for i, j in eager_q:
            w = min(range(len(clocks)), key=clocks.__getitem__)
            rate = expected_rate(j, False, rates)
            want = min(j["max_time"], steps_of(j) / rate)
            room = deadline - clocks[w] - EVAL_S - SETUP_S
            if room < MIN_SHARE * want:
                continue
            dur = min(want, room)
            out[i] = dict(call=call, start=clocks[w], seconds=dur, steps=int(dur * rate), rate=rate, graph=False)
            clocks[w] += dur + SETUP_S + EVAL_S / 3
            started.add(i)
        # graph workers: slots with a time-stepped simulation
        slots = streams * max(1, graph_workers * max(gpus, 1)) if on_gpu else 0
        pending = list(graph_q)
        active = []  # [index, job, steps done, steps target, rate alone, t_end cap, start]
        t, dt = 0.0, 0.5
        while (pending or active) and t < deadline:
            while pending and len(active) < slots:
                i, j = pending[0]
                rate = expected_rate(j, True, rates)
                want = min(j["max_time"], steps_of(j) / rate)
                room = deadline - t - EVAL_S - SETUP_S
                pending.pop(0)
                if room < MIN_SHARE * want:
                    continue
                cap = t + SETUP_S + min(j["max_time"], room)
                active.append([i, j, 0.0, steps_of(j), rate, cap, t])
                started.add(i)
            n = len(active)
            share = min(n, gain) / n if n else 1.0
            t += dt
            for a in list(active):
                a[2] += a[4] * share * dt
                if a[2] >= a[3] or t >= a[5]:
                    i, j = a[0], a[1]
                    out[i] = dict(call=call, start=a[6], seconds=t - a[6], steps=int(min(a[2], a[3])),
                                  rate=a[4] * share, graph=True)
                    active.remove(a)
        for a in active:  # still running at the deadline
            out[a[0]] = dict(call=call, start=a[6], seconds=t - a[6], steps=int(min(a[2], a[3])), rate=a[4] * share,
                             graph=True)
        left = [(i, j) for i, j in left if i not in started]
    rows = []
    for i, j in enumerate(jobs):
        row = dict(job=i, tier=j["tier"], key=job_key(j), steps_planned=steps_of(j), paper_steps=paper_steps_of(j))
        if i in out:
            row.update(out[i])
            row["share_of_paper"] = row["steps"] / row["paper_steps"]
        else:
            row.update(call=None)
        rows.append(row)
    return rows


def print_plan(rows, calls, call_seconds):
    print(f"plan: {len(rows)} jobs over {calls} call(s) of {call_seconds:.0f} s "
          f"(rates: steps/s of one run alone; graph runs share the GPU)")
    print(f"{'job':>4} {'call':>4} {'tier':<26} {'job key':<52} {'steps/s':>8} {'time s':>7} {'steps':>8} "
          f"{'paper':>8} {'share':>6}")
    for r in rows:
        if r["call"] is None:
            print(f"{r['job']:>4} {'-':>4} {r['tier']:<26} {r['key']:<52} {'':>8} {'':>7} {'':>8} "
                  f"{r['paper_steps']:>8} does not fit")
            continue
        print(f"{r['job']:>4} {r['call']:>4} {r['tier']:<26} {r['key']:<52} {r['rate']:>8.0f} {r['seconds']:>7.0f} "
              f"{r['steps']:>8} {r['paper_steps']:>8} {r['share_of_paper']:>6.2f}")
    by_tier = {}
    for r in rows:
        t = by_tier.setdefault(r["tier"], [0, 0, 0])
        t[0] += 1
        if r["call"] is not None:
            t[1] += 1
            t[2] += r["share_of_paper"] >= 0.95 or r["steps"] >= r["steps_planned"]
    print("\nby tier: jobs / started / at the full planned budget")
    for tier, (n, started, full) in by_tier.items():
        print(f"  {tier:<28} {n:>4} {started:>4} {full:>4}")


# --------------------------------------------------------------------------------------------- workers
def admit(spec: dict, deadline_abs, on_gpu: bool, rates=None):
    """(the job's run settings, None) to start it now, with ``end_by`` (training ends by then) EVAL_S before the
    deadline; or (None, reason) when less than MIN_SHARE of its expected time is left."""
    run = run_settings(spec)
    if not deadline_abs:
        return run, None
    left = deadline_abs - time.time() - EVAL_S
    graph = is_graph_job(spec, on_gpu)
    want = min(spec.get("max_time") or math.inf, steps_of(spec) / expected_rate(spec, graph, rates or {}) + SETUP_S)
    if left <= 0 or left < MIN_SHARE * want:
        return None, "suite deadline (time budget) reached before the job started"
    run["end_by"] = deadline_abs - EVAL_S
    return run, None


def _base_record(index, spec, gpu, wid):
    return {"task": spec["task"], "job": index, "job_key": job_key(spec), "tier": spec["tier"], "model": spec["label"],
            "gpu": gpu, "worker": wid}


def _pin(gpu, threads):
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # before torch is imported in this process
        os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")  # enough hardware queues for the streams
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(threads)


def graph_worker(wid, gpu, jobs_q, eager_q, results_q, deadline_abs, threads, streams, rates):
    """A process pinned to ``gpu`` that trains graph jobs from ``jobs_q``, up to ``streams`` at once; a job whose
    capture fails and that allows it goes to ``eager_q`` with the capture's error."""
    _pin(gpu, threads)
    from benchmarks.synthetic import run as synthetic

    started = {}

    def next_run():
        while True:
            try:
                index, spec = jobs_q.get_nowait()
            except queue.Empty:
                return None
            run_spec, reason = admit(spec, deadline_abs, True, rates)
            if run_spec is None:
                results_q.put({**_base_record(index, spec, gpu, wid), "status": "not_run", "reason": reason,
                               "spec": spec})
                continue
            run = synthetic.default_run(**{**run_spec, "cuda_graph": True})
            started[id(run)] = (index, spec)
            return run

    def on_result(run, result, error):
        index, spec = started.pop(id(run))
        if isinstance(error, synthetic.GraphCaptureError) and spec.get("graph_retry_eager"):
            eager_q.put((index, {**spec, "cuda_graph": False, "graph_error": str(error)[:500]}))
            return
        results_q.put(_record(index, spec, gpu, wid, result, error))

    synthetic.train_concurrently(next_run, streams, on_result, log=lambda *a: None)


def _record(index, spec, gpu, wid, result, error):
    """The JSON-lines record of a finished job (``result``) or of the ``error`` that ended it."""
    record = _base_record(index, spec, gpu, wid)
    if error is None:
        record.update(result)  # status "ok" included
    else:
        unavailable = type(error).__name__ == "BaselineUnavailable"
        record.update(status="not_run" if unavailable else "error", reason=f"{type(error).__name__}: {error}"[:500],
                      spec=spec)
        if not unavailable:
            record["traceback"] = "".join(traceback.format_exception(error))[-2000:]
    if spec.get("graph_error"):
        record["cuda_graph_error"] = spec["graph_error"]
    return record


def eager_worker(wid, gpu, jobs_q, results_q, deadline_abs, threads, rates, graph_done):
    """A process pinned to ``gpu`` (or the CPU) that trains jobs from ``jobs_q`` one at a time, until the queue is
    empty and ``graph_done`` is set (graph workers may hand it jobs until they end)."""
    _pin(gpu, threads)
    from benchmarks.synthetic import run as synthetic

    while True:
        try:
            index, spec = jobs_q.get(timeout=1.0)
        except queue.Empty:
            if graph_done.is_set() and jobs_q.empty():
                return
            continue
        run_spec, reason = admit(spec, deadline_abs, gpu is not None, rates)
        if run_spec is None:
            results_q.put({**_base_record(index, spec, gpu, wid), "status": "not_run", "reason": reason, "spec": spec})
            continue
        run = synthetic.default_run(**run_spec)
        try:
            record = _record(index, spec, gpu, wid, synthetic.train(run, log=lambda *a: None), None)
        except Exception as err:  # noqa: BLE001 (retry once without bf16 autocast, time allowing, else record it)
            record = _record(index, spec, gpu, wid, None, err)
            time_left = not deadline_abs or time.time() + EVAL_S + SETUP_S < deadline_abs
            if record["status"] == "error" and run["amp"] and gpu is not None and time_left:
                try:
                    result = synthetic.train({**run, "amp": False}, log=lambda *a: None)
                    record = {**_record(index, spec, gpu, wid, result, None),
                              "amp_fallback": record["reason"][:300]}
                except Exception as err2:  # noqa: BLE001
                    record["retry_without_bf16"] = f"{type(err2).__name__}: {err2}"[:300]
        results_q.put(record)


def visible_gpus():
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES if set, else those nvidia-smi lists."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        ids = [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
        return ids
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
        return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]
    except (OSError, subprocess.SubprocessError):
        return []


def gpu_names(gpus) -> list:
    """The names of the GPUs ``gpus`` (ids as :func:`visible_gpus` gives them), from nvidia-smi, so that this
    process opens no CUDA context of its own."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    names = dict(line.split(", ", 1) for line in out.splitlines() if ", " in line)
    return [names.get(g.strip(), f"GPU {g}") for g in gpus]


def _version(*distributions) -> str:
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return "not installed"


def environment(args, gpus):
    """A first record saying where, when and with what the suite ran (versions from the installed packages'
    metadata: nothing is imported)."""
    import platform

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"status": "env", "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "command": " ".join(["python -m benchmarks.synthetic.suite", *args.argv]),
            "python": platform.python_version(), "torch": _version("torch"), "transformers": _version("transformers"),
            "fla": _version("fla-core", "flash-linear-attention"), "git_commit": commit, "gpus": gpu_names(gpus),
            "host_cpus": os.cpu_count(), "workers_per_gpu": args.workers_per_gpu, "graph_workers": args.graph_workers,
            "streams": args.streams, "deadline_s": args.deadline, "time_scale": args.time_scale, "smoke": args.smoke}


def finished_keys(path) -> set:
    """The job keys that have a finished ("ok") record in a results file."""
    keys = set()
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                if rec.get("status") == "ok" and "job_key" in rec:
                    keys.add(rec["job_key"])
    return keys


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.synthetic.suite",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="paper", choices=("paper", "paper_table", "ladder", "dry"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "synthetic.jsonl"))
    p.add_argument("--workers-per-gpu", type=int, default=2, help="eager worker processes per GPU")
    p.add_argument("--graph-workers", type=int, default=1, help="graph worker processes per GPU")
    p.add_argument("--streams", type=int, default=12, help="concurrent runs (CUDA streams) per graph worker")
    p.add_argument("--cpu-workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker")
    p.add_argument("--deadline", type=float, default=None, help="seconds from now by which every run's training ends")
    p.add_argument("--time-scale", type=float, default=1.0, help="multiply every run's max_time")
    p.add_argument("--only-tier", default=None,
                   help="run only the jobs of tiers starting with one of these (comma-separated prefixes)")
    p.add_argument("--only-model", default=None,
                   help="run only the jobs of these model labels (comma-separated, e.g. mamba2,deltanet)")
    p.add_argument("--smoke", action="store_true", help="every job at CPU size (smoke_job)")
    p.add_argument("--baseline-graphs", action="store_true",
                   help="paper_table: capture the baselines' training steps in CUDA graphs too (errors if they cannot)")
    p.add_argument("--resume", nargs="+", default=(), metavar="FILE",
                   help="skip the jobs with a finished record in any of these results files")
    p.add_argument("--dry-plan", action="store_true", help="print the plan (which call runs what) and exit")
    p.add_argument("--calls", type=int, default=2, help="--dry-plan: number of calls")
    p.add_argument("--call-seconds", type=float, default=540.0, help="--dry-plan: seconds per call")
    p.add_argument("--gpus", type=int, default=1, help="--dry-plan: GPUs per call")
    p.add_argument("--rates", default=None, help="measured steps/s from earlier results (JSON lines)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.argv = argv

    t0 = time.time()
    jobs = grid(args.preset, args.time_scale, args.baseline_graphs)
    if args.only_tier:
        prefixes = tuple(t.strip() for t in args.only_tier.split(",") if t.strip())
        jobs = [j for j in jobs if j["tier"].startswith(prefixes)]
    if args.only_model:
        labels = {m.strip() for m in args.only_model.split(",") if m.strip()}
        unknown = labels - {m[0] for m in MAIN_MODELS}
        if unknown:
            p.error(f"--only-model: unknown model label(s) {sorted(unknown)}; known: {[m[0] for m in MAIN_MODELS]}")
        jobs = [j for j in jobs if j["label"] in labels]
    if args.smoke:
        jobs = [smoke_job(j) for j in jobs]
    done = set().union(*(finished_keys(path) for path in args.resume))
    skipped = [j for j in jobs if job_key(j) in done]
    jobs = [j for j in jobs if job_key(j) not in done]
    rates = measured_rates(args.rates) if args.rates else {}
    if args.dry_plan:
        rows = plan(jobs, args.calls, args.call_seconds, args.deadline, args.streams, args.graph_workers,
                    args.workers_per_gpu, args.gpus, rates)
        print_plan(rows, args.calls, args.call_seconds)
        return 0
    gpus = visible_gpus()
    graph_jobs = [(i, j) for i, j in enumerate(jobs) if is_graph_job(j, bool(gpus))]
    eager_jobs = [(i, j) for i, j in enumerate(jobs) if not is_graph_job(j, bool(gpus))]
    ctx = mp.get_context("spawn")
    graph_q, eager_q, results_q = ctx.Queue(), ctx.Queue(), ctx.Queue()
    for item in graph_jobs:
        graph_q.put(item)
    for item in eager_jobs:
        eager_q.put(item)
    deadline_abs = t0 + args.deadline if args.deadline else None
    graph_done = ctx.Event()
    procs, graph_procs = [], []
    if gpus:
        retries = any(j.get("graph_retry_eager") for _, j in graph_jobs)
        for g in gpus:
            for _ in range(args.graph_workers if graph_jobs else 0):
                graph_procs.append(ctx.Process(target=graph_worker, daemon=True, args=(
                    len(procs) + len(graph_procs), g, graph_q, eager_q, results_q, deadline_abs, args.threads,
                    args.streams, rates)))
            for _ in range(args.workers_per_gpu if eager_jobs or retries else 0):
                procs.append(ctx.Process(target=eager_worker, daemon=True, args=(
                    len(procs) + len(graph_procs), g, eager_q, results_q, deadline_abs, args.threads, rates,
                    graph_done)))
    else:
        for _ in range(args.cpu_workers):
            procs.append(ctx.Process(target=eager_worker, daemon=True, args=(
                len(procs), None, eager_q, results_q, deadline_abs, args.threads, rates, graph_done)))
    if not graph_procs:
        graph_done.set()
    procs = graph_procs + procs
    print(f"suite: {len(jobs)} jobs ({len(graph_jobs)} CUDA-graph, {len(eager_jobs)} eager; {len(skipped)} already "
          f"done), {len(procs)} workers on {'GPUs ' + ','.join(gpus) if gpus else 'CPU'}, deadline {args.deadline}s",
          flush=True)
    for proc in procs:
        proc.start()

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    received, counts = set(), {"ok": 0, "not_run": 0, "error": 0}
    hard_stop = deadline_abs + 90 if deadline_abs else None
    with open(args.out, "a") as out:
        out.write(json.dumps(environment(args, gpus)) + "\n")
        while len(received) < len(jobs):
            if not graph_done.is_set() and not any(pr.is_alive() for pr in graph_procs):
                graph_done.set()
            try:
                rec = results_q.get(timeout=5)
            except queue.Empty:
                if not any(pr.is_alive() for pr in procs) and results_q.empty():
                    break
                if hard_stop and time.time() > hard_stop:
                    print("suite: hard stop, ending unfinished workers", flush=True)
                    break
                continue
            received.add(rec["job"])
            counts[rec["status"]] = counts.get(rec["status"], 0) + 1
            out.write(json.dumps(rec) + "\n")
            out.flush()
            elapsed = time.time() - t0
            if rec["status"] == "ok":
                speed = f"{rec['steps_per_s']:.0f}/s" if rec.get("steps_per_s") else "?"
                msg = (f"acc {rec['accuracy']:.3f} macro {rec['macro_accuracy']:.3f} steps {rec['steps']}/"
                       f"{rec['paper_steps']} ({rec['stopped']}, {speed}{', graph' if rec['cuda_graph'] else ''}, "
                       f"{rec['concurrent_runs']} runs) {rec['wall_time_s']:.0f}s")
            else:
                msg = f"{rec['status']}: {rec['reason'][:120]}"
            print(f"[{len(received)}/{len(jobs)} {elapsed:5.0f}s] {rec['tier']:>20} {rec['job_key']:<48}: {msg}",
                  flush=True)
        for i, j in enumerate(jobs):
            if i not in received:
                rec = {"task": j["task"], "job": i, "job_key": job_key(j), "tier": j["tier"], "model": j["label"],
                       "status": "not_run", "reason": "unfinished when the suite stopped (time budget)", "spec": j}
                out.write(json.dumps(rec) + "\n")
                counts["not_run"] += 1
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    print(f"suite: done in {time.time() - t0:.0f}s: {counts}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
