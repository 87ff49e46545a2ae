"""Synthetic tasks of the H-LRU / BD-LRU paper (MAD-style), deterministic by seed.

Every task gives :class:`TaskData`: ``inputs`` (n, T) int64 ids in [0, vocab_size) and ``targets`` (n, T'), IGNORE
(-100) where no target is set. Sequence tasks: T' = T, the target at t is the output after reading inputs[:, :t+1].
Compression (``probe``): the T' targets are decoded from the last hidden state by a probe head.

- ``selective_copy``: vocab 16 (0 blank, 1 copy marker), length 128: 16 data tokens among the first 112, then 16
  markers at which they are output in order. 12,800 train / 1,280 test.
- ``compression``: 31 data tokens (1..15) and the compression token 0; all 31 decoded. 12,800 / 1,280.
- ``recall`` (MAD's multi-query recall): keys 0..V/2-1, values V/2..V-1, a random map per sequence; inputs the
  first seq_len - 1 tokens; training targets the next token everywhere, test targets the value at every key
  seen before (the last pair repeats one). Length 128, vocab 16, 12,800 / 1,280, disjoint.
- ``s3``, ``s4``, ``s5``, ``a5``: word problems; the target is the prefix product p_t = g_t o p_{t-1}, with
  (g o p)(i) = g(p(i)). Length 16, 100,000 / 1,280, disjoint.
- ``parity``, ``mod_count``: binary inputs, target the count of ones so far mod 2 or 5. Length 32, 100,000 / 1,280."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable, Dict, Tuple

import numpy as np
import torch

IGNORE = -100


@dataclass
class TaskSpec:
    """Sizes of one task: vocabulary, sequence length, set sizes, and the task's own ``params``."""

    name: str
    vocab_size: int
    seq_len: int
    num_train: int
    num_test: int
    probe: bool = False  # targets are decoded from the last hidden state (compression)
    params: Dict = field(default_factory=dict)


@dataclass
class TaskData:
    """A task's spec and its train and test sets (inputs and targets, see the module docstring)."""

    spec: TaskSpec
    train_inputs: torch.Tensor
    train_targets: torch.Tensor
    test_inputs: torch.Tensor
    test_targets: torch.Tensor

    @property
    def num_targets(self) -> int:
        """Length of the target sequences (T for sequence tasks, the probe length for compression)."""
        return self.train_targets.shape[1]


# ----------------------------------------------------------------------------------------- groups
def permutation_group(name: str) -> Tuple[np.ndarray, np.ndarray]:
    """The elements of S_n or A_5 as an (n_elems, n) array of images, and the Cayley table
    ``table[g, p] = index of g o p`` (apply p first, then g). Identity is element 0."""
    if name in ("s3", "s4", "s5"):
        n = int(name[1])
        perms = list(itertools.permutations(range(n)))
    elif name == "a5":
        perms = [p for p in itertools.permutations(range(5)) if permutation_sign(p) == 1]
    else:
        raise ValueError(f"unknown group {name!r}")
    elems = np.array(perms, dtype=np.int64)
    index = {tuple(p): i for i, p in enumerate(perms)}
    # (g o p)(i) = g[p[i]]
    table = np.empty((len(perms), len(perms)), dtype=np.int64)
    for gi, g in enumerate(elems):
        composed = g[elems]  # row j: g o p_j
        table[gi] = [index[tuple(c)] for c in composed]
    return elems, table


def permutation_sign(p) -> int:
    """+1 for an even permutation (an even number of inversions i < j, p[i] > p[j]), -1 for an odd one."""
    return -1 if sum(p[i] > p[j] for i, j in itertools.combinations(range(len(p)), 2)) % 2 else 1


