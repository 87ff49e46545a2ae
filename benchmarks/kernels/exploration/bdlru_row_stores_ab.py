"""A/B run behind benchmarks/results/exploration/bdlru_row_stores_ab_h200.log: row-tile stores against
per-value stores of the sequential kernels' outputs, kernels only, B=8 T=4096 W=2048 bf16, on a CUDA GPU.

"new" is ``hf_lrnn.scan_triton`` as imported (the package at commit e2e6990, which at the time also used
row stores for the H-LRU gate gradients); "old" is the module file given by ``--old`` (hf_lrnn/scan_triton.py
at commit ee7f8ce, per-value stores, with ``from .scan_torch`` changed to ``from hf_lrnn.scan_torch`` so that
it loads outside the package). Both expose the drivers of that time,
``_sequential_forward(kind, v, g, init, mask, norm, chunk_size) -> (h, final, L)`` and
``_sequential_backward(kind, v, g, init, mask, h, L, dh, dfinal, norm)``; the current package's drivers
differ, so this script runs against those two versions only:

    git worktree add /tmp/ab e2e6990
    git show ee7f8ce:hf_lrnn/scan_triton.py | sed 's/from \\.scan_torch/from hf_lrnn.scan_torch/' > /tmp/ab/scan_triton_old.py
    cd /tmp/ab && PYTHONPATH=. python <this repository>/benchmarks/kernels/exploration/bdlru_row_stores_ab.py \\
        --old scan_triton_old.py
"""
import argparse
import importlib.util
import multiprocessing as mp
import time

CASES = [("hlru", 1), ("hlru", 2), ("hlru", 4), ("bdlru", 2), ("bdlru", 4), ("bdlru", 8)]


def mods(old_path):
    """{"new": hf_lrnn.scan_triton, "old": the module loaded from ``old_path``}."""
    from hf_lrnn import scan_triton as new

    spec = importlib.util.spec_from_file_location("scan_triton_old", old_path)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    return {"new": new, "old": old}


def inputs(kind, D, B, T, W=2048, dtype=None):
    import torch

    N = W // D
    shape = (B, T, N) if kind == "hlru" else (B, T, N, D)
    dt = dtype or torch.bfloat16
    return torch.randn(*shape, device="cuda", dtype=dt), 2 * torch.randn(*shape, D + 1, device="cuda", dtype=dt)


def warm(job):
    """Compile one version's kernels for one (kind, size) in a worker process."""
    import torch

    name, kind, D, old_path = job
    m = mods(old_path)[name]
    v, g = inputs(kind, D, 1, 512)
    h, _, L = m._sequential_forward(kind, v, g, None, None, "softmax", None)
    m._sequential_backward(kind, v, g, None, None, h, L, torch.randn_like(h), None, "softmax")
    h, _, L = m._sequential_forward(kind, v.float(), g.float(), None, None, "softmax", 128)
    torch.cuda.synchronize()
    return job


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="the per-value-store scan_triton module file")
    args = ap.parse_args(argv)
    t0 = time.time()
    with mp.get_context("spawn").Pool(12) as pool:
        list(pool.imap_unordered(warm, [(n, k, D, args.old) for n in ("new", "old") for k, D in CASES]))
    print(f"compiled {time.time() - t0:.0f} s", flush=True)
    import torch
    from triton.testing import do_bench

    versions = mods(args.old)
    for kind, D in CASES:
        v, g = inputs(kind, D, 8, 4096)
        out = {}
        for name, m in versions.items():
            h, _, L = m._sequential_forward(kind, v, g, None, None, "softmax", None)
            dh = torch.randn_like(h)
            f = do_bench(lambda: m._sequential_forward(kind, v, g, None, None, "softmax", None), warmup=5, rep=30,
                         return_mode="median")
            b = do_bench(lambda: m._sequential_backward(kind, v, g, None, None, h, L, dh, None, "softmax"), warmup=5,
                         rep=30, return_mode="median")
            out[name] = (round(f, 3), round(b, 3))
        # agreement new vs old (same maths, fp32 inputs at a small shape, chunked)
        vs, gs = inputs(kind, D, 2, 512, dtype=torch.float32)
        res = []
        for name in ("new", "old"):
            m = versions[name]
            h, fin, L = m._sequential_forward(kind, vs, gs, None, None, "softmax", 128)
            dv, dg, _ = m._sequential_backward(kind, vs, gs, None, None, h, L, torch.ones_like(h), None, "softmax")
            res.append((h, dv, dg))
        diff = max((a - b).abs().max().item() for a, b in zip(*res))
        print(kind, D, "fwd/bwd ms new", out["new"], "old", out["old"], "max |new-old|", f"{diff:.1e}", flush=True)
        del v, g


if __name__ == "__main__":
    main()
