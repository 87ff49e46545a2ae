"""Host (Python) cost of one Triton scan call: the kernels' drivers (``_scan_forward``, ``_scan_backward``) are
replaced by stand-ins that return empty tensors (in ``launches_fwd_bwd`` only the Triton launches are), so only the
code around them is timed, on the CPU. Per call, in
microseconds (median of --repeats rounds of --calls calls, after 50 warm-up calls), H-LRU m = 2, B = 8, T = 64,
N = 32:

- ``operator_fwd_bwd``: forward and backward through the custom operator (what torch.compile calls);
- ``eager_fwd_bwd``: forward and backward through ``_EagerScan`` (eager autograd);
- ``public_fwd_bwd``: the same through ``hf_lrnn.ops.hlru_scan(backend="triton")`` (its checks included);
- ``public_fwd_no_grad``: the forward of ``ops.hlru_scan`` without grad;
- ``launches_fwd_bwd``: ``public_fwd_bwd`` with the real drivers (plans, launch constants, allocations) and only the
  Triton launches replaced by no-ops, at T = 1,024, N = 4, planned for a 132-SM GPU (8 chunks): what the host
  spends beside the six launches of a chunked forward+backward.

    python -m benchmarks.kernels.scan_host_overhead [--out host_overhead.json]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from unittest import mock

import torch

from benchmarks.outputs import add_overwrite_flag, refuse_existing
from benchmarks.synthetic.run import environment
from hf_lrnn import ops
from hf_lrnn import scan_triton_lrnn as scan_triton
from hf_lrnn import triton_plan_lrnn as triton_plan

B, T, N, M = 8, 64, 32, 2
CHUNKED_T, CHUNKED_N = 1024, 4  # launches_fwd_bwd: 8 chunks of 128 steps on a 132-SM GPU


def stand_in_forward(kind, v, g, init, mask, normalization, chunk_size, resets=None):
    return torch.empty_like(v), v.new_empty(v.shape[0], v.shape[2], g.shape[-1] - 1)


def stand_in_backward(kind, v, g, init, mask, h, dh, dfinal, normalization, chunk_size, resets=None):
    return torch.empty_like(v), torch.empty_like(g), v.new_empty(v.shape[0], v.shape[2], g.shape[-1] - 1)


class StandInKernel:
    """A Triton kernel's stand-in: ``kernel[grid](*args, **kwargs)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


KERNELS = ("_hlru_fwd_kernel", "_hlru_bwd_kernel", "_chunk_combine_kernel")


def per_call_us(fn, calls: int, repeats: int) -> float:
    for _ in range(50):
        fn()
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(rounds)


def measure(calls: int, repeats: int) -> dict:
    v = torch.randn(B, T, N, requires_grad=True)
    g = torch.randn(B, T, N, M + 1, requires_grad=True)
    dy = torch.randn(B, T, N)
    cases = {
        "operator_fwd_bwd": lambda: torch.autograd.grad(
            scan_triton.hlru_scan_op(v, g, None, None, "softmax", None)[0], (v, g), dy),
        "eager_fwd_bwd": lambda: torch.autograd.grad(
            scan_triton._EagerScan.apply("hlru", v, g, None, None, "softmax", None, None)[0], (v, g), dy),
        "public_fwd_bwd": lambda: torch.autograd.grad(ops.hlru_scan(v, g, backend="triton")[0], (v, g), dy),
    }
    with mock.patch.object(scan_triton, "_scan_forward", stand_in_forward), \
            mock.patch.object(scan_triton, "_scan_backward", stand_in_backward), \
            mock.patch.dict("os.environ", {"TRITON_INTERPRET": "1"}):  # the CPU tensors pass the device check
        out = {name: per_call_us(fn, calls, repeats) for name, fn in cases.items()}
        with torch.no_grad():
            out["public_fwd_no_grad"] = per_call_us(lambda: ops.hlru_scan(v, g, backend="triton"), calls, repeats)
    with contextlib.ExitStack() as stack:  # CPU tensors: one chunk unless the plan sees a GPU's SMs (132, an H100's)
        for name in KERNELS:
            stack.enter_context(mock.patch.object(scan_triton, name, StandInKernel()))
        stack.enter_context(mock.patch.object(triton_plan, "_device_sms", lambda v: 132))
        stack.enter_context(mock.patch.dict("os.environ", {"TRITON_INTERPRET": "1"}))
        vc = torch.randn(B, CHUNKED_T, CHUNKED_N, requires_grad=True)
        gc = torch.randn(B, CHUNKED_T, CHUNKED_N, M + 1, requires_grad=True)
        dyc = torch.randn(B, CHUNKED_T, CHUNKED_N)
        out["launches_fwd_bwd"] = per_call_us(
            lambda: torch.autograd.grad(ops.hlru_scan(vc, gc, backend="triton")[0], (vc, gc), dyc), calls, repeats)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kernels.scan_host_overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="also write the figures (with the commit) to this JSON file")
    add_overwrite_flag(p)
    a = p.parse_args(argv)
    refuse_existing(p, [a.out] if a.out else [], a.overwrite)
    if a.calls < 1 or a.repeats < 1:
        p.error(f"need --calls >= 1 and --repeats >= 1, got {a.calls} and {a.repeats}")
    figures = measure(a.calls, a.repeats)
    for name, us in figures.items():
        print(f"{name:20s} {us:8.1f} us per call")
    if a.out:
        env = environment()  # before the file exists: it would count as a change to the tree
        with open(a.out, "w") as f:
            json.dump(dict(env=env, calls=a.calls, repeats=a.repeats, shape=dict(B=B, T=T, N=N, m=M),
                           us_per_call=figures), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
