"""LRNNCache and generation: cached decoding equals the full forward, constant memory, generate() with and
without a cache, beam search, padding, continuing from a cache, the cache's refusals."""
import pytest
import torch

from hf_lrnn import LRNNCache
from hf_lrnn.generation_lrnn import CACHE_FIELD
from helpers import MIXERS, ids, tiny_model


@pytest.mark.parametrize("mixer", MIXERS)
def test_cached_step_by_step_logits_equal_full_forward(mixer):
    model = tiny_model(mixer)
    x = ids(2, 20)
    with torch.no_grad():
        full = model(x).logits
        out = model(x[:, :7], use_cache=True)
        cache = getattr(out, CACHE_FIELD)
        assert isinstance(cache, LRNNCache) and cache.get_seq_length() == 7
        pieces = [out.logits]
        for t in range(7, 20):
            out = model(x[:, t : t + 1], use_cache=True, **{CACHE_FIELD: cache})
            pieces.append(out.logits)
    assert cache.get_seq_length() == 20
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_cache_memory_is_constant_in_sequence_length():
    model = tiny_model("hybrid")
    sizes = []
    for T in (5, 50):
        with torch.no_grad():
            cache = getattr(model(ids(2, T), use_cache=True), CACHE_FIELD)
        sizes.append([tuple(s.shape) for s in cache.states])
        assert all(s.dtype == torch.float32 for s in cache.states)
    assert sizes[0] == sizes[1] == [(2, 24, 2), (2, 12, 2)]  # H-LRU lags (B, N, m); BD-LRU (B, N, k)


@pytest.mark.parametrize("mixer", MIXERS)
def test_generate_with_and_without_cache_agree(mixer):
    model = tiny_model(mixer)
    prompt = ids(2, 6)
    greedy = model.generate(prompt, max_new_tokens=10, do_sample=False)
    greedy_nocache = model.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=False)
    assert greedy.shape == (2, 16)
    assert torch.equal(greedy, greedy_nocache)
    torch.manual_seed(5)
    sampled = model.generate(prompt, max_new_tokens=10, do_sample=True, top_k=10, temperature=0.9)
    torch.manual_seed(5)
    sampled_nocache = model.generate(prompt, max_new_tokens=10, do_sample=True, top_k=10, temperature=0.9, use_cache=False)
    assert torch.equal(sampled, sampled_nocache)


@pytest.mark.parametrize("mixer", ["hlru", "bdlru"])
def test_beam_search_reorders_the_cache(mixer):
    model = tiny_model(mixer, seed=1)
    prompt = ids(2, 5, seed=3)
    beams = model.generate(prompt, max_new_tokens=8, num_beams=4, do_sample=False)
    beams_nocache = model.generate(prompt, max_new_tokens=8, num_beams=4, do_sample=False, use_cache=False)
    assert torch.equal(beams, beams_nocache)
    several = model.generate(prompt, max_new_tokens=4, num_beams=3, num_return_sequences=3, do_sample=False)
    assert several.shape == (6, 9)


@pytest.mark.parametrize("mixer", MIXERS)
def test_left_padded_batch_generates_what_each_prompt_generates_alone(mixer):
    model = tiny_model(mixer, seed=2)
    prompts = [ids(1, 9, seed=10)[0], ids(1, 4, seed=11)[0], ids(1, 6, seed=12)[0]]
    width = max(len(p) for p in prompts)
    batch = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        batch[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    together = model.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False)
    with torch.no_grad():
        padded_logits = model(batch, attention_mask=mask).logits
    for i, p in enumerate(prompts):
        alone = model.generate(p[None], max_new_tokens=8, do_sample=False)
        assert torch.equal(together[i, width:], alone[0, len(p) :]), f"prompt {i}"
        with torch.no_grad():
            torch.testing.assert_close(padded_logits[i, width - len(p) :], model(p[None]).logits[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mixer", ["hlru", "bdlru"])
def test_masked_steps_leave_a_nonzero_state_untouched(mixer):
    """With a cache, a chunk whose first steps are masked continues exactly like the unmasked tokens alone."""
    model = tiny_model(mixer, seed=3)
    x = ids(1, 12, seed=4)
    with torch.no_grad():
        cache_a = getattr(model(x[:, :6], use_cache=True), CACHE_FIELD)
        cache_b = getattr(model(x[:, :6], use_cache=True), CACHE_FIELD)
        noise = ids(1, 3, seed=9)
        padded = torch.cat([noise, x[:, 6:]], 1)
        mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 6, dtype=torch.long)], 1)
        logits_padded = model(padded, attention_mask=mask, use_cache=True, **{CACHE_FIELD: cache_a}).logits
        logits_plain = model(x[:, 6:], use_cache=True, **{CACHE_FIELD: cache_b}).logits
    torch.testing.assert_close(logits_padded[:, 3:], logits_plain, atol=1e-5, rtol=1e-5)
    for sa, sb in zip(cache_a.states, cache_b.states):
        torch.testing.assert_close(sa, sb, atol=1e-6, rtol=1e-6)


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


