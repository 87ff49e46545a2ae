"""Document starts of packed rows (padding-free training), read from the arguments transformers passes.

``DataCollatorWithFlattening`` joins a batch's documents into one row (``scripts/train.py --packing`` into
rows of ``--seq-len`` tokens) and marks where each document starts in up to three ways.
``pending_document_starts`` turns them into the scans' ``resets`` (B, T) bool, True at (b, t) where a document
starts at t > 0: the recurrent state entering that step is zero (``hf_lrnn.ops``), so packed rows give what each
document alone gives.

=================================  ============================================  ================================
argument                           a document starts at (b, t), t > 0, where      refused (ValueError) where
=================================  ============================================  ================================
``position_ids`` (B, T) or (1, T)  ``position_ids[b, t] == 0``, after row b's     between unpadded positions, an id
                                   first unpadded position                       is neither the last + 1 nor 0;
                                                                                 an id is negative
``cu_seq_lens_q`` / ``_k`` (D+1,)  ``b * T + t`` is in it (offsets of the        not 0 = c_0 < ... < c_D = B * T;
                                   documents in the flattened B * T tokens)      a document crosses rows; q != k
``seq_idx`` (B, T)                 ``seq_idx[b, t] != seq_idx[b, t - 1]``        it decreases along a row
=================================  ============================================  ================================

Also refused: arguments that describe different starts; ``max_length_q`` / ``max_length_k`` (ints or 0-dim
integer tensors, unused otherwise) without ``cu_seq_lens_*`` or below the longest document; packed rows (a start at some t > 0) with
an ``attention_mask`` that has zeros in the T columns read, or with a cache passed in. Position ids that count
up by one between unpadded positions, from any first value, mark no start: plain 0..T-1 rows, the offset
positions of a continuation with a cache, left padding with transformers' positions or with 0..T-1.

Cost: nothing when none of these arguments is passed. Otherwise, in eager mode, their values are checked with
one host synchronisation (``LRNNModel.forward`` reads them with its own checks: one sync in all), and None is
returned where no row is packed, so that such a call gives bit for bit what a call without them gives. Under
torch.compile nothing is checked (no graph break) and the starts come from the first given of
``cu_seq_lens_q``/``_k``, ``seq_idx``, ``position_ids`` (all False on plain rows).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

_INTEGER_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def _check_tensor(name: str, x, dims: int, device: torch.device) -> None:
    """TypeError or ValueError unless ``x`` is an integer tensor of ``dims`` dimensions on ``device``."""
    if not isinstance(x, torch.Tensor) or x.dtype not in _INTEGER_DTYPES:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{name} must be an integer torch.Tensor, got {got}")
    if x.dim() != dims:
        raise ValueError(f"{name} must have {dims} dimension(s), got shape {tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device}, the input on {device}")


def _starts_from_positions(position_ids: torch.Tensor, kept: Optional[torch.Tensor]) -> torch.Tensor:
    """(B, T) bool: position id 0 after the row's first kept (unpadded) position."""
    zero = position_ids == 0
    if kept is None:
        return zero & (torch.arange(zero.shape[1], device=zero.device) > 0)
    return zero & kept & (kept.long().cumsum(1) > 1)


