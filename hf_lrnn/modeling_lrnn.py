"""H-LRU and BD-LRU causal language models (Dubinin, Orvieto, Effenberger, 2026) for transformers.

Each of the ``num_hidden_layers`` blocks is ``x = x + Mixer(RMSNorm(x))`` then
``x = x + SwiGLU(RMSNorm(x))``; a final RMSNorm and a linear head follow. The mixers:

- H-LRU (order m, N channels): ``v_t = W_v x_t``, ``(a_0..a_m) = normalize(W_g x_t + b_g)`` per channel,
  ``h_t = sum_{k=1..m} a_k h_{t-k} + a_0 v_t``, ``y_t = W_o vec([h_t, h_{t-1}, ..., h_{t-m+1}])``.
- BD-LRU (N blocks of size k): ``v_t = W_v x_t`` (N, k), per block row i
  ``(a_{i,0}, A_{i,1..k}) = normalize(W_g x_t + b_g)``, ``h_t = A_t h_{t-1} + a_0 * v_t``,
  ``y_t = W_o [h_t^(1); ...; h_t^(N)]``.

Generation keeps one recurrent state per layer in :class:`LRNNCache` (constant memory in length).
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .cache_lrnn import LRNNCache, layer_state_shapes
from .configuration_lrnn import LRNNConfig
from .generation_lrnn import (CACHE_FIELD, GENERATE_CHECKED_TOKEN_IDS, LRNNGenerationMixin, check_token_id_range,
                              pick_cache)
from .ops_lrnn import bdlru_scan, hlru_lagged_states, hlru_scan, mask_may_be_dropped
from .packing_lrnn import pending_document_starts, read_flags

# Keyword arguments forward() accepts beyond its named ones, from Trainer and generate(); ignored.
EXTRA_FORWARD_KWARGS = ("output_attentions", "cache_position")
# The loss keywords of transformers' causal LMs (ForCausalLMLoss), passed on to the loss.
LOSS_KWARGS = ("num_items_in_batch", "shift_labels", "ignore_index")
_WARNED_NORMALIZATIONS = set()  # gate normalisations whose warning was given (once per process)


class LRNNRMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * w, computed in float32."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * x32).to(x.dtype)


class LRNNMLP(nn.Module):
    """SwiGLU: down_proj(silu(gate_proj x) * up_proj x)."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class HLRUMixer(nn.Module):
    """m-th order selective recurrence per channel, its m+1 gates normalised by ``gate_normalization`` (see
    module docstring).

    ``value_proj`` makes v (N values), ``gate_logit_proj`` the N (m+1) gate logits, ``out_proj`` reads the
    m lagged states out.
    """

    def __init__(self, hidden_size: int, recurrent_size: int, order: int, gate_normalization: str, scan_backend: str):
        super().__init__()
        self.num_channels, self.order = recurrent_size, order
        self.gate_normalization, self.scan_backend = gate_normalization, scan_backend
        self.value_proj = nn.Linear(hidden_size, recurrent_size, bias=False)
        self.gate_logit_proj = nn.Linear(hidden_size, recurrent_size * (order + 1), bias=True)
        self.out_proj = nn.Linear(recurrent_size * order, hidden_size, bias=False)

    def gate_logits(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, d) -> gate logits (B, T, N, m+1); index 0 the input gate, index j the weight of h_{t-j}."""
        B, T, _ = x.shape
        return self.gate_logit_proj(x).view(B, T, self.num_channels, self.order + 1)

    def forward(
        self, x: torch.Tensor, mask: Optional[torch.Tensor], state: Optional[torch.Tensor], return_state: bool,
        resets: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x (B, T, d), mask (B, T) or None, state (B, N, m) or None, resets (B, T) bool or None (document
        starts, see ``hf_lrnn.ops``) -> y (B, T, d), new state or None."""
        B, T, _ = x.shape
        N, m = self.num_channels, self.order
        h, final_state = hlru_scan(
            self.value_proj(x), self.gate_logits(x), initial_state=state, output_final_state=return_state,
            normalization=self.gate_normalization, mask=mask, resets=resets, backend=self.scan_backend,
        )
        if T == 1 and final_state is not None:  # a decode step (resets apply from t = 1): the lags are the final state
            lagged = final_state.to(h.dtype)[:, None]
        else:
            initial = state if state is not None else h.new_zeros(B, N, m)
            lagged = hlru_lagged_states(h, initial, mask, resets)  # (B, T, N, m)
        return self.out_proj(lagged.reshape(B, T, N * m)), final_state


