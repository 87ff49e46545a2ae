"""Per-kernel GPU time of public scans, in launch order (torch.profiler's Chrome trace, kernels only), forward
and fwd+bwd, averaged over REPEATS calls after two warm-up calls. JSON lines to argv[1]; cases KIND:D, shape B:T.
    python benchmarks/results/kernels/probes_2026-12-06/profile_kernels.py OUT.jsonl B:T KIND:D ... [--smoke]
--smoke: the CPU and Triton's interpreter (no kernels in the trace; checks that the script runs)."""
import json, os, sys, tempfile, time
import torch
from benchmarks.kernels.scan_setup import SCANS, scan_inputs

REPEATS, W = 5, 2048
args = [a for a in sys.argv[1:] if a != "--smoke"]
smoke = "--smoke" in sys.argv
out, (B, T), cases = args[0], map(int, args[1].split(":")), [(c.split(":")[0], int(c.split(":")[1])) for c in args[2:]]
dev, dtype = ("cpu", torch.float32) if smoke else ("cuda", torch.bfloat16)


def kernels(fn):
    """[(kernel name, mean µs a call)] in launch order over REPEATS calls of fn."""
    for _ in range(2):
        fn()
    acts = [torch.profiler.ProfilerActivity.CPU] + ([] if smoke else [torch.profiler.ProfilerActivity.CUDA])
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(REPEATS):
            fn()
        if not smoke:
            torch.cuda.synchronize()
    path = tempfile.mktemp(suffix=".json")
    prof.export_chrome_trace(path)
    events = sorted((e for e in json.load(open(path))["traceEvents"] if e.get("cat") == "kernel"), key=lambda e: e["ts"])
    os.remove(path)
    per_call = len(events) // REPEATS
    return [(events[i]["name"][:60], round(sum(events[r * per_call + i]["dur"] for r in range(REPEATS)) / REPEATS, 1))
            for i in range(per_call)]


with open(out, "a") as f:
    f.write(json.dumps(dict(gpu="cpu" if smoke else torch.cuda.get_device_name(), commit=os.environ.get("BENCH_COMMIT"),
                            dirty=os.environ.get("BENCH_DIRTY"), B=B, T=T, W=W, repeats=REPEATS,
                            date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))) + "\n")
for kind, D in cases:
    v, g = scan_inputs(kind, B, T, W // D, D, dev, dtype, logit_scale=2.0)
    v.requires_grad_(); g.requires_grad_()
    dh = torch.randn_like(v)
    with torch.no_grad():
        fwd = kernels(lambda: SCANS[kind](v, g))
    fwdbwd = kernels(lambda: torch.autograd.grad(SCANS[kind](v, g)[0], (v, g), dh))
    row = dict(kind=kind, D=D, fwd=fwd, fwd_us=round(sum(t for _, t in fwd), 1), fwdbwd=fwdbwd,
               fwdbwd_us=round(sum(t for _, t in fwdbwd), 1))
    print(json.dumps(row), flush=True)
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
