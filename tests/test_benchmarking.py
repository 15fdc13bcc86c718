"""polylstm.benchmarking: importable without the heavy libraries, FLOP counts,
seeded inputs, the reference check that keeps a wrong runner out of the
ranking, and the table."""

import subprocess
import time
import sys

import numpy as np
import pytest

from polylstm import benchmarking as bm

TINY = bm.Shape(T=5, B=3, I=4, H=6)


def test_import_pulls_in_no_heavy_library():
    code = ("import sys, polylstm.benchmarking as bm; bm.list_runners(include_unavailable=True); "
            "heavy = [m for m in ('numba', 'torch', 'onnxruntime', 'onnx') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_flops():
    s = bm.Shape(100, 64, 256, 256)
    assert s.flops("forward") == 2 * 100 * 64 * 512 * 1024
    assert s.flops("forward_backward") == 3 * s.flops("forward")
    assert s.label == "T100-B64-I256-H256"
    with pytest.raises(ValueError):
        s.flops("backward")


def test_shape_grid_is_the_issues():
    assert [(s.T, s.B, s.I, s.H) for s in bm.SHAPES] == [
        (100, 64, 256, 256), (100, 64, 512, 512), (100, 16, 128, 128), (200, 1, 32, 64),
        (50, 256, 1024, 1024)]


def test_inputs_are_seeded_and_typed():
    a = bm.make_inputs(TINY, "float32", seed=3)
    b = bm.make_inputs(TINY, "float32", seed=3)
    c = bm.make_inputs(TINY, "float32", seed=4)
    assert a.x.dtype == np.float32 and a.w_ih.shape == (24, 4) and a.dy.shape == (5, 3, 6)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.w_hh, b.w_hh)
    assert not np.array_equal(a.x, c.x)


def _runner(name, prepare, modes=bm.MODES):
    return bm.Runner(name=name, kind="polylstm", modes=modes, description="test", prepare=prepare)


def test_reference_runner_passes_its_own_check():
    numpy_runner = bm.list_runners(names=["numpy"])[0]
    for mode in bm.MODES:
        m = bm.measure(numpy_runner, TINY, mode, "float64", repeats=2, settle_s=0)
        assert m.status == "ok", m.message
        assert m.max_error < 1e-12
        assert len(m.times_s) == 2 and m.median_s > 0
        assert m.gflops == pytest.approx(TINY.flops(mode) / m.median_s / 1e9)


def test_wrong_runner_is_reported_and_never_timed():
    calls = []
    good = bm.list_runners(names=["numpy"])[0]

    def prepare(inputs, mode, threads):
        inner = good.prepare(inputs, mode, threads)

        def run():
            calls.append(1)
            return inner.run()

        def collect(out):
            result = inner.collect(out)
            result.y = result.y + 0.01  # off by a little everywhere
            return result

        return bm.Prepared(run, collect)

    m = bm.measure(_runner("off", prepare), TINY, "forward", "float32", repeats=5, settle_s=0)
    assert m.status == "wrong" and m.median_s is None and m.gflops is None
    assert m.max_error == pytest.approx(0.01, rel=1e-3)
    assert len(calls) == 1  # the check's call only


def test_raising_runner_is_reported_as_error():
    def prepare(inputs, mode, threads):
        raise RuntimeError("boom")

    m = bm.measure(_runner("broken", prepare), TINY, "forward", settle_s=0)
    assert m.status == "error" and "boom" in m.message


def test_unsupported_mode_and_unavailable_runner():
    r = _runner("fwd-only", lambda *a: None, modes=("forward",))
    assert bm.measure(r, TINY, "forward_backward").status == "unsupported"
    r.unavailable = "not installed"
    assert bm.measure(r, TINY, "forward").status == "unavailable"


def test_unknown_runner_name():
    with pytest.raises(ValueError, match="unknown runner"):
        bm.list_runners(names=["no-such-runner"])


def test_table_ratios():
    ok = [bm.Measurement("a", TINY, "forward", "float32", "ok", median_s=0.002, gflops=1.0),
          bm.Measurement("pytorch", TINY, "forward", "float32", "ok", median_s=0.004, gflops=0.5),
          bm.Measurement("c", TINY, "forward", "float32", "wrong", message="max error 1")]
    table = bm.format_table(ok, baselines=("pytorch",), ceiling_gflops=2.0)
    lines = table.splitlines()
    assert len(lines) == 5
    assert "| a | 2.000 | 1.0 | 50% | 0.50 |" in lines[2]
    assert "wrong" in lines[4]


def test_comparators_agree_with_the_reference_when_installed():
    runners = [r for r in bm.list_runners(names=["pytorch", "onnxruntime"]) if r.unavailable is None]
    if not runners:
        pytest.skip("neither torch nor onnxruntime installed")
    for runner in runners:
        for mode in runner.modes:
            m = bm.measure(runner, TINY, mode, "float32", repeats=1, settle_s=0)
            assert m.status == "ok", f"{runner.name} {mode}: {m.message}"


def test_compare_merges_rounds_and_checks_once():
    calls = {"check": 0}
    good = bm.list_runners(names=["numpy"])[0]

    def prepare(inputs, mode, threads):
        inner = good.prepare(inputs, mode, threads)

        def collect(out):
            calls["check"] += 1
            return inner.collect(out)

        return bm.Prepared(inner.run, collect)

    runners = [_runner("a", prepare), _runner("b", prepare, modes=("forward",))]
    results = bm.compare(runners, [TINY], bm.MODES, "float64", repeats=2, warmup=0, rounds=3)
    assert [(m.runner, m.mode) for m in results] == [("a", "forward"), ("b", "forward"),
                                                     ("a", "forward_backward")]
    assert all(m.status == "ok" and len(m.times_s) == 6 for m in results)
    assert calls["check"] == 3  # one reference check per runner and case


def test_time_call_counts_repeats_then_fills_min_time():
    calls = []

    def sleep_1ms():
        calls.append(1)
        time.sleep(0.001)

    times = bm.time_call(sleep_1ms, repeats=3, warmup=2)
    assert len(times) == 3 and len(calls) == 5  # warm-up calls are not timed
    calls.clear()
    times = bm.time_call(sleep_1ms, repeats=3, warmup=0, min_time_s=0.03)
    assert sum(times) >= 0.03 and 3 < len(times) <= 31 and len(calls) == len(times)
    # Calls longer than min_time_s: exactly the repeats.
    assert len(bm.time_call(sleep_1ms, repeats=4, warmup=0, min_time_s=0.0005)) == 4


def test_compare_passes_min_time_to_every_round():
    runners = bm.list_runners(names=["numpy"])
    (m,) = bm.compare(runners, [TINY], ("forward",), "float64", repeats=1, warmup=0, rounds=2,
                      min_time_s=0.02)
    assert m.status == "ok" and len(m.times_s) > 2 and sum(m.times_s) >= 0.04


def test_cudnn_comparator_is_built_only_when_named():
    assert "pytorch-cudnn" not in {r.name for r in bm.list_runners(include_unavailable=True)}
    (runner,) = bm.list_runners(include_unavailable=True, names=["pytorch-cudnn"])
    assert runner.name == "pytorch-cudnn" and runner.kind == "comparator"
    assert runner.unavailable in (None, "torch not installed", "no CUDA device for torch")
