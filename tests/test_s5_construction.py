"""A hand-built BD-LRU (k = 5) that solves the S5 word problem exactly, through the public model API.

Encoding (as in benchmarks/synthetic/tasks.py, rebuilt here): token g is the index of a permutation of
{0..4} in ``itertools.permutations`` order, composition ``(g o p)(i) = g(p(i))``, and the target at t is
the running product ``p_t = g_t o p_{t-1}``, ``p_0 = g_0``. With ``P(g) e_i = e_{g(i)}``,
``P(g o p) = P(g) P(p)``, so five k = 5 blocks whose transition is ``A_t = P(g_t)`` carry the product:
block j holds ``P(p_t) e_j`` once it has loaded ``P(g_0) e_j`` at t = 0.

Two BD-LRU layers (k = 5, 5 blocks, d = 64), MLPs zero, no tied weights. Residual coordinates:
``ONE`` (1 for every token), ``PERM`` (the 25 entries of the token's P(g)), ``MARK`` (layer 0 writes
its position marker), ``STATE`` (layer 1 writes the 25 state entries H[i, j] = block j, row i).
- Layer 0, block 0, row 0: gate logits (0, 0, -1e4, ...) from the bias: ``a_0 = A_00 = 1/2``, fed the
  constant v = mu: ``h_t = mu (1 - 2^-(t+1))``, so h_0 = mu/2 and h_t >= 3 mu / 4 afterwards.
- Layer 1, every block, row i: input-gate logit ``K (theta - MARK) / rms`` with theta = 5 mu / 8 (positive
  only at t = 0) and ``A[i, l]`` logit ``L (2 P(g)[i, l] - 1) / rms``; with L = 1e4, K = 24 L / mu the
  softmax saturates exactly in fp32: ``a_0 = 1, A = 0`` at t = 0 and ``a_0 = 0, A = P(g_t)`` afterwards.
  Values: block j, row i reads ``P(g)[i, j]``. Every logit is linear in x / rms(x), so the RMS, which
  varies with t, scales the logits but never changes a sign.
- Readout: ``lm_head`` scores permutation q by <P(q), H_t> = c * #{i : q(i) = p_t(i)}, which is 5c for
  q = p_t and at most 3c otherwise (c > 0 the constant scale of the loaded state).

Also here: a k = 4 construction with ``gate_normalization="none"`` (S5's 4-dimensional standard
representation), which no normalised gate can give, and the enumeration of the signed permutation groups
B_4 and B_5 behind the block-size bound (the argument is in benchmarks/README.md).
"""
import itertools
import os

import numpy as np
import pytest
import torch

from hf_lrnn import LRNNConfig, LRNNForCausalLM

PERMUTATIONS = list(itertools.permutations(range(5)))  # token id -> permutation (tuple of images)
INDEX = {p: i for i, p in enumerate(PERMUTATIONS)}
K = 5  # block size
HIDDEN = 64
ONE, PERM, MARK, STATE = 0, 1, 26, 27  # residual coordinates (PERM and STATE: 25 each, row-major i * 5 + j)
GATE_SCALE = 1e4  # L: the A logits are +-L / rms
LENGTH = 10_000
INTERPRETER_LENGTH = 40  # the Triton interpreter runs ~0.1 s per step and layer at k = 5 (2 shared CPU cores)
CPU_BACKENDS = ["reference", "torch", "auto"]


def permutation_matrix(p) -> torch.Tensor:
    """P(p) (5, 5) with P e_i = e_{p(i)}, so that P(g o p) = P(g) P(p)."""
    P = torch.zeros(K, K)
    P[list(p), list(range(K))] = 1.0
    return P


def running_products(tokens: torch.Tensor) -> torch.Tensor:
    """(B, T) token ids -> (B, T) ids of p_t = g_t o p_{t-1}, p_0 = g_0."""
    table = np.array([[INDEX[tuple(g[i] for i in p)] for p in PERMUTATIONS] for g in PERMUTATIONS])  # [g, p] -> g o p
    seq = tokens.numpy()
    out = np.empty_like(seq)
    out[:, 0] = seq[:, 0]
    for t in range(1, seq.shape[1]):
        out[:, t] = table[seq[:, t], out[:, t - 1]]
    return torch.from_numpy(out)


