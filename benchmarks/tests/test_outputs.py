"""Every benchmark that writes result files refuses to replace one that exists, before any work, unless given
--overwrite."""
import pytest

from benchmarks.kernels import bench_scan, check_scan_gpu
from benchmarks.model import bench, mixed_length, packing
from benchmarks.synthetic import check_baselines

# (main, arguments before --out, the file that exists: "FILE" for --out itself, else a name inside --out)
SCRIPTS = [
    (packing.main, ["--smoke"], "FILE"),
    (mixed_length.main, ["--smoke"], "FILE"),
    (check_scan_gpu.main, ["--smoke"], "FILE"),
    (check_baselines.main, ["--smoke"], "FILE"),
    (bench_scan.main, ["--smoke"], "bench_scan_smoke.png"),
    (bench_scan.main, ["--smoke", "--compare"], "bench_scan_compare_smoke.json"),
    (bench.main, ["--smoke"], "model_bench.json"),
]


@pytest.mark.parametrize("main, args, existing", SCRIPTS)
def test_an_existing_result_file_is_not_replaced(tmp_path, capsys, main, args, existing):
    out = tmp_path / "result.json" if existing == "FILE" else tmp_path
    path = out if existing == "FILE" else out / existing
    path.write_text("the user's own results")
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(out)])
    assert exit_info.value.code == 2
    assert f"{path} exists: pass --overwrite to replace it" in capsys.readouterr().err
    assert path.read_text() == "the user's own results"


@pytest.mark.parametrize("main, args", [(packing.main, ["--models", "lstm"]), (mixed_length.main, ["--models", "hlru_m9"])])
def test_unknown_models_are_refused_before_any_work(tmp_path, capsys, main, args):
    with pytest.raises(SystemExit) as exit_info:
        main(["--smoke", *args, "--out", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2 and "--models:" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("main", [packing.main, mixed_length.main])
@pytest.mark.parametrize("lengths", [["--min-doc", "0"], ["--min-doc", "50", "--max-doc", "40"]])
def test_bad_document_lengths_are_refused_before_any_work(tmp_path, capsys, main, lengths):
    with pytest.raises(SystemExit) as exit_info:
        main(["--smoke", *lengths, "--out", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2 and "need 1 <= --min-doc <= --max-doc" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_overwrite_replaces_the_file(tmp_path):
    out = tmp_path / "packing.json"
    out.write_text("the user's own results")
    assert packing.main(["--smoke", "--repeats", "1", "--out", str(out), "--overwrite"]) == 0
    assert '"models"' in out.read_text()
