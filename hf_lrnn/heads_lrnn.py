"""Task heads on :class:`~.modeling_lrnn.LRNNModel`: sequence classification and token classification.

Sequence classification reads each row's last real token. For a recurrent model this is exact: the state
there has read the whole sequence, and padded steps (attention_mask 0) leave the state untouched, so the
logits equal those of the unpadded sequence whether it is padded on the left or on the right.

transformers' ``GenericForSequenceClassification`` / ``GenericForTokenClassification`` do not fit: they build
the backbone with ``AutoModel.from_config``, which fails when the checkpoint is loaded as remote code (hf_lrnn
not installed: ``AutoModel`` does not know the remote config class), and the sequence head finds the last
token from pad ids only (not from ``attention_mask``, nor with ``inputs_embeds``). The heads here keep their
layer names (``score``), their dropout and bias settings, and transformers' losses (``self.loss_function``
by class-name suffix).
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutputWithPast, TokenClassifierOutput

from .cache_lrnn import LRNNCache
from .configuration_lrnn import LRNNConfig
from .generation_lrnn import CACHE_FIELD, pick_cache
from .modeling_lrnn import LRNNModel, LRNNPreTrainedModel
from .packing_lrnn import BOUNDARY_KWARGS, first_document_start

# The classifier dropout when the config sets none (transformers' generic token-classification head's default).
DEFAULT_CLASSIFIER_DROPOUT = 0.1


def last_token_positions(
    input_ids: Optional[torch.Tensor], attention_mask: Optional[torch.Tensor], pad_token_id: Optional[int],
    batch_size: int, seq_len: int, device: torch.device,
) -> torch.Tensor:
    """Each row's last real position (B,), int64 on ``device``.

    Real tokens are where ``attention_mask`` (B, T) or (B, past + T) is nonzero in its last T columns; with no
    mask, where ``input_ids`` (B, T) differ from ``pad_token_id``; with neither (``inputs_embeds`` without a
    mask, or no pad id), every position is real and the last one, T - 1, is read. A row with no real token
    is an error (checked in eager mode: one host synchronisation)."""
    if attention_mask is not None:
        real = attention_mask[:, -seq_len:] != 0
        source = "attention_mask"
    elif input_ids is not None and pad_token_id is not None:
        real = input_ids != pad_token_id
        source = f"input_ids (pad_token_id={pad_token_id})"
    else:
        return torch.full((batch_size,), seq_len - 1, dtype=torch.long, device=device)
    if not torch.compiler.is_compiling():
        empty = (~real.any(-1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"rows {empty} have no real token to classify: {source} marks all of them as padding")
    positions = torch.arange(seq_len, device=real.device)
    return (positions * real).argmax(-1).to(device)  # the largest real position (argmax: the first maximum)


def refuse_packed_rows(hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor], kwargs: dict) -> None:
    """ValueError where the boundary keywords in ``kwargs`` (``packing_lrnn``) mark packed rows: a sequence
    classifier reads one label per row, at its last real token, so a packed row would classify its last
    document only. Eager mode only (one host sync, only where such a keyword is passed); the model's forward
    has checked them before."""
    boundaries = {name: kwargs.get(name) for name in BOUNDARY_KWARGS}
    if all(value is None for value in boundaries.values()) or torch.compiler.is_compiling():
        return
    start = first_document_start(*hidden_states.shape[:2], hidden_states.device, attention_mask, **boundaries)
    if start is not None:
        b, t = start
        raise ValueError(
            f"LRNNForSequenceClassification got packed rows (a document starts at row {b}, position {t} in "
            f"{'/'.join(name for name, value in boundaries.items() if value is not None)}): it classifies each row "
            "at its last real token, so only each row's last document would be classified; pass one sequence per "
            "row (padded, with attention_mask)"
        )


class LRNNForSequenceClassification(LRNNPreTrainedModel):
    """LRNNModel and a linear ``score`` (d -> num_labels, no bias) read at each row's last real token
    (:func:`last_token_positions`): logits (B, num_labels).

    ``labels``: (B,) class ids, (B,) floats for regression (num_labels = 1) or (B, num_labels) multi-label
    targets; the loss is transformers' (``config.problem_type``, set from the labels when None)."""

    accepts_loss_kwargs = False  # a mean loss per batch: Trainer averages it over accumulation steps

    def __init__(self, config: LRNNConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = LRNNModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        cache: Optional[LRNNCache] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        use_cache: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        past_key_values: Optional[LRNNCache] = None,
        **kwargs,
    ) -> Union[Tuple, SequenceClassifierOutputWithPast]:
        """As :meth:`LRNNModel.forward` (every keyword argument it takes is passed on), plus ``labels``.
        Pass ``attention_mask`` with padded rows: without it, padding is found from the pad id only for
        pooling, and the pad tokens run through the recurrence like any other token."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, cache=pick_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds, use_cache=use_cache, output_hidden_states=output_hidden_states,
            return_dict=True, **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        refuse_packed_rows(hidden_states, attention_mask, kwargs)
        B, T = hidden_states.shape[:2]
        last = last_token_positions(input_ids, attention_mask, self.config.pad_token_id, B, T, hidden_states.device)
        logits = self.score(hidden_states[torch.arange(B, device=hidden_states.device), last])
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        cache_out = getattr(outputs, CACHE_FIELD)
        if not return_dict:
            return tuple(x for x in (loss, logits, cache_out, outputs.hidden_states) if x is not None)
        return SequenceClassifierOutputWithPast(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, **{CACHE_FIELD: cache_out}
        )


class LRNNForTokenClassification(LRNNPreTrainedModel):
    """LRNNModel, dropout (``config.classifier_dropout``, default 0.1) and a linear ``score`` (d -> num_labels,
    bias unless ``config.token_classification_bias`` is False): logits (B, T, num_labels).

    ``labels``: (B, T) class ids, -100 ignored; the loss is transformers' token-classification cross-entropy."""

    accepts_loss_kwargs = False  # a mean loss per batch: Trainer averages it over accumulation steps

    def __init__(self, config: LRNNConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = LRNNModel(config)
        dropout = getattr(config, "classifier_dropout", None)
        dropout = DEFAULT_CLASSIFIER_DROPOUT if dropout is None else dropout
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"LRNNConfig.classifier_dropout must be None or a number in [0, 1), got {dropout!r}")
        self.dropout = nn.Dropout(dropout)
        bias = getattr(config, "token_classification_bias", True)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=bias)
        self.post_init()

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        cache: Optional[LRNNCache] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        past_key_values: Optional[LRNNCache] = None,
        **kwargs,
    ) -> Union[Tuple, TokenClassifierOutput]:
        """As :meth:`LRNNModel.forward` (every keyword argument it takes is passed on), plus ``labels`` (B, T).
        Returns no cache (``TokenClassifierOutput`` has no field for one), so none is made: ``use_cache=True`` is
        refused; a cache passed in is read and advanced in place, as in the model."""
        if use_cache:
            raise ValueError("LRNNForTokenClassification returns no cache: use_cache=True is not supported (pass a "
                             "cache in to continue from one; it is advanced in place)")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, cache=pick_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds, use_cache=False, output_hidden_states=output_hidden_states,
            return_dict=True, **kwargs,
        )
        logits = self.score(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:2]:
                raise ValueError(
                    f"labels must have shape {tuple(logits.shape[:2])} (batch, seq_len), got {tuple(labels.shape)}"
                )
            loss = self.loss_function(logits, labels, self.config)
        if not return_dict:
            return tuple(x for x in (loss, logits, outputs.hidden_states) if x is not None)
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