def s5_model(backend: str, wrong_token=None) -> LRNNForCausalLM:
    """The construction of the module docstring, float32. ``wrong_token``: give that token the permutation
    matrix of a different element (itself composed with the transposition (0 1)) to break the model."""
    config = LRNNConfig(vocab_size=len(PERMUTATIONS), hidden_size=HIDDEN, num_hidden_layers=2, mixer="bdlru",
                        block_size=K, recurrent_size=K * K, intermediate_size=32, scan_backend=backend,
                        tie_word_embeddings=False)
    model = LRNNForCausalLM(config).eval()
    params = dict(model.named_parameters())
    assert params["lm_head.weight"].data_ptr() != params["model.embed_tokens.weight"].data_ptr()
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(torch.ones_like(p) if name.endswith("norm.weight") else torch.zeros_like(p))

        embed = params["model.embed_tokens.weight"]  # (120, d): [1, P(g) flattened, 0 ...]
        embed[:, ONE] = 1.0
        for token, p in enumerate(PERMUTATIONS):
            if token == wrong_token:
                p = tuple(p[i] for i in (1, 0, 2, 3, 4))
            embed[token, PERM:PERM + K * K] = permutation_matrix(p).flatten()

        # Layer 0: block 0, row 0 is h_t = (h_{t-1} + mu) / 2 with mu = 1 / rms(embedding row) = the value it reads.
        mu = 1.0 / np.sqrt((1 + K) / HIDDEN + config.rms_norm_eps)
        gate_bias = params["model.layers.0.mixer.gate_logit_proj.bias"].view(K, K, K + 1)
        gate_bias[0, 0, 2:] = -GATE_SCALE
        params["model.layers.0.mixer.value_proj.weight"][0, ONE] = 1.0
        params["model.layers.0.mixer.out_proj.weight"][MARK, 0] = 1.0

        # Layer 1: input gate open only where MARK < 5 mu / 8 (t = 0); A_t = P(g_t); block j loads column j of P(g_0).
        gate = params["model.layers.1.mixer.gate_logit_proj.weight"].view(K, K, K + 1, HIDDEN)  # [block, row, 1 + col]
        input_scale = 24 * GATE_SCALE / mu
        gate[:, :, 0, ONE] = input_scale * 5 * mu / 8
        gate[:, :, 0, MARK] = -input_scale
        for i, col in itertools.product(range(K), range(K)):
            gate[:, i, 1 + col, PERM + K * i + col] = 2 * GATE_SCALE
            gate[:, i, 1 + col, ONE] = -GATE_SCALE
        value = params["model.layers.1.mixer.value_proj.weight"].view(K, K, HIDDEN)  # [block j, row i]
        out = params["model.layers.1.mixer.out_proj.weight"].view(HIDDEN, K, K)  # [:, block j, row i]
        for j, i in itertools.product(range(K), range(K)):
            value[j, i, PERM + K * i + j] = 1.0
            out[STATE + K * i + j, j, i] = 1.0

        params["lm_head.weight"][:, STATE:STATE + K * K] = torch.stack(
            [permutation_matrix(p).flatten() for p in PERMUTATIONS])
    return model


