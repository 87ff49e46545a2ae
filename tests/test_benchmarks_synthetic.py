"""benchmarks/synthetic: generator invariants, metrics, baselines, the results table, and a CPU smoke run
that must learn."""
import json
import time
import types

import numpy as np
import pytest
import torch

from benchmarks.synthetic import check_baselines, paper_table, plot, suite
from benchmarks.synthetic import run as synthetic_run
from benchmarks.synthetic.baselines import (
    BaselineUnavailable,
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


@pytest.mark.parametrize("name,overrides", suite.RECALL_LADDER)
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


def test_baselines_build_and_run_on_cpu():
    x = torch.randint(0, 10, (2, 12))
    for kind, kw in [("diag", {}), ("hlru", {"order": 3}), ("bdlru", {"block_size": 2}), ("lstm", {}), ("llama", {}),
                     ("mamba2", {})]:
        model, desc = build_model(kind, 10, 32, 2, **kw)
        assert desc["kind"] == kind
        if kind == "mamba2":  # on the CPU transformers' PyTorch path, and the description says so
            assert desc["kernel_path"] == "torch" and desc["training_path"] == "unfused"
        out = model(input_ids=x, labels=x)
        assert out.logits.shape == (2, 12, 10) and torch.isfinite(out.loss)
        h = last_hidden_state(model, x)
        assert h.shape == (2, 12, 32)
        assert ProbeHead(32, 7, 10)(h[:, -1]).shape == (2, 7, 10)
    with pytest.raises(BaselineUnavailable):
        build_model("deltanet", 10, 32, 2, device=torch.device("cpu"))


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
    """The GPU self-check's CPU smoke mode: Mamba-2 trains on the PyTorch path, the fla kinds say they need CUDA."""
    out = tmp_path / "check.json"
    assert check_baselines.main(["--smoke", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    kinds = {r["kind"]: r for r in report["kinds"]}
    assert list(kinds) == ["mamba2", "deltanet", "gated_deltanet"]
    mamba2 = kinds["mamba2"]
    assert mamba2["status"] == "ok" and mamba2["desc"]["kernel_path"] == "torch"
    assert [r["length"] for r in mamba2["runs"]] == [8, 16]
    for run in mamba2["runs"]:
        assert len(run["train"]["step_s"]) == 3 and run["train"]["finite"] and run["eval"]["finite"]
    for kind in ("deltanet", "gated_deltanet"):
        assert kinds[kind]["status"] == "unavailable" and "CUDA" in kinds[kind]["reason"]


def test_lstm_baseline_matches_the_lrnn_widths():
    """The LSTM baseline's SwiGLU has the LRNN model's width, and the blocks hold what the docstring says."""
    lstm, _ = build_model("lstm", 10, 96, 2)
    lrnn, _ = build_model("hlru", 10, 96, 2)
    assert lstm.config.intermediate_size == lrnn.config.intermediate_size == 256
    block = lstm.model.layers[0]
    assert block.mlp.gate_proj.weight.shape == (256, 96) and block.mixer_norm.weight.shape == (96,)
    bias = block.lstm.bias_ih_l0 + block.lstm.bias_hh_l0
    assert torch.equal(bias[96:192], torch.ones(96)) and not bias[:96].any() and not bias[192:].any()


def test_smoke_settings():
    run = synthetic_run.default_run(smoke=True, steps=7, task_overrides={"seq_len": 5})
    assert run["steps"] == 600 and run["hidden_size"] == 32
    assert run["task_overrides"] == {"seq_len": 5, "num_train": 4000, "num_test": 256}


def test_suite_grid_and_results_table():
    paper = suite.grid("paper")
    per_seed = len(suite.HEADLINE_TASKS) * len(suite.MAIN_MODELS)  # headline cells first, seed 0 then seed 1
    assert [j["tier"] for j in paper[:2 * per_seed]] == ["headline_seed0"] * per_seed + ["headline_seed1"] * per_seed
    assert {j["seed"] for j in paper[per_seed:2 * per_seed]} == {1}
    assert {j["task"] for j in paper} == set(TASKS)
    assert len(suite.grid("dry")) == len(suite.MAIN_MODELS)
    ok = [{"status": "ok", "model": "bdlru_k4", "task": "s3", "config": {"hidden_size": 128}, "steps": 500,
           "accuracy": a, "parameters": 1000} for a in (1.0, 0.5)]
    ok.append({"status": "ok", "model": "llama", "task": "s3", "config": {"hidden_size": 128}, "steps": 1,
               "accuracy": 0.9, "parameters": 1000})
    other = [{"status": "not_run", "task": "s5", "reason": "suite deadline (time budget) reached",
              "spec": {"model": "hlru", "order": 2, "hidden_size": 128}}]
    text, cells = plot.table(ok, other)
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines()}
    s3, s5 = 1 + plot.TASK_ORDER.index("s3"), 1 + plot.TASK_ORDER.index("s5")
    assert rows["bdlru_k4"][s3] == "0.750 (1.00/0.50) [paper 1.00*]"
    assert rows["llama"][s3] == "n/t×1" and rows["hlru_m2"][s5] == "budget"
    assert cells[("bdlru_k4", "s3")] == [1.0, 0.5]


def test_run_cli_appends_a_record(tmp_path, capsys):
    """One tiny run through the command line: the JSON line it prints is the one it appends."""
    out = tmp_path / "runs.jsonl"
    code = synthetic_run.main(["--task", "s3", "--model", "diag", "--smoke", "--steps", "3", "--seq-len", "6",
                               "--num-train", "64", "--out", str(out)])
    assert code == 0
    record = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == record
    assert record["task"] == "s3" and record["model"] == "diag" and record["steps"] == 3 and record["smoke"]
    assert record["task_config"]["seq_len"] == 6 and record["task_config"]["num_train"] == 64
    # the readers of results take run.py's records as they take the suite's
    _, ok, _ = paper_table.load([str(out)])
    assert ok == [record] and record["status"] == "ok"
    out.write_text(json.dumps({**record, "smoke": False, "graph_steps_per_s": 900.0, "cuda_graph": True}) + "\n")
    assert suite.measured_rates(str(out)) == {("s3", "diag", 6, True): 900.0}


def test_smoke_run_learns_s3():
    """The CLI's --smoke size (CPU, about a minute): a BD-LRU (k = 4) learns S3 word problems of length 8."""
    result = synthetic_run.train(
        synthetic_run.default_run(task="s3", model="bdlru", block_size=4, smoke=True, max_time=150),
        log=lambda *a: None)
    assert result["accuracy"] >= 0.9, result
    assert result["task"] == "s3" and result["model"] == "bdlru_k4" and result["parameters"] > 0


# ------------------------------------------------------------------------- issue 12: metrics, training step, suite
def test_macro_accuracy_by_hand():
    """torchmetrics' macro average: per-class recall over the target positions; a class only predicted counts 0,
    a class neither predicted nor a target is left out; ignored positions count for nothing."""
    targets = torch.tensor([[0, 0, 1, 2, IGNORE]])
    preds = torch.tensor([[0, 1, 1, 3, 2]])  # class 3 predicted, never a target; class 4 absent; 2 predicted at IGNORE
    logits = torch.nn.functional.one_hot(preds, 5).float()
    counts = class_counts(logits, targets, 5)
    assert counts.tolist() == [[1, 1, 0, 0, 0], [2, 1, 1, 0, 0], [1, 2, 0, 1, 0]]
    assert macro_accuracy(counts) == pytest.approx((0.5 + 1.0 + 0.0 + 0.0) / 4)
    assert (int(counts[0].sum()), int(counts[1].sum())) == (2, 4)  # per-token accuracy 2 / 4
    halves = class_counts(logits[:, :2], targets[:, :2], 5) + class_counts(logits[:, 2:], targets[:, 2:], 5)
    assert torch.equal(halves, counts)  # counts add up over test batches


def test_learning_rate_schedule_and_epoch_sampler():
    run = synthetic_run.default_run(lr=1e-3, min_lr=1e-6, warmup=0.1)
    assert synthetic_run.learning_rate(run, 0.0) == 0.0
    assert synthetic_run.learning_rate(run, 0.1) == pytest.approx(1e-3)
    assert synthetic_run.learning_rate(run, 1.0) == pytest.approx(1e-6)
    assert synthetic_run.planned_steps(dict(run, epochs=200), 100_000) == 156_250
    sampler = synthetic_run.EpochSampler(10, 4, seed=0, device=torch.device("cpu"))
    seen = torch.cat([sampler.next() for _ in range(5)])  # 20 indices = two epochs, batches across the boundary
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))


