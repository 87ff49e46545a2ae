"""scripts/train.py end to end on a tiny model: train, save, model card, loss curve, reload in a clean process
(trust_remote_code, hf_lrnn not importable) with the card's own usage code, generate; resume continues the
same run and leaves a finished run alone; --report-to; argument errors."""
import hashlib
import json
import re
import shutil
import subprocess
import sys
import types

import pytest
import transformers.trainer

from script_loader import ROOT, load_script, run_without_hf_lrnn

TINY = ["--hidden-size", "32", "--layers", "2", "--seq-len", "32", "--batch-size", "4", "--vocab-size", "300",
        "--max-steps", "6", "--eval-interval", "3", "--eval-batches", "2", "--log-interval", "1", "--warmup-steps", "1",
        "--lr", "1e-2", "--sample-tokens", "8", "--scan-backend", "torch"]


train = load_script("train")


def losses(log_history):
    return {e["step"]: e["loss"] for e in log_history if "loss" in e}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "small.txt"
    path.write_text((ROOT / "scripts" / "data" / "tinyshakespeare.txt").read_text()[:40000])
    return path


class FakeHubApi:
    """Stands in for transformers.trainer.hf_api(): Trainer.push_to_hub runs for real up to the HTTP calls,
    and the upload copies what would be sent (folder_path minus ignore_patterns) to a local folder."""

    def __init__(self, upload_to):
        self.upload_to, self.calls = upload_to, []

    def __call__(self):
        return self

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id))
        return types.SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, ignore_patterns=(), **kwargs):
        self.calls.append(("upload_folder", repo_id, folder_path))
        shutil.copytree(folder_path, self.upload_to, ignore=shutil.ignore_patterns(*ignore_patterns))


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    """A tiny run with --push-to-hub: Trainer.push_to_hub with a fake Hub API; returns the output folder,
    the metrics, and the folder that would have been uploaded."""
    out = tmp_path_factory.mktemp("run") / "lrnn-tiny"
    hub = FakeHubApi(tmp_path_factory.mktemp("hub") / "tester--lrnn-tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(transformers.trainer, "hf_api", hub)
        metrics = train.main(["--data", str(corpus), "--output-dir", str(out), "--push-to-hub",
                              "--hub-model-id", "tester/lrnn-tiny"] + TINY)
    assert [c[0] for c in hub.calls] == ["create_repo", "upload_folder"], hub.calls
    assert hub.calls[1][1:] == ("tester/lrnn-tiny", str(out))
    return out, metrics, hub.upload_to


def test_train_saves_everything(run):
    out, metrics, _ = run
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md",
                 "modeling_lrnn.py", "configuration_lrnn.py", "ops_lrnn.py", "gates_lrnn.py", "scan_reference_lrnn.py", "scan_chunked_lrnn.py",
                 "metrics.json", "run_args.json", "loss_curve.png"):
        assert (out / name).is_file(), name
    assert metrics["steps"] == 6 and metrics["eval_loss"] < 6.0  # below ln(300) = 5.7 after a few steps
    assert abs(metrics["eval_perplexity"] - 2.718281828 ** metrics["eval_loss"]) < 1e-6 * metrics["eval_perplexity"]
    assert metrics["sample"].startswith("ROMEO:")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "lrnn" and "AutoModelForCausalLM" in config["auto_map"]
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] in ("TokenizersBackend",
                                                                                        "PreTrainedTokenizerFast")
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loss_curve_plots_the_log_history(tmp_path):
    history = [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0}, {"step": 2, "eval_loss": 4.5},
               {"step": 3, "loss": 3.5}, {"step": 4, "eval_loss": 3.9}, {"step": 4, "train_runtime": 1.0}]
    fig = train.plot_loss_curve(history, tmp_path / "curve.png")
    training, validation = fig.axes[0].lines
    assert training.get_label() == "training" and validation.get_label() == "validation"
    assert training.get_xydata().tolist() == [[1, 5.0], [2, 4.0], [3, 3.5]]
    assert validation.get_xydata().tolist() == [[2, 4.5], [4, 3.9]]
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_model_card_fields(run):
    out, metrics, uploaded = run
    card = (uploaded / "README.md").read_text()
    assert card == (out / "README.md").read_text()
    front, body = card.split("---\n", 2)[1:]
    for field in ("library_name: transformers", "pipeline_tag: text-generation", "license: apache-2.0", "- hf_lrnn"):
        assert field in front, field
    assert "{{" not in card and "{%" not in card
    for text in ("# tester/lrnn-tiny", "H-LRU (order m=2)", '"hidden_size": 32', f"{metrics['eval_loss']:.4f}",
                 f"{metrics['eval_perplexity']:.2f}", "trust_remote_code=True", 'from_pretrained("tester/lrnn-tiny"',
                 "--hidden-size 32", str(metrics["train_tokens"]), "Training data", metrics["sample"].splitlines()[0]):
        assert text in body, text


