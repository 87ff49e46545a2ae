"""Run the synthetic benchmark grid, spread over every visible GPU, several small runs per GPU.

    python -m benchmarks.synthetic.suite --preset paper --deadline 430 --out benchmarks/results/synthetic.jsonl
    python -m benchmarks.synthetic.suite --preset dry        # every model kind once, tiny sizes, on the CPU

Workers are processes pinned to one GPU each (``--workers-per-gpu`` per GPU; on a CPU-only machine
``--cpu-workers`` CPU processes); each takes jobs in priority order from one queue and trains them with
:func:`benchmarks.synthetic.run.train`. Every result is appended to ``--out`` (JSON lines) as soon as it
arrives, with a progress line on stdout. With ``--deadline S`` a worker starts no job that could not
finish within S seconds of the suite's start; such jobs, and baselines that cannot run here, are
written as records with ``"status": "not_run"`` and the reason. Runs are time-capped (``max_time``,
see benchmarks/synthetic/run.py), so the grid fits a fixed budget; each record says how many steps it made.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import subprocess
import sys
import time
import traceback
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
    ("bdlru_k8", "bdlru", {"block_size": 8}),
    ("mamba", "mamba", {}),
    ("lstm", "lstm", {}),
    ("llama", "llama", {}),
    ("deltanet", "deltanet", {}),
    ("gated_deltanet", "gated_deltanet", {}),
]
HEADLINE_TASKS = ("s5", "recall", "compression")
OTHER_TASKS = ("s3", "s4", "selective_copy")
EXTENSION_TASKS = ("a5", "parity", "mod_count")
SWEEP_MODELS = ("diag", "hlru_m2", "bdlru_k4", "lstm", "llama", "mamba")
EXTENSION_MODELS = ("diag", "hlru_m2", "bdlru_k4", "bdlru_k8", "lstm", "llama", "mamba", "gated_deltanet")


def job(task, label, seed=0, hidden_size=128, max_time=60.0, steps=20000, tier="", **extra):
    """The run settings of model ``label`` (a MAIN_MODELS row) on ``task``, tagged with its ``tier``."""
    kind, kwargs = next((k, kw) for l, k, kw in MAIN_MODELS if l == label)
    run = dict(task=task, model=kind, seed=seed, hidden_size=hidden_size, max_time=max_time, steps=steps, **kwargs)
    run.update(extra)
    run["tier"] = tier
    return run


def grid(preset: str, time_scale: float = 1.0):
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
    elif preset == "dry":  # end-to-end check on a CPU: tiny sizes, every model kind once
        small = {"task_overrides": {"seq_len": 16, "num_train": 512, "num_test": 128}}
        for i, l in enumerate(labels):
            task = ("s5", "recall", "compression")[i % 3]
            jobs.append(job(task, l, 0, hidden_size=32, max_time=5 * time_scale, steps=30, tier="dry", **small))
    else:
        raise ValueError(f"unknown preset {preset!r}")
    return jobs


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


def worker(wid, gpu, jobs_q, results_q, deadline_abs, threads):
    """A worker process: pinned to ``gpu`` (or the CPU), it trains jobs from ``jobs_q`` until the queue is
    empty and puts one record per job on ``results_q``."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # before torch is imported in this process
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(threads)
    from benchmarks.synthetic import run as synthetic
    from benchmarks.synthetic.baselines import BaselineUnavailable

    while True:
        try:
            index, spec = jobs_q.get_nowait()
        except queue.Empty:
            return
        record = {"task": spec["task"], "job": index, "tier": spec["tier"], "gpu": gpu, "worker": wid}
        overhead = 20.0
        if deadline_abs and time.time() + (spec.get("max_time") or 0) + overhead > deadline_abs:
            record.update(status="not_run", reason="suite deadline (time budget) reached before the job started",
                          spec=spec)
            results_q.put(record)
            continue
        run = synthetic.default_run(**{k: v for k, v in spec.items() if k != "tier"})
        record["model"] = synthetic.model_label(run)
        try:
            result = synthetic.train(run, log=lambda *a: None)
            record.update(result, status="ok")
        except BaselineUnavailable as err:
            record.update(status="not_run", reason=str(err), spec=spec)
        except Exception as err:  # retry once without bf16 autocast (time allowing), else record the error
            reason, tb = f"{type(err).__name__}: {err}"[:500], traceback.format_exc()[-2000:]
            record.update(status="error", reason=reason, spec=spec, traceback=tb)
            time_left = not (deadline_abs and time.time() + run["max_time"] + overhead > deadline_abs)
            if run["amp"] and gpu is not None and time_left:
                try:
                    result = synthetic.train({**run, "amp": False}, log=lambda *a: None)
                    record = {k: v for k, v in record.items() if k not in ("reason", "traceback", "spec")}
                    record.update(result, status="ok", amp_fallback=reason[:300])
                except Exception as err2:
                    record["retry_without_bf16"] = f"{type(err2).__name__}: {err2}"[:300]
        results_q.put(record)


