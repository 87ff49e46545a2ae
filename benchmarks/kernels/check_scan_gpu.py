"""Large-shape correctness of the Triton scans on a CUDA GPU; writes relative errors to JSON.

Compares the Triton backend (fp32 and bf16 inputs) with a float64 reference on the same (rounded)
inputs, forward (h, final state) and backward (v, gate_logits, initial_state; the loss reads h and the
final state). The float64 reference is the chunked torch scan (``hf_lrnn.scan_chunked``, itself tested
against the step-by-step loop), which keeps T = 65536 affordable. Small B*N forces the chunked
(summary, combine, rescan) kernels; B=8, W=2048 the plain one.

Usage (repository root):
    python -m benchmarks.kernels.check_scan_gpu --out benchmarks/results/scan_gpu_errors.json
    TRITON_INTERPRET=1 python -m benchmarks.kernels.check_scan_gpu --smoke --out /tmp/errors.json
        (tiny shapes, float32 only, on the CPU through Triton's interpreter: a check of the script itself)
"""
import argparse
import datetime
import json
import os

import torch
import triton

from hf_lrnn import scan_triton
from hf_lrnn.scan_chunked import bdlru_scan_chunked, hlru_scan_chunked

CASES = [
    # kind, D, B, T, N, normalization, with_state, with_mask
    ("hlru", 1, 2, 65536, 64, "softmax", True, False),
    ("hlru", 2, 2, 65536, 64, "softmax", True, True),
    ("hlru", 4, 2, 65536, 32, "sigmoid_l1", True, False),
    ("hlru", 8, 2, 16384, 16, "tanh_l1", True, True),
    ("hlru", 2, 8, 4096, 1024, "softmax", False, False),
    ("hlru", 3, 4, 1, 100, "relu_l1", True, True),
    ("bdlru", 1, 2, 65536, 64, "softmax", True, False),
    ("bdlru", 4, 2, 65536, 16, "softmax", True, True),
    ("bdlru", 8, 2, 16384, 8, "l1", True, False),
    ("bdlru", 16, 2, 4096, 8, "softmax", True, True),
    ("bdlru", 4, 8, 4096, 512, "softmax", False, False),
]
SMOKE_CASES = [
    ("hlru", 2, 2, 20, 3, "softmax", True, True),
    ("hlru", 3, 1, 1, 5, "relu_l1", True, True),
    ("bdlru", 2, 2, 20, 3, "l1", True, False),
    ("bdlru", 16, 1, 6, 1, "softmax", True, True),
]
# The CPU smoke run forces two time chunks (chunk_size) so that the chunked kernels run too; on the GPU
# the planner chooses.
SMOKE_CHUNK_SIZE = 10


def rel(x, ref):
    return ((x.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def check(kind, D, B, T, N, normalization, with_state, with_mask, dtype, device="cuda", chunk_size=None):
    """Relative errors of h, the final state and the gradients against the float64 chunked scan."""
    torch.manual_seed(0)
    tail = (N,) if kind == "hlru" else (N, D)
    v = torch.randn(B, T, *tail, device=device).to(dtype)
    g = (2 * torch.randn(B, T, *tail, D + 1, device=device)).to(dtype)
    s0 = torch.randn(B, N, D, device=device) if with_state else None
    mask = (torch.rand(B, T, device=device) > 0.2) if with_mask else None
    inputs = [v, g] + ([s0] if with_state else [])
    for x in inputs:
        x.requires_grad_(True)
    fn = scan_triton.hlru_scan_triton if kind == "hlru" else scan_triton.bdlru_scan_triton
    ref_fn = hlru_scan_chunked if kind == "hlru" else bdlru_scan_chunked
    if D > scan_triton.MAX_CHUNKED_SIZE:
        chunk_size = None  # the step kernels do not split time
    h_out = torch.full_like(v, float("nan"))  # poison: every element must be written
    h, final = fn(v, g, initial_state=s0, output_final_state=True, normalization=normalization, mask=mask,
                  chunk_size=chunk_size)
    h_out.copy_(h)
    dh, dfinal = torch.randn_like(h, dtype=torch.float32), torch.randn_like(final)
    grads = torch.autograd.grad((h.float() * dh).sum() + (final * dfinal).sum(), inputs)
    ref_in = [x.detach().double().requires_grad_(True) for x in inputs]
    h_ref, final_ref = ref_fn(ref_in[0], ref_in[1], initial_state=ref_in[2] if with_state else None,
                              output_final_state=True, normalization=normalization, mask=mask, chunk_size=256)
    ref_grads = torch.autograd.grad((h_ref * dh.double()).sum() + (final_ref * dfinal.double()).sum(), ref_in)
    names = ["h", "final", "dv", "dgate_logits", "dinitial_state"]
    errs = [rel(h_out, h_ref), rel(final, final_ref)] + [rel(a, b) for a, b in zip(grads, ref_grads)]
    finite = all(torch.isfinite(x).all().item() for x in (h_out, final, *grads))
    return dict(zip(names, errs), all_finite=finite)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.kernels.check_scan_gpu",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/scan_gpu_errors.json")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (TRITON_INTERPRET=1): checks the script")
    args = ap.parse_args(argv)
    if args.smoke and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("--smoke runs the Triton kernels on the CPU: set TRITON_INTERPRET=1")
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("check_scan_gpu needs a CUDA GPU (or --smoke with TRITON_INTERPRET=1 for a CPU check)")
    cases, dtypes = (SMOKE_CASES, (torch.float32,)) if args.smoke else (CASES, (torch.float32, torch.bfloat16))
    device, chunk_size = ("cpu", SMOKE_CHUNK_SIZE) if args.smoke else ("cuda", None)
    rows = []
    for case in cases:
        for dtype in dtypes:
            kind, D, B, T, N, norm, st, mk = case
            errs = check(*case, dtype, device=device, chunk_size=chunk_size)
            row = dict(kind=kind, size=D, B=B, T=T, N=N, normalization=norm, initial_state=st, mask=mk,
                       dtype=str(dtype).replace("torch.", ""), **errs)
            rows.append(row)
            print({k: (f"{x:.2e}" if isinstance(x, float) else x) for k, x in row.items()}, flush=True)
            if device == "cuda":
                torch.cuda.empty_cache()
    out = dict(gpu=torch.cuda.get_device_name() if device == "cuda" else "cpu (Triton interpreter)",
               torch=torch.__version__, triton=triton.__version__,
               date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               reference="float64 chunked torch scan on the same rounded inputs", cases=rows)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    worst = {str(dt).replace("torch.", ""): max(max(r[k] for k in ("h", "final", "dv", "dgate_logits"))
                                                 for r in rows if r["dtype"] == str(dt).replace("torch.", ""))
             for dt in dtypes}
    print("worst relative error per dtype:", worst)


if __name__ == "__main__":
    main()
