"""LoRA through peft on both mixers (the README's recipe): which modules the target names adapt, training
moves the adapter and lowers the loss, the saved adapter reloads on a fresh base with equal logits, and
merge_and_unload gives the same logits in a plain LRNNForCausalLM."""
import re

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from hf_lrnn import LRNNConfig, LRNNForCausalLM

MIXER = ["value_proj", "gate_logit_proj", "out_proj"]  # both mixers: v, the gate logits, the readout
MLP = ["gate_proj", "up_proj", "down_proj"]  # the SwiGLU
TEXT = torch.tensor(list(b"To be, or not to be, that is the question. " * 2))


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    """A small random H-LRU + BD-LRU model, saved: the base every test loads afresh."""
    torch.manual_seed(0)
    config = LRNNConfig(vocab_size=256, hidden_size=32, num_hidden_layers=2, mixer=["hlru", "bdlru"], block_size=4,
                        scan_backend="torch")
    folder = tmp_path_factory.mktemp("base")
    LRNNForCausalLM(config).save_pretrained(folder)
    return folder


def adapted_modules(model):
    return sorted({name.split(".")[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")})


@pytest.mark.parametrize("targets", [MIXER, MLP, MIXER + MLP])
def test_target_names_adapt_exactly_those_modules(targets, base_folder):
    model = get_peft_model(LRNNForCausalLM.from_pretrained(base_folder), LoraConfig(r=4, target_modules=targets))
    assert adapted_modules(model) == sorted(targets)
    adapted = [name for name, module in model.named_modules() if hasattr(module, "lora_A")]
    per_layer = {re.search(r"layers\.(\d+)\.", name).group(1) for name in adapted}
    assert per_layer == {"0", "1"}  # both layers, H-LRU and BD-LRU


def test_lora_train_save_reload_merge(base_folder, tmp_path):
    model = get_peft_model(LRNNForCausalLM.from_pretrained(base_folder),
                           LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=MIXER + MLP))
    base_before = {k: v.clone() for k, v in model.named_parameters() if "lora_" not in k}
    lora_before = {k: v.clone() for k, v in model.named_parameters() if "lora_" in k}
    assert lora_before and all(v.requires_grad for k, v in model.named_parameters() if "lora_" in k)
    assert not any(v.requires_grad for k, v in model.named_parameters() if "lora_" not in k)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = TEXT[None]
    losses = []
    model.train()
    for _ in range(30):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses  # from ln 256 = 5.5 (the frozen head bounds the logits)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in base_before.items())  # the base stays frozen
    assert all(not torch.equal(params[k], v) for k, v in lora_before.items() if "lora_B" in k)  # B starts at 0

    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch).logits
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    reloaded = PeftModel.from_pretrained(LRNNForCausalLM.from_pretrained(base_folder), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=batch).logits, logits)

    merged = reloaded.merge_and_unload()
    assert type(merged) is LRNNForCausalLM and adapted_modules(merged) == []
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=batch).logits, logits, rtol=1e-4, atol=1e-4)
        fresh = LRNNForCausalLM.from_pretrained(base_folder).eval()(input_ids=batch).logits
    assert not torch.allclose(fresh, logits, atol=1e-2)  # the adapter did change the model
