"""Sweep of the Triton scans' launch plan on one CUDA GPU: for each (kind, size) and shape, every (time-chunk
length L, U steps per loop iteration, BLOCK_N channels per program) of a fixed grid, forward and backward timed
separately (``triton.testing.do_bench`` median, bf16 inputs, W = 2048, softmax gates, no mask). The step kernels
(BD-LRU k > 8) have no U or BLOCK_N to choose: for them only L is swept.
The planner's constants (``hf_lrnn.triton_plan_lrnn``) are read from such a sweep; the grid and the inputs are
fixed (seeded), so two runs on one GPU time the same launches.

    python -m benchmarks.kernels.tune_plan --out tune_plan_h100.jsonl
    python -m benchmarks.kernels.tune_plan --cases hlru:1 hlru:2 --u 8 16 32 --direction fwd --out big_u.jsonl
    # the step kernels' chunking threshold (STEP_MIN_PROGRAMS_PER_SM): 32k tokens split into B = 8 ... 1 sequences
    python -m benchmarks.kernels.tune_plan --cases bdlru:12 bdlru:16 --shapes 8:4096 4:8192 2:16384 1:32768 --out step.jsonl
    TRITON_INTERPRET=1 python -m benchmarks.kernels.tune_plan --smoke --out /tmp/tune.jsonl   # CPU: checks the script

Every kernel of the grid is compiled first by worker processes (one per CPU core), then one process times them.
One JSON line per timing: kind, size, B, T, W, direction, L, chunks, U, BLOCK_N, num_warps (None for the step
kernels), ms, and the planner's current choice flagged (``planner``); at the end, per (kind, size, shape,
direction), the fastest launch against the planner's.
"""
from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import time

import torch

from benchmarks.kernels.scan_setup import require_device, scan_inputs
from benchmarks.outputs import add_overwrite_flag, refuse_existing
from benchmarks.synthetic.run import environment
from hf_lrnn import scan_triton_lrnn, triton_plan_lrnn

GPU = dict(W=2048, cases=[("hlru", 1), ("hlru", 2), ("hlru", 4), ("bdlru", 2), ("bdlru", 4)],
           shapes={(8, 4096): (4096, 1024, 512, 256, 128), (1, 32768): (1024, 512, 256, 128, 64)},
           blocks=(64, 128), warmup=5, rep=25)
SMOKE = dict(W=32, cases=[("hlru", 2), ("bdlru", 2)], shapes={(1, 32): (32, 16)}, blocks=(32,), warmup=0, rep=0,
             u_grid={2: (2, 4)})
# U by state size; every (U, BLOCK_N) compiles about six kernels at ~10 s of CPU each (U = 16 was dropped: a
# grid with it did not finish compiling in 7 minutes on 16 cores)
U_GRID = {1: (2, 4, 8), 2: (2, 4, 8), 4: (1, 2, 4)}


def table(kind: str, backward: bool) -> dict:
    """The planner's (U, BLOCK_N, warps) table that this sweep overrides."""
    name = f"{kind.upper()}_{'BWD' if backward else 'FWD'}_CONFIG"
    return getattr(triton_plan_lrnn, name)


def is_step(kind: str, D: int) -> bool:
    """Whether (kind, D) runs the step kernels (BD-LRU k > 8), whose launch has nothing to sweep but L."""
    return kind == "bdlru" and D > triton_plan_lrnn.MAX_SEQUENTIAL_BLOCK


