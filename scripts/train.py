#!/usr/bin/env python
"""Train an H-LRU / BD-LRU language model (or a Llama / Mamba baseline) with transformers.Trainer.

    python scripts/train.py                                   # the default: ~1M params on tinyshakespeare, CPU, minutes
    python scripts/train.py --data notes.txt --preset 10m --mixer bdlru --block-size 4 --bf16
    python scripts/train.py --data corpus.jsonl --text-field body --tokenizer gpt2
    python scripts/train.py --data roneneldan/TinyStories --preset 10m --max-steps 5000 --packing
    python scripts/train.py --data roneneldan/TinyStories --preset 10m --max-steps 5000 --layout padded  # its baseline
    python scripts/train.py --resume --output-dir runs/lrnn   # continue that run from its last checkpoint
    python scripts/train.py --report-to tensorboard           # log to TensorBoard (pip install tensorboard) as well
    torchrun --nproc_per_node 2 scripts/train.py ...          # DDP: 2 processes (GPUs, or CPUs without a GPU)
    accelerate launch --multi_gpu --num_processes 2 scripts/train.py ...  # DDP on GPUs; --use_fsdp ... for FSDP

The script reads top to bottom: arguments (all checked before any work), corpus, tokenizer, model, Trainer,
evaluation, the model folder (weights, config, tokenizer, remote code), then the optional parts (a sample, the
loss curve, the model card) and ``--push-to-hub``. It needs the package and the train extra:
pip install -e ".[train]".
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

EMBEDDED_CORPUS = "tinyshakespeare"  # the --data name of scripts/data/tinyshakespeare.txt (see scripts/data/README.md)
EMBEDDED_CORPUS_PATH = Path(__file__).resolve().parent / "data" / "tinyshakespeare.txt"
MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "lrnn_model_card.md"
DEFAULT_OUTPUT_DIR = "runs/lrnn-shakespeare"
LOCAL_DATA_SUFFIXES = (".txt", ".md", ".jsonl", ".json")  # --data with one of these is a local file, never a Hub name
EOS = "<|endoftext|>"
# Model sizes. The LRNN block is mixer + SwiGLU; the Llama gets the same width and depth with a wider
# MLP, the Mamba the same width and more blocks, so both land near the H-LRU (m=2) parameter count.
PRESETS = {  # name: (hidden_size, layers)
    "tiny": (128, 4),    # ~1M parameters: the CPU default
    "10m": (320, 6),     # ~10M
    "125m": (768, 12),   # GPT-2-small shape: ~100M + embeddings (~125M with a 16k vocabulary)
}
MAMBA_LAYERS_PER_BLOCK = 2.2  # a Mamba block (~6.3 d^2) has no MLP; an H-LRU block is ~14 d^2
# The arguments that make a run what it is: --resume refuses to change them (its checkpoint holds that model,
# tokenizer and data position). The others (steps, intervals, learning rate, output, sampling) may change.
RUN_DEFINING_ARGUMENTS = ("data", "text_field", "val_fraction", "layout", "tokenizer", "vocab_size", "seq_len", "arch",
                          "preset", "hidden_size", "layers", "mixer", "order", "block_size", "batch_size", "grad_accum",
                          "seed")
LAYOUTS = ("stream", "packed", "padded")  # --layout: see its help
PACK_BATCH = 1000  # documents packed together (datasets.map batches): rows never span two batches
PACKAGE_OF_INTEGRATION = {"tensorboard": "tensorboard", "comet_ml": "comet_ml", "azure_ml": "azureml-core",
                          "flyte": "flytekit"}  # --report-to names whose pip package has another name get it here


def fail(message: str):
    """A usage error: one line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (error: ...) with exit status 2, like every check of this script."""

    def error(self, message):
        fail(f"{message} (python {self.prog} --help lists the options)")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default, also for options without a help text."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        shown = action.default is not None and action.default is not False and action.default is not argparse.SUPPRESS
        if shown and "%(default)" not in help_text and action.option_strings:
            help_text += " (default: %(default)s)"
        return help_text


def report_to_names(report_to: str) -> list:
    """--report-to's comma-separated integrations as a list."""
    return [name.strip() for name in report_to.split(",")]


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="train.py", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", default=EMBEDDED_CORPUS, help="a local .txt / .md / .jsonl / .json file or dataset folder, or a "
                   f"Hub dataset name (name or name:config); '{EMBEDDED_CORPUS}' is scripts/data/tinyshakespeare.txt")
    g.add_argument("--text-field", default="text", help="column holding the text (JSONL and Hub datasets)")
    g.add_argument("--val-fraction", type=float, default=0.1, help="held-out tail when there is no validation split")
    layout = g.add_mutually_exclusive_group()
    layout.add_argument("--layout", choices=LAYOUTS, default="stream", help="the training rows. stream: the corpus as "
                        "one token stream cut into blocks of --seq-len (no padding; the state runs from one document "
                        "into the next). packed: whole documents (a text file's paragraphs between blank lines, or a "
                        "dataset's records) packed into rows of --seq-len tokens without padding; position_ids restart "
                        "at 0 at each document and no loss spans two documents. padded: one document per row (one "
                        "longer than --seq-len is cut into pieces that each start fresh), each batch padded to its "
                        "longest row (attention_mask 0, labels -100 on the padding)")
    layout.add_argument("--packing", action="store_const", dest="layout", const="packed", help="--layout packed")
    g.add_argument("--tokenizer", default="bpe", help="'bpe': train a byte-level BPE of --vocab-size on the corpus "
                   "(--vocab-size 257 is plain bytes); or a local folder / Hub id for AutoTokenizer")
    g.add_argument("--vocab-size", type=int, default=1024, help="vocabulary of the trained BPE (>= 257)")
    g.add_argument("--seq-len", type=int, default=128, help="tokens per training row (>= 2)")
    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=["lrnn", "llama", "mamba"], default="lrnn", help="the model")
    g.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                   help="model size: " + ", ".join(f"{k} (d={d}, {n} layers)" for k, (d, n) in PRESETS.items()))
    g.add_argument("--hidden-size", type=int, help="override the preset's width")
    g.add_argument("--layers", type=int, help="override the preset's depth")
    g.add_argument("--mixer", choices=["hlru", "bdlru"], default="hlru", help="the LRNN mixer")
    g.add_argument("--order", type=int, default=2, help="H-LRU order m (1 = diagonal LRU)")
    g.add_argument("--block-size", type=int, default=4, help="BD-LRU block size k")
    g.add_argument("--scan-backend", choices=["auto", "torch", "triton", "reference"], default="auto", help="the LRNN scan")
    g = p.add_argument_group("training")
    g.add_argument("--max-steps", type=int, default=300, help="optimizer steps")
    g.add_argument("--batch-size", type=int, default=16, help="global batch (sequences per optimizer step, all processes together)")
    g.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    g.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    g.add_argument("--lr-scheduler", default="cosine", help="any transformers SchedulerType: cosine, linear, constant_with_warmup, ...")
    g.add_argument("--warmup-steps", type=int, default=30, help="linear warm-up steps")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (>= 0)")
    g.add_argument("--bf16", action="store_true", help="bf16 autocast")
    g.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in the backward pass")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--seed", type=int, default=1337, help="seed of the initialisation, data order and sample")
    g.add_argument("--max-time", type=float, help="stop training after this many seconds")
    g = p.add_argument_group("evaluation, checkpoints, output")
    g.add_argument("--eval-interval", type=int, default=100, help="evaluate every N steps (and at the end)")
    g.add_argument("--eval-batches", type=int, default=20, help="validation batches per evaluation (0 = all)")
    g.add_argument("--log-interval", type=int, default=10, help="log the training loss every N steps")
    g.add_argument("--save-interval", type=int, help="checkpoint every N steps (default: --eval-interval)")
    g.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help="the run's folder: new or empty, unless --resume or --overwrite")
    g.add_argument("--overwrite", action="store_true", help="start a new run in an --output-dir that holds another run: "
                   "its checkpoints are deleted first and its files replaced")
    g.add_argument("--resume", nargs="?", const="last", metavar="CHECKPOINT",
                   help="continue the run in --output-dir: from its last checkpoint, or the given checkpoint folder; "
                        "the run's saved arguments are the defaults, and those that define the run cannot change")
    g.add_argument("--report-to", default="none", help="where Trainer also logs, comma-separated: none, all, or "
                   "integrations such as tensorboard, wandb, mlflow (their packages must be installed)")
    g.add_argument("--prompt", default="ROMEO:", help="prompt of the sample printed at the end")
    g.add_argument("--sample-tokens", type=int, default=200, help="tokens of that sample (0 = no sample)")
    g.add_argument("--push-to-hub", action=argparse.BooleanOptionalAction, default=False,
                   help="upload the model folder (not the checkpoints) with Trainer.push_to_hub at the end")
    g.add_argument("--hub-model-id", help="user/name on the Hub (default: the output folder's name)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """The arguments, each checked; everything here is fast (no heavy imports): the checks that need transformers
    or the model's config class are in check_run."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.resume:  # the saved arguments of the run become the defaults; flags given now still win
        if args.overwrite:
            fail("--resume continues the run in --output-dir, --overwrite replaces it: give one of them")
        saved_path = Path(args.output_dir) / "run_args.json"
        if not saved_path.is_file():
            fail(f"--resume: no {saved_path} (is --output-dir the folder of an earlier run?)")
        saved = json.loads(saved_path.read_text())
        if "layout" not in saved:  # a run saved before --layout: its --packing flag was the layout
            saved["layout"] = "packed" if saved.pop("packing", False) else "stream"
        p.set_defaults(**{k: v for k, v in saved.items() if k not in ("resume", "overwrite")})
        args = p.parse_args(argv)
        changed = [f"--{k.replace('_', '-')} {getattr(args, k)} (the run has {saved.get(k)})"
                   for k in RUN_DEFINING_ARGUMENTS if getattr(args, k) != saved.get(k, getattr(args, k))]
        if changed:
            fail(f"--resume: {', '.join(changed)}: a resumed run keeps its data, tokenizer, model and batch; drop "
                 "those flags, or start a new run in another --output-dir")
    if args.data != EMBEDDED_CORPUS and not Path(args.data).expanduser().exists():
        if Path(args.data).suffix in LOCAL_DATA_SUFFIXES or args.data.startswith((".", "/", "~")) or args.data.count("/") > 1:
            fail(f"--data {args.data}: no such file or folder")
    at_least = dict(vocab_size=1, seq_len=2, max_steps=1, batch_size=1, grad_accum=1, eval_interval=1, log_interval=1,
                    hidden_size=1, layers=1, order=1, block_size=1, save_interval=1, warmup_steps=0, eval_batches=0,
                    sample_tokens=0)
    for name, minimum in at_least.items():
        value = getattr(args, name)
        if value is not None and value < minimum:
            why = " (a row needs a next-token target)" if name == "seq_len" else ""
            fail(f"--{name.replace('_', '-')} must be >= {minimum}{why}, got {value}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        fail(f"--lr must be a finite number > 0, got {args.lr}")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        fail(f"--weight-decay must be a finite number >= 0, got {args.weight_decay}")
    if args.max_time is not None and not (math.isfinite(args.max_time) and args.max_time > 0):
        fail(f"--max-time must be a number of seconds > 0, got {args.max_time}")
    if not 0 < args.val_fraction < 1:
        fail(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if not 0 <= args.seed < 2**32:  # numpy's seed range (set_seed seeds numpy too)
        fail(f"--seed must be in [0, 2**32 - 1], got {args.seed}")
    if args.tokenizer == "bpe" and args.vocab_size < 257:
        fail(f"--vocab-size must be >= 257 (256 bytes + end-of-text) for --tokenizer bpe, got {args.vocab_size}")
    if args.sample_tokens and not args.prompt:
        fail("--prompt is empty: the sample needs a prompt (or give --sample-tokens 0 for no sample)")
    if args.layout == "packed" and args.arch == "mamba":
        fail("--packing (--layout packed): Mamba takes no position_ids, so its state would run from one document into "
             "the next; use --arch lrnn or llama, or train Mamba with --layout stream or padded")
    reporters = report_to_names(args.report_to)
    if not all(reporters) or len(reporters) > 1 and ("none" in reporters or "all" in reporters):
        fail(f"--report-to {args.report_to}: give none, all, or comma-separated integration names")
    launched_by_accelerate_on_cpu = os.environ.get("ACCELERATE_USE_CPU") and "MASTER_ADDR" in os.environ
    if launched_by_accelerate_on_cpu and "WORLD_SIZE" not in os.environ:
        fail("accelerate launch --cpu --num_processes N starts one process here, not N: for several processes on "
             "CPUs use torchrun --nproc_per_node N scripts/train.py ...")
    world = int(os.environ.get("WORLD_SIZE", 1))
    if args.batch_size % (world * args.grad_accum):
        fail(f"--batch-size {args.batch_size} must be divisible by WORLD_SIZE ({world}) x --grad-accum ({args.grad_accum})")
    return args


if __name__ == "__main__":  # checked before the heavy imports below, so --help and usage errors answer at once
    parse_args()

import torch  # noqa: E402  (after the fast argument check above)
import transformers  # noqa: E402
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, MambaConfig,  # noqa: E402
                          PreTrainedTokenizerFast, Trainer, TrainerCallback, TrainingArguments, set_seed)
from transformers.integrations import get_available_reporting_integrations  # noqa: E402
from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK  # noqa: E402
from transformers.trainer_utils import get_last_checkpoint  # noqa: E402

try:
    import datasets
    from matplotlib.figure import Figure
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    import hf_lrnn  # registers model_type "lrnn" with the Auto classes
    from hf_lrnn import LRNNConfig
except ImportError as error:
    sys.exit(f"error: {error}. scripts/train.py needs hf_lrnn and its train extra: "
             'pip install -e ".[train]" (from the repository root)')


# ------------------------------------------------------------------------------- checks before work
def model_config(args, vocab_size: int, special_ids: dict | None = None):
    """The model's config from the arguments; building it validates every field (ValueError naming the field)."""
    d, layers = PRESETS[args.preset]
    d = d if args.hidden_size is None else args.hidden_size
    layers = layers if args.layers is None else args.layers
    ids = dict(vocab_size=vocab_size, **(special_ids or {}))
    if args.arch == "llama":  # attention (4 d^2) + a SwiGLU of width 10d/3 (10 d^2) = an H-LRU m=2 block
        return LlamaConfig(hidden_size=d, num_hidden_layers=layers, intermediate_size=32 * -(-10 * d // 96),
                           num_attention_heads=max(1, d // 64), max_position_embeddings=args.seq_len, **ids)
    if args.arch == "mamba":
        return MambaConfig(hidden_size=d, num_hidden_layers=round(MAMBA_LAYERS_PER_BLOCK * layers), use_mambapy=True, **ids)
    return LRNNConfig(hidden_size=d, num_hidden_layers=layers, mixer=args.mixer, order=args.order,
                      block_size=args.block_size, scan_backend=args.scan_backend, **ids)


def check_run(args) -> str | None:
    """The checks that need transformers, the model's config class or the output folder, made before any work:
    the logging integrations are installed, the model config is valid, and --output-dir is free (new run), or
    holds the run to resume with a compatible checkpoint. Returns the checkpoint to resume from, or None."""
    available = get_available_reporting_integrations()
    for name in report_to_names(args.report_to):
        if name not in INTEGRATION_TO_CALLBACK and name not in ("none", "all"):
            fail(f"--report-to {name}: not an integration of transformers (give none, all, or names from "
                 f"{', '.join(sorted(INTEGRATION_TO_CALLBACK))})")
        if name in INTEGRATION_TO_CALLBACK and name not in available:
            fail(f"--report-to {name}: its package is not installed (pip install {PACKAGE_OF_INTEGRATION.get(name, name)})")
    try:
        config = model_config(args, vocab_size=args.vocab_size)
    except ValueError as error:
        fail(f"the model configuration from the arguments is invalid: {error}")
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        fail(f"--output-dir {out} is a file, not a folder")
    if not args.resume:
        if out.is_dir() and any(out.iterdir()) and not args.overwrite:
            names = sorted(p.name for p in out.iterdir())
            what = ("holds another run (run_args.json)" if (out / "run_args.json").is_file() else
                    f"is not empty ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
            fail(f"--output-dir {out} {what}: give a new folder, --resume to continue that run, or --overwrite to "
                 "replace it")
        return None
    checkpoint = get_last_checkpoint(str(out)) if args.resume == "last" else args.resume
    if not checkpoint or not (Path(checkpoint) / "trainer_state.json").is_file():
        fail(f"--resume: no checkpoint {'in ' + str(out) if args.resume == 'last' else args.resume} "
             "(a Trainer checkpoint folder has a trainer_state.json)")
    try:
        saved = AutoConfig.from_pretrained(checkpoint)
    except (OSError, ValueError) as error:
        fail(f"--resume: the config of {checkpoint} cannot be read: {error}")
    fields = ("model_type", "hidden_size", "num_hidden_layers") + (("mixer", "order", "block_size") if config.model_type == "lrnn" else ())
    differ = [f"{k} {getattr(saved, k, None)} (the arguments give {getattr(config, k, None)})" for k in fields
              if getattr(saved, k, None) != getattr(config, k, None)]
    if differ:
        fail(f"--resume: the model of {checkpoint} is not the one of the arguments: {', '.join(differ)}")
    return checkpoint


def remove_earlier_checkpoints(out: Path) -> None:
    """--overwrite: delete the earlier run's checkpoint-* folders, which the Trainer's checkpoint rotation and
    --resume would otherwise mix with the new run's; its other files are replaced as the new run writes them."""
    earlier = sorted(p for p in out.glob("checkpoint-*") if p.is_dir())
    for folder in earlier:
        shutil.rmtree(folder)
    if earlier:
        print(f"--overwrite: deleted the earlier run's {', '.join(p.name for p in earlier)} in {out}")


# ----------------------------------------------------------------------------------------- corpus
def read_text_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        fail(f"--data {path} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}); "
             "convert it first, e.g. iconv -f latin1 -t utf-8")


def split_documents(text: str) -> list[str]:
    """A text file's documents for --layout packed or padded: its paragraphs, separated by blank lines."""
    return [doc.strip("\n") for doc in re.split(r"\n[ \t]*\n", text) if doc.strip()]


def load_corpus(args) -> datasets.DatasetDict:
    """A DatasetDict with "train" and "validation" splits and one "text" column (one document per row)."""
    path = Path(args.data).expanduser()
    if args.data == EMBEDDED_CORPUS or path.suffix not in (".jsonl", ".json") and path.is_file():
        text = read_text_file(EMBEDDED_CORPUS_PATH if args.data == EMBEDDED_CORPUS else path)
        if args.layout != "stream":  # documents: the last --val-fraction of them is the validation set
            docs = split_documents(text)
            if len(docs) < 2:
                fail(f"--data {args.data} holds {len(docs)} document(s) (paragraphs between blank lines): --layout "
                     f"{args.layout} needs at least 2, one to train on and one to validate; separate the documents "
                     "with blank lines, or use --layout stream")
            cut = min(int(len(docs) * (1 - args.val_fraction)), len(docs) - 1)
            train, validation = docs[:cut], docs[cut:]
        else:  # one document: the tail is the validation set
            cut = int(len(text) * (1 - args.val_fraction))
            train, validation = [text[:cut]], [text[cut:]]
        return datasets.DatasetDict(train=datasets.Dataset.from_dict({"text": train}),
                                    validation=datasets.Dataset.from_dict({"text": validation}))
    try:
        if path.is_file():
            ds = datasets.load_dataset("json", data_files=str(path))
        else:
            name, _, config = args.data.partition(":")
            ds = datasets.load_dataset(name, config or None)
    except Exception as error:  # datasets raises many types (not found, offline, parse errors): all end the run here
        where = "the JSON file" if path.is_file() else (
            "the dataset folder" if path.is_dir() else "not a local file or folder; as a Hub dataset")
        fail(f"--data {args.data}: {where} could not be loaded: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    if "train" not in ds:
        fail(f"--data {args.data} has no train split (splits: {', '.join(ds)})")
    if "validation" not in ds:  # use a "test" split, else hold out the last --val-fraction of the documents
        held_out = ds["test"] if "test" in ds else ds["train"].train_test_split(args.val_fraction, shuffle=False)["test"]
        train = ds["train"] if "test" in ds else ds["train"].select(range(len(ds["train"]) - len(held_out)))
        ds = datasets.DatasetDict(train=train, validation=held_out)
    if args.text_field not in ds["train"].column_names:
        fail(f"--text-field {args.text_field!r} is not a column of {args.data} (columns: {ds['train'].column_names})")
    ds = datasets.DatasetDict({k: v.select_columns([args.text_field]) for k, v in ds.items() if k in ("train", "validation")})
    for split, records in ds.items():  # text in every record (the column's type and null count: no values read)
        feature = records.features[args.text_field]
        if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
            fail(f"--text-field {args.text_field!r} of {args.data} holds {feature}, not text")
        missing = records.data.column(args.text_field).null_count
        if missing:
            fail(f"--data {args.data}: {missing} record(s) of its {split} split have no {args.text_field!r} (null): "
                 "remove them or give them text")
    return ds if args.text_field == "text" else ds.rename_column(args.text_field, "text")


# -------------------------------------------------------------------------------------- tokenizer
def train_bpe_tokenizer(train: datasets.Dataset, vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style) trained on the corpus: no download, any text encodes."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((batch["text"] for batch in train.iter(batch_size=1000)), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS,
                                   padding_side="left", model_max_length=1 << 30, clean_up_tokenization_spaces=False)


def load_pretrained_tokenizer(source: str):
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        fail(f"--tokenizer {source}: no tokenizer could be loaded: {str(error).splitlines()[0]}")
    if tokenizer.eos_token_id is None:
        fail(f"--tokenizer {source} has no end-of-text token, which ends every document of the training data")
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side, tokenizer.model_max_length = "left", 1 << 30
    return tokenizer


def tokenize_documents(ds: datasets.DatasetDict, tokenizer) -> datasets.DatasetDict:
    """Each document's token ids followed by end-of-text, in column "ids"."""
    def tokenize(batch):
        return {"ids": [ids + [tokenizer.eos_token_id] for ids in tokenizer(batch["text"])["input_ids"]]}

    return ds.map(tokenize, batched=True, remove_columns=["text"], desc="tokenize")


def tokenize_into_blocks(ds: datasets.DatasetDict, tokenizer, seq_len: int) -> datasets.DatasetDict:
    """Tokenize, append end-of-text to each document, concatenate, cut into blocks of seq_len (the state of
    the model runs on from one document into the next, through the end-of-text token)."""
    def blocks(batch):
        stream = [t for ids in batch["ids"] for t in ids]
        n = len(stream) // seq_len * seq_len
        chunks = [stream[i:i + seq_len] for i in range(0, n, seq_len)]
        return {"input_ids": chunks, "labels": chunks}  # the model shifts the labels itself

    return tokenize_documents(ds, tokenizer).map(blocks, batched=True, batch_size=1000, remove_columns=["ids"],
                                                 desc=f"blocks of {seq_len}")


def pack_rows(documents: list[list[int]], seq_len: int) -> dict[str, list[list[int]]]:
    """Documents (token ids, each ending in end-of-text) packed in order into rows of exactly seq_len tokens, no
    padding; the tokens after the last full row are dropped. A document that does not fit in the rest of a row
    continues at the start of the next row, as a new document. Per row:
      input_ids:    the tokens;
      position_ids: 0 at each document's first token (and at the row's first), counting up within the document;
      labels:       the tokens, -100 where position_ids is 0, so no document's last token is trained to predict
                    the next document's first (the model shifts the labels: labels[t] is the target at t-1).
    For rows of whole documents this is what transformers' DataCollatorWithFlattening makes of them."""
    stream = [t for ids in documents for t in ids]
    starts = [1 if i == 0 else 0 for ids in documents for i in range(len(ids))]
    rows = dict(input_ids=[], position_ids=[], labels=[])
    for begin in range(0, len(stream) // seq_len * seq_len, seq_len):
        positions, position = [], 0
        for j in range(seq_len):
            position = 0 if j == 0 or starts[begin + j] else position + 1
            positions.append(position)
        ids = stream[begin:begin + seq_len]
        rows["input_ids"].append(ids)
        rows["position_ids"].append(positions)
        rows["labels"].append([-100 if p == 0 else t for t, p in zip(ids, positions)])
    return rows


def tokenize_into_packed_rows(ds: datasets.DatasetDict, tokenizer, seq_len: int) -> datasets.DatasetDict:
    """Tokenize each document (+ end-of-text) and pack them into rows (pack_rows), PACK_BATCH documents at a time:
    rows do not cross from one batch of documents into the next, and each batch's tokens after its last full row
    (fewer than seq_len) are dropped."""
    return tokenize_documents(ds, tokenizer).map(lambda batch: pack_rows(batch["ids"], seq_len), batched=True,
                                                 batch_size=PACK_BATCH, remove_columns=["ids"],
                                                 desc=f"packed rows of {seq_len}")


def document_rows(documents: list[list[int]], seq_len: int) -> dict[str, list[list[int]]]:
    """--layout padded: one document (token ids ending in end-of-text) per row, unpadded; a document longer than
    seq_len is cut into pieces of seq_len tokens (the last one shorter), each a row that starts fresh. Pieces of
    one token (no next-token target) are dropped. Rows have lengths 2..seq_len; pad_batch pads each batch."""
    rows = [ids[i:i + seq_len] for ids in documents for i in range(0, len(ids), seq_len)]
    return {"input_ids": [row for row in rows if len(row) >= 2]}


def tokenize_into_document_rows(ds: datasets.DatasetDict, tokenizer, seq_len: int) -> datasets.DatasetDict:
    """Tokenize each document (+ end-of-text) into rows of one document each (document_rows)."""
    return tokenize_documents(ds, tokenizer).map(lambda batch: document_rows(batch["ids"], seq_len), batched=True,
                                                 batch_size=1000, remove_columns=["ids"], desc=f"documents of <= {seq_len}")


class PadBatch:
    """The collator of --layout padded: rows of token ids (lengths L_i) to a batch of (B, max L_i) tensors,
    padded on the right with pad_token_id: input_ids, attention_mask (1 on the tokens, 0 on the padding) and
    labels (the tokens, -100 on the padding; the model shifts them). The LRNN leaves its state untouched where
    the mask is 0, and the loss never reads the padding."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        rows = [list(f["input_ids"]) for f in features]
        longest = max(len(row) for row in rows)
        mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in rows])
        input_ids = torch.tensor([row + [self.pad_token_id] * (longest - len(row)) for row in rows])
        return {"input_ids": input_ids, "attention_mask": mask, "labels": input_ids.masked_fill(mask == 0, -100)}


TOKENIZE_INTO = {"stream": tokenize_into_blocks, "packed": tokenize_into_packed_rows, "padded": tokenize_into_document_rows}


# ------------------------------------------------------------------------------------------ model
def describe(config) -> str:
    if config.model_type == "lrnn":
        spec = config.layer_specs[0]
        if (spec["order"] if spec["mixer"] == "hlru" else spec["block_size"]) == 1:
            return "diagonal LRU (m=1)"
        return f"H-LRU (order m={spec['order']})" if spec["mixer"] == "hlru" else f"BD-LRU (block size k={spec['block_size']})"
    return {"llama": "Llama (RoPE attention)", "mamba": "Mamba"}.get(config.model_type, config.model_type)


NEVER_IN_CARD = ("architectures", "auto_map", "transformers_version", "_name_or_path", "dtype", "torch_dtype")


def non_default_config(config) -> dict:
    """The config's fields that differ from what its class gives by default: a field derived from others (e.g.
    LRNN's recurrent_size = hidden_size) counts as default when the config rebuilt without it has the same value."""
    values = {k: v for k, v in config.to_dict().items() if k not in NEVER_IN_CARD}
    defaults = type(config)().to_dict()
    differing = {k: v for k, v in values.items() if k not in defaults or defaults[k] != v}
    shown = {}
    for key, value in differing.items():
        others = {k: v for k, v in differing.items() if k != key and k != "model_type"}
        try:
            derived = type(config)(**others).to_dict().get(key)
        except (ValueError, TypeError):
            derived = None
        if derived != value:
            shown[key] = value
    return shown


# ---------------------------------------------------------------------------------------- trainer
class Throughput(TrainerCallback):
    """Training tokens/s of real (non-padding) tokens over the optimizer steps after the first few warm-up ones
    (evaluation and saving excluded); with --max-time, stops training once that many seconds have passed. The
    trainer passes it every training micro-batch (count_batch); the counts are this process's until
    sum_over_processes."""

    def __init__(self, max_time=None, skip: int = 3):
        self.max_time, self.skip = max_time, skip
        self.seconds, self.all_seconds, self.steps, self.start = 0.0, 0.0, 0, time.time()
        self.real_tokens = self.padding_tokens = self.timed_real_tokens = 0
        self.step_real_tokens = self.step_tokens = 0  # this step's micro-batches; real may be a device tensor

    def count_batch(self, inputs: dict) -> None:
        """Adds a micro-batch's real tokens (attention_mask 1, or all of input_ids without a mask) and its size.
        The mask's sum stays on the device until on_step_end, which synchronises anyway: no host sync here."""
        mask = inputs.get("attention_mask")
        self.step_real_tokens += mask.sum() if mask is not None else inputs["input_ids"].numel()
        self.step_tokens += inputs["input_ids"].numel()

    def sum_over_processes(self) -> None:
        """Every process's token counts summed (call on every process of a distributed run, after training)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            counts = torch.tensor([self.real_tokens, self.padding_tokens, self.timed_real_tokens], dtype=torch.float64,
                                  device="cuda" if torch.distributed.get_backend() == "nccl" else "cpu")
            torch.distributed.all_reduce(counts)
            self.real_tokens, self.padding_tokens, self.timed_real_tokens = (int(c) for c in counts.tolist())

    def _sync(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.steps += 1
        seconds = time.perf_counter() - self.t0
        self.all_seconds += seconds
        step_real_tokens = int(self.step_real_tokens)
        self.real_tokens += step_real_tokens
        self.padding_tokens += self.step_tokens - step_real_tokens
        if self.steps > self.skip:
            self.seconds += seconds
            self.timed_real_tokens += step_real_tokens
        self.step_real_tokens = self.step_tokens = 0
        if self.max_time and time.time() - self.start > self.max_time:
            control.should_training_stop = True

    @property
    def tokens_per_second(self) -> float:
        """Real tokens per second, after the warm-up steps (over all steps in a run of no more than those)."""
        if self.steps > self.skip:
            return self.timed_real_tokens / self.seconds
        return self.real_tokens / self.all_seconds if self.steps else float("nan")

    @property
    def padding_share(self) -> float:
        """The fraction of the training batches' tokens that is padding."""
        total = self.real_tokens + self.padding_tokens
        return self.padding_tokens / total if total else float("nan")


class CardTrainer(Trainer):
    """Trainer whose model card (README.md, also what push_to_hub uploads) is ours, and which shows every training
    micro-batch to its Throughput callback (the real tokens of a padded batch are known only there)."""

    card_fields: dict = {}
    throughput: Throughput | None = None

    def training_step(self, model, inputs, *args, **kwargs):
        if self.throughput is not None:
            self.throughput.count_batch(inputs)
        return super().training_step(model, inputs, *args, **kwargs)

    def create_model_card(self, **kwargs):
        if self.is_world_process_zero() and self.card_fields:
            render_model_card(self.card_fields, Path(self.args.output_dir) / "README.md")


def render_model_card(fields: dict, path: Path) -> None:
    from huggingface_hub import ModelCard, ModelCardData

    card_data = ModelCardData(library_name="transformers", license="apache-2.0", pipeline_tag="text-generation",
                              tags=["hf_lrnn", fields["model_type"], "linear-rnn", "custom_code"], language="en",
                              datasets=[fields["dataset_id"]] if fields.get("dataset_id") else None)
    ModelCard.from_template(card_data, template_path=str(MODEL_CARD_TEMPLATE), **fields).save(path)


def plot_loss_curve(log_history: list[dict], path: Path) -> Figure:
    """Training and validation loss against the optimizer step, from Trainer's log history, as a PNG."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for key, label, style in (("loss", "training", "-"), ("eval_loss", "validation", "o-")):
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry]
        if points:
            ax.plot(*zip(*points), style, label=label)
    ax.set(xlabel="step", ylabel="loss (nats/token)", title=path.parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)
    return fig


def training_arguments(args, per_device: int) -> TrainingArguments:
    """The TrainingArguments of a run: per-device batch from the global --batch-size, evaluation and checkpoints
    every --eval-interval steps, the CPU when there is no GPU, logging to --report-to. The training set is a whole
    number of batches (main() cuts it), so no batch is partial although the last validation batch may be."""
    return TrainingArguments(
        output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=per_device,
        per_device_eval_batch_size=per_device, gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr, lr_scheduler_type=args.lr_scheduler, warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay, adam_beta2=0.99, max_grad_norm=1.0, bf16=args.bf16,
        torch_compile=args.compile, seed=args.seed, eval_strategy="steps", eval_steps=args.eval_interval,
        logging_steps=args.log_interval, save_steps=args.save_interval or args.eval_interval, save_total_limit=2,
        dataloader_drop_last=False, dataloader_pin_memory=torch.cuda.is_available(), ddp_find_unused_parameters=False,
        use_cpu=not torch.cuda.is_available(),  # also what makes torchrun distribute on CPUs
        report_to=report_to_names(args.report_to),
        push_to_hub=args.push_to_hub, hub_model_id=args.hub_model_id, hub_strategy="end",
    )


def main(argv=None):
    args = parse_args(argv)
    checkpoint = check_run(args)
    world = int(os.environ.get("WORLD_SIZE", 1))
    is_main = int(os.environ.get("RANK", 0)) == 0
    out = Path(args.output_dir)
    if checkpoint:
        done = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]
        if done >= args.max_steps:  # Trainer would run one more step and overwrite the model: do nothing instead
            if is_main:
                print(f"{checkpoint} is at step {done}, --max-steps is {args.max_steps}: the run is finished, nothing "
                      f"to do (give a larger --max-steps to train further)")
            return None
    set_seed(args.seed)

    # Tokenizer and corpus. A resumed run reuses the tokenizer saved in its checkpoint.
    tokenizer = (load_pretrained_tokenizer(checkpoint) if checkpoint else
                 None if args.tokenizer == "bpe" else load_pretrained_tokenizer(args.tokenizer))
    corpus = load_corpus(args)
    tokenizer = tokenizer or train_bpe_tokenizer(corpus["train"], args.vocab_size)
    data = TOKENIZE_INTO[args.layout](corpus, tokenizer, args.seq_len)
    if len(data["train"]) < args.batch_size or len(data["validation"]) == 0:  # before reading the rows' columns
        fail(f"the corpus is too small: {len(data['train'])} training / {len(data['validation'])} validation rows of "
             f"{'<= ' if args.layout == 'padded' else ''}{args.seq_len} tokens (need >= --batch-size {args.batch_size} "
             f"and >= 1): give more data, a smaller "
             f"--seq-len or --batch-size, or a larger --val-fraction")
    val_chars = sum(len(t) for t in corpus["validation"]["text"])
    val_targets = {"stream": lambda rows: len(rows) * args.seq_len,
                   "packed": lambda rows: sum(sum(p != 0 for p in row) for row in rows["position_ids"]),
                   "padded": lambda rows: sum(len(row) - 1 for row in rows["input_ids"])}[args.layout](data["validation"])
    val_tokens_per_char = val_targets / max(val_chars, 1)
    train_data = data["train"].select(range(len(data["train"]) // args.batch_size * args.batch_size))  # whole batches
    eval_data = data["validation"]
    per_device = args.batch_size // (world * args.grad_accum)
    if args.eval_batches:  # a fixed prefix of the validation rows, so evaluations are comparable
        eval_data = eval_data.select(range(min(len(eval_data), args.eval_batches * per_device * world)))

    # Model: from the checkpoint's config when resuming, else from the flags.
    special_ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = AutoConfig.from_pretrained(checkpoint) if checkpoint else model_config(args, len(tokenizer), special_ids)
    model = AutoModelForCausalLM.from_config(config)
    n_params = sum(p.numel() for p in model.parameters())
    if args.gradient_checkpointing:  # transformers 5.24 renamed it activation checkpointing
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    if is_main:
        rows = {"stream": "blocks of the token stream of", "packed": "packed rows of whole documents of",
                "padded": "rows of one document each (padded per batch) of at most"}[args.layout]
        print(f"{describe(config)}: {n_params / 1e6:.2f}M parameters, {config.num_hidden_layers} layers, d={config.hidden_size}, "
              f"vocab {len(tokenizer)}; {len(train_data)} training / {len(eval_data)} validation {rows} {args.seq_len} tokens")
        out.mkdir(parents=True, exist_ok=True)
        if args.overwrite:
            remove_earlier_checkpoints(out)
        (out / "run_args.json").write_text(json.dumps({k: v for k, v in vars(args).items() if k not in ("resume", "overwrite")}, indent=1))

    training_args = training_arguments(args, per_device)
    throughput = Throughput(args.max_time)
    collator = PadBatch(tokenizer.pad_token_id) if args.layout == "padded" else transformers.default_data_collator
    trainer = CardTrainer(model=model, args=training_args, train_dataset=train_data, eval_dataset=eval_data,
                          processing_class=tokenizer, callbacks=[throughput], data_collator=collator)
    trainer.throughput = throughput
    train_output = trainer.train(resume_from_checkpoint=checkpoint)
    throughput.sum_over_processes()

    # Validation loss / perplexity, then the model folder, before anything optional.
    eval_loss = trainer.evaluate()["eval_loss"]
    model.config.use_cache = type(model.config)().use_cache  # Trainer switched the cache off for training
    metrics = {
        "model": describe(config), "parameters": n_params, "steps": trainer.state.global_step,
        # stream and packed rows are all real tokens; padded rows are counted (this session's steps only)
        "train_tokens": (trainer.state.global_step * args.batch_size * args.seq_len if args.layout != "padded"
                         else throughput.real_tokens), "eval_loss": eval_loss,
        "eval_perplexity": math.exp(eval_loss), "eval_bits_per_char": eval_loss * val_tokens_per_char / math.log(2),
        "layout": args.layout, "packing": args.layout == "packed",
        "train_real_tokens_per_second": throughput.tokens_per_second, "padding_share": throughput.padding_share,
        "padding_tokens_per_step": throughput.padding_tokens / max(throughput.steps, 1),
        "train_runtime_s": train_output.metrics["train_runtime"],
        "world_size": world, "fsdp": trainer.is_fsdp_enabled, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "scan_backend": getattr(config, "scan_backend", None), "torch": torch.__version__, "transformers": transformers.__version__,
    }
    trainer.save_model(_internal_call=True)  # the model folder; _internal_call: no upload yet (push_to_hub is last)
    if is_main:
        print(f"validation loss {eval_loss:.4f} | perplexity {metrics['eval_perplexity']:.2f} | "
              f"{metrics['eval_bits_per_char']:.3f} bits/char | {metrics['train_real_tokens_per_second']:.0f} training tokens/s"
              f"; model saved to {out}/")
        metrics["log_history"] = trainer.state.log_history
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))

    # Optional: a sample, the loss curve, the model card (README.md), the upload.
    sample = "(no sample: FSDP shards the model over the processes; run scripts/generate.py on the saved folder)"
    if not args.sample_tokens:
        sample = "(no sample: --sample-tokens 0)"
    elif is_main and not trainer.is_fsdp_enabled:
        model.eval()
        torch.manual_seed(args.seed)
        inputs = tokenizer(args.prompt, return_tensors="pt").to(model.device)
        with torch.no_grad():
            sample_ids = model.generate(**inputs, max_new_tokens=args.sample_tokens, do_sample=True, temperature=0.8,
                                        top_k=50, pad_token_id=tokenizer.pad_token_id)
        sample = tokenizer.decode(sample_ids[0], skip_special_tokens=True)
        print(f"--- sample (temperature 0.8, top-k 50) ---\n{sample}\n---")
    if is_main:
        metrics["sample"] = sample
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        plot_loss_curve(trainer.state.log_history, out / "loss_curve.png")

    # The model card, rendered from model_cards/ by CardTrainer.create_model_card. push_to_hub saves the model
    # folder and uploads it (checkpoints excluded).
    trainer.card_fields = dict(
        model_id=args.hub_model_id or out.name, model_type=config.model_type, architecture=describe(config),
        config_json=json.dumps(non_default_config(model.config), indent=2),
        n_params=f"{n_params / 1e6:.2f}M", dataset=(
            "tinyshakespeare (`scripts/data/tinyshakespeare.txt` of hf_lrnn: 1.1 MB of Shakespeare's plays, "
            "the corpus of Karpathy's char-rnn)"
            if args.data == EMBEDDED_CORPUS else f"`{args.data}`") + (
            f", the last {args.val_fraction:.0%} held out for validation" if args.data == EMBEDDED_CORPUS or Path(args.data).suffix == ".txt" else ""),
        dataset_id=None if Path(args.data).exists() or args.data == EMBEDDED_CORPUS else args.data,
        layout={"stream": f"blocks of {args.seq_len} tokens of the concatenated corpus",
                "packed": f"whole documents packed into rows of {args.seq_len} tokens (no padding; position_ids restart "
                          "at each document, no loss across documents)",
                "padded": f"one document per row (longer ones cut into pieces of {args.seq_len} tokens), each batch "
                          "padded to its longest row (attention_mask 0, no loss on the padding)"}[args.layout],
        tokenizer=(f"byte-level BPE, {len(tokenizer)} tokens, trained on the training split" if args.tokenizer == "bpe" else args.tokenizer),
        seq_len=args.seq_len, steps=metrics["steps"], batch_size=args.batch_size, train_tokens=metrics["train_tokens"],
        lr=args.lr, lr_scheduler=args.lr_scheduler, precision="bf16" if args.bf16 else "fp32", world_size=world,
        eval_loss=f"{eval_loss:.4f}", eval_perplexity=f"{metrics['eval_perplexity']:.2f}",
        eval_bits_per_char=f"{metrics['eval_bits_per_char']:.3f}", tokens_per_second=f"{metrics['train_real_tokens_per_second']:.0f}",
        device=metrics["device"], trust_remote_code=config.model_type == "lrnn", prompt=args.prompt, sample=sample,
        # a plain tokenizer.json loads with the stock class, which (unlike AutoTokenizer) never reads config.json
        tokenizer_class="PreTrainedTokenizerFast" if type(tokenizer) is PreTrainedTokenizerFast else "AutoTokenizer",
        command="python scripts/train.py " + " ".join(sys.argv[1:] if argv is None else argv),
        versions=f"torch {torch.__version__}, transformers {transformers.__version__}, hf_lrnn {hf_lrnn.__version__}",
    )
    if args.push_to_hub:  # every process: saving may gather shards
        trainer.push_to_hub(commit_message=f"{describe(config)} trained on {args.data}")
    else:
        trainer.create_model_card()
    if is_main:
        print(f"model card saved to {out}/README.md"
              + (f"; model folder pushed to https://huggingface.co/{trainer.hub_model_id}" if args.push_to_hub else ""))
    return metrics


if __name__ == "__main__":
    main()