def prefix_products(seq: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(n, T) group-element ids -> (n, T) running products p_t = g_t o ... o g_0."""
    out = np.empty_like(seq)
    acc = seq[:, 0].copy()
    out[:, 0] = acc
    for t in range(1, seq.shape[1]):
        acc = table[seq[:, t], acc]
        out[:, t] = acc
    return out


# ------------------------------------------------------------------------------------- generators
def _disjoint_split(sample: Callable[[np.random.Generator, int], np.ndarray], rng, n_train, n_test):
    """Draw test then train sequences, re-drawing any train sequence that occurs in the test set."""
    test = sample(rng, n_test)
    test_keys = {row.tobytes() for row in test}
    train = sample(rng, n_train)
    for _ in range(100):
        clash = np.array([row.tobytes() in test_keys for row in train])
        if not clash.any():
            break
        train[clash] = sample(rng, int(clash.sum()))
    else:  # pragma: no cover - only for tiny spaces where disjointness is impossible
        raise RuntimeError("could not draw a training set disjoint from the test set")
    return train, test


def gen_selective_copy(rng, n, seq_len=128, num_copy=16, vocab_size=16):
    """(x, y) of selective copying: ``num_copy`` data tokens among blanks, then as many copy markers."""
    blank, copy = 0, 1
    ctx = seq_len - num_copy
    data = rng.integers(2, vocab_size, size=(n, num_copy))
    # random positions among the first ctx, kept in order
    pos = np.sort(np.argsort(rng.random((n, ctx)), axis=1)[:, :num_copy], axis=1)
    x = np.full((n, seq_len), blank, dtype=np.int64)
    np.put_along_axis(x, pos, data, axis=1)
    x[:, ctx:] = copy
    y = np.full((n, seq_len), IGNORE, dtype=np.int64)
    y[:, ctx:] = data
    return x, y


def gen_compression(rng, n, seq_len=32, vocab_size=16):
    """(x, y) of compression: seq_len - 1 data tokens and the compression token 0; y the data tokens."""
    data = rng.integers(1, vocab_size, size=(n, seq_len - 1))
    x = np.concatenate([data, np.zeros((n, 1), dtype=np.int64)], axis=1)
    return x, data.astype(np.int64)


def gen_recall_tokens(rng, n, seq_len=128, vocab_size=16):
    """(n, seq_len) token streams of MAD's multi-query recall (see the module docstring), before the shift
    into inputs and targets: ``seq_len / 2 - 1`` random (key, value) pairs, then a pair whose key was seen."""
    if seq_len % 2 or seq_len < 4:
        raise ValueError(f"recall: seq_len must be even and >= 4, got {seq_len}")
    if vocab_size % 2 or vocab_size < 4:
        raise ValueError(f"recall: vocab_size must be even and >= 4 (half keys, half values), got {vocab_size}")
    num_keys = vocab_size // 2
    pairs = seq_len // 2
    mapping = rng.integers(num_keys, vocab_size, size=(n, num_keys))  # key -> value token
    keys = np.empty((n, pairs), dtype=np.int64)
    keys[:, :-1] = rng.integers(0, num_keys, size=(n, pairs - 1))
    seen = np.zeros((n, num_keys), dtype=bool)
    np.put_along_axis(seen, keys[:, :-1], True, axis=1)
    scores = np.where(seen, rng.random((n, num_keys)), -1.0)
    keys[:, -1] = scores.argmax(1)  # the probe: a key drawn uniformly from those already seen
    tokens = np.empty((n, seq_len), dtype=np.int64)
    tokens[:, 0::2], tokens[:, 1::2] = keys, np.take_along_axis(mapping, keys, axis=1)
    return tokens


def recall_targets(tokens):
    """(inputs, training targets, test targets) of recall token streams (n, L): inputs ``tokens[:, :-1]``;
    training targets the next token everywhere; test targets, at the position of every key seen at an
    earlier pair, its value (what follows it), IGNORE elsewhere."""
    n, length = tokens.shape
    keys, values = tokens[:, 0::2], tokens[:, 1::2]
    seen = np.zeros((n, int(keys.max(initial=0)) + 1), dtype=bool)
    test = np.full((n, length - 1), IGNORE, dtype=np.int64)
    rows = np.arange(n)
    for i in range(keys.shape[1]):
        k = keys[:, i]
        hit = seen[rows, k]
        test[hit, 2 * i] = values[hit, i]
        seen[rows, k] = True
    return tokens[:, :-1], tokens[:, 1:], test


# ----------------------------------------------------------------------------------------- tasks
PERMUTATION_TASKS = ("s3", "s4", "s5", "a5")
TASKS = ("selective_copy", "compression", "recall", "s3", "s4", "s5", "a5", "parity", "mod_count")
ALIASES = {"scopy": "selective_copy", "copy": "selective_copy", "compress": "compression", "mqar": "recall",
           "zn": "mod_count", "mod5": "mod_count"}


def default_spec(task: str, **overrides) -> TaskSpec:
    """The paper's (or MAD's) default sizes for ``task``; ``overrides`` change any field of
    :class:`TaskSpec` or any of the task's ``params`` (a value of None keeps the default). For parity and
    mod_count the vocabulary size follows from the modulus."""
    task = ALIASES.get(task, task)
    if task == "selective_copy":
        spec = TaskSpec(task, 16, 128, 12_800, 1_280, params={"num_copy": 16})
    elif task == "compression":
        spec = TaskSpec(task, 16, 32, 12_800, 1_280, probe=True)
    elif task == "recall":
        spec = TaskSpec(task, 16, 128, 12_800, 1_280)
    elif task in PERMUTATION_TASKS:
        size = {"s3": 6, "s4": 24, "s5": 120, "a5": 60}[task]
        spec = TaskSpec(task, size, 16, 100_000, 1_280)
    elif task in ("parity", "mod_count"):
        spec = TaskSpec(task, 5 if task == "mod_count" else 2, 32, 100_000, 1_280,
                        params={"modulus": 5 if task == "mod_count" else 2})
    else:
        raise ValueError(f"unknown task {task!r}; known: {TASKS}")
    for key, value in overrides.items():
        if value is None:
            continue
        if key in spec.params:
            spec.params[key] = value
        elif key in ("name", "params") or not hasattr(spec, key):
            raise ValueError(f"task {task!r} has no setting {key!r}; it takes seq_len, num_train, num_test, "
                             f"vocab_size, probe{''.join(', ' + k for k in spec.params)}")
        else:
            setattr(spec, key, value)
    if task in ("parity", "mod_count"):
        if overrides.get("vocab_size") is not None:
            raise ValueError(f"{task}: the vocabulary size follows from the modulus; set modulus instead")
        spec.vocab_size = max(2, spec.params["modulus"])
    return spec


def make_task(task: str, seed: int = 0, **overrides) -> TaskData:
    """Generate train and test sets of ``task`` (see the module docstring), deterministically from ``seed``."""
    spec = default_spec(task, **overrides)
    rng = np.random.default_rng(seed)
    n_tr, n_te, T = spec.num_train, spec.num_test, spec.seq_len
    name = spec.name
    if name == "selective_copy":
        gen = lambda r, n: gen_selective_copy(r, n, T, spec.params["num_copy"], spec.vocab_size)
        (xtr, ytr), (xte, yte) = gen(rng, n_tr), gen(rng, n_te)
    elif name == "compression":
        gen = lambda r, n: gen_compression(r, n, T, spec.vocab_size)
        (xtr, ytr), (xte, yte) = gen(rng, n_tr), gen(rng, n_te)
    elif name == "recall":
        sample = lambda r, n: gen_recall_tokens(r, n, T, spec.vocab_size)
        train_tokens, test_tokens = _disjoint_split(sample, rng, n_tr, n_te)
        xtr, ytr, _ = recall_targets(train_tokens)
        xte, _, yte = recall_targets(test_tokens)
    elif name in PERMUTATION_TASKS:
        _, table = permutation_group(name)
        sample = lambda r, n: r.integers(0, table.shape[0], size=(n, T)).astype(np.int64)
        xtr, xte = _disjoint_split(sample, rng, n_tr, n_te)
        ytr, yte = prefix_products(xtr, table), prefix_products(xte, table)
    else:  # parity, mod_count
        mod = spec.params["modulus"]
        sample = lambda r, n: r.integers(0, 2, size=(n, T)).astype(np.int64)  # random binary inputs
        xtr, xte = _disjoint_split(sample, rng, n_tr, n_te)
        ytr, yte = np.cumsum(xtr, axis=1) % mod, np.cumsum(xte, axis=1) % mod
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
    return TaskData(spec, as_t(xtr), as_t(ytr), as_t(xte), as_t(yte))


# --------------------------------------------------------------------------------------- metrics
def target_mask(targets: torch.Tensor) -> torch.Tensor:
    """Which positions count: True where a target is set."""
    return targets != IGNORE


def class_counts(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(3, C) int64 counts over the target positions: row 0 true positives (predicted c, target c), row 1
    support (target c), row 2 predictions (predicted c). Sums over batches give the test set's counts."""
    mask = target_mask(targets)
    pred, tgt = logits.argmax(-1)[mask], targets[mask]
    return torch.stack([
        torch.bincount(tgt[pred == tgt], minlength=num_classes),
        torch.bincount(tgt, minlength=num_classes),
        torch.bincount(pred, minlength=num_classes),
    ])[:, :num_classes]


