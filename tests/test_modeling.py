"""LRNNForCausalLM and LRNNModel: forward and backward, the loss, padding, training, save and load (also as
remote code), input checks."""
import json
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DynamicCache, Trainer, TrainingArguments
from transformers.dynamic_module_utils import get_imports

from hf_lrnn import LRNNConfig, LRNNForCausalLM, LRNNModel
from hf_lrnn.generation_lrnn import CACHE_FIELD
from hf_lrnn.ops_lrnn import hlru_lagged_states
from helpers import MIXERS, ids, tiny_model
from script_loader import run_without_hf_lrnn


@pytest.mark.parametrize("mixer", MIXERS)
def test_forward_backward_and_loss_is_shifted_cross_entropy(mixer):
    model = tiny_model(mixer).train()
    x = ids(3, 13)
    labels = x.clone()
    labels[0, :4] = -100
    out = model(x, labels=labels)
    assert out.logits.shape == (3, 13, 37)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, 37), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(out.loss, expected)
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.model.layers[0].mixer.gate_logit_proj.weight.grad.abs().sum() > 0


def test_num_items_in_batch_normalises_the_summed_loss():
    model = tiny_model()
    x = ids(2, 9)
    summed = model(x, labels=x, num_items_in_batch=torch.tensor(4)).loss
    mean = model(x, labels=x).loss
    assert torch.allclose(summed, mean * 16 / 4)


def test_logits_to_keep_and_hidden_states():
    model = tiny_model("bdlru")
    x = ids(2, 11)
    full = model(x).logits
    last = model(x, logits_to_keep=1).logits
    assert last.shape == (2, 1, 37) and torch.allclose(last, full[:, -1:], atol=1e-6)
    out = model(x, output_hidden_states=True)
    assert len(out.hidden_states) == 1 + model.config.num_hidden_layers


def test_lagged_states_skip_masked_steps():
    h = torch.arange(1.0, 7.0).view(1, 6, 1)  # h_0..h_5 = 1..6
    init = torch.tensor([[[-1.0, -2.0, -3.0]]])  # h_{-1}, h_{-2}, h_{-3}
    mask = torch.tensor([[1, 0, 1, 1, 0, 1]])
    lagged = hlru_lagged_states(h, init, mask)[0, :, 0]
    expected = torch.tensor(
        [[1, -1, -2], [1, -1, -2], [3, 1, -1], [4, 3, 1], [4, 3, 1], [6, 4, 3]], dtype=torch.float32
    )
    assert torch.equal(lagged, expected)
    assert torch.equal(hlru_lagged_states(h, init, None)[0, 2, 0], torch.tensor([3.0, 2.0, 1.0]))


def test_gradient_checkpointing_gives_the_same_gradients():
    x = ids(2, 10)
    grads = []
    for checkpointing in (False, True):
        model = tiny_model("hybrid").train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(x, labels=x).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_bf16_autocast_forward_and_backward():
    model = tiny_model("hybrid").train()
    x = ids(2, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, labels=x)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_trainer_trains_out_of_the_box(tmp_path):
    model = tiny_model("hybrid").train()
    pattern = torch.arange(2, 12).repeat(4)[:32]
    data = [{"input_ids": pattern.roll(-i), "labels": pattern.roll(-i)} for i in range(32)]
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=30, learning_rate=1e-2,
        logging_steps=10, report_to=[], save_strategy="no", use_cpu=True,
    )
    with torch.no_grad():
        before = model(torch.stack([d["input_ids"] for d in data[:8]]), labels=torch.stack([d["labels"] for d in data[:8]])).loss
    Trainer(model=model, args=args, train_dataset=data).train()
    with torch.no_grad():
        after = model(torch.stack([d["input_ids"] for d in data[:8]]), labels=torch.stack([d["labels"] for d in data[:8]])).loss
    assert after < 0.5 * before


