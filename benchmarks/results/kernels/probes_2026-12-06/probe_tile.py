"""(As run on branch `tilescan`, commit dcc3352, whose hf_lrnn has triton_tile_lrnn.py and scan_triton_lrnn._tile_forward /
_tile_backward; not merged: see benchmarks/README.md, "Third H100 session on issue 22".)
The first-order tile scan (triton_tile_lrnn, one pass over time) against the chunked sequential path (the
planner's chunks), side by side in one process, H-LRU m = 1, bf16, width 2048: fwd and bwd alone (do_bench median
ms, 3 repeats) and max |difference| of h, final, dv, dgate_logits, dinit to the chunked result, per (B, T) and
tile config (BLOCK_T, BLOCK_N, warps, prefetch). JSON lines to argv[1].
    python benchmarks/results/kernels/probes_2026-12-06/probe_tile.py OUT.jsonl [--smoke]"""
import json, os, sys, time
import torch
from triton.testing import do_bench
from hf_lrnn.scan_triton_lrnn import _chunked_backward, _chunked_forward, _tile_backward, _tile_forward
from hf_lrnn.triton_plan_lrnn import chunk_plan
from benchmarks.kernels.scan_setup import scan_inputs

out, smoke = sys.argv[1], "--smoke" in sys.argv
dev = "cpu" if smoke else "cuda"
sms = None if smoke else torch.cuda.get_device_properties(0).multi_processor_count
bench = (lambda f: [0.0]) if smoke else (lambda f: [do_bench(f, warmup=5, rep=25, return_mode="median") for _ in range(3)])
shapes = [(2, 40, 70)] if smoke else [(8, 4096, 2048), (4, 8192, 2048), (2, 16384, 2048), (1, 32768, 2048)]
configs = [(16, 32, 1, True), (16, 32, 1, False)] if smoke else [
    (32, 64, 4, True), (32, 64, 4, False), (16, 64, 4, True), (64, 64, 4, True), (32, 32, 4, True), (16, 128, 4, True),
    (32, 128, 8, True), (16, 32, 2, True)]
copy_bw = None
if not smoke:
    src = torch.empty(1 << 28, device=dev)
    dst = torch.empty_like(src)
    copy_bw = 2 * src.numel() * 4 / (min(do_bench(lambda: dst.copy_(src), warmup=5, rep=25, return_mode="median") for _ in range(3)) * 1e-3)
    del src, dst
with open(out, "a") as f:
    f.write(json.dumps(dict(gpu="cpu" if smoke else torch.cuda.get_device_name(), commit=os.environ.get("BENCH_COMMIT"),
                            dirty=os.environ.get("BENCH_DIRTY"), copy_bw_Bps=copy_bw,
                            date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))) + "\n")
for B, T, N in shapes:
    torch.manual_seed(0)
    v, g = scan_inputs("hlru", B, T, N, 1, dev, torch.float32 if smoke else torch.bfloat16, logit_scale=2.0)
    init = torch.randn(B, N, 1, device=dev)
    dh, dfinal = torch.randn_like(v), torch.randn(B, N, 1, device=dev)
    L, C = chunk_plan("hlru", B, T, N, 1, sms) if not smoke else (8, 5)
    h0, f0 = _chunked_forward("hlru", v, g, init, None, "softmax", L)
    ref = (h0, f0) + _chunked_backward("hlru", v, g, init, None, h0, L, dh, dfinal, "softmax")
    rows = [dict(path="chunked", L=L, C=C,
                 fwd_ms=bench(lambda: _chunked_forward("hlru", v, g, init, None, "softmax", L)),
                 bwd_ms=bench(lambda: _chunked_backward("hlru", v, g, init, None, h0, L, dh, dfinal, "softmax")))]
    for bt, bn, w, pf in configs:
        kw = dict(block_t=bt, block_n=bn, warps=w, prefetch=pf)
        h, f = _tile_forward(v, g, init, None, "softmax", **kw)
        got = (h, f) + _tile_backward(v, g, init, None, h0, dh, dfinal, "softmax", **kw)
        diff = [round((a.float() - b.float()).abs().max().item(), 6) for a, b in zip(got, ref)]
        rows.append(dict(path="tile", block_t=bt, block_n=bn, warps=w, prefetch=pf, max_abs_diff=diff,
                         fwd_ms=bench(lambda: _tile_forward(v, g, init, None, "softmax", **kw)),
                         bwd_ms=bench(lambda: _tile_backward(v, g, init, None, h0, dh, dfinal, "softmax", **kw))))
    nbytes = B * T * N * 8
    with open(out, "a") as f:
        for r in rows:
            r.update(B=B, T=T, W=N, m=1)
            if copy_bw:
                r["frac_copy_fwd"] = round(nbytes / (min(r["fwd_ms"]) * 1e-3) / copy_bw, 3)
                r["frac_copy_fwdbwd"] = round(3 * nbytes / ((min(r["fwd_ms"]) + min(r["bwd_ms"])) * 1e-3) / copy_bw, 3)
            f.write(json.dumps(r) + "\n")
            print(json.dumps(r), flush=True)
    del v, g, dh, h0, ref
    if not smoke:
        torch.cuda.empty_cache()
