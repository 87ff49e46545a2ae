"""The tiled combine kernel (branch combine_tiles) against main's one-channel-a-thread kernel (copied below as it
is on main at 0faa7dd) in one process: both against a float64 loop (random summaries [e | P], P scaled to norm
below 1, forward and reversed, from x0), then do_bench median µs of each at the chunk counts the planner gives
H-LRU of order D (N = 2048 / D channels) at B = 1, T = 32k and B = 8, T = 4,096; the tiled kernel at COMBINE_TILE
of 64 entries at 4 warps, 256 at 2 and 4, 1024 at 4. JSON lines to argv[1].
    python benchmarks/results/kernels/probes_2026-12-06/probe_combine.py OUT.jsonl [--smoke]"""
import json, os, sys, time
import torch
import triton
import triton.language as tl
from hf_lrnn.scan_triton_lrnn import _combine
from hf_lrnn.triton_helpers_lrnn import _chunk_combine_kernel, _load_values, _store_state, _zero_state
from hf_lrnn.triton_plan_lrnn import NUM_STAGES, chunk_plan


@triton.jit
def _combine_per_channel_kernel(sum_ptr, x0_ptr, out_ptr, N, C, D: tl.constexpr, HAS_X0: tl.constexpr,
                                REVERSE: tl.constexpr, BLOCK_N: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    if HAS_X0:
        x = _load_values(x0_ptr + (b * N + n) * D, n_ok, D)
    else:
        x = _zero_state(tl.zeros((BLOCK_N,), dtype=tl.float32), D)
    for s in range(0, C):
        c = (C - 1 - s) if REVERSE else s
        _store_state(out_ptr + ((b * C + c) * N + n) * D, x, n_ok, D)
        e_ptr = sum_ptr + ((b * C + c) * N + n) * (D * (D + 1))
        new = ()
        for i in tl.static_range(D):
            acc = tl.load(e_ptr + i * (D + 1), mask=n_ok, other=0.0)
            for j in tl.static_range(D):
                acc += tl.load(e_ptr + i * (D + 1) + 1 + j, mask=n_ok, other=0.0) * x[j]
            new = new + (acc,)
        x = new


def per_channel(s, x0, reverse):
    B, C, N, D = s.shape[:4]
    out = torch.empty(B, C, N, D, dtype=torch.float32, device=s.device)
    _combine_per_channel_kernel[(triton.cdiv(N, 64), B)](s, x0, out, N, C, D=D, HAS_X0=True, REVERSE=reverse,
                                                         BLOCK_N=64, num_warps=4)
    return out


def tiled(s, x0, reverse, tile, warps):
    B, C, N, D = s.shape[:4]
    DP = triton.next_power_of_2(D)
    block = max(1, min(64, tile // (DP * DP)))
    out = torch.empty(B, C, N, D, dtype=torch.float32, device=s.device)
    _chunk_combine_kernel[(triton.cdiv(N, block), B)](s, x0, out, N, C, D=D, DP=DP, HAS_X0=True, REVERSE=reverse,
                                                      BLOCK_N=block, NUM_STAGES=NUM_STAGES, num_warps=warps)
    return out


def inputs(B, C, N, D, dev):
    g = torch.Generator().manual_seed(D * 1000 + C)
    s = torch.randn(B, C, N, D, D + 1, generator=g, dtype=torch.float64)
    s[..., 1:] *= 0.9 / (2 * D ** 0.5)
    return s, torch.randn(B, N, D, generator=g, dtype=torch.float64)


def reference(s, x0, reverse):
    x, ref = x0.clone(), torch.empty(s.shape[:4], dtype=torch.float64)
    for c in (reversed(range(s.shape[1])) if reverse else range(s.shape[1])):
        ref[:, c] = x
        x = s[:, c, ..., 0] + (s[:, c, ..., 1:] @ x[..., None])[..., 0]
    return ref


smoke = "--smoke" in sys.argv
dev = "cpu" if smoke else "cuda"
sizes = (1, 3, 16) if smoke else (1, 2, 4, 8, 12, 16)
configs = [(256, 4)] if smoke else [(64, 4), (256, 2), (256, 4), (1024, 4)]
with open(sys.argv[1], "a") as f:
    def emit(row):
        print(json.dumps(row), flush=True)
        f.write(json.dumps(row) + "\n")
    emit(dict(gpu="cpu" if smoke else torch.cuda.get_device_name(), commit=os.environ.get("BENCH_COMMIT"),
              dirty=os.environ.get("BENCH_DIRTY"), date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
    for D in sizes:  # correctness at 256 chunks
        s, x0 = inputs(2, 5 if smoke else 256, 3 if smoke else 130, D, dev)
        for reverse in (False, True):
            ref = reference(s, x0, reverse)
            err = lambda out: ((out.cpu().double() - ref).norm() / ref.norm()).item()  # noqa: E731
            sf, xf = s.float().to(dev), x0.float().to(dev)
            emit(dict(check=True, D=D, reverse=reverse, per_channel=err(per_channel(sf, xf, reverse)),
                      library=err(_combine(sf, xf, reverse)),
                      tiled={f"{t}x{w}": err(tiled(sf, xf, reverse, t, w)) for t, w in configs}))
    if smoke:
        sys.exit()
    from triton.testing import do_bench
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for B, T in ((1, 32768), (8, 4096)):
        for D in sizes:
            N = 2048 // D
            L, C = chunk_plan("hlru", B, T, N, D, sms)
            s, x0 = (x.float().to(dev) for x in inputs(B, C, N, D, "cpu"))
            us = lambda fn: round(1e3 * do_bench(fn, warmup=5, rep=25, return_mode="median"), 1)  # noqa: E731
            emit(dict(B=B, T=T, D=D, N=N, C=C, per_channel_us=us(lambda: per_channel(s, x0, False)),
                      library_us=us(lambda: _combine(s, x0, False)),
                      tiled_us={f"{t}x{w}": us(lambda: tiled(s, x0, False, t, w)) for t, w in configs}))
