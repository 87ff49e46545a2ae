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
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_lrnn import LRNNConfig
from .ops import LOOP_MAX_T, bdlru_scan, hlru_scan

# transformers 5.24 renamed the outputs' and the generation loop's `past_key_values` to `cache`.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
# Keyword arguments forward() accepts beyond its named ones, from Trainer and generate(); positions are
# ignored (the model has no positional embeddings).
EXTRA_FORWARD_KWARGS = ("output_attentions", "position_ids", "cache_position")
# The loss keywords of transformers' causal LMs (ForCausalLMLoss), passed on to the loss.
LOSS_KWARGS = ("num_items_in_batch", "shift_labels", "ignore_index")
_WARNED = set()


def layer_state_shapes(config: LRNNConfig) -> List[Tuple[int, int]]:
    """(N, D) of every layer's recurrent state: H-LRU (channels, m), BD-LRU (blocks, k)."""
    shapes = []
    for spec in config.layer_specs:
        if spec["mixer"] == "hlru":
            shapes.append((spec["recurrent_size"], spec["order"]))
        else:
            shapes.append((spec["recurrent_size"] // spec["block_size"], spec["block_size"]))
    return shapes


class LRNNCache(Cache):
    """Recurrent state of every layer, for ``generate`` and step-by-step decoding: constant memory in length.

    ``states[i]`` is layer i's float32 state buffer, allocated once (zeros: the empty history) and updated in
    place, so that its address is fixed and a compiled decode step can be captured in a CUDA graph: H-LRU
    (B, N, m) = [h_{t-1}, ..., h_{t-m}], BD-LRU (B, N, k) = h_{t-1}. ``seen_tokens`` is a 0-d int64 tensor
    on the same device counting the positions processed (padding included), updated in place as well;
    ``get_seq_length()`` reads it.

    Args:
        config: the model's :class:`LRNNConfig` (layer count and state shapes).
        batch_size: rows of the states.
        device: where the states live (the model's device).
        compileable: ``generate()`` compiles the decode step on CUDA for a compileable cache (transformers'
            auto-compile); ``cache_implementation="dynamic"`` makes a non-compileable one (eager decoding).
    """

    def __init__(self, config: LRNNConfig, batch_size: int, device: Union[str, torch.device, None] = None,
                 compileable: bool = True):
        if getattr(config, "model_type", None) != LRNNConfig.model_type:  # also a remote-code copy of the class
            raise TypeError(f"LRNNCache(config, batch_size, device): config must be an LRNNConfig, got {type(config).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"LRNNCache: batch_size must be a positive int, got {batch_size!r}")
        super().__init__(layers=[])
        self._compileable = compileable
        self.states = [torch.zeros(batch_size, N, D, dtype=torch.float32, device=device) for N, D in layer_state_shapes(config)]
        self.seen_tokens = torch.zeros((), dtype=torch.long, device=device)
        if not torch.compiler.is_compiling():
            for buffer in self.states + [self.seen_tokens]:
                torch._dynamo.mark_static_address(buffer)

    @property
    def is_compileable(self) -> bool:
        return self._compileable

    @property
    def is_croppable(self) -> bool:
        return False  # a recurrent state cannot forget tokens

    def __len__(self) -> int:
        return len(self.states)

    def __repr__(self) -> str:
        return f"LRNNCache(layers={len(self.states)}, batch_size={self.batch_size}, seen_tokens={int(self.seen_tokens)})"

    @property
    def batch_size(self) -> int:
        return self.states[0].shape[0]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.seen_tokens)

    def get_max_length(self, layer_idx: Optional[int] = None) -> int:
        return -1  # no length dimension (the base class would read attention layers)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: keep the states of the selected beams, in order (in place)."""
        for state in self.states:
            state.copy_(state.index_select(0, beam_idx.to(state.device)))

    def reset(self) -> None:
        for state in self.states:
            state.zero_()
        self.seen_tokens.zero_()

    def crop(self, max_length: int) -> None:
        raise NotImplementedError(
            "LRNNCache cannot be cropped: a recurrent state cannot forget tokens (assisted generation is unsupported)"
        )

    def check_compatible(self, num_layers: int, shapes: List[Tuple[int, int]], batch_size: int, device: torch.device) -> None:
        """ValueError unless this cache fits a model of ``num_layers`` layers with state ``shapes`` for inputs of
        ``batch_size`` rows on ``device`` (shapes and devices only: no values are read)."""
        if len(self.states) != num_layers:
            raise ValueError(f"the cache holds states for {len(self.states)} layers, but the model has {num_layers}")
        if self.batch_size != batch_size:
            raise ValueError(f"the cache holds states for batch size {self.batch_size}, but the input has batch size {batch_size}")
        for i, (state, (N, D)) in enumerate(zip(self.states, shapes)):
            if tuple(state.shape) != (batch_size, N, D):
                raise ValueError(
                    f"the cache's state of layer {i} has shape {tuple(state.shape)}, but this model and input need "
                    f"(batch, N, D) = ({batch_size}, {N}, {D})"
                )
            if state.device != device or state.dtype != torch.float32:
                raise ValueError(
                    f"the cache's state of layer {i} is a {state.dtype} tensor on {state.device}; it must be float32 on "
                    f"{device}, where the input is (move the cache or build it with LRNNCache(config, batch_size, device))"
                )


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


def hlru_lagged_states(h: torch.Tensor, initial_state: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """The H-LRU readout's states s_t = [h_t, h_{t-1}, ..., h_{t-m+1}]: (B, T, N) -> (B, T, N, m).

    Before t = 0 the lags come from ``initial_state`` (B, N, m) = [h_{-1}, ..., h_{-m}].
    Masked steps (mask == 0) do not shift the lags (the scan keeps the state there), so lag j is the
    j-th most recent unmasked step; at a masked step s_t equals the state at the last unmasked one.
    """
    B, T, N = h.shape
    m = initial_state.shape[-1]
    past = initial_state.flip(-1).transpose(1, 2).to(h.dtype)  # (B, m, N) = h_{-m}, ..., h_{-1}
    ext = torch.cat([past, h], dim=1)  # ext[:, m + t] = h_t
    if mask is None:
        return torch.stack([ext[:, m - j : m - j + T] for j in range(m)], dim=-1)
    keep = torch.cat([mask.new_ones(B, m), mask], dim=1).bool()  # the initial lags count as kept steps
    rank = keep.long().cumsum(1) - 1  # index of the latest kept step at or before each position
    slots = torch.where(keep, rank, torch.full_like(rank, m + T))  # unkept positions go to a spare slot
    position_of_rank = torch.zeros(B, m + T + 1, dtype=torch.long, device=h.device)
    position_of_rank.scatter_(1, slots, torch.arange(m + T, device=h.device).expand(B, -1))
    lag_ranks = rank[:, m:, None] - torch.arange(m, device=h.device)  # (B, T, m), all >= 0
    positions = position_of_rank.gather(1, lag_ranks.reshape(B, T * m))  # (B, T*m)
    lagged = ext.gather(1, positions[..., None].expand(B, T * m, N))
    return lagged.view(B, T, m, N).transpose(2, 3)


class HLRUMixer(nn.Module):
    """m-th order selective recurrence per channel with an L1-normalised gate (see module docstring).

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
        self, x: torch.Tensor, mask: Optional[torch.Tensor], state: Optional[torch.Tensor], return_state: bool
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x (B, T, d), mask (B, T) or None, state (B, N, m) or None -> y (B, T, d), new state or None."""
        B, T, _ = x.shape
        N, m = self.num_channels, self.order
        h, final_state = hlru_scan(
            self.value_proj(x), self.gate_logits(x), initial_state=state, output_final_state=return_state,
            normalization=self.gate_normalization, mask=mask, backend=self.scan_backend,
        )
        if T == 1 and final_state is not None:  # a decode step: the lags after it are the final state
            lagged = final_state.to(h.dtype)[:, None]
        else:
            lagged = hlru_lagged_states(h, state if state is not None else h.new_zeros(B, N, m), mask)  # (B, T, N, m)
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
        self, x: torch.Tensor, mask: Optional[torch.Tensor], state: Optional[torch.Tensor], return_state: bool
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x (B, T, d), mask (B, T) or None, state (B, N, k) or None -> y (B, T, d), new state or None."""
        B, T, _ = x.shape
        v = self.value_proj(x).view(B, T, self.num_blocks, self.block_size)
        h, final_state = bdlru_scan(
            v, self.gate_logits(x), initial_state=state, output_final_state=return_state,
            normalization=self.gate_normalization, mask=mask, backend=self.scan_backend,
        )
        return self.out_proj(h.reshape(B, T, -1)), final_state


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
        self, hidden_states: torch.Tensor, mask: Optional[torch.Tensor] = None, layer_cache: Optional[LRNNCache] = None
    ) -> torch.Tensor:
        state = layer_cache.states[self.layer_idx] if layer_cache is not None else None
        mixed, new_state = self.mixer(self.mixer_norm(hidden_states), mask, state, layer_cache is not None)
        if layer_cache is not None:
            if torch.is_grad_enabled() and new_state.requires_grad:
                layer_cache.states[self.layer_idx] = new_state  # keep the graph (the old state is saved for backward)
            else:
                layer_cache.states[self.layer_idx].copy_(new_state)  # in place: a fixed address for CUDA graphs
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

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate() gets an LRNNCache from _prepare_cache_for_generation


def _pick_cache(cache, past_key_values):
    """The cache passed as ``cache`` (transformers >= 5.24) or ``past_key_values`` (earlier)."""
    if cache is not None and past_key_values is not None:
        raise ValueError("pass the recurrent cache as either `cache` or `past_key_values`, not both")
    cache = cache if cache is not None else past_key_values
    if cache is not None and not isinstance(cache, LRNNCache):
        raise TypeError(
            f"the cache must be an LRNNCache (from a previous forward or LRNNCache(config, batch_size, device)), "
            f"got {type(cache).__name__}"
        )
    return cache


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
        # Token ids need no range check while generate() feeds the model its own samples (it checks the prompt).
        self.check_token_ids = True
        if any(spec["gate_normalization"] == "none" for spec in config.layer_specs) and "none" not in _WARNED:
            _WARNED.add("none")
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
        """Shapes, dtypes and devices (no values read, so no host synchronisation), then, in eager mode and
        unless generate() vouches for them, the token ids' range. Returns (B, T, the inputs' device)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if input_ids is not None:
            if input_ids.dim() != 2 or input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
                raise ValueError(f"input_ids must be an integer tensor (batch, seq_len), got {input_ids.dtype} {tuple(input_ids.shape)}")
            if self.check_token_ids and not torch.compiler.is_compiling():
                check_token_ids(input_ids, self.config.vocab_size)
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
        return B, T, device

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
        **kwargs,
    ) -> Union[Tuple, BaseModelOutputWithPast]:
        """input_ids (B, T) of any integer dtype, or inputs_embeds (B, T, d); attention_mask (B, T) or (B, past + T)
        with 0 at padding (padded steps leave the recurrent state untouched; only its last T columns are read).

        ``cache``: a cache passed in is always read and advanced in place, whatever ``use_cache`` says;
        ``use_cache`` decides whether a new cache is made when none is passed (and returned)."""
        _check_extra_kwargs(kwargs)
        cache = _pick_cache(cache, past_key_values)
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        B, T, device = self._check_inputs(input_ids, inputs_embeds, attention_mask, cache)

        checkpointing = self.training and torch.is_grad_enabled() and any(l.gradient_checkpointing for l in self.layers)
        if checkpointing and cache is not None:
            raise ValueError(
                "gradient checkpointing recomputes layers, which would advance the recurrent cache twice: "
                "pass no cache in training with gradient checkpointing"
            )
        if use_cache and cache is None and not checkpointing:
            cache = LRNNCache(self.config, batch_size=B, device=device)

        mask = None
        if attention_mask is not None:
            mask = attention_mask[:, -T:]
            # Eager prefill and training skip the masked scan when nothing is masked (one host sync); decode
            # steps and compiled code always pass the mask: no data-dependent branch, no sync.
            if T > LOOP_MAX_T and not torch.compiler.is_compiling() and bool(mask.all()):
                mask = None

        hidden_states = self.embed_tokens(input_ids.long()) if inputs_embeds is None else inputs_embeds
        all_hidden_states = [hidden_states] if output_hidden_states else None
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask, cache)
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


