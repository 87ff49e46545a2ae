"""Model-level benchmark on one GPU: the LRNN language models beside a Llama of the H-LRU model's size (vocabulary
32,000, d = 768, 12 layers, bf16): decode through generate(), prefill latency, training throughput and memory.

    python -m benchmarks.model.bench --out benchmarks/results/model                   # CUDA
    python -m benchmarks.model.bench --smoke --out /tmp/bench                         # tiny shapes, CPU, seconds

Every measurement goes to <out>/model_bench.json as soon as it is done (a failed one with its error). decode: ms
per token as the difference of generate() calls with n1 and n2 new tokens, "compiled" (static cache) and "eager";
prefill: median ms of one (1, T) forward with the cache; train: tokens/s, peak memory and MFU (6 x parameters
FLOPs per token, plus attention's for Llama, over ``--peak-tflops``) of eager, compiled and, for the LRNNs,
compiled with Liger's fused linear + cross-entropy. ``--repeats`` interleaves passes over the decode and prefill
grids."""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
import traceback
from pathlib import Path

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
from transformers.generation.configuration_utils import CompileConfig

from benchmarks.models import MODELS as MODEL_TABLE
from benchmarks.models import is_lrnn, lrnn_fields
from benchmarks.outputs import add_overwrite_flag, refuse_existing
from benchmarks.synthetic.run import environment
from hf_lrnn import LRNNConfig, LRNNForCausalLM

MODELS = ("hlru_m2", "bdlru_k4", "llama")  # the default set; --models takes any LRNN label of benchmarks.models, or llama
FULL = dict(size=dict(vocab=32000, hidden=768, layers=12), dtype=torch.bfloat16, n1=16, n2=144, tokens_per_step=65536,
            train_steps=5, decode_grid="1x512,1x16384,1x65536,32x16384,256x512", prefill_grid=(2048, 16384, 65536),
            train_grid=(2048, 8192, 32768))
SMOKE = dict(size=dict(vocab=97, hidden=32, layers=2), dtype=torch.float32, n1=2, n2=6, tokens_per_step=256,
             train_steps=2, decode_grid="1x16,4x8", prefill_grid=(32,), train_grid=(64,))


def lrnn_config(name, vocab, hidden, layers):
    return LRNNConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, **lrnn_fields(name, hidden))


def llama_config(vocab, hidden, layers):
    """Llama with the H-LRU m = 2 model's parameter count: the SwiGLU width fills what the attention leaves."""
    heads = max(1, hidden // 64)
    with torch.device("meta"):  # only its parameter count is needed
        lrnn = LRNNForCausalLM(lrnn_config("hlru_m2", vocab, hidden, layers))
    per_layer = (sum(p.numel() for p in lrnn.parameters()) - 2 * vocab * hidden - hidden) / layers
    width = max(32, round((per_layer - 4 * hidden * hidden - 2 * hidden) / (3 * hidden) / 32) * 32)
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=width, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=131072,
                       tie_word_embeddings=False, attn_implementation="sdpa", pad_token_id=0, bos_token_id=None,
                       eos_token_id=None)


def build(name, vocab, hidden, layers, device, dtype):
    torch.manual_seed(0)
    if name == "llama":
        model = LlamaForCausalLM(llama_config(vocab, hidden, layers))
    else:
        model = LRNNForCausalLM(lrnn_config(name, vocab, hidden, layers))
    return model.to(device=device, dtype=dtype).eval()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat=1, warm_up=True):
    """Seconds per call of ``fn`` over ``repeat`` calls, after one warm-up call (which compiles where compiled)."""
    if warm_up:
        fn()
        sync(device)
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - t) / repeat


def decode_ms_per_token(model, batch, context, compiled, n1, n2, device):
    prompt = torch.randint(0, model.config.vocab_size, (batch, context), device=device)
    mode = {"disable_compile": not compiled, "compile_config": CompileConfig(fullgraph=True) if compiled else None}
    if compiled and isinstance(model, LlamaForCausalLM):
        mode["cache_implementation"] = "static"

    def run(n):
        config = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0, **mode)
        return lambda: model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=config)

    t1, t2 = timed(run(n1), device), timed(run(n2), device)
    return 1e3 * (t2 - t1) / (n2 - n1)


def prefill_ms(model, context, device, repeats):
    x = torch.randint(0, model.config.vocab_size, (1, context), device=device)
    samples = []
    with torch.no_grad():
        for i in range(repeats):
            samples.append(1e3 * timed(lambda: model(input_ids=x, use_cache=True), device, warm_up=i == 0))
    return statistics.median(samples), samples


