"""Sweep the Triton scans' launch knobs on a CUDA GPU; writes JSON to --out and prints the best per size.

The tables in hf_lrnn/scan_triton.py (HLRU_FWD_CONFIG, HLRU_BWD_CONFIG, BDLRU_FWD_TILE, BDLRU_BWD_TILE)
and the chunk planning constants come from this sweep:
- H-LRU (sequential kernels): U steps per loop iteration x number of time chunks C, forward and
  backward separately, at B = 8, T = 4096, W = 2048 (N = W / m channels), bf16, softmax gates;
  the planner's own choice of C is timed too.
- BD-LRU sequential kernels (k = 2, 3, 4, 8): U x chunks, as for H-LRU; the step kernels (k = 8, 16) for
  comparison.
- BD-LRU tile scans (k = 2, 3, 4): (BLOCK_T, blocks per program, warps), forward and backward.
Each entry times the kernels alone (the backward pass from saved h), with triton.testing.do_bench
(median). Kernels compile in parallel worker processes first.

Usage: python scripts/tune_scan.py --out benchmarks/results/tune_scan_h200.json [--sections hlru,bdlru_seq,...]
"""
import argparse
import json
import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

B, T, W = 8, 4096, 2048
HLRU_U = {1: (2, 4, 8), 2: (2, 4, 8), 3: (4, 8), 4: (2, 4, 8), 8: (1, 2, 4)}
HLRU_CHUNKS = (16, 32, 64)
BDLRU_SEQ_U = {2: (1, 2, 4), 3: (1, 2), 4: (1, 2), 8: (1,)}
SECTIONS = ("hlru", "bdlru_seq", "bdlru_step", "bdlru_tile")
BDLRU_TILES = {
    2: [(16, 16, 1), (16, 32, 2), (32, 32, 4), (16, 16, 2), (32, 16, 4)],
    3: [(8, 16, 1), (16, 16, 2), (16, 16, 4), (8, 16, 2)],
    4: [(16, 16, 4), (8, 16, 1), (16, 8, 2), (16, 16, 2), (8, 16, 4)],
}


def inputs(kind, D, batch, length):
    import torch

    N = W // D
    shape = (batch, length, N) if kind == "hlru" else (batch, length, N, D)
    v = torch.randn(*shape, device="cuda", dtype=torch.bfloat16)
    return v, 2 * torch.randn(*shape, D + 1, device="cuda", dtype=torch.bfloat16)


def run_once(kind, D, fwd_cfg, bwd_cfg, batch, length, chunk):
    """Set the knobs, then run forward and backward once (compiles on first use)."""
    import torch

    from hf_lrnn import scan_triton as st

    if kind == "hlru":
        st.HLRU_FWD_CONFIG[D], st.HLRU_BWD_CONFIG[D] = fwd_cfg, bwd_cfg
        v, g = inputs(kind, D, batch, length)
        h, _, L = st._hlru_forward(v, g, None, None, "softmax", chunk)
        st._hlru_backward(v, g, None, None, h, L, torch.randn_like(h), None, "softmax")
    elif kind == "bdlru_seq":
        st.BDLRU_SEQ_FWD_CONFIG[D], st.BDLRU_SEQ_BWD_CONFIG[D] = fwd_cfg, bwd_cfg
        v, g = inputs("bdlru", D, batch, length)
        h, _, L = st._bdlru_seq_forward(v, g, None, None, "softmax", chunk)
        st._bdlru_seq_backward(v, g, None, None, h, L, torch.randn_like(h), None, "softmax")
    else:
        st.BDLRU_FWD_TILE[D], st.BDLRU_BWD_TILE[D] = fwd_cfg, bwd_cfg
        v, g = inputs(kind, D, batch, length)
        h, _, L = st._bdlru_tile_forward(v, g, None, None, "softmax", chunk)
        st._bdlru_tile_backward(v, g, None, None, h, L, torch.randn_like(h), None, "softmax")
    torch.cuda.synchronize()


def compile_job(job):
    start = time.time()
    try:
        for chunk in (None, 64):  # the single-chunk and the chunked variants
            run_once(*job, batch=1, length=256, chunk=chunk)
        return job, time.time() - start, None
    except Exception as err:  # noqa: BLE001 - reported, the sweep goes on
        return job, time.time() - start, repr(err)[-300:]


