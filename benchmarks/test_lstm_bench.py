"""LSTM benchmark grid: every shape x runner x mode, one pytest-benchmark group
per shape and mode so each table compares the runners side by side.

Each case is first checked against the NumPy reference (float64) on the same
inputs; a runner that computes something else fails here and is never timed.
See conftest.py for the command line.
"""

import time

import pytest

from polylstm import benchmarking as bm


def test_lstm(benchmark, bench_case, bench_inputs, bench_settings):
    shape, mode, runner = bench_case
    if runner.unavailable is not None:
        pytest.skip(f"{runner.name}: {runner.unavailable}")
    if mode not in runner.modes:
        pytest.skip(f"{runner.name} has no {mode}")
    dtype = bench_settings["dtype"]
    prepared = runner.prepare(bench_inputs, mode, bench_settings["threads"])

    error = bm.check(prepared, bench_inputs, mode)  # also the first warm-up call
    tolerance = bm.TOLERANCES[dtype]
    assert error <= tolerance, (
        f"{runner.name} disagrees with the reference on {shape.label} {mode}: "
        f"max error {error:.3g} > {tolerance:g}; not timed")

    benchmark.group = f"{shape.label} {mode} {dtype}"
    benchmark.extra_info.update({"runner": runner.name, "flops": shape.flops(mode),
                                 "max_error": error, "threads": bench_settings["threads"]})
    time.sleep(bm.SETTLE_S)  # let the reference's and other runners' thread pools go idle
    bm.time_call(prepared.run, repeats=0, warmup=1, warmup_s=bm.WARMUP_S)
    benchmark.pedantic(prepared.run, rounds=bench_settings["rounds"], iterations=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None when timing is disabled (--benchmark-disable)
        benchmark.extra_info["gflops"] = shape.flops(mode) / stats.stats.median / 1e9
