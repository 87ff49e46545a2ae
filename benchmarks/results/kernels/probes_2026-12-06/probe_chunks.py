"""The Triton scans' time at forced chunk lengths L against the planner's, where the chunk combine's cost moved
(branch combine_tiles): do_bench median ms of the forward (no grad) and of forward+backward through autograd,
bf16 inputs, W = 2048 (N = W / D), softmax gates, at B = 1, T = 32k and B = 8, T = 4096. JSON lines to argv[1].
    python benchmarks/results/kernels/probes_2026-12-06/probe_chunks.py OUT.jsonl [--smoke]
--smoke: the CPU and Triton's interpreter on tiny shapes (checks that the script runs)."""
import json, os, sys, time
import torch
from benchmarks.kernels.scan_setup import scan_inputs
from hf_lrnn.scan_triton_lrnn import bdlru_scan_triton, hlru_scan_triton
from hf_lrnn.triton_plan_lrnn import chunk_plan

smoke = "--smoke" in sys.argv
W = 16 if smoke else 2048
dev, dtype = ("cpu", torch.float32) if smoke else ("cuda", torch.bfloat16)
SCAN = {"hlru": hlru_scan_triton, "bdlru": bdlru_scan_triton}
GRID = [((1, 64), [("hlru", 4), ("bdlru", 4)], [16, 32])] if smoke else [
    ((1, 32768), [("hlru", 4), ("hlru", 8), ("hlru", 16), ("bdlru", 8), ("bdlru", 16)],
     [128, 256, 512, 1024, 2048, 4096, 8192]),
    ((8, 4096), [("hlru", 8), ("hlru", 16)], [128, 256, 512, 1024, 2048, 4096])]


def ms(fn):
    if smoke:
        fn()
        return 0.0
    from triton.testing import do_bench
    return round(do_bench(fn, warmup=5, rep=60, return_mode="median"), 4)


with open(sys.argv[1], "a") as f:
    def emit(row):
        print(json.dumps(row), flush=True)
        f.write(json.dumps(row) + "\n")
    emit(dict(gpu="cpu" if smoke else torch.cuda.get_device_name(), commit=os.environ.get("BENCH_COMMIT"),
              dirty=os.environ.get("BENCH_DIRTY"), W=W, dtype=str(dtype),
              date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
    sms = None if smoke else torch.cuda.get_device_properties(0).multi_processor_count
    for (B, T), cases, lengths in GRID:
        for kind, D in cases:
            v, g = scan_inputs(kind, B, T, W // D, D, dev, dtype, logit_scale=2.0)
            v.requires_grad_(); g.requires_grad_()
            dh = torch.randn_like(v)
            planner = chunk_plan(kind, B, T, W // D, D, sms)[0]
            for L in [None] + [L for L in lengths if L != planner]:
                def fwd():
                    with torch.no_grad():
                        SCAN[kind](v, g, chunk_size=L)

                def fwdbwd():
                    torch.autograd.grad(SCAN[kind](v, g, chunk_size=L)[0], (v, g), dh)
                emit(dict(kind=kind, D=D, B=B, T=T, L=planner if L is None else L, planner=L is None,
                          fwd_ms=ms(fwd), fwdbwd_ms=ms(fwdbwd)))
