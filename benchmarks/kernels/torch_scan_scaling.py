"""How the torch backend's chunked H-LRU scan (forward + backward) scales with T on the CPU.

    python -m benchmarks.kernels.torch_scan_scaling            # B = 1, N = 64, m = 2, T = 2k .. 16k

Prints the best of ``--repeat`` timings of one forward+backward for each T; linear scaling means the
ratio between successive rows stays near 2.
"""
import argparse
import time

import torch

from hf_lrnn.scan_chunked import hlru_scan_chunked


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="2048,4096,8192,16384")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--order", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    for T in map(int, args.lengths.split(",")):
        v = torch.randn(1, T, args.channels, requires_grad=True)
        g = torch.randn(1, T, args.channels, args.order + 1, requires_grad=True)
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            h, _ = hlru_scan_chunked(v, g)
            h.sum().backward()
            times.append(time.perf_counter() - start)
        print(f"T={T:6d}  fwd+bwd {min(times):.3f} s", flush=True)


if __name__ == "__main__":
    main()