def predictions(model: LRNNForCausalLM, tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    device = "cuda" if model.config.scan_backend == "triton" and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
    model = model.to(device=device, dtype=dtype)
    with torch.no_grad():
        return model(tokens.to(device), use_cache=False).logits.argmax(-1).cpu()


def random_tokens(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, len(PERMUTATIONS), (batch, length), generator=torch.Generator().manual_seed(seed))


def test_the_construction_encodes_a_homomorphism():
    """P(g o p) = P(g) P(p) for every pair, and distinct elements have distinct matrices: the premise."""
    matrices = torch.stack([permutation_matrix(p) for p in PERMUTATIONS])
    for g, p in itertools.product(range(0, 120, 7), range(120)):
        composed = INDEX[tuple(PERMUTATIONS[g][i] for i in PERMUTATIONS[p])]
        assert torch.equal(matrices[g] @ matrices[p], matrices[composed])
    assert len({tuple(m.flatten().tolist()) for m in matrices}) == 120


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_constructed_bdlru_tracks_s5_over_10000_tokens(backend, dtype):
    tokens = random_tokens(2, LENGTH, seed=0)
    assert torch.equal(predictions(s5_model(backend), tokens, dtype), running_products(tokens))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_constructed_bdlru_tracks_s5_on_the_triton_kernels(dtype):
    """The same model through the Triton kernels: 10,000 tokens on a GPU (TRITON_INTERPRET=0); through
    Triton's CPU interpreter (set by conftest) only INTERPRETER_LENGTH tokens, as it takes ~0.1 s a step."""
    pytest.importorskip("triton")
    length = INTERPRETER_LENGTH if os.environ.get("TRITON_INTERPRET") == "1" else LENGTH
    tokens = random_tokens(1, length, seed=1)
    assert torch.equal(predictions(s5_model("triton"), tokens, dtype), running_products(tokens))


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_one_wrong_permutation_matrix_breaks_the_construction(backend):
    """Exact up to the first occurrence of the corrupted token, then mostly wrong."""
    wrong = 37
    tokens = random_tokens(2, 2_000, seed=2)
    correct = predictions(s5_model(backend, wrong_token=wrong), tokens, torch.float32) == running_products(tokens)
    for row, hits in zip(tokens, correct):
        first = int((row == wrong).nonzero()[0])
        assert hits[:first].all()
        assert not hits[first]
        assert hits[first:].float().mean() < 0.5


# ---------------------------------------------------------------------------------------------------------
# k = 4 is enough without the norm bound: gate_normalization="none" and the 4-dimensional standard
# representation of S5. Every normalised gate (sum_j |a_j| <= 1 per row) makes each block an infinity-norm
# contraction, and the finite groups such blocks carry embed in the signed permutations of degree k, which
# have no element of order 5 for k <= 4 (benchmarks/README.md); "none" has no such bound.

def standard_representation(p) -> torch.Tensor:
    """rho(p) (4, 4): P(p) on the sum-zero subspace of R^5 in the basis b_i = e_i - e_4 (integer entries)."""
    basis = torch.eye(5, dtype=torch.float64)[:, :4] - torch.eye(5, dtype=torch.float64)[:, 4:]  # (5, 4)
    return (torch.linalg.pinv(basis) @ permutation_matrix(p).double() @ basis).round().float()


def signed_permutation_orders(k: int) -> dict:
    """{order: count} over the 2^k k! signed permutation matrices of degree k (the infinity-norm isometries of R^k)."""
    counts = {}
    for p, signs in itertools.product(itertools.permutations(range(k)), itertools.product((1, -1), repeat=k)):
        M = torch.zeros(k, k, dtype=torch.int64)
        M[list(p), list(range(k))] = torch.tensor(signs)
        power, order = M, 1
        while not torch.equal(power, torch.eye(k, dtype=torch.int64)):
            power, order = power @ M, order + 1
        counts[order] = counts.get(order, 0) + 1
    return counts


def test_signed_permutations_have_an_element_of_order_5_only_from_degree_5():
    """The group-theory step of the block-size bound: B_4 (order 384) has element orders 1, 2, 3, 4, 6, 8 only,
    so neither S5 nor A5 (nor Z5) embeds in it; B_5 (order 3840) has 384 elements of order 5."""
    degree_4, degree_5 = signed_permutation_orders(4), signed_permutation_orders(5)
    assert sum(degree_4.values()) == 384 and sorted(degree_4) == [1, 2, 3, 4, 6, 8]
    assert sum(degree_5.values()) == 3840 and degree_5[5] == 384


def s5_model_k4_unnormalised(backend: str) -> LRNNForCausalLM:
    """Two BD-LRU layers of four k = 4 blocks: a softmax layer whose block 0 marks t = 0 exactly (row 1 holds
    the constant 2, row 0 copies row 1's previous value: 0 at t = 0, 2 afterwards) and a gate_normalization
    "none" layer with ``a_0 = 2 ONE - MARK`` (exactly 0 after t = 0) and ``A_t = c rho(g_t)``, c = 1 up to
    rounding (a scalar, which no argmax sees). Embedding rows are [1, rho(g), ones padding the squared norm
    to 16] so that the first norm divides by exactly 1/2 (d = 64, eps 1e-12). Readout: the character
    ``tr(rho(q)^-1 H_t) = #fixed points of q^-1 p_t - 1``, 4 for q = p_t and at most 2 otherwise."""
    k, one, perm, fill, mark, state = 4, 0, 1, 17, 28, 29
    config = LRNNConfig(vocab_size=len(PERMUTATIONS), hidden_size=HIDDEN, num_hidden_layers=2, block_size=k,
                        recurrent_size=k * k, intermediate_size=32, scan_backend=backend, rms_norm_eps=1e-12,
                        tie_word_embeddings=False,
                        mixer=[{"mixer": "bdlru", "gate_normalization": "softmax"},
                               {"mixer": "bdlru", "gate_normalization": "none"}])
    model = LRNNForCausalLM(config).eval()
    params = dict(model.named_parameters())
    rho = [standard_representation(p) for p in PERMUTATIONS]
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(torch.ones_like(p) if name.endswith("norm.weight") else torch.zeros_like(p))
        embed = params["model.embed_tokens.weight"]
        embed[:, one] = 1.0
        for token, r in enumerate(rho):
            embed[token, perm:perm + k * k] = r.flatten()
            embed[token, fill:fill + 15 - int(r.count_nonzero())] = 1.0  # squared norm 1 + 15 = 16 = d / 4

        bias = params["model.layers.0.mixer.gate_logit_proj.bias"].view(k, k, k + 1)
        bias[0, 0] = torch.tensor([-1.0, -1.0, 1.0, -1.0, -1.0]) * GATE_SCALE  # h[0]_t = h[1]_{t-1}
        bias[0, 1] = torch.tensor([1.0, -1.0, -1.0, -1.0, -1.0]) * GATE_SCALE  # h[1]_t = v = 2
        params["model.layers.0.mixer.value_proj.weight"][1, one] = 1.0
        params["model.layers.0.mixer.out_proj.weight"][mark, 0] = 1.0

        after_first = 1.0 / np.sqrt((16 + 4) / HIDDEN + config.rms_norm_eps)  # the second norm's 1 / rms for t >= 1
        gate = params["model.layers.1.mixer.gate_logit_proj.weight"].view(k, k, k + 1, HIDDEN)
        gate[:, :, 0, one] = 2.0
        gate[:, :, 0, mark] = -1.0
        value = params["model.layers.1.mixer.value_proj.weight"].view(k, k, HIDDEN)
        out = params["model.layers.1.mixer.out_proj.weight"].view(HIDDEN, k, k)
        for i, j in itertools.product(range(k), range(k)):
            gate[:, i, 1 + j, perm + k * i + j] = 1.0 / after_first
            value[j, i, perm + k * i + j] = 1.0
            out[state + k * i + j, j, i] = 1.0
        inverse = [INDEX[tuple(sorted(range(5), key=lambda i: p[i]))] for p in PERMUTATIONS]
        params["lm_head.weight"][:, state:state + k * k] = torch.stack([rho[inverse[q]].T.flatten() for q in range(120)])
    return model


def test_the_standard_representation_is_faithful_and_unbounded_in_infinity_norm():
    rho = torch.stack([standard_representation(p) for p in PERMUTATIONS])
    for g, p in itertools.product(range(0, 120, 11), range(120)):
        assert torch.equal(rho[g] @ rho[p], rho[INDEX[tuple(PERMUTATIONS[g][i] for i in PERMUTATIONS[p])]])
    assert len({tuple(r.flatten().tolist()) for r in rho}) == 120
    assert rho.abs().sum(-1).amax() == 4  # rows with 4 nonzeros: no normalised gate (row L1 norm <= 1) gives them


@pytest.mark.filterwarnings("ignore:gate_normalization='none'")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_unnormalised_k4_bdlru_tracks_s5_over_10000_tokens(backend, dtype):
    tokens = random_tokens(2, LENGTH, seed=3)
    assert torch.equal(predictions(s5_model_k4_unnormalised(backend), tokens, dtype), running_products(tokens))
