"""Sweep the Triton scans' launch knobs on a CUDA GPU; writes JSON to --out and prints the best per size.

The tables in hf_lrnn/scan_triton.py (HLRU_FWD_CONFIG, HLRU_BWD_CONFIG, BDLRU_FWD_CONFIG,
BDLRU_BWD_CONFIG) and its chunk-planning constants come from this sweep: for each H-LRU order m and
BD-LRU block size k of the sequential kernels, U (steps per loop iteration) x the number of time chunks,
forward and backward separately, at B = 8, T = 4096, W = 2048 (N = W / m channels or W / k blocks),
bf16, softmax gates; the planner's own choice of chunks ("auto") is timed too. The step kernels
(k = 16) are timed for reference. Each entry times the kernels alone (the backward pass from a saved h)
with triton.testing.do_bench (median); kernels compile in parallel worker processes first.

Usage (repository root):
    python -m benchmarks.kernels.tune_scan --out benchmarks/results/tune_scan_h200.json [--sections hlru,bdlru]
    TRITON_INTERPRET=1 python -m benchmarks.kernels.tune_scan --smoke
        (tiny shapes, m = k = 2 and the step kernels, each call timed once: a check of the script itself, on a
        CPU through Triton's interpreter; no JSON)
"""
import argparse
import json
import multiprocessing as mp
import os
import time

SHAPE = dict(B=8, T=4096, W=2048)
SMOKE_SHAPE = dict(B=1, T=24, W=16)
UNROLLS = {"hlru": {1: (2, 4, 8), 2: (2, 4, 8), 3: (4, 8), 4: (2, 4, 8), 8: (1, 2, 4)},
           "bdlru": {2: (1, 2, 4), 3: (1, 2), 4: (1, 2), 8: (1,)}}
SMOKE_UNROLLS = {"hlru": {2: (2,)}, "bdlru": {2: (1,)}}
CHUNKS = (16, 32, 64)
SECTIONS = ("hlru", "bdlru", "bdlru_step")


def inputs(kind, D, shape, device):
    import torch

    B, T, W = shape["B"], shape["T"], shape["W"]
    N = W // D
    dims = (B, T, N) if kind == "hlru" else (B, T, N, D)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    v = torch.randn(*dims, device=device, dtype=dtype)
    return v, 2 * torch.randn(*dims, D + 1, device=device, dtype=dtype)


def config_table(st, kind, backward):
    return {("hlru", False): st.HLRU_FWD_CONFIG, ("hlru", True): st.HLRU_BWD_CONFIG,
            ("bdlru", False): st.BDLRU_FWD_CONFIG, ("bdlru", True): st.BDLRU_BWD_CONFIG}[(kind, backward)]


def compile_job(job):
    """Run forward and backward once at a small shape with U steps per iteration (compiles the kernels,
    single-chunk and chunked)."""
    import torch

    from hf_lrnn import scan_triton as st

    kind, D, U = job
    start = time.time()
    try:
        for backward in (False, True):
            config_table(st, kind, backward)[D] = (U, 128, 4)
        v, g = inputs(kind, D, dict(B=1, T=256, W=128 * D), "cuda")
        for chunk in (None, 64):
            L = st._chunk_plan(kind, v, D, chunk)[0]
            h, _ = st._sequential_forward(kind, v, g, None, None, "softmax", L)
            st._sequential_backward(kind, v, g, None, None, h, L, torch.randn_like(h), None, "softmax")
        torch.cuda.synchronize()
        return job, time.time() - start, None
    except Exception as err:  # noqa: BLE001 - reported, the sweep goes on
        return job, time.time() - start, repr(err)[-300:]


