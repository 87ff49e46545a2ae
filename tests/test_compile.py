"""torch.compile readiness, on the CPU: no graph break in the forward, a training step and a
cached decode step for both mixers; compiled gradients equal eager ones; the static in-place cache gives
what fresh per-step states give; compiled generate() gives eager generate()'s greedy tokens; the Triton
scans are custom operators that pass torch.library.opcheck (through Triton's interpreter); torch.export with
a dynamic batch gives eager's outputs.

The compiled runs use the "aot_eager" backend: dynamo and AOTAutograd trace exactly as with inductor, but
no C++ compiler is needed, which keeps the tests fast and the CI machine's toolchain out of them.
"""
import pytest
import torch
from torch._dynamo.utils import counters
from transformers import GenerationConfig
from transformers.generation.configuration_utils import CompileConfig

from hf_lrnn import LRNNCache, LRNNConfig, LRNNForCausalLM
from hf_lrnn.generation_lrnn import CACHE_FIELD
from helpers import ids, tiny_model

def graph_breaks(fn, *args, **kwargs) -> int:
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(*args, **kwargs)
    assert explanation.graph_count >= 1
    return explanation.graph_break_count


@pytest.mark.parametrize("mixer", ["hlru", "bdlru"])
def test_no_graph_break_in_forward_training_step_and_decode_step(mixer):
    model = tiny_model(mixer)
    x, mask = ids(2, 40), torch.ones(2, 40, dtype=torch.long)

    def training_loss(input_ids, attention_mask):  # the backward is AOTAutograd's (test_compiled_gradients...)
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids, use_cache=False).loss

    model.train()
    assert graph_breaks(training_loss, x, mask) == 0
    model.eval()
    with torch.no_grad():
        assert graph_breaks(lambda a, m: model(input_ids=a, attention_mask=m, use_cache=False).logits, x, mask) == 0
        cache = LRNNCache(model.config, batch_size=2)
        model(input_ids=x, **{CACHE_FIELD: cache})
        step_mask = torch.ones(2, 41, dtype=torch.long)
        decode = lambda t, m: model(input_ids=t, attention_mask=m, **{CACHE_FIELD: cache}).logits  # noqa: E731
        assert graph_breaks(decode, ids(2, 1, seed=1), step_mask) == 0


@pytest.mark.parametrize("mixer", ["hlru", "bdlru"])
def test_compiled_gradients_equal_eager(mixer):
    model = tiny_model(mixer).train()
    x = ids(2, 40)
    model(input_ids=x, labels=x, use_cache=False).loss.backward()
    eager = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    compiled(input_ids=x, labels=x, use_cache=False).loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, eager[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("mixer", ["hlru", "bdlru"])
def test_static_cache_equals_fresh_states_over_50_steps(mixer):
    """The in-place cache (one buffer per layer, updated by copy_) against states carried functionally:
    the full-sequence forward, which runs the scan from zero over all 50 positions."""
    model = tiny_model(mixer).eval()
    x = ids(3, 50, seed=2)
    with torch.no_grad():
        full = model(input_ids=x, use_cache=False).logits
        cache = LRNNCache(model.config, batch_size=3)
        buffers = [s.data_ptr() for s in cache.states]
        steps = [model(input_ids=x[:, t : t + 1], **{CACHE_FIELD: cache}).logits for t in range(50)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5)
    assert [s.data_ptr() for s in cache.states] == buffers and cache.get_seq_length() == 50


@pytest.mark.parametrize("mixer, batch", [("hlru", 1), ("bdlru", 2)])
def test_compiled_generate_gives_the_eager_greedy_tokens(mixer, batch):
    model = tiny_model(mixer).eval()
    prompt = ids(batch, 7, seed=3)
    eager = model.generate(prompt, max_new_tokens=12, do_sample=False, disable_compile=True)
    torch._dynamo.reset()
    counters.clear()
    compile_config = CompileConfig(backend="aot_eager", fullgraph=True, mode=None)
    compile_config._compile_all_devices = True  # transformers compiles on accelerators only unless told so
    config = GenerationConfig(max_new_tokens=12, do_sample=False, compile_config=compile_config)
    compiled = model.generate(prompt, generation_config=config)
    assert torch.equal(compiled, eager)
    # One graph for every step: the inputs keep their layout (a new layout would recompile, or re-record the
    # CUDA graph, at every token).
    assert counters["stats"]["unique_graphs"] == 1
    assert model._last_compile_config == compile_config
    calls = []
    model._compiled_call = lambda *args, real=model._compiled_call: calls.append(1) or real(*args)
    assert torch.equal(model.generate(prompt, generation_config=config), eager)
    assert len(calls) == 11  # every decode step after the (eager) prefill went through the compiled call


@pytest.mark.parametrize("kind", ["hlru", "bdlru"])
def test_triton_scans_are_custom_ops_that_pass_opcheck(kind):
    pytest.importorskip("triton")
    from hf_lrnn import scan_triton_lrnn as scan_triton

    op = scan_triton.hlru_scan_op if kind == "hlru" else scan_triton.bdlru_scan_op
    g = torch.Generator().manual_seed(0)
    B, T, N, D = 2, 5, 3, 2
    tail = (N,) if kind == "hlru" else (N, D)
    v = torch.randn(B, T, *tail, generator=g, requires_grad=True)
    logits = torch.randn(B, T, *tail, D + 1, generator=g, requires_grad=True)
    state = torch.randn(B, N, D, generator=g, requires_grad=True)
    mask = (torch.rand(B, T, generator=g) > 0.3).to(torch.int8)
    for args in [(v, logits, state, mask, "softmax", None), (v, logits, None, None, "tanh_l1", None)]:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("mixer", ["hlru", "bdlru"])
def test_training_step_through_the_triton_custom_ops_compiles_whole(mixer):
    """fullgraph=True: forward and loss in one graph through the custom operator, backward through its
    registered autograd formula; gradients equal eager ones."""
    pytest.importorskip("triton")
    model = tiny_model(mixer, scan_backend="triton").train()
    x = ids(2, 9)
    assert graph_breaks(lambda a: model(input_ids=a, labels=a, use_cache=False).loss, x) == 0
    model(input_ids=x, labels=x, use_cache=False).loss.backward()
    eager = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    torch._dynamo.reset()
    torch.compile(model, backend="aot_eager", fullgraph=True)(input_ids=x, labels=x, use_cache=False).loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, eager[name], rtol=1e-4, atol=1e-6, msg=name)


class LogitsAndStates(torch.nn.Module):
    """A model's forward with a fresh cache, returning the logits and every layer's final state (torch.export
    needs plain tensors out)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        out = self.model(input_ids=input_ids, use_cache=True)
        return (out.logits, *getattr(out, CACHE_FIELD).states)


@pytest.mark.parametrize("mixer", ["hlru", "bdlru"])
def test_export_with_a_dynamic_batch_makes_its_cache_and_matches_eager(mixer):
    """torch.export with a symbolic batch size: the forward makes its LRNNCache from a torch.SymInt batch, and
    the exported program gives eager's logits and final states at another batch size."""
    module = LogitsAndStates(tiny_model(mixer).eval())
    batch = torch.export.Dim("batch", min=1, max=8)
    program = torch.export.export(module, (ids(2, 6),), dynamic_shapes=({0: batch},))
    x = ids(3, 6, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), module(x))
