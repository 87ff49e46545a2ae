"""Packed rows on one GPU: each row holds documents back to back with ``position_ids`` restarting at 0 at every
document (what transformers' ``DataCollatorWithFlattening`` passes). Two checks, both models of ``--models``:

    python -m benchmarks.model.packing --out packing_h100.json       # CUDA, Triton backend
    python -m benchmarks.model.packing --smoke --out /tmp/p.json     # tiny, CPU, torch backend, float64

- equality: the packed rows (each built by ``DataCollatorWithFlattening``) logits and the gradients of the summed next-token loss (never across a document
  boundary) against the same documents run one by one (fp32 on the GPU, float64 in the smoke mode); the
  largest relative errors are recorded.
- speed: forward + backward (bf16 autocast) of a (B, T) batch of documents of random lengths in
  [--min-doc, --max-doc], packed, against the same batch with ``position_ids=None`` (one document a row):
  tokens/s of both and their ratio (the target: packed >= 0.97 x unpacked), median of ``--repeats`` timings.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import DataCollatorWithFlattening

from benchmarks.models import MODELS, is_lrnn, lrnn_fields
from benchmarks.outputs import add_overwrite_flag, refuse_existing
from benchmarks.synthetic.run import environment
from hf_lrnn import LRNNConfig, LRNNForCausalLM

FULL = dict(vocab=32000, hidden=768, layers=12, batch=8, seq_len=4096, check_batch=2, check_len=1024, check_layers=2)
SMOKE = dict(vocab=97, hidden=32, layers=2, batch=2, seq_len=64, check_batch=2, check_len=40, check_layers=2)


def document_lengths(total: int, low: int, high: int, gen: torch.Generator) -> list:
    """Random lengths in [low, high] that fill ``total`` exactly (the last one cut to fit)."""
    lengths = []
    while sum(lengths) < total:
        lengths.append(min(int(torch.randint(low, high + 1, (1,), generator=gen)), total - sum(lengths)))
    return lengths


def add_document_length_args(p: argparse.ArgumentParser) -> None:
    """--min-doc and --max-doc: the range of the random document lengths (``document_lengths``)."""
    p.add_argument("--min-doc", type=int, default=100)
    p.add_argument("--max-doc", type=int, default=4000)


def check_document_lengths(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    if a.min_doc < 1 or a.max_doc < a.min_doc:
        p.error(f"need 1 <= --min-doc <= --max-doc, got {a.min_doc} and {a.max_doc}")


def packed_position_ids(rows: list, device) -> torch.Tensor:
    """(B, T) position ids restarting at 0 at every document of every row."""
    return torch.stack([torch.cat([torch.arange(n) for n in row]) for row in rows]).to(device)


def summed_loss(logits: torch.Tensor, ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Sum of next-token cross-entropies whose target lies in the same document (position_ids != 0 there)."""
    targets = torch.where(position_ids[:, 1:] == 0, -100, ids[:, 1:])
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")


def check_equality(model, rows, vocab, gen, device) -> dict:
    """Largest relative errors of the packed rows' logits and parameter gradients against document by document;
    each row is built by transformers' ``DataCollatorWithFlattening`` from its documents."""
    documents = [[torch.randint(vocab, (n,), generator=gen).tolist() for n in row] for row in rows]
    batches = [DataCollatorWithFlattening()([{"input_ids": doc} for doc in row]) for row in documents]
    ids = torch.cat([batch["input_ids"] for batch in batches]).to(device)
    pos = torch.cat([batch["position_ids"] for batch in batches]).to(device)
    if not torch.equal(pos, packed_position_ids(rows, device)):
        raise RuntimeError("DataCollatorWithFlattening's position_ids do not restart at the documents' starts")
    model.zero_grad()
    packed = model(ids, position_ids=pos).logits
    summed_loss(packed, ids, pos).backward()
    packed_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logit_error = 0.0
    for b, row in enumerate(rows):
        start = 0
        for n in row:
            doc = ids[b:b + 1, start:start + n]
            alone = model(doc).logits
            ref, got = packed[b:b + 1, start:start + n].detach(), alone.detach()
            logit_error = max(logit_error, float((ref - got).abs().max() / got.abs().max().clamp_min(1e-30)))
            summed_loss(alone, doc, torch.arange(n, device=device)[None]).backward()
            start += n
    grad_error = max(float((g - p.grad).norm() / p.grad.norm().clamp_min(1e-30))
                     for g, p in zip(packed_grads, model.parameters()) if p.grad is not None)
    return {"rows": rows, "collator": "transformers.DataCollatorWithFlattening", "logits_max_rel_error": logit_error, "grads_max_rel_error": grad_error}


