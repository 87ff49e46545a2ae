"""LRNNForSequenceClassification and LRNNForTokenClassification: shapes and losses, the last real token with
left and right padding (logits equal those of the unpadded sequence), Trainer, the text- and
token-classification pipelines, save/load (also as remote code, and from a causal-LM checkpoint), LoRA."""
import json
import textwrap

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForSequenceClassification, AutoModelForTokenClassification, PreTrainedTokenizerFast, Trainer,
    TrainingArguments, pipeline,
)
from transformers.dynamic_module_utils import get_imports

from hf_lrnn import LRNNCache, LRNNForCausalLM, LRNNForSequenceClassification, LRNNForTokenClassification
from hf_lrnn.generation_lrnn import CACHE_FIELD
from helpers import MIXERS, VOCAB_SIZE, ids, tiny_config
from script_loader import run_without_hf_lrnn

HEADS = [LRNNForSequenceClassification, LRNNForTokenClassification]
LABELS = {0: "O", 1: "NOUN", 2: "VERB"}
# The tiny tokenizer's words: ids 2..36 (0 is the pad id, 1 the unknown word), one per token id of tiny_config.
WORDS = [f"w{i}" for i in range(2, VOCAB_SIZE)]


def tiny_head(head, mixer="hlru", seed=0, **overrides):
    """A head on ``tiny_config`` with three labels (``LABELS``), in eval mode."""
    torch.manual_seed(seed)
    overrides = {"id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}, **overrides}
    return head(tiny_config(mixer, **overrides)).eval()


def tiny_tokenizer(padding_side="right"):
    """A word-level fast tokenizer over ``WORDS`` (whitespace-split), pad id 0: no Hub, no files."""
    vocab = {"[PAD]": 0, "[UNK]": 1, **{word: i for i, word in enumerate(WORDS, start=2)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                   padding_side=padding_side)


def padded(rows, side):
    """Rows of token ids (lists of different lengths) -> input_ids and attention_mask (B, max length), pad id 0."""
    T = max(len(r) for r in rows)
    input_ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        where = slice(0, len(r)) if side == "right" else slice(T - len(r), T)
        input_ids[i, where], mask[i, where] = torch.tensor(r), 1
    return input_ids, mask


@pytest.mark.parametrize("mixer", MIXERS)
def test_sequence_classification_shapes_and_losses(mixer):
    model = tiny_head(LRNNForSequenceClassification, mixer).train()
    x = ids(3, 9)
    labels = torch.tensor([0, 2, 1])
    out = model(x, labels=labels)
    assert out.logits.shape == (3, 3)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    out.loss.backward()
    assert model.score.weight.grad.abs().sum() > 0 and model.model.layers[0].mixer.gate_logit_proj.weight.grad.abs().sum() > 0

    regression = tiny_head(LRNNForSequenceClassification, mixer, num_labels=1)
    targets = torch.tensor([0.5, -1.0, 2.0])
    out = regression(x, labels=targets)
    assert out.logits.shape == (3, 1) and regression.config.problem_type == "regression"
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(-1), targets))

    multi = tiny_head(LRNNForSequenceClassification, mixer, problem_type="multi_label_classification")
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out = multi(x, labels=targets)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, targets))


@pytest.mark.parametrize("mixer", MIXERS)
def test_token_classification_shapes_and_loss(mixer):
    model = tiny_head(LRNNForTokenClassification, mixer)
    assert model.dropout.p == 0.1 and model.score.bias is not None  # transformers' generic head's defaults
    x = ids(3, 9)
    labels = x % 3
    labels[0, :4] = -100
    out = model(x, labels=labels)
    assert out.logits.shape == (3, 9, 3)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits.reshape(-1, 3), labels.reshape(-1), ignore_index=-100))
    as_tuple = model(x, labels=labels, return_dict=False)
    assert torch.equal(as_tuple[0], out.loss) and torch.equal(as_tuple[1], out.logits)
    configured = tiny_head(LRNNForTokenClassification, mixer, classifier_dropout=0.0, token_classification_bias=False)
    assert configured.dropout.p == 0.0 and configured.score.bias is None