def check_token_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    """ValueError unless every id lies in [0, vocab_size) (reads the values: one host sync on GPUs)."""
    if input_ids.numel() == 0:
        return
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"input_ids must lie in [0, vocab_size={vocab_size}), got values in [{low}, {high}]")


class LRNNForCausalLM(LRNNPreTrainedModel, GenerationMixin):
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
            cache=_pick_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
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

    # ------------------------------------------------------------------------------------ generation hooks
    def _prepare_cache_for_generation(self, generation_config, model_kwargs, generation_mode, batch_size, max_cache_length):
        """generate(): an LRNNCache made before the prefill, so that transformers' auto-compile sees a
        compileable cache (``cache_implementation`` None or "static"; "dynamic" decodes eagerly)."""
        user_cache = model_kwargs.get(CACHE_FIELD)
        if user_cache is not None:
            _pick_cache(user_cache, None)
            if generation_config.cache_implementation is not None:
                raise ValueError("pass either a cache or cache_implementation to generate(), not both")
            return
        if generation_config.use_cache is False:
            return
        implementation = generation_config.cache_implementation
        if implementation not in (None, "static", "dynamic"):
            raise ValueError(
                f"cache_implementation={implementation!r} does not apply to a recurrent model: use None or 'static' "
                "(a fixed-size state, compiled decode step on CUDA) or 'dynamic' (eager decode steps)"
            )
        rows = max(generation_config.num_beams or 1, generation_config.num_return_sequences or 1) * batch_size
        model_kwargs[CACHE_FIELD] = LRNNCache(self.config, batch_size=rows, device=self.device,
                                              compileable=implementation != "dynamic")

    def prepare_inputs_for_generation(self, input_ids, next_sequence_length=None, attention_mask=None,
                                      inputs_embeds=None, is_first_iteration=False, **kwargs):
        """Feed only what the cache has not seen: the new token in decode steps; on the first call with a
        cache that already holds a history (continuing a generation with the full ids or embeddings), the
        positions past ``cache.get_seq_length()``."""
        cache = kwargs.pop(CACHE_FIELD, None)
        kwargs.pop("cache_position", None)
        kwargs.pop("position_ids", None)
        seen = cache.get_seq_length() if cache is not None and next_sequence_length is None else 0
        model_inputs = {"attention_mask": attention_mask, CACHE_FIELD: cache, "use_cache": kwargs.pop("use_cache", True)}
        if inputs_embeds is not None and is_first_iteration:
            model_inputs["inputs_embeds"] = inputs_embeds[:, seen:] if next_sequence_length is None else inputs_embeds[:, -next_sequence_length:]
            model_inputs["input_ids"] = None
        else:
            new = input_ids[:, seen:] if next_sequence_length is None else input_ids[:, -next_sequence_length:]
            # A copy with its own strides: a slice of the growing sequence has a new row stride every step, which
            # a compiled decode step would take as a new input layout (a recompile or CUDA-graph recording per token);
            # .contiguous() does not copy a (B, 1) slice.
            model_inputs["input_ids"] = new.clone(memory_format=torch.contiguous_format)
        fed = model_inputs["input_ids"] if model_inputs["input_ids"] is not None else model_inputs["inputs_embeds"]
        if fed.shape[1] == 0:
            raise ValueError(f"generate(): the cache has already seen all {seen} positions of the input; pass at least one new token")
        if attention_mask is not None:  # only the new positions' columns: a fixed shape and strides for the compiled step
            model_inputs["attention_mask"] = attention_mask[:, -fed.shape[1]:].clone(memory_format=torch.contiguous_format)
        for key in ("logits_to_keep", "output_hidden_states"):
            if key in kwargs:
                model_inputs[key] = kwargs.pop(key)
        return model_inputs

    def get_compiled_call(self, compile_config):
        """generate()'s compiled decode step: the forward from token ids to the last logits, compiled with
        ``compile_config`` (CUDA graphs under transformers' default "reduce-overhead"), and the output object
        built outside the compiled region. Steps with other inputs (embeddings, hidden states) run eagerly."""
        compile_config = compile_config or self._default_compile_config()
        if getattr(self, "_compiled_decode_config", None) != compile_config:
            self._compiled_decode_config = compile_config
            self._compiled_decode = torch.compile(self._decode_logits, **compile_config.to_dict())

        def decode_step(input_ids=None, attention_mask=None, use_cache=True, return_dict=True, logits_to_keep=1, **rest):
            cache = rest.pop(CACHE_FIELD, None)
            if input_ids is None or cache is None or rest or not use_cache or logits_to_keep != 1:
                return self(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache,
                            return_dict=return_dict, logits_to_keep=logits_to_keep, **{CACHE_FIELD: cache}, **rest)
            if compile_config.mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            logits = self._compiled_decode(input_ids, attention_mask, cache).clone()  # the graph reuses its output
            return CausalLMOutputWithPast(logits=logits, **{CACHE_FIELD: cache})

        return decode_step

    def _decode_logits(self, input_ids, attention_mask, cache):
        return self(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, **{CACHE_FIELD: cache}).logits

    @torch.no_grad()
    def generate(self, *args, **kwargs):
        """transformers' generate(), with the prompt's token ids checked once here instead of at every step."""
        input_ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
        if input_ids is not None and not input_ids.dtype.is_floating_point:
            check_token_ids(input_ids, self.config.vocab_size)
        previous, self.model.check_token_ids = self.model.check_token_ids, False
        try:
            return super().generate(*args, **kwargs)
        finally:
            self.model.check_token_ids = previous