def fused_ce_loss_fn(model):
    """loss(hidden, labels): Liger-Kernel's fused linear + cross-entropy on the model's head, next-token shift."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    fused = LigerFusedLinearCrossEntropyLoss()

    def loss(hidden, labels):
        d = hidden.shape[-1]
        return fused(model.lm_head.weight, hidden[:, :-1].reshape(-1, d), labels[:, 1:].reshape(-1))

    return loss


def train_tokens_per_s(model, seq_len, tokens_per_step, mode, device, steps):
    """(tokens/s, peak GiB, first loss) of ``steps`` training steps of ``mode`` (eager, compiled, compiled_fused_ce)."""
    model.train()
    batch = max(1, tokens_per_step // seq_len)
    x = torch.randint(0, model.config.vocab_size, (batch, seq_len), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=device.type == "cuda")
    if mode == "compiled_fused_ce":
        backbone, head_loss = torch.compile(model.model), fused_ce_loss_fn(model)

        def loss_of():
            return head_loss(backbone(input_ids=x, use_cache=False).last_hidden_state, x)
    else:
        forward = torch.compile(model) if mode == "compiled" else model

        def loss_of():
            return forward(input_ids=x, labels=x, use_cache=False).loss
    losses = []

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_of()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    step()  # compile / autotune outside the timing
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(step, device, repeat=steps)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    model.eval()
    return batch * seq_len / seconds, peak, float(losses[0])


def parse_grid(text):
    return [tuple(int(x) for x in case.split("x")) for case in text.split(",") if case]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.model.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/model")
    p.add_argument("--smoke", action="store_true", help="tiny model and shapes on the CPU")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated model labels (default: %(default)s)")
    p.add_argument("--sections", default="decode,prefill,train", help="in the order to run them")
    p.add_argument("--decode-grid", help="decode cases BATCHxCONTEXT,... (default: 1x512,1x16384,1x65536,32x16384,256x512)")
    p.add_argument("--llama-decode-grid", help="Llama's decode cases (default: --decode-grid)")
    p.add_argument("--decode-modes", default="compiled,eager")
    p.add_argument("--repeats", type=int, default=1, help="passes over the decode and prefill grids")
    p.add_argument("--prefill-grid", help="prompt lengths T,... (default 2048,16384,65536)")
    p.add_argument("--prefill-repeats", type=int, default=10)
    p.add_argument("--train-grid", help="sequence lengths T,... (default 2048,8192,32768)")
    p.add_argument("--train-modes", default="compiled,eager,compiled_fused_ce")
    p.add_argument("--peak-tflops", type=float, default=790.0)
    add_overwrite_flag(p)
    args = p.parse_args(argv)
    refuse_existing(p, [Path(args.out) / "model_bench.json"], args.overwrite)
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    preset = SMOKE if args.smoke else FULL
    size, dtype = preset["size"], preset["dtype"]
    models = args.models.split(",")
    known = [label for label in MODEL_TABLE if label == "llama" or is_lrnn(label)]
    unknown = sorted(set(models) - set(known))
    if unknown:
        p.error(f"--models: unknown {unknown}; known: {known}")
    decode_grid = parse_grid(args.decode_grid or preset["decode_grid"])
    llama_grid = parse_grid(args.llama_decode_grid) if args.llama_decode_grid else decode_grid
    prefill_grid = [int(t) for t in args.prefill_grid.split(",")] if args.prefill_grid else preset["prefill_grid"]
    train_grid = [int(t) for t in args.train_grid.split(",")] if args.train_grid else preset["train_grid"]
    unknown = set(args.sections.split(",")) - {"decode", "prefill", "train"}
    if unknown:
        p.error(f"--sections: unknown {sorted(unknown)}; known: decode, prefill, train")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "size": size, "params": {}, "argv": argv,
               "env": environment(), "rows": []}
    eval_models = {}

    def record(**row):
        row["t_s"] = round(time.time() - start, 1)
        results["rows"].append(row)
        (out / "model_bench.json").write_text(json.dumps(results, indent=1))
        print(json.dumps(row), flush=True)

    def model_of(name):
        if name not in eval_models:
            eval_models[name] = build(name, device=device, dtype=dtype, **size)
            results["params"][name] = sum(p.numel() for p in eval_models[name].parameters())
        return eval_models[name]

    def decode(model, mode, batch, context, **_):
        ms = decode_ms_per_token(model_of(model), batch, context, mode == "compiled", preset["n1"], preset["n2"], device)
        return dict(ms_per_token=ms, tokens_per_s=1e3 * batch / ms)

    def prefill(model, context, **_):
        ms, samples = prefill_ms(model_of(model), context, device, args.prefill_repeats)
        return dict(ms=ms, samples_ms=samples)

    def train(model, mode, seq_len, **_):
        if mode == "compiled_fused_ce" and importlib.util.find_spec("liger_kernel") is None:
            return dict(status="not_run", reason="liger_kernel is not installed")
        net = build(model, device=device, dtype=torch.float32, **size)
        params = sum(p.numel() for p in net.parameters())
        try:
            tps, peak, loss = train_tokens_per_s(net, seq_len, preset["tokens_per_step"], mode, device,
                                                 preset["train_steps"])
        finally:
            del net
            torch._dynamo.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        flops = 6 * params + (6 * size["layers"] * seq_len * size["hidden"] if model == "llama" else 0)
        return dict(tokens_per_s=tps, peak_gib=peak, first_loss=loss, params=params,
                    mfu=flops * tps / (args.peak_tflops * 1e12))

    cases = {  # section -> (measurement, the keys of its rows)
        "decode": (decode, [dict(model=name, section="decode", mode=mode, batch=batch, context=context, repeat=repeat)
                            for repeat in range(args.repeats) for name in models for mode in args.decode_modes.split(",")
                            for batch, context in (llama_grid if name == "llama" else decode_grid)]),
        "prefill": (prefill, [dict(model=name, section="prefill", context=context, repeat=repeat)
                              for repeat in range(args.repeats) for name in models for context in prefill_grid]),
        "train": (train, [dict(model=name, section="train", mode=mode, seq_len=seq_len) for seq_len in train_grid
                          for name in models for mode in args.train_modes.split(",")
                          if not (mode == "compiled_fused_ce" and name == "llama")]),
    }
    for section in args.sections.split(","):
        if section == "train":
            eval_models.clear()  # the evaluation models' memory goes back before training
        measure, keys = cases[section]
        for key in keys:
            try:
                record(**key, **measure(**key))
            except Exception as err:  # noqa: BLE001 - recorded, the run goes on
                record(**key, status="error", error=f"{type(err).__name__}: {err}"[:2000],
                       trace=traceback.format_exc()[-3000:])
    return results


if __name__ == "__main__":
    main()