ROWS = [[5, 9, 3, 7, 2, 11, 4], [8, 6], [3], [12, 4, 4, 9, 20]]  # lengths 7, 2, 1, 5


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("mixer", MIXERS)
def test_padded_rows_get_the_logits_of_the_unpadded_sequences(mixer, side):
    """Sequence classification reads each row's last real token, from attention_mask (with input_ids or
    inputs_embeds) or, without a mask and with right padding, from the pad ids; token classification's logits
    at real positions are the unpadded sequence's. float64, so the equality is exact up to rounding."""
    sequence = tiny_head(LRNNForSequenceClassification, mixer).double()
    token = tiny_head(LRNNForTokenClassification, mixer).double()
    input_ids, mask = padded(ROWS, side)
    embeds = sequence.get_input_embeddings()(input_ids)
    with torch.no_grad():
        alone = torch.cat([sequence(torch.tensor([r])).logits for r in ROWS])
        torch.testing.assert_close(sequence(input_ids, attention_mask=mask).logits, alone, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(sequence(inputs_embeds=embeds, attention_mask=mask).logits, alone, rtol=1e-12, atol=1e-12)
        if side == "right":  # without a mask the pads run through the recurrence, but after the last real token
            torch.testing.assert_close(sequence(input_ids).logits, alone, rtol=1e-12, atol=1e-12)
        token_logits = token(input_ids, attention_mask=mask).logits
        for i, r in enumerate(ROWS):
            torch.testing.assert_close(token_logits[i][mask[i].bool()], token(torch.tensor([r])).logits[0],
                                       rtol=1e-12, atol=1e-12)


def test_without_padding_information_the_last_position_is_read():
    """No pad id (or inputs_embeds without a mask): every position is real, the last one is classified."""
    model = tiny_head(LRNNForSequenceClassification, pad_token_id=None)
    x = ids(2, 6)
    with torch.no_grad():
        hidden = model.model(x).last_hidden_state
        expected = model.score(hidden[:, -1])
        torch.testing.assert_close(model(x).logits, expected)
        torch.testing.assert_close(model(inputs_embeds=model.get_input_embeddings()(x)).logits, expected)


def test_bad_inputs_give_clear_errors():
    model = tiny_head(LRNNForSequenceClassification)
    x = ids(2, 5)
    with pytest.raises(ValueError, match=r"rows \[1\] have no real token to classify: attention_mask"):
        model(x, attention_mask=torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match=r"rows \[0\] have no real token to classify: input_ids \(pad_token_id=0\)"):
        model(torch.tensor([[0, 0, 0], [3, 4, 0]]))
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        model(x, attention_maks=torch.ones(2, 5))
    token = tiny_head(LRNNForTokenClassification)
    with pytest.raises(ValueError, match=r"labels must have shape \(2, 5\)"):
        token(x, labels=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="LRNNForTokenClassification returns no cache: use_cache=True"):
        token(x, use_cache=True)


def test_sequence_classifier_refuses_packed_rows():
    """Packed rows (documents marked by position_ids restarting at 0, seq_idx or cu_seq_lens) are refused: one
    label per row, read at its last token, would classify the row's last document only (once silently, or a
    batch-size error from the loss). Left-padded rows with transformers' position ids still classify as before."""
    model = tiny_head(LRNNForSequenceClassification)
    x = ids(1, 8)
    packed = dict(position_ids=torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]]), seq_idx=torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]]),
                  cu_seq_lens_q=torch.tensor([0, 3, 8], dtype=torch.int32))
    for name, value in packed.items():
        with pytest.raises(ValueError, match=f"LRNNForSequenceClassification got packed rows \\(a document starts at "
                                             f"row 0, position 3 in {name}\\)"):
            model(x, **{name: value}, labels=torch.tensor([1]))
    input_ids, mask = padded(ROWS, "left")
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids, attention_mask=mask, position_ids=positions).logits,
                                   model(input_ids, attention_mask=mask).logits, rtol=0, atol=0)


def test_token_classifier_makes_no_cache_and_continues_from_one_passed_in():
    """The token head returns no cache, so it builds none (config.use_cache is True); a cache passed in is
    advanced in place, so two halves give the logits of the whole row."""
    token = tiny_head(LRNNForTokenClassification, "hybrid").eval()
    x = ids(2, 6)
    made = []
    original = token.model.forward

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        made.append(getattr(out, CACHE_FIELD))
        return out

    token.model.forward = recording
    with torch.no_grad():
        whole = token(x).logits
    assert made == [None]
    cache = LRNNCache(token.config, batch_size=2)
    with torch.no_grad():
        halves = torch.cat([token(x[:, :3], cache=cache).logits, token(x[:, 3:], cache=cache).logits], dim=1)
    torch.testing.assert_close(halves, whole, atol=1e-5, rtol=1e-5)
    for bad in (1.0, -0.1, "0.1"):
        with pytest.raises(ValueError, match="LRNNConfig.classifier_dropout must be None or a number in"):
            tiny_head(LRNNForTokenClassification, classifier_dropout=bad)


