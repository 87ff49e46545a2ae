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
import math
import re
import sys
import time
from pathlib import Path

# A folder holds a tokenizer if it has one of these (what AutoTokenizer reads for fast, SentencePiece,
# WordPiece / BPE vocabularies and tiktoken tokenizers).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "tokenizer.tiktoken")
END_OF_TEXT = "<|endoftext|>"
DEFAULT_MODEL = "runs/lrnn-shakespeare"  # where python scripts/train.py saves its model
HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")  # name or owner/name


def fail(message: str):
    """A usage error: one line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (error: ...) with exit status 2, like every check of this script."""

    def error(self, message):
        fail(f"{message} (python {self.prog} --help lists the options)")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows the defaults that are values (not None or False)."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        shown = action.default is not None and action.default is not False and action.default is not argparse.SUPPRESS
        if shown and "%(default)" not in help_text:
            help_text += " (default: %(default)s)"
        return help_text


def parse_args(argv=None) -> argparse.Namespace:
    """The arguments, each checked (fast: no heavy imports; the device is checked in check_device)."""
    p = ArgumentParser(prog="generate.py", description=__doc__.split("\n\n")[0],
                       formatter_class=HelpFormatter)
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="checkpoint folder or Hub model id")
    p.add_argument("--prompt", action="append", help="a prompt; repeat for a batch. Without it, stdin is read")
    p.add_argument("--lines", action="store_true", help="with stdin: one prompt per non-empty line (a batch)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate per prompt")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (> 0)")
    p.add_argument("--top-k", type=int, default=50, help="sample from the k most likely tokens; 0 disables")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: the smallest set of tokens of this probability")
    p.add_argument("--greedy", action="store_true", help="argmax decoding (ignores the sampling options)")
    p.add_argument("--seed", type=int, default=1337, help="seed of the sampling")
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N, mps, ...")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="the model's dtype")
    p.add_argument("--no-stream", action="store_true", help="print the single prompt's completion at the end")
    p.add_argument("--tokenizer", help="a folder or Hub id for AutoTokenizer, or 'bytes' (token i = byte i, 256 = end "
                   "of text); default: the model's own tokenizer, or bytes for a 256/257-token model without one")
    p.add_argument("--trust-remote-code", action="store_true", help="run the modeling code saved with the checkpoint")
    args = p.parse_args(argv)
    if args.max_new_tokens < 1:
        fail(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not args.greedy and not (math.isfinite(args.temperature) and args.temperature > 0):
        fail(f"--temperature must be a finite number > 0 (or use --greedy), got {args.temperature}")
    if args.top_k < 0:
        fail(f"--top-k must be >= 0 (0 disables it), got {args.top_k}")
    if not 0 < args.top_p <= 1:  # also false for nan
        fail(f"--top-p must be in (0, 1], got {args.top_p}")
    if not 0 <= args.seed < 2**32:  # numpy's seed range (set_seed seeds numpy too)
        fail(f"--seed must be in [0, 2**32 - 1], got {args.seed}")
    check_model_source(args.model, "model")
    if args.tokenizer not in (None, "bytes"):
        check_model_source(args.tokenizer, "--tokenizer")
    return args


def read_prompts(args) -> list[str]:
    """--prompt, else the text on stdin: one prompt, or with --lines one per non-empty line."""
    if args.prompt is None:
        if sys.stdin.isatty():
            fail("give --prompt TEXT or pipe the prompt on stdin")
        text = sys.stdin.read()
        args.prompt = [line for line in text.splitlines() if line.strip()] if args.lines else [text.rstrip("\n")]
        if not args.prompt or not any(args.prompt):
            fail("the prompt read from stdin is empty")
    if not all(args.prompt):
        fail("a --prompt is empty: generation continues a prompt of at least one token")
    return args.prompt


def check_model_source(source: str, what: str) -> None:
    """A local folder with a config.json (model) or any files (tokenizer), or a name that can only be a Hub id:
    a path that exists nowhere fails here at once, instead of after the Hub's retries."""
    path = Path(source).expanduser()
    if path.is_dir():
        if what == "model" and not (path / "config.json").is_file():
            fail(f"{source} has no config.json: not a model folder (one that save_pretrained or scripts/train.py wrote)")
        return
    if path.exists():
        fail(f"{what} {source} is a file: give the folder that holds the model (its config.json and weights)")
    looks_local = source.startswith((".", "/", "~")) or "\\" in source or not HUB_ID.match(source) or (
        "/" in source and Path(source.split("/")[0]).is_dir())  # e.g. runs/lrnn-shakespear where runs/ exists
    if source == DEFAULT_MODEL and what == "model":
        fail(f"no folder {DEFAULT_MODEL} (the default model, which python scripts/train.py makes): train it first, "
             "or name a model folder or Hub id")
    if looks_local:
        fail(f"{what} {source}: no such folder")


def check_device(name: str):
    """The torch device of --device; auto is cuda when available, else cpu. Fails on unknown or absent devices."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        fail(f"--device {name}: not a torch device ({str(error).splitlines()[0]})")
    available = {"cuda": torch.cuda.is_available, "mps": lambda: torch.backends.mps.is_available(), "cpu": lambda: True}
    if not available.get(device.type, lambda: hasattr(torch, device.type) and getattr(torch, device.type).is_available())():
        fail(f"--device {name}: no {device.type} device is available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        fail(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices")
    return device


if __name__ == "__main__":  # checked before the heavy imports below, so --help and usage errors answer at once
    parse_args()

import torch  # noqa: E402  (after the fast argument check above)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from safetensors import SafetensorError  # noqa: E402
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast,  # noqa: E402
                          TextStreamer, set_seed)

try:  # registers model_type "lrnn" with the Auto classes; without it, only --trust-remote-code loads a model
    import hf_lrnn  # noqa: F401
    HF_LRNN_IMPORT_ERROR = None
except ImportError as error:
    HF_LRNN_IMPORT_ERROR = error


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
            fail(f"{source} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}) and its model has a "
                     f"{vocab_size}-token vocabulary, not bytes (256 or 257): give --tokenizer FOLDER_OR_HUB_ID")
        print(f"{source} has no tokenizer: using bytes (token i = byte i"
              f"{', 256 = end of text' if vocab_size == 257 else ''}); --tokenizer chooses another", file=sys.stderr)
        source = "bytes"
    if source == "bytes":
        if vocab_size not in (256, 257):
            fail(f"--tokenizer bytes needs a 256- or 257-token model, {args.model} has {vocab_size} tokens")
        return byte_tokenizer(vocab_size)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError) as error:
        what = "--tokenizer" if args.tokenizer else "the model folder"
        fail(f"{what} {source}: no tokenizer could be loaded: {' '.join(str(error).split())}")
    if len(tokenizer) > vocab_size:
        fail(f"the tokenizer of {source} has {len(tokenizer)} tokens, more than the {vocab_size} of the model "
                 f"{args.model}: give the tokenizer the model was trained with (--tokenizer)")
    return tokenizer


def load_config(args):
    """The config of args.model; an unreadable or unknown one ends in one error line."""
    try:
        return AutoConfig.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    except ValueError as error:  # an unknown model_type, saved modeling code without --trust-remote-code, bad JSON
        if HF_LRNN_IMPORT_ERROR is not None:
            fail(f"{' '.join(str(error).split())} {HF_LRNN_IMPORT_ERROR}: install hf_lrnn with pip install -e . (from the "
                 "repository root), or pass --trust-remote-code to run the modeling code saved with the model")
        fail(f"the config of {args.model} cannot be loaded: {' '.join(str(error).split())}")
    except OSError as error:  # not on the Hub, no network, an unreadable config.json
        fail(f"the config of {args.model} cannot be loaded: {' '.join(str(error).split())}")


def load_model(args, config, device):
    """The model of args.model in --dtype on the device; unreadable weights end in one error line."""
    try:
        model = AutoModelForCausalLM.from_pretrained(args.model, config=config, dtype=getattr(torch, args.dtype),
                                                     trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:  # e.g. a truncated model.safetensors
        fail(f"the weights of {args.model} cannot be loaded: {type(error).__name__}: {' '.join(str(error).split())[:300]}")
    return model.to(device).eval()


def main(argv=None):
    args = parse_args(argv)
    read_prompts(args)
    device = check_device(args.device)
    set_seed(args.seed)
    config = load_config(args)
    tokenizer = load_tokenizer(args, config.vocab_size)
    tokenizer.padding_side = "left"  # batched generation continues every prompt from its last token
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token is None and len(args.prompt) > 1:
        fail("the tokenizer has no padding or end-of-text token, so prompts cannot be batched: give one --prompt")
    model = load_model(args, config, device)

    inputs = tokenizer(args.prompt, return_tensors="pt", padding=len(args.prompt) > 1).to(device)
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
    print(f"[{n} new tokens, {len(args.prompt)} prompt(s), {seconds:.2f} s, {n / seconds:.1f} tokens/s on {device}]",
          file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
