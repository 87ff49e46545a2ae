"""scripts/train.py end to end on a tiny model: train, save, model card, reload in a clean process
(trust_remote_code, hf_lrnn not importable), generate; resume continues the same run; argument errors."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--hidden-size", "32", "--layers", "2", "--seq-len", "32", "--batch-size", "4", "--vocab-size", "300",
        "--max-steps", "6", "--eval-interval", "3", "--eval-batches", "2", "--log-interval", "1", "--warmup-steps", "1",
        "--lr", "1e-2", "--sample-tokens", "8", "--scan-backend", "torch"]


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train = load_script("train")


def losses(log_history):
    return {e["step"]: e["loss"] for e in log_history if "loss" in e}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "small.txt"
    path.write_text((ROOT / "hf_lrnn" / "data" / "tinyshakespeare.txt").read_text()[:40000])
    return path


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "lrnn-tiny"
    metrics = train.main(["--data", str(corpus), "--output-dir", str(out)] + TINY)
    return out, metrics


def test_model_card_template_is_shipped_unchanged():
    canonical = ROOT / "model_cards" / "lrnn_model_card.md"
    assert canonical.read_text() == (ROOT / "hf_lrnn" / "model_card_template.md").read_text(), (
        "hf_lrnn/model_card_template.md must be a copy of model_cards/lrnn_model_card.md: "
        "cp model_cards/lrnn_model_card.md hf_lrnn/model_card_template.md")


def test_train_saves_everything(run):
    out, metrics = run
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md",
                 "modeling_lrnn.py", "configuration_lrnn.py", "ops.py", "scan_torch.py", "metrics.json", "run_args.json"):
        assert (out / name).is_file(), name
    assert metrics["steps"] == 6 and metrics["eval_loss"] < 6.0  # below ln(300) = 5.7 after a few steps
    assert abs(metrics["eval_perplexity"] - 2.718281828 ** metrics["eval_loss"]) < 1e-6 * metrics["eval_perplexity"]
    assert metrics["sample"].startswith("ROMEO:")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "lrnn" and "AutoModelForCausalLM" in config["auto_map"]


def test_model_card_fields(run):
    out, metrics = run
    card = (out / "README.md").read_text()
    front, body = card.split("---\n", 2)[1:]
    for field in ("library_name: transformers", "pipeline_tag: text-generation", "license: apache-2.0", "- hf_lrnn"):
        assert field in front, field
    assert "{{" not in card and "{%" not in card
    for text in ("# lrnn-tiny", "H-LRU (order m=2)", '"hidden_size": 32', f"{metrics['eval_loss']:.4f}",
                 f"{metrics['eval_perplexity']:.2f}", "trust_remote_code=True", 'from_pretrained("lrnn-tiny"',
                 "--hidden-size 32", str(metrics["train_tokens"]), "Training data", metrics["sample"].splitlines()[0]):
        assert text in body, text


def test_upload_folder_loads_in_clean_process(run, tmp_path):
    """What Trainer.push_to_hub uploads (the output folder without checkpoint-* and _*) loads with
    trust_remote_code=True where hf_lrnn cannot be imported, and generates."""
    out, _ = run
    upload = tmp_path / "upload"
    shutil.copytree(out, upload, ignore=shutil.ignore_patterns("checkpoint-*", "_*"))
    code = f"""
import sys
sys.modules["hf_lrnn"] = None  # import hf_lrnn raises ImportError, even if it is installed
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(upload)!r})
model = AutoModelForCausalLM.from_pretrained({str(upload)!r}, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
ids = tok(["ROMEO:", "KING RICHARD:"], return_tensors="pt", padding=True)
out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
print("OK", type(model).__name__, tuple(out.shape), tok.decode(out[0], skip_special_tokens=True)[:6])
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK LRNNForCausalLM (2, " in result.stdout and "ROMEO:" in result.stdout


def test_resume_continues_the_same_run(run, tmp_path):
    out, metrics = run
    resumed = tmp_path / "resumed"
    shutil.copytree(out / "checkpoint-3", resumed / "checkpoint-3")
    shutil.copy(out / "run_args.json", resumed / "run_args.json")
    again = train.main(["--resume", "--output-dir", str(resumed)])  # every other setting from run_args.json
    first, second = losses(metrics["log_history"]), losses(again["log_history"])
    assert sorted(second) == [1, 2, 3, 4, 5, 6]  # steps 1-3 come from the checkpoint's trainer state
    for step in (4, 5, 6):
        assert second[step] == pytest.approx(first[step], rel=1e-3, abs=1e-3), (step, first, second)
    assert again["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-3)


@pytest.mark.parametrize("argv, message", [
    (["--data", "no/such/file.txt"], "--data no/such/file.txt: no such file"),
    (["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
    (["--arch", "gpt"], "argument --arch: invalid choice: 'gpt'"),
    (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
    (["--max-steps", "0"], "--max-steps must be >= 1"),
    (["--vocab-size", "100"], "--vocab-size must be >= 257"),
    (["--batch-size", "6", "--grad-accum", "4"], "--batch-size 6 must be divisible"),
    (["--resume", "--output-dir", "/nonexistent/run"], "--resume: no /nonexistent/run/run_args.json"),
])
def test_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_error_in_a_subprocess(tmp_path):
    """The real command line: a missing file fails fast with usage and a one-line reason."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--data", str(tmp_path / "missing.txt")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "usage: train.py" in result.stderr and "missing.txt: no such file" in result.stderr
