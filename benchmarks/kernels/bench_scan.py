"""Time the H-LRU / BD-LRU Triton scans on a CUDA GPU (logits and v to h, normalisation included;
triton.testing.do_bench median, fwd and fwd+bwd) at equal state width W; also the copy bandwidth, the torch
backend, fla's HGRN kernels, a sweep over T, B = 1 at T = 32k and the one-token decode step. JSON and PNG to --out.
Minimal forward bytes (bf16): H-LRU 2(m+3) per token and channel, BD-LRU 2(k+3) per token and unit of width;
forward+backward three times that (the backward reads v, logits, h, dh and writes dv, dlogits).

``--compare``: only ours against the authors' ``triton_affine_scan`` (``--authors-path``, the folder holding their
triton_scans.py; see compare_scan) and fla's HGRN, three repeats each, and B = 1 at T = 32k (under 150 s on an H100);
for ours also the backward kernels alone (``bwd_alone_ms``: from a saved h, without autograd).

    python -m benchmarks.kernels.bench_scan --out benchmarks/results [--quick]
    python -m benchmarks.kernels.bench_scan --compare --authors-path DIR --out benchmarks/results
    TRITON_INTERPRET=1 python -m benchmarks.kernels.bench_scan --smoke [--compare --authors-path DIR] --out /tmp/bench"""
import argparse
import datetime
import json
import multiprocessing as mp
import os
import platform
import time
from typing import Callable

import torch
import triton

from benchmarks.outputs import add_overwrite_flag, refuse_existing
from benchmarks.synthetic.run import environment

from . import compare_scan
from .scan_setup import SCANS, require_device, scan_inputs


# The run's shapes, timer and cases (kind, size) per section, on the GPU and in the smoke mode (``--smoke``).
GPU = dict(device="cuda", dtype=torch.bfloat16, B=8, T=4096, W=2048, copy_bytes=2 << 30,
           timer="triton.testing.do_bench median",
           main=[("hlru", m) for m in (1, 2, 3, 4, 8)] + [("bdlru", k) for k in (1, 2, 4, 8, 16)],
           torch_backend=[("hlru", 1), ("hlru", 2), ("hlru", 4), ("bdlru", 4)],
           sweep=[("hlru", 1), ("hlru", 2), ("bdlru", 4)], sweep_T=(1024, 4096, 16384, 65536), b1_T=32768,
           b1=[("hlru", m) for m in (1, 2, 4, 8)] + [("bdlru", k) for k in (1, 4, 8, 16)],
           decode=[("hlru", 2), ("bdlru", 4)])
SMOKE = dict(device="cpu", dtype=torch.float32, B=2, T=16, W=16, copy_bytes=1 << 20,
             timer="one wall-clock run (smoke: a check of the script, not a measurement)",
             main=[("hlru", 1), ("hlru", 2), ("bdlru", 2), ("bdlru", 16)], torch_backend=[("hlru", 2), ("bdlru", 2)],
             sweep=[("hlru", 2)], sweep_T=(8, 16), b1_T=32, b1=[("hlru", 2), ("bdlru", 2)],
             decode=[("hlru", 2), ("bdlru", 2)])
# --compare: (kind, size) at (B, T, W) and at B = 1, T = b1_T; timings repeated `repeats` times (do_bench warmup
# and rep in ms); the authors' H-LRU companion matrices (B T W m bytes) only up to order authors_max_order.
COMPARE_GPU = dict(main=[("hlru", m) for m in (1, 2, 4)] + [("bdlru", k) for k in (2, 4, 8)],
                   b1=[("hlru", m) for m in (1, 2, 4, 8, 16)] + [("bdlru", k) for k in (2, 4, 8, 16)],
                   repeats=3, b1_repeats=1, warmup=10, rep=40, authors_max_order=4)
COMPARE_SMOKE = dict(main=[("hlru", 1), ("hlru", 2), ("bdlru", 2)], b1=[("hlru", 2), ("bdlru", 2)],
                     repeats=1, b1_repeats=1, warmup=0, rep=0, authors_max_order=4)


def gpu_short_name() -> str:
    """The GPU's model in lower case, e.g. "h200" for "NVIDIA H200" (the default file stem's suffix)."""
    words = torch.cuda.get_device_name().split()
    return (words[1] if words[0] == "NVIDIA" and len(words) > 1 else words[0]).lower()


