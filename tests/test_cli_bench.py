"""`polylstm bench`: tables, JSON, and a wrong backend reported, never ranked.

Tiny shapes and two repeats: these tests check what the command reports, not
how fast anything is. The backends used are the NumPy reference and backends
registered here at run time, so no optional package is needed (the chart test
needs matplotlib, from the docs extra).
"""

import argparse
import json

import numpy as np
import pytest

import polylstm
from polylstm import cli_bench
from polylstm._registry import REGISTRY
from polylstm.backend import Backend, BackendInfo
from polylstm.cli import main

from polylstm.testing import in_ci

SHAPE = "6,3,4,5"


class _Delegating(Backend):
    """The reference under another name; subclasses spoil one result."""

    xp = np

    def __init__(self, name):
        self.name = name
        self.inner = polylstm.get_backend("numpy")
        self.capabilities = self.inner.capabilities

    def forward(self, *args):
        return self.inner.forward(*args)

    def backward(self, tape, dy, dh_n, dc_n):
        return self.inner.backward(tape, dy, dh_n, dc_n)


class _WrongOutputs(_Delegating):
    def forward(self, *args):
        out = self.inner.forward(*args)
        out.y = out.y + 0.1  # every output off by 0.1: far outside any tolerance
        return out


class _WrongBias(_Delegating):
    def backward(self, tape, dy, dh_n, dc_n):
        grads = self.inner.backward(tape, dy, dh_n, dc_n)
        grads.db = grads.db * 2  # forward right, one gradient wrong
        return grads


@pytest.fixture
def registered():
    """Register backends for one test, unregister them after."""
    names = []

    def register(name, cls):
        polylstm.register_backend(BackendInfo(name=name, load=lambda: cls(name), auto_select=False,
                                              description=f"test backend {cls.__name__}"))
        names.append(name)
        return name

    yield register
    for name in names:
        REGISTRY.unregister_backend(name)


