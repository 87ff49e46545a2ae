"""A/B run behind the "kernel benchmark after the library split" figures in benchmarks/README.md: the H-LRU
Triton scan of the current package against the one before the split, forward + backward with an upstream
gradient, B=8 T=4096 N=2048 bf16, m = 1..4, ``triton.testing.do_bench``, in one process on a CUDA GPU.

"old" is the package given by ``--old``: a folder holding hf_lrnn/scan_triton.py and hf_lrnn/scan_torch.py of
commit b89718f plus an empty __init__.py (its relative import finds scan_torch.py there):

    mkdir -p /tmp/old/old_lrnn && touch /tmp/old/old_lrnn/__init__.py
    for f in scan_triton scan_torch; do git show b89718f:hf_lrnn/$f.py > /tmp/old/old_lrnn/$f.py; done
    PYTHONPATH=/tmp/old python -m benchmarks.kernels.exploration.split_ab --old old_lrnn
"""
import argparse
import importlib

import torch
import triton

from hf_lrnn import scan_triton as new


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", required=True, help="importable package holding the old scan_triton module")
    args = p.parse_args(argv)
    old = importlib.import_module(f"{args.old}.scan_triton")
    torch.manual_seed(0)
    B, T, N = 8, 4096, 2048
    for m in (1, 2, 3, 4):
        v = torch.randn(B, T, N, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        g = torch.randn(B, T, N, m + 1, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        dh = torch.randn(B, T, N, device="cuda", dtype=torch.bfloat16)

        def fwd_bwd(module):
            return lambda: module.hlru_scan_triton(v, g)[0].backward(dh)

        for _ in range(2):
            print(m, "old fwd+bwd ms", round(triton.testing.do_bench(fwd_bwd(old)), 3),
                  "new", round(triton.testing.do_bench(fwd_bwd(new)), 3), flush=True)


if __name__ == "__main__":
    main()
