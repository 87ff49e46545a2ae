"""Self-check of the real-kernel baselines (mamba2, deltanet) on the GPU: build each, then compare its kernels'
outputs and gradients at the model's head shapes with a PyTorch reference (transformers' Mamba-2 chunk scan, fla's
naive delta rule), relative errors in float32 and bfloat16. The JSON is rewritten after each model.

    python -m benchmarks.synthetic.check_baselines --out check.json          # CUDA: d=128, T=16, 256
    python -m benchmarks.synthetic.check_baselines --smoke --out smoke.json  # CPU: builds only"""
from __future__ import annotations

import argparse
import json
import sys
import traceback

import torch
import torch.nn.functional as F

from benchmarks.outputs import add_overwrite_flag, refuse_existing
from benchmarks.synthetic.baselines import BaselineUnavailable, build_model, count_parameters
from benchmarks.synthetic.run import environment

TOLERANCE = {"float32": 0.02, "bfloat16": 0.05}  # relative error; fla's Hopper miscompile (its issue 640 on GitHub) gives about 0.5


def relative_error(kernel: torch.Tensor, reference: torch.Tensor) -> float:
    """||kernel - reference|| / ||reference||, in float32."""
    kernel, reference = kernel.detach().float(), reference.detach().float()
    return float((kernel - reference).norm() / reference.norm().clamp_min(1e-30))


def compare(kernel_fn, reference_fn, inputs: dict, dtype: torch.dtype, parameters=(), backward: bool = True) -> dict:
    """Run ``kernel_fn`` on ``inputs`` cast to ``dtype`` (those named in ``parameters`` stay float32, as the
    models' parameters do under autocast) and ``reference_fn`` on the same values in float32; relative errors
    of the output and (``backward``) of every input's gradient under one random cotangent."""
    leaves_k = {n: t.detach().to(torch.float32 if n in parameters else dtype).requires_grad_(backward)
                for n, t in inputs.items()}
    leaves_r = {n: t.detach().float().requires_grad_(backward) for n, t in leaves_k.items()}
    with torch.set_grad_enabled(backward):
        out_k, out_r = kernel_fn(**leaves_k), reference_fn(**leaves_r)
    errors = {"output": relative_error(out_k, out_r)}
    if backward:
        cotangent = torch.randn_like(out_r)
        grads_k = torch.autograd.grad(out_k, list(leaves_k.values()), cotangent.to(out_k.dtype))
        grads_r = torch.autograd.grad(out_r, list(leaves_r.values()), cotangent)
        errors.update({f"d_{n}": relative_error(a, b) for n, a, b in zip(leaves_k, grads_k, grads_r)})
    name = str(dtype).replace("torch.", "")
    return {"dtype": name, "errors": {k: round(v, 6) for k, v in errors.items()},
            "ok": all(v < TOLERANCE[name] for v in errors.values())}


def mamba2_kernel_check(desc: dict, device, length: int, batch: int = 2) -> list:
    """mamba-ssm's ``mamba_chunk_scan_combined``, as transformers calls it, against transformers' own
    PyTorch chunk scan (the function its wrapper falls back to)."""
    from transformers.models.mamba2 import modeling_mamba2 as mm

    kernel, reference = mm.mamba2_chunk_scan, mm.mamba2_chunk_scan.__wrapped__
    h, p, n, chunk = desc["heads"], desc["head_dim"], desc["state_size"], desc["chunk_size"]
    g = torch.Generator(device="cpu").manual_seed(0)
    inputs = {"hidden_states": torch.randn(batch, length, h, p, generator=g),
              "dt": torch.randn(batch, length, h, generator=g) - 2.0,
              "A": -torch.rand(h, generator=g) - 0.5,
              "B": torch.randn(batch, length, 1, n, generator=g), "C": torch.randn(batch, length, 1, n, generator=g),
              "D": torch.ones(h), "dt_bias": torch.rand(h, generator=g) - 0.5}
    inputs = {k: v.to(device) for k, v in inputs.items()}

    def run(fn):  # positional as in transformers' mixer: mamba-ssm names the first argument x
        return lambda hidden_states, dt, A, B, C, **t: fn(hidden_states, dt, A, B, C, chunk_size=chunk, dt_softplus=True,
                                                          dt_limit=(0.0, float("inf")), **t)

    return [dict(op="mamba_chunk_scan_combined", length=length,
                 **compare(run(kernel), run(reference), inputs, dtype, parameters=("A", "D", "dt_bias")))
            for dtype in (torch.float32, torch.bfloat16)]


