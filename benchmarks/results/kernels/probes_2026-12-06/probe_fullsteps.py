"""H-LRU sequential kernels, base (hf_lrnn) vs the full-block split (hf_lrnn_exp): ms by (direction, m, chunks, U, BLOCK_N).

How it ran (H100, 2026-12-06, records probe_fullsteps_h100_a5bd10f_08a44a5.*): from main at a5bd10f, with
hf_lrnn_exp a copy of branch fullsteps' hf_lrnn at 08a44a5 beside this script, and this script's folder on
PYTHONPATH (the run inserted it into sys.path itself): python probe_fullsteps.py OUT.jsonl. PROBE_SMOKE=1
TRITON_INTERPRET=1: tiny shapes on the CPU. The printed "copy ... GB/s" is in TB/s (bytes per ms / 1e9); the
shares are right.
"""
import itertools, json, multiprocessing as mp, os, sys, time
import torch
SMOKE = os.environ.get("PROBE_SMOKE") == "1"
DEV = "cpu" if SMOKE else "cuda"
W, B, T = (16, 1, 40) if SMOKE else (2048, 8, 4096)
GRID = {False: dict(U=(32, 16, 8), BLOCK=(128,), C=(1, 16)), True: dict(U=(8,), BLOCK=(128,), C=(1, 16))}
MS_BWD = (1, 2)
MS = (1, 2, 4)

def mods():
    import hf_lrnn.scan_triton_lrnn as base, hf_lrnn.triton_plan_lrnn as pbase
    import hf_lrnn_exp.scan_triton_lrnn as exp, hf_lrnn_exp.triton_plan_lrnn as pexp
    return {"base": (base, pbase), "full": (exp, pexp)}

def run(variant, bwd, m, U, block, L, v, g, h=None, dh=None):
    scan, plan = mods()[variant]
    (plan.HLRU_BWD_CONFIG if bwd else plan.HLRU_FWD_CONFIG)[m] = (U, block, block // 32)
    if bwd:
        return scan._sequential_backward("hlru", v, g, None, None, h, L, dh, None, "softmax")
    return scan._sequential_forward("hlru", v, g, None, None, "softmax", L)

def skip(m, U):
    return m == 4 and U == 32

def job(args):
    variant, bwd, m, U, block = args
    if skip(m, U):
        return args, 0.0
    t = time.time()
    v = torch.randn(1, 512, W // m, device=DEV, dtype=torch.bfloat16)
    g = torch.randn(1, 512, W // m, m + 1, device=DEV, dtype=torch.bfloat16)
    for L in (512, 256):
        run(variant, bwd, m, U, block, L, v, g, torch.randn_like(v), torch.randn_like(v))
    torch.cuda.synchronize()
    return args, time.time() - t

if __name__ == "__main__":
    from triton.testing import do_bench
    jobs = [(var, bwd, m, U, bl) for bwd in (False, True) for U in GRID[bwd]["U"] for var in ("base", "full") for m in (MS_BWD if bwd else MS) for bl in GRID[bwd]["BLOCK"]]
    t0 = time.time()
    if SMOKE:
        GRID = {False: dict(U=(4,), BLOCK=(64,), C=(1, 2)), True: dict(U=(4,), BLOCK=(64,), C=(1, 2))}
        jobs = []
        do_bench = lambda fn, **k: (fn(), 0.1)[1]
    with mp.get_context("spawn").Pool(16) as pool:
        for i, (a, dt) in enumerate(pool.imap_unordered(job, jobs)):
            print(f"compiled {i+1}/{len(jobs)} {a} {dt:.0f} s at {time.time()-t0:.0f} s", flush=True)
    out = open(sys.argv[1], "w")
    print(json.dumps(dict(gpu=torch.cuda.get_device_name() if not SMOKE else "cpu", commit=os.environ.get("BENCH_COMMIT"))), file=out, flush=True)
    for m in MS:
        torch.manual_seed(0)
        v = torch.randn(B, T, W // m, device=DEV).to(torch.bfloat16)
        g = (2 * torch.randn(B, T, W // m, m + 1, device=DEV)).to(torch.bfloat16)
        dh = torch.randn_like(v)
        href = run("base", False, m, 8, 128, T, v, g)[0]
        dref = run("base", True, m, 8, 128, T, v, g, href, dh)[1].float() if m in MS_BWD else None
        fwd_bytes = 2 * (2 * v.numel() + g.numel())
        bwd_bytes = 2 * (4 * v.numel() + 2 * g.numel())  # v, h, dh, g in; dv, dg out
        src = torch.empty(fwd_bytes // 2, device=DEV, dtype=torch.bfloat16); dst = torch.empty_like(src)
        copy_bw = 2 * fwd_bytes / do_bench(lambda: dst.copy_(src), warmup=5, rep=25, return_mode="median") / 1e9
        print(f"m={m} fwd {fwd_bytes/1e6:.0f} MB copy {copy_bw:.0f} GB/s", flush=True)
        for bwd in ((False, True) if m in MS_BWD else (False,)):
            byts = bwd_bytes if bwd else fwd_bytes
            for C, U, bl, var in itertools.product(GRID[bwd]["C"], GRID[bwd]["U"], GRID[bwd]["BLOCK"], ("base", "full")):
                if skip(m, U):
                    continue
                L = -(-T // C)
                res = run(var, bwd, m, U, bl, L, v, g, href, dh)
                x, ref = (res[1].float(), dref) if bwd else (res[0].float(), href.float())
                err = ((x - ref).norm() / ref.norm()).item()
                ms = do_bench(lambda: run(var, bwd, m, U, bl, L, v, g, href, dh), warmup=5, rep=25, return_mode="median")
                row = dict(dir="bwd" if bwd else "fwd", m=m, C=C, U=U, BLOCK_N=bl, variant=var, ms=ms, share=byts / ms / 1e9 / copy_bw, err=err)
                out.write(json.dumps(row) + "\n"); out.flush()
                print(f"{row['dir']} m={m} C={C:2} U={U:2} BN={bl:3} {var:4} {ms:.3f} ms {100*row['share']:.0f}% err {err:.1e}", flush=True)
    print(f"done {time.time()-t0:.0f} s")