def test_model_card_usage_runs_silently_without_hf_lrnn(run, tmp_path):
    """The usage code of the uploaded model card, as written (the Hub id replaced by the uploaded folder),
    runs where hf_lrnn cannot be imported: the model through trust_remote_code, the tokenizer with its stock
    class, with no remote-code question and no model-type warning; a left-padded batch generates."""
    _, _, upload = run
    assert not list(upload.glob("checkpoint-*")) and (upload / "modeling_lrnn.py").is_file()
    usage = (upload / "README.md").read_text().split("## Usage", 1)[1]
    snippet = re.search(r"```python\n(.*?)```", usage, re.S).group(1).replace('"tester/lrnn-tiny"', repr(str(upload)))
    assert "tokenizer = PreTrainedTokenizerFast.from_pretrained(" in snippet
    code = snippet + """
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
assert type(tokenizer).__module__.startswith("transformers."), type(tokenizer)
ids = tokenizer(["ROMEO:", "KING RICHARD:"], return_tensors="pt", padding=True)
out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
print("OK", type(model).__name__, tuple(out.shape), tokenizer.decode(out[0], skip_special_tokens=True)[:6])
"""
    result = run_without_hf_lrnn(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK LRNNForCausalLM (2, " in result.stdout and "ROMEO:" in result.stdout
    for noise in ("custom code", "trust_remote_code", "model of type"):
        assert noise not in result.stdout + result.stderr, (noise, result.stdout, result.stderr)


def test_auto_tokenizer_with_trust_remote_code_loads_silently(run, tmp_path):
    """The other silent way: AutoTokenizer reads config.json (whose auto_map names the remote code), so it
    needs the same trust_remote_code=True as the model; the tokenizer it returns is the stock class."""
    _, _, upload = run
    code = f"""
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained({str(upload)!r}, trust_remote_code=True)
assert type(tokenizer).__module__.startswith("transformers."), type(tokenizer)
print("OK", tokenizer.decode(tokenizer("ROMEO:")["input_ids"]))
"""
    result = run_without_hf_lrnn(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK ROMEO:" in result.stdout
    for noise in ("custom code", "model of type"):
        assert noise not in result.stdout + result.stderr, (noise, result.stdout, result.stderr)


def test_resume_continues_the_same_run(run, tmp_path):
    out, metrics, _ = run
    resumed = tmp_path / "resumed"
    shutil.copytree(out / "checkpoint-3", resumed / "checkpoint-3")
    shutil.copy(out / "run_args.json", resumed / "run_args.json")
    # every other setting comes from run_args.json (no push this time)
    again = train.main(["--resume", "--output-dir", str(resumed), "--no-push-to-hub"])
    first, second = losses(metrics["log_history"]), losses(again["log_history"])
    assert sorted(second) == [1, 2, 3, 4, 5, 6]  # steps 1-3 come from the checkpoint's trainer state
    for step in (4, 5, 6):
        assert second[step] == pytest.approx(first[step], rel=1e-3, abs=1e-3), (step, first, second)
    assert again["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-3)


def test_resume_from_a_folder_that_is_no_checkpoint(run, tmp_path):
    out, _, _ = run
    (tmp_path / "not_a_checkpoint").mkdir()
    shutil.copy(out / "run_args.json", tmp_path / "run_args.json")
    with pytest.raises(SystemExit, match="--resume: no checkpoint .*not_a_checkpoint .*trainer_state.json"):
        train.main(["--resume", str(tmp_path / "not_a_checkpoint"), "--output-dir", str(tmp_path), "--no-push-to-hub"])


def folder_digest(folder):
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.rglob("*")) if f.is_file()}


@pytest.mark.parametrize("which", ["last", "checkpoint-6"])
def test_resume_of_a_finished_run_does_nothing(run, tmp_path, capsys, which):
    """--resume when the checkpoint is already at --max-steps: says so, exits normally, and neither trains
    another step nor rewrites anything in the output folder."""
    out, _, _ = run
    finished = tmp_path / "finished"
    shutil.copytree(out, finished)
    before = folder_digest(finished)
    resume = ["--resume"] if which == "last" else ["--resume", str(finished / which)]
    assert train.main(resume + ["--output-dir", str(finished), "--no-push-to-hub"]) is None
    message = capsys.readouterr().out
    assert "checkpoint-6 is at step 6, --max-steps is 6: the run is finished, nothing to do" in message
    assert folder_digest(finished) == before


@pytest.mark.parametrize("report_to, expected", [
    ("none", []), ("tensorboard", ["tensorboard"]), ("tensorboard, wandb", ["tensorboard", "wandb"]),
])
def test_report_to_reaches_training_arguments(report_to, expected, tmp_path):
    args = train.parse_args(["--report-to", report_to, "--output-dir", str(tmp_path)])
    assert train.training_arguments(args, per_device=4).report_to == expected


@pytest.mark.parametrize("argv, message", [
    (["--data", "no/such/file.txt"], "--data no/such/file.txt: no such file"),
    (["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
    (["--arch", "gpt"], "argument --arch: invalid choice: 'gpt'"),
    (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
    (["--max-steps", "0"], "--max-steps must be >= 1"),
    (["--vocab-size", "100"], "--vocab-size must be >= 257"),
    (["--batch-size", "6", "--grad-accum", "4"], "--batch-size 6 must be divisible"),
    (["--resume", "--output-dir", "/nonexistent/run"], "--resume: no /nonexistent/run/run_args.json"),
    (["--report-to", "tensorbored"], "--report-to tensorbored: give none, all, or names from"),
    (["--report-to", "none,wandb"], "--report-to none,wandb: give none, all, or names from"),
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


def test_cli_without_hf_lrnn_says_how_to_install(tmp_path):
    result = run_without_hf_lrnn(f"""
import runpy
sys.argv = ["train.py"]
runpy.run_path({str(ROOT / "scripts" / "train.py")!r}, run_name="__main__")
""", tmp_path)
    assert result.returncode == 1 and 'pip install -e ".[train]"' in result.stderr, result.stderr[-2000:]


def corpus_args(*argv):
    return train.parse_args(list(argv))


def test_load_corpus_text_jsonl_and_dataset_folder(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("x" * 90 + "y" * 10)
    ds = train.load_corpus(corpus_args("--data", str(text)))
    assert ds["train"]["text"] == ["x" * 90] and ds["validation"]["text"] == ["y" * 10]

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"body": f"doc {i}", "id": i}) + "\n" for i in range(20)))
    ds = train.load_corpus(corpus_args("--data", str(docs), "--text-field", "body"))
    assert ds["train"]["text"] == [f"doc {i}" for i in range(18)] and ds["validation"]["text"] == ["doc 18", "doc 19"]
    with pytest.raises(SystemExit, match="--text-field 'text' is not a column"):
        train.load_corpus(corpus_args("--data", str(docs)))

    folder = tmp_path / "folder"  # a dataset folder (as from the Hub): a "test" split becomes the validation set
    folder.mkdir()
    for split, n in (("train", 5), ("test", 2)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"text": f"{split} {i}"}) + "\n" for i in range(n)))
    ds = train.load_corpus(corpus_args("--data", str(folder)))
    assert ds["validation"]["text"] == ["test 0", "test 1"] and len(ds["train"]) == 5


def test_byte_tokenizer_round_trips_any_text():
    import datasets

    tokenizer = train.train_bpe_tokenizer(datasets.Dataset.from_dict({"text": ["abc"]}), 257)  # bytes + end-of-text
    assert len(tokenizer) == 257 and tokenizer.eos_token == train.EOS
    text = "Ünïcødé → 字 🙂\n\ttabs"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text.encode()) and tokenizer.decode(ids) == text
