"""benchmarks/synthetic and benchmarks/models.py: tasks, metrics, model table, baselines, one run, the study."""
import json
import subprocess

import numpy as np
import pytest
import torch

from benchmarks.models import MODELS, display_name, lrnn_fields, recurrent_size
from benchmarks.synthetic import check_baselines, study, table
from benchmarks.synthetic import run as synthetic_run
from benchmarks.synthetic.baselines import (
    ProbeHead,
    build_model,
    count_parameters,
    last_hidden_state,
)
from benchmarks.synthetic.tasks import (
    IGNORE,
    TASKS,
    class_counts,
    default_spec,
    macro_accuracy,
    make_task,
    masked_cross_entropy,
    permutation_group,
    permutation_sign,
    target_mask,
)


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_in_range_and_shaped(task):
    a = make_task(task, seed=3, num_train=300, num_test=50)
    b = make_task(task, seed=3, num_train=300, num_test=50)
    c = make_task(task, seed=4, num_train=300, num_test=50)
    assert torch.equal(a.train_inputs, b.train_inputs) and torch.equal(a.test_targets, b.test_targets)
    assert not torch.equal(a.train_inputs, c.train_inputs)
    V = a.spec.vocab_size
    length = a.spec.seq_len - 1 if task == "recall" else a.spec.seq_len  # MAD's recall: inputs are seq_len - 1
    for x, y in ((a.train_inputs, a.train_targets), (a.test_inputs, a.test_targets)):
        assert x.dtype == torch.long and x.shape[1] == length
        assert 0 <= int(x.min()) and int(x.max()) < V
        assert target_mask(y).any(dim=1).all()  # every sequence has something to predict
        assert ((y == IGNORE) | ((y >= 0) & (y < V))).all()
    assert a.train_inputs.shape[0] == 300 and a.test_inputs.shape[0] == 50


def test_default_sizes():
    for task, (V, T, ntr, nte) in {"s5": (120, 16, 100_000, 1_280), "a5": (60, 16, 100_000, 1_280),
                                   "selective_copy": (16, 128, 12_800, 1_280), "recall": (16, 128, 12_800, 1_280),
                                   "compression": (16, 32, 12_800, 1_280)}.items():
        d = make_task(task, seed=0)
        assert (d.spec.vocab_size, d.spec.seq_len, d.train_inputs.shape[0], d.test_inputs.shape[0]) == (V, T, ntr, nte)


@pytest.mark.parametrize("task", ["s3", "s4", "s5", "a5"])
def test_permutation_targets_are_prefix_products(task):
    elems, table = permutation_group(task)
    assert len(elems) == {"s3": 6, "s4": 24, "s5": 120, "a5": 60}[task]
    assert (elems[0] == np.arange(elems.shape[1])).all()  # identity first
    d = make_task(task, seed=1, num_train=200, num_test=20)
    for x, y in zip(d.train_inputs[:50].numpy(), d.train_targets[:50].numpy()):
        acc = np.arange(elems.shape[1])
        for g, target in zip(x, y):
            acc = elems[g][acc]  # p_t = g_t o p_{t-1}
            assert (elems[target] == acc).all()
    if task == "a5":
        assert all(permutation_sign(p) == 1 for p in elems)


def test_cayley_table_is_a_group():
    elems, table = permutation_group("s4")
    n = len(elems)
    assert (table[0] == np.arange(n)).all() and (table[:, 0] == np.arange(n)).all()
    for row in table:  # Latin square: every product exactly once per row
        assert sorted(row) == list(range(n))
    a, b, c = 5, 11, 17
    assert table[a, table[b, c]] == table[table[a, b], c]


@pytest.mark.parametrize("task", ["s3", "s5", "parity", "mod_count"])
def test_train_and_test_disjoint(task):
    d = make_task(task, seed=0, num_train=20_000, num_test=1_280)
    train = {row.tobytes() for row in d.train_inputs.numpy()}
    assert not any(row.tobytes() in train for row in d.test_inputs.numpy())