def environment(args, gpus):
    """A first record saying where, when and with what the suite ran."""
    import platform

    import torch
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    try:
        import fla
        fla_version = getattr(fla, "__version__", "?")
    except Exception as err:
        fla_version = f"unavailable ({type(err).__name__})"
    return {"status": "env", "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "command": " ".join(["python -m benchmarks.synthetic.suite", *args.argv]),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "fla": fla_version, "git_commit": commit,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if gpus else [],
            "host_cpus": os.cpu_count(), "workers_per_gpu": args.workers_per_gpu, "deadline_s": args.deadline,
            "time_scale": args.time_scale}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.synthetic.suite",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="paper", choices=("paper", "dry"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "synthetic.jsonl"))
    p.add_argument("--workers-per-gpu", type=int, default=8)
    p.add_argument("--cpu-workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker")
    p.add_argument("--deadline", type=float, default=None, help="seconds from now after which no job starts")
    p.add_argument("--time-scale", type=float, default=1.0, help="multiply every run's max_time")
    p.add_argument("--only-tier", default=None, help="run only the jobs of this tier")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    args.argv = argv

    t0 = time.time()
    jobs = grid(args.preset, args.time_scale)
    if args.only_tier:
        jobs = [j for j in jobs if j["tier"] == args.only_tier]
    gpus = visible_gpus()
    slots = [(g, w) for g in gpus for w in range(args.workers_per_gpu)] or [(None, w) for w in range(args.cpu_workers)]
    print(f"suite: {len(jobs)} jobs, {len(slots)} workers on {'GPUs ' + ','.join(gpus) if gpus else 'CPU'}, "
          f"deadline {args.deadline}s", flush=True)
    ctx = mp.get_context("spawn")
    jobs_q, results_q = ctx.Queue(), ctx.Queue()
    for i, j in enumerate(jobs):
        jobs_q.put((i, j))
    deadline_abs = t0 + args.deadline if args.deadline else None
    procs = []
    for wid, (gpu, _) in enumerate(slots):
        proc = ctx.Process(target=worker, args=(wid, gpu, jobs_q, results_q, deadline_abs, args.threads), daemon=True)
        proc.start()
        procs.append(proc)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    done, counts = set(), {"ok": 0, "not_run": 0, "error": 0}
    hard_stop = deadline_abs + 90 if deadline_abs else None
    with open(args.out, "a") as out:
        out.write(json.dumps(environment(args, gpus)) + "\n")
        while len(done) < len(jobs):
            try:
                rec = results_q.get(timeout=5)
            except queue.Empty:
                if not any(pr.is_alive() for pr in procs) and results_q.empty():
                    break
                if hard_stop and time.time() > hard_stop:
                    print("suite: hard stop, ending unfinished workers", flush=True)
                    break
                continue
            done.add(rec["job"])
            counts[rec["status"]] = counts.get(rec["status"], 0) + 1
            out.write(json.dumps(rec) + "\n")
            out.flush()
            elapsed = time.time() - t0
            if rec["status"] == "ok":
                msg = (f"acc {rec['accuracy']:.3f} params {rec['parameters']} steps {rec['steps']} "
                       f"({rec['stopped']}) {rec['wall_time_s']:.0f}s")
            else:
                msg = f"{rec['status']}: {rec['reason'][:120]}"
            print(f"[{len(done)}/{len(jobs)} {elapsed:5.0f}s] {rec['tier']:>16} {rec['task']:>14} "
                  f"{rec.get('model', '?'):>14} s{rec.get('seed', rec.get('spec', {}).get('seed', '?'))} "
                  f"d{rec.get('config', {}).get('hidden_size', rec.get('spec', {}).get('hidden_size', '?'))}: {msg}",
                  flush=True)
        for i, j in enumerate(jobs):
            if i not in done:
                rec = {"task": j["task"], "job": i, "tier": j["tier"], "status": "not_run",
                       "reason": "unfinished when the suite stopped (time budget)", "spec": j}
                out.write(json.dumps(rec) + "\n")
                counts["not_run"] += 1
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    print(f"suite: done in {time.time() - t0:.0f}s: {counts}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
