"""scripts/train.py end to end on a tiny model: train, save, model card, loss curve, reload in a clean process
(trust_remote_code, hf_lrnn not importable) with the card's own usage code, generate; resume continues the
same run, leaves a finished run alone and refuses an incompatible one; an occupied --output-dir is refused
unless --overwrite; --layout packed and padded (the batches the Trainer sees, the real-token throughput); a small
corpus; --report-to; every argument error found before any work, as one line with status 2."""
import hashlib
import json
import math
import os
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
    assert metrics["train_real_tokens_per_second"] > 0 and metrics["padding_tokens_per_step"] == 0 and not metrics["packing"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "lrnn" and "AutoModelForCausalLM" in config["auto_map"]
    assert config["use_cache"] is True  # Trainer trains with use_cache=False; the saved model caches again
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
                 "--hidden-size 32", str(metrics["train_tokens"]), "Training data", metrics["sample"].splitlines()[0],
                 "blocks of 32 tokens of the concatenated corpus", "source repository"):
        assert text in body, text
    assert "pip install hf_lrnn" not in card  # no package index serves it


def test_model_card_config_omits_the_defaults(run):
    """The card's config block holds exactly the fields that differ from LRNNConfig's defaults (derived ones such
    as recurrent_size = hidden_size count as defaults)."""
    from hf_lrnn import LRNNConfig

    out, _, _ = run
    shown = json.loads(re.search(r"```json\n(.*?)```", (out / "README.md").read_text(), re.S).group(1))
    assert shown["hidden_size"] == 32 and shown["vocab_size"] == 300
    for default in ("use_cache", "rms_norm_eps", "mixer", "order", "recurrent_size", "intermediate_size", "auto_map"):
        assert default not in shown, default
    rebuilt = LRNNConfig(**shown).to_dict()
    saved = json.loads((out / "config.json").read_text())
    for key in ("hidden_size", "num_hidden_layers", "mixer", "order", "recurrent_size", "intermediate_size", "vocab_size"):
        assert rebuilt[key] == saved[key], key


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
    message = usage_error(["--resume", str(tmp_path / "not_a_checkpoint"), "--output-dir", str(tmp_path), "--no-push-to-hub"])
    assert re.search("--resume: no checkpoint .*not_a_checkpoint .*trainer_state.json", message), message


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


def usage_error(argv, after_work=False):
    """train.main(argv) must stop with status 2 and one line, error: ...; returns that line. Before any work
    that line is all of stderr; after_work (the data was read) progress bars may precede it."""
    import contextlib
    import io

    stderr = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stderr(stderr):
        train.main(argv)
    lines = stderr.getvalue().splitlines()
    if after_work:
        lines = [line for line in lines if line.startswith("error:")] if lines[-1].startswith("error:") else lines
    assert exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (exit_info.value.code, lines)
    return lines[0]


