"""Benchmark the H-LRU / BD-LRU scans on a CUDA GPU; writes JSON (and a PNG plot) to --out.

Times the whole path from gate logits and v to h (normalisation included) with
triton.testing.do_bench (median), forward and forward+backward, at equal state width W:
H-LRU N = W/m channels, BD-LRU N = W/k blocks of k. Minimal forward bytes (bf16 in/out, normalised
gates never stored): H-LRU reads m+1 logits and v and writes h, 2(m+3) bytes per token and channel;
BD-LRU reads k+1 logits and v and writes h per row, 2(k+3) bytes per token and unit of width.
Also measures the device-to-device copy bandwidth (bytes read + written), the torch backend,
flash-linear-attention's HGRN kernels (on their own inputs x, g of width W) if importable, a sweep
over T, B = 1 with T = 32k, and the one-token decode step against the torch step.

Usage: python scripts/bench_scan.py --out benchmarks/results [--quick]
"""
import argparse
import datetime
import json
import multiprocessing as mp
import os
import platform
import sys
import time

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from hf_lrnn import ops  # noqa: E402

DT = torch.bfloat16


def copy_bandwidth(nbytes=2 << 30):
    src = torch.randn(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() * 4 / (ms * 1e-3)


def make_inputs(kind, B, T, W, D, grad=False):
    N = W // D
    shape = (B, T, N) if kind == "hlru" else (B, T, N, D)
    v = torch.randn(*shape, device="cuda", dtype=DT, requires_grad=grad)
    g = (2 * torch.randn(*shape, D + 1, device="cuda", dtype=DT)).requires_grad_(grad)
    return v, g


def scan_fn(kind, backend):
    fn = ops.hlru_scan if kind == "hlru" else ops.bdlru_scan
    return lambda v, g: fn(v, g, backend=backend)[0]


def time_scan(kind, D, B, T, W, backend="triton", with_bwd=True, rep=200):
    """fwd ms, fwd+bwd ms, peak memory of fwd+bwd beyond inputs and output gradient (bytes)."""
    fn = scan_fn(kind, backend)
    v, g = make_inputs(kind, B, T, W, D)
    with torch.no_grad():
        fwd = do_bench(lambda: fn(v, g), warmup=25, rep=rep, return_mode="median")
    out = dict(fwd_ms=fwd)
    if with_bwd:
        v.requires_grad_(True)
        g.requires_grad_(True)
        dh = torch.randn_like(v)

        def step():
            h = fn(v, g)
            return torch.autograd.grad(h, (v, g), dh)

        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        out["peak_extra_bytes"] = torch.cuda.max_memory_allocated() - base
        out["fwdbwd_ms"] = do_bench(step, warmup=25, rep=rep, return_mode="median")
    del v, g
    torch.cuda.empty_cache()
    return out


def derive(row, kind, D, B, T, W, copy_bw):
    per = 2 * (D + 3)  # bytes per token and unit of width (channel for H-LRU)
    nbytes = B * T * W * per / (D if kind == "hlru" else 1)
    row["min_fwd_bytes"] = nbytes
    row["tokens_per_s_fwd"] = B * T / (row["fwd_ms"] * 1e-3)
    row["eff_bw_fwd_TBps"] = nbytes / (row["fwd_ms"] * 1e-3) / 1e12
    row["frac_copy_bw_fwd"] = nbytes / (row["fwd_ms"] * 1e-3) / copy_bw
    if "fwdbwd_ms" in row:
        row["tokens_per_s_fwdbwd"] = B * T / (row["fwdbwd_ms"] * 1e-3)
    return row


def bench_fla(B, T, W):
    try:
        from fla.ops.hgrn import chunk_hgrn, fused_recurrent_hgrn
    except Exception as err:  # noqa: BLE001 - report why it could not run
        return {"error": f"flash-linear-attention not importable: {err!r}"}
    out = {}
    for name, fn in (("chunk_hgrn", chunk_hgrn), ("fused_recurrent_hgrn", fused_recurrent_hgrn)):
        try:
            x = torch.randn(B, T, W, device="cuda", dtype=DT)
            g = torch.nn.functional.logsigmoid(torch.randn(B, T, W, device="cuda", dtype=DT))
            with torch.no_grad():
                fwd = do_bench(lambda: fn(x, g), warmup=25, rep=200, return_mode="median")
            x.requires_grad_(True)
            g.requires_grad_(True)
            dh = torch.randn_like(x)
            step = lambda: torch.autograd.grad(fn(x, g)[0], (x, g), dh)  # noqa: E731
            out[name] = dict(fwd_ms=fwd, fwdbwd_ms=do_bench(step, warmup=25, rep=200, return_mode="median"))
        except Exception as err:  # noqa: BLE001
            out[name] = {"error": repr(err)}
    import fla

    out["version"] = getattr(fla, "__version__", "?")
    return out


def bench_decode(kind, D, B, W):
    """One token per step (T = 1) with a carried state: the Triton launch against the torch step."""
    fn = ops.hlru_scan if kind == "hlru" else ops.bdlru_scan
    v, g = make_inputs(kind, B, 1, W, D)
    state = torch.randn(B, W // D, D, device="cuda")
    out = {}
    with torch.no_grad():
        for backend in ("triton", "torch"):
            call = lambda: fn(v, g, state, True, backend=backend)  # noqa: E731
            out[f"{backend}_us"] = 1e3 * do_bench(call, warmup=50, rep=300, return_mode="median")
    return out


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind, label in ((axes[0], "hlru", "H-LRU order m"), (axes[1], "bdlru", "BD-LRU block size k")):
        rows = [r for r in results["main"] if r["kind"] == kind and r["backend"] == "triton"]
        xs = [r["size"] for r in rows]
        ax.plot(xs, [r["fwd_ms"] for r in rows], "o-", label="fwd")
        ax.plot(xs, [r.get("fwdbwd_ms", float("nan")) for r in rows], "s-", label="fwd+bwd")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel(label)
        ax.set_ylabel("ms")
        ax.grid(alpha=0.3)
        ax.legend()
    B, T, W = results["config"]["B"], results["config"]["T"], results["config"]["W"]
    fig.suptitle(f"Triton scans, {results['gpu']}, B={B} T={T} W={W} bf16")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _compile(job):
    """Compile (in a worker process) the kernels one (kind, size) uses here: forward and backward,
    chunked and not, and the one-token decode step with a state."""
    kind, D = job
    B, W = 1, 2048
    fn = ops.hlru_scan if kind == "hlru" else ops.bdlru_scan
    v, g = make_inputs(kind, B, 256, W, D, grad=True)
    h = fn(v, g, backend="triton")[0]
    torch.autograd.grad(h, (v, g), torch.randn_like(h))
    with torch.no_grad():
        fn(v[:, :1], g[:, :1], torch.randn(B, W // D, D, device="cuda"), True, backend="triton")
    torch.cuda.synchronize()
    return job


def compile_all(jobs):
    start = time.time()
    with mp.get_context("spawn").Pool(max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        for job in pool.imap_unordered(_compile, jobs):
            print(f"compiled {job}", flush=True)
    print(f"compiled in {time.time() - start:.0f} s", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--quick", action="store_true", help="main table only")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    B, T, W = 8, 4096, 2048
    res = dict(
        gpu=torch.cuda.get_device_name(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        versions=dict(torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
                      cuda=torch.version.cuda),
        config=dict(B=B, T=T, W=W, dtype="bfloat16", timer="triton.testing.do_bench median"),
        bytes_formula="H-LRU fwd 2(m+3) B per token-channel (m+1 logits + v read, h written); "
                      "BD-LRU fwd 2(k+3) B per token-unit of width",
    )
    compile_all([("hlru", D) for D in (1, 2, 3, 4, 8)] + [("bdlru", D) for D in (1, 2, 4, 8, 16)])
    copy_bw = copy_bandwidth()
    res["copy_bw_TBps"] = copy_bw / 1e12
    print(f"copy bandwidth {copy_bw / 1e12:.2f} TB/s", flush=True)

    res["main"] = []
    for kind, sizes in (("hlru", (1, 2, 3, 4, 8)), ("bdlru", (1, 2, 4, 8, 16))):
        for D in sizes:
            row = dict(kind=kind, size=D, backend="triton", **time_scan(kind, D, B, T, W))
            res["main"].append(derive(row, kind, D, B, T, W, copy_bw))
            print(row, flush=True)
    for row in res["main"]:
        base = next(r for r in res["main"] if r["kind"] == row["kind"] and r["size"] == 1)
        row["fwd_ratio_to_size1"] = row["fwd_ms"] / base["fwd_ms"]
        row["fwdbwd_ratio_to_size1"] = row["fwdbwd_ms"] / base["fwdbwd_ms"]
    res["fla"] = bench_fla(B, T, W)
    print("fla", res["fla"], flush=True)

    if not args.quick:
        res["torch_backend"] = []
        for kind, D in (("hlru", 1), ("hlru", 2), ("hlru", 4), ("bdlru", 4)):
            row = dict(kind=kind, size=D, backend="torch", **time_scan(kind, D, B, T, W, "torch", rep=50))
            res["torch_backend"].append(derive(row, kind, D, B, T, W, copy_bw))
            print(row, flush=True)
        res["sweep_T"] = []
        for kind, D in (("hlru", 1), ("hlru", 2), ("bdlru", 4)):
            for t in (1024, 4096, 16384, 65536):
                row = dict(kind=kind, size=D, B=B, T=t, **time_scan(kind, D, B, t, W, rep=100))
                res["sweep_T"].append(derive(row, kind, D, B, t, W, copy_bw))
                print(row, flush=True)
        res["B1_T32k"] = []
        for kind, sizes in (("hlru", (1, 2, 4, 8)), ("bdlru", (1, 4, 8, 16))):
            for D in sizes:
                row = dict(kind=kind, size=D, B=1, T=32768, **time_scan(kind, D, 1, 32768, W, rep=100))
                res["B1_T32k"].append(derive(row, kind, D, 1, 32768, W, copy_bw))
                print(row, flush=True)
        res["decode_T1_B8"] = {f"{kind}{D}": bench_decode(kind, D, B, W) for kind, D in (("hlru", 2), ("bdlru", 4))}
        print("decode", res["decode_T1_B8"], flush=True)

    with open(os.path.join(args.out, "bench_scan_h200.json"), "w") as f:
        json.dump(res, f, indent=1)
    plot(res, os.path.join(args.out, "bench_scan_h200.png"))
    print(f"\n{res['gpu']}  copy {res['copy_bw_TBps']:.2f} TB/s  B={B} T={T} W={W} bf16")
    print("kind  size  fwd_ms  fwdbwd_ms  frac_copy  peak_extra_MB")
    for r in res["main"]:
        print(f"{r['kind']:5s} {r['size']:4d} {r['fwd_ms']:7.3f} {r['fwdbwd_ms']:9.3f} {r['frac_copy_bw_fwd']:9.2f}"
              f" {r['peak_extra_bytes'] / 2**20:10.0f}")


if __name__ == "__main__":
    main()