def test_recall_is_mads_instance():
    """MAD's multi-query recall: keys 0..V/2-1, values V/2..V-1, a per-sequence map; training targets the next
    token everywhere, test targets the value at every key already seen, and the last pair always queried."""
    d = make_task("recall", seed=2, num_train=200, num_test=30)
    V, L = d.spec.vocab_size, d.spec.seq_len
    assert torch.equal(d.train_targets[:, :-1], d.train_inputs[:, 1:])  # next-token targets
    assert not target_mask(d.test_targets[:, 1::2]).any()  # nothing to predict at value positions
    for x, y in zip(d.test_inputs.numpy(), d.test_targets.numpy()):
        assert len(x) == L - 1
        keys, values = x[0::2], x[1::2]
        assert (keys < V // 2).all() and (values >= V // 2).all()
        seen = {}
        for i, k in enumerate(keys):
            assert y[2 * i] == seen.get(k, IGNORE)  # a key seen before is answered with its value
            if i < len(values):  # (the last key's value is the target, not an input)
                assert seen.setdefault(k, values[i]) == values[i]  # the map is fixed within a sequence
        assert y[-1] != IGNORE  # the final key repeats one seen before


@pytest.mark.parametrize("name,overrides", study.RECALL_LADDER)
def test_recall_ladder_instances(name, overrides):
    """Every point of the ladder the suite runs (at 400 training sequences): shapes, vocabulary, disjoint
    train and test sets, and the training-set size the point asks for."""
    d = make_task("recall", seed=0, **{**overrides, "num_train": 400, "num_test": 100})
    spec = default_spec("recall", **overrides)
    assert (d.spec.vocab_size, d.spec.seq_len) == (spec.vocab_size, spec.seq_len)
    assert d.train_inputs.shape[1] == d.test_inputs.shape[1] == spec.seq_len - 1
    for x in (d.train_inputs, d.test_inputs):
        keys, values = x[:, 0::2], x[:, 1::2]
        assert int(keys.max()) < spec.vocab_size // 2 <= int(values.min()) and int(values.max()) < spec.vocab_size
    assert len({tuple(r) for r in d.train_inputs.tolist()} & {tuple(r) for r in d.test_inputs.tolist()}) == 0
    assert spec.num_train == {"train6400": 6400, "train3200": 3200, "train1600": 1600, "train800": 800}.get(name, 12_800)


def test_selective_copy_targets_are_the_data_in_order():
    d = make_task("selective_copy", seed=0, num_train=100, num_test=10)
    K = d.spec.params["num_copy"]
    T = d.spec.seq_len
    for x, y in zip(d.train_inputs.numpy(), d.train_targets.numpy()):
        data = x[: T - K][x[: T - K] >= 2]
        assert len(data) == K
        assert (x[T - K:] == 1).all() and (y[: T - K] == IGNORE).all()
        assert (y[T - K:] == data).all()


def test_compression_targets_are_the_sequence():
    d = make_task("compression", seed=0, num_train=100, num_test=10)
    assert d.spec.probe and d.num_targets == d.spec.seq_len - 1
    assert torch.equal(d.train_targets, d.train_inputs[:, :-1])
    assert (d.train_inputs[:, -1] == 0).all() and (d.train_inputs[:, :-1] > 0).all()


@pytest.mark.parametrize("task,mod", [("parity", 2), ("mod_count", 5)])
def test_mod_count_targets(task, mod):
    d = make_task(task, seed=0, num_train=100, num_test=10)
    assert torch.equal(d.train_targets, torch.cumsum(d.train_inputs, 1) % mod)


def test_accuracy_and_loss_ignore_masked_positions():
    targets = torch.tensor([[IGNORE, 2, 0], [1, IGNORE, IGNORE]])
    logits = torch.full((2, 3, 3), -5.0)
    logits[0, 1, 2] = logits[0, 2, 1] = logits[1, 0, 1] = 5.0  # right, wrong, right
    logits[0, 0, 0] = logits[1, 1, 0] = 9.0  # garbage at ignored positions
    tp, support, _ = class_counts(logits, targets, 3).sum(1).tolist()
    assert (tp, support) == (2, 3)
    flat = torch.nn.functional.cross_entropy(logits[targets != IGNORE], targets[targets != IGNORE])
    assert torch.allclose(masked_cross_entropy(logits, targets), flat)


def test_overrides_are_checked():
    assert default_spec("selective_copy", num_copy=4, seq_len=64).params["num_copy"] == 4
    assert default_spec("mod5", modulus=7).vocab_size == 7
    with pytest.raises(ValueError, match="no setting 'num_keys'"):
        default_spec("recall", num_keys=4)
    with pytest.raises(ValueError, match="follows from the modulus"):
        default_spec("parity", vocab_size=10)
    with pytest.raises(ValueError, match="unknown task"):
        default_spec("s6")


def test_model_table_widths_and_names():
    """BD-LRU's recurrent width is the multiple of k nearest width_factor x d; names say what each model is."""
    widths = {label: recurrent_size(label, 128) for label in MODELS if MODELS[label]["kind"] == "lrnn"}
    assert widths["bdlru_k3"] == 129 and widths["bdlru_k5"] == 130 and widths["bdlru_k6"] == 126
    assert widths["bdlru_k4_x4"] == 512 and widths["bdlru_k5_x4"] == 510 and widths["diag"] == 128
    assert lrnn_fields("bdlru_k5", 128) == {"mixer": "bdlru", "block_size": 5, "recurrent_size": 130}
    assert lrnn_fields("diag", 64) == {"mixer": "hlru", "order": 1, "recurrent_size": 64}
    assert [display_name(m) for m in ("diag", "hlru_m2", "bdlru_k5", "mamba2")] == [
        "diagonal LRU", "H-LRU m=2", "BD-LRU k=5 (N=130)", "Mamba-2"]
    with pytest.raises(ValueError, match="unknown model 'bdlru_k7'; known: diag"):
        lrnn_fields("bdlru_k7", 128)
    with pytest.raises(ValueError, match="'lstm' is a baseline"):
        recurrent_size("lstm", 128)


@pytest.mark.parametrize("label", ["diag", "hlru_m3", "bdlru_k2", "bdlru_k5", "lstm", "llama", "mamba2"])
def test_baselines_build_and_run_on_cpu(label):
    """Every CPU-capable model builds from its label, and its logits from inputs_embeds (what the harness feeds,
    so that no model reads the ids on the host) equal those from input_ids."""
    x = torch.randint(0, 10, (2, 12))
    model, desc = build_model(label, 10, 32, 2)
    assert desc["label"] == label
    if label == "mamba2":  # on the CPU transformers' PyTorch path, and the description says so
        assert desc["kernel_path"] == "torch" and desc["training_path"] == "unfused"
    if label == "bdlru_k5":
        assert desc["recurrent_size"] == 30 and model.config.block_size == 5
    out = model(input_ids=x, labels=x)
    assert out.logits.shape == (2, 12, 10) and torch.isfinite(out.loss)
    embedded = model(inputs_embeds=model.get_input_embeddings()(x)).logits
    assert torch.allclose(embedded, out.logits, atol=1e-5)
    h = last_hidden_state(model, x)
    assert h.shape == (2, 12, 32)
    assert ProbeHead(32, 7, 10)(h[:, -1]).shape == (2, 7, 10)


def test_mamba2_baseline_size():
    """Mamba-2 at d = 128: 2 x num_layers blocks, inner width 2d in 64-wide heads, state 64, about Mamba's size."""
    mamba2, desc = build_model("mamba2", 120, 128, 2)
    mamba, _ = build_model("mamba", 120, 128, 2)
    config = mamba2.config
    assert (config.num_hidden_layers, config.num_heads * config.head_dim, config.state_size, config.n_groups) == (4, 256, 64, 1)
    assert desc["heads"] == 4 and abs(count_parameters(mamba2) / count_parameters(mamba) - 1) < 0.05
    with pytest.raises(ValueError, match="divisible"):
        build_model("mamba2", 10, 48, 2)


def test_check_baselines_smoke(tmp_path):
    """The GPU self-check's CPU smoke mode: Mamba-2 builds on the PyTorch path (its kernel comparison is of the CUDA
    kernels), the fla kinds say they need CUDA."""
    out = tmp_path / "check.json"
    assert check_baselines.main(["--smoke", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    kinds = {r["kind"]: r for r in report["kinds"]}
    assert list(kinds) == ["mamba2", "deltanet"] and report["environment"]["torch"] == torch.__version__
    mamba2 = kinds["mamba2"]
    assert mamba2["status"] == "ok" and mamba2["desc"]["kernel_path"] == "torch" and mamba2["parameters"] > 0
    assert mamba2["kernel_check"].startswith("not run")
    assert kinds["deltanet"]["status"] == "unavailable" and "CUDA" in kinds["deltanet"]["reason"]


def test_lstm_baseline_matches_the_lrnn_widths():
    """The LSTM baseline's SwiGLU has the LRNN model's width, and the blocks hold what the docstring says."""
    lstm, _ = build_model("lstm", 10, 96, 2)
    lrnn, _ = build_model("hlru_m2", 10, 96, 2)
    assert lstm.config.intermediate_size == lrnn.config.intermediate_size == 256
    block = lstm.layers[0]
    assert block.mlp.gate_proj.weight.shape == (256, 96) and block.mixer_norm.weight.shape == (96,)
    bias = block.lstm.bias_ih_l0 + block.lstm.bias_hh_l0
    assert torch.equal(bias[96:192], torch.ones(96)) and not bias[:96].any() and not bias[192:].any()


def test_macro_accuracy_by_hand():
    """torchmetrics' macro average: per-class recall over the target positions; a class only predicted counts 0,
    a class neither predicted nor a target is left out; ignored positions count for nothing."""
    targets = torch.tensor([[0, 0, 1, 2, IGNORE]])
    preds = torch.tensor([[0, 1, 1, 3, 2]])  # class 3 predicted, never a target; class 4 absent; 2 predicted at IGNORE
    logits = torch.nn.functional.one_hot(preds, 5).float()
    counts = class_counts(logits, targets, 5)
    assert counts.tolist() == [[1, 1, 0, 0, 0], [2, 1, 1, 0, 0], [1, 2, 0, 1, 0]]
    assert macro_accuracy(counts) == pytest.approx((0.5 + 1.0 + 0.0 + 0.0) / 4)
    assert macro_accuracy(counts, classes="target") == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert (int(counts[0].sum()), int(counts[1].sum())) == (2, 4)  # per-token accuracy 2 / 4
    halves = class_counts(logits[:, :2], targets[:, :2], 5) + class_counts(logits[:, 2:], targets[:, 2:], 5)
    assert torch.equal(halves, counts)  # counts add up over test batches
    with pytest.raises(ValueError, match="classes must be"):
        macro_accuracy(counts, classes="present")


def test_macro_accuracy_of_recall_halves_with_stray_key_predictions():
    """Keys 0, 1 are never targets; values 2, 3 are right 3 times in 4, each miss naming a key."""
    targets = torch.tensor([[2, 2, 2, 2, 3, 3, 3, 3]])
    preds = torch.tensor([[2, 2, 2, 0, 3, 3, 3, 1]])
    counts = class_counts(torch.nn.functional.one_hot(preds, 4).float(), targets, 4)
    assert int(counts[0].sum()) / int(counts[1].sum()) == 0.75
    assert macro_accuracy(counts) == pytest.approx((0.75 + 0.75 + 0 + 0) / 4)
    assert macro_accuracy(counts, classes="target") == pytest.approx(0.75)


def test_smoke_settings():
    run = synthetic_run.default_run(smoke=True, steps=7, task_overrides={"seq_len": 5})
    assert run["steps"] == 300 and run["hidden_size"] == 32 and run["recipe"] == "authors"
    assert run["task_overrides"] == {"seq_len": 5, "num_train": 2000, "num_test": 128}
    with pytest.raises(ValueError, match="recipe must be one of"):
        synthetic_run.default_run(recipe="mad")


def test_authors_schedule_is_torchs_cosine_annealing_per_epoch():
    """The authors' recipe: CosineAnnealingLR(T_max=epochs, eta_min=1e-6) stepped once per epoch, no warm-up;
    here 10 steps per epoch, 45 steps = 5 epochs (the last one partial)."""
    run = synthetic_run.default_run(lr=1e-3)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5, eta_min=1e-6)
    for epoch in range(5):
        for step in range(10 * epoch, min(10 * epoch + 10, 45)):
            assert synthetic_run.learning_rate(run, step, 45, 10.0) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()


def test_project_schedule_warms_up_then_anneals_per_step():
    run = synthetic_run.default_run(lr=1e-3, min_lr=1e-6, recipe="project")
    assert synthetic_run.learning_rate(run, 0, 100, 10.0) == 0.0
    assert synthetic_run.learning_rate(run, 5, 100, 10.0) == pytest.approx(1e-3)
    assert synthetic_run.learning_rate(run, 6, 100, 10.0) < synthetic_run.learning_rate(run, 5, 100, 10.0)
    assert synthetic_run.learning_rate(run, 100, 100, 10.0) == pytest.approx(1e-6)
    assert synthetic_run.planned_steps(dict(run, epochs=200), 100_000) == 156_250
    sampler = synthetic_run.EpochSampler(10, 4, seed=0, device=torch.device("cpu"))
    seen = torch.cat([sampler.next() for _ in range(5)])  # 20 indices = two epochs, batches across the boundary
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))