def macro_accuracy(counts: torch.Tensor, classes: str = "predicted_or_target") -> float:
    """Mean over classes of the per-class recall tp_c / support_c, from :func:`class_counts` over a whole set.

    ``classes="predicted_or_target"`` is torchmetrics' ``MulticlassAccuracy(average="macro")`` (MAD's metric;
    ``ignore_index`` positions removed first): a class with tp + fp + fn = 0 is left out, a class that is
    predicted but never a target enters with recall 0. ``classes="target"`` averages over the classes that occur
    as targets only. The two differ where a model predicts, even once, a class that is never a target: on recall,
    8 value classes at recall 0.98 and 8 key classes each predicted once somewhere give per-token accuracy 0.98,
    macro 0.49 by the first rule and 0.98 by the second. MAD logs the mean over test batches of the first rule,
    where a stray prediction costs only its own batch, so its numbers lie between the two."""
    tp, support, predicted = counts.double()
    if classes not in ("predicted_or_target", "target"):
        raise ValueError(f"classes must be 'predicted_or_target' or 'target', got {classes!r}")
    present = (support > 0) if classes == "target" else (support + predicted) > 0
    if not (support > 0).any():
        raise ValueError("macro_accuracy: no target positions")
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    return float(recall[present].mean())


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the target positions (targets == IGNORE are skipped)."""
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE
    )

