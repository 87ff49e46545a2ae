"""scripts/generate.py: streaming, stdin prompts, left-padded batches (same tokens as one at a time), errors."""
import io
import sys

import pytest
import torch

from hf_lrnn import LRNNConfig, LRNNForCausalLM
from script_loader import ROOT, load_script

generate = load_script("generate")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small random LRNN with a BPE tokenizer trained by train.py's own function."""
    import datasets

    train = load_script("train")
    folder = tmp_path_factory.mktemp("ckpt")
    text = (ROOT / "hf_lrnn" / "data" / "tinyshakespeare.txt").read_text()[:20000]
    tokenizer = train.train_bpe_tokenizer(datasets.Dataset.from_dict({"text": [text]}), 300)
    torch.manual_seed(0)
    config = LRNNConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, mixer=["hlru", "bdlru"],
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LRNNForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_single_prompt_streams(checkpoint, capsys):
    out = generate.main([checkpoint, "--prompt", "ROMEO:", "--max-new-tokens", "12", "--seed", "3"])
    captured = capsys.readouterr()
    assert captured.out.startswith("ROMEO:")  # the streamer prints the prompt and then the new text
    assert "tokens/s" in captured.err and "1 prompt(s)" in captured.err
    assert out.shape[0] == 1 and out.shape[1] <= len(out[0]) and out.shape[1] > 1
    again = generate.main([checkpoint, "--prompt", "ROMEO:", "--max-new-tokens", "12", "--seed", "3", "--no-stream"])
    assert torch.equal(out, again)  # the seed makes sampling reproducible


def test_batch_left_padding_matches_single_prompts(checkpoint, capsys):
    prompts = ["KING:", "First Citizen:\nBefore we proceed"]  # different lengths: the first is left-padded
    batch = generate.main([checkpoint, "--greedy", "--max-new-tokens", "8"] + sum((["--prompt", p] for p in prompts), []))
    assert "=== [1] ===" in capsys.readouterr().out
    for i, prompt in enumerate(prompts):
        single = generate.main([checkpoint, "--greedy", "--max-new-tokens", "8", "--prompt", prompt, "--no-stream"])
        assert torch.equal(batch[i, -8:], single[0, -8:]), f"prompt {i}: batched greedy tokens differ from unbatched"


def test_prompts_from_stdin(checkpoint, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("KING:\n\nQUEEN:\n"))
    out = generate.main([checkpoint, "--lines", "--max-new-tokens", "4"])
    assert out.shape[0] == 2 and "2 prompt(s)" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--temperature", "0", "--prompt", "x"], "--temperature must be > 0"),
    (["--top-p", "1.5", "--prompt", "x"], "--top-p must be in (0, 1]"),
    (["--max-new-tokens", "0", "--prompt", "x"], "--max-new-tokens must be >= 1"),
    (["--prompt", "x", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        generate.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
