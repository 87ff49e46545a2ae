"""Models for the synthetic benchmarks, all as transformers ``PreTrainedModel`` causal LMs.

- ``lrnn``: H-LRU (``mixer="hlru"``, order m) and BD-LRU (``mixer="bdlru"``, block size k) from
  :class:`LRNNConfig`; m = k = 1 is the diagonal selective LRU.
- ``lstm``: :class:`LSTMForCausalLM` below, the same skeleton as the LRNN models (residual
  ``x + LSTM(RMSNorm(x))`` blocks alternating with SwiGLU blocks) with ``nn.LSTM`` as the mixer; its
  RMSNorm is ``torch.nn.RMSNorm`` and the SwiGLU transformers' ``LlamaMLP``, the same maths as the LRNN model's.
- ``llama``: a small ``LlamaForCausalLM`` (RoPE attention + SwiGLU, the same widths).
- ``mamba``: ``MambaForCausalLM`` with 2 x num_layers Mamba blocks (a Mamba block has no separate MLP),
  transformers' pure-PyTorch path unless the mamba-ssm kernels are installed.
- ``deltanet`` / ``gated_deltanet``: from flash-linear-attention (``fla``), imported lazily; its
  kernels are Triton and need a GPU. :func:`build_model` raises :class:`BaselineUnavailable` saying why
  when they cannot run.

:func:`build_model` takes a model name and returns ``(model, description)``; :func:`last_hidden_state`
gets the final (normalised) hidden states of any of them; :class:`ProbeHead` is the encoder probe used
for compression (decode a whole sequence from the last position's hidden state).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput
from transformers.models.llama.modeling_llama import LlamaMLP

from hf_lrnn import LRNNConfig, LRNNForCausalLM
from hf_lrnn.configuration_lrnn import swiglu_intermediate_size


class BaselineUnavailable(RuntimeError):
    """A baseline that cannot run here (missing package or no GPU); the message says which."""


# ------------------------------------------------------------------------------------------ LSTM
class LSTMConfig(PreTrainedConfig):
    model_type = "lrnn_lstm_baseline"

    def __init__(self, vocab_size=256, hidden_size=128, num_hidden_layers=2, intermediate_size=None,
                 rms_norm_eps=1e-5, initializer_range=0.02, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.intermediate_size = intermediate_size or swiglu_intermediate_size(hidden_size)
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.hidden_act, self.mlp_bias = "silu", False  # for transformers' LlamaMLP, the SwiGLU block
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)


class LSTMBlock(nn.Module):
    def __init__(self, config: LSTMConfig):
        super().__init__()
        self.mixer_norm = nn.RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lstm = nn.LSTM(config.hidden_size, config.hidden_size, batch_first=True)
        self.mlp_norm = nn.RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)  # down_proj(silu(gate_proj x) * up_proj x), no biases

    def forward(self, x):
        x = x + self.lstm(self.mixer_norm(x))[0]
        return x + self.mlp(self.mlp_norm(x))


class LSTMPreTrainedModel(PreTrainedModel):
    config_class = LSTMConfig
    base_model_prefix = "model"

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LSTM):
            for name, p in module.named_parameters():
                if "weight" in name:
                    nn.init.normal_(p, std=std)
                else:  # biases: forget gate 0.5 in bias_ih and in bias_hh, 1 in total (order i, f, g, o); the rest 0
                    nn.init.zeros_(p)
                    with torch.no_grad():
                        p[module.hidden_size: 2 * module.hidden_size].fill_(0.5)
        elif isinstance(module, nn.RMSNorm):
            nn.init.ones_(module.weight)


class LSTMModel(LSTMPreTrainedModel):
    def __init__(self, config: LSTMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([LSTMBlock(config) for _ in range(config.num_hidden_layers)])
        self.norm = nn.RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def forward(self, input_ids=None, output_hidden_states=None, return_dict=None, **kwargs):
        x = self.embed_tokens(input_ids)
        states = [x]
        for layer in self.layers:
            x = layer(x)
            states.append(x)
        x = self.norm(x)
        states[-1] = x
        return BaseModelOutput(last_hidden_state=x, hidden_states=tuple(states) if output_hidden_states else None)


class LSTMForCausalLM(LSTMPreTrainedModel):
    """Embedding, residual LSTM/SwiGLU blocks, RMSNorm, linear head; ``labels`` are shifted inside."""

    def __init__(self, config: LSTMConfig):
        super().__init__(config)
        self.model = LSTMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, labels=None, output_hidden_states=None, return_dict=None, **kwargs):
        out = self.model(input_ids=input_ids, output_hidden_states=output_hidden_states)
        logits = self.lm_head(out.last_hidden_state)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


# ------------------------------------------------------------------------------------- builders
MODEL_KINDS = ("hlru", "bdlru", "diag", "lstm", "llama", "mamba", "deltanet", "gated_deltanet")


def build_model(kind: str, vocab_size: int, hidden_size: int = 128, num_layers: int = 2,
                order: int = 2, block_size: int = 4, device: Optional[torch.device] = None,
                scan_backend: str = "auto", gate_normalization: str = "softmax") -> Tuple[PreTrainedModel, dict]:
    """A causal LM of ``kind`` (see module docstring) and a dict describing its configuration;
    ``gate_normalization`` applies to the LRNN kinds only.

    ``num_layers`` counts mixer blocks: the LRNN, LSTM and Llama models alternate them with as many
    SwiGLU blocks (the paper's "two mixer blocks alternating with two SwiGLU blocks" is 2); Mamba
    gets 2 x num_layers Mamba blocks; DeltaNet and Gated DeltaNet blocks include their own SwiGLU.
    """
    d, inter = hidden_size, swiglu_intermediate_size(hidden_size)
    desc = {"kind": kind, "hidden_size": d, "num_layers": num_layers}
    if gate_normalization != "softmax" and kind not in ("hlru", "bdlru", "diag"):
        raise ValueError(f"gate_normalization={gate_normalization!r} applies to the LRNN models, not to {kind!r}")
    if kind in ("hlru", "bdlru", "diag"):
        mixer = "hlru" if kind in ("hlru", "diag") else "bdlru"
        order = 1 if kind == "diag" else order
        config = LRNNConfig(vocab_size=vocab_size, hidden_size=d, num_hidden_layers=num_layers, mixer=mixer,
                            order=order, block_size=block_size, scan_backend=scan_backend,
                            gate_normalization=gate_normalization, use_cache=False)
        model = LRNNForCausalLM(config)
        desc.update({"order": order} if mixer == "hlru" else {"block_size": block_size})
        desc["gate_normalization"] = gate_normalization
    elif kind == "lstm":
        model = LSTMForCausalLM(LSTMConfig(vocab_size=vocab_size, hidden_size=d, num_hidden_layers=num_layers))
    elif kind == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        heads = max(1, d // 32)
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=d, intermediate_size=inter,
                             num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=heads,
                             max_position_embeddings=1024, use_cache=False, tie_word_embeddings=False,
                             pad_token_id=None, bos_token_id=None, eos_token_id=None)
        model = LlamaForCausalLM(config)
        desc["heads"] = heads
    elif kind == "mamba":
        from transformers import MambaConfig, MambaForCausalLM

        config = MambaConfig(vocab_size=vocab_size, hidden_size=d, num_hidden_layers=2 * num_layers, state_size=16,
                             expand=2, use_cache=False, tie_word_embeddings=False,
                             pad_token_id=None, bos_token_id=None, eos_token_id=None)
        model = MambaForCausalLM(config)
        desc.update({"mamba_blocks": 2 * num_layers, "state_size": 16})
    elif kind in ("deltanet", "gated_deltanet"):
        model, extra = _build_fla(kind, vocab_size, d, num_layers, inter, device)
        desc.update(extra)
    else:
        raise ValueError(f"unknown model kind {kind!r}; known: {MODEL_KINDS}")
    if device is not None:
        model = model.to(device)
    return model, desc


def _build_fla(kind, vocab_size, d, num_layers, inter, device):
    if device is None or torch.device(device).type != "cuda":
        raise BaselineUnavailable(f"{kind}: flash-linear-attention's kernels are Triton GPU kernels; no CUDA device here")
    try:
        import fla  # noqa: F401
        from fla.models import DeltaNetConfig, DeltaNetForCausalLM, GatedDeltaNetConfig, GatedDeltaNetForCausalLM
    except Exception as err:  # ImportError, or an incompatible torch/triton
        raise BaselineUnavailable(f"{kind}: flash-linear-attention could not be imported ({type(err).__name__}: {err})") from err
    common = dict(vocab_size=vocab_size, hidden_size=d, num_hidden_layers=num_layers, intermediate_size=inter,
                  use_cache=False, tie_word_embeddings=False, fuse_cross_entropy=False,
                  pad_token_id=None, bos_token_id=None, eos_token_id=None)
    if kind == "deltanet":
        heads = max(1, d // 32)
        model = DeltaNetForCausalLM(DeltaNetConfig(num_heads=heads, **common))
        return model, {"heads": heads, "fla_version": getattr(fla, "__version__", "?")}
    head_dim = 32
    heads = max(1, (3 * d // 4) // head_dim)  # fla's guidance: num_heads * head_dim ~ 0.75 d
    model = GatedDeltaNetForCausalLM(GatedDeltaNetConfig(num_heads=heads, head_dim=head_dim, **common))
    return model, {"heads": heads, "head_dim": head_dim, "fla_version": getattr(fla, "__version__", "?")}


def last_hidden_state(model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
    """The final (normed) hidden states (B, T, d) of any model from :func:`build_model`."""
    base = model.base_model
    kwargs = {} if isinstance(model, LSTMForCausalLM) else {"use_cache": False}
    out = base(input_ids=input_ids, **kwargs)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


class ProbeHead(nn.Module):
    """Encoder probe: decode ``num_targets`` tokens from one hidden state h (B, d).

    ``logits[:, i] = W_2 gelu(W_1 (h + p_i))`` with a learned position embedding p_i; generic over models.
    """

    def __init__(self, hidden_size: int, num_targets: int, vocab_size: int, width: Optional[int] = None):
        super().__init__()
        width = width or 4 * hidden_size
        self.positions = nn.Parameter(torch.randn(num_targets, hidden_size) * 0.02)
        self.norm = nn.LayerNorm(hidden_size)
        self.fc1 = nn.Linear(hidden_size, width)
        self.fc2 = nn.Linear(width, vocab_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.norm(h[:, None, :] + self.positions)
        return self.fc2(F.gelu(self.fc1(z)))


def count_parameters(module: nn.Module, exclude: Tuple[nn.Module, ...] = ()) -> int:
    """Number of parameters of ``module``, each counted once, leaving out those of ``exclude``."""
    skip = {id(p) for m in exclude for p in m.parameters()}
    return sum(p.numel() for p in module.parameters() if id(p) not in skip)
