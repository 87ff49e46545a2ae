"""Where a batch-1 prefill's time goes, for each model of benchmarks/model/bench.py at prompt length T:
torch.profiler's table (host and device time per op) of one forward with the cache, and cProfile's table
of the Python functions over 20 forwards (host time only: at T = 2k the forward is host-bound).

    python -m benchmarks.model.profile_prefill --length 2048 --models hlru_m2,llama
"""
import argparse
import cProfile
import pstats

import torch
from torch.profiler import ProfilerActivity, profile

from .bench import FULL, build


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.model.profile_prefill", description=__doc__.split("\n\n")[0])
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--models", default="hlru_m2,llama")
    p.add_argument("--rows", type=int, default=25)
    args = p.parse_args(argv)
    device = torch.device("cuda")
    for name in args.models.split(","):
        model = build(name, **FULL["size"], device=device, dtype=FULL["dtype"])
        x = torch.randint(0, model.config.vocab_size, (1, args.length), device=device)
        with torch.no_grad():
            for _ in range(3):
                model(input_ids=x, use_cache=True)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                model(input_ids=x, use_cache=True)
                torch.cuda.synchronize()
        print(f"== {name}, T = {args.length}")
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=args.rows), flush=True)
        python = cProfile.Profile()
        with torch.no_grad():
            python.enable()
            for _ in range(20):
                model(input_ids=x, use_cache=True)
            torch.cuda.synchronize()
            python.disable()
        print(f"== {name}, T = {args.length}: Python functions over 20 forwards")
        pstats.Stats(python).sort_stats("tottime").print_stats(args.rows)
        del model


if __name__ == "__main__":
    main()
