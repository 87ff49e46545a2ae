"""ms of one public scan, fwd and fwd+bwd (do_bench median), for the hf_lrnn on the path: time_case.py KIND D B T W."""
import json, os, sys, torch
from triton.testing import do_bench
from hf_lrnn import ops
from benchmarks.kernels.scan_setup import SCANS, scan_inputs
kind, D, B, T, W = sys.argv[1], *map(int, sys.argv[2:6])
v, g = scan_inputs(kind, B, T, W // D, D, device="cuda", dtype=torch.bfloat16)
v.requires_grad_(); g.requires_grad_()
f = lambda: SCANS[kind](v, g)
h = f()[0]; dh = torch.randn_like(h)
fb = lambda: torch.autograd.grad(f()[0], (v, g), dh)
fb()
if os.environ.get('COMPILE_ONLY') == '1':
    sys.exit()
r = dict(kind=kind, D=D, B=B, T=T, W=W, commit=os.environ.get("BENCH_COMMIT"), gpu=torch.cuda.get_device_name(),
         fwd_ms=[do_bench(f, warmup=10, rep=40, return_mode="median") for _ in range(3)],
         fwdbwd_ms=[do_bench(fb, warmup=10, rep=40, return_mode="median") for _ in range(3)])
print(json.dumps(r), flush=True)