def train_briefly(model, data, tmp_path):
    """Trainer, 40 steps of batch 8 at learning rate 1e-2 on the CPU; returns the loss on the first 8
    examples before and after."""
    batch = {k: torch.stack([d[k] for d in data[:8]]) for k in data[0]}
    with torch.no_grad():
        before = model(**batch).loss
    args = TrainingArguments(str(tmp_path), max_steps=40, per_device_train_batch_size=8, learning_rate=1e-2,
                             use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no", seed=0)
    Trainer(model=model, args=args, train_dataset=data).train()
    model.eval()
    with torch.no_grad():
        return before, model(**batch).loss


def test_trainer_trains_the_sequence_classifier(tmp_path):
    """Label = the last real token's id mod 3, on right-padded rows of 3 to 8 tokens."""
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(2, VOCAB_SIZE, (int(n),), generator=g).tolist() for n in torch.randint(3, 9, (64,), generator=g)]
    input_ids, mask = padded(rows, "right")
    data = [{"input_ids": input_ids[i], "attention_mask": mask[i], "labels": torch.tensor(r[-1] % 3)}
            for i, r in enumerate(rows)]
    before, after = train_briefly(tiny_head(LRNNForSequenceClassification), data, tmp_path)
    assert after < 0.5 * before, (before, after)


def test_trainer_trains_the_token_classifier(tmp_path):
    """Label of each token = its id mod 3."""
    x = ids(64, 8)
    data = [{"input_ids": x[i], "labels": x[i] % 3} for i in range(64)]
    before, after = train_briefly(tiny_head(LRNNForTokenClassification), data, tmp_path)
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("side", ["left", "right"])
def test_text_classification_pipeline(side):
    """Batched (so padded) pipeline results equal the model's logits on each text alone."""
    model = tiny_head(LRNNForSequenceClassification, "hybrid")
    texts = ["w5 w9 w3 w7 w2", "w8 w6", "w12"]
    classify = pipeline("text-classification", model=model, tokenizer=tiny_tokenizer(side), device="cpu")
    results = classify(texts, batch_size=3)
    for text, result in zip(texts, results):
        with torch.no_grad():
            probabilities = model(torch.tensor([[int(w[1:]) for w in text.split()]])).logits.softmax(-1)[0]
        assert result["label"] == LABELS[int(probabilities.argmax())]
        assert result["score"] == pytest.approx(float(probabilities.max()), abs=1e-5)


def test_token_classification_pipeline():
    model = tiny_head(LRNNForTokenClassification, "hybrid")
    text = "w5 w9 w3 w7 w2"
    tag = pipeline("token-classification", model=model, tokenizer=tiny_tokenizer(), device="cpu", ignore_labels=[])
    result = tag(text)
    with torch.no_grad():
        probabilities = model(torch.tensor([[5, 9, 3, 7, 2]])).logits.softmax(-1)[0]
    assert [r["word"] for r in result] == text.split()
    assert [r["entity"] for r in result] == [LABELS[int(i)] for i in probabilities.argmax(-1)]
    assert [r["score"] for r in result] == pytest.approx(probabilities.max(-1).values.tolist(), abs=1e-5)
    assert [(r["start"], r["end"]) for r in result] == [(0, 2), (3, 5), (6, 8), (9, 11), (12, 14)]


@pytest.mark.parametrize("head", HEADS)
def test_save_and_load_round_trip(head, tmp_path):
    model = tiny_head(head, "hybrid")
    model.save_pretrained(tmp_path)
    auto_class = {LRNNForSequenceClassification: AutoModelForSequenceClassification,
                  LRNNForTokenClassification: AutoModelForTokenClassification}[head]
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map[auto_class.__name__] == f"heads_lrnn.{head.__name__}"
    assert (tmp_path / "heads_lrnn.py").exists() and (tmp_path / "modeling_lrnn.py").exists()
    # remote code may need only torch, transformers and the standard library (see test_modeling)
    assert set(get_imports(tmp_path / "heads_lrnn.py")) <= {"__future__", "typing", "torch", "transformers"}
    loaded = auto_class.from_pretrained(tmp_path).eval()
    assert type(loaded) is head and loaded.config.id2label == LABELS
    x = ids(2, 9)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


