#!/usr/bin/env python
"""Generate text with a trained model: a local checkpoint folder or a Hub id.

    python scripts/generate.py runs/lrnn-shakespeare --prompt "ROMEO:"
    echo "To be, or not" | python scripts/generate.py runs/lrnn-shakespeare --max-new-tokens 50
    python scripts/generate.py runs/lrnn-shakespeare --prompt "KING:" --prompt "QUEEN:"   # a left-padded batch
    python scripts/generate.py user/lrnn-shakespeare --trust-remote-code --prompt "ROMEO:"  # without hf_lrnn installed
    python scripts/generate.py my-lrnn --tokenizer runs/lrnn-shakespeare --prompt "ROMEO:"  # the tokenizer of another folder

One prompt is streamed token by token (TextStreamer); several prompts run as one left-padded batch and
are printed when done. The generated text goes to stdout, the tokens/s report to stderr. The tokenizer is
the model folder's own, or --tokenizer; a folder without one whose model has a 256- or 257-token vocabulary
gets the byte tokenizer (token i = byte i, 256 = end of text), as --tokenizer bytes does.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, TextStreamer, set_seed

try:  # registers model_type "lrnn" with the Auto classes; without it, only --trust-remote-code loads a model
    import hf_lrnn  # noqa: F401
    HF_LRNN_IMPORT_ERROR = None
except ImportError as error:
    HF_LRNN_IMPORT_ERROR = error

# A folder holds a tokenizer if it has one of these (what AutoTokenizer reads for fast, SentencePiece,
# WordPiece / BPE vocabularies and tiktoken tokenizers).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "tokenizer.tiktoken")
END_OF_TEXT = "<|endoftext|>"


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
    p.add_argument("--tokenizer", help="a folder or Hub id for AutoTokenizer, or 'bytes' (token i = byte i, 256 = end "
                   "of text); default: the model's own tokenizer, or bytes for a 256/257-token model without one")
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


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the one tokenizers' ByteLevel pre-tokenizer and decoder use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def byte_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Token i is byte i of the UTF-8 text; a 257th token, <|endoftext|> = 256, ends the text (and pads)."""
    vocab = {char: byte for byte, char in byte_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # no merges: one token per byte
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = dict(eos_token=END_OF_TEXT, pad_token=END_OF_TEXT) if vocab_size == 257 else {}
    if special:
        tok.add_special_tokens([END_OF_TEXT])
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **special)


def load_tokenizer(args, vocab_size: int):
    """--tokenizer, else the model's own; bytes for a 256/257-token model whose folder has no tokenizer."""
    source = args.tokenizer or args.model
    if source == args.model and Path(source).is_dir() and not any((Path(source) / f).is_file() for f in TOKENIZER_FILES):
        if vocab_size not in (256, 257):
            sys.exit(f"error: {source} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}) and its model has a "
                     f"{vocab_size}-token vocabulary, not bytes (256 or 257): give --tokenizer FOLDER_OR_HUB_ID")
        print(f"{source} has no tokenizer: using bytes (token i = byte i"
              f"{', 256 = end of text' if vocab_size == 257 else ''}); --tokenizer chooses another", file=sys.stderr)
        source = "bytes"
    if source == "bytes":
        if vocab_size not in (256, 257):
            sys.exit(f"error: --tokenizer bytes needs a 256- or 257-token model, {args.model} has {vocab_size} tokens")
        return byte_tokenizer(vocab_size)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError) as error:
        sys.exit(f"error: no tokenizer could be loaded from {source}: {error}")
    if len(tokenizer) > vocab_size:
        sys.exit(f"error: the tokenizer of {source} has {len(tokenizer)} tokens, more than the {vocab_size} of the model "
                 f"{args.model}: give the tokenizer the model was trained with (--tokenizer)")
    return tokenizer


def main(argv=None):
    args = parse_args(argv)
    set_seed(args.seed)
    try:
        config = AutoConfig.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    except ValueError as error:  # an unknown model_type, or saved modeling code without --trust-remote-code
        if HF_LRNN_IMPORT_ERROR is None:
            raise
        sys.exit(f"error: {error}\n{HF_LRNN_IMPORT_ERROR}: install hf_lrnn with pip install -e . (from the repository "
                 "root), or pass --trust-remote-code to run the modeling code saved with the model")
    tokenizer = load_tokenizer(args, config.vocab_size)
    model = AutoModelForCausalLM.from_pretrained(args.model, config=config, dtype=getattr(torch, args.dtype),
                                                 trust_remote_code=args.trust_remote_code).to(args.device).eval()
    tokenizer.padding_side = "left"  # batched generation continues every prompt from its last token
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token is None and len(args.prompt) > 1:
        sys.exit("error: the tokenizer has no padding or end-of-text token, so prompts cannot be batched: give one --prompt")

    inputs = tokenizer(args.prompt, return_tensors="pt", padding=len(args.prompt) > 1).to(args.device)
    stream = len(args.prompt) == 1 and not args.no_stream
    sampling = dict(do_sample=False) if args.greedy else dict(do_sample=True, temperature=args.temperature,
                                                              top_k=args.top_k or None, top_p=args.top_p)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             streamer=TextStreamer(tokenizer, skip_special_tokens=True) if stream else None, **sampling)
    seconds = time.perf_counter() - start

    new_tokens = out[:, inputs["input_ids"].shape[1]:]
    finished = new_tokens == (-1 if tokenizer.eos_token_id is None else tokenizer.eos_token_id)  # count tokens up to
    lengths = torch.where(finished.any(1), finished.int().argmax(1) + 1, new_tokens.shape[1])  # each row's end-of-text
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
