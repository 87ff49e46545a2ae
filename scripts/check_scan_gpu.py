"""Large-shape correctness of the Triton scans on a CUDA GPU; writes relative errors to JSON.

Compares the Triton backend (fp32 and bf16 inputs) with a float64 reference on the same (rounded)
inputs, forward (h, final state) and backward (v, gate_logits, initial_state; the loss reads h and the
final state). The float64 reference is the chunked torch scan (scan_torch.*_chunked, itself tested
against the step-by-step loop), which keeps T = 65536 affordable. Small B*N forces the chunked
(summary, combine, rescan) kernels; B=8, W=2048 the plain one.

Usage: python scripts/check_scan_gpu.py --out benchmarks/results/scan_gpu_errors.json
"""
import argparse
import datetime
import json
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from hf_lrnn import scan_triton  # noqa: E402
from hf_lrnn.scan_torch import bdlru_scan_chunked, hlru_scan_chunked  # noqa: E402

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


def rel(x, ref):
    return ((x.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def check(kind, D, B, T, N, normalization, with_state, with_mask, dtype):
    torch.manual_seed(0)
    tail = (N,) if kind == "hlru" else (N, D)
    v = torch.randn(B, T, *tail, device="cuda").to(dtype)
    g = (2 * torch.randn(B, T, *tail, D + 1, device="cuda")).to(dtype)
    s0 = torch.randn(B, N, D, device="cuda") if with_state else None
    mask = (torch.rand(B, T, device="cuda") > 0.2) if with_mask else None
    inputs = [v, g] + ([s0] if with_state else [])
    for x in inputs:
        x.requires_grad_(True)
    fn = scan_triton.hlru_scan_triton if kind == "hlru" else scan_triton.bdlru_scan_triton
    ref_fn = hlru_scan_chunked if kind == "hlru" else bdlru_scan_chunked
    h_out = torch.full_like(v, float("nan"))  # poison: every element must be written
    h, final = fn(v, g, s0, True, normalization, mask)
    h_out.copy_(h)
    dh, dfinal = torch.randn_like(h, dtype=torch.float32), torch.randn_like(final)
    grads = torch.autograd.grad((h.float() * dh).sum() + (final * dfinal).sum(), inputs)
    ref_in = [x.detach().double().requires_grad_(True) for x in inputs]
    h_ref, final_ref = ref_fn(ref_in[0], ref_in[1], ref_in[2] if with_state else None, normalization, mask,
                              chunk_size=256)
    ref_grads = torch.autograd.grad((h_ref * dh.double()).sum() + (final_ref * dfinal.double()).sum(), ref_in)
    names = ["h", "final", "dv", "dgate_logits", "dinitial_state"]
    errs = [rel(h_out, h_ref), rel(final, final_ref)] + [rel(a, b) for a, b in zip(grads, ref_grads)]
    finite = all(torch.isfinite(x).all().item() for x in (h_out, final, *grads))
    return dict(zip(names, errs), all_finite=finite)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/scan_gpu_errors.json")
    args = ap.parse_args()
    rows = []
    for case in CASES:
        for dtype in (torch.float32, torch.bfloat16):
            kind, D, B, T, N, norm, st, mk = case
            errs = check(*case, dtype)
            row = dict(kind=kind, size=D, B=B, T=T, N=N, normalization=norm, initial_state=st, mask=mk,
                       dtype=str(dtype).replace("torch.", ""), **errs)
            rows.append(row)
            print({k: (f"{x:.2e}" if isinstance(x, float) else x) for k, x in row.items()}, flush=True)
            torch.cuda.empty_cache()
    out = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
               date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               reference="float64 chunked torch scan on the same rounded inputs", cases=rows)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    worst = {dt: max(max(r[k] for k in ("h", "final", "dv", "dgate_logits") ) for r in rows if r["dtype"] == dt)
             for dt in ("float32", "bfloat16")}
    print("worst relative error per dtype:", worst)


if __name__ == "__main__":
    main()