def sweep(sections, shape, device, bench, chunk_counts, unrolls_by_kind):
    import torch

    from hf_lrnn import scan_triton as st

    T = shape["T"]
    rows = []
    for kind in ("hlru", "bdlru"):
        if kind not in sections:
            continue
        for D, unrolls in unrolls_by_kind[kind].items():
            v, g = inputs(kind, D, shape, device)
            h, _ = st._sequential_forward(kind, v, g, None, None, "softmax", st._chunk_plan(kind, v, D, None)[0])
            dh = torch.randn_like(h)
            for backward in (False, True):
                table = config_table(st, kind, backward)
                saved = table.get(D)
                for U in unrolls:
                    table[D] = (U, 128, 4)
                    for C in (*chunk_counts, "auto"):
                        L = st._chunk_plan(kind, v, D, None if C == "auto" else max(1, T // C))[0]
                        if backward:
                            ms = bench(lambda: st._sequential_backward(kind, v, g, None, None, h, L, dh, None, "softmax"))
                        else:
                            ms = bench(lambda: st._sequential_forward(kind, v, g, None, None, "softmax", L))
                        rows.append(dict(kind=kind, size=D, direction="bwd" if backward else "fwd", U=U,
                                         chunks=C if C != "auto" else f"auto ({-(-T // L)})", ms=ms))
                        print(rows[-1], flush=True)
                if saved is None:
                    del table[D]
                else:
                    table[D] = saved
    if "bdlru_step" in sections:
        v, g = inputs("bdlru", 16, shape, device)
        h, _ = st._step_forward(v, g, None, None, "softmax")
        dh = torch.randn_like(h)
        for direction, fn in (("fwd", lambda: st._step_forward(v, g, None, None, "softmax")),
                              ("bwd", lambda: st._step_backward(v, g, None, None, h, dh, None, "softmax"))):
            rows.append(dict(kind="bdlru_step", size=16, direction=direction, U=None, chunks=1, ms=bench(fn)))
            print(rows[-1], flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.kernels.tune_scan",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/tune_scan_h200.json")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, m = k = 2 and k = 16 only, no JSON")
    args = ap.parse_args(argv)
    sections = args.sections.split(",")
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown sections {unknown}; choose from {SECTIONS}")
    import torch
    import triton

    from hf_lrnn import scan_triton as st

    if args.smoke:
        def bench(fn):
            start = time.perf_counter()
            fn()
            return 1e3 * (time.perf_counter() - start)

        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("--smoke without a GPU runs the kernels through Triton's interpreter: set TRITON_INTERPRET=1")
        rows = sweep(sections, SMOKE_SHAPE, device, bench, (2,), SMOKE_UNROLLS)
        print(f"smoke: {len(rows)} runs")
        return
    if not torch.cuda.is_available():
        raise SystemExit("tune_scan needs a CUDA GPU (or --smoke with TRITON_INTERPRET=1 for a CPU check)")
    from triton.testing import do_bench

    def bench(fn):
        return do_bench(fn, warmup=10, rep=40, return_mode="median")

    jobs = [(kind, D, U) for kind in ("hlru", "bdlru") if kind in sections for D, unrolls in UNROLLS[kind].items()
            for U in unrolls]
    start = time.time()
    with mp.get_context("spawn").Pool(max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        for job, seconds, err in pool.imap_unordered(compile_job, jobs):
            print(f"compiled {job} in {seconds:.0f} s {err or ''}", flush=True)
    print(f"compile phase {time.time() - start:.0f} s", flush=True)
    rows = sweep(sections, SHAPE, "cuda", bench, CHUNKS, UNROLLS)
    best = {}
    for row in rows:
        key = f"{row['kind']} {row['size']} {row['direction']}"
        if key not in best or row["ms"] < best[key]["ms"]:
            best[key] = row
    for key, row in best.items():
        print(f"best {key}: U {row['U']} chunks {row['chunks']} {row['ms']:.3f} ms")
    result = dict(gpu=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  versions=dict(torch=torch.__version__, triton=triton.__version__),
                  config=dict(**SHAPE, dtype="bfloat16", normalization="softmax"), sections=sections,
                  planner=dict(MIN_CHUNK_LEN=st.MIN_CHUNK_LEN, HLRU_TARGET_WORK=st.HLRU_TARGET_WORK,
                               BDLRU_TARGET_THREADS=st.BDLRU_TARGET_THREADS),
                  rows=rows, best=best)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
