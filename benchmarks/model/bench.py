"""Model-level benchmark on one GPU: decode through generate() (eager and compiled), prefill latency and
training throughput (eager and torch.compile) of the 12-layer, d = 768 H-LRU / BD-LRU language models.

    python -m benchmarks.model.bench --out benchmarks/results/model            # the full run (CUDA)
    python -m benchmarks.model.bench --smoke                                    # tiny shapes, CPU, seconds

Every measurement is written to <out>/model_bench.json as soon as it is done (a failed one records its
error), so a run cut short still returns what it measured. Decode time per token is the difference of two
generate() calls with max_new_tokens n1 and n2 (min_new_tokens equal), divided by n2 - n1, which removes
the prefill; compiled runs are timed after one warm-up call that compiles. MFU = 6 * parameters *
tokens/s over the measured bf16 matrix peak (--peak-tflops, 790 measured on the H200 here).
"""
from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch
from transformers import GenerationConfig
from transformers.generation.configuration_utils import CompileConfig

from hf_lrnn import LRNNConfig, LRNNForCausalLM

MODELS = {"hlru_m2": dict(mixer="hlru", order=2), "bdlru_k4": dict(mixer="bdlru", block_size=4)}


def build(name, vocab, hidden, layers, device, dtype):
    torch.manual_seed(0)
    config = LRNNConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, **MODELS[name])
    return LRNNForCausalLM(config).to(device=device, dtype=dtype).eval()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat=1):
    fn()  # warm-up (compiles where compiled)
    sync(device)
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - t) / repeat


def decode_ms_per_token(model, batch, context, compiled, n1, n2, device):
    prompt = torch.randint(0, model.config.vocab_size, (batch, context), device=device)
    compile_config = CompileConfig(fullgraph=True) if compiled else None

    def run(n):
        config = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False, disable_compile=not compiled,
                                  compile_config=compile_config, eos_token_id=None, pad_token_id=0)
        return lambda: model.generate(prompt, generation_config=config)

    t1, t2 = timed(run(n1), device), timed(run(n2), device)
    return 1e3 * (t2 - t1) / (n2 - n1)


def prefill_ms(model, context, device):
    x = torch.randint(0, model.config.vocab_size, (1, context), device=device)
    with torch.no_grad():
        return 1e3 * timed(lambda: model(input_ids=x, use_cache=True), device, repeat=3)


def train_tokens_per_s(model, seq_len, tokens_per_step, compiled, device, steps):
    model.train()
    batch = max(1, tokens_per_step // seq_len)
    x = torch.randint(0, model.config.vocab_size, (batch, seq_len), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    forward = torch.compile(model) if compiled else model

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = forward(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # compile / autotune outside the timing
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(step, device, repeat=steps)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    model.eval()
    return batch * seq_len / seconds, peak


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/model")
    p.add_argument("--smoke", action="store_true", help="tiny model and shapes on the CPU")
    p.add_argument("--models", default="hlru_m2,bdlru_k4")
    p.add_argument("--sections", default="decode,prefill,train")
    p.add_argument("--peak-tflops", type=float, default=790.0)
    p.add_argument("--decode-grid", help="decode cases as BATCHxCONTEXT,... (default: the full grid)")
    p.add_argument("--decode-modes", default="compiled,eager", help="compiled, eager or both")
    args = p.parse_args(argv)
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if args.smoke:
        size = dict(vocab=97, hidden=32, layers=2)
        decode_grid, prefill_grid, train_grid = [(1, 16), (4, 8)], [32], [64]
        n1, n2, tokens_per_step, steps, dtype = 2, 6, 256, 2, torch.float32
    else:
        size = dict(vocab=32000, hidden=768, layers=12)
        decode_grid, prefill_grid, train_grid = [(1, 512), (1, 16384), (1, 65536), (32, 16384), (256, 512)], [2048, 16384, 65536], [2048, 8192, 32768]
        n1, n2, tokens_per_step, steps, dtype = 16, 144, 65536, 5, torch.bfloat16
    if args.decode_grid:
        decode_grid = [tuple(int(x) for x in case.split("x")) for case in args.decode_grid.split(",")]
    modes = [{"compiled": True, "eager": False}[mode] for mode in args.decode_modes.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "size": size, "rows": []}

    def record(**row):
        results["rows"].append(row)
        (out / "model_bench.json").write_text(json.dumps(results, indent=1))
        print(json.dumps(row), flush=True)

    sections = args.sections.split(",")
    for name in args.models.split(","):
        model = build(name, device=device, dtype=dtype, **size)
        params = sum(p.numel() for p in model.parameters())
        if "decode" in sections:
            for compiled in modes:
                for batch, context in decode_grid:
                    try:
                        ms = decode_ms_per_token(model, batch, context, compiled, n1, n2, device)
                        record(model=name, section="decode", compiled=compiled, batch=batch, context=context,
                               ms_per_token=ms, tokens_per_s=1e3 * batch / ms)
                    except Exception as err:  # noqa: BLE001 - recorded, the run goes on
                        record(model=name, section="decode", compiled=compiled, batch=batch, context=context,
                               error=f"{type(err).__name__}: {err}"[:2000], trace=traceback.format_exc()[-3000:])
        if "prefill" in sections:
            for context in prefill_grid:
                try:
                    record(model=name, section="prefill", context=context, ms=prefill_ms(model, context, device))
                except Exception as err:  # noqa: BLE001
                    record(model=name, section="prefill", context=context, error=f"{type(err).__name__}: {err}"[:2000])
        if "train" in sections:
            for compiled in (False, True):
                for seq_len in train_grid:
                    try:
                        tps, peak = train_tokens_per_s(model.float(), seq_len, tokens_per_step, compiled, device, steps)
                        record(model=name, section="train", compiled=compiled, seq_len=seq_len, tokens_per_s=tps,
                               peak_gib=peak, mfu=6 * params * tps / (args.peak_tflops * 1e12), params=params)
                    except Exception as err:  # noqa: BLE001
                        record(model=name, section="train", compiled=compiled, seq_len=seq_len,
                               error=f"{type(err).__name__}: {err}"[:2000], trace=traceback.format_exc()[-3000:])
                    torch._dynamo.reset()
            model.to(dtype)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