def launches(s: dict, kind: str, D: int):
    """(U, BLOCK_N, num_warps) of the grid: one thread per channel or block; [None] for the step kernels."""
    if is_step(kind, D):
        return [None]
    return [(U, block, max(1, block // 32)) for U, block in itertools.product(s.get("u_grid", U_GRID)[D], s["blocks"])]


def inputs(kind, B, T, W, D, device):
    """v and logits (bf16, seeded) of width W: N = W / D channels or blocks."""
    torch.manual_seed(0)
    return scan_inputs(kind, B, T, W // D, D, device, torch.bfloat16, logit_scale=2.0)


def parse_case(ap, text: str):
    """(kind, size) from "hlru:2"; an argparse error for a kind or size that the Triton kernels do not run."""
    kind, _, size = text.partition(":")
    limit = {"hlru": triton_plan_lrnn.MAX_HLRU_ORDER, "bdlru": triton_plan_lrnn.MAX_BDLRU_BLOCK}.get(kind)
    if limit is None or not size.isdigit() or not 1 <= int(size) <= limit:
        ap.error(f"--cases takes hlru:M (M <= {triton_plan_lrnn.MAX_HLRU_ORDER}) or bdlru:K "
                 f"(K <= {triton_plan_lrnn.MAX_BDLRU_BLOCK}), got {text!r}")
    return kind, int(size)


def parse_shape(ap, text: str):
    """((B, T), chunk lengths) from "8:4096": L = T, T / 2, ... down to min(128, T / 4) steps."""
    B, _, T = text.partition(":")
    if not (B.isdigit() and T.isdigit() and int(B) >= 1 and int(T) >= 1):
        ap.error(f"--shapes takes B:T with positive integers, e.g. 8:4096, got {text!r}")
    B, T = int(B), int(T)
    return (B, T), tuple(T >> i for i in range(T.bit_length()) if T >> i >= max(1, min(128, T // 4)))


def run_once(kind, D, launch, backward, v, g, L, h=None, dh=None):
    """One forward (backward) of the kernels at this launch (None: the step kernels, nothing to set) and chunk
    length."""
    def call():
        if backward:
            return scan_triton_lrnn._chunked_backward(kind, v, g, None, None, h, L, dh, None, "softmax")
        return scan_triton_lrnn._chunked_forward(kind, v, g, None, None, "softmax", L)

    if launch is None:
        return call()
    tab = table(kind, backward)
    saved = tab.get(D)
    tab[D] = launch
    try:
        return call()
    finally:
        if saved is None:
            del tab[D]
        else:
            tab[D] = saved


def compile_job(job):
    """Compile (in a worker) one launch's kernels, forward or backward, chunked (summary, combine, main) and not."""
    kind, D, launch, backward, device = job
    v, g = inputs(kind, 1, 256, GPU["W"], D, device)
    h = torch.randn_like(v)
    for L in (256, 128):
        run_once(kind, D, launch, backward, v, g, L, h, torch.randn_like(v))
    if device == "cuda":
        torch.cuda.synchronize()
    return job


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.kernels.tune_plan", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSONL file of timings")
    ap.add_argument("--smoke", action="store_true", help="tiny grid on the CPU (TRITON_INTERPRET=1)")
    ap.add_argument("--cases", nargs="+", metavar="KIND:SIZE", help="sweep these instead of the grid's cases, e.g. "
                    "hlru:2 bdlru:4 bdlru:16 (H-LRU m <= 16, BD-LRU k <= 16; k > 8: the step kernels, L alone)")
    ap.add_argument("--shapes", nargs="+", metavar="B:T", help="these (B, T) instead of the grid's, each with chunk "
                    "lengths T, T / 2, ... down to min(128, T / 4) steps")
    ap.add_argument("--u", nargs="+", type=int, metavar="U", help="these U for every case instead of the grid's U "
                    "by size (U = 16 and 32 compile for minutes)")
    ap.add_argument("--direction", choices=("fwd", "bwd", "both"), default="both")
    add_overwrite_flag(ap)
    a = ap.parse_args(argv)
    refuse_existing(ap, [a.out], a.overwrite)
    s = dict(SMOKE if a.smoke else GPU)
    if a.cases:
        s["cases"] = [parse_case(ap, text) for text in a.cases]
    if a.shapes:
        s["shapes"] = dict(parse_shape(ap, text) for text in a.shapes)
    if a.u:
        if min(a.u) < 1:
            ap.error(f"--u takes positive step counts, got {a.u}")
        s["u_grid"] = {D: tuple(a.u) for _, D in s["cases"]}
    missing = sorted({D for kind, D in s["cases"] if not is_step(kind, D)} - set(s.get("u_grid", U_GRID)))
    if missing:
        ap.error(f"the grid has no U for sizes {missing}: give them with --u")
    directions = {"fwd": (False,), "bwd": (True,), "both": (False, True)}[a.direction]
    device = require_device("tune_plan", a.smoke)
    jobs = [(kind, D, launch, backward, device) for kind, D in s["cases"] for launch in launches(s, kind, D)
            for backward in directions]
    start = time.time()
    if device == "cuda":
        with mp.get_context("spawn").Pool(max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
            for i, job in enumerate(pool.imap_unordered(compile_job, jobs)):
                print(f"compiled {i + 1}/{len(jobs)} {job[:4]} at {time.time() - start:.0f} s", flush=True)
        print(f"compiled {len(jobs)} launches in {time.time() - start:.0f} s", flush=True)
    if device == "cuda":
        from triton.testing import do_bench

        bench = lambda fn: do_bench(fn, warmup=s["warmup"], rep=s["rep"], return_mode="median")  # noqa: E731
    else:
        def bench(fn):
            t0 = time.perf_counter()
            fn()
            return 1e3 * (time.perf_counter() - t0)
    full_env = environment()
    env = {key: full_env[key] for key in ("commit", "dirty", "gpu", "triton", "date")}
    print(json.dumps(full_env), flush=True)
    best = []
    with open(a.out, "w") as f:
        for (kind, D), ((B, T), Ls) in itertools.product(s["cases"], s["shapes"].items()):
            W = s["W"]
            v, g = inputs(kind, B, T, W, D, device)
            dh = torch.randn_like(v)
            h = scan_triton_lrnn._chunked_forward(kind, v, g, None, None, "softmax", T)[0]
            L_plan = triton_plan_lrnn.chunk_plan(kind, B, T, W // D, D, None if a.smoke else
                                                 triton_plan_lrnn._device_sms(v))[0]
            for backward in directions:
                plan = (L_plan, None if is_step(kind, D) else triton_plan_lrnn.sequential_config(kind, D, backward))
                rows = []
                for L, launch in itertools.product(sorted(set(Ls) | {L_plan}, reverse=True), launches(s, kind, D)):
                    if L > T:
                        continue
                    ms = bench(lambda: run_once(kind, D, launch, backward, v, g, L, h, dh))
                    U, block, warps = launch or (None, None, None)
                    row = dict(kind=kind, size=D, B=B, T=T, W=W, direction="bwd" if backward else "fwd", L=L,
                               chunks=-(-T // L), U=U, BLOCK_N=block, num_warps=warps, ms=ms,
                               planner=(L, launch) == plan, env=env)
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    rows.append(row)
                fastest = min(rows, key=lambda r: r["ms"])
                current = [r for r in rows if r["planner"]]
                best.append(f"{kind:5} {D} B={B} T={T:5} {fastest['direction']}: best L={fastest['L']} "
                            f"U={fastest['U']} BLOCK_N={fastest['BLOCK_N']} {fastest['ms']:.3f} ms; planner "
                            + (f"L={L_plan} {plan[1]} {current[0]['ms']:.3f} ms" if current else
                               f"L={L_plan} {plan[1]} (outside the grid)"))
                print(best[-1], flush=True)
    print(f"done in {time.time() - start:.0f} s -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
