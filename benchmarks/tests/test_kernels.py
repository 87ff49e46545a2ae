"""benchmarks/kernels: each GPU script's --smoke mode (tiny shapes, Triton's interpreter on the CPU), so that the
scripts stay in step with the kernels, and their device check; the torch-scan benchmark at short lengths."""
import json
import sys

import pytest
import torch

from benchmarks.kernels import bench_scan, bench_torch_scan, check_scan_gpu, compare_scan, scan_host_overhead, tune_plan


def test_check_scan_gpu_smoke(tmp_path):
    """check_scan_gpu --smoke compares the kernels (masked, with a state, the step kernels) with the float64
    torch backend and writes every case with small errors."""
    out = tmp_path / "errors.json"
    check_scan_gpu.main(["--smoke", "--out", str(out)])
    result = json.loads(out.read_text())
    assert {"commit", "dirty"} <= set(result["env"])
    assert len(result["cases"]) == len(check_scan_gpu.SMOKE_CASES)
    for row in result["cases"]:
        assert row["all_finite"], row
        assert max(row[k] for k in ("h", "final", "dv", "dgate_logits", "dinitial_state")) < 1e-5, row


def test_check_scan_gpu_only_selects_cases(tmp_path):
    """--only keeps the cases of a kind or of a kind and size, and refuses a selection that matches none."""
    out = tmp_path / "errors.json"
    check_scan_gpu.main(["--smoke", "--only", "hlru:2", "bdlru", "--out", str(out)])
    cases = [(r["kind"], r["size"]) for r in json.loads(out.read_text())["cases"]]
    assert cases == [(c[0], c[1]) for c in check_scan_gpu.SMOKE_CASES if c[0] == "bdlru" or c[:2] == ("hlru", 2)]
    with pytest.raises(SystemExit):
        check_scan_gpu.main(["--smoke", "--only", "hlru:7", "--out", str(tmp_path / "none.json")])


def test_bench_scan_smoke(tmp_path, capsys):
    """bench_scan --smoke runs every section (main table, torch backend, T sweep, B = 1, decode) and writes
    the JSON and the plot."""
    bench_scan.main(["--smoke", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "bench_scan_smoke.json").read_text())
    assert {"commit", "dirty"} <= set(result["env"])
    assert (tmp_path / "bench_scan_smoke.png").stat().st_size > 0
    s = bench_scan.SMOKE
    assert [(r["kind"], r["size"]) for r in result["main"]] == s["main"]
    assert all(r["fwd_ms"] > 0 and r["fwdbwd_ms"] > 0 for r in result["main"])
    assert [(r["kind"], r["size"], r["backend"]) for r in result["torch_backend"]] == [
        (kind, D, "torch") for kind, D in s["torch_backend"]]
    assert [(r["size"], r["T"]) for r in result["sweep_T"]] == [(D, t) for _, D in s["sweep"] for t in s["sweep_T"]]
    assert [(r["kind"], r["B"], r["T"]) for r in result["B1_T32k"]] == [(kind, 1, s["b1_T"]) for kind, _ in s["b1"]]
    assert set(result["decode_T1_B8"]) == {f"{kind}{D}" for kind, D in s["decode"]}
    assert "kind  size  fwd_ms" in capsys.readouterr().out


def test_bench_torch_scan_short(tmp_path, capsys):
    out = tmp_path / "torch_scan.json"
    bench_torch_scan.main(["--T", "16", "--json", str(out)])
    result = json.loads(out.read_text())
    assert [(r["op"], r["B"], r["N"], r["D"]) for r in result["rows"]] == bench_torch_scan.CASES
    keys = ("loop_fwd_s", "chunked_fwd_s", "loop_fwdbwd_s", "chunked_fwdbwd_s")
    assert all(r["T"] == 16 and all(r[k] > 0 for k in keys) for r in result["rows"])
    table = capsys.readouterr().out
    assert table.count("\n| hlru |") == 6 and table.count("\n| bdlru |") == 3


