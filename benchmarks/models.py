"""The one model table of the benchmarks: a label for every model, what it is, and how to print it.

``MODELS[label]``: ``kind`` ("lrnn", else the baseline's kind for ``benchmarks.synthetic.baselines.build_model``)
and, for "lrnn", the LRNNConfig fields ``mixer``, ``order`` / ``block_size`` and ``width_factor`` (N / d, default 1).
BD-LRU's N is the multiple of k nearest ``width_factor x d`` (:func:`recurrent_size`; 130 for k = 5 at d = 128).

    LRNNConfig(hidden_size=128, **lrnn_fields("bdlru_k5", 128))   # mixer="bdlru", block_size=5, recurrent_size=130"""
from __future__ import annotations

MODELS = {
    "diag": dict(kind="lrnn", mixer="hlru", order=1),  # the diagonal selective LRU (H-LRU m = 1 = BD-LRU k = 1)
    **{f"hlru_m{m}": dict(kind="lrnn", mixer="hlru", order=m) for m in (2, 3, 4)},
    **{f"bdlru_k{k}": dict(kind="lrnn", mixer="bdlru", block_size=k) for k in (2, 3, 4, 5, 6, 8)},
    **{f"bdlru_k{k}_x4": dict(kind="lrnn", mixer="bdlru", block_size=k, width_factor=4) for k in (4, 5)},
    "lstm": dict(kind="lstm"),
    "llama": dict(kind="llama"),
    "mamba": dict(kind="mamba"),
    "mamba2": dict(kind="mamba2"),
    "deltanet": dict(kind="deltanet"),
}
BASELINE_NAMES = {"lstm": "LSTM", "llama": "Llama", "mamba": "Mamba", "mamba2": "Mamba-2", "deltanet": "DeltaNet"}


def model_entry(label: str) -> dict:
    """``MODELS[label]``, or a ValueError naming the known labels."""
    if label not in MODELS:
        raise ValueError(f"unknown model {label!r}; known: {', '.join(MODELS)}")
    return MODELS[label]


def is_lrnn(label: str) -> bool:
    """Whether ``label`` is one of this project's models (H-LRU / BD-LRU / diagonal LRU)."""
    return model_entry(label)["kind"] == "lrnn"


def recurrent_size(label: str, hidden_size: int) -> int:
    """The recurrent width N of an LRNN model at model width d = ``hidden_size``: ``width_factor x d`` for
    H-LRU, and for BD-LRU the multiple of k nearest to it (ties upwards)."""
    entry = model_entry(label)
    if entry["kind"] != "lrnn":
        raise ValueError(f"{label!r} is a baseline; only the LRNN models have a recurrent width")
    width = entry.get("width_factor", 1) * hidden_size
    k = entry.get("block_size", 1) if entry["mixer"] == "bdlru" else 1
    return k * max(1, int(width / k + 0.5))


def lrnn_fields(label: str, hidden_size: int) -> dict:
    """The :class:`hf_lrnn.LRNNConfig` fields of an LRNN label at width ``hidden_size``: mixer, order or
    block_size, and recurrent_size."""
    entry = model_entry(label)
    fields = {key: value for key, value in entry.items() if key in ("mixer", "order", "block_size")}
    return {**fields, "recurrent_size": recurrent_size(label, hidden_size)}


def display_name(label: str, hidden_size: int = 128) -> str:
    """The name of a model in tables and plots, e.g. "BD-LRU k=5 (N=130)", "H-LRU m=2", "diagonal LRU",
    "Mamba-2" (N is given for BD-LRU, whose width is rounded to a multiple of k, at ``hidden_size``)."""
    entry = model_entry(label)
    if entry["kind"] != "lrnn":
        return BASELINE_NAMES[entry["kind"]]
    if label == "diag":
        return "diagonal LRU"
    if entry["mixer"] == "hlru":
        return f"H-LRU m={entry['order']}"
    return f"BD-LRU k={entry['block_size']} (N={recurrent_size(label, hidden_size)})"
