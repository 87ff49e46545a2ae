"""The recurrent cache of LRNN models: one fixed-size float32 state per layer, constant memory in length."""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
from transformers.cache_utils import Cache

from .configuration_lrnn import LRNNConfig


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

    ``states[i]`` is layer i's float32 state: H-LRU (B, N, m) = [h_{t-1}, ..., h_{t-m}], BD-LRU (B, N, k) =
    h_{t-1}. The buffers are allocated once (zeros: the empty history). Without gradients a forward copies
    the new state into them in place, so that their addresses are fixed and a compiled decode step can be
    captured in a CUDA graph; when gradients flow through the state, a forward replaces ``states[i]`` by the
    new (graph-carrying) tensor instead. ``seen_tokens`` is a 0-d int64 tensor on the same device counting
    the positions processed (padding included), always advanced in place; ``get_seq_length()`` reads it.

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
        # A torch.SymInt is the batch size of a forward traced with a dynamic batch (torch.export).
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, torch.SymInt)) or batch_size < 0:
            raise ValueError(f"LRNNCache: batch_size must be a non-negative int, got {batch_size!r}")
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

    def store_state(self, layer_idx: int, new_state: torch.Tensor) -> None:
        """Layer ``layer_idx``'s state after a forward: copied into the buffer in place, or, when gradients flow
        through it, the new tensor itself (keeping the graph; the old state stays saved for backward). Either
        way float32, whatever the model's dtype."""
        if torch.is_grad_enabled() and new_state.requires_grad:
            self.states[layer_idx] = new_state.float()
        else:
            self.states[layer_idx].copy_(new_state)

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