def _starts_from_offsets(cu_seq_lens: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """(B, T) bool: the flattened offsets in ``cu_seq_lens`` (clamped into range; checked in eager mode)."""
    flat = torch.zeros(B * T + 1, dtype=torch.bool, device=cu_seq_lens.device)
    flat = flat.index_fill(0, cu_seq_lens.long().clamp(0, B * T), True)
    return flat[: B * T].view(B, T) & (torch.arange(T, device=flat.device) > 0)


def _starts_from_document_index(seq_idx: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: where the document index changes from the previous step."""
    return F.pad(seq_idx[:, 1:] != seq_idx[:, :-1], (1, 0), value=False)


def _document_index_decreases(seq_idx: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: where the document index is below the previous step's."""
    return F.pad(seq_idx[:, 1:] < seq_idx[:, :-1], (1, 0), value=False)


def _position_jumps(position_ids: torch.Tensor, kept: Optional[torch.Tensor]) -> torch.Tensor:
    """(B, T) bool: kept positions whose id is neither the previous kept position's id + 1 nor 0."""
    B, T = position_ids.shape
    kept = kept if kept is not None else torch.ones_like(position_ids, dtype=torch.bool)
    latest_kept = torch.where(kept, torch.arange(T, device=kept.device), -1).cummax(1).values
    previous_kept = F.pad(latest_kept[:, :-1], (1, 0), value=-1)
    previous_id = position_ids.gather(1, previous_kept.clamp(min=0))
    return kept & (previous_kept >= 0) & (position_ids != previous_id + 1) & (position_ids != 0)


def _first(where: torch.Tensor) -> str:
    b, t = where.nonzero()[0].tolist()
    return f"row {b}, position {t}"


def read_flags(flags: Dict[str, torch.Tensor]) -> Dict[str, int]:
    """The values of 0-dim integer or bool tensors (one device), read with one host sync (none if empty)."""
    if not flags:
        return {}
    return dict(zip(flags, torch.stack([f.long() for f in flags.values()]).tolist()))


def _resolved(starts: Optional[torch.Tensor]) -> Callable[[Dict[str, int]], Optional[torch.Tensor]]:
    return lambda values: starts


def pending_document_starts(
    B: int,
    T: int,
    device: torch.device,
    attention_mask: Optional[torch.Tensor],
    has_cache: bool,
    position_ids: Optional[torch.Tensor] = None,
    cu_seq_lens_q: Optional[torch.Tensor] = None,
    cu_seq_lens_k: Optional[torch.Tensor] = None,
    max_length_q: Optional[int] = None,
    max_length_k: Optional[int] = None,
    seq_idx: Optional[torch.Tensor] = None,
) -> Tuple[Dict[str, torch.Tensor], Callable[[Dict[str, int]], Optional[torch.Tensor]]]:
    """The document starts of an input of B rows of T steps, in two halves so that the caller reads their
    checks' values with its own in one host sync: (flags, resolve). ``flags``: name -> 0-dim tensor, not
    read (empty where nothing needs reading: no boundary argument, or under torch.compile); ``resolve(values)``,
    given at least these flags' values (:func:`read_flags`), returns the scans' ``resets`` (B, T) bool or None
    (module docstring), or raises ValueError naming the argument for anything the table refuses.

    ``attention_mask``: the (B, T) columns of the mask the model reads, or None; ``has_cache``: whether a
    cache was passed in. Type and shape errors are raised here, before anything is read."""
    for name, value in (("max_length_q", max_length_q), ("max_length_k", max_length_k)):
        # an int (DataCollatorWithFlattening) or a 0-dim integer tensor (prepare_fa_kwargs_from_position_ids)
        is_int = isinstance(value, int) and not isinstance(value, bool)
        is_int_tensor = isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype in _INTEGER_DTYPES
        if value is not None and not (is_int or is_int_tensor):
            got = (f"a {value.dtype} tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor)
                   else type(value).__name__)
            raise TypeError(f"{name} must be an int or a 0-dim integer tensor (the longest document's length), "
                            f"got {got}")
    cu_name = "cu_seq_lens_q" if cu_seq_lens_q is not None else "cu_seq_lens_k"
    cu_seq_lens = cu_seq_lens_q if cu_seq_lens_q is not None else cu_seq_lens_k
    if cu_seq_lens is None and (max_length_q is not None or max_length_k is not None):
        raise ValueError("max_length_q / max_length_k describe cu_seq_lens_q / cu_seq_lens_k: pass those too")
    if position_ids is None and cu_seq_lens is None and seq_idx is None:
        return {}, _resolved(None)
    kept = attention_mask.bool() if attention_mask is not None else None
    starts: Dict[str, torch.Tensor] = {}  # argument name -> its (B, T) starts, in the order compile reads them
    if cu_seq_lens is not None:
        for name, x in (("cu_seq_lens_q", cu_seq_lens_q), ("cu_seq_lens_k", cu_seq_lens_k)):
            if x is not None:
                _check_tensor(name, x, 1, device)
                if not 2 <= x.numel() <= B * T + 1:
                    raise ValueError(f"{name} must hold 2 to batch * seq_len + 1 = {B * T + 1} offsets, got {x.numel()}")
        if cu_seq_lens_k is not None and cu_seq_lens_q is not None and cu_seq_lens_k.shape != cu_seq_lens_q.shape:
            raise ValueError(f"cu_seq_lens_q {tuple(cu_seq_lens_q.shape)} and cu_seq_lens_k {tuple(cu_seq_lens_k.shape)} "
                             "differ: a causal LM's documents are the same for queries and keys")
        starts[cu_name] = _starts_from_offsets(cu_seq_lens, B, T)
    if seq_idx is not None:
        _check_tensor("seq_idx", seq_idx, 2, device)
        if tuple(seq_idx.shape) != (B, T):
            raise ValueError(f"seq_idx must have shape (batch, seq_len) = {(B, T)}, got {tuple(seq_idx.shape)}")
        starts["seq_idx"] = _starts_from_document_index(seq_idx)
    if position_ids is not None:
        _check_tensor("position_ids", position_ids, 2, device)
        if tuple(position_ids.shape) not in ((B, T), (1, T)):
            raise ValueError(f"position_ids must have shape (batch, seq_len) = {(B, T)} or (1, {T}), "
                             f"got {tuple(position_ids.shape)}")
        position_ids = position_ids.expand(B, T)
        starts["position_ids"] = _starts_from_positions(position_ids, kept)
    any_start = next(iter(starts.values()))
    if T == 0:  # no steps, no starts
        return {}, _resolved(None)
    if torch.compiler.is_compiling():
        return {}, _resolved(any_start)

    # Eager: every check's flag (and the longest document), read by the caller with its own.
    flags: Dict[str, torch.Tensor] = {"packed": any_start.any()}
    if position_ids is not None:
        flags["negative position_ids"] = (position_ids < 0).any()
        flags["position_ids jump"] = _position_jumps(position_ids, kept).any()
    if cu_seq_lens is not None:
        lengths = cu_seq_lens.long().diff()
        flags["cu_seq_lens order"] = (cu_seq_lens[0] != 0) | (cu_seq_lens[-1] != B * T) | (lengths <= 0).any()
        row_starts = torch.arange(B, device=device) * T
        flags["cu_seq_lens rows"] = ~torch.isin(row_starts, cu_seq_lens.long()).all()
        flags["longest document"] = lengths.max()
        for name, value in (("max_length_q", max_length_q), ("max_length_k", max_length_k)):
            if isinstance(value, torch.Tensor):
                flags[name] = value.to(device)
        if cu_seq_lens_q is not None and cu_seq_lens_k is not None:
            flags["cu_seq_lens q != k"] = (cu_seq_lens_q != cu_seq_lens_k).any()
    if seq_idx is not None:
        flags["seq_idx decreases"] = _document_index_decreases(seq_idx).any()
    names = list(starts)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            flags[f"{first} != {second}"] = (starts[first] != starts[second]).any()
    if attention_mask is not None:
        flags["padding"] = (attention_mask == 0).any()
    return flags, lambda values: _checked_starts(
        values, flags, starts, position_ids, kept, cu_name, cu_seq_lens, seq_idx, max_length_q, max_length_k, has_cache)


# The keyword arguments that mark document starts (their lengths, max_length_q / _k, only describe cu_seq_lens).
BOUNDARY_KWARGS = ("position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "seq_idx")
LENGTH_KWARGS = ("max_length_q", "max_length_k")


def first_document_start(B: int, T: int, device: torch.device, attention_mask: Optional[torch.Tensor],
                         **boundaries) -> Optional[Tuple[int, int]]:
    """(row, position) of the first document start at t > 0 that the boundary keywords mark in a (B, T) batch, or
    None; the same checks as the model's forward (``pending_document_starts``, no cache), one host sync.
    ``attention_mask``: (B, past + T) or None (its last T columns are read)."""
    mask = attention_mask[:, -T:] if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2 else None
    flags, resolve = pending_document_starts(B, T, device, mask, False, **boundaries)
    starts = resolve(read_flags(flags))
    return None if starts is None else tuple(starts.nonzero()[0].tolist())


def _checked_starts(values, flags, starts, position_ids, kept, cu_name, cu_seq_lens, seq_idx, max_length_q,
                    max_length_k, has_cache) -> Optional[torch.Tensor]:
    """``pending_document_starts``' resolve: the refusals of the module docstring's table, from the ``values``
    of ``flags``; the starts (B, T), or None where no row is packed."""
    names = list(starts)
    any_start = starts[names[0]]
    B, T = any_start.shape
    if values.get("negative position_ids"):
        raise ValueError(f"position_ids must be >= 0, got a negative id at {_first(position_ids < 0)}")
    if values.get("position_ids jump"):
        where = _first(_position_jumps(position_ids, kept))
        raise ValueError(
            f"position_ids neither count up by one nor restart at 0 at {where}: position ids must count up by one "
            "within a document and be 0 at each document's first token (packed rows, as DataCollatorWithFlattening "
            "makes them with position_ids_start=0), or count up by one along the whole row"
        )
    if values.get("cu_seq_lens order"):
        raise ValueError(f"{cu_name} must increase strictly from 0 to batch * seq_len = {B * T} (the offsets of the "
                         f"documents in the flattened input), got {cu_seq_lens.tolist()}")
    if values.get("cu_seq_lens rows"):
        raise ValueError(f"{cu_name} = {cu_seq_lens.tolist()} has a document that runs from one row into the next "
                         f"(rows of {T} tokens): each row must start a document")
    if values.get("cu_seq_lens q != k"):
        raise ValueError("cu_seq_lens_q and cu_seq_lens_k differ: a causal LM's documents are the same for queries and keys")
    for name, value in (("max_length_q", values.get("max_length_q", max_length_q)),
                        ("max_length_k", values.get("max_length_k", max_length_k))):
        if value is not None and value < values["longest document"]:
            raise ValueError(f"{name}={value} is shorter than the longest document in {cu_name} "
                             f"({values['longest document']} tokens)")
    if values.get("seq_idx decreases"):
        raise ValueError(f"seq_idx must not decrease along a row (it numbers a packed row's documents in order), it "
                         f"does at {_first(_document_index_decreases(seq_idx))}")
    for key in flags:
        if " != " in key and values[key] and key != "cu_seq_lens q != k":
            first, second = key.split(" != ")
            raise ValueError(f"{first} and {second} describe different document starts, first at "
                             f"{_first(starts[first] != starts[second])}")
    if not values["packed"]:
        return None
    if values.get("padding"):
        raise ValueError(
            "attention_mask has padding (zeros) in a batch of packed rows (document starts in "
            f"{'/'.join(names)}): pass packed rows without padding and without attention_mask (padding-free, as "
            "DataCollatorWithFlattening does), or pad unpacked rows"
        )
    if has_cache:
        raise ValueError(
            f"a cache was passed with packed rows (document starts in {'/'.join(names)}): a cache continues one "
            "sequence per row; run packed rows without a cache (use_cache=False or none passed)"
        )
    return any_start