def sweep(sections):
    import torch
    from triton.testing import do_bench

    from hf_lrnn import scan_triton as st

    def bench(fn):
        return do_bench(fn, warmup=10, rep=40, return_mode="median")

    rows = []
    for m, unrolls in (HLRU_U.items() if "hlru" in sections else ()):
        v, g = inputs("hlru", m, B, T)
        h, _, _ = st._hlru_forward(v, g, None, None, "softmax", None)
        dh = torch.randn_like(h)
        for direction, table in (("fwd", st.HLRU_FWD_CONFIG), ("bwd", st.HLRU_BWD_CONFIG)):
            saved = table[m]
            for U in unrolls:
                table[m] = (U, 128, 4)
                for C in (*HLRU_CHUNKS, "auto"):
                    chunk = None if C == "auto" else T // C
                    if direction == "fwd":
                        ms = bench(lambda: st._hlru_forward(v, g, None, None, "softmax", chunk))
                    else:
                        L = st._hlru_forward(v, g, None, None, "softmax", chunk)[2]
                        ms = bench(lambda: st._hlru_backward(v, g, None, None, h, L, dh, None, "softmax"))
                    rows.append(dict(kind="hlru", size=m, direction=direction, config=table[m], chunks=C, ms=ms))
                    print(rows[-1], flush=True)
            table[m] = saved
        del v, g, h, dh
    for k, unrolls in (BDLRU_SEQ_U.items() if "bdlru_seq" in sections else ()):
        v, g = inputs("bdlru", k, B, T)
        h, _, _ = st._bdlru_seq_forward(v, g, None, None, "softmax", None)
        dh = torch.randn_like(h)
        for direction, table in (("fwd", st.BDLRU_SEQ_FWD_CONFIG), ("bwd", st.BDLRU_SEQ_BWD_CONFIG)):
            saved = table.get(k)
            for U in unrolls:
                table[k] = (U, 128, 4)
                for C in (*HLRU_CHUNKS, "auto"):
                    chunk = None if C == "auto" else T // C
                    if direction == "fwd":
                        ms = bench(lambda: st._bdlru_seq_forward(v, g, None, None, "softmax", chunk))
                    else:
                        L = st._bdlru_seq_forward(v, g, None, None, "softmax", chunk)[2]
                        ms = bench(lambda: st._bdlru_seq_backward(v, g, None, None, h, L, dh, None, "softmax"))
                    rows.append(dict(kind="bdlru_seq", size=k, direction=direction, config=table[k], chunks=C, ms=ms))
                    print(rows[-1], flush=True)
            if saved is None:
                del table[k]
            else:
                table[k] = saved
        del v, g, h, dh
    for k in ((8, 16) if "bdlru_step" in sections else ()):
        v, g = inputs("bdlru", k, B, T)
        h, _, _, summary, L = st._bdlru_step_forward(v, g, None, None, "softmax", None)
        dh = torch.randn_like(h)
        rows.append(dict(kind="bdlru_step", size=k, direction="fwd", config=None, chunks=T // L,
                         ms=bench(lambda: st._bdlru_step_forward(v, g, None, None, "softmax", None))))
        print(rows[-1], flush=True)
        rows.append(dict(kind="bdlru_step", size=k, direction="bwd", config=None, chunks=T // L,
                         ms=bench(lambda: st._bdlru_step_backward(v, g, None, None, h, summary, L, dh, None, "softmax"))))
        print(rows[-1], flush=True)
        del v, g, h, dh
    for k, tiles in (BDLRU_TILES.items() if "bdlru_tile" in sections else ()):
        v, g = inputs("bdlru", k, B, T)
        h, _, _ = st._bdlru_tile_forward(v, g, None, None, "softmax", None)
        dh = torch.randn_like(h)
        for direction, table in (("fwd", st.BDLRU_FWD_TILE), ("bwd", st.BDLRU_BWD_TILE)):
            saved = table[k]
            for tile in tiles:
                table[k] = tile
                if direction == "fwd":
                    ms = bench(lambda: st._bdlru_tile_forward(v, g, None, None, "softmax", None))
                else:
                    ms = bench(lambda: st._bdlru_tile_backward(v, g, None, None, h, T, dh, None, "softmax"))
                rows.append(dict(kind="bdlru", size=k, direction=direction, config=tile, chunks=1, ms=ms))
                print(rows[-1], flush=True)
            table[k] = saved
        del v, g, h, dh
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/tune_scan_h200.json")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    args = ap.parse_args()
    sections = args.sections.split(",")
    import torch
    import triton

    from hf_lrnn import scan_triton as st

    jobs = []
    if "hlru" in sections:
        jobs += [("hlru", m, (U, 128, 4), (U, 128, 4)) for m, unrolls in HLRU_U.items() for U in unrolls]
    if "bdlru_seq" in sections:
        jobs += [("bdlru_seq", k, (U, 128, 4), (U, 128, 4)) for k, unrolls in BDLRU_SEQ_U.items() for U in unrolls]
    if "bdlru_tile" in sections:
        jobs += [("bdlru", k, tile, tile) for k, tiles in BDLRU_TILES.items() for tile in tiles]
    start = time.time()
    with mp.get_context("spawn").Pool(max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        for job, seconds, err in pool.imap_unordered(compile_job, jobs):
            print(f"compiled {job} in {seconds:.0f} s {err or ''}", flush=True)
    print(f"compile phase {time.time() - start:.0f} s", flush=True)
    rows = sweep(sections)
    best = {}
    for row in rows:
        key = f"{row['kind']} {row['size']} {row['direction']}"
        if key not in best or row["ms"] < best[key]["ms"]:
            best[key] = row
    for key, row in best.items():
        print(f"best {key}: {row['config']} chunks {row['chunks']} {row['ms']:.3f} ms")
    result = dict(gpu=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  versions=dict(torch=torch.__version__, triton=triton.__version__),
                  config=dict(B=B, T=T, W=W, dtype="bfloat16", normalization="softmax"), sections=sections,
                  planner=dict(HLRU_TARGET_WORK=st.HLRU_TARGET_WORK, HLRU_MIN_CHUNK_LEN=st.HLRU_MIN_CHUNK_LEN),
                  rows=rows, best=best)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