def test_training_step_matches_a_plain_loop():
    """The step the CUDA graph captures (static batch buffer, learning rate in a tensor, fused AdamW, stats on the
    device), stepped eagerly on the CPU, gives the loss trajectory of a textbook loop over the same batches."""
    run = synthetic_run.default_run(task="s3", model="bdlru", block_size=2, hidden_size=16, steps=7, batch_size=8,
                                    lr=1e-2, warmup=0.3, device="cpu", check_every=1,
                                    task_overrides={"seq_len": 6, "num_train": 20, "num_test": 16})
    trainer = synthetic_run.Trainer(run, log=lambda *a: None)
    losses = []
    for _ in range(run["steps"]):
        trainer.advance()
        losses.append(float(trainer.loss))
    assert trainer.loss_value == pytest.approx(losses[-1])  # the host's (asynchronous) read of the device stats

    torch.manual_seed(run["seed"])
    data = make_task("s3", seed=run["seed"], **run["task_overrides"])
    model, _ = build_model("bdlru", data.spec.vocab_size, 16, 2, block_size=2)
    opt = torch.optim.AdamW(model.parameters(), lr=run["lr"], weight_decay=0.0, foreach=False)
    gen = torch.Generator().manual_seed(run["seed"] + 12345)
    order = torch.cat([torch.randperm(20, generator=gen) for _ in range(3)])
    reference = []
    for step in range(run["steps"]):
        idx = order[8 * step: 8 * step + 8]
        for group in opt.param_groups:
            group["lr"] = synthetic_run.learning_rate(run, step / run["steps"])
        loss = masked_cross_entropy(model(input_ids=data.train_inputs[idx]).logits, data.train_targets[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        reference.append(loss.item())
    assert losses == pytest.approx(reference, rel=1e-5)
    assert losses[-1] < losses[0]


def test_cuda_graph_is_refused_on_the_cpu():
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device"):
        synthetic_run.Trainer(synthetic_run.default_run(task="s3", smoke=True, device="cpu", cuda_graph=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_step_matches_eager_on_gpu():
    """On a GPU: the captured step replays the eager step's loss trajectory (same warm-up, then graph vs eager)."""
    def losses(cuda_graph):
        run = synthetic_run.default_run(task="s3", model="bdlru", block_size=4, hidden_size=32, steps=40,
                                        batch_size=16, cuda_graph=cuda_graph, eager_probe_steps=3, graph_probe_steps=0,
                                        task_overrides={"seq_len": 8, "num_train": 200, "num_test": 64})
        trainer = synthetic_run.Trainer(run, log=lambda *a: None)
        trainer.prepare()
        out = []
        while trainer.stop_reason() is None:
            trainer.advance()
            trainer.sync()  # the step ran on the run's own stream; read its loss after it
            out.append(float(trainer.loss))
        return out, trainer.graph is not None

    graphed, captured = losses(True)
    eager, _ = losses(False)
    assert captured and graphed == pytest.approx(eager, rel=5e-3)


def test_paper_table_grid_and_plan():
    jobs = suite.grid("paper_table")
    assert [j["tier"] for j in jobs[:6]] == ["s5_paper"] * 6  # S5 at the paper's budget first
    assert {(j["label"], j["seed"]) for j in jobs[:6]} == {(l, s) for l in ("bdlru_k4", "bdlru_k5") for s in (0, 1, 2)}
    assert all(suite.steps_of(j) == 156_250 for j in jobs[:6])
    keys = [suite.job_key(j) for j in jobs]
    assert len(keys) == len(set(keys))  # every job is one cell and seed
    ladder = {suite.job_key(j) for j in jobs if j["task"] == "recall" and j["label"] == "diag" and j["seed"] == 0}
    assert len(ladder) == len(suite.RECALL_LADDER)
    small = [suite.smoke_job(j) for j in jobs]
    assert len({suite.job_key(j) for j in small}) == len(jobs)  # --smoke keeps the jobs apart
    rows = suite.plan(jobs, calls=2, call_seconds=540, gpus=1)
    assert rows[0]["call"] == 1 and 0 < rows[0]["steps"] <= 156_250
    assert all(r["call"] in (None, 1, 2) for r in rows)
    assert all(r["seconds"] <= 540 - 70 for r in rows if r["call"] is not None)
    assert suite.plan(jobs, calls=1, call_seconds=200, gpus=1)[0]["steps"] < rows[0]["steps"]  # a shorter call


def test_plan_uses_measured_rates(tmp_path):
    record = _record("s5", "bdlru_k4", 0, 0.9, 0.9, steps=1000)
    record.update(graph_steps_per_s=2000.0, eager_steps_per_s=200.0, steps_per_s=1000.0, concurrent_runs=6)
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record) + "\n")
    rates = suite.measured_rates(str(path))
    assert rates[("s5", "bdlru_k4", 16, True)] == 2000.0 and rates["gain"] == pytest.approx(3.0)
    spec = suite.job("s5", "bdlru_k4", 1, epochs=200, max_time=450.0, tier="t")
    assert suite.expected_rate(spec, True, rates) == 2000.0
    assert suite.expected_rate(spec, False, rates) == pytest.approx(1 / (suite.EAGER_STEP_S["default"]
                                                                         + suite.TOKEN_S * 128 * 16))


def test_suite_admission_and_resume(tmp_path):
    spec = suite.job("s3", "bdlru_k4", 0, epochs=200, max_time=100.0, tier="t")
    deadline = time.time() + 1000
    run, reason = suite.admit(spec, deadline, on_gpu=True)
    assert reason is None and run["max_time"] == 100.0 and run["end_by"] == deadline - suite.EVAL_S
    assert "tier" not in run and "label" not in run
    run, reason = suite.admit(spec, time.time() + 10, on_gpu=True)
    assert run is None and "deadline" in reason
    # a run that must end before its max_time: the budget shrinks, the schedule still anneals, it stops on time
    trainer = synthetic_run.Trainer(synthetic_run.default_run(task="s5", smoke=True, max_time=100.0,
                                                              end_by=time.time() + 1.0, eager_probe_steps=0))
    trainer.prepare()
    assert trainer.time_budget <= 1.0
    while trainer.stop_reason() is None:
        trainer.advance()
    assert trainer.stop_reason() == "time" and trainer.progress() >= 1.0 and trainer.step < trainer.steps
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps({"status": "ok", "job_key": suite.job_key(spec)}) + "\n"
                       + json.dumps({"status": "not_run", "job_key": "other"}) + "\n")
    assert suite.finished_keys(str(results)) == {suite.job_key(spec)}


def _record(task, model, seed, acc, macro, steps=156_250, paper_steps=156_250, hidden=128, params=1000, **task_config):
    spec = default_spec(task, **task_config)
    return {"status": "ok", "task": task, "model": model, "seed": seed, "accuracy": acc, "macro_accuracy": macro,
            "steps": steps, "paper_steps": paper_steps, "epochs": 200 * steps / paper_steps, "stopped": "steps",
            "steps_per_s": 1000.0, "cuda_graph": True, "parameters": params, "config": {"hidden_size": hidden},
            "task_config": {"vocab_size": spec.vocab_size, "seq_len": spec.seq_len, "num_train": spec.num_train}}


def test_paper_table_from_records():
    ok = [_record("s5", "bdlru_k4", s, a, m) for s, a, m in ((0, 0.95, 0.94), (1, 0.93, 0.92), (2, 0.91, 0.90))]
    ok += [_record("s3", "bdlru_k4", s, 1.0, 1.0) for s in (0, 1)]
    ok += [_record(t, "bdlru_k4", 0, 1.0, 1.0) for t in ("s4",)]
    ok += [_record(t, "lstm", 0, 0.7, 0.6, steps=15_625) for t in ("s3", "s4", "s5")]
    ok += [_record("recall", "diag", 0, 0.80, 0.78), _record("recall", "bdlru_k4", 0, 1.0, 1.0),
           _record("recall", "diag", 0, 0.99, 0.99, vocab_size=32), _record("recall", "bdlru_k4", 0, 1.0, 1.0, vocab_size=32)]
    ok += [_record("compression", m, 0, a, a, hidden=d, params=p)
           for m, d, a, p in (("hlru_m2", 64, 0.6, 100), ("diag", 64, 0.4, 90), ("hlru_m2", 128, 0.8, 300),
                              ("diag", 128, 0.7, 280), ("lstm", 128, 0.9, 250))]
    other = [{"status": "not_run", "task": "s5", "model": "mamba2", "reason": "suite deadline (time budget) reached",
              "spec": {"model": "mamba2", "hidden_size": 128, "task_overrides": {}}}]
    text = paper_table.table(ok, other)
    rows = {line.split(" | ")[0].strip("| "): [c.strip() for c in line.strip("|").split(" | ")]
            for line in text.splitlines()[2:]}
    head = [c.strip() for c in text.splitlines()[0].strip("|").split(" | ")]
    col = {name: i for i, name in enumerate(head)}
    s5 = next(v for k, v in rows.items() if k.startswith("S5: BD-LRU 0.930"))
    assert s5[col["ours"]] == "0.930±0.020 / 0.920±0.020 (3)"
    assert s5[col["verdict"]] == "reproduced"
    assert s5[col["mamba2"]].startswith("not run: suite deadline")
    assert s5[col["lstm"]] == "0.700±0.000 / 0.600±0.000 (1) @0.10x"
    assert s5[col["deltanet"]] == "not run: no record"
    assert s5[col["budget (ours)"]].startswith("156,250 steps = 200 ep, 1.00x paper")
    perm = next(v for k, v in rows.items() if k.startswith("Permutations"))
    assert perm[col["ours"]] == "0.983±0.000 / 0.980±0.000 (1)"  # seed 0 is the one with S3, S4 and S5
    assert perm[col["lstm"]] == "0.700±0.000 / 0.600±0.000 (1) @0.10x [paper 0.738]"
    assert perm[col["verdict"]] == "supported: BD-LRU above every baseline run (lstm)"
    k5 = next(v for k, v in rows.items() if k.startswith("S5 at k = 5"))
    assert k5[col["ours"]] == "not run: no record" and k5[col["verdict"]] == "not run"
    base = next(v for k, v in rows.items() if k.startswith("Recall, base"))
    assert base[col["verdict"]] == "separates: k = 4 − diag = +0.220"
    vocab32 = next(v for k, v in rows.items() if k.startswith("Recall, vocab 32"))
    assert vocab32[col["verdict"]].startswith("no separation")
    score = next(v for k, v in rows.items() if k.startswith("Recall, MAD task score"))
    assert score[col["diag"]].startswith("0.895±0.000 / 0.885±0.000 (1) (2 of 11 points)")
    comp = next(v for k, v in rows.items() if k.startswith("Compression"))
    assert comp[col["verdict"]].startswith("not supported: lstm d128")  # LSTM: fewer parameters, more accurate
    assert comp[col["verdict"]].endswith("m = 2 above m = 1 (same seeds) at d = 64, 128")
    # a seed that only the diagonal model ran (say, cut short by a deadline) does not count against it
    ok += [_record("compression", "diag", 1, 0.1, 0.1, hidden=128, params=280),
           _record("compression", "hlru_m2", 0, 0.7, 0.7, hidden=128, params=300)]
    text = paper_table.table([r for r in ok if not (r["model"] == "hlru_m2" and r["config"]["hidden_size"] == 128
                                                     and r["accuracy"] == 0.8)], other)
    comp = next(line for line in text.splitlines() if line.startswith("| Compression"))
    assert comp.rstrip(" |").endswith("m = 2 above m = 1 (same seeds) at d = 64")


def test_paper_table_verdicts():
    """'reproduced' needs the mean within 0.02 of the paper; a wide seed spread around a lower mean is
    'inconclusive', not reproduced."""
    def verdict(macros):
        return paper_table.verdict_accuracy(paper_table.stat([(m, m, 1.0) for m in macros]), 0.93)

    assert verdict([0.94, 0.92, 0.93]) == "reproduced"
    assert verdict([1.0, 0.938, 0.607]).startswith("inconclusive: mean 0.848")
    assert verdict([0.49, 0.51, 0.53]) == "below the paper (-0.420)"
    assert verdict([1.0, 1.0, 0.99]).startswith("above the paper")
    # seeds cut to different budgets show the least and most of the paper's steps, not only their mean
    uneven = paper_table.stat([(0.5, 0.5, 0.01), (0.9, 0.9, 0.12), (0.9, 0.9, 0.12)])
    assert uneven.text().endswith("(3) @0.01-0.12x")
    assert paper_table.stat([(0.5, 0.5, 0.1)] * 2).text().endswith("(2) @0.10x")


def dry_plan_rows(capsys):
    """The job rows (split into fields) of what suite --dry-plan printed."""
    return [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] and line.split()[0].isdigit()]