BAD_ARGUMENTS = [  # (argv, what the one-line error says): values that used to fail after training or run uselessly
    (["--data", "no/such/file.txt"], "--data no/such/file.txt: no such file or folder"),
    (["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
    (["--arch", "gpt"], "argument --arch: invalid choice: 'gpt'"),
    (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
    (["--max-steps", "0"], "--max-steps must be >= 1"),
    (["--vocab-size", "100"], "--vocab-size must be >= 257"),
    (["--batch-size", "6", "--grad-accum", "4"], "--batch-size 6 must be divisible"),
    (["--report-to", "tensorbored"], "--report-to tensorbored: not an integration of transformers"),
    (["--report-to", "none,wandb"], "--report-to none,wandb: give none, all, or comma-separated integration names"),
    (["--sample-tokens", "-1"], "--sample-tokens must be >= 0"),
    (["--prompt", ""], "--prompt is empty"),
    (["--eval-batches", "-1"], "--eval-batches must be >= 0"),
    (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--lr", "abc"], "argument --lr: invalid float value: 'abc'"),
    (["--warmup-steps", "-5"], "--warmup-steps must be >= 0"),
    (["--seq-len", "1"], "--seq-len must be >= 2 (a row needs a next-token target)"),
    (["--hidden-size", "0"], "--hidden-size must be >= 1, got 0"),
    (["--layers", "0"], "--layers must be >= 1, got 0"),
    (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0"),
    (["--save-interval", "-1"], "--save-interval must be >= 1"),
    (["--max-time", "-1"], "--max-time must be a number of seconds > 0"),
    (["--order", "0"], "--order must be >= 1"),
    (["--block-size", "0"], "--block-size must be >= 1"),
    (["--mixer", "bdlru", "--block-size", "3"], "LRNNConfig.recurrent_size (128) must be a multiple of block_size (3)"),
    (["--hidden-size", "90", "--mixer", "bdlru"], "LRNNConfig.recurrent_size (90) must be a multiple of block_size (4)"),
    (["--arch", "mamba", "--packing"], "--packing (--layout packed): Mamba takes no position_ids"),
    (["--arch", "mamba", "--layout", "packed"], "--packing (--layout packed): Mamba takes no position_ids"),
    (["--layout", "padded", "--packing"], "argument --packing: not allowed with argument --layout"),
    (["--layout", "ragged"], "argument --layout: invalid choice: 'ragged'"),
    (["--seed", "-1"], "--seed must be in [0, 2**32 - 1], got -1"),  # numpy's traceback
    (["--seed", str(2**32)], f"--seed must be in [0, 2**32 - 1], got {2**32}"),
    (["--resume", "--overwrite"], "give one of them"),
    (["--resume", "--output-dir", "/nonexistent/run"], "--resume: no /nonexistent/run/run_args.json"),
]


@pytest.mark.parametrize("argv, message", BAD_ARGUMENTS, ids=[" ".join(argv) for argv, _ in BAD_ARGUMENTS])
def test_argument_errors_before_any_work(argv, message, tmp_path, monkeypatch):
    """Each bad argument ends the run at once: one error line, status 2, and nothing written (the output
    folder is not even made) -- so nothing fails after training."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    line = usage_error(argv + (["--output-dir", str(out)] if "--output-dir" not in argv else []))
    assert message in line, line
    assert not out.exists() and not list(tmp_path.iterdir())


def test_report_to_an_integration_that_is_not_installed(tmp_path, monkeypatch):
    """--report-to tensorboard (the README's example) where tensorboard is missing: named at start, with its package."""
    monkeypatch.setattr(train, "get_available_reporting_integrations", lambda: ["wandb"])
    line = usage_error(["--report-to", "tensorboard", "--output-dir", str(tmp_path / "out")])
    assert "--report-to tensorboard: its package is not installed (pip install tensorboard)" in line


def test_accelerate_launch_on_cpus_is_refused(tmp_path, monkeypatch):
    """accelerate launch --cpu --num_processes 2 sets MASTER_ADDR but starts one process without WORLD_SIZE:
    refused, naming torchrun (which does start the processes)."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    line = usage_error(["--output-dir", str(tmp_path / "out")])
    assert "starts one process here" in line and "torchrun --nproc_per_node N" in line


def test_cli_error_in_a_subprocess(tmp_path):
    """The real command line: a missing file fails with one line and status 2."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--data", str(tmp_path / "missing.txt")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.splitlines() == [
        f"error: --data {tmp_path / 'missing.txt'}: no such file or folder"], result.stderr


def test_help_parses_before_the_heavy_imports(tmp_path):
    """--help and usage errors answer before torch, transformers or datasets are imported (they are blocked here),
    and --help shows the defaults."""
    block = "".join(f"sys.modules[{name!r}] = None\n" for name in ("torch", "transformers", "datasets"))
    code = f"import runpy, sys\n{block}sys.argv = ['train.py', *sys.argv[1:]]\n" \
           f"runpy.run_path({str(ROOT / 'scripts' / 'train.py')!r}, run_name='__main__')\n"
    result = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for default in ("(default: 300)", "(default: tinyshakespeare)", "(default: 0.0)", "(default: runs/lrnn-shakespeare)"):
        assert default in " ".join(result.stdout.split()), default
    result = subprocess.run([sys.executable, "-c", code, "--seq-len", "1"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: --seq-len must be >= 2"), result.stderr


def test_cli_without_hf_lrnn_says_how_to_install(tmp_path):
    result = run_without_hf_lrnn(f"""
import runpy
sys.argv = ["train.py"]
runpy.run_path({str(ROOT / "scripts" / "train.py")!r}, run_name="__main__")
""", tmp_path)
    assert result.returncode == 1 and 'pip install -e ".[train]"' in result.stderr, result.stderr[-2000:]


def test_an_occupied_output_dir_is_refused_and_left_alone(run, tmp_path):
    """A new run into a folder holding another run, or other files, stops at once unless --overwrite; nothing in
    the folder changes (no checkpoint rotated away, no file rewritten)."""
    out, _, _ = run
    earlier = tmp_path / "earlier"
    shutil.copytree(out, earlier)
    before = folder_digest(earlier)
    line = usage_error(["--output-dir", str(earlier), "--mixer", "bdlru"] + TINY[:-2])
    assert f"--output-dir {earlier} holds another run (run_args.json)" in line and "--overwrite" in line
    assert folder_digest(earlier) == before
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.md").write_text("mine")
    assert "is not empty (README.md)" in usage_error(["--output-dir", str(notes)])
    assert (notes / "README.md").read_text() == "mine"
    (tmp_path / "a-file").write_text("x")
    assert "is a file, not a folder" in usage_error(["--output-dir", str(tmp_path / "a-file")])


@pytest.mark.parametrize("flags, message", [
    (["--mixer", "bdlru"], "--mixer bdlru (the run has hlru)"),
    (["--hidden-size", "64", "--seq-len", "16"], "--seq-len 16 (the run has 32), --hidden-size 64 (the run has 32)"),
    (["--data", "tinyshakespeare"], "--data tinyshakespeare (the run has"),
    (["--packing"], "--layout packed (the run has stream)"),
    (["--layout", "padded"], "--layout padded (the run has stream)"),
])
def test_resume_refuses_to_change_the_run(run, tmp_path, flags, message):
    out, _, _ = run
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    before = folder_digest(resumed)
    line = usage_error(["--resume", "--output-dir", str(resumed), "--no-push-to-hub"] + flags)
    assert message in line and "a resumed run keeps its data, tokenizer, model and batch" in line, line
    assert folder_digest(resumed) == before


def test_resume_refuses_a_checkpoint_of_another_model(run, tmp_path):
    """--resume CHECKPOINT names the checkpoint's model fields that differ from the run's arguments."""
    out, _, _ = run
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    config_path = resumed / "checkpoint-3" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "num_hidden_layers": 3}))
    line = usage_error(["--resume", str(resumed / "checkpoint-3"), "--output-dir", str(resumed), "--no-push-to-hub"])
    assert "is not the one of the arguments: num_hidden_layers 3 (the arguments give 2)" in line, line


@pytest.fixture(scope="module")
def packed_run(run, corpus, tmp_path_factory):
    """--packing --overwrite into a copy of the first run's folder (whose checkpoints are at steps 3 and 6); the
    batches the Trainer passes to compute_loss are recorded."""
    out, _, _ = run
    folder = tmp_path_factory.mktemp("packed") / "run"
    shutil.copytree(out, folder)
    batches = []
    compute_loss = train.CardTrainer.compute_loss

    def recording_compute_loss(self, model, inputs, *args, **kwargs):
        if model.training:
            batches.append({k: v.detach().clone() for k, v in inputs.items()})
        return compute_loss(self, model, inputs, *args, **kwargs)

    argv = ["--data", str(corpus), "--output-dir", str(folder), "--packing", "--overwrite", "--max-steps", "4",
            "--eval-interval", "2", "--log-interval", "1", "--sample-tokens", "0"] + TINY[:TINY.index("--max-steps")] + ["--warmup-steps", "1",
            "--scan-backend", "torch", "--seq-len", "64"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train.CardTrainer, "compute_loss", recording_compute_loss)
        metrics = train.main(argv)
    return folder, metrics, batches


def test_packing_batches_restart_at_each_document(packed_run):
    """What the Trainer sees with --packing: full rows of --seq-len tokens (no padding, no attention mask), position_ids
    0 at each document start (where the previous token is end-of-text, or the row's start) and counting up inside a
    document, labels -100 exactly there and the input ids elsewhere."""
    folder, _, batches = packed_run
    eos = json.loads((folder / "config.json").read_text())["eos_token_id"]
    assert len(batches) == 4 and all(set(b) == {"input_ids", "labels", "position_ids"} for b in batches)
    restarts_inside_rows = 0
    for batch in batches:
        ids, positions, labels = batch["input_ids"], batch["position_ids"], batch["labels"]
        assert ids.shape == positions.shape == labels.shape == (4, 64)
        starts = positions == 0
        assert starts[:, 0].all()
        assert ((positions[:, 1:] == positions[:, :-1] + 1) | starts[:, 1:]).all()
        assert (ids[:, :-1][starts[:, 1:]] == eos).all()  # every document start inside a row follows an end-of-text
        assert (labels[starts] == -100).all() and torch_equal(labels[~starts], ids[~starts])
        restarts_inside_rows += int(starts[:, 1:].sum())
    assert restarts_inside_rows > 10  # the corpus' paragraphs are short: rows hold several documents


def torch_equal(a, b):
    return bool((a == b).all())


def test_packing_trains_saves_and_records_real_token_throughput(packed_run):
    """The packed run trains, saves, and records its throughput of real tokens; --overwrite deleted the earlier
    run's checkpoints (steps 3 and 6), which the rotation would otherwise have mixed with this run's."""
    folder, metrics, _ = packed_run
    assert metrics["packing"] is True and metrics["padding_tokens_per_step"] == 0 and metrics["train_real_tokens_per_second"] > 0
    assert metrics["steps"] == 4 and metrics["eval_loss"] < 6.0
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert metrics["sample"] == "(no sample: --sample-tokens 0)"
    assert json.loads((folder / "run_args.json").read_text())["layout"] == "packed"
    assert "whole documents packed into rows of 64 tokens" in (folder / "README.md").read_text()
    losses_logged = losses(json.loads((folder / "metrics.json").read_text())["log_history"])
    assert sorted(losses_logged) == [1, 2, 3, 4]


def test_pack_rows_matches_data_collator_with_flattening():
    """Rows of whole documents are what transformers' DataCollatorWithFlattening makes of those documents; a
    document cut at a row's end continues in the next row as a new document; the tail is dropped."""
    import torch
    from transformers import DataCollatorWithFlattening

    documents = [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10], [11, 12, 13], [14]]  # 3 + 1 + 2 = 6, then 4 + 3 -> 6 + 1
    rows = train.pack_rows(documents, seq_len=6)
    flattened = DataCollatorWithFlattening()([{"input_ids": d} for d in documents[:3]])
    for key in ("input_ids", "position_ids", "labels"):
        assert torch.equal(torch.tensor(rows[key][0]), flattened[key][0]), key
    assert rows["input_ids"][1] == [7, 8, 9, 10, 11, 12] and rows["position_ids"][1] == [0, 1, 2, 3, 0, 1]
    assert rows["labels"][1] == [-100, 8, 9, 10, -100, 12]
    assert len(rows["input_ids"]) == 2  # 13 and 14 do not fill a row


@pytest.fixture(scope="module")
def padded_run(corpus, tmp_path_factory):
    """--layout padded on the packed run's settings; the batches the Trainer passes to compute_loss are recorded."""
    folder = tmp_path_factory.mktemp("padded") / "run"
    batches = []
    compute_loss = train.CardTrainer.compute_loss

    def recording_compute_loss(self, model, inputs, *args, **kwargs):
        if model.training:
            batches.append({k: v.detach().clone() for k, v in inputs.items()})
        return compute_loss(self, model, inputs, *args, **kwargs)

    argv = ["--data", str(corpus), "--output-dir", str(folder), "--layout", "padded", "--max-steps", "4",
            "--eval-interval", "2", "--log-interval", "1", "--sample-tokens", "0"] + TINY[:TINY.index("--max-steps")] + [
            "--warmup-steps", "1", "--scan-backend", "torch", "--seq-len", "64"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train.CardTrainer, "compute_loss", recording_compute_loss)
        metrics = train.main(argv)
    return folder, metrics, batches


def test_padded_batches_hold_one_document_per_row(padded_run):
    """What the Trainer sees with --layout padded: each row one document (end-of-text only as its last real token;
    a row of --seq-len tokens may be a piece of a longer one), right-padded to the batch's longest row with
    attention_mask 0, labels -100 and the pad id there, labels = input ids on the tokens; no position_ids."""
    folder, _, batches = padded_run
    config = json.loads((folder / "config.json").read_text())
    eos, pad = config["eos_token_id"], config["pad_token_id"]
    assert len(batches) == 4 and all(set(b) == {"input_ids", "attention_mask", "labels"} for b in batches)
    padded_rows = 0
    for batch in batches:
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        assert ids.shape == mask.shape == labels.shape and ids.shape[0] == 4 and ids.shape[1] <= 64
        lengths = mask.sum(1)
        assert int(lengths.max()) == ids.shape[1] and int(lengths.min()) >= 2  # padded to the longest row, no more
        for row_ids, row_mask, row_labels, length in zip(ids, mask, labels, lengths.tolist()):
            assert row_mask[:length].all() and not row_mask[length:].any()  # padding on the right only
            assert (row_ids[length:] == pad).all() and (row_labels[length:] == -100).all()
            assert torch_equal(row_labels[:length], row_ids[:length])
            assert not (row_ids[:length - 1] == eos).any()  # one document: no end-of-text before the last token
            assert row_ids[length - 1] == eos or length == 64  # a shorter row is a whole document
            padded_rows += length < ids.shape[1]
    assert padded_rows > 0


def test_padded_run_counts_real_tokens_and_padding(padded_run):
    """The padded run trains and saves; metrics.json's real tokens and padding are those of the batches the
    Trainer saw (attention_mask 1 and 0), its real-token throughput is positive, and the model card says the layout."""
    folder, metrics, batches = padded_run
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    padding = sum(int((b["attention_mask"] == 0).sum()) for b in batches)
    assert metrics["layout"] == "padded" and metrics["packing"] is False and metrics["steps"] == 4
    assert metrics["train_tokens"] == real and metrics["padding_tokens_per_step"] == padding / 4
    assert metrics["padding_share"] == pytest.approx(padding / (real + padding)) and 0 < metrics["padding_share"] < 1
    assert metrics["train_real_tokens_per_second"] > 0 and metrics["eval_loss"] < 6.0
    assert (folder / "model.safetensors").is_file()
    assert json.loads((folder / "metrics.json").read_text())["padding_share"] == metrics["padding_share"]
    assert json.loads((folder / "run_args.json").read_text())["layout"] == "padded"
    assert "one document per row (longer ones cut into pieces of 64 tokens)" in (folder / "README.md").read_text()


@pytest.mark.parametrize("which, layout", [("run", "stream"), ("packed_run", "packed"), ("padded_run", "padded")])
def test_each_layout_records_real_token_throughput_and_padding_share(request, which, layout):
    """metrics.json of a tiny run of each layout: the layout, its real-token throughput and its padding share
    (none for stream and packed rows, which are full)."""
    folder = request.getfixturevalue(which)[0]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["layout"] == layout and metrics["train_real_tokens_per_second"] > 0
    padded = layout == "padded"
    assert (metrics["padding_share"] > 0) == padded and (metrics["padding_tokens_per_step"] > 0) == padded


def test_resume_of_a_run_saved_before_layout_reads_its_packing_flag(run, tmp_path):
    """A run_args.json written before --layout holds "packing": its value becomes the layout, so such a run
    resumes as it was and still refuses a layout change."""
    out, _, _ = run
    saved = json.loads((out / "run_args.json").read_text())
    for packing, layout in ((True, "packed"), (False, "stream")):
        old = {k: v for k, v in saved.items() if k != "layout"} | {"packing": packing}
        (tmp_path / "run_args.json").write_text(json.dumps(old))
        args = train.parse_args(["--resume", "--output-dir", str(tmp_path)])
        assert args.layout == layout and not hasattr(args, "packing")
    line = usage_error(["--resume", "--output-dir", str(tmp_path), "--layout", "padded"])
    assert "--layout padded (the run has stream)" in line, line


def test_document_rows_cut_long_documents_into_fresh_rows():
    """One document per row; a document longer than seq_len becomes pieces of seq_len tokens, each its own row;
    a piece of one token (no next-token target) is dropped."""
    documents = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13, 14, 15, 16]]
    assert train.document_rows(documents, seq_len=4)["input_ids"] == [
        [1, 2, 3], [4, 5, 6, 7], [8, 9, 10], [12, 13, 14, 15]]


def test_pad_batch_pads_right_with_mask_and_ignored_labels():
    import torch

    batch = train.PadBatch(pad_token_id=0)([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, 9, -100]]
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.int64


def test_split_documents_on_blank_lines():
    assert train.split_documents("A:\nhi\n\nB:\nho\n \n\n\nC\n") == ["A:\nhi", "B:\nho", "C"]


def test_small_corpus_evaluates_and_saves(tmp_path):
    """The README's first example on a ~51 KB file with the default batch: fewer validation rows than a batch
    used to give no evaluation at all and a crash after training; now every evaluation runs and the model is
    saved."""
    small = tmp_path / "notes.txt"
    small.write_text((ROOT / "scripts" / "data" / "tinyshakespeare.txt").read_text()[:51000])
    out = tmp_path / "out"
    metrics = train.main(["--data", str(small), "--output-dir", str(out), "--max-steps", "4", "--eval-interval", "2",
                          "--log-interval", "1", "--sample-tokens", "4", "--scan-backend", "torch"])
    evaluated = [e["step"] for e in metrics["log_history"] if "eval_loss" in e]
    assert 2 in evaluated and 4 in evaluated and math.isfinite(metrics["eval_loss"])
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()


def test_a_corpus_too_small_for_one_batch_is_named(tmp_path):
    small = tmp_path / "tiny.txt"
    small.write_text("To be, or not to be. " * 40)
    line = usage_error(["--data", str(small), "--output-dir", str(tmp_path / "out"), "--vocab-size", "257"], after_work=True)
    assert re.search(r"the corpus is too small: \d+ training / \d+ validation rows of 128 tokens \(need >= --batch-size 16", line)


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_too_few_documents_for_a_document_layout_are_named(layout, tmp_path):
    """--layout packed / padded on a text file of one paragraph (no document left to train on) or of documents
    too short for one row: one error line, once a datasets traceback ("Column name ['ids'] not in the dataset",
    "Column 'position_ids' doesn't exist")."""
    one = tmp_path / "one.txt"
    one.write_text("To be, or not to be. " * 40)
    line = usage_error(["--data", str(one), "--output-dir", str(tmp_path / "out"), "--layout", layout])
    assert f"--data {one} holds 1 document(s) (paragraphs between blank lines): --layout {layout} needs at least 2" in line
    few = tmp_path / "few.txt"
    few.write_text("To be.\n\nOr not.\n\nThat is all.\n")
    line = usage_error(["--data", str(few), "--output-dir", str(tmp_path / "out"), "--layout", layout, "--vocab-size",
                        "257", "--batch-size", "4", "--seq-len", "32"], after_work=True)
    assert re.search(r"the corpus is too small: \d+ training / \d+ validation rows of (<= )?32 tokens", line), line


def test_records_without_text_are_named(tmp_path):
    """A JSONL record whose text is null, or a --text-field of numbers: one error line before any work, once a
    TypeError traceback from the tokenizer's trainer."""
    records = [{"text": f"record {i}: to be, or not to be"} for i in range(30)]
    records[3]["text"] = None
    nulls = tmp_path / "nulls.jsonl"
    nulls.write_text("\n".join(json.dumps(r) for r in records))
    line = usage_error(["--data", str(nulls), "--output-dir", str(tmp_path / "out")], after_work=True)
    assert f"--data {nulls}: 1 record(s) of its train split have no 'text' (null)" in line
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text("\n".join(json.dumps({"text": i}) for i in range(30)))
    line = usage_error(["--data", str(numbers), "--output-dir", str(tmp_path / "out")], after_work=True)
    assert f"--text-field 'text' of {numbers} holds Value('int64'), not text" in line


def test_non_utf8_data_is_named(tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9 cr\u00e8me\n".encode("latin-1") * 100)
    line = usage_error(["--data", str(latin1), "--output-dir", str(tmp_path / "out")])
    assert f"--data {latin1} is not UTF-8 text (byte 0xe9 at offset 3)" in line and "iconv" in line


def test_a_missing_local_name_tried_on_the_hub_ends_in_one_line(tmp_path):
    """--data notes (no such file, no suffix) may be a Hub dataset: tried there (offline here) and reported in one
    line, no traceback."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--data", "notes", "--output-dir",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(errors) == 1 and "--data notes: not a local file or folder; as a Hub dataset could not be loaded" in errors[0]


def corpus_args(*argv):
    return train.parse_args(list(argv))


def test_load_corpus_text_jsonl_and_dataset_folder(tmp_path, capsys):
    text = tmp_path / "a.txt"
    text.write_text("x" * 90 + "y" * 10)
    ds = train.load_corpus(corpus_args("--data", str(text)))
    assert ds["train"]["text"] == ["x" * 90] and ds["validation"]["text"] == ["y" * 10]

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"body": f"doc {i}", "id": i}) + "\n" for i in range(20)))
    ds = train.load_corpus(corpus_args("--data", str(docs), "--text-field", "body"))
    assert ds["train"]["text"] == [f"doc {i}" for i in range(18)] and ds["validation"]["text"] == ["doc 18", "doc 19"]
    with pytest.raises(SystemExit) as exit_info:
        train.load_corpus(corpus_args("--data", str(docs)))
    assert exit_info.value.code == 2 and "error: --text-field 'text' is not a column" in capsys.readouterr().err

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