@pytest.mark.parametrize("recipe", ["authors", "project"])
def test_training_step_matches_a_plain_loop(recipe):
    """The step the CUDA graph captures (static batch buffer, learning rate in a tensor, fused AdamW), stepped
    eagerly on the CPU, gives the loss trajectory of a textbook loop over the same batches (clipping only in the
    project's recipe)."""
    run = synthetic_run.default_run(task="s3", model="bdlru_k2", hidden_size=16, steps=7, batch_size=8, lr=1e-2,
                                    recipe=recipe, device="cpu", task_overrides={"seq_len": 6, "num_train": 20, "num_test": 16})
    job = synthetic_run.SyntheticRun(run, log=lambda *a: None)
    losses = []
    for _ in range(run["steps"]):
        job.advance()
        losses.append(float(job.loss))

    torch.manual_seed(run["seed"])
    data = make_task("s3", seed=run["seed"], **run["task_overrides"])
    model, _ = build_model("bdlru_k2", data.spec.vocab_size, 16, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=run["lr"], weight_decay=0.0, foreach=False)
    gen = torch.Generator().manual_seed(run["seed"] + 12345)
    order = torch.cat([torch.randperm(20, generator=gen) for _ in range(3)])
    reference = []
    for step in range(run["steps"]):
        idx = order[8 * step: 8 * step + 8]
        for group in opt.param_groups:
            group["lr"] = synthetic_run.learning_rate(run, step, run["steps"], 20 / 8)
        loss = masked_cross_entropy(model(input_ids=data.train_inputs[idx]).logits, data.train_targets[idx])
        opt.zero_grad()
        loss.backward()
        if recipe == "project":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        reference.append(loss.item())
    assert losses == pytest.approx(reference, rel=1e-5)
    assert losses[-1] < losses[0]