def test_a_cache_of_another_model_is_refused_with_what_differs():
    model = tiny_model()
    other = tiny_model(num_hidden_layers=3)
    with pytest.raises(ValueError, match="the cache holds states for 3 layers, but the model has 2"):
        model(ids(1, 2), **{CACHE_FIELD: LRNNCache(other.config, batch_size=1)})
    wide = tiny_model(recurrent_size=48)
    with pytest.raises(ValueError, match=r"state of layer 0 has shape \(1, 48, 3\)"):
        model(ids(1, 2), **{CACHE_FIELD: LRNNCache(wide.config, batch_size=1)})
    cache = LRNNCache(model.config, batch_size=1)
    cache.states[1] = cache.states[1].double()
    with pytest.raises(ValueError, match="state of layer 1 is a torch.float64 tensor on cpu; it must be float32"):
        model(ids(1, 2), **{CACHE_FIELD: cache})


def test_overlapping_generate_calls_keep_the_token_id_check_in_other_threads():
    """generate() vouches for its own steps' ids in its own thread only: while one generate() runs (held
    inside a logits processor) and after it ends, a forward in another thread still refuses a bad id."""
    import threading

    from transformers import LogitsProcessor, LogitsProcessorList

    model = tiny_model()
    inside, release = threading.Event(), threading.Event()

    class Hold(LogitsProcessor):
        def __call__(self, input_ids, scores):
            inside.set()
            release.wait(timeout=60)
            return scores

    results = {}
    worker = threading.Thread(target=lambda: results.setdefault("out", model.generate(
        ids(1, 3), max_new_tokens=2, do_sample=False, logits_processor=LogitsProcessorList([Hold()]))))
    worker.start()
    try:
        assert inside.wait(timeout=60)
        with pytest.raises(ValueError, match=r"input_ids must lie in \[0, vocab_size=37\)"):
            model(torch.tensor([[1, 40]]))
    finally:
        release.set()
        worker.join(timeout=60)
    assert results["out"].shape == (1, 5)
    with pytest.raises(ValueError, match=r"input_ids must lie in"):
        model(torch.tensor([[1, 40]]))


def test_generate_checks_the_prompt_passed_as_inputs():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, vocab_size=37\), got values in \[1, 40\]"):
        model.generate(inputs=torch.tensor([[1, 40]]), max_new_tokens=2)


def test_prepare_inputs_for_generation_forwards_extra_kwargs():
    """transformers' semantics: keyword arguments it does not know reach forward(); positions (unused by a
    model without positional embeddings) and labels do not."""
    model = tiny_model()
    inputs = model.prepare_inputs_for_generation(ids(2, 3), foo="bar", position_ids=torch.arange(3)[None],
                                                 cache_position=torch.tensor([9]), labels=ids(2, 3))
    assert inputs["foo"] == "bar"
    assert not {"position_ids", "cache_position", "labels"} & set(inputs)
    out = model.generate(ids(2, 3), max_new_tokens=2, do_sample=False, output_hidden_states=True,
                         return_dict_in_generate=True)
    assert len(out.hidden_states) == 2 and len(out.hidden_states[0]) == 3  # embeddings + 2 layers, per step


def test_an_empty_prompt_is_refused_as_empty():
    with pytest.raises(ValueError, match="the prompt is empty; pass at least one token"):
        tiny_model().generate(torch.zeros(1, 0, dtype=torch.long), max_new_tokens=2)


def test_beam_search_with_a_one_row_cache_names_the_beams():
    model = tiny_model()
    cache = LRNNCache(model.config, batch_size=1)
    with pytest.raises(ValueError, match=r"1 prompt\(s\) x 2 beams or return sequences need 2 rows"):
        model.generate(ids(1, 4), max_new_tokens=2, num_beams=2, do_sample=False, **{CACHE_FIELD: cache})


@pytest.mark.parametrize("mixer", ["hlru", "bdlru"])
def test_an_empty_batch_with_the_default_use_cache_gives_an_empty_cache(mixer):
    out = tiny_model(mixer)(ids(0, 5))
    assert out.logits.shape == (0, 5, 37)
    assert getattr(out, CACHE_FIELD).batch_size == 0 and getattr(out, CACHE_FIELD).get_seq_length() == 5


@pytest.mark.parametrize("batch_size", [-1, 2.0, True, "2"])
def test_cache_refuses_a_batch_size_that_is_not_a_non_negative_int(batch_size):
    with pytest.raises(ValueError, match=r"LRNNCache: batch_size must be a non-negative int, got"):
        LRNNCache(tiny_model("hlru").config, batch_size=batch_size)
