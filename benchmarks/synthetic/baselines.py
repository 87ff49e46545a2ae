"""Models of the synthetic benchmarks, all transformers causal LMs, built by :func:`build_model` from a label of
:data:`benchmarks.models.MODELS`: the LRNNs; ``lstm`` (:class:`LSTMForCausalLM`, the LRNN model's skeleton with
``nn.LSTM`` as the mixer); ``llama``; ``mamba`` and ``mamba2`` (2 x num_layers blocks; Mamba-2 on CUDA must run
mamba-ssm's Triton SSD kernels, :func:`_mamba2_kernels`); ``deltanet`` (fla, GPU only). A model that cannot run
here raises :class:`BaselineUnavailable` saying why. :class:`ProbeHead` decodes compression's targets."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import inspect
import sys
import types
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput
from transformers.models.llama.modeling_llama import LlamaMLP

from hf_lrnn import LRNNConfig, LRNNForCausalLM, swiglu_intermediate_size

from benchmarks.models import lrnn_fields, model_entry


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


class LSTMForCausalLM(PreTrainedModel):
    """Embedding, residual LSTM/SwiGLU blocks, RMSNorm, linear head; ``labels`` are shifted inside."""

    config_class = LSTMConfig

    def __init__(self, config: LSTMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([LSTMBlock(config) for _ in range(config.num_hidden_layers)])
        self.norm = nn.RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

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

    def final_hidden_state(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """The normed output (B, T, d) of the last block, from the embeddings (B, T, d)."""
        x = inputs_embeds
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward(self, input_ids=None, inputs_embeds=None, labels=None, **kwargs):
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        logits = self.lm_head(self.final_hidden_state(x))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)


# ------------------------------------------------------------------------------------- builders
def build_model(label: str, vocab_size: int, hidden_size: int = 128, num_layers: int = 2,
                device: Optional[torch.device] = None, scan_backend: str = "auto",
                gate_normalization: str = "softmax") -> Tuple[PreTrainedModel, dict]:
    """The causal LM of ``label`` and a dict describing it; ``scan_backend`` and ``gate_normalization``
    apply to the LRNNs only. ``num_layers`` counts mixer blocks (alternating with as many SwiGLU blocks; Mamba and
    Mamba-2 get 2 x num_layers blocks, DeltaNet blocks hold their own SwiGLU)."""
    d, inter, kind = hidden_size, swiglu_intermediate_size(hidden_size), model_entry(label)["kind"]
    desc = {"label": label, "hidden_size": d, "num_layers": num_layers}
    if gate_normalization != "softmax" and kind != "lrnn":
        raise ValueError(f"gate_normalization={gate_normalization!r} applies to the LRNN models, not to {label!r}")
    if kind == "lrnn":
        fields = lrnn_fields(label, d)
        config = LRNNConfig(vocab_size=vocab_size, hidden_size=d, num_hidden_layers=num_layers, scan_backend=scan_backend,
                            gate_normalization=gate_normalization, use_cache=False, **fields)
        model = LRNNForCausalLM(config)
        desc.update(fields, gate_normalization=gate_normalization)
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
    elif kind == "mamba2":
        model, extra = _build_mamba2(vocab_size, d, num_layers, device)
        desc.update(extra)
    elif kind == "deltanet":
        model, extra = _build_deltanet(vocab_size, d, num_layers, inter, device)
        desc.update(extra)
    if device is not None:
        model = model.to(device)
    return model, desc


MAMBA2_STATE_SIZE = 64
MAMBA2_HEAD_DIM = 64


def _build_mamba2(vocab_size, d, num_layers, device):
    """``Mamba2ForCausalLM``: 2 x num_layers blocks, inner width 2d = heads x 64, state 64, one group of
    B/C (so transformers 5.17's and 5.24's gated RMSNorms agree), transformers' chunk size 256."""
    inner = 2 * d
    if inner % MAMBA2_HEAD_DIM:
        raise ValueError(f"mamba2 needs 2 x hidden_size divisible by its head dim {MAMBA2_HEAD_DIM}; got hidden_size={d}")
    kernels = _mamba2_kernels(device is not None and torch.device(device).type == "cuda")
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2ForCausalLM

    heads = inner // MAMBA2_HEAD_DIM
    config = Mamba2Config(vocab_size=vocab_size, hidden_size=d, num_hidden_layers=2 * num_layers, expand=2,
                          num_heads=heads, head_dim=MAMBA2_HEAD_DIM, state_size=MAMBA2_STATE_SIZE, n_groups=1,
                          use_cache=False, tie_word_embeddings=False,
                          pad_token_id=None, bos_token_id=None, eos_token_id=None)
    return Mamba2ForCausalLM(config), {"mamba_blocks": 2 * num_layers, "state_size": MAMBA2_STATE_SIZE,
                                       "heads": heads, "head_dim": MAMBA2_HEAD_DIM,
                                       "chunk_size": config.chunk_size, **kernels}