class BDLRUMixer(nn.Module):
    """Block-diagonal selective recurrence, dense k x k blocks, row-wise normalised gates.

    ``value_proj`` makes v (N blocks of k values), ``gate_logit_proj`` the N k (k+1) gate logits,
    ``out_proj`` reads h out.
    """

    def __init__(self, hidden_size: int, recurrent_size: int, block_size: int, gate_normalization: str, scan_backend: str):
        super().__init__()
        self.num_blocks, self.block_size = recurrent_size // block_size, block_size
        self.gate_normalization, self.scan_backend = gate_normalization, scan_backend
        self.value_proj = nn.Linear(hidden_size, recurrent_size, bias=False)
        self.gate_logit_proj = nn.Linear(hidden_size, recurrent_size * (block_size + 1), bias=True)
        self.out_proj = nn.Linear(recurrent_size, hidden_size, bias=False)

    def gate_logits(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, d) -> gate logits (B, T, N, k, k+1); [..., i, 0] row i's input gate, [..., i, 1+j] = A[i, j]."""
        B, T, _ = x.shape
        k = self.block_size
        return self.gate_logit_proj(x).view(B, T, self.num_blocks, k, k + 1)

    def forward(
        self, x: torch.Tensor, mask: Optional[torch.Tensor], state: Optional[torch.Tensor], return_state: bool,
        resets: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x (B, T, d), mask (B, T) or None, state (B, N, k) or None, resets (B, T) bool or None (document
        starts) -> y (B, T, d), new state or None."""
        B, T, _ = x.shape
        v = self.value_proj(x).view(B, T, self.num_blocks, self.block_size)
        h, final_state = bdlru_scan(
            v, self.gate_logits(x), initial_state=state, output_final_state=return_state,
            normalization=self.gate_normalization, mask=mask, resets=resets, backend=self.scan_backend,
        )
        return self.out_proj(h.reshape(B, T, self.num_blocks * self.block_size)), final_state


class LRNNDecoderLayer(GradientCheckpointingLayer):
    """x = x + Mixer(RMSNorm(x)); x = x + SwiGLU(RMSNorm(x))."""

    def __init__(self, config: LRNNConfig, layer_idx: int):
        super().__init__()
        spec = config.layer_specs[layer_idx]
        self.layer_idx = layer_idx
        mixer_class, size = (HLRUMixer, spec["order"]) if spec["mixer"] == "hlru" else (BDLRUMixer, spec["block_size"])
        self.mixer_norm = LRNNRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mixer = mixer_class(
            config.hidden_size, spec["recurrent_size"], size, spec["gate_normalization"], config.scan_backend
        )
        self.mlp_norm = LRNNRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LRNNMLP(config.hidden_size, config.intermediate_size)

    def forward(
        self, hidden_states: torch.Tensor, mask: Optional[torch.Tensor] = None, layer_cache: Optional[LRNNCache] = None,
        resets: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        state = layer_cache.states[self.layer_idx] if layer_cache is not None else None
        mixed, new_state = self.mixer(self.mixer_norm(hidden_states), mask, state, layer_cache is not None, resets)
        if layer_cache is not None:
            layer_cache.store_state(self.layer_idx, new_state)
        hidden_states = hidden_states + mixed
        return hidden_states + self.mlp(self.mlp_norm(hidden_states))


class LRNNPreTrainedModel(PreTrainedModel):
    config_class = LRNNConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LRNNDecoderLayer"]
    _is_stateful = True  # generate() must not use assisted decoding (the state cannot be rolled back)
    _can_compile_fullgraph = True  # no graph break in forward, training step or decode step

    def __init__(self, config: LRNNConfig, *inputs, **kwargs):
        config._validate()  # a config edited after construction fails here, naming the field
        super().__init__(config, *inputs, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' save_pretrained. Where it also writes the code (the class registered for an Auto class,
        as ``import hf_lrnn`` does), config.json's ``auto_map`` names every model class of the package, whichever
        one saved, so that a checkpoint loads as remote code into any of them where hf_lrnn is not installed:
        a causal LM's into a classification head, a head's into a causal LM."""
        if self._auto_class is not None:
            from .heads_lrnn import LRNNForSequenceClassification, LRNNForTokenClassification  # ships heads_lrnn.py too

            classes = {"AutoConfig": LRNNConfig, "AutoModel": LRNNModel, "AutoModelForCausalLM": LRNNForCausalLM,
                       "AutoModelForSequenceClassification": LRNNForSequenceClassification,
                       "AutoModelForTokenClassification": LRNNForTokenClassification}
            self.config.auto_map = {auto_class: f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"
                                    for auto_class, cls in classes.items()}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def resize_token_embeddings(self, new_num_tokens: Optional[int] = None, pad_to_multiple_of: Optional[int] = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """transformers' resize, refused (before anything changes) where the config's special token ids would
        lie outside the new vocabulary: such a config could be saved but not loaded again."""
        if new_num_tokens is not None:
            size = new_num_tokens if pad_to_multiple_of is None else -(-new_num_tokens // pad_to_multiple_of) * pad_to_multiple_of
            for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
                value = getattr(self.config, name, None)
                for token_id in value if isinstance(value, list) else [value]:
                    if token_id is not None and token_id >= size:
                        raise ValueError(
                            f"resize_token_embeddings({new_num_tokens}): config.{name}={value} would lie outside the new "
                            f"vocabulary [0, {size}); set config.{name} to None or a smaller id first"
                        )
        return super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)


def _check_extra_kwargs(kwargs) -> None:
    unknown = sorted(set(kwargs) - set(EXTRA_FORWARD_KWARGS) - set(LOSS_KWARGS))
    if unknown:
        raise TypeError(f"LRNN forward() got unexpected keyword arguments {unknown}")
    if kwargs.get("output_attentions"):
        raise ValueError("output_attentions=True: LRNN models have no attention weights")


class LRNNModel(LRNNPreTrainedModel):
    """Embedding, ``num_hidden_layers`` decoder layers and a final RMSNorm; outputs hidden states."""

    def __init__(self, config: LRNNConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([LRNNDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = LRNNRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.state_shapes = layer_state_shapes(config)
        if any(spec["gate_normalization"] == "none" for spec in config.layer_specs) and "none" not in _WARNED_NORMALIZATIONS:
            _WARNED_NORMALIZATIONS.add("none")
            warnings.warn(
                "gate_normalization='none' leaves the gates unnormalised (the paper's unstable ablation): the state can "
                "grow without bound and overflow to inf after a few hundred steps", stacklevel=3,
            )
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def _check_inputs(self, input_ids, inputs_embeds, attention_mask, cache):
        """Shapes, dtypes and devices (no values read, so no host synchronisation). Returns (B, T, the inputs'
        device, flags): ``flags`` the token ids' range (min and max, 0-dim tensors, not read) where it is to be
        checked (eager mode, unless generate() vouches for the ids), else empty."""
        flags = {}
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if input_ids is not None:
            if input_ids.dim() != 2 or input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
                raise ValueError(f"input_ids must be an integer tensor (batch, seq_len), got {input_ids.dtype} {tuple(input_ids.shape)}")
            if not torch.compiler.is_compiling() and not GENERATE_CHECKED_TOKEN_IDS.get() and input_ids.numel():
                flags["input_ids min"], flags["input_ids max"] = torch.aminmax(input_ids)
            B, T = input_ids.shape
            device = input_ids.device
        else:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
                raise ValueError(f"inputs_embeds must be (batch, seq_len, {self.config.hidden_size}), got {tuple(inputs_embeds.shape)}")
            if not inputs_embeds.dtype.is_floating_point:
                raise ValueError(f"inputs_embeds must be a floating-point tensor, got {inputs_embeds.dtype}")
            B, T = inputs_embeds.shape[:2]
            device = inputs_embeds.device
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[0] != B or attention_mask.shape[1] < T:
                raise ValueError(
                    f"attention_mask must be (batch, seq_len) = ({B}, {T}) or (batch, past + seq_len), got {tuple(attention_mask.shape)}"
                )
            if attention_mask.device != device:
                raise ValueError(f"attention_mask is on {attention_mask.device}, the input on {device}")
        if cache is not None:
            cache.check_compatible(len(self.layers), self.state_shapes, B, device)
        return B, T, device, flags

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        cache: Optional[LRNNCache] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        use_cache: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        past_key_values: Optional[LRNNCache] = None,
        position_ids: Optional[torch.LongTensor] = None,
        cu_seq_lens_q: Optional[torch.Tensor] = None,
        cu_seq_lens_k: Optional[torch.Tensor] = None,
        max_length_q: Optional[int] = None,
        max_length_k: Optional[int] = None,
        seq_idx: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> Union[Tuple, BaseModelOutputWithPast]:
        """input_ids (B, T) of any integer dtype, or inputs_embeds (B, T, d); attention_mask (B, T) or (B, past + T)
        with 0 at padding (padded steps leave the recurrent state untouched; only its last T columns are read).

        ``cache``: a cache passed in is always read and advanced in place, whatever ``use_cache`` says;
        ``use_cache`` decides whether a new cache is made when none is passed (and returned).

        Packed rows (padding-free, e.g. ``DataCollatorWithFlattening``): ``position_ids`` restarting at 0,
        ``cu_seq_lens_q``/``_k`` (with ``max_length_q``/``_k``) or ``seq_idx`` mark where documents start, and
        each document starts from a fresh (zero) state, as if run alone; position ids that count up by one
        change nothing (the model has no positional embeddings). The table of rules and refusals is in
        ``packing_lrnn``. In eager mode one host sync reads every check's values (token ids' range, these
        arguments, whether the attention mask is all ones); none under torch.compile."""
        _check_extra_kwargs(kwargs)
        cache = pick_cache(cache, past_key_values)
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        B, T, device, flags = self._check_inputs(input_ids, inputs_embeds, attention_mask, cache)

        checkpointing = self.training and torch.is_grad_enabled() and any(l.gradient_checkpointing for l in self.layers)
        if checkpointing and cache is not None:
            raise ValueError(
                "gradient checkpointing recomputes layers, which would advance the recurrent cache twice: "
                "pass no cache in training with gradient checkpointing"
            )
        mask = attention_mask[:, -T:] if attention_mask is not None else None
        boundary_flags, resolve_starts = pending_document_starts(
            B, T, device, mask, cache is not None, position_ids=position_ids, seq_idx=seq_idx,
            cu_seq_lens_q=cu_seq_lens_q, cu_seq_lens_k=cu_seq_lens_k, max_length_q=max_length_q,
            max_length_k=max_length_k)
        flags.update(boundary_flags)
        if mask_may_be_dropped(mask):  # then the unmasked, cheaper scans run
            flags["attention_mask all ones"] = mask.all()
        values = read_flags(flags)  # every check's values in one host sync (none under torch.compile)
        if "input_ids min" in values:
            check_token_id_range(values["input_ids min"], values["input_ids max"], self.config.vocab_size)
        resets = resolve_starts(values)
        if values.get("attention_mask all ones"):
            mask = None
        if use_cache and cache is None and not checkpointing:
            cache = LRNNCache(self.config, batch_size=B, device=device)

        if inputs_embeds is None:
            hidden_states = self.embed_tokens(input_ids.long())
        else:  # in the parameters' dtype, as Llama's first projection does (autocast still applies)
            hidden_states = inputs_embeds.to(self.embed_tokens.weight.dtype)
        all_hidden_states = [hidden_states] if output_hidden_states else None
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask, cache, resets)
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states[-1] = hidden_states
        if cache is not None:
            cache.seen_tokens.add_(T)

        all_hidden_states = tuple(all_hidden_states) if output_hidden_states else None
        if not return_dict:
            return tuple(x for x in (hidden_states, cache, all_hidden_states) if x is not None)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, **{CACHE_FIELD: cache}
        )


class LRNNForCausalLM(LRNNGenerationMixin, LRNNPreTrainedModel):
    """LRNNModel with a linear language-model head; labels are shifted inside (``-100`` ignored)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: LRNNConfig):
        super().__init__(config)
        self.model = LRNNModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

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
        logits_to_keep: Union[int, torch.Tensor] = 0,
        past_key_values: Optional[LRNNCache] = None,
        position_ids: Optional[torch.LongTensor] = None,
        cu_seq_lens_q: Optional[torch.Tensor] = None,
        cu_seq_lens_k: Optional[torch.Tensor] = None,
        max_length_q: Optional[int] = None,
        max_length_k: Optional[int] = None,
        seq_idx: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> Union[Tuple, CausalLMOutputWithPast]:
        """As :meth:`LRNNModel.forward`, plus ``labels`` (B, T) for the next-token loss (shifted here) and the
        loss keywords of transformers' causal LMs (``num_items_in_batch`` from Trainer, ``shift_labels``
        already shifted labels, e.g. for sequence parallelism, ``ignore_index``); ``logits_to_keep`` (int: the
        last n positions, 0 = all; or a 1-D tensor of positions)."""
        _check_extra_kwargs(kwargs)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            cache=pick_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            position_ids=position_ids, seq_idx=seq_idx, cu_seq_lens_q=cu_seq_lens_q, cu_seq_lens_k=cu_seq_lens_k,
            max_length_q=max_length_q, max_length_k=max_length_k,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        loss_kwargs = {k: kwargs[k] for k in LOSS_KWARGS if k in kwargs}
        if labels is not None or loss_kwargs.get("shift_labels") is not None:
            targets = labels if labels is not None else loss_kwargs["shift_labels"]
            if targets.shape != hidden_states.shape[:2]:
                name = "labels" if labels is not None else "shift_labels"
                raise ValueError(f"{name} must have shape {tuple(hidden_states.shape[:2])}, got {tuple(targets.shape)}")
            if logits.shape[1] != targets.shape[1]:
                raise ValueError("labels need logits at every position: use logits_to_keep=0 when passing labels")
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **loss_kwargs)
        cache_out = getattr(outputs, CACHE_FIELD)
        if not return_dict:
            return tuple(x for x in (loss, logits, cache_out, outputs.hidden_states) if x is not None)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, **{CACHE_FIELD: cache_out}
        )
