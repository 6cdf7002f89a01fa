"""The benchmark command runs, writes every field, and reports a broken kernel as a
failure rather than a pass."""

import json

import numpy as np

import fastconv
from fastconv import bench

CASE_FIELDS = {"case", "op", "dtype", "mode", "times_s", "error_vs_reference", "ok", "status", "pct_peak"}


def test_quick_run_writes_json_and_chart(tmp_path):
    rc = bench.main(["--quick", "--filter", "batch1,maxpool2", "--out", str(tmp_path), "--dtype", "both"])
    assert rc == 0
    report = json.loads((tmp_path / "results.json").read_text())
    assert {"machine", "peaks", "results", "geometric_means", "settings"} <= report.keys()
    assert {"cpu", "cores", "threads", "numpy", "numba"} <= report["machine"].keys()
    assert len(report["results"]) == 2 * 2 * 2
    for record in report["results"]:
        assert CASE_FIELDS <= record.keys()
        assert record["ok"] and record["times_s"]["fastconv"] > 0
        assert ("gflops" in record) != ("gbs" in record)
    if fastconv.catalogue.torch_module() is not None:
        assert (tmp_path / "speedup.png").stat().st_size > 0
        assert all("speedup_vs_torch" in r for r in report["results"])


def test_broken_kernel_is_reported(tmp_path, monkeypatch):
    real = fastconv.max_pool2d

    def off_by_a_bit(*args, **kwargs):
        out = real(*args, **kwargs)
        return (out[0] + 1e-3, out[1]) if isinstance(out, tuple) else out + 1e-3

    monkeypatch.setattr(fastconv, "max_pool2d", off_by_a_bit)
    rc = bench.main(["--quick", "--filter", "maxpool2", "--out", str(tmp_path)])
    assert rc == 1
    report = json.loads((tmp_path / "results.json").read_text())
    assert {r["status"] for r in report["results"]} == {"mismatch"}


def test_raising_kernel_is_an_error_row(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(fastconv, "avg_pool2d", broken)
    assert bench.main(["--quick", "--filter", "avgpool2", "--out", str(tmp_path)]) == 1
    report = json.loads((tmp_path / "results.json").read_text())
    assert all(r["status"] == "error" and "exploded" in r["message"] for r in report["results"])


def test_user_cases_and_compare(tmp_path):
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps([{"name": "mine", "op": "conv", "N": 2, "C": 4, "H": 9, "W": 9, "K": 8, "k": 3, "p": 1}]))
    out1, out2 = tmp_path / "a", tmp_path / "b"
    assert bench.main(["--quick", "--cases", str(cases), "--out", str(out1)]) == 0
    assert bench.main(["--quick", "--cases", str(cases), "--out", str(out2), "--compare", str(out1 / "results.json")]) == 0
    assert [r["case"] for r in json.loads((out2 / "results.json").read_text())["results"]] == ["mine", "mine"]


def test_peak_measurement_is_positive():
    peaks = bench.measure_peaks(["float32"], quick=True)
    assert peaks["gemm_gflops_float32"] > 0 and peaks["copy_gbs"] > 0
    assert np.isfinite(list(peaks.values())).all()


def test_bandwidth_copy_kernel_copies():
    from fastconv.kernels.memory import copy

    src = np.arange(200_003, dtype=np.float32)
    dst = np.zeros_like(src)
    copy(src, dst)
    assert np.array_equal(dst, src)


def test_bad_inputs_are_refused_before_any_timing(tmp_path, capsys):
    # every malformed --cases file, a --filter matching nothing, an unreadable
    # --compare or --markdown file and a bad --threads: a one-line error and exit 2,
    # before the warm-up, the peaks and the cases run
    def cases_file(content):
        path = tmp_path / f"cases{len(list(tmp_path.iterdir()))}.json"
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return str(path)

    good = {"name": "a", "op": "conv", "N": 2, "C": 3, "H": 8, "W": 8, "K": 4}
    bad = [
        ("missing fields ['C', 'H', 'W']", [{"name": "a", "op": "conv", "N": 2}]),
        ("unknown fields ['q']", [good | {"q": 1}]),
        ("op one of", [good | {"op": "foo"}]),
        ("must be ints", [good | {"N": 2.5}]),
        ("larger than the padded input", [good | {"H": 2, "W": 2, "k": 5}]),
        ("divisible by groups", [good | {"g": 2}]),
        ("at most half of kernel_size", [{"name": "m", "op": "max", "N": 1, "C": 1, "H": 8, "W": 8, "k": 2, "p": 3}]),
        ("non-empty JSON list", {"a": 1}),
        ("Expecting value", "not json"),
    ]
    for message, content in bad:
        assert bench.main(["--quick", "--cases", cases_file(content)]) == 2
        assert message in capsys.readouterr().err
    for argv, message in [
        (["--filter", "no-such-case"], "matches no case"),
        (["--compare", str(tmp_path / "none.json")], "No such file"),
        (["--markdown", cases_file({"a": 1})], "no 'results' list"),
        (["--threads", "10000"], "--threads"),
    ]:
        assert bench.main(["--quick", *argv, "--out", str(tmp_path / "out")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_command_line_names_an_unknown_command(capsys):
    from fastconv.__main__ import main

    assert main(["frobnicate"]) == 2
    captured = capsys.readouterr()
    assert "unknown command 'frobnicate'" in captured.err and "python -m fastconv train" in captured.out
    assert main(["--help"]) == 0
    assert "unknown command" not in capsys.readouterr().err


def test_scaling_script_times_each_thread_count(tmp_path, capsys):
    import pytest

    from fastconv import catalogue

    if catalogue.torch_module() is None:
        pytest.skip("bench/scaling.py compares with PyTorch")
    scaling = _bench_script("scaling")
    out = tmp_path / "scaling.json"
    before = fastconv.get_num_threads()
    try:
        assert scaling.main(["--threads", "1,2", "--filter", "batch1", "--rounds", "3", "--out", str(out)]) == 0
    finally:
        fastconv.set_num_threads(before)
    report = json.loads(out.read_text())
    assert [(r["case"], r["threads"]) for r in report["results"]] == [("batch1", 1), ("batch1", 2)]
    assert all(r["fastconv_s"] > 0 and r["torch_s"] > 0 and r["error_vs_torch"] < 1e-4 for r in report["results"])
    capsys.readouterr()
    assert scaling.main(["--markdown", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| case | 1 thr") and table[2].startswith("| batch1 |") and len(table) == 3
    assert scaling.main(["--threads", "1,100000", "--out", str(out)]) == 2
    assert "--threads" in capsys.readouterr().err


def _bench_script(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_passes_script_times_every_pass_and_path(tmp_path, capsys):
    passes = _bench_script("passes")
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps([{"name": "tiny_up", "op": "convT", "N": 2, "C": 4, "H": 5, "W": 5, "K": 6, "k": 3, "s": 2, "p": 1}]))
    before = fastconv.get_num_threads()
    try:
        assert passes.main(["--cases", str(cases), "--threads", "1", "--paths", "gemm,direct"]) == 0
    finally:
        fastconv.set_num_threads(before)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("tiny_up")]
    assert [line.split()[1] for line in lines] == ["forward", "input", "weight"]
    assert all("chosen [" in line and " gemm " in line and " direct " in line for line in lines)
    assert passes.main(["--paths", "blas"]) == 2
    assert passes.main(["--filter", "no_such_case"]) == 2
    assert "no_such_case" in capsys.readouterr().err