def test_best_epoch_weights_are_the_lowest_test_loss():
    """The device-side checkpoint keeps the weights of the epoch of lowest test loss: evaluating the kept copy
    gives that loss again, the final and best blocks hold every length, the step check's two losses agree (eager
    CPU step, fp32), and the run learns S3 (chance 1/6)."""
    run = synthetic_run.default_run(task="s3", model="bdlru_k4", smoke=True, lengths=[8, 16],
                                    task_overrides={"seq_len": 8})
    run["steps"], run["lr"] = 240, 1e-2  # 62.5 steps per epoch: epoch ends at 62, 125, 187 and the last step
    _, data, record = synthetic_run.fit(run, log=lambda *a: None)
    best = record["best_epoch"]
    assert best["step"] in (62, 125, 187, 240) and best["epoch"] == pytest.approx(best["step"] / 62.5, abs=0.01)
    assert best["lengths"]["8"]["loss"] == pytest.approx(best["test_loss"], rel=1e-4)
    assert record["final"]["8"]["loss"] >= best["test_loss"] - 1e-6
    assert set(record["final"]) == set(best["lengths"]) == {"8", "16"}
    assert len(record["final"]["16"]["per_position"]) == 16 and record["final"]["16"]["per_position"][0] == 1.0
    assert record["final"]["8"]["accuracy"] > 0.5 and record["train_eval"]["num_sequences"] == 128
    check = record["step_check"]
    assert check["train_step_loss"] == pytest.approx(check["eval_loss"], rel=1e-4) and not check["cuda_graph"]
    assert record["steps"] == record["planned_steps"] == 240 and record["recipe"] == "authors"