def test_suite_dry_plan_selects_tiers_and_skips_finished_jobs(tmp_path, capsys):
    """--only-tier takes comma-separated prefixes; --resume skips the finished jobs of every file given."""
    jobs = suite.paper_table_jobs()
    s3, s4 = (next(j for j in jobs if j["tier"] == "perm_k4" and j["task"] == t and j["seed"] == 0) for t in ("s3", "s4"))
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text(json.dumps({"status": "ok", "job_key": suite.job_key(s3)}) + "\n")
    second.write_text(json.dumps({"status": "ok", "job_key": suite.job_key(s4)}) + "\n")
    suite.main(["--preset", "paper_table", "--only-tier", "perm_k4,compression", "--dry-plan",
                "--resume", str(first), str(second)])
    rows = dry_plan_rows(capsys)
    keys = {r[3] for r in rows}
    assert {r[2] for r in rows} == {"perm_k4", "compression"}
    assert suite.job_key(s3) not in keys and suite.job_key(s4) not in keys
    assert len(rows) == sum(j["tier"] in ("perm_k4", "compression") for j in jobs) - 2


def test_recall_seed12_runs_the_separating_points_first():
    tiers = [j["tier"] for j in suite.paper_table_jobs() if j["tier"].startswith("recall_seed12")]
    assert tiers[:8] == ["recall_seed12_vocab64"] * 4 + ["recall_seed12_len256"] * 4
    assert len(set(tiers)) == 9


