"""The model benchmark's figure and tables (medians of repeats) from model_bench.json files; ``FILE:decode,train``
takes only those sections of a file.

    python -m benchmarks.model.plot benchmarks/results/model/model_bench.json --out benchmarks/results/model"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from benchmarks.models import display_name

COLORS = {"hlru_m2": "tab:blue", "bdlru_k4": "tab:orange", "llama": "tab:green"}


def load(paths):
    """Measured rows of every file (not-run and failed ones left out), and the files' metadata."""
    rows, meta = [], []
    for spec in paths:
        path, _, sections = spec.partition(":")
        data = json.loads(Path(path).read_text())
        meta.append({"file": Path(path).name, "sections": sections or "all",
                     **{k: data.get(k) for k in ("device", "torch", "date")}})
        rows += [{**r, "name": display_name(r["model"], data["size"]["hidden"])} for r in data["rows"]
                 if r.get("status") is None and (not sections or r["section"] in sections.split(","))]
    return rows, meta


def medians(rows, section, key, value):
    """{key(row): median of row[value]} over the rows of ``section``."""
    groups = defaultdict(list)
    for r in rows:
        if r["section"] == section:
            groups[key(r)].append(r[value])
    return {k: statistics.median(v) for k, v in groups.items()}


def tables(rows) -> str:
    """Markdown tables: decode (ms per token and tokens/s), prefill (ms), training (tokens/s, MFU, peak GiB)."""
    lines, names = [], {r["model"]: r["name"] for r in rows}
    decode_key = lambda r: (r["model"], r["mode"], r["batch"], r["context"])  # noqa: E731
    decode = medians(rows, "decode", decode_key, "ms_per_token")
    counts = Counter(decode_key(r) for r in rows if r["section"] == "decode")
    if decode:
        lines += ["| model | mode | batch x context | ms per token (median) | tokens/s | runs |", "|---|---|---|---|---|---|"]
        for (model, mode, batch, context), ms in sorted(decode.items()):
            lines.append(f"| {names[model]} | {mode} | {batch} x {context:,} | {ms:.3f} | {1e3 * batch / ms:,.0f} | "
                         f"{counts[(model, mode, batch, context)]} |")
        lines.append("")
    prefill = medians(rows, "prefill", lambda r: (r["model"], r["context"]), "ms")
    if prefill:
        lengths = sorted({c for _, c in prefill})
        lines += ["| model | " + " | ".join(f"prefill ms, T = {c:,}" for c in lengths) + " |",
                  "|---|" + "---|" * len(lengths)]
        for model in dict.fromkeys(m for m, _ in prefill):
            cells = [f"{prefill[(model, c)]:.2f}" if (model, c) in prefill else "-" for c in lengths]
            lines.append(f"| {names[model]} | " + " | ".join(cells) + " |")
        lines.append("")
    train = [r for r in rows if r["section"] == "train"]
    if train:
        lines += ["| model | mode | T | tokens/s | MFU | peak GiB |", "|---|---|---|---|---|---|"]
        for r in sorted(train, key=lambda r: (r["seq_len"], r["model"], r["mode"])):
            peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
            lines.append(f"| {names[r['model']]} | {r['mode']} | {r['seq_len']:,} | {r['tokens_per_s']:,.0f} | "
                         f"{100 * r['mfu']:.1f}% | {peak} |")
    return "\n".join(lines)


def figure(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    names = {r["model"]: r["name"] for r in rows}
    decode = medians(rows, "decode", lambda r: (r["model"], r["mode"], r["batch"], r["context"]), "ms_per_token")
    ax = axes[0]
    for model, mode in sorted({(m, mo) for m, mo, b, _ in decode if b == 1}):
        points = sorted((c, ms) for (m, mo, b, c), ms in decode.items() if (m, mo, b) == (model, mode, 1))
        ax.plot(*zip(*points), marker="o", linestyle="-" if mode == "compiled" else "--", color=COLORS.get(model),
                label=f"{names[model]}, {mode}")
    ax.set(xscale="log", xlabel="context (tokens)", ylabel="ms per token (median)", title="generate(), batch 1")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    prefill = medians(rows, "prefill", lambda r: (r["model"], r["context"]), "ms")
    ax = axes[1]
    for model in dict.fromkeys(m for m, _ in prefill):
        points = sorted((c, ms) for (m, c), ms in prefill.items() if m == model)
        ax.plot(*zip(*points), marker="o", color=COLORS.get(model), label=names[model])
    lengths = sorted({c for _, c in prefill})
    ax.set(xscale="log", yscale="log", xlabel="prompt length T", ylabel="ms (median)", title="prefill, batch 1")
    ax.set_xticks(lengths, [f"{c:,}" for c in lengths], minor=False)
    ax.set_xticks([], minor=True)
    ax.legend(fontsize=7)
    train = [r for r in rows if r["section"] == "train"]
    ax = axes[2]
    bars = sorted({(r["model"], r["mode"]) for r in train})
    lengths = sorted({r["seq_len"] for r in train})
    width = 0.8 / max(1, len(bars))
    for i, (model, mode) in enumerate(bars):
        values = {r["seq_len"]: r["tokens_per_s"] / 1e3 for r in train if (r["model"], r["mode"]) == (model, mode)}
        ax.bar([j + i * width for j, t in enumerate(lengths) if t in values], [values[t] for t in lengths if t in values],
               width, color=COLORS.get(model), alpha={"compiled": 1.0, "compiled_fused_ce": 0.7, "eager": 0.4}.get(mode, 1.0),
               edgecolor="black", label=f"{names[model]}, {mode}")
    ax.set_xticks([j + width * (len(bars) - 1) / 2 for j in range(len(lengths))], [f"T={t:,}" for t in lengths])
    ax.set(ylabel="thousand tokens/s", title="training, 65,536 tokens per step")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.model.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--out", default="benchmarks/results/model")
    args = p.parse_args(argv)
    rows, meta = load(args.files)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure(rows, out / "model_bench.png")
    text = "\n".join(f"<!-- {m['file']} ({m['sections']}): {m['device']}, torch {m['torch']}, {m['date']} -->" for m in meta)
    text += "\n\n" + tables(rows) + "\n"
    (out / "model_bench.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
