"""A/B run behind bdlru_row_stores_ab_h200.log: row-tile stores (the package at commit e2e6990, which at
the time also used them for the H-LRU gate gradients) against per-value stores (scan_triton_old.py =
hf_lrnn/scan_triton.py at commit ee7f8ce with ``from .scan_torch`` changed to ``from hf_lrnn.scan_torch``),
kernels only, B=8 T=4096 W=2048 bf16. Run from a folder holding both files, on a CUDA GPU."""
import os, sys, time, multiprocessing as mp
sys.path.insert(0, os.path.dirname(__file__)); sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
CASES = [("hlru", 1), ("hlru", 2), ("hlru", 4), ("bdlru", 2), ("bdlru", 4), ("bdlru", 8)]

def mods():
    from hf_lrnn import scan_triton as new
    import scan_triton_old as old
    return {"new": new, "old": old}

def inputs(kind, D, B, T, W=2048, dtype=None):
    import torch
    N = W // D
    shape = (B, T, N) if kind == "hlru" else (B, T, N, D)
    dt = dtype or torch.bfloat16
    return torch.randn(*shape, device="cuda", dtype=dt), 2 * torch.randn(*shape, D + 1, device="cuda", dtype=dt)

def warm(job):
    import torch
    name, kind, D = job
    m = mods()[name]
    v, g = inputs(kind, D, 1, 512)
    h, _, L = m._sequential_forward(kind, v, g, None, None, "softmax", None)
    m._sequential_backward(kind, v, g, None, None, h, L, torch.randn_like(h), None, "softmax")
    h, _, L = m._sequential_forward(kind, v.float(), g.float(), None, None, "softmax", 128)
    torch.cuda.synchronize()
    return job

if __name__ == "__main__":
    t0 = time.time()
    with mp.get_context("spawn").Pool(12) as pool:
        list(pool.imap_unordered(warm, [(n, k, D) for n in ("new", "old") for k, D in CASES]))
    print(f"compiled {time.time() - t0:.0f} s", flush=True)
    import torch
    from triton.testing import do_bench
    M = mods()
    for kind, D in CASES:
        v, g = inputs(kind, D, 8, 4096)
        out = {}
        for name, m in M.items():
            h, _, L = m._sequential_forward(kind, v, g, None, None, "softmax", None)
            dh = torch.randn_like(h)
            f = do_bench(lambda: m._sequential_forward(kind, v, g, None, None, "softmax", None), warmup=5, rep=30, return_mode="median")
            b = do_bench(lambda: m._sequential_backward(kind, v, g, None, None, h, L, dh, None, "softmax"), warmup=5, rep=30, return_mode="median")
            out[name] = (round(f, 3), round(b, 3))
        # agreement new vs old (same maths, fp32 inputs at a small shape)
        vs, gs = inputs(kind, D, 2, 512, dtype=torch.float32)
        res = []
        for name in ("new", "old"):
            m = M[name]
            h, fin, L = m._sequential_forward(kind, vs, gs, None, None, "softmax", 128)
            dv, dg, _ = m._sequential_backward(kind, vs, gs, None, None, h, L, torch.ones_like(h), None, "softmax")
            res.append((h, dv, dg))
        diff = max((a - b).abs().max().item() for a, b in zip(*res))
        print(kind, D, "fwd/bwd ms new", out["new"], "old", out["old"], "max |new-old|", f"{diff:.1e}", flush=True)
        del v, g