def tokens_per_s(model, ids, position_ids, repeats: int, device) -> float:
    """Median tokens/s of forward + backward (bf16 autocast on CUDA) over ``repeats`` timed steps after two warm-ups."""
    times = []
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            loss = summed_loss(model(ids, position_ids=position_ids).logits, ids,
                               position_ids if position_ids is not None else torch.ones_like(ids))
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    return ids.numel() / statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.model.packing", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["hlru_m2", "bdlru_k4"], help="LRNN labels of benchmarks.models")
    add_document_length_args(p)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (torch backend, float64 check)")
    p.add_argument("--out", required=True)
    add_overwrite_flag(p)
    a = p.parse_args(argv)
    refuse_existing(p, [a.out], a.overwrite)
    check_document_lengths(p, a)
    if a.repeats < 1:
        p.error(f"need --repeats >= 1, got {a.repeats}")
    unknown = [label for label in a.models if label not in MODELS or not is_lrnn(label)]
    if unknown:
        p.error(f"--models: {unknown} are not LRNN labels of benchmarks.models ({', '.join(l for l in MODELS if is_lrnn(l))})")
    size, device = (SMOKE, torch.device("cpu")) if a.smoke else (FULL, torch.device("cuda"))
    if not a.smoke and not torch.cuda.is_available():
        p.error("no CUDA device: run with --smoke on a CPU")
    low, high = (1, 12) if a.smoke else (a.min_doc, a.max_doc)
    record = {"env": environment(), "size": size, "doc_lengths": [low, high], "models": {}}
    for label in a.models:
        gen = torch.Generator().manual_seed(0)
        config = dict(vocab_size=size["vocab"], hidden_size=size["hidden"], scan_backend="torch" if a.smoke else "triton",
                      **lrnn_fields(label, size["hidden"]))
        check_model = LRNNForCausalLM(LRNNConfig(num_hidden_layers=size["check_layers"], **config)).to(
            device, torch.float64 if a.smoke else torch.float32)
        check_rows = [document_lengths(size["check_len"], low, min(high, size["check_len"] // 3), gen)
                      for _ in range(size["check_batch"])]
        result = {"equality": check_equality(check_model, check_rows, size["vocab"], gen, device)}
        del check_model
        model = LRNNForCausalLM(LRNNConfig(num_hidden_layers=size["layers"], **config)).to(device)
        rows = [document_lengths(size["seq_len"], low, high, gen) for _ in range(size["batch"])]
        ids = torch.randint(size["vocab"], (size["batch"], size["seq_len"]), generator=gen).to(device)
        unpacked = tokens_per_s(model, ids, None, a.repeats, device)
        packed = tokens_per_s(model, ids, packed_position_ids(rows, device), a.repeats, device)
        result["speed"] = {"documents": sum(map(len, rows)), "unpacked_tokens_per_s": round(unpacked),
                           "packed_tokens_per_s": round(packed), "packed_over_unpacked": round(packed / unpacked, 4)}
        record["models"][label] = result
        print(label, json.dumps(result))
        del model
    with open(a.out, "w") as f:
        json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