@pytest.mark.parametrize("head", HEADS)
def test_a_causal_lm_checkpoint_loads_into_a_head(head, tmp_path):
    """Fine-tuning a trained language model for classification: the backbone's weights carry over, the score
    layer is new."""
    torch.manual_seed(0)
    LRNNForCausalLM(tiny_config("hybrid")).save_pretrained(tmp_path)
    lm = LRNNForCausalLM.from_pretrained(tmp_path)
    model = head.from_pretrained(tmp_path, num_labels=3)
    assert model.score.weight.shape == (3, 24)
    for name, weight in lm.model.state_dict().items():
        assert torch.equal(model.model.state_dict()[name], weight), name


def test_remote_code_loads_both_heads_where_hf_lrnn_is_not_importable(tmp_path):
    x = ids(2, 7)
    mask = torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 1, 1]])
    expected = {}
    for head in HEADS:
        model = tiny_head(head, "hybrid")
        model.save_pretrained(tmp_path / head.__name__)
        with torch.no_grad():
            expected[head.__name__] = model(x, attention_mask=mask).logits
    torch.save({"x": x, "mask": mask, **expected}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification
        ref = torch.load({str(tmp_path / "expected.pt")!r})
        for auto_class, name in [(AutoModelForSequenceClassification, "LRNNForSequenceClassification"),
                                 (AutoModelForTokenClassification, "LRNNForTokenClassification")]:
            model = auto_class.from_pretrained({str(tmp_path)!r} + "/" + name, trust_remote_code=True).eval()
            assert type(model).__name__ == name and type(model).__module__.startswith("transformers_modules"), type(model)
            with torch.no_grad():
                torch.testing.assert_close(model(ref["x"], attention_mask=ref["mask"]).logits, ref[name], atol=1e-6, rtol=1e-6)
        print("REMOTE_OK")
        """
    )
    result = run_without_hf_lrnn(script, tmp_path)
    assert "REMOTE_OK" in result.stdout, result.stdout + result.stderr


def test_lora_on_the_sequence_classifier_trains_the_adapter_and_the_score():
    """peft's SEQ_CLS task: LoRA on the mixers, the new ``score`` layer trained in full, the backbone frozen."""
    model = get_peft_model(tiny_head(LRNNForSequenceClassification, "hybrid"),
                           LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["value_proj", "gate_logit_proj", "out_proj"]))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or "score" in name for name in trainable)
    assert any("score" in name for name in trainable)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, labels = ids(8, 6), torch.arange(8) % 3
    model.train()
    losses = []
    for _ in range(20):
        loss = model(input_ids=x, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(torch.equal(p, frozen[name]) for name, p in model.named_parameters() if name in frozen)


def test_a_causal_lm_checkpoint_loads_into_both_heads_as_remote_code(tmp_path):
    """A causal LM's checkpoint ships the heads' code and names them in auto_map, so that where hf_lrnn is not
    importable it loads into AutoModelForSequenceClassification / TokenClassification (the backbone's weights
    carry over), and a head's checkpoint loads into AutoModelForCausalLM."""
    torch.manual_seed(0)
    LRNNForCausalLM(tiny_config("hybrid")).save_pretrained(tmp_path / "lm")
    tiny_head(LRNNForSequenceClassification, "hybrid").save_pretrained(tmp_path / "head")
    auto_map = json.loads((tmp_path / "lm" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForSequenceClassification"] == "heads_lrnn.LRNNForSequenceClassification"
    assert auto_map["AutoModelForTokenClassification"] == "heads_lrnn.LRNNForTokenClassification"
    assert (tmp_path / "lm" / "heads_lrnn.py").exists()
    script = textwrap.dedent(
        f"""
        import torch
        from safetensors.torch import load_file
        from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                                  AutoModelForTokenClassification)
        lm = {str(tmp_path / "lm")!r}
        weights = load_file(lm + "/model.safetensors")
        for auto_class, name in [(AutoModelForSequenceClassification, "LRNNForSequenceClassification"),
                                 (AutoModelForTokenClassification, "LRNNForTokenClassification")]:
            model = auto_class.from_pretrained(lm, trust_remote_code=True, num_labels=3).eval()
            assert type(model).__name__ == name and type(model).__module__.startswith("transformers_modules"), type(model)
            assert model(torch.tensor([[1, 2, 3]])).logits.shape[-1] == 3
            for key, value in model.model.state_dict().items():
                assert torch.equal(value, weights["model." + key]), key
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "head")!r}, trust_remote_code=True)
        assert type(model).__name__ == "LRNNForCausalLM", type(model)
        print("REMOTE_OK")
        """
    )
    result = run_without_hf_lrnn(script, tmp_path)
    assert "REMOTE_OK" in result.stdout, result.stdout + result.stderr
