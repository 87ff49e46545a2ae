"""Where the host's time goes in one forward+backward of our Triton scans through eager autograd (issue 22: at
B = 8, T = 4,096 a fwd+bwd takes ~1 ms of host time on some H100 hosts, above its ~0.7 ms of GPU work). Host µs per
call (GPU queue drained before, 20 calls timed, median of 7 rounds) of:
  public      torch.autograd.grad(ops.{kind}_scan(v, g, backend="triton")[0], (v, g), dy)
  eager       the same through scan_triton_lrnn._EagerScan.apply (no ops checks)
  drivers     _scan_forward then _scan_backward (no autograd): plans, allocations, the six launches
  plan        scan_chunk_plan + _launch, forward and backward (Python only)
  empty6      six launches of an empty Triton kernel with 20 arguments and 12 constexprs
  alloc8      eight torch.empty on the GPU
H-LRU m = 1, 2, 4 and BD-LRU k = 2, 4, bf16, W = 2048. JSON lines to argv[1].
    python benchmarks/results/kernels/probes_2026-12-07/probe_host_split.py OUT.jsonl   (on a CUDA GPU)"""
import json, os, statistics, sys, time
import torch
import triton
import triton.language as tl
from hf_lrnn import ops
from hf_lrnn import scan_triton_lrnn as scan
from hf_lrnn.triton_plan_lrnn import scan_chunk_plan
from benchmarks.kernels.scan_setup import scan_inputs


@triton.jit
def _empty(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, n0, n1, n2, n3, n4, n5, n6, n7, n8, n9,
           C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr, C3: tl.constexpr, C4: tl.constexpr,
           C5: tl.constexpr, C6: tl.constexpr, C7: tl.constexpr, C8: tl.constexpr, C9: tl.constexpr,
           C10: tl.constexpr, C11: tl.constexpr):
    pass


def host_us(fn, calls=20, rounds=7):
    for _ in range(5):
        fn()
    out = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - t) / calls * 1e6)
        torch.cuda.synchronize()
    return round(statistics.median(out), 1)


with open(sys.argv[1], "a") as f:
    def emit(row):
        print(json.dumps(row), flush=True)
        f.write(json.dumps(row) + "\n")
    emit(dict(gpu=torch.cuda.get_device_name(), commit=os.environ.get("BENCH_COMMIT"),
              dirty=os.environ.get("BENCH_DIRTY"), triton=triton.__version__, torch=torch.__version__,
              load_1min=os.getloadavg()[0], date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
    ptrs = [torch.empty(64, device="cuda") for _ in range(10)]
    empty6 = lambda: [_empty[(64, 16, 8)](*ptrs, *range(10), 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12) for _ in range(6)]  # noqa: E731
    alloc8 = lambda: [torch.empty(8, 16, 2048, 3, device="cuda") for _ in range(8)]  # noqa: E731
    emit(dict(case="empty6", host_us=host_us(empty6)))
    emit(dict(case="alloc8", host_us=host_us(alloc8)))
    for kind, D in (("hlru", 1), ("hlru", 2), ("hlru", 4), ("bdlru", 2), ("bdlru", 4)):
        v, g = scan_inputs(kind, 8, 4096, 2048 // D, D, "cuda", torch.bfloat16, logit_scale=2.0)
        v.requires_grad_(); g.requires_grad_()
        fn = ops.hlru_scan if kind == "hlru" else ops.bdlru_scan
        dy = torch.randn_like(fn(v, g, backend="triton")[0])
        with torch.no_grad():
            h = fn(v, g, backend="triton")[0]
        cases = dict(
            public=lambda: torch.autograd.grad(fn(v, g, backend="triton")[0], (v, g), dy),
            eager=lambda: torch.autograd.grad(scan._EagerScan.apply(kind, v, g, None, None, "softmax", None, None)[0],
                                              (v, g), dy),
            drivers=lambda: (scan._scan_forward(kind, v.detach(), g.detach(), None, None, "softmax", None),
                             scan._scan_backward(kind, v.detach(), g.detach(), None, None, h, dy, None, "softmax", None)),
            plan=lambda: (scan_chunk_plan(kind, v, D, None), scan._launch(kind, D, v.shape[2], False),
                          scan_chunk_plan(kind, v, D, None), scan._launch(kind, D, v.shape[2], True)),
        )
        for name, c in cases.items():
            emit(dict(kind=kind, D=D, case=name, host_us=host_us(c)))