@pytest.mark.parametrize("tie", [False, True])
def test_save_and_load_round_trip(tmp_path, tie):
    model = tiny_model("hybrid", tie_word_embeddings=tie)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    for name in ("modeling_lrnn.py", "configuration_lrnn.py", "ops_lrnn.py", "gates_lrnn.py", "scan_reference_lrnn.py", "scan_chunked_lrnn.py"):
        assert (tmp_path / name).exists(), name
    # transformers refuses remote code whose top-level imports are not installed: only torch and
    # transformers (and the standard library) may be required; triton sits in a try block.
    for code in tmp_path.glob("*.py"):
        assert set(get_imports(code)) <= {"__future__", "contextlib", "contextvars", "functools", "math", "os", "re", "typing", "warnings", "torch", "transformers"}, code
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForCausalLM"] == "modeling_lrnn.LRNNForCausalLM"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is LRNNForCausalLM
    x = ids(2, 9)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, atol=0, rtol=0)
    if tie:
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_auto_classes_are_registered():
    config = AutoConfig.for_model("lrnn", vocab_size=11, hidden_size=8, num_hidden_layers=1)
    assert isinstance(config, LRNNConfig)
    assert isinstance(AutoModel.from_config(config), LRNNModel)
    assert isinstance(AutoModelForCausalLM.from_config(config), LRNNForCausalLM)