def test_concurrent_runs_do_not_pay_for_each_others_setup(monkeypatch):
    """train_concurrently: the time one run spends in another run's setup is its paused_s, outside its budget."""
    prepare = synthetic_run.Trainer.prepare

    def slow_prepare(self):
        if self.run["seed"] == 1:
            time.sleep(1.0)  # a long compile/autotune of the second run
        prepare(self)

    monkeypatch.setattr(synthetic_run.Trainer, "prepare", slow_prepare)
    runs = iter([synthetic_run.default_run(task="s3", smoke=True, seed=s, eager_probe_steps=0)
                 for s in (0, 1)])
    records = {}
    synthetic_run.train_concurrently(lambda: next(runs, None), 2,
                                     lambda run, rec, err: records.update({run["seed"]: rec or err}), log=lambda *a: None)
    first, second = records[0], records[1]
    # seed 1 waits at most for seed 0's evaluation (if seed 0 finishes first), well under the 1 s setup
    assert first["paused_s"] >= 1.0 and second["paused_s"] < 1.0
    assert first["wall_time_s"] - first["train_time_s"] > 0.9  # the pause is outside its training time (0.1 s rounding)
    assert first["stopped"] in ("steps", "solved") and second["stopped"] in ("steps", "solved")


def test_suite_only_model_and_baseline_order(capsys):
    """--only-model keeps one model's jobs (an unknown label is an error); baselines run task by task, seeds together."""
    suite.main(["--preset", "paper_table", "--only-tier", "baselines", "--only-model", "deltanet", "--dry-plan"])
    rows = dry_plan_rows(capsys)
    assert [r[3].split("|")[:3] for r in rows[:3]] == [["s5", "deltanet", f"s{s}"] for s in (0, 1, 2)]
    assert len(rows) == 15 and all(r[3].split("|")[1] == "deltanet" for r in rows)
    with pytest.raises(SystemExit):
        suite.main(["--preset", "paper_table", "--only-model", "mamba3", "--dry-plan"])
    assert "unknown model label" in capsys.readouterr().err


