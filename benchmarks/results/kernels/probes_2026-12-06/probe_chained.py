"""(As run on branch `chained`, commit 1b3b14f, whose scan_triton_lrnn has _chained_forward and _chained_backward; not
merged: see benchmarks/README.md, "Third H100 session on issue 22".)
Chained H-LRU launches (one kernel a direction) against the three-pass chunked path, side by side in one process:
fwd and bwd alone (do_bench median ms, 3 repeats), max |difference| of h, dv, dgate_logits to the three-pass
result, per (shape, m, chunk length L, persistent programs a SM P). JSON lines to argv[1].
    python benchmarks/results/kernels/probes_2026-12-06/probe_chained.py OUT.jsonl [--smoke]"""
import json, os, sys, time
import torch
from triton.testing import do_bench
from hf_lrnn.scan_triton_lrnn import _chained_backward, _chained_forward, _chunked_backward, _chunked_forward
from hf_lrnn.triton_plan_lrnn import chunk_plan
from benchmarks.kernels.scan_setup import scan_inputs

out, smoke = sys.argv[1], "--smoke" in sys.argv
dev = "cpu" if smoke else "cuda"
sms = None if smoke else torch.cuda.get_device_properties(0).multi_processor_count
gpu = "cpu" if smoke else torch.cuda.get_device_name()
bench = (lambda f: [0.0]) if smoke else (lambda f: [do_bench(f, warmup=5, rep=30, return_mode="median") for _ in range(3)])
if smoke:
    shapes = [(2, 40, 6, (1, 2), (8, 16), (1,))]
else:  # (B, T, W, orders, chunk lengths, programs a SM)
    shapes = [(8, 4096, 2048, (1, 2, 4), (64, 128, 256), (2, 4, 8)),
              (1, 32768, 2048, (1, 2, 4, 8), (128, 256, 512, 1024), (4, 8))]
if not smoke:
    src = torch.empty(1 << 28, device=dev)
    dst = torch.empty_like(src)
    copy_ms = min(do_bench(lambda: dst.copy_(src), warmup=5, rep=30, return_mode="median") for _ in range(3))
    copy_bw = 2 * src.numel() * 4 / (copy_ms * 1e-3)
    del src, dst
else:
    copy_bw = None
with open(out, "a") as f:
    f.write(json.dumps(dict(gpu=gpu, commit=os.environ.get("BENCH_COMMIT"), dirty=os.environ.get("BENCH_DIRTY"),
                            copy_bw_Bps=copy_bw, date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))) + "\n")
for B, T, W, orders, lengths, per_sm in shapes:
    for m in orders:
        N = W // m
        torch.manual_seed(0)
        v, g = scan_inputs("hlru", B, T, N, m, dev, torch.bfloat16 if not smoke else torch.float32, logit_scale=2.0)
        dh = torch.randn_like(v)
        L0, C0 = chunk_plan("hlru", B, T, N, m, sms)
        if smoke:
            L0, C0 = 8, 5
        h0, _ = _chunked_forward("hlru", v, g, None, None, "softmax", L0)
        dv0, dg0, _ = _chunked_backward("hlru", v, g, None, None, h0, L0, dh, None, "softmax")
        rows = [dict(path="three-pass", L=L0, C=C0,
                     fwd_ms=bench(lambda: _chunked_forward("hlru", v, g, None, None, "softmax", L0)),
                     bwd_ms=bench(lambda: _chunked_backward("hlru", v, g, None, None, h0, L0, dh, None, "softmax")))]
        for L in lengths:
            for P in per_sm:
                progs = P * sms if sms else P
                h, _ = _chained_forward(v, g, None, None, "softmax", L, programs=progs)
                dv, dg, _ = _chained_backward(v, g, None, None, h0, L, dh, None, "softmax", programs=progs)
                diff = max((a.float() - b.float()).abs().max().item() for a, b in ((h, h0), (dv, dv0), (dg, dg0)))
                rows.append(dict(path="chained", L=L, P=P, C=-(-T // L), max_abs_diff=diff,
                                 fwd_ms=bench(lambda: _chained_forward(v, g, None, None, "softmax", L, programs=progs)),
                                 bwd_ms=bench(lambda: _chained_backward(v, g, None, None, h0, L, dh, None, "softmax",
                                                                        programs=progs))))
        nbytes = B * T * N * 2 * (m + 3)
        with open(out, "a") as f:
            for r in rows:
                r.update(B=B, T=T, W=W, m=m)
                if copy_bw:
                    r["frac_copy_fwd"] = round(nbytes / (min(r["fwd_ms"]) * 1e-3) / copy_bw, 3)
                f.write(json.dumps(r) + "\n")
                print(json.dumps(r), flush=True)
        del v, g, dh, h0, dv0, dg0
        if not smoke:
            torch.cuda.empty_cache()