def make_bench(s: dict) -> Callable[..., float]:
    """``bench(fn, warmup, rep) -> ms``: do_bench's median on the GPU, one timed call otherwise."""
    if s["device"] == "cuda":
        from triton.testing import do_bench

        return lambda fn, warmup, rep: do_bench(fn, warmup=warmup, rep=rep, return_mode="median")

    def once(fn, warmup, rep):
        start = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - start)

    return once


def copy_bandwidth(s: dict, bench):
    """Bytes read + written per second by a device-to-device copy of ``s["copy_bytes"]`` bytes."""
    src = torch.randn(s["copy_bytes"] // 4, device=s["device"])
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src), 50, 300)
    return 2 * src.numel() * 4 / (ms * 1e-3)


def make_inputs(s: dict, kind, B, T, D, grad=False):
    """v and gate logits (2 x standard normal) of width W = s["W"]: N = W / D channels or blocks."""
    v, g = scan_inputs(kind, B, T, s["W"] // D, D, s["device"], s["dtype"], logit_scale=2.0)
    return v.requires_grad_(grad), g.requires_grad_(grad)


def time_scan(s: dict, bench, kind, D, B, T, backend="triton", rep=200):
    """fwd ms, fwd+bwd ms and (on the GPU) the peak memory of fwd+bwd beyond inputs and output gradient (bytes)."""
    fn = lambda v, g: SCANS[kind](v, g, backend=backend)[0]  # noqa: E731
    v, g = make_inputs(s, kind, B, T, D)
    with torch.no_grad():
        fwd = bench(lambda: fn(v, g), 25, rep)
    out = dict(fwd_ms=fwd)
    v.requires_grad_(True)
    g.requires_grad_(True)
    dh = torch.randn_like(v)

    def step():
        h = fn(v, g)
        return torch.autograd.grad(h, (v, g), dh)

    if s["device"] == "cuda":
        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        out["peak_extra_bytes"] = torch.cuda.max_memory_allocated() - base
    out["fwdbwd_ms"] = bench(step, 25, rep)
    del v, g
    if s["device"] == "cuda":
        torch.cuda.empty_cache()
    return out


def derive(row, kind, D, B, T, W, copy_bw):
    """Add the minimal forward bytes, tokens/s and the effective bandwidth (also as a fraction of the copy's)."""
    per = 2 * (D + 3)  # bytes per token and unit of width (channel for H-LRU)
    nbytes = B * T * W * per / (D if kind == "hlru" else 1)
    row["min_fwd_bytes"] = nbytes
    row["tokens_per_s_fwd"] = B * T / (row["fwd_ms"] * 1e-3)
    row["eff_bw_fwd_TBps"] = nbytes / (row["fwd_ms"] * 1e-3) / 1e12
    row["frac_copy_bw_fwd"] = nbytes / (row["fwd_ms"] * 1e-3) / copy_bw
    row["tokens_per_s_fwdbwd"] = B * T / (row["fwdbwd_ms"] * 1e-3)
    return row


def bench_fla(s: dict, bench):
    """flash-linear-attention's HGRN kernels at (B, T, W), or the reason they could not run."""
    try:
        from fla.ops.hgrn import chunk_hgrn, fused_recurrent_hgrn
    except Exception as err:  # noqa: BLE001 - report why it could not run
        return {"error": f"flash-linear-attention not importable: {err!r}"}
    out = {}
    for name, fn in (("chunk_hgrn", chunk_hgrn), ("fused_recurrent_hgrn", fused_recurrent_hgrn)):
        try:
            x = torch.randn(s["B"], s["T"], s["W"], device=s["device"], dtype=s["dtype"])
            g = torch.nn.functional.logsigmoid(torch.randn(s["B"], s["T"], s["W"], device=s["device"], dtype=s["dtype"]))
            with torch.no_grad():
                fwd = bench(lambda: fn(x, g), 25, 200)
            x.requires_grad_(True)
            g.requires_grad_(True)
            dh = torch.randn_like(x)
            step = lambda: torch.autograd.grad(fn(x, g)[0], (x, g), dh)  # noqa: E731
            out[name] = dict(fwd_ms=fwd, fwdbwd_ms=bench(step, 25, 200))
        except Exception as err:  # noqa: BLE001
            out[name] = {"error": repr(err)}
    import fla

    out["version"] = getattr(fla, "__version__", "?")
    return out


def bench_decode(s: dict, bench, kind, D):
    """One token per step (T = 1) with a carried state: the Triton launch against the torch step (us)."""
    fn = SCANS[kind]
    v, g = make_inputs(s, kind, s["B"], 1, D)
    state = torch.randn(s["B"], s["W"] // D, D, device=s["device"])
    out = {}
    with torch.no_grad():
        for backend in ("triton", "torch"):
            call = lambda: fn(v, g, initial_state=state, output_final_state=True, backend=backend)  # noqa: E731
            out[f"{backend}_us"] = 1e3 * bench(call, 50, 300)
    return out


def load_fla():
    """fla's ``chunk_hgrn`` and its version, or (None, the reason it cannot be imported)."""
    try:
        import fla
        from fla.ops.hgrn import chunk_hgrn
    except Exception as err:  # noqa: BLE001 - report why it could not run
        return None, f"not available: flash-linear-attention not importable: {err!r}"
    return chunk_hgrn, f"fla {getattr(fla, '__version__', '?')} chunk_hgrn"


def compare(s: dict, c: dict, bench, copy_bw: float, authors_path, save: Callable[[dict], None]) -> dict:
    """``--compare``: every contender of compare_scan on each case of c["main"] at (B, T, W) and c["b1"] at B = 1,
    T = b1_T; a contender that fails records its error (e.g. the authors' kernels under the interpreter). ``save``
    gets the results so far after every case (a run cut short keeps them)."""
    authors, authors_info = compare_scan.load_authors_scan(authors_path)
    authors_fused, fused_info = (compare_scan.load_authors_fused_gates() if authors is not None
                                 else (None, "not available: no authors' folder loaded"))
    fla, fla_info = load_fla() if s["device"] == "cuda" else (None, "not available: fla runs on CUDA only")
    out = dict(authors=authors_info, authors_fused=fused_info, fla=fla_info, rows=[])
    print("authors:", authors_info, "\nauthors' fused-gate scan:", fused_info, "\nfla:", fla_info, flush=True)
    cases = [(kind, D, s["B"], s["T"], c["repeats"]) for kind, D in c["main"]]
    cases += [(kind, D, 1, s["b1_T"], c["b1_repeats"]) for kind, D in c["b1"]]
    for kind, D, B, T, repeats in cases:
        use_authors = authors if kind == "bdlru" or D <= c["authors_max_order"] else None
        v, g = make_inputs(s, kind, B, T, D)
        for name, setup in compare_scan.contenders(kind, D, use_authors, fla, authors_fused).items():
            row = dict(kind=kind, size=D, B=B, T=T, contender=name)
            try:
                if name != "ours" and not name.endswith("_kernel"):  # *_kernel: the same kernels on ready operands
                    row["rel_err_vs_ours"] = compare_scan.check_against_ours(kind, name, setup, v, g)
                row.update(compare_scan.time_contender(bench, name, setup, v, g, repeats, c["warmup"], c["rep"]))
                if name == "ours":
                    row["bwd_alone_ms"] = compare_scan.time_backward_alone(bench, kind, v, g, repeats, c["warmup"],
                                                                           c["rep"])
                nbytes = B * T * s["W"] * 2 * (D + 3) / (D if kind == "hlru" else 1)
                row["frac_copy_bw_fwd"] = nbytes / (row["fwd_ms"]["median"] * 1e-3) / copy_bw
                row["frac_copy_bw_fwdbwd"] = 3 * nbytes / (row["fwdbwd_ms"]["median"] * 1e-3) / copy_bw
            except Exception as err:  # noqa: BLE001 - one contender's failure must not end the run
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
            out["rows"].append(row)
            print(compare_row_text(row), flush=True)
            if s["device"] == "cuda":
                torch.cuda.empty_cache()
        if authors is not None and use_authors is None:
            out["rows"].append(dict(kind=kind, size=D, B=B, T=T, contender="authors_*",
                                    skipped=f"H-LRU m > {c['authors_max_order']}: companion matrices of B T W m elements"))
        del v, g
        save(out)
    return out


def compare_summary(rows: list) -> str:
    """One line per case: median fwd / fwd+bwd ms of ours, the authors' (kernel alone, with the gates, their
    fused-gate kernel) and fla's kernel; '-' where a contender did not run."""
    lines = ["case              ours           authors kernel  authors+gates   authors fused   fla kernel"]
    cases = dict.fromkeys((r["kind"], r["size"], r["B"], r["T"]) for r in rows)
    for case in cases:
        timed = {r["contender"]: r for r in rows if (r["kind"], r["size"], r["B"], r["T"]) == case and "fwd_ms" in r}
        ms = lambda name: (f"{timed[name]['fwd_ms']['median']:6.3f}/{timed[name]['fwdbwd_ms']['median']:6.3f}"  # noqa: E731
                           if name in timed else f"{'-':>13}")
        lines.append(f"{case[0]:5s} {case[1]:2d} B={case[2]} T={case[3]:5d} {ms('ours')}  "
                     f"{ms('authors_kernel')}  {ms('authors_with_gates')}  {ms('authors_fused_gates')}  {ms('fla_kernel')}")
    return "\n".join(lines)


def compare_row_text(row: dict) -> str:
    """One line of the --compare table: case, contender, median [min, max] ms fwd and fwd+bwd, fraction of copy."""
    head = f"{row['kind']:5s} {row['size']:2d} B={row['B']} T={row['T']:5d} {row['contender']:18s}"
    if "fwd_ms" not in row:
        return f"{head} {row.get('error') or row.get('skipped')}"
    ms = "  ".join(f"{row[k]['median']:8.3f} [{row[k]['min']:.3f}, {row[k]['max']:.3f}]" for k in ("fwd_ms", "fwdbwd_ms"))
    err = f"  rel_err {row['rel_err_vs_ours']:.1e}" if "rel_err_vs_ours" in row else ""
    if "bwd_alone_ms" in row:
        err += "  bwd alone " + "/".join(f"{x:.3f}" for x in row["bwd_alone_ms"]["all"])
    err += f"  host {row['fwdbwd_host_ms']:.3f} ms, load {row['host_load_1min']:.1f}"
    return f"{head} {ms}  copy {row['frac_copy_bw_fwd']:.2f} / {row['frac_copy_bw_fwdbwd']:.2f}{err}"


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
    cfg = results["config"]
    fig.suptitle(f"Triton scans, {results['gpu']}, B={cfg['B']} T={cfg['T']} W={cfg['W']} {cfg['dtype']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compile_kernels(job):
    """Compile (in a worker process) the kernels one (kind, size) uses on the GPU: forward and backward,
    chunked and not, and the one-token decode step with a state."""
    kind, D = job
    fn = SCANS[kind]
    v, g = make_inputs(GPU, kind, 1, 256, D, grad=True)
    h = fn(v, g, backend="triton")[0]
    torch.autograd.grad(h, (v, g), torch.randn_like(h))
    with torch.no_grad():
        state = torch.randn(1, GPU["W"] // D, D, device="cuda")
        fn(v[:, :1], g[:, :1], initial_state=state, output_final_state=True, backend="triton")
    torch.cuda.synchronize()
    return job


def compile_all(jobs):
    start = time.time()
    with mp.get_context("spawn").Pool(max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        for job in pool.imap_unordered(compile_kernels, jobs):
            print(f"compiled {job}", flush=True)
    print(f"compiled in {time.time() - start:.0f} s", flush=True)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.kernels.bench_scan",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results", help="folder for <name>.json and <name>.png")
    ap.add_argument("--name", default=None, help="file stem (default bench_scan_<gpu>, e.g. bench_scan_h200; bench_scan_smoke with --smoke)")
    ap.add_argument("--quick", action="store_true", help="main table only")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (TRITON_INTERPRET=1): checks the script")
    ap.add_argument("--compare", action="store_true",
                    help="only ours against the authors' and fla's kernels (file stem bench_scan_compare_<gpu>)")
    ap.add_argument("--authors-path", default=None,
                    help="with --compare: the folder holding the authors' triton_scans.py (IgorDn8/mad-lab, "
                         "mad/model/layers/ops/scans) and the modules it imports")
    add_overwrite_flag(ap)
    return ap


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    start = time.time()
    require_device("bench_scan", args.smoke)
    s = SMOKE if args.smoke else GPU
    stem = "bench_scan_compare" if args.compare else "bench_scan"
    name = args.name or (f"{stem}_smoke" if args.smoke else f"{stem}_{gpu_short_name()}")
    refuse_existing(parser, [os.path.join(args.out, f"{name}.{ext}") for ext in ("json",) + (() if args.compare else ("png",))],
                    args.overwrite)
    bench = make_bench(s)
    os.makedirs(args.out, exist_ok=True)
    B, T, W = s["B"], s["T"], s["W"]
    res = dict(
        gpu=torch.cuda.get_device_name() if s["device"] == "cuda" else f"cpu ({platform.machine()}, Triton interpreter)",
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        versions=dict(torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
                      cuda=torch.version.cuda),
        env=environment(),
        config=dict(B=B, T=T, W=W, dtype=str(s["dtype"]).replace("torch.", ""), timer=s["timer"]),
        bytes_formula="H-LRU fwd 2(m+3) B per token-channel (m+1 logits + v read, h written); "
                      "BD-LRU fwd 2(k+3) B per token-unit of width",
    )
    c = COMPARE_SMOKE if args.smoke else COMPARE_GPU
    if s["device"] == "cuda":
        compile_all(sorted(set(c["main"] + c["b1"])) if args.compare else s["main"])
    copy_bw = copy_bandwidth(s, bench)
    res["copy_bw_TBps"] = copy_bw / 1e12
    print(f"copy bandwidth {copy_bw / 1e12:.2f} TB/s", flush=True)
    if args.compare:
        res["config"].update(b1_T=s["b1_T"], repeats=c["repeats"], b1_repeats=c["b1_repeats"],
                             do_bench_warmup_ms=c["warmup"], do_bench_rep_ms=c["rep"])
        path = os.path.join(args.out, f"{name}.json")

        def save(partial):
            res.update(compare=partial, elapsed_s=time.time() - start)
            with open(path, "w") as f:
                json.dump(res, f, indent=1)

        save(compare(s, c, bench, copy_bw, args.authors_path, save))
        print("\nmedian ms, fwd/fwd+bwd\n" + compare_summary(res["compare"]["rows"]))
        print(f"{res['gpu']}  copy {res['copy_bw_TBps']:.2f} TB/s  {res['elapsed_s']:.0f} s  -> {args.out}/{name}.json")
        return
    # (section, cases (kind, size, B, T), backend, repetitions); B1_T32k: B = 1 and T = 32768 on the GPU
    sections = [("main", [(kind, D, B, T) for kind, D in s["main"]], "triton", 200)]
    if not args.quick:
        sections += [("torch_backend", [(kind, D, B, T) for kind, D in s["torch_backend"]], "torch", 50),
                     ("sweep_T", [(kind, D, B, t) for kind, D in s["sweep"] for t in s["sweep_T"]], "triton", 100),
                     ("B1_T32k", [(kind, D, 1, s["b1_T"]) for kind, D in s["b1"]], "triton", 100)]
    for section, cases, backend, rep in sections:
        res[section] = []
        for kind, D, b, t in cases:
            row = dict(kind=kind, size=D, backend=backend, B=b, T=t, **time_scan(s, bench, kind, D, b, t, backend, rep))
            res[section].append(derive(row, kind, D, b, t, W, copy_bw))
            print(row, flush=True)
    for row in res["main"]:
        base = next((r for r in res["main"] if r["kind"] == row["kind"] and r["size"] == 1), None)
        if base is not None:
            row["fwd_ratio_to_size1"] = row["fwd_ms"] / base["fwd_ms"]
            row["fwdbwd_ratio_to_size1"] = row["fwdbwd_ms"] / base["fwdbwd_ms"]
    if s["device"] == "cuda":
        res["fla"] = bench_fla(s, bench)
        print("fla", res["fla"], flush=True)
    if not args.quick:
        res["decode_T1_B8"] = {f"{kind}{D}": bench_decode(s, bench, kind, D) for kind, D in s["decode"]}
        print("decode", res["decode_T1_B8"], flush=True)

    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(res, f, indent=1)
    plot(res, os.path.join(args.out, f"{name}.png"))
    print(f"\n{res['gpu']}  copy {res['copy_bw_TBps']:.2f} TB/s  B={B} T={T} W={W} {res['config']['dtype']}")
    print("kind  size  fwd_ms  fwdbwd_ms  frac_copy  peak_extra_MB")
    for r in res["main"]:
        peak = f"{r['peak_extra_bytes'] / 2**20:10.0f}" if "peak_extra_bytes" in r else f"{'-':>10}"
        print(f"{r['kind']:5s} {r['size']:4d} {r['fwd_ms']:7.3f} {r['fwdbwd_ms']:9.3f} {r['frac_copy_bw_fwd']:9.2f} {peak}")


if __name__ == "__main__":
    main()
