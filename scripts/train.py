#!/usr/bin/env python
"""Train an H-LRU / BD-LRU language model (or a Llama / Mamba baseline) with transformers.Trainer.

    python scripts/train.py                                   # the default: ~1M params on tinyshakespeare, CPU, minutes
    python scripts/train.py --data notes.txt --preset 10m --mixer bdlru --block-size 4 --bf16
    python scripts/train.py --data corpus.jsonl --text-field body --tokenizer gpt2
    python scripts/train.py --data roneneldan/TinyStories --preset 10m --max-steps 5000
    python scripts/train.py --resume --output-dir runs/lrnn   # continue that run from its last checkpoint
    python scripts/train.py --report-to tensorboard           # log to TensorBoard (or wandb, ...) as well
    accelerate launch --multi_gpu --num_processes 2 scripts/train.py ...  # DDP; --use_fsdp ... for FSDP

The script reads top to bottom: arguments, corpus, tokenizer, model, Trainer, evaluation, a sample,
then the model folder (weights, config, tokenizer, remote code, model card, loss curve) that
``--push-to-hub`` uploads. It needs the package and the train extra: pip install -e ".[train]".
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, MambaConfig,
                          PreTrainedTokenizerFast, Trainer, TrainerCallback, TrainingArguments, set_seed)
from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK
from transformers.trainer_utils import get_last_checkpoint

try:
    import datasets
    from matplotlib.figure import Figure
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    import hf_lrnn  # registers model_type "lrnn" with the Auto classes
    from hf_lrnn import LRNNConfig
except ImportError as error:
    sys.exit(f"error: {error}. scripts/train.py needs hf_lrnn and its train extra: "
             'pip install -e ".[train]" (from the repository root)')

EMBEDDED_CORPUS = "tinyshakespeare"  # the --data name of scripts/data/tinyshakespeare.txt (see scripts/data/README.md)
EMBEDDED_CORPUS_PATH = Path(__file__).resolve().parent / "data" / "tinyshakespeare.txt"
MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "lrnn_model_card.md"
EOS = "<|endoftext|>"
# Model sizes. The LRNN block is mixer + SwiGLU; the Llama gets the same width and depth with a wider
# MLP, the Mamba the same width and more blocks, so both land near the H-LRU (m=2) parameter count.
PRESETS = {  # name: (hidden_size, layers)
    "tiny": (128, 4),    # ~1M parameters: the CPU default
    "10m": (320, 6),     # ~10M
    "125m": (768, 12),   # GPT-2-small shape: ~100M + embeddings (~125M with a 16k vocabulary)
}
MAMBA_LAYERS_PER_BLOCK = 2.2  # a Mamba block (~6.3 d^2) has no MLP; an H-LRU block is ~14 d^2


def report_to_names(report_to: str) -> list:
    """--report-to's comma-separated integrations as a list."""
    return [name.strip() for name in report_to.split(",")]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", default=EMBEDDED_CORPUS, help="a local .txt / .jsonl / .json file or dataset folder, or a Hub dataset name "
                   f"(name or name:config); '{EMBEDDED_CORPUS}' is scripts/data/tinyshakespeare.txt")
    g.add_argument("--text-field", default="text", help="column holding the text (JSONL and Hub datasets)")
    g.add_argument("--val-fraction", type=float, default=0.1, help="held-out tail when there is no validation split")
    g.add_argument("--tokenizer", default="bpe", help="'bpe': train a byte-level BPE of --vocab-size on the corpus "
                   "(--vocab-size 257 is plain bytes); or a local folder / Hub id for AutoTokenizer")
    g.add_argument("--vocab-size", type=int, default=1024)
    g.add_argument("--seq-len", type=int, default=128)
    g = p.add_argument_group("model")
    g.add_argument("--arch", choices=["lrnn", "llama", "mamba"], default="lrnn")
    g.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="model size")
    g.add_argument("--hidden-size", type=int, help="override the preset's width")
    g.add_argument("--layers", type=int, help="override the preset's depth")
    g.add_argument("--mixer", choices=["hlru", "bdlru"], default="hlru")
    g.add_argument("--order", type=int, default=2, help="H-LRU order m (1 = diagonal LRU)")
    g.add_argument("--block-size", type=int, default=4, help="BD-LRU block size k")
    g.add_argument("--scan-backend", choices=["auto", "torch", "triton", "reference"], default="auto")
    g = p.add_argument_group("training")
    g.add_argument("--max-steps", type=int, default=300)
    g.add_argument("--batch-size", type=int, default=16, help="global batch (sequences per optimizer step, all GPUs together)")
    g.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    g.add_argument("--lr", type=float, default=3e-3)
    g.add_argument("--lr-scheduler", default="cosine", help="any transformers SchedulerType: cosine, linear, constant_with_warmup, ...")
    g.add_argument("--warmup-steps", type=int, default=30)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--bf16", action="store_true", help="bf16 autocast")
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--seed", type=int, default=1337)
    g.add_argument("--max-time", type=float, help="stop training after this many seconds")
    g = p.add_argument_group("evaluation, checkpoints, output")
    g.add_argument("--eval-interval", type=int, default=100, help="evaluate every N steps (and at the end)")
    g.add_argument("--eval-batches", type=int, default=20, help="validation batches per evaluation (0 = all)")
    g.add_argument("--log-interval", type=int, default=10)
    g.add_argument("--save-interval", type=int, help="checkpoint every N steps (default: --eval-interval)")
    g.add_argument("--output-dir", default="runs/lrnn-shakespeare")
    g.add_argument("--resume", nargs="?", const="last", metavar="CHECKPOINT",
                   help="continue a run: its last checkpoint in --output-dir, or the given checkpoint folder; "
                        "the run's saved arguments are the defaults")
    g.add_argument("--report-to", default="none", help="where Trainer also logs, comma-separated: none, "
                   f"all, or any of {', '.join(sorted(INTEGRATION_TO_CALLBACK))} (their packages must be installed)")
    g.add_argument("--prompt", default="ROMEO:", help="prompt of the sample printed at the end")
    g.add_argument("--sample-tokens", type=int, default=200)
    g.add_argument("--push-to-hub", action=argparse.BooleanOptionalAction, default=False,
                   help="upload the model folder (not the checkpoints) with Trainer.push_to_hub at the end")
    g.add_argument("--hub-model-id", help="user/name on the Hub (default: the output folder's name)")

    args = p.parse_args(argv)
    if args.resume:  # the saved arguments of the run become the defaults; flags given now still win
        saved = Path(args.output_dir) / "run_args.json"
        if not saved.is_file():
            p.error(f"--resume: no {saved} (is --output-dir the folder of an earlier run?)")
        p.set_defaults(**{k: v for k, v in json.loads(saved.read_text()).items() if k != "resume"})
        args = p.parse_args(argv)
    if args.data != EMBEDDED_CORPUS and not Path(args.data).exists():
        if Path(args.data).suffix in (".txt", ".jsonl", ".json", ".md") or args.data.startswith((".", "/", "~")):
            p.error(f"--data {args.data}: no such file")
    for name in ("vocab_size", "seq_len", "max_steps", "batch_size", "grad_accum", "eval_interval", "log_interval"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    reporters = report_to_names(args.report_to)
    unknown = [name for name in reporters if name not in INTEGRATION_TO_CALLBACK and name not in ("none", "all")]
    if unknown or len(reporters) > 1 and ("none" in reporters or "all" in reporters):
        p.error(f"--report-to {args.report_to}: give none, all, or names from {', '.join(sorted(INTEGRATION_TO_CALLBACK))}")
    if not 0 < args.val_fraction < 1:
        p.error(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if args.tokenizer == "bpe" and args.vocab_size < 257:
        p.error(f"--vocab-size must be >= 257 (256 bytes + end-of-text) for --tokenizer bpe, got {args.vocab_size}")
    world = int(os.environ.get("WORLD_SIZE", 1))
    if args.batch_size % (world * args.grad_accum):
        p.error(f"--batch-size {args.batch_size} must be divisible by WORLD_SIZE ({world}) x --grad-accum ({args.grad_accum})")
    return args


# ----------------------------------------------------------------------------------------- corpus
def load_corpus(args) -> datasets.DatasetDict:
    """A DatasetDict with "train" and "validation" splits and one "text" column."""
    path = Path(args.data)
    if args.data == EMBEDDED_CORPUS or path.suffix not in (".jsonl", ".json") and path.is_file():
        text = (EMBEDDED_CORPUS_PATH if args.data == EMBEDDED_CORPUS else path).read_text(encoding="utf-8")
        cut = int(len(text) * (1 - args.val_fraction))  # one document: the tail is the validation set
        return datasets.DatasetDict(train=datasets.Dataset.from_dict({"text": [text[:cut]]}),
                                    validation=datasets.Dataset.from_dict({"text": [text[cut:]]}))
    if path.is_file():
        ds = datasets.load_dataset("json", data_files=str(path))
    else:
        name, _, config = args.data.partition(":")
        ds = datasets.load_dataset(name, config or None)
    if "validation" not in ds:  # use a "test" split, else hold out the last --val-fraction of the documents
        held_out = ds["test"] if "test" in ds else ds["train"].train_test_split(args.val_fraction, shuffle=False)["test"]
        train = ds["train"] if "test" in ds else ds["train"].select(range(len(ds["train"]) - len(held_out)))
        ds = datasets.DatasetDict(train=train, validation=held_out)
    if args.text_field not in ds["train"].column_names:
        sys.exit(f"error: --text-field {args.text_field!r} is not a column of {args.data} (columns: {ds['train'].column_names})")
    ds = datasets.DatasetDict({k: v.select_columns([args.text_field]) for k, v in ds.items() if k in ("train", "validation")})
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


def tokenize_into_blocks(ds: datasets.DatasetDict, tokenizer, seq_len: int) -> datasets.DatasetDict:
    """Tokenize, append end-of-text to each document, concatenate, cut into blocks of seq_len."""
    def tokenize(batch):
        return {"ids": [ids + [tokenizer.eos_token_id] for ids in tokenizer(batch["text"])["input_ids"]]}

    def blocks(batch):
        stream = [t for ids in batch["ids"] for t in ids]
        n = len(stream) // seq_len * seq_len
        chunks = [stream[i:i + seq_len] for i in range(0, n, seq_len)]
        return {"input_ids": chunks, "labels": chunks}  # the model shifts the labels itself

    ds = ds.map(tokenize, batched=True, remove_columns=["text"], desc="tokenize")
    return ds.map(blocks, batched=True, batch_size=1000, remove_columns=["ids"], desc=f"blocks of {seq_len}")


# ------------------------------------------------------------------------------------------ model
def model_config(args, tokenizer):
    d, layers = PRESETS[args.preset]
    d, layers = args.hidden_size or d, args.layers or layers
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if args.arch == "llama":  # attention (4 d^2) + a SwiGLU of width 10d/3 (10 d^2) = an H-LRU m=2 block
        return LlamaConfig(hidden_size=d, num_hidden_layers=layers, intermediate_size=32 * -(-10 * d // 96),
                           num_attention_heads=max(1, d // 64), max_position_embeddings=args.seq_len, **ids)
    if args.arch == "mamba":
        return MambaConfig(hidden_size=d, num_hidden_layers=round(MAMBA_LAYERS_PER_BLOCK * layers), use_mambapy=True, **ids)
    return LRNNConfig(hidden_size=d, num_hidden_layers=layers, mixer=args.mixer, order=args.order,
                      block_size=args.block_size, scan_backend=args.scan_backend, **ids)


def describe(config) -> str:
    if config.model_type == "lrnn":
        spec = config.layer_specs[0]
        if (spec["order"] if spec["mixer"] == "hlru" else spec["block_size"]) == 1:
            return "diagonal LRU (m=1)"
        return f"H-LRU (order m={spec['order']})" if spec["mixer"] == "hlru" else f"BD-LRU (block size k={spec['block_size']})"
    return {"llama": "Llama (RoPE attention)", "mamba": "Mamba"}.get(config.model_type, config.model_type)


# ---------------------------------------------------------------------------------------- trainer
class Throughput(TrainerCallback):
    """Training tokens/s over the optimizer steps after the first few warm-up ones (evaluation and saving excluded);
    with --max-time, stops training once that many seconds have passed."""

    def __init__(self, tokens_per_step: int, max_time=None, skip: int = 3):
        self.tokens_per_step, self.max_time, self.skip = tokens_per_step, max_time, skip
        self.seconds, self.all_seconds, self.steps, self.start = 0.0, 0.0, 0, time.time()

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
        if self.steps > self.skip:
            self.seconds += seconds
        if self.max_time and time.time() - self.start > self.max_time:
            control.should_training_stop = True

    @property
    def tokens_per_second(self) -> float:
        if self.steps > self.skip:
            return self.tokens_per_step * (self.steps - self.skip) / self.seconds
        return self.tokens_per_step * self.steps / self.all_seconds if self.steps else float("nan")  # a very short run


class CardTrainer(Trainer):
    """Trainer whose model card (README.md, also what push_to_hub uploads) is ours."""

    card_fields: dict = {}

    def create_model_card(self, **kwargs):
        if self.is_world_process_zero():
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
    every --eval-interval steps, the CPU when there is no GPU, logging to --report-to."""
    return TrainingArguments(
        output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=per_device,
        per_device_eval_batch_size=per_device, gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr, lr_scheduler_type=args.lr_scheduler, warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay, adam_beta2=0.99, max_grad_norm=1.0, bf16=args.bf16,
        torch_compile=args.compile, seed=args.seed, eval_strategy="steps", eval_steps=args.eval_interval,
        logging_steps=args.log_interval, save_steps=args.save_interval or args.eval_interval, save_total_limit=2,
        dataloader_drop_last=True, dataloader_pin_memory=torch.cuda.is_available(), ddp_find_unused_parameters=False,
        use_cpu=not torch.cuda.is_available(),  # also what makes torchrun / accelerate launch distribute on CPUs
        report_to=report_to_names(args.report_to),
        push_to_hub=args.push_to_hub, hub_model_id=args.hub_model_id, hub_strategy="end",
    )


def main(argv=None):
    args = parse_args(argv)
    set_seed(args.seed)
    world = int(os.environ.get("WORLD_SIZE", 1))
    is_main = int(os.environ.get("RANK", 0)) == 0
    out = Path(args.output_dir)
    checkpoint = None
    if args.resume:
        checkpoint = get_last_checkpoint(str(out)) if args.resume == "last" else args.resume
        if not checkpoint or not (Path(checkpoint) / "trainer_state.json").is_file():
            sys.exit(f"error: --resume: no checkpoint {'in ' + str(out) if args.resume == 'last' else args.resume} "
                     "(a Trainer checkpoint folder has a trainer_state.json)")
        done = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]
        if done >= args.max_steps:  # Trainer would run one more step and overwrite the model: do nothing instead
            if is_main:
                print(f"{checkpoint} is at step {done}, --max-steps is {args.max_steps}: the run is finished, nothing "
                      f"to do (give a larger --max-steps to train further)")
            return None

    # Corpus and tokenizer. A resumed run reuses the tokenizer saved in its checkpoint.
    corpus = load_corpus(args)
    if checkpoint:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    elif args.tokenizer == "bpe":
        tokenizer = train_bpe_tokenizer(corpus["train"], args.vocab_size)
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
        tokenizer.padding_side, tokenizer.model_max_length = "left", 1 << 30
    data = tokenize_into_blocks(corpus, tokenizer, args.seq_len)
    val_chars = sum(len(t) for t in corpus["validation"]["text"])
    val_tokens_per_char = len(data["validation"]) * args.seq_len / max(val_chars, 1)
    if len(data["train"]) < args.batch_size or len(data["validation"]) == 0:
        sys.exit(f"error: the corpus is too small: {len(data['train'])} training / {len(data['validation'])} validation "
                 f"blocks of {args.seq_len} tokens (need >= --batch-size {args.batch_size} and >= 1)")
    eval_data = data["validation"]
    per_device = args.batch_size // (world * args.grad_accum)
    if args.eval_batches:  # a fixed prefix of the validation blocks, so evaluations are comparable
        eval_data = eval_data.select(range(min(len(eval_data), args.eval_batches * per_device * world)))

    # Model: from the checkpoint's config when resuming, else from the flags.
    config = AutoConfig.from_pretrained(checkpoint) if checkpoint else model_config(args, tokenizer)
    model = AutoModelForCausalLM.from_config(config)
    n_params = sum(p.numel() for p in model.parameters())
    if args.gradient_checkpointing:  # transformers 5.24 renamed it activation checkpointing
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    if is_main:
        print(f"{describe(config)}: {n_params / 1e6:.2f}M parameters, {config.num_hidden_layers} layers, d={config.hidden_size}, "
              f"vocab {len(tokenizer)}; {len(data['train'])} training / {len(eval_data)} validation blocks of {args.seq_len} tokens")
        out.mkdir(parents=True, exist_ok=True)
        (out / "run_args.json").write_text(json.dumps({k: v for k, v in vars(args).items() if k != "resume"}, indent=1))

    training_args = training_arguments(args, per_device)
    tokens_per_step = args.batch_size * args.seq_len
    throughput = Throughput(tokens_per_step, args.max_time)
    trainer = CardTrainer(model=model, args=training_args, train_dataset=data["train"], eval_dataset=eval_data,
                          processing_class=tokenizer, callbacks=[throughput],
                          data_collator=transformers.default_data_collator)
    train_output = trainer.train(resume_from_checkpoint=checkpoint)

    # Validation loss / perplexity, a sample, and the model folder.
    eval_loss = trainer.evaluate()["eval_loss"]
    metrics = {
        "model": describe(config), "parameters": n_params, "steps": trainer.state.global_step,
        "train_tokens": trainer.state.global_step * tokens_per_step, "eval_loss": eval_loss,
        "eval_perplexity": math.exp(eval_loss), "eval_bits_per_char": eval_loss * val_tokens_per_char / math.log(2),
        "train_tokens_per_second": throughput.tokens_per_second, "train_runtime_s": train_output.metrics["train_runtime"],
        "world_size": world, "fsdp": trainer.is_fsdp_enabled, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "scan_backend": getattr(config, "scan_backend", None), "torch": torch.__version__, "transformers": transformers.__version__,
    }
    if is_main:
        print(f"validation loss {eval_loss:.4f} | perplexity {metrics['eval_perplexity']:.2f} | "
              f"{metrics['eval_bits_per_char']:.3f} bits/char | {metrics['train_tokens_per_second']:.0f} training tokens/s")
    sample = "(no sample: FSDP shards the model over the processes; run scripts/generate.py on the saved folder)"
    if is_main and not trainer.is_fsdp_enabled:
        model.eval()
        torch.manual_seed(args.seed)
        inputs = tokenizer(args.prompt, return_tensors="pt").to(model.device)
        with torch.no_grad():
            sample_ids = model.generate(**inputs, max_new_tokens=args.sample_tokens, do_sample=True, temperature=0.8,
                                        top_k=50, pad_token_id=tokenizer.pad_token_id)
        sample = tokenizer.decode(sample_ids[0], skip_special_tokens=True)
        print(f"--- sample (temperature 0.8, top-k 50) ---\n{sample}\n---")
    metrics["sample"] = sample
    metrics["log_history"] = trainer.state.log_history
    if is_main:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        plot_loss_curve(trainer.state.log_history, out / "loss_curve.png")

    # The model folder: weights, config, tokenizer, remote code (LRNN), metrics, loss curve and README.md, rendered
    # from model_cards/ by CardTrainer.create_model_card. push_to_hub saves it and uploads it (checkpoints excluded).
    trainer.card_fields = dict(
        model_id=args.hub_model_id or out.name, model_type=config.model_type, architecture=describe(config),
        config_json=json.dumps({k: v for k, v in config.to_diff_dict().items() if k not in ("architectures", "auto_map")}, indent=2),
        n_params=f"{n_params / 1e6:.2f}M", dataset=(
            "tinyshakespeare (`scripts/data/tinyshakespeare.txt` of hf_lrnn: 1.1 MB of Shakespeare's plays, "
            "the corpus of Karpathy's char-rnn)"
            if args.data == EMBEDDED_CORPUS else f"`{args.data}`") + (
            f", the last {args.val_fraction:.0%} held out for validation" if args.data == EMBEDDED_CORPUS or Path(args.data).suffix == ".txt" else ""),
        dataset_id=None if Path(args.data).is_file() or args.data == EMBEDDED_CORPUS else args.data,
        tokenizer=(f"byte-level BPE, {len(tokenizer)} tokens, trained on the training split" if args.tokenizer == "bpe" else args.tokenizer),
        seq_len=args.seq_len, steps=metrics["steps"], batch_size=args.batch_size, train_tokens=metrics["train_tokens"],
        lr=args.lr, lr_scheduler=args.lr_scheduler, precision="bf16" if args.bf16 else "fp32", world_size=world,
        eval_loss=f"{eval_loss:.4f}", eval_perplexity=f"{metrics['eval_perplexity']:.2f}",
        eval_bits_per_char=f"{metrics['eval_bits_per_char']:.3f}", tokens_per_second=f"{metrics['train_tokens_per_second']:.0f}",
        device=metrics["device"], trust_remote_code=config.model_type == "lrnn", prompt=args.prompt, sample=sample,
        # a plain tokenizer.json loads with the stock class, which (unlike AutoTokenizer) never reads config.json
        tokenizer_class="PreTrainedTokenizerFast" if type(tokenizer) is PreTrainedTokenizerFast else "AutoTokenizer",
        command="python scripts/train.py " + " ".join(sys.argv[1:] if argv is None else argv),
        versions=f"torch {torch.__version__}, transformers {transformers.__version__}, hf_lrnn {hf_lrnn.__version__}",
    )
    if args.push_to_hub:  # every process: saving may gather shards
        trainer.push_to_hub(commit_message=f"{describe(config)} trained on {args.data}")
    else:
        trainer.save_model()
        trainer.create_model_card()
    if is_main:
        print(f"model, tokenizer and model card saved to {out}/"
              + (f" and pushed to https://huggingface.co/{trainer.hub_model_id}" if args.push_to_hub else ""))
    return metrics


if __name__ == "__main__":
    main()