def deltanet_kernel_check(desc: dict, device, length: int, batch: int = 2) -> list:
    """fla's chunk (length > 64, training) and fused-recurrent (length <= 64) delta rules, with the layer's
    in-kernel q/k L2 norm, against fla's naive recurrence."""
    from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule
    from fla.ops.delta_rule.naive import delta_rule_recurrence

    h, dk = desc["heads"], desc["hidden_size"] // desc["heads"]
    g = torch.Generator(device="cpu").manual_seed(0)
    inputs = {"q": torch.randn(batch, length, h, dk, generator=g), "k": torch.randn(batch, length, h, dk, generator=g),
              "v": torch.randn(batch, length, h, dk, generator=g), "beta": torch.rand(batch, length, h, generator=g)}
    inputs = {k: v.to(device) for k, v in inputs.items()}

    def reference(q, k, v, beta):
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        o, _ = delta_rule_recurrence(*(t.transpose(1, 2) for t in (q, k, v, beta)), output_final_state=False)
        return o.transpose(1, 2)

    op = chunk_delta_rule if length > 64 else fused_recurrent_delta_rule
    kernel = lambda **t: op(**t, use_qk_l2norm_in_kernel=True)[0]  # noqa: E731
    dtypes = (torch.bfloat16,) if op is chunk_delta_rule else (torch.float32, torch.bfloat16)  # chunk refuses float32
    return [dict(op=op.__name__, length=length, **compare(kernel, reference, inputs, dtype)) for dtype in dtypes]


KERNEL_CHECKS = {"mamba2": mamba2_kernel_check, "deltanet": deltanet_kernel_check}


def error_record(err: BaseException) -> dict:
    return {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}


def check_kind(kind: str, args, device, log=print) -> dict:
    """Build and kernel-check one kind; every failure is caught and recorded."""
    record = {"kind": kind}
    try:
        model, desc = build_model(kind, args.vocab_size, args.hidden_size, 2, device=device)
    except BaselineUnavailable as err:
        log(f"[{kind}] unavailable: {err}")
        return {**record, "status": "unavailable", "reason": str(err)}
    except Exception as err:
        log(f"[{kind}] build failed: {type(err).__name__}: {err}")
        return {**record, "status": "error", "stage": "build", **error_record(err)}
    record.update(desc=desc, parameters=count_parameters(model))
    log(f"[{kind}] built: {json.dumps(desc)}")
    failed = False
    if device.type == "cuda":
        record["kernel_check"] = []
        for length in args.lengths:
            try:
                checks = KERNEL_CHECKS[kind](desc, device, length)
                record["kernel_check"] += checks
                for c in checks:
                    log(f"[{kind}] {c['op']} T={length} {c['dtype']}: {'ok' if c['ok'] else 'MISMATCH'} {c['errors']}")
            except Exception as err:
                failed = True
                record["kernel_check"].append({"length": length, **error_record(err)})
                log(f"[{kind}] kernel check T={length} failed: {type(err).__name__}: {err}\n{traceback.format_exc()}")
        failed = failed or not all(c.get("ok", False) for c in record["kernel_check"])
    else:
        record["kernel_check"] = "not run: the reference comparison is of the CUDA kernels"
    record["status"] = "error" if failed else "ok"
    return record


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.synthetic.check_baselines", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--kinds", nargs="+", default=list(KERNEL_CHECKS), choices=list(KERNEL_CHECKS))
    p.add_argument("--lengths", type=int, nargs="+", default=[16, 256])
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--vocab-size", type=int, default=64)
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="CPU, d=32: builds only (kinds that need CUDA report unavailable)")
    add_overwrite_flag(p)
    args = p.parse_args(argv)
    refuse_existing(p, [args.out], args.overwrite)
    if args.smoke:
        args.device, args.hidden_size = "cpu", 32
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    report = {"environment": environment(), "settings": {k: v for k, v in vars(args).items() if k != "out"},
              "kinds": []}
    print(json.dumps(report["environment"]))
    for kind in args.kinds:
        report["kinds"].append(check_kind(kind, args, device))
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print("summary: " + ", ".join(f"{r['kind']}={r['status']}" for r in report["kinds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