def _mamba2_kernels(cuda: bool) -> dict:
    """Which kernels transformers' Mamba-2 mixer calls here (desc entries kernel_path, conv1d,
    training_path, mamba_ssm), checked against the device. transformers binds mamba-ssm's functions when
    ``modeling_mamba2`` is first imported and ``import mamba_ssm`` succeeds: a wheel built without CUDA extensions
    gets a placeholder for Mamba-1's ``selective_scan_cuda`` (:func:`_import_mamba_ssm`); without causal-conv1d the
    fused training kernel is pointed back at transformers' fallback (the unfused path with mamba-ssm's SSD scan).
    BaselineUnavailable where the chunk scan is not mamba-ssm's on CUDA, or is on the CPU."""
    if cuda:
        if not torch.cuda.is_available():
            raise BaselineUnavailable("mamba2: a CUDA device was asked for, but torch sees none")
        _import_mamba_ssm()
    from transformers.models.mamba2 import modeling_mamba2 as mm

    on_mamba_ssm = _bound_module(mm.mamba2_chunk_scan).startswith("mamba_ssm.")
    if cuda and not on_mamba_ssm:
        raise BaselineUnavailable(
            "mamba2: transformers' Mamba-2 is bound to its PyTorch chunk scan, not mamba-ssm's Triton SSD kernels, "
            "because transformers.models.mamba2.modeling_mamba2 was imported in this process before mamba_ssm "
            "was importable; build mamba2 in a fresh process")
    if not cuda and on_mamba_ssm:
        raise BaselineUnavailable("mamba2 on the CPU: transformers bound mamba-ssm's Triton kernels (mamba_ssm is "
                                  "importable in this process), and they need CUDA tensors")
    fused = mm.mamba2_split_conv1d_scan_combined
    if cuda and _bound_module(fused).startswith("mamba_ssm.") and not _causal_conv1d_kernels():
        mm.mamba2_split_conv1d_scan_combined = fused.__wrapped__  # transformers' fallback: returns None
    kernels = {"kernel_path": "ssd_triton" if cuda else "torch",
               "conv1d": "causal_conv1d" if _bound_module(mm.causal_conv1d_fn).startswith("causal_conv1d") else "torch",
               "training_path": "fused" if _bound_module(mm.mamba2_split_conv1d_scan_combined).startswith("mamba_ssm.")
               else "unfused"}
    if cuda:
        kernels["mamba_ssm"] = sys.modules["mamba_ssm"].__version__
    return kernels


class _UnbuiltExtension(types.ModuleType):
    """Stands in for a compiled extension that a package was built without; any use of it raises."""

    def __init__(self, name: str):
        super().__init__(name)
        self.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)

    def __getattr__(self, attr):
        raise AttributeError(f"{self.__name__}.{attr}: mamba-ssm was built without its CUDA extensions "
                             "(MAMBA_SKIP_CUDA_BUILD=TRUE); only its Triton kernels (Mamba-2's SSD) are available")


