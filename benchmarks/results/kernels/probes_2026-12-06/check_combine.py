"""The combine kernel (scan_triton_lrnn._combine) against a float64 loop on the GPU at long chunk counts: random
chunk summaries [e | P] (B, C, N, D, D + 1) with P scaled to spectral radius below 1, forward and reversed, from x0;
max relative error per D. JSON lines to argv[1].
    python benchmarks/results/kernels/probes_2026-12-06/check_combine.py OUT.jsonl [--smoke]"""
import json, os, sys, time
import torch
from hf_lrnn.scan_triton_lrnn import _combine

smoke = "--smoke" in sys.argv
dev = "cpu" if smoke else "cuda"
B, C, N = (1, 5, 3) if smoke else (2, 256, 130)
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(dict(gpu="cpu" if smoke else torch.cuda.get_device_name(), commit=os.environ.get("BENCH_COMMIT"),
                            dirty=os.environ.get("BENCH_DIRTY"), B=B, C=C, N=N,
                            date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))) + "\n")
    for D in (1, 2, 3, 4, 8, 12, 16):
        g = torch.Generator().manual_seed(D)
        s = torch.randn(B, C, N, D, D + 1, generator=g, dtype=torch.float64)
        s[..., 1:] *= 0.9 / (2 * D ** 0.5)
        x0 = torch.randn(B, N, D, generator=g, dtype=torch.float64)
        for reverse in (False, True):
            out = _combine(s.float().to(dev), x0.float().to(dev), reverse).cpu().double()
            x, ref = x0.clone(), torch.empty(B, C, N, D, dtype=torch.float64)
            for c in (reversed(range(C)) if reverse else range(C)):
                ref[:, c] = x
                x = s[:, c, ..., 0] + (s[:, c, ..., 1:] @ x[..., None])[..., 0]
            err = ((out - ref).norm() / ref.norm()).item()
            row = dict(D=D, reverse=reverse, rel_err=err, finite=bool(torch.isfinite(out).all()))
            print(json.dumps(row), flush=True)
            f.write(json.dumps(row) + "\n")
