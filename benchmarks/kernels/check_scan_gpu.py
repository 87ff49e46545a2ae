"""Large-shape errors of the Triton scans on a CUDA GPU (fp32 and bf16 inputs) against the float64 torch backend on
the same rounded inputs, forward (h, final state) and backward (v, gate logits, initial state), through
``hf_lrnn.ops``; relative errors to JSON.

    python -m benchmarks.kernels.check_scan_gpu --out benchmarks/results/scan_gpu_errors.json
    TRITON_INTERPRET=1 python -m benchmarks.kernels.check_scan_gpu --smoke --out /tmp/errors.json   # CPU"""
import argparse
import datetime
import json
import os

import torch
import triton


from benchmarks.outputs import add_overwrite_flag, refuse_existing
from benchmarks.synthetic.run import environment

from .scan_setup import SCANS, require_device, scan_inputs

CASES = [
    # kind, D, B, T, N, normalization, with_state, with_mask
    ("hlru", 1, 2, 65536, 64, "softmax", True, False),
    ("hlru", 1, 4, 8192, 256, "sigmoid_l1", True, True),
    ("hlru", 2, 2, 65536, 64, "softmax", True, True),
    ("hlru", 4, 2, 65536, 32, "sigmoid_l1", True, False),
    ("hlru", 8, 2, 16384, 16, "tanh_l1", True, True),
    ("hlru", 12, 2, 8192, 32, "sigmoid_l1", True, False),  # m > 8: the summaries in groups of copies
    ("hlru", 16, 1, 32768, 128, "softmax", True, True),
    ("hlru", 2, 8, 4096, 1024, "softmax", False, False),
    ("hlru", 3, 4, 1, 100, "relu_l1", True, True),
    ("bdlru", 1, 2, 65536, 64, "softmax", True, False),
    ("bdlru", 4, 2, 65536, 16, "softmax", True, True),
    ("bdlru", 8, 2, 16384, 8, "l1", True, False),
    ("bdlru", 16, 2, 4096, 8, "softmax", True, True),
    ("bdlru", 12, 1, 32768, 16, "sigmoid_l1", True, True),  # k > 8 on one long sequence (k = 12: padded tiles)
    ("bdlru", 16, 1, 32768, 128, "softmax", True, False),
    ("bdlru", 4, 8, 4096, 512, "softmax", False, False),
]
SMOKE_CASES = [
    ("hlru", 1, 2, 20, 3, "sigmoid_l1", True, True),
    ("hlru", 2, 2, 20, 3, "softmax", True, True),
    ("hlru", 3, 1, 1, 5, "relu_l1", True, True),
    ("bdlru", 2, 2, 20, 3, "l1", True, False),
    ("bdlru", 16, 1, 6, 1, "softmax", True, True),
]


def rel(x, ref):
    return ((x.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def check(kind, D, B, T, N, normalization, with_state, with_mask, dtype, device="cuda"):
    """Relative errors of h, the final state and the gradients against the float64 torch backend."""
    torch.manual_seed(0)
    v, g = scan_inputs(kind, B, T, N, D, device, dtype, logit_scale=2.0)
    s0 = torch.randn(B, N, D, device=device) if with_state else None
    mask = (torch.rand(B, T, device=device) > 0.2) if with_mask else None
    inputs = [v, g] + ([s0] if with_state else [])
    for x in inputs:
        x.requires_grad_(True)
    scan = SCANS[kind]
    h_out = torch.full_like(v, float("nan"))  # poison: every element must be written
    h, final = scan(v, g, initial_state=s0, output_final_state=True, normalization=normalization, mask=mask,
                    backend="triton")
    h_out.copy_(h)
    dh, dfinal = torch.randn_like(h, dtype=torch.float32), torch.randn_like(final)
    grads = torch.autograd.grad((h.float() * dh).sum() + (final * dfinal).sum(), inputs)
    ref_in = [x.detach().double().requires_grad_(True) for x in inputs]
    h_ref, final_ref = scan(ref_in[0], ref_in[1], initial_state=ref_in[2] if with_state else None,
                            output_final_state=True, normalization=normalization, mask=mask, backend="torch")
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
    ap.add_argument("--only", nargs="+", metavar="KIND[:SIZE]", default=None,
                    help="run only these cases, e.g. --only bdlru or --only hlru:2 bdlru:16")
    add_overwrite_flag(ap)
    args = ap.parse_args(argv)
    refuse_existing(ap, [args.out], args.overwrite)
    device = require_device("check_scan_gpu", args.smoke)
    cases, dtypes = (SMOKE_CASES, (torch.float32,)) if args.smoke else (CASES, (torch.float32, torch.bfloat16))
    if args.only:
        cases = [c for c in cases if c[0] in args.only or f"{c[0]}:{c[1]}" in args.only]
        if not cases:
            ap.error(f"--only {' '.join(args.only)} matches no case")
    rows = []
    for case in cases:
        for dtype in dtypes:
            kind, D, B, T, N, norm, st, mk = case
            errs = check(*case, dtype, device=device)
            row = dict(kind=kind, size=D, B=B, T=T, N=N, normalization=norm, initial_state=st, mask=mk,
                       dtype=str(dtype).replace("torch.", ""), **errs)
            rows.append(row)
            print({k: (f"{x:.2e}" if isinstance(x, float) else x) for k, x in row.items()}, flush=True)
            if device == "cuda":
                torch.cuda.empty_cache()
    out = dict(gpu=torch.cuda.get_device_name() if device == "cuda" else "cpu (Triton interpreter)",
               torch=torch.__version__, triton=triton.__version__, env=environment(),
               date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               reference="float64 torch backend on the same rounded inputs", cases=rows)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    worst = {str(dt).replace("torch.", ""): max(max(r[k] for k in ("h", "final", "dv", "dgate_logits"))
                                                 for r in rows if r["dtype"] == str(dt).replace("torch.", ""))
             for dt in dtypes}
    print("worst relative error per dtype:", worst)


if __name__ == "__main__":
    main()
