#!/usr/bin/env python
"""Generate text with a trained model: a local checkpoint folder or a Hub id.

    python scripts/generate.py runs/lrnn-shakespeare --prompt "ROMEO:"
    echo "To be, or not" | python scripts/generate.py runs/lrnn-shakespeare --max-new-tokens 50
    python scripts/generate.py runs/lrnn-shakespeare --prompt "KING:" --prompt "QUEEN:"   # a left-padded batch
    python scripts/generate.py user/lrnn-shakespeare --trust-remote-code --prompt "ROMEO:"  # without hf_lrnn installed

One prompt is streamed token by token (TextStreamer); several prompts run as one left-padded batch and
are printed when done. The generated text goes to stdout, the tokens/s report to stderr.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextStreamer, set_seed

try:  # registers model_type "lrnn"; without it, load with --trust-remote-code
    import hf_lrnn  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`: use the package next to scripts/, if there
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    try:
        import hf_lrnn  # noqa: F401
    except ImportError:
        sys.path.pop(0)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", nargs="?", default="runs/lrnn-shakespeare", help="checkpoint folder or Hub model id")
    p.add_argument("--prompt", action="append", help="a prompt; repeat for a batch. Without it, stdin is read")
    p.add_argument("--lines", action="store_true", help="with stdin: one prompt per non-empty line (a batch)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=50, help="0 disables")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--greedy", action="store_true", help="argmax decoding (ignores the sampling options)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--no-stream", action="store_true", help="print the single prompt's completion at the end")
    p.add_argument("--trust-remote-code", action="store_true", help="run the modeling code saved with the checkpoint")
    args = p.parse_args(argv)
    if args.max_new_tokens < 1:
        p.error(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not args.greedy and args.temperature <= 0:
        p.error(f"--temperature must be > 0 (or use --greedy), got {args.temperature}")
    if not 0 < args.top_p <= 1:
        p.error(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.prompt is None:
        if sys.stdin.isatty():
            p.error("give --prompt TEXT or pipe the prompt on stdin")
        text = sys.stdin.read()
        args.prompt = [line for line in text.splitlines() if line.strip()] if args.lines else [text.rstrip("\n")]
        if not args.prompt or not any(args.prompt):
            p.error("the prompt read from stdin is empty")
    return args


def main(argv=None):
    args = parse_args(argv)
    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype),
                                                 trust_remote_code=args.trust_remote_code).to(args.device).eval()
    tokenizer.padding_side = "left"  # batched generation continues every prompt from its last token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    inputs = tokenizer(args.prompt, return_tensors="pt", padding=True).to(args.device)
    stream = len(args.prompt) == 1 and not args.no_stream
    sampling = dict(do_sample=False) if args.greedy else dict(do_sample=True, temperature=args.temperature,
                                                              top_k=args.top_k or None, top_p=args.top_p)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             streamer=TextStreamer(tokenizer, skip_special_tokens=True) if stream else None, **sampling)
    seconds = time.perf_counter() - start

    new_tokens = out[:, inputs["input_ids"].shape[1]:]
    finished = new_tokens == tokenizer.eos_token_id  # count tokens up to and including each row's end-of-text
    lengths = torch.where(finished.any(1), finished.int().argmax(1) + 1, new_tokens.shape[1])
    if not stream:
        for i, row in enumerate(out):
            if len(args.prompt) > 1:
                print(f"=== [{i}] ===")
            print(tokenizer.decode(row, skip_special_tokens=True))
    n = int(lengths.sum())
    print(f"[{n} new tokens, {len(args.prompt)} prompt(s), {seconds:.2f} s, {n / seconds:.1f} tokens/s on {args.device}]",
          file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