def test_bad_settings_are_refused_before_training():
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device"):
        synthetic_run.SyntheticRun(synthetic_run.default_run(task="s3", smoke=True, device="cpu", cuda_graph=True))
    with pytest.raises(ValueError, match="compression decodes a fixed number of tokens"):
        synthetic_run.SyntheticRun(synthetic_run.default_run(task="compression", smoke=True, lengths=[32, 64]))
    with pytest.raises(ValueError, match="min_lr=0.1 is above lr"):
        synthetic_run.SyntheticRun(synthetic_run.default_run(task="s3", smoke=True, min_lr=0.1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_step_matches_eager_on_gpu():
    """On a GPU: the captured step replays the eager step's loss trajectory (same compile steps, then graph vs
    eager), and the end-of-run step check agrees with the evaluation forward."""
    def losses(cuda_graph):
        run = synthetic_run.default_run(task="s3", model="bdlru_k4", hidden_size=32, steps=40, batch_size=16,
                                        cuda_graph=cuda_graph, task_overrides={"seq_len": 8, "num_train": 200, "num_test": 64})
        job = synthetic_run.SyntheticRun(run, log=lambda *a: None)
        job.prepare()
        out = []
        while job.stop_reason() is None:
            job.advance()
            job.sync()  # the step ran on the run's own stream; read its loss after it
            out.append(float(job.loss))
        check = job.finish("steps")["step_check"]
        assert check["train_step_loss"] == pytest.approx(check["eval_loss"], rel=2e-2)
        return out, job.graph is not None

    graphed, captured = losses(True)
    eager, _ = losses(False)
    assert captured and graphed == pytest.approx(eager, rel=5e-3)


def test_run_cli_prints_or_appends_records(tmp_path, capsys):
    out = tmp_path / "runs.jsonl"
    assert synthetic_run.main(["--task", "s3", "--model", "diag", "--smoke", "--steps", "3", "--seeds", "0", "1",
                               "--lengths", "16", "32", "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["seed"] for r in records) == [0, 1] and all(r["steps"] == 3 for r in records)
    assert set(records[0]["final"]) == {"16", "32"} and records[0]["env"]["torch"] == torch.__version__
    assert synthetic_run.main(["--task", "s3", "--model", "diag", "--smoke", "--steps", "2"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2


def test_environment_commit_from_bench_commit_wins_over_git(monkeypatch):
    """A tree copied with a stale .git: BENCH_COMMIT / BENCH_DIRTY name the commit, not git."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    monkeypatch.delenv("BENCH_COMMIT", raising=False)
    assert synthetic_run.environment()["commit"] == head
    monkeypatch.setenv("BENCH_COMMIT", "7c74cc5")
    monkeypatch.setenv("BENCH_DIRTY", "no")
    env = synthetic_run.environment()
    assert env["commit"] == "7c74cc5" != head and env["dirty"] is False
    monkeypatch.setenv("BENCH_DIRTY", "yes")
    assert synthetic_run.environment()["dirty"] is True
    monkeypatch.delenv("BENCH_DIRTY")
    assert synthetic_run.environment()["dirty"] is None


def test_presets():
    runs = study.preset_runs("s5_blocks")
    assert len(runs) == 9 and {r["steps"] for r in runs} == {100_000} and {r["task"] for r in runs} == {"s5"}
    assert {r["model"] for r in runs} == {"bdlru_k4", "bdlru_k5", "bdlru_k8"} and runs[0]["lengths"] == list(study.LENGTHS)
    assert {r["recipe"] for r in runs} == {"authors"} and runs[0]["lr"] == 5e-4 and runs[0]["batch_size"] == 128
    common = study.preset_runs("perm_common", steps=30_000, recipe="project")
    assert len(common) == 3 * 8 * 3 and {r["steps"] for r in common} == {30_000} and common[0]["recipe"] == "project"
    with pytest.raises(ValueError, match="one common budget: give it with --steps"):
        study.preset_runs("perm_common")
    s5_common = study.preset_runs("s5_common", steps=40_000)
    assert len(s5_common) == 9 * 3 and {r["task"] for r in s5_common} == {"s5"} and {r["steps"] for r in s5_common} == {40_000}
    assert [r["model"] for r in s5_common[:9]] == list(study.PERM_MODELS) + ["bdlru_k8"]
    with pytest.raises(ValueError, match="unknown preset"):
        study.preset_runs("s6_blocks")


def test_study_smoke_resume_and_table(tmp_path, capsys):
    """A preset tiny on the CPU: one record per run with its job and environment; a second call trains nothing;
    the table separates final and best-epoch columns and marks a model run at another budget."""
    out = tmp_path / "study.jsonl"
    args = ["--preset", "s5_blocks", "--smoke", "--models", "bdlru_k4", "bdlru_k5", "--out", str(out)]
    assert study.main(args) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["model"] for r in records) == ["bdlru_k4", "bdlru_k5"]
    assert all(r["status"] == "ok" and r["job"]["steps"] == study.SMOKE_STEPS and "commit" in r["env"] for r in records)
    for r in records:  # the epoch log: test loss and accuracy at each epoch's end, the last one at the final weights
        log, length = r["epoch_log"], str(r["task_config"]["seq_len"])
        assert log and log[-1]["step"] == r["steps"] and [e["step"] for e in log] == sorted({e["step"] for e in log})
        assert log[-1]["accuracy"] == pytest.approx(r["final"][length]["accuracy"], abs=1e-4)
        assert log[-1]["test_loss"] == pytest.approx(r["final"][length]["loss"], abs=1e-4)
        assert min(e["test_loss"] for e in log) == pytest.approx(r["best_epoch"]["test_loss"], abs=1e-5)
    assert study.main(args) == 0
    assert len(out.read_text().splitlines()) == 2
    assert "0 runs to train (2 already in" in capsys.readouterr().err

    other = dict(records[0], job=dict(records[0]["job"], steps=99), steps=99)
    (tmp_path / "other.jsonl").write_text(json.dumps(other) + "\n")
    text = table.table(*table.load([str(out), str(tmp_path / "other.jsonl")]))
    assert "| model | seeds | final 16 | final 32 | best epoch 16 | best epoch 32 | solved" in text
    assert "20 steps, the authors' recipe" in text and "99 steps" in text
    assert "| BD-LRU k=5 (N=30) | not run at this budget |" in text  # the 99-step block has only k = 4
    assert "without naming a block size" in text
    with pytest.raises(ValueError, match="repeats the run"):
        table.load([str(out), str(out)])


def test_study_runs_a_failed_capture_again_eagerly(tmp_path, monkeypatch):
    """A run whose CUDA graph capture fails is queued again with cuda_graph=False, and its record comes from that."""
    prepare = synthetic_run.SyntheticRun.prepare

    def failing_capture(self):
        if self.run["cuda_graph"] == "auto":
            raise synthetic_run.GraphCaptureError("capture refused (test)")
        prepare(self)

    monkeypatch.setattr(synthetic_run.SyntheticRun, "prepare", failing_capture)
    runs = study.preset_runs("s5_blocks", seeds=(0,), smoke=True)[:1]
    counts = study.run_study(runs, str(tmp_path / "r.jsonl"), slots=1, log=lambda line: None)
    assert counts == {"skipped": 0, "ok": 1, "not_run": 0, "failed": 0}
    record = json.loads((tmp_path / "r.jsonl").read_text())
    assert record["status"] == "ok" and record["job"]["model"] == "bdlru_k4" and not record["cuda_graph"]