def test_bench_torch_scan_scaling(capsys):
    bench_torch_scan.main(["--scaling", "64,128", "--T", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert [line[:8] for line in lines] == ["T=    64", "T=   128"] and all(" fwd+bwd " in line for line in lines)
    with pytest.raises(SystemExit):
        bench_torch_scan.main(["--scaling", "64,0"])


def test_gpu_scripts_refuse_the_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(SystemExit, match="--smoke runs the Triton kernels on the CPU: set TRITON_INTERPRET=1"):
        check_scan_gpu.main(["--smoke", "--out", "unused.json"])


# A stand-in for the authors' triton_scans.py (same entry point, plain torch): tests the loading and the mapping of
# our logits to their A and b, without their code (which is not part of this repository).
FAKE_AUTHORS_SCANS = '''
import torch


def _loop(A, b):
    h, ys = b.new_zeros(b.shape[0], b.shape[2]), []
    for t in range(b.shape[1]):
        h = (A[:, t] @ h[..., None])[..., 0] + b[:, t]
        ys.append(h)
    return torch.stack(ys, 1)


_KERNELS = {"auto": _loop}


def triton_affine_scan(A, b, mode):
    return _KERNELS[mode](A, b)
'''


# A stand-in for their later triton_fused_gate_scan.py: gates (B, T, N, 1, 2) with the input gate last, v (B, T, N, 1).
FAKE_AUTHORS_FUSED_GATES = '''
import torch

from .triton_scans import _loop


def fused_gate_scan(gates, v):
    B, T, N, m, _ = gates.shape
    p = torch.softmax(gates, -1)
    A = p[..., :m].transpose(1, 2).reshape(B * N, T, m, m)
    b = (p[..., m] * v).transpose(1, 2).reshape(B * N, T, m)
    return _loop(A, b).reshape(B, N, T, m).transpose(1, 2)
'''


def test_bench_scan_compare_smoke(tmp_path, capsys):
    """bench_scan --smoke --compare times ours and both of the authors' variants on every case, and their fused-gate
    scan at m = 1; the authors' scans fed from our logits (companion matrices for H-LRU; reordered gates for the
    fused one) give our h."""
    authors = tmp_path / "authors"
    authors.mkdir()
    (authors / "triton_scans.py").write_text(FAKE_AUTHORS_SCANS)
    (authors / "triton_fused_gate_scan.py").write_text(FAKE_AUTHORS_FUSED_GATES)
    bench_scan.main(["--smoke", "--compare", "--authors-path", str(authors), "--out", str(tmp_path)])
    result = json.loads((tmp_path / "bench_scan_compare_smoke.json").read_text())["compare"]
    assert result["authors"].startswith("triton_affine_scan(mode='auto')")
    assert result["authors_fused"].startswith("fused_gate_scan from"), result["authors_fused"]
    c, s = bench_scan.COMPARE_SMOKE, bench_scan.SMOKE
    cases = [(kind, D, s["B"], s["T"]) for kind, D in c["main"]] + [(kind, D, 1, s["b1_T"]) for kind, D in c["b1"]]
    names = ["ours", "authors_kernel", "authors_with_gates"]
    assert [(r["kind"], r["size"], r["B"], r["T"], r["contender"]) for r in result["rows"]] == [
        case + (name,) for case in cases for name in names + ["authors_fused_gates"] * (case[:2] == ("hlru", 1))]
    for row in result["rows"]:
        assert "error" not in row, row
        assert all(row[k]["min"] <= row[k]["median"] <= row[k]["max"] for k in ("fwd_ms", "fwdbwd_ms")), row
        assert row["fwdbwd_host_ms"] > 0 and row["host_load_1min"] >= 0, row
        if row["contender"] == "ours":
            times = row["bwd_alone_ms"]
            assert len(times["all"]) == (c["repeats"] if row["B"] == s["B"] else c["b1_repeats"])
            assert times["min"] <= times["median"] <= times["max"], row
        if row["contender"] in ("authors_with_gates", "authors_fused_gates"):
            assert row["rel_err_vs_ours"] < 1e-5, row
    printed = capsys.readouterr().out
    assert "authors_with_gates" in printed and "authors_fused_gates" in printed


def test_authors_v2_mode_preferred(tmp_path):
    """Their later triton_scans.py (mad-lab 15f7b9f) lists "<mode>_v2" modes (their fused backward) apart from the
    forward kernels, in _FUSED_BWD_MODES: the comparison times auto_v2 where offered, auto otherwise."""
    authors = tmp_path / "authors"
    authors.mkdir()
    v2 = FAKE_AUTHORS_SCANS.replace("    return _KERNELS[mode](A, b)",
                                    "    CALLS.append(mode)\n    return _KERNELS[_FUSED_BWD_MODES.get(mode, mode)](A, b)")
    (authors / "triton_scans.py").write_text(v2 + '\n_FUSED_BWD_MODES = {"auto_v2": "auto"}\nCALLS = []\n')
    fn, description = compare_scan.load_authors_scan(str(authors))
    assert description.startswith("triton_affine_scan(mode='auto_v2')"), description
    fused, fused_info = compare_scan.load_authors_fused_gates()  # this folder has no fused-gate scan: says so
    assert fused is None and "holds no triton_fused_gate_scan.py" in fused_info, fused_info
    A, b = torch.rand(3, 5, 2, 2), torch.randn(3, 5, 2)
    torch.testing.assert_close(fn(A, b), sys.modules[compare_scan.AUTHORS_PACKAGE + ".triton_scans"]._loop(A, b))
    assert sys.modules[compare_scan.AUTHORS_PACKAGE + ".triton_scans"].CALLS == ["auto_v2"]


def test_bench_scan_compare_without_the_authors(tmp_path, monkeypatch):
    """Without their folder the comparison says why and times ours alone (one case: the smoke test above runs them
    all)."""
    monkeypatch.setitem(bench_scan.COMPARE_SMOKE, "main", [("bdlru", 2)])
    monkeypatch.setitem(bench_scan.COMPARE_SMOKE, "b1", [])
    bench_scan.main(["--smoke", "--compare", "--authors-path", str(tmp_path / "missing"), "--out", str(tmp_path)])
    result = json.loads((tmp_path / "bench_scan_compare_smoke.json").read_text())["compare"]
    assert result["authors"].startswith("not available:") and "triton_scans.py" in result["authors"]
    assert result["authors_fused"].startswith("not available:")
    assert [(r["kind"], r["size"], r["contender"]) for r in result["rows"]] == [("bdlru", 2, "ours")]


def test_tune_plan_smoke(tmp_path, capsys):
    """tune_plan --smoke times every (L, U, BLOCK_N) of its grid, forward and backward, one JSON line each with the
    commit, and names the fastest launch of each case; the sweep leaves the planner's tables as they were."""
    tables = {name: dict(getattr(tune_plan.triton_plan_lrnn, name)) for name in
              ("HLRU_FWD_CONFIG", "HLRU_BWD_CONFIG", "BDLRU_FWD_CONFIG", "BDLRU_BWD_CONFIG")}
    out = tmp_path / "tune.jsonl"
    tune_plan.main(["--smoke", "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    s = tune_plan.SMOKE
    (B, T), Ls = next(iter(s["shapes"].items()))
    grid = {(kind, D, d, L, U) for kind, D in s["cases"] for d in ("fwd", "bwd") for L in Ls for U in s["u_grid"][D]}
    assert {(r["kind"], r["size"], r["direction"], r["L"], r["U"]) for r in rows} == grid
    assert len(rows) == len(grid) and all(r["ms"] > 0 and r["B"] == B and r["T"] == T and "commit" in r["env"] for r in rows)
    assert capsys.readouterr().out.count("best L=") == 2 * len(s["cases"])
    assert tables == {name: getattr(tune_plan.triton_plan_lrnn, name) for name in tables}


def test_tune_plan_targeted_sweep(tmp_path):
    """--cases, --u and --direction narrow the sweep to exactly those launches; a size or U the kernels do not
    run, or a size without U, is refused before anything compiles."""
    out = tmp_path / "tune.jsonl"
    tune_plan.main(["--smoke", "--cases", "bdlru:3", "--u", "1", "3", "--direction", "bwd", "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    (_, T), Ls = next(iter(tune_plan.SMOKE["shapes"].items()))
    assert {(r["kind"], r["size"], r["direction"], r["L"], r["U"]) for r in rows} == {
        ("bdlru", 3, "bwd", L, U) for L in Ls for U in (1, 3)}
    for bad in (["--cases", "bdlru:17"], ["--cases", "gru:2"], ["--cases", "hlru:3"], ["--u", "0"],
                ["--shapes", "0:32"], ["--shapes", "32"]):
        with pytest.raises(SystemExit):
            tune_plan.main(["--smoke", *bad, "--out", str(tmp_path / "bad.jsonl")])
    assert not (tmp_path / "bad.jsonl").exists()


def test_tune_plan_step_kernels(tmp_path):
    """The step kernels (BD-LRU k > 8) sweep their chunk length alone, at the --shapes given (L = T, T / 2, ...),
    with the planner's choice flagged at each shape."""
    out = tmp_path / "step.jsonl"
    tune_plan.main(["--smoke", "--cases", "bdlru:9", "--shapes", "2:16", "1:32", "--direction", "fwd",
                    "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["B"], r["T"], r["L"], r["chunks"]) for r in rows} == {
        (2, 16, 16, 1), (2, 16, 8, 2), (2, 16, 4, 4), (1, 32, 32, 1), (1, 32, 16, 2), (1, 32, 8, 4)}
    assert all(r["kind"] == "bdlru" and r["size"] == 9 and r["direction"] == "fwd" and r["U"] is None
               and r["BLOCK_N"] is None and r["ms"] > 0 for r in rows)
    assert [(r["B"], r["L"]) for r in rows if r["planner"]] == [(2, 16), (1, 32)]  # the CPU plans one chunk


def test_scan_host_overhead(tmp_path, capsys):
    """scan_host_overhead times the Python around the scan's four paths (stand-in kernels) and records the commit;
    the stand-ins are gone afterwards."""
    out = tmp_path / "host.json"
    scan_host_overhead.main(["--calls", "3", "--repeats", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["us_per_call"]) == {"operator_fwd_bwd", "eager_fwd_bwd", "public_fwd_bwd", "public_fwd_no_grad",
                                          "launches_fwd_bwd"}
    assert all(us > 0 for us in result["us_per_call"].values()) and "commit" in result["env"]
    assert "eager_fwd_bwd" in capsys.readouterr().out
    assert scan_host_overhead.scan_triton._scan_forward is not scan_host_overhead.stand_in_forward
    assert not isinstance(scan_host_overhead.scan_triton._hlru_fwd_kernel, scan_host_overhead.StandInKernel)

