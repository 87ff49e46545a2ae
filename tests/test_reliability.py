"""Issue 10's hostile-input cases: each of these failed before its fix."""
import warnings

import pytest
import torch

from hf_lrnn import LRNNCache, LRNNConfig, LRNNForCausalLM, ops
from hf_lrnn.gates import GATE_NORMALIZATIONS
from hf_lrnn.modeling_lrnn import CACHE_FIELD

DIVIDING = [n for n in GATE_NORMALIZATIONS if n != "none"]
BACKENDS = ["reference", "torch"] + (["triton"] if ops.TRITON_IMPORT_ERROR is None else [])


def tiny_model(mixer="hlru", layers=2, **overrides):
    torch.manual_seed(0)
    kwargs = dict(vocab_size=37, hidden_size=24, num_hidden_layers=layers, intermediate_size=40, mixer=mixer)
    kwargs.update(overrides)
    return LRNNForCausalLM(LRNNConfig(**kwargs)).eval()


def ids(B, T, seed=0):
    return torch.randint(0, 37, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normalization", DIVIDING)
@pytest.mark.parametrize("kind", ["hlru", "bdlru"])
def test_extreme_logits_give_finite_equal_results_on_every_backend(kind, normalization, backend):
    """Logits of +-1e4 (every logit of a row below -89 included): finite h, final state and gradients, equal
    to the float64 reference's."""
    g = torch.Generator().manual_seed(1)
    B, T, N, D = 2, 9, 3, 2
    tail = (N,) if kind == "hlru" else (N, D)
    v = torch.randn(B, T, *tail, generator=g)
    logits = 1e4 * torch.sign(torch.randn(B, T, *tail, D + 1, generator=g))
    logits[:, 3] = -1e4  # whole rows far below sigmoid's underflow
    scan = ops.hlru_scan if kind == "hlru" else ops.bdlru_scan

    def run(dtype, backend):
        x, lg = v.to(dtype).requires_grad_(True), logits.to(dtype).requires_grad_(True)
        h, final = scan(x, lg, output_final_state=True, normalization=normalization, backend=backend)
        grads = torch.autograd.grad(h.double().sum() + final.double().sum(), (x, lg))
        return [h, final, *grads]

    got = run(torch.float32, backend)
    ref = run(torch.float64, "reference")
    for a, b in zip(got, ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mixer", ["hlru", "bdlru"])
def test_a_cache_passed_with_use_cache_false_is_used(mixer):
    model = tiny_model(mixer)
    x = ids(2, 10)
    with torch.no_grad():
        full = model(x, use_cache=False).logits
        cache = LRNNCache(model.config, batch_size=2)
        model(x[:, :6], **{CACHE_FIELD: cache})
        rest = model(x[:, 6:], use_cache=False, **{CACHE_FIELD: cache}).logits
    torch.testing.assert_close(rest, full[:, 6:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mixer", ["hlru", "bdlru"])
@pytest.mark.parametrize("with_embeds", [False, True])
def test_generate_continued_from_a_returned_cache_equals_one_go(mixer, with_embeds):
    model = tiny_model(mixer)
    prompt = ids(1, 6, seed=2)
    one_go = model.generate(prompt, max_new_tokens=8, do_sample=False)
    first = model.generate(prompt, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    cache = getattr(first, CACHE_FIELD)
    assert cache.get_seq_length() == 8  # 6 prompt tokens + 2 fed back (the 3rd is not fed yet)
    if with_embeds:
        embeds = model.get_input_embeddings()(first.sequences)
        out = model.generate(inputs_embeds=embeds, max_new_tokens=5, do_sample=False, **{CACHE_FIELD: cache})
        assert torch.equal(out, one_go[:, 9:])
    else:
        out = model.generate(first.sequences, max_new_tokens=5, do_sample=False, **{CACHE_FIELD: cache})
        assert torch.equal(out, one_go)


@pytest.mark.parametrize("field, value", [("rms_norm_eps", float("nan")), ("rms_norm_eps", float("inf")),
                                          ("initializer_range", float("inf")), ("initializer_range", float("nan"))])
def test_config_rejects_nan_and_inf(field, value):
    with pytest.raises(ValueError, match=f"LRNNConfig.{field} must be a finite number"):
        LRNNConfig(**{field: value})


def test_a_config_edited_after_construction_fails_when_the_model_is_built():
    config = LRNNConfig(mixer="bdlru", hidden_size=32, block_size=4)
    config.block_size = 5
    with pytest.raises(ValueError, match="recurrent_size .* must be a multiple of block_size"):
        LRNNForCausalLM(config)
    config = LRNNConfig(order=2)
    config.order = 0
    with pytest.raises(ValueError, match="order must be a positive int"):
        LRNNForCausalLM(config)


def test_a_cache_of_another_model_is_refused_with_what_differs():
    model = tiny_model(layers=2)
    other = tiny_model(layers=3)
    with pytest.raises(ValueError, match="the cache holds states for 3 layers, but the model has 2"):
        model(ids(1, 2), **{CACHE_FIELD: LRNNCache(other.config, batch_size=1)})
    wide = tiny_model(layers=2, recurrent_size=48)
    with pytest.raises(ValueError, match=r"state of layer 0 has shape \(1, 48, 2\)"):
        model(ids(1, 2), **{CACHE_FIELD: LRNNCache(wide.config, batch_size=1)})
    cache = LRNNCache(model.config, batch_size=1)
    cache.states[1] = cache.states[1].double()
    with pytest.raises(ValueError, match="state of layer 1 is a torch.float64 tensor on cpu; it must be float32"):
        model(ids(1, 2), **{CACHE_FIELD: cache})


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_every_integer_dtype_of_input_ids_works(dtype):
    model = tiny_model()
    x = ids(2, 5)
    with torch.no_grad():
        torch.testing.assert_close(model(x.to(dtype)).logits, model(x).logits)
    with pytest.raises(ValueError, match="input_ids must be an integer tensor"):
        model(x.float())


def test_shift_labels_reach_the_loss():
    model = tiny_model()
    x = ids(2, 8)
    shifted = torch.cat([x[:, 1:], torch.full((2, 1), -100)], dim=1)
    a = model(x, labels=x).loss
    b = model(x, shift_labels=shifted).loss
    torch.testing.assert_close(a, b)


def test_unnormalised_gates_warn_once():
    from hf_lrnn import modeling_lrnn

    modeling_lrnn._WARNED.discard("none")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_model(gate_normalization="none")
        tiny_model(gate_normalization="none")
    assert sum("gate_normalization='none'" in str(w.message) for w in caught) == 1
