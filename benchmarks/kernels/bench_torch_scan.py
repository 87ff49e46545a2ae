"""Time the pure-PyTorch scans, the step-by-step loop against the chunked scan (fwd, fwd+bwd): the comparison
behind the torch backend's choice between them (``hf_lrnn.ops.CHUNKED_MAX_CPU_WORK``).

    python -m benchmarks.kernels.bench_torch_scan --json out.json       # CPU, T = 4096, a markdown table
    python -m benchmarks.kernels.bench_torch_scan --scaling 2048,4096,8192,16384,32768   # chunked H-LRU vs T"""
import argparse
import json
import platform
import time
from datetime import date

import torch

from hf_lrnn import ops
from hf_lrnn.scan_chunked_lrnn import bdlru_scan_chunked, hlru_scan_chunked  # hf_lrnn.ops has no forced-chunked call

from .scan_setup import scan_inputs

CASES = [  # (op, B, N, D): H-LRU has N channels of order m = D; BD-LRU has N blocks of size k = D
    ("hlru", 1, 64, 1), ("hlru", 1, 64, 2), ("hlru", 1, 64, 4),
    ("hlru", 8, 128, 1), ("hlru", 8, 128, 2), ("hlru", 8, 128, 4),
    ("bdlru", 1, 16, 4), ("bdlru", 8, 32, 4), ("bdlru", 8, 16, 8),
]


def seconds(fn, v, g, backward, warm_up=True):
    """Wall-clock seconds of one call of ``fn`` (and of backward through it), after one warm-up call."""
    def run():
        v_, g_ = v.detach().requires_grad_(backward), g.detach().requires_grad_(backward)
        h, _ = fn(v_, g_)
        if backward:
            h.sum().backward()
        if v.is_cuda:
            torch.cuda.synchronize()

    if warm_up:
        run()
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def scaling(lengths, repeat=3):
    """Best of ``repeat`` fwd+bwd seconds of the chunked H-LRU scan (B = 1, N = 64, m = 2) at each T."""
    for T in lengths:
        v, g = scan_inputs("hlru", 1, T, 64, 2)
        best = min(seconds(hlru_scan_chunked, v, g, backward=True, warm_up=False) for _ in range(repeat))
        print(f"T={T:6d}  fwd+bwd {best:.3f} s", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernels.bench_torch_scan",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int, default=4096)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--scaling", metavar="T,T,...", help="only time the chunked H-LRU scan at these lengths")
    args = parser.parse_args(argv)
    if args.scaling:
        lengths = [int(t) for t in args.scaling.split(",")]
        if min(lengths) < 1:
            parser.error(f"--scaling lengths must be positive, got {lengths}")
        return scaling(lengths)
    if args.T < 1:
        parser.error(f"--T must be positive, got {args.T}")

    rows = []
    for op, B, N, D in CASES:
        v, g = scan_inputs(op, B, args.T, N, D, args.device)
        scan, chunked = (ops.hlru_scan, hlru_scan_chunked) if op == "hlru" else (ops.bdlru_scan, bdlru_scan_chunked)
        loop = lambda v, g, scan=scan: scan(v, g, backend="reference")  # noqa: E731 (the step-by-step loop)
        row = dict(op=op, B=B, T=args.T, N=N, D=D)
        for name, fn in (("loop", loop), ("chunked", chunked)):
            row[f"{name}_fwd_s"] = seconds(fn, v, g, backward=False)
            row[f"{name}_fwdbwd_s"] = seconds(fn, v, g, backward=True)
        rows.append(row)
        print(json.dumps(row), flush=True)

    meta = dict(date=str(date.today()), torch=torch.__version__, device=args.device, threads=torch.get_num_threads(),
                machine=platform.processor() or platform.machine())
    print(f"\n{meta}\n")
    print("| op | B | N | m or k | loop fwd (s) | chunked fwd (s) | loop fwd+bwd (s) | chunked fwd+bwd (s) | speed-up fwd+bwd |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['op']} | {r['B']} | {r['N']} | {r['D']} | {r['loop_fwd_s']:.3f} | {r['chunked_fwd_s']:.3f} | "
              f"{r['loop_fwdbwd_s']:.3f} | {r['chunked_fwdbwd_s']:.3f} | {r['loop_fwdbwd_s'] / r['chunked_fwdbwd_s']:.1f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