def _import_mamba_ssm():
    """Import mamba_ssm, with a placeholder for Mamba-1's ``selective_scan_cuda`` where it was not built."""
    if importlib.util.find_spec("mamba_ssm") is None:
        raise BaselineUnavailable(
            "mamba2: mamba-ssm is not installed; its Triton SSD kernels need no CUDA build (a wheel from "
            "`MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE pip wheel --no-deps --no-build-isolation mamba-ssm==2.3.1`)")
    if "selective_scan_cuda" not in sys.modules and importlib.util.find_spec("selective_scan_cuda") is None:
        sys.modules["selective_scan_cuda"] = _UnbuiltExtension("selective_scan_cuda")
    try:
        import mamba_ssm  # noqa: F401
        from mamba_ssm.ops.triton import ssd_combined  # noqa: F401
    except Exception as err:  # ImportError, or a Triton/torch incompatibility at import
        raise BaselineUnavailable(f"mamba2: mamba_ssm could not be imported ({type(err).__name__}: {err})") from err


def _causal_conv1d_kernels() -> bool:
    """Whether mamba-ssm's fused training kernel found causal-conv1d's CUDA convolution."""
    from mamba_ssm.ops.triton import ssd_combined

    return ssd_combined.causal_conv1d_fwd_function is not None


def _bound_module(fn) -> str:
    """The module of the function that transformers' kernel wrapper ``fn`` calls (its closure's
    ``implementation``), or ``fn``'s own for a plain function."""
    if not hasattr(fn, "__wrapped__"):
        return fn.__module__
    implementation = inspect.getclosurevars(fn).nonlocals.get("implementation")
    if implementation is None:
        raise BaselineUnavailable(f"mamba2: cannot tell which function transformers' {fn.__name__} calls "
                                  "(its kernel wrapper has changed)")
    return implementation.__module__


def _build_deltanet(vocab_size, d, num_layers, inter, device):
    """fla's ``DeltaNetForCausalLM``: d / 32 heads, its own SwiGLU of width ``inter`` in every block."""
    if device is None or torch.device(device).type != "cuda":
        raise BaselineUnavailable("deltanet: flash-linear-attention's kernels are Triton GPU kernels; no CUDA device here")
    try:
        import fla
        from fla.models import DeltaNetConfig, DeltaNetForCausalLM
    except Exception as err:  # ImportError, or an incompatible torch/triton
        raise BaselineUnavailable(f"deltanet: flash-linear-attention could not be imported ({type(err).__name__}: {err})") from err
    heads = max(1, d // 32)
    config = DeltaNetConfig(vocab_size=vocab_size, hidden_size=d, num_hidden_layers=num_layers, intermediate_size=inter,
                            num_heads=heads, use_cache=False, tie_word_embeddings=False, fuse_cross_entropy=False,
                            pad_token_id=None, bos_token_id=None, eos_token_id=None)
    return DeltaNetForCausalLM(config), {"heads": heads, "fla_version": getattr(fla, "__version__", "?")}


def last_hidden_state(model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
    """The final (normed) hidden states (B, T, d) of any model from :func:`build_model`. The ids go in as
    their embeddings (``inputs_embeds``), so that no model reads their values on the host (a synchronisation
    that a CUDA graph cannot capture); the caller checks their range once."""
    inputs_embeds = model.get_input_embeddings()(input_ids)
    if isinstance(model, LSTMForCausalLM):
        return model.final_hidden_state(inputs_embeds)
    out = model.base_model(inputs_embeds=inputs_embeds, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


class ProbeHead(nn.Module):
    """Decode ``num_targets`` tokens from one hidden state h (B, d): logits_i = W_2 gelu(W_1 LN(h + p_i))."""

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
