"""benchmarks/lm_compare: the report from the committed results files and from a train.py output folder."""
import json

import pytest

from benchmarks.lm_compare import report

RESULTS = "benchmarks/results/"


def test_report_of_the_committed_runs(tmp_path, capsys):
    report.main([RESULTS + "lm_compare_10m_models_2gpu.json", RESULTS + "lm_compare_mamba_125m_2gpu.json",
                 "--out", str(tmp_path)])
    table = (tmp_path / "lm_compare.md").read_text()
    # the README's figures: H-LRU 3.294 at 692,692 tokens/s; the diagonal LRU (run lru_m1 in the file) 3.448;
    # Mamba from the second file (250 steps with mambapy); DDP at 125m 1.52x
    assert "| H-LRU m=2 | 9.33M | 300 | 4.92M | 3.2941 | 26.95 | 2.105 | 3.2941 (300) | 692,692 |" in table
    assert "| diagonal LRU | 8.10M | 300 |" in table and "| Mamba | 9.11M | 250 |" in table
    assert "| 125m (seq 512), DDP | 2 | 4.8015 | 530,469 | 1.52x |" in table
    assert (tmp_path / "lm_compare_loss.png").stat().st_size > 10_000
    capsys.readouterr()


def test_report_of_a_run_folder_replaces_the_file_run(tmp_path, capsys):
    runs = json.loads(open(RESULTS + "lm_compare_10m_models_2gpu.json").read())["runs"]
    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({**runs["llama"], "eval_loss": 1.5}))
    report.main([RESULTS + "lm_compare_10m_models_2gpu.json", str(folder), "--out", str(tmp_path / "out")])
    table = (tmp_path / "out" / "lm_compare.md").read_text()
    assert "| Llama | 9.38M | 300 | 4.92M | 1.5000 |" in table and "| Mamba | 9.11M | 250 |" not in table
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "missing")])
    capsys.readouterr()
