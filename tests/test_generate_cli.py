"""scripts/generate.py: streaming, stdin prompts, left-padded batches (same tokens as one at a time),
--tokenizer and the byte fallback for folders without a tokenizer, errors."""
import io
import sys

import pytest
import torch
from transformers import AutoTokenizer

from hf_lrnn import LRNNConfig, LRNNForCausalLM
from script_loader import ROOT, load_script, run_without_hf_lrnn

generate = load_script("generate")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small random LRNN with a BPE tokenizer trained by train.py's own function."""
    import datasets

    train = load_script("train")
    folder = tmp_path_factory.mktemp("ckpt")
    text = (ROOT / "scripts" / "data" / "tinyshakespeare.txt").read_text()[:20000]
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
    prompt_length = len(AutoTokenizer.from_pretrained(checkpoint)("ROMEO:").input_ids)
    assert out.shape[0] == 1 and prompt_length < out.shape[1] <= prompt_length + 12
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


def save_model_without_tokenizer(folder, vocab_size):
    torch.manual_seed(0)
    config = LRNNConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, mixer="hlru",
                        eos_token_id=256 if vocab_size == 257 else None, pad_token_id=256 if vocab_size == 257 else None)
    LRNNForCausalLM(config).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("vocab_size", [256, 257])
def test_folder_without_tokenizer_falls_back_to_bytes(vocab_size, tmp_path, capsys):
    folder = save_model_without_tokenizer(tmp_path / "bytes", vocab_size)
    out = generate.main([folder, "--prompt", "To be", "--greedy", "--max-new-tokens", "6", "--no-stream"])
    captured = capsys.readouterr()
    assert "has no tokenizer: using bytes (token i = byte i" in captured.err
    assert out[0, :5].tolist() == list(b"To be") and out.shape == (1, 11)
    assert captured.out.startswith("To be")
    # the same tokens with --tokenizer bytes, and no message
    again = generate.main([folder, "--tokenizer", "bytes", "--prompt", "To be", "--greedy", "--max-new-tokens", "6", "--no-stream"])
    assert torch.equal(out, again) and "has no tokenizer" not in capsys.readouterr().err


def test_byte_tokenizer_round_trips_any_text():
    text = "Ünïcødé → 字 🙂\n\ttabs  x"
    for vocab_size in (256, 257):
        tokenizer = generate.byte_tokenizer(vocab_size)
        ids = tokenizer(text)["input_ids"]
        assert len(tokenizer) == vocab_size and ids == list(text.encode()) and tokenizer.decode(ids) == text
    tokenizer = generate.byte_tokenizer(257)
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == 256
    assert tokenizer.decode(list(b"end") + [256], skip_special_tokens=True) == "end"


def test_tokenizer_option_takes_another_folders_tokenizer(checkpoint, tmp_path, capsys):
    """A model folder without a tokenizer and a vocabulary that is not bytes: a clear error, and --tokenizer
    names a folder whose tokenizer fits."""
    folder = save_model_without_tokenizer(tmp_path / "no-tokenizer", 300)
    with pytest.raises(SystemExit, match=r"has no tokenizer .* 300-token vocabulary, not bytes .*--tokenizer"):
        generate.main([folder, "--prompt", "KING:"])
    out = generate.main([folder, "--tokenizer", checkpoint, "--prompt", "KING:", "--greedy", "--max-new-tokens", "4", "--no-stream"])
    assert out.shape[1] > 4 and capsys.readouterr().out.startswith("KING:")


@pytest.mark.parametrize("vocab_size, tokenizer, prompts, message", [
    (256, "CHECKPOINT", ["x"], r"the tokenizer of .* has \d+ tokens, more than the 256 of the model"),
    (300, "bytes", ["x"], "--tokenizer bytes needs a 256- or 257-token model"),
    (257, "NO_SUCH_FOLDER", ["x"], "no tokenizer could be loaded from"),
    (256, "bytes", ["x", "yz"], "no padding or end-of-text token, so prompts cannot be batched"),
])
def test_tokenizer_errors(vocab_size, tokenizer, prompts, message, checkpoint, tmp_path):
    folder = save_model_without_tokenizer(tmp_path / "model", vocab_size)
    tokenizer = {"CHECKPOINT": checkpoint, "NO_SUCH_FOLDER": str(tmp_path / "missing")}.get(tokenizer, tokenizer)
    with pytest.raises(SystemExit, match=message):
        generate.main([folder, "--tokenizer", tokenizer] + sum((["--prompt", prompt] for prompt in prompts), []))


def test_cli_without_hf_lrnn_says_how_to_install(checkpoint, tmp_path):
    """Where hf_lrnn cannot be imported, the script says how to install it (or to use --trust-remote-code)."""
    result = run_without_hf_lrnn(_generate_code([checkpoint, "--prompt", "x"]), tmp_path)
    assert result.returncode == 1 and "pip install -e ." in result.stderr and "--trust-remote-code" in result.stderr


def test_cli_without_hf_lrnn_generates_with_other_architectures(tmp_path):
    """A model transformers knows (a Llama from scripts/train.py --arch llama) needs no hf_lrnn."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(folder)
    argv = [str(folder), "--tokenizer", "bytes", "--prompt", "x", "--max-new-tokens", "3", "--greedy"]
    result = run_without_hf_lrnn(_generate_code(argv), tmp_path)
    assert result.returncode == 0, result.stderr


def _generate_code(argv):
    return (f"import runpy\nsys.argv = ['generate.py', *{argv!r}]\n"
            f"runpy.run_path({str(ROOT / 'scripts' / 'generate.py')!r}, run_name='__main__')\n")


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