def _bench(capsys, *argv):
    code = main(["bench", "--no-progress", "--repeats", "2", "--warmup", "0", "--min-time", "0", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _row(out, name, after):
    """The table row of runner ``name`` in the first table after the line containing ``after``."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if after in line)
    return next(line for line in lines[start:] if line.split() and line.split()[0] == name).split()


def test_a_wrong_backend_is_reported_and_never_ranked(capsys, registered, tmp_path):
    wrong = registered("bench-test-wrong", _WrongOutputs)
    twin = registered("bench-test-twin", _Delegating)
    path = tmp_path / "bench.json"
    code, out, _ = _bench(capsys, "--backends", f"numpy,{wrong},{twin}", "--shape", SHAPE, "--json", str(path),
                          "--rounds", "2")

    assert code == 1, out  # a wrong result makes the command fail
    title = "T=6 B=3 I=4 H=5  float32"
    assert title in out
    assert _row(out, wrong, title)[1:] == ["WRONG", "WRONG"]
    assert f"{wrong} forward: wrong (checked against the reference, not timed, not ranked)" in out
    assert "max error" in out
    for name in ("numpy", twin):
        row = _row(out, name, title)
        assert float(row[1]) > 0 and float(row[2]) > 0  # forward ms, GFLOP/s
    assert out.count(" *") >= 2  # one fastest per mode, among the correct runners

    record = json.loads(path.read_text())
    results = record["results"]
    assert len(results) == 3 * 2  # three runners, two modes, one shape, one dtype
    for r in results:
        if r["runner"] == wrong:
            assert r["status"] == "wrong"
            assert r["median_s"] is None and r["rank"] is None and r["ratio_to_fastest"] is None
            assert r["max_error"] > r["tolerance"]
        else:
            assert r["status"] == "ok" and r["max_error"] <= r["tolerance"]
            assert r["median_s"] > 0 and len(r["times_s"]) == 2 * 2 and r["gflops"] > 0  # repeats x rounds
            assert r["rank"] in (1, 2) and r["ratio_to_fastest"] >= 1.0
    for mode in ("forward", "forward_backward"):
        ranks = sorted(r["rank"] for r in results if r["mode"] == mode and r["status"] == "ok")
        assert ranks == [1, 2]
    assert record["settings"]["repeats"] == 2 and record["settings"]["rounds"] == 2
    assert {r["name"] for r in record["runners"]} == {"numpy", wrong, twin}


def test_a_backend_wrong_only_in_backward_is_ranked_only_forward(capsys, registered, tmp_path):
    half = registered("bench-test-wrong-db", _WrongBias)
    path = tmp_path / "bench.json"
    code, out, _ = _bench(capsys, "--backends", f"numpy,{half}", "--shape", SHAPE, "--json", str(path))
    assert code == 1
    by_mode = {r["mode"]: r for r in json.loads(path.read_text())["results"] if r["runner"] == half}
    assert by_mode["forward"]["status"] == "ok" and by_mode["forward"]["rank"] in (1, 2)
    assert by_mode["forward_backward"]["status"] == "wrong" and by_mode["forward_backward"]["rank"] is None


def test_correct_runners_exit_zero_with_one_table_per_shape_and_dtype(capsys, registered):
    twin = registered("bench-test-twin", _Delegating)
    code, out, _ = _bench(capsys, "--backends", f"numpy,{twin}", "--shape", SHAPE, "--shape", "2,1,3,2",
                          "--dtype", "float32", "--dtype", "float64", "--mode", "forward")
    assert code == 0, out
    for title in ("T=6 B=3 I=4 H=5  float32", "T=6 B=3 I=4 H=5  float64",
                  "T=2 B=1 I=3 H=2  float32", "T=2 B=1 I=3 H=2  float64"):
        assert title in out
    assert "forward+backward ms" not in out  # only the mode asked for
    assert out.count("1.00 *") == 4  # a fastest in each of the four tables


def test_unknown_backend_is_a_usage_error(capsys):
    code, _, err = _bench(capsys, "--backends", "numpy,no-such-backend", "--shape", SHAPE)
    assert code == 2
    assert "no-such-backend" in err and "numpy" in err


def test_min_time_keeps_timing_a_fast_case(capsys, tmp_path):
    path = tmp_path / "bench.json"
    # Later options win: this --min-time replaces _bench's 0.
    code, out, _ = _bench(capsys, "--backends", "numpy", "--shape", "2,1,3,2", "--mode", "forward",
                          "--min-time", "0.05", "--json", str(path))
    assert code == 0, out
    assert "median of 2 or more calls filling 0.05 s" in out
    (result,) = json.loads(path.read_text())["results"]
    # A T=2 call takes well under a millisecond: far more than the 2 repeats.
    assert len(result["times_s"]) > 10 and sum(result["times_s"]) >= 0.05
    assert json.loads(path.read_text())["settings"]["min_time_s"] == 0.05


def test_negative_min_time_is_a_usage_error(capsys):
    code, _, err = _bench(capsys, "--backends", "numpy", "--shape", SHAPE, "--min-time", "-1")
    assert code == 2 and "--min-time" in err


def test_bad_shape_is_rejected():
    with pytest.raises(SystemExit):
        main(["bench", "--shape", "6,3,4"])
    assert cli_bench.parse_shape("6x3x4x5") == cli_bench.bm.Shape(6, 3, 4, 5)


def test_a_shape_is_a_grid_label_or_four_sizes():
    # benchmarks/report.py and numba_breakdown.py take either.
    grid = cli_bench.bm.SHAPES[2]
    assert cli_bench.parse_shape_or_label(grid.label) == grid
    assert cli_bench.parse_shape_or_label("100,8,64,200") == cli_bench.bm.Shape(100, 8, 64, 200)
    with pytest.raises(argparse.ArgumentTypeError, match="grid label"):
        cli_bench.parse_shape_or_label("T100-B8")


def test_list_names_every_runner(capsys):
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("numpy", "pytorch", "onnxruntime"):
        assert name in out


def test_default_selection_skips_the_emulator_and_unavailable_runners():
    chosen, skipped = cli_bench.select_runners(None)
    names = {r.name for r in chosen}
    assert "numpy" in names and "cupy-emulated" not in names
    assert all(r.unavailable is None for r in chosen)
    assert any(line.startswith("cupy-emulated:") for line in skipped) or "cupy-emulated" not in {
        s.name for s in polylstm.available_backends()}


def test_plot_is_written(capsys, tmp_path):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if in_ci():
            pytest.fail("matplotlib missing: CI installs the docs extra")
        pytest.skip("matplotlib not installed (pip install -e '.[docs]')")
    path = tmp_path / "bench.png"
    code, out, _ = _bench(capsys, "--backends", "numpy", "--shape", SHAPE, "--plot", str(path))
    assert code == 0, out
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_bar_counts_every_case_on_stderr(capsys):
    pytest.importorskip("tqdm")
    code = main(["bench", "--backends", "numpy", "--shape", SHAPE, "--shape", "2,1,3,2", "--repeats", "1",
                 "--warmup", "0"])
    captured = capsys.readouterr()
    assert code == 0
    assert "4/4" in captured.err  # two shapes x two modes x one runner
    assert "4/4" not in captured.out and "T=6 B=3 I=4 H=5" in captured.out
