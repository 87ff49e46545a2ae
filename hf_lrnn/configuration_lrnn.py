"""Configuration of H-LRU / BD-LRU causal language models."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Union

from transformers import PreTrainedConfig

from .constants_lrnn import GATE_NORMALIZATIONS, MIXERS, SCAN_BACKENDS

# Keys a per-layer mixer spec (a dict in the ``mixer`` list) may set; the rest come from the config.
LAYER_SPEC_KEYS = ("mixer", "order", "block_size", "recurrent_size", "gate_normalization")


def swiglu_intermediate_size(hidden_size: int, numerator: int = 8, denominator: int = 3, multiple_of: int = 32) -> int:
    """A SwiGLU width of about ``numerator / denominator * hidden_size``, rounded up to ``multiple_of``."""
    return multiple_of * -(-numerator * hidden_size // (denominator * multiple_of))


class LRNNConfig(PreTrainedConfig):
    r"""Configuration of an :class:`LRNNForCausalLM`.

    The model is ``num_hidden_layers`` blocks of ``x = x + Mixer(RMSNorm(x))`` then
    ``x = x + SwiGLU(RMSNorm(x))``, a final RMSNorm and a linear head; no positional embeddings.

    Args:
        vocab_size: number of token ids.
        hidden_size: model width d.
        num_hidden_layers: number of (mixer, SwiGLU) block pairs.
        mixer: ``"hlru"`` (m-th order recurrence per channel) or ``"bdlru"`` (block-diagonal, k x k
            blocks) for every layer, or a list with one entry per layer, each a mixer name or a dict
            with keys among ``LAYER_SPEC_KEYS`` (e.g. ``{"mixer": "bdlru", "block_size": 8}``) to build
            hybrids. Unset keys take the config-wide values.
        order: H-LRU order m (>= 1); m = 1 is the diagonal selective LRU.
        block_size: BD-LRU block size k (>= 1); k = 1 is the diagonal selective LRU.
        recurrent_size: width of h_t; defaults to ``hidden_size``. H-LRU has ``recurrent_size``
            channels; BD-LRU has ``recurrent_size / block_size`` blocks (must divide).
        gate_normalization: how the m+1 (k+1) gate logits per channel (row) become coefficients:
            one of ``GATE_NORMALIZATIONS``; ``"softmax"`` is the paper's default.
        intermediate_size: SwiGLU inner width; defaults to 8d/3 rounded up to a multiple of 32.
        scan_backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"reference"`` (see ``hf_lrnn.ops``).
        rms_norm_eps, initializer_range, use_cache, tie_word_embeddings, pad/bos/eos_token_id: as in
            other transformers models.
    """

    model_type = "lrnn"

    def __init__(
        self,
        vocab_size: int = 256,
        hidden_size: int = 128,
        num_hidden_layers: int = 2,
        mixer: Union[str, List[Union[str, Dict[str, Any]]]] = "hlru",
        order: int = 2,
        block_size: int = 4,
        recurrent_size: Optional[int] = None,
        gate_normalization: str = "softmax",
        intermediate_size: Optional[int] = None,
        scan_backend: str = "auto",
        rms_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        use_cache: bool = True,
        tie_word_embeddings: bool = False,
        pad_token_id: Optional[int] = None,
        bos_token_id: Optional[int] = None,
        eos_token_id: Optional[int] = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.mixer = mixer
        self.order = order
        self.block_size = block_size
        self.recurrent_size = recurrent_size if recurrent_size is not None else hidden_size
        self.gate_normalization = gate_normalization
        self.intermediate_size = (
            intermediate_size if intermediate_size is not None else swiglu_intermediate_size(hidden_size)
        )
        self.scan_backend = scan_backend
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self._validate()

    @property
    def layer_specs(self) -> List[Dict[str, Any]]:
        """One resolved mixer spec per layer: dicts with every key of ``LAYER_SPEC_KEYS``."""
        defaults = {
            "mixer": self.mixer if isinstance(self.mixer, str) else None,
            "order": self.order,
            "block_size": self.block_size,
            "recurrent_size": self.recurrent_size,
            "gate_normalization": self.gate_normalization,
        }
        entries = [self.mixer] * self.num_hidden_layers if isinstance(self.mixer, str) else self.mixer
        specs = []
        for entry in entries:
            spec = dict(defaults)
            spec.update({"mixer": entry} if isinstance(entry, str) else entry)
            specs.append(spec)
        return specs

    def _validate(self) -> None:
        """ValueError naming the first invalid field (run at construction and again when a model is built)."""
        def positive_int(name: str, value: Any) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LRNNConfig.{name} must be a positive int, got {value!r}")

        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size"):
            positive_int(name, getattr(self, name))
        def finite_number(name: str, value: Any, low: float, low_inclusive: bool) -> None:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < low or (value == low and not low_inclusive):
                bound = f">= {low}" if low_inclusive else f"> {low}"
                raise ValueError(f"LRNNConfig.{name} must be a finite number {bound}, got {value!r}")

        finite_number("rms_norm_eps", self.rms_norm_eps, 0.0, low_inclusive=False)
        finite_number("initializer_range", self.initializer_range, 0.0, low_inclusive=True)
        if self.scan_backend not in SCAN_BACKENDS:
            raise ValueError(f"LRNNConfig.scan_backend must be one of {SCAN_BACKENDS}, got {self.scan_backend!r}")
        for name in ("pad_token_id", "bos_token_id"):
            value = getattr(self, name, None)
            if value is not None and not (isinstance(value, int) and 0 <= value < self.vocab_size):
                raise ValueError(f"LRNNConfig.{name} must be None or an id in [0, vocab_size={self.vocab_size}), got {value!r}")
        eos = getattr(self, "eos_token_id", None)
        for value in eos if isinstance(eos, list) else [eos]:
            if value is not None and not (isinstance(value, int) and 0 <= value < self.vocab_size):
                raise ValueError(f"LRNNConfig.eos_token_id must be None, an id or a list of ids in [0, vocab_size={self.vocab_size}), got {eos!r}")

        if isinstance(self.mixer, str):
            entries = [self.mixer]
        elif isinstance(self.mixer, (list, tuple)):
            if len(self.mixer) != self.num_hidden_layers:
                raise ValueError(
                    f"LRNNConfig.mixer is a list of {len(self.mixer)} layer specs but num_hidden_layers is "
                    f"{self.num_hidden_layers}: give one entry per layer"
                )
            self.mixer = list(self.mixer)
            entries = self.mixer
        else:
            raise ValueError(f"LRNNConfig.mixer must be one of {MIXERS} or a list of per-layer specs, got {self.mixer!r}")
        for i, entry in enumerate(entries):
            where = "LRNNConfig.mixer" if isinstance(self.mixer, str) else f"LRNNConfig.mixer[{i}]"
            if isinstance(entry, dict):
                unknown = set(entry) - set(LAYER_SPEC_KEYS)
                if unknown:
                    raise ValueError(f"{where} has unknown keys {sorted(unknown)}; allowed: {LAYER_SPEC_KEYS}")
                if "mixer" not in entry:
                    raise ValueError(f"{where} must name its 'mixer' ({MIXERS})")
            elif not isinstance(entry, str):
                raise ValueError(f"{where} must be a mixer name {MIXERS} or a dict, got {entry!r}")

        for i, spec in enumerate(self.layer_specs):
            prefix = "LRNNConfig" if isinstance(self.mixer, str) else f"LRNNConfig.mixer[{i}]"
            if spec["mixer"] not in MIXERS:
                raise ValueError(f"{prefix}.mixer must be one of {MIXERS}, got {spec['mixer']!r}")
            for name in ("order", "block_size", "recurrent_size"):
                positive_int(name if prefix == "LRNNConfig" else f"mixer[{i}].{name}", spec[name])
            if spec["gate_normalization"] not in GATE_NORMALIZATIONS:
                raise ValueError(
                    f"{prefix}.gate_normalization must be one of {GATE_NORMALIZATIONS}, got {spec['gate_normalization']!r}"
                )
            if spec["mixer"] == "bdlru" and spec["recurrent_size"] % spec["block_size"]:
                raise ValueError(
                    f"{prefix}.recurrent_size ({spec['recurrent_size']}) must be a multiple of block_size "
                    f"({spec['block_size']}) for the BD-LRU mixer"
                )