@pytest.mark.parametrize("hopper,above_3_4,above_3_7_1,refused", [(True, True, False, True), (True, True, True, False),
                                                                 (False, True, False, False)])
def test_gated_deltanet_is_refused_where_fla_640_applies(monkeypatch, hopper, above_3_4, above_3_7_1, refused):
    """Hopper with Triton in [3.4, 3.7.1): BaselineUnavailable naming fla #640 and the remedy, before any training."""
    import sys
    import types

    from benchmarks.synthetic import baselines

    chunk_o = types.SimpleNamespace(IS_NVIDIA_HOPPER=hopper, TRITON_ABOVE_3_4_0=above_3_4,
                                    TRITON_ABOVE_3_7_1=above_3_7_1)
    fla = types.ModuleType("fla")
    fla.__version__ = "0.6.0"
    common = types.ModuleType("fla.ops.common")
    common.chunk_o = chunk_o
    for name, module in (("fla", fla), ("fla.ops", types.ModuleType("fla.ops")), ("fla.ops.common", common)):
        monkeypatch.setitem(sys.modules, name, module)
    if refused:
        with pytest.raises(BaselineUnavailable, match=r"fla #640; needs Triton >= 3.7.1 or tilelang"):
            baselines._refuse_fla_640(32)
    else:
        assert baselines._refuse_fla_640(32) is None


def test_suite_runs_end_to_end_on_the_cpu(tmp_path, capsys):
    """The whole suite in worker processes (preset dry, two models): the environment record, then one finished
    record per job, which paper_table reads."""
    out = tmp_path / "suite.jsonl"
    assert suite.main(["--preset", "dry", "--only-model", "diag,lstm", "--cpu-workers", "1", "--out", str(out)]) == 0
    envs, ok, other = paper_table.load([str(out)])
    assert len(envs) == 1 and envs[0]["torch"] == torch.__version__ and envs[0]["gpus"] == []
    assert sorted(r["model"] for r in ok) == ["diag", "lstm"] and other == []


def test_gpu_names_come_from_nvidia_smi(monkeypatch):
    listing = "0, NVIDIA H200\n1, NVIDIA H100 80GB HBM3\n"
    monkeypatch.setattr(suite.subprocess, "run", lambda *a, **k: types.SimpleNamespace(stdout=listing))
    assert suite.gpu_names(["1", "0", "7"]) == ["NVIDIA H100 80GB HBM3", "NVIDIA H200", "GPU 7"]
