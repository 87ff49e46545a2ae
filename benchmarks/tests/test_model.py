"""benchmarks/model: the model-level benchmark's --smoke mode on the CPU (every section, every model) and
its figure and tables, so that the script stays in step with the models and generate()."""
import json
import math

from benchmarks.model import bench, plot


def test_bench_smoke_and_plot(tmp_path):
    bench.main(["--smoke", "--out", str(tmp_path), "--train-modes", "compiled,eager,compiled_fused_ce"])
    data = json.loads((tmp_path / "model_bench.json").read_text())
    assert {"commit", "dirty", "gpu", "command"} <= set(data["env"])  # what produced the record
    rows = data["rows"]
    measured = [r for r in rows if r.get("status") is None]
    failed = [r for r in rows if r.get("status") == "error"]
    assert not failed, failed
    models = {"hlru_m2", "bdlru_k4", "llama"}
    assert {r["model"] for r in measured if r["section"] == "decode"} == models
    assert {r["model"] for r in measured if r["section"] == "prefill"} == models
    decode = [r for r in measured if r["section"] == "decode"]
    assert {r["mode"] for r in decode} == {"compiled", "eager"}
    assert all(math.isfinite(r["ms_per_token"]) for r in decode)  # a difference of two timings: its sign is noise here
    train = [r for r in measured if r["section"] == "train"]
    assert {(r["model"], r["mode"]) for r in train} >= {(m, mode) for m in models for mode in ("compiled", "eager")}
    # same weights and batch: the compiled and eager first losses agree
    for m in models:
        losses = {r["mode"]: r["first_loss"] for r in train if r["model"] == m}
        assert abs(losses["compiled"] - losses["eager"]) < 1e-3, losses
    # Llama is sized to the H-LRU model's parameter count (within 10% at the smoke size)
    assert abs(data["params"]["llama"] / data["params"]["hlru_m2"] - 1) < 0.1, data["params"]
    plot.main([str(tmp_path / "model_bench.json"), "--out", str(tmp_path)])
    assert (tmp_path / "model_bench.png").stat().st_size > 0
    table = (tmp_path / "model_bench.md").read_text()
    assert "Llama" in table and "| H-LRU m=2 | compiled | 1 x 16 |" in table



def test_packing_smoke_packed_rows_equal_documents_alone(tmp_path):
    """The packing benchmark's smoke mode: float64 packed rows give each document's logits and gradients."""
    from benchmarks.model import packing

    out = tmp_path / "packing.json"
    assert packing.main(["--smoke", "--repeats", "1", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert set(record["models"]) == {"hlru_m2", "bdlru_k4"}
    for result in record["models"].values():
        assert result["equality"]["logits_max_rel_error"] < 1e-10
        assert result["equality"]["grads_max_rel_error"] < 1e-10
        assert result["speed"]["packed_tokens_per_s"] > 0 and result["speed"]["documents"] > 2


def test_mixed_length_smoke_record(tmp_path):
    """The mixed-length training benchmark's smoke mode (float64, CPU): every model in both layouts, the same
    loss packed and padded (main() asserts it too), and the record's fields."""
    from benchmarks.model import mixed_length

    out = tmp_path / "mixed_length.json"
    assert mixed_length.main(["--smoke", "--warmup", "1", "--steps", "1", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert {"commit", "gpu", "torch", "transformers", "date"} <= set(record["env"])
    assert record["llama_packed_mask_detected"] is True
    size = record["size"]
    assert record["real_tokens_per_step"] == sum(map(sum, record["rows"])) == size["batch"] * size["seq_len"]
    assert record["padded_tokens_per_step"] > record["real_tokens_per_step"]
    assert record["documents"] == sum(map(len, record["rows"])) > record["size"]["batch"]
    assert set(record["models"]) == {"hlru_m2", "bdlru_k4", "llama"}
    for result in record["models"].values():
        assert result["first_loss_gap"] < 1e-10
        for layout in mixed_length.LAYOUTS:
            assert result[layout]["real_tokens_per_s"] > 0 and math.isfinite(result[layout]["first_loss"])
        assert result["packed_over_padded"] > 0