def test_remote_code_loads_where_hf_lrnn_is_not_importable(tmp_path):
    model = tiny_model("hybrid")
    model.save_pretrained(tmp_path / "ckpt")
    x = ids(2, 7)
    with torch.no_grad():
        expected = model(x).logits
    torch.save({"x": x, "logits": expected}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        try:
            import hf_lrnn
        except ImportError:
            pass
        else:
            raise SystemExit("hf_lrnn is importable")
        import sys
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM
        config = AutoConfig.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True)
        loaded = [name for name in sys.modules if "transformers_modules" in name]
        assert loaded and not [name for name in loaded if "ops_lrnn" in name or "scan_" in name], loaded
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        ref = torch.load({str(tmp_path / "expected.pt")!r})
        with torch.no_grad():
            torch.testing.assert_close(model(ref["x"]).logits, ref["logits"], atol=1e-6, rtol=1e-6)
            out = model.generate(ref["x"], max_new_tokens=3, do_sample=False)
        assert out.shape == (2, 10)
        print("REMOTE_OK")
        """
    )
    result = run_without_hf_lrnn(script, tmp_path)
    assert "REMOTE_OK" in result.stdout, result.stdout + result.stderr


def test_bad_inputs_give_clear_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, vocab_size=37\)"):
        model(torch.tensor([[1, 37]]))
    with pytest.raises(ValueError, match=r"input_ids must lie in"):
        model(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match="attention_mask must be"):
        model(ids(2, 5), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model()
    with pytest.raises(ValueError, match="labels must have shape"):
        model(ids(2, 5), labels=ids(2, 4))
    with torch.no_grad():
        cache = getattr(model(ids(2, 5), use_cache=True), CACHE_FIELD)
    with pytest.raises(ValueError, match="the cache holds states for batch size 2, but the input has batch size 3"):
        model(ids(3, 1), use_cache=True, **{CACHE_FIELD: cache})
    with pytest.raises(TypeError, match="the cache must be an LRNNCache"):
        model(ids(2, 1), use_cache=True, **{CACHE_FIELD: DynamicCache()})
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        model(ids(2, 5), attention_maks=torch.ones(2, 5))
    with pytest.raises(ValueError, match="no attention weights"):
        model(ids(2, 5), output_attentions=True)
    with pytest.raises(NotImplementedError, match="cannot be cropped"):
        cache.crop(3)


def test_tuple_outputs_and_inputs_embeds_match_the_dict_and_ids_path():
    model = tiny_model("hybrid")
    x = ids(2, 8)
    with torch.no_grad():
        as_dict = model(x, labels=x)
        as_tuple = model(x, labels=x, return_dict=False, use_cache=False)
        from_embeds = model(inputs_embeds=model.get_input_embeddings()(x)).logits
    assert torch.equal(as_tuple[0], as_dict.loss) and torch.equal(as_tuple[1], as_dict.logits)
    torch.testing.assert_close(from_embeds, as_dict.logits)


def test_resize_token_embeddings_keeps_old_rows():
    model = tiny_model()
    old = model.get_input_embeddings().weight.detach().clone()
    model.resize_token_embeddings(45)
    assert model.config.vocab_size == 45 and model.lm_head.weight.shape == (45, 24)
    assert torch.equal(model.get_input_embeddings().weight[:37], old)
    assert model(torch.tensor([[44, 3]])).logits.shape == (1, 2, 45)


def test_from_pretrained_in_bf16_keeps_the_state_in_fp32(tmp_path):
    tiny_model("hybrid").save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert model.dtype == torch.bfloat16
    with torch.no_grad():
        out = model(ids(2, 9), use_cache=True)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits).all()
    assert all(s.dtype == torch.float32 for s in getattr(out, CACHE_FIELD).states)
    generated = model.generate(ids(2, 4), max_new_tokens=5, do_sample=False)
    assert generated.shape == (2, 9)


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

    modeling_lrnn._WARNED_NORMALIZATIONS.discard("none")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_model(gate_normalization="none")
        tiny_model(gate_normalization="none")
    assert sum("gate_normalization='none'" in str(w.message) for w in caught) == 1


@pytest.mark.parametrize("mixer", ["hlru", "bdlru"])
def test_an_empty_batch_and_an_empty_sequence_give_empty_logits(mixer):
    model = tiny_model(mixer)
    with torch.no_grad():
        assert model(ids(0, 5), use_cache=False).logits.shape == (0, 5, 37)
        assert model(ids(2, 0), use_cache=False).logits.shape == (2, 0, 37)


def test_a_float64_model_with_gradients_keeps_the_cache_float32():
    model = tiny_model().double()
    x = ids(2, 8)
    cache = getattr(model(x[:, :5], use_cache=True), CACHE_FIELD)
    assert all(s.dtype == torch.float32 and s.requires_grad for s in cache.states)
    out = model(x[:, 5:], use_cache=True, **{CACHE_FIELD: cache})
    out.logits.sum().backward()
    with torch.no_grad():
        torch.testing.assert_close(out.logits, model(x).logits[:, 5:], rtol=1e-5, atol=1e-6)


def test_low_precision_inputs_embeds_are_cast_to_the_parameters_dtype():
    """As in Llama: an fp32 model given bf16 embeddings computes in fp32 (on the rounded embeddings)."""
    model = tiny_model()
    embeds = model.get_input_embeddings()(ids(2, 6)).detach().to(torch.bfloat16)
    with torch.no_grad():
        logits = model(inputs_embeds=embeds).logits
        torch.testing.assert_close(logits, model(inputs_embeds=embeds.float()).logits, rtol=0, atol=0)
    assert logits.dtype == torch.float32


def test_resize_below_a_special_token_id_is_refused_before_anything_changes():
    model = tiny_model(pad_token_id=30)
    with pytest.raises(ValueError, match=r"config.pad_token_id=30 would lie outside the new vocabulary \[0, 20\)"):
        model.resize_token_embeddings(20)
    assert model.config.vocab_size == 37 and model.get_input_embeddings().weight.shape[0] == 37
    with pytest.raises(ValueError, match=r"config.pad_token_id=30 would lie outside the new vocabulary \[0, 24\)"):
        model.resize_token_embeddings(17, pad_to_multiple_of=8)
    model.config.pad_token_id = None
    model.resize_token_embeddings(20)
    assert model.config.vocab_size == 20


def test_config_use_cache_false_only_changes_what_a_plain_forward_returns():
    """Trainer writes TrainingArguments.use_cache (False by default) into config.use_cache, as it does for
    every model; a saved model then returns no cache from a plain forward, like Llama; generate() and
    use_cache=True still use one."""
    model = tiny_model()
    model.config.use_cache = False  # what Trainer(model, TrainingArguments(...)) does
    x = ids(1, 4)
    with torch.no_grad():
        assert getattr(model(x), CACHE_FIELD) is None
        assert getattr(model(x, use_cache=True), CACHE_FIELD).get_seq_length() == 4
    out = model.generate(x, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    assert getattr(out, CACHE_FIELD).get_seq_length() == 6


def test_save_pretrained_leaves_a_users_files_alone(tmp_path):
    """The modeling code is written as <module>_lrnn.py files, so a user's own ops.py (or any other short
    module name) in the folder survives save_pretrained, byte for byte."""
    short_names = ["ops", "gates", "constants", "cache", "generation", "scan_reference", "scan_chunked",
                   "scan_triton", "triton_hlru", "triton_bdlru", "triton_helpers", "triton_plan", "utils", "model", "config",
                   "configuration", "modeling", "tokenizer", "train", "spectrum", "heads", "packing"]
    for name in short_names:
        (tmp_path / f"{name}.py").write_text(f"# the user's own {name}.py\n")
    tiny_model("hybrid").save_pretrained(tmp_path)
    for name in short_names:
        assert (tmp_path / f"{name}.py").read_text() == f"# the user's own {name}.py\n", name
    written = {p.name for p in tmp_path.glob("*.py")} - {f"{name}.py" for name in short_names}
    assert written and all(name.endswith("_lrnn.py") for name in written), written
    assert "ops_lrnn.py" in written and "cache_lrnn.py" in written
