"""Helpers shared by the library's tests: tiny configurations and models, token ids, scan inputs."""
import torch

from hf_lrnn import LRNNConfig, LRNNForCausalLM

F64 = torch.float64
VOCAB_SIZE = 37
# Mixer settings of the tiny models: H-LRU of order 3, BD-LRU with 4 x 4 blocks, and a hybrid of both.
MIXERS = {
    "hlru": dict(mixer="hlru", order=3),
    "bdlru": dict(mixer="bdlru", block_size=4),
    "hybrid": dict(mixer=["hlru", {"mixer": "bdlru", "block_size": 2, "gate_normalization": "tanh_l1"}]),
}


def tiny_config(mixer="hlru", **overrides):
    """A 2-layer, width-24 LRNNConfig over 37 token ids (pad id 0) with the ``MIXERS[mixer]`` settings."""
    kwargs = dict(vocab_size=VOCAB_SIZE, hidden_size=24, num_hidden_layers=2, intermediate_size=40, pad_token_id=0)
    kwargs.update(MIXERS[mixer])
    kwargs.update(overrides)
    return LRNNConfig(**kwargs)


def tiny_model(mixer="hlru", seed=0, **overrides):
    """An LRNNForCausalLM of ``tiny_config`` with weights from ``seed``, in eval mode."""
    torch.manual_seed(seed)
    return LRNNForCausalLM(tiny_config(mixer, **overrides)).eval()


def ids(B, T, seed=0, low=2):
    """(B, T) random token ids in [low, 37) (by default past the pad id 0 and id 1)."""
    return torch.randint(low, VOCAB_SIZE, (B, T), generator=torch.Generator().manual_seed(seed))


def scan_inputs(kind, B, T, N, D, *, with_state=False, with_mask=False, normalization="softmax",
                dtype=torch.float32, seed=0):
    """Random inputs of a scan: (v, gate_logits, initial_state or None, mask or None).

    H-LRU (kind "hlru", order m = D): v (B, T, N), gate_logits (B, T, N, m+1); BD-LRU ("bdlru", block size
    k = D): v (B, T, N, k), gate_logits (B, T, N, k, k+1); initial_state (B, N, D). Logits ~ N(0, 2^2),
    N(0, 0.3^2) for ``normalization="none"`` (raw gates: keeps the recurrence from blowing up). The mask
    (bool, B, T) leaves row 0 unmasked and masks about 30% of the other rows' steps."""
    g = torch.Generator().manual_seed(seed)
    tail = (N,) if kind == "hlru" else (N, D)
    v = torch.randn(B, T, *tail, generator=g, dtype=dtype)
    scale = 0.3 if normalization == "none" else 2.0
    logits = scale * torch.randn(B, T, *tail, D + 1, generator=g, dtype=dtype)
    state = torch.randn(B, N, D, generator=g, dtype=dtype) if with_state else None
    mask = None
    if with_mask:
        mask = torch.rand(B, T, generator=g) > 0.3
        mask[0] = True
    return v, logits, state, mask


def relative_error(x, ref):
    """||x - ref|| / ||ref|| in float64."""
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()
