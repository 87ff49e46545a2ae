"""Training on documents of mixed length: packed rows against padding to the longest document, the LRNNs beside
a Llama of the same size, in tokens/s of real (non-padding) tokens, on one GPU.

    python -m benchmarks.model.mixed_length --out mixed_length_h100.json     # CUDA, Triton backend, ~148M models
    python -m benchmarks.model.mixed_length --smoke --out /tmp/m.json        # tiny, CPU, float64, torch backend

Every layout trains on the same documents: ``--batch`` rows of 4,096 tokens of documents of random lengths in
[--min-doc, --max-doc] (seeded; the last document of each row is cut to fit the row), so the real tokens per
step are equal. The padded batch holds about 2.5 times as many tokens: 4 rows (the default) hold 11 documents,
padded to 11 x 3,706; 8 rows (22 documents, 83K padded tokens) were not tried (estimated at about 75 GB of
activations and logits for the padded layout). A training step is forward,
backward and an AdamW step (bf16 autocast on CUDA), from the same initial weights in every layout:

- packed: rows of 4,096 tokens, ``position_ids`` restarting at 0 at every document, no attention mask,
  labels -100 at each document's first token (what ``DataCollatorWithFlattening`` gives);
- padded: one document a row, right-padded to the longest, ``attention_mask`` 0 and labels -100 on the padding.

Both compute the same loss (the mean next-token loss over the same targets; asserted to 1e-10 in --smoke, float64).
Llama is transformers' ``LlamaForCausalLM`` with SDPA attention, sized to the H-LRU model's parameter count
(``benchmarks.model.bench.llama_config``); for restarting ``position_ids`` without an attention mask transformers
builds a block-diagonal causal mask (``masking_utils.find_packed_sequence_indices``), which the record's
``llama_packed_mask_detected`` confirms. Recorded per model and layout: real tokens/s (median of ``--steps``
timed steps after ``--warmup``), padded tokens per step, peak GPU memory and the first step's loss.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM
from transformers.masking_utils import find_packed_sequence_indices

from benchmarks.model.bench import llama_config
from benchmarks.model.packing import (FULL, SMOKE, add_document_length_args, check_document_lengths, document_lengths,
                                      packed_position_ids)
from benchmarks.models import MODELS, is_lrnn, lrnn_fields
from benchmarks.outputs import add_overwrite_flag, refuse_existing
from benchmarks.synthetic.run import environment
from hf_lrnn import LRNNConfig, LRNNForCausalLM

LAYOUTS = ("packed", "padded")


def packed_batch(tokens: torch.Tensor, rows: list) -> dict:
    """Rows of documents back to back (``DataCollatorWithFlattening``'s form): input_ids, position_ids restarting
    at 0 and labels with -100 at each document's first token."""
    position_ids = packed_position_ids(rows, tokens.device)
    return dict(input_ids=tokens, position_ids=position_ids, labels=tokens.masked_fill(position_ids == 0, -100))


def padded_batch(tokens: torch.Tensor, rows: list, pad_token_id: int) -> dict:
    """The same documents one a row, right-padded to the longest: input_ids, attention_mask and labels (-100 on
    the padding)."""
    documents = [tokens[b, start:start + n] for b, row in enumerate(rows)
                 for start, n in zip([sum(row[:i]) for i in range(len(row))], row)]
    longest = max(len(d) for d in documents)
    input_ids = torch.full((len(documents), longest), pad_token_id, dtype=tokens.dtype, device=tokens.device)
    attention_mask = torch.zeros_like(input_ids)
    for i, d in enumerate(documents):
        input_ids[i, :len(d)] = d
        attention_mask[i, :len(d)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def build_model(label: str, size: dict, smoke: bool, device: torch.device):
    """The model of ``label`` ("llama" or an LRNN label of benchmarks.models), seeded, in training mode: float64
    and the torch backend in the smoke mode, float32 weights (bf16 autocast) and the Triton backend on CUDA."""
    torch.manual_seed(0)
    if label == "llama":
        model = LlamaForCausalLM(llama_config(size["vocab"], size["hidden"], size["layers"]))
    else:
        model = LRNNForCausalLM(LRNNConfig(vocab_size=size["vocab"], hidden_size=size["hidden"],
                                           num_hidden_layers=size["layers"], pad_token_id=0,
                                           scan_backend="torch" if smoke else "triton",
                                           **lrnn_fields(label, size["hidden"])))
    return model.to(device, torch.float64 if smoke else torch.float32).train()


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of token t + 1 from the logits at t over the labels that are not -100 (transformers'
    causal-LM loss, in float32, or float64 for float64 logits)."""
    logits = logits[:, :-1].flatten(0, 1)
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), labels[:, 1:].flatten(),
                           ignore_index=-100)


def train_steps(model, batch: dict, initial: dict, steps: int, device: torch.device) -> dict:
    """``steps`` training steps (forward, backward, AdamW) on ``batch`` from the weights ``initial``: the first
    step's loss, the seconds of each step and the peak memory (CUDA)."""
    model.load_state_dict(initial)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds, first_loss = [], None
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            loss = next_token_loss(model(**inputs, use_cache=False).logits, batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
        first_loss = loss.item() if first_loss is None else first_loss
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    del optimizer
    return {"first_loss": first_loss, "seconds": seconds, "peak_gib": peak}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.model.mixed_length", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["hlru_m2", "bdlru_k4", "llama"],
                   help="LRNN labels of benchmarks.models, and/or llama")
    p.add_argument("--batch", type=int, default=4, help="packed rows of 4,096 tokens per step (smoke: 2 of 64)")
    add_document_length_args(p)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per layout (Triton compiles here)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per layout")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, float64, torch backend")
    p.add_argument("--out", required=True)
    add_overwrite_flag(p)
    a = p.parse_args(argv)
    refuse_existing(p, [a.out], a.overwrite)
    check_document_lengths(p, a)
    if a.warmup < 0 or a.steps < 1 or a.batch < 1:
        p.error(f"need --warmup >= 0, --steps >= 1 and --batch >= 1, got {a.warmup}, {a.steps} and {a.batch}")
    unknown = [label for label in a.models if label != "llama" and (label not in MODELS or not is_lrnn(label))]
    if unknown:
        p.error(f"--models: {unknown} are neither llama nor LRNN labels of benchmarks.models")
    size, device = (SMOKE, torch.device("cpu")) if a.smoke else ({**FULL, "batch": a.batch}, torch.device("cuda"))
    if not a.smoke and not torch.cuda.is_available():
        p.error("no CUDA device: run with --smoke on a CPU")
    low, high = (4, 24) if a.smoke else (a.min_doc, a.max_doc)
    gen = torch.Generator().manual_seed(0)
    rows = [document_lengths(size["seq_len"], low, high, gen) for _ in range(size["batch"])]
    tokens = torch.randint(1, size["vocab"], (size["batch"], size["seq_len"]), generator=gen).to(device)
    batches = {"packed": packed_batch(tokens, rows), "padded": padded_batch(tokens, rows, pad_token_id=0)}
    real_tokens = tokens.numel()
    record = {"env": environment(), "size": size, "doc_lengths": [low, high], "rows": rows,
              "documents": sum(map(len, rows)), "real_tokens_per_step": real_tokens,
              "padded_tokens_per_step": batches["padded"]["input_ids"].numel(), "warmup": a.warmup, "steps": a.steps,
              "llama_packed_mask_detected": find_packed_sequence_indices(batches["packed"]["position_ids"]) is not None,
              "models": {}}
    for label in a.models:
        model = build_model(label, size, a.smoke, device)
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        result = {"params": sum(p.numel() for p in model.parameters())}
        for layout in LAYOUTS:
            run = train_steps(model, batches[layout], initial, a.warmup + a.steps, device)
            result[layout] = {"real_tokens_per_s": round(real_tokens / statistics.median(run["seconds"][a.warmup:])),
                              "first_loss": run["first_loss"], "peak_gib": run["peak_gib"]}
        packed, padded = result["packed"], result["padded"]
        result["packed_over_padded"] = round(packed["real_tokens_per_s"] / padded["real_tokens_per_s"], 4)
        loss_gap = abs(packed["first_loss"] - padded["first_loss"])
        result["first_loss_gap"] = loss_gap
        if a.smoke and loss_gap > 1e-10:
            raise AssertionError(f"{label}: packed and padded losses differ by {loss_gap:.3g} (float64): "
                                 "not the same work")
        record["models"][label] = result
        print(label, json.dumps(result), flush=True)
        with open(a.out, "w") as f:  # after every model, so that a failure later keeps what was measured
            json.dump(record, f, indent=1)
        del model, initial
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
