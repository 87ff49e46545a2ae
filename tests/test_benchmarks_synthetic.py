"""benchmarks/synthetic: generator invariants, metrics, baselines, the results table, and a CPU smoke run
that must learn."""
import json

import numpy as np
import pytest
import torch

from benchmarks.synthetic import check_baselines, plot, suite
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
    accuracy,
    default_spec,
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
    for x, y in ((a.train_inputs, a.train_targets), (a.test_inputs, a.test_targets)):
        assert x.dtype == torch.long and x.shape[1] == a.spec.seq_len
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


def test_recall_answers_are_the_values():
    d = make_task("recall", seed=2, num_train=200, num_test=10)
    nk = d.spec.params["num_keys"]
    for x, y in zip(d.train_inputs.numpy(), d.train_targets.numpy()):
        keys, values = x[0::2], x[1::2]
        assert (keys < nk).all() and (values >= nk).all()
        first_value = {}
        for i, (k, v) in enumerate(zip(keys, values)):
            if k in first_value:
                assert v == first_value[k]  # the map is fixed within a sequence
                assert y[2 * i] == v  # queried key: the answer is its value
            else:
                first_value[k] = v
                assert y[2 * i] == IGNORE  # first occurrence: nothing to recall
            assert y[2 * i + 1] == IGNORE


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
    assert accuracy(logits, targets) == (2, 3)
    flat = torch.nn.functional.cross_entropy(logits[targets != IGNORE], targets[targets != IGNORE])
    assert torch.allclose(masked_cross_entropy(logits, targets), flat)


def test_overrides_are_checked():
    assert default_spec("recall", num_keys=4, seq_len=64).params["num_keys"] == 4
    assert default_spec("mod5", modulus=7).vocab_size == 7
    with pytest.raises(ValueError, match="no setting 'num_keyz'"):
        default_spec("recall", num_keyz=4)
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
    assert run["steps"] == 300 and run["hidden_size"] == 32
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
    text, cells = plot.table(None, ok, other)
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


def test_smoke_run_learns_s3():
    """The CLI's --smoke size (CPU, about a minute): a BD-LRU (k = 4) learns S3 word problems of length 8."""
    result = synthetic_run.train(
        synthetic_run.default_run(task="s3", model="bdlru", block_size=4, smoke=True, max_time=150),
        log=lambda *a: None)
    assert result["accuracy"] >= 0.9, result
    assert result["task"] == "s3" and result["model"] == "bdlru_k4" and result["parameters"] > 0
