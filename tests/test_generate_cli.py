"""scripts/generate.py: streaming, stdin prompts, left-padded batches (same tokens as one at a time),
--tokenizer and the byte fallback for folders without a tokenizer; every bad argument or unreadable model
folder ends in one line, error: ..., with status 2."""
import contextlib
import io
import re
import subprocess
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
    assert re.search(r"has no tokenizer .* 300-token vocabulary, not bytes .*--tokenizer",
                     usage_error([folder, "--prompt", "KING:"]))
    out = generate.main([folder, "--tokenizer", checkpoint, "--prompt", "KING:", "--greedy", "--max-new-tokens", "4", "--no-stream"])
    assert out.shape[1] > 4 and capsys.readouterr().out.startswith("KING:")


@pytest.mark.parametrize("vocab_size, tokenizer, prompts, message", [
    (256, "CHECKPOINT", ["x"], r"the tokenizer of .* has \d+ tokens, more than the 256 of the model"),
    (300, "bytes", ["x"], "--tokenizer bytes needs a 256- or 257-token model"),
    (257, "NO_SUCH_FOLDER", ["x"], "--tokenizer MISSING: no such folder"),
    (257, "EMPTY_FOLDER", ["x"], "--tokenizer EMPTY: no tokenizer could be loaded"),
    (256, "bytes", ["x", "yz"], "no padding or end-of-text token, so prompts cannot be batched"),
])
def test_tokenizer_errors(vocab_size, tokenizer, prompts, message, checkpoint, tmp_path):
    folder = save_model_without_tokenizer(tmp_path / "model", vocab_size)
    (tmp_path / "empty").mkdir()
    tokenizer = {"CHECKPOINT": checkpoint, "NO_SUCH_FOLDER": str(tmp_path / "missing"),
                 "EMPTY_FOLDER": str(tmp_path / "empty")}.get(tokenizer, tokenizer)
    line = usage_error([folder, "--tokenizer", tokenizer] + sum((["--prompt", prompt] for prompt in prompts), []))
    message = message.replace("MISSING", str(tmp_path / "missing")).replace("EMPTY", str(tmp_path / "empty"))
    assert re.search(message, line), line


def test_cli_without_hf_lrnn_says_how_to_install(checkpoint, tmp_path):
    """Where hf_lrnn cannot be imported, the script says how to install it (or to use --trust-remote-code)."""
    result = run_without_hf_lrnn(_generate_code([checkpoint, "--prompt", "x"]), tmp_path)
    assert result.returncode == 2 and "pip install -e ." in result.stderr and "--trust-remote-code" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


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


def usage_error(argv):
    """generate.main(argv) must stop with status 2 and one line, error: ...; returns that line."""
    stderr = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(stderr):
        generate.main(argv)
    lines = [line for line in stderr.getvalue().splitlines() if not line.startswith("Loading weights")]
    assert exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (exit_info.value.code, lines)
    return lines[0]


BAD_ARGUMENTS = [  # (argv, what the one-line error says)
    (["CKPT", "--temperature", "0", "--prompt", "x"], "--temperature must be a finite number > 0"),
    (["CKPT", "--temperature", "nan", "--prompt", "x"], "--temperature must be a finite number > 0 (or use --greedy), got nan"),
    (["CKPT", "--top-p", "1.5", "--prompt", "x"], "--top-p must be in (0, 1]"),
    (["CKPT", "--top-p", "nan", "--prompt", "x"], "--top-p must be in (0, 1]"),
    (["CKPT", "--top-k", "-1", "--prompt", "x"], "--top-k must be >= 0 (0 disables it), got -1"),
    (["CKPT", "--max-new-tokens", "0", "--prompt", "x"], "--max-new-tokens must be >= 1"),
    (["CKPT", "--seed", "-1", "--prompt", "x"], "--seed must be in [0, 2**32 - 1], got -1"),  # numpy's traceback
    (["CKPT", "--prompt", "x", "--bogus"], "unrecognized arguments: --bogus"),
    (["CKPT", "--prompt", ""], "a --prompt is empty"),
    (["CKPT", "--prompt", "x", "--device", "tpu"], "--device tpu: not a torch device"),
    (["CKPT", "--prompt", "x", "--device", "cuda:7"], "--device cuda:7: no cuda device is available here"),
    (["TMP/missing", "--prompt", "x"], "model TMP/missing: no such folder"),
    (["TMP", "--prompt", "x"], "TMP has no config.json: not a model folder"),
    (["CKPT/config.json", "--prompt", "x"], "model CKPT/config.json is a file"),
]


@pytest.mark.parametrize("argv, message", BAD_ARGUMENTS, ids=[" ".join(argv[1:]) for argv, _ in BAD_ARGUMENTS])
def test_argument_errors(argv, message, checkpoint, tmp_path):
    def place(text):
        return text.replace("CKPT", checkpoint).replace("TMP", str(tmp_path))

    if "cuda:7" in argv and torch.cuda.device_count() > 7:
        message = "there are"
    assert place(message) in usage_error([place(a) for a in argv])


def test_a_mistyped_folder_is_one_line_without_the_hub(checkpoint, tmp_path, monkeypatch):
    """runs/lrnn-shakespear (a typo) where runs/ exists: a missing local folder, reported at once; it is not
    sent to the Hub as a repo id (which took ~28 s of retries before an error about repo ids)."""
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    assert usage_error(["runs/lrnn-shakespear", "--prompt", "x"]) == "error: model runs/lrnn-shakespear: no such folder"
    assert "the default model, which python scripts/train.py makes" in usage_error(["--prompt", "x"])


def test_unreadable_model_files_are_one_line(checkpoint, tmp_path):
    import shutil

    truncated, broken = tmp_path / "truncated", tmp_path / "broken"
    shutil.copytree(checkpoint, truncated)
    shutil.copytree(checkpoint, broken)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (broken / "config.json").write_text('{"model_type": "lrnn", ')
    assert f"the weights of {truncated} cannot be loaded: SafetensorError" in usage_error([str(truncated), "--prompt", "x"])
    assert f"the config of {broken} cannot be loaded" in usage_error([str(broken), "--prompt", "x"])


def test_help_parses_before_the_heavy_imports(tmp_path):
    """--help and usage errors answer before torch or transformers are imported (blocked here); --help shows defaults."""
    code = ("import runpy, sys\nsys.modules['torch'] = sys.modules['transformers'] = None\n"
            "sys.argv = ['generate.py', *sys.argv[1:]]\n"
            f"runpy.run_path({str(ROOT / 'scripts' / 'generate.py')!r}, run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0 and "(default: 0.8)" in result.stdout and "(default: 50)" in result.stdout, result.stderr
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "nope"), "--prompt", "x"], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr == f"error: model {tmp_path / 'nope'}: no such folder\n", result.stderr
