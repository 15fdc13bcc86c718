"""pytest-benchmark suite options; the measurement code is polylstm.benchmarking.

Run (timings on):
    python -m pytest benchmarks --benchmark-enable
Without ``--benchmark-enable`` (the project's default addopts disable timing)
every case still runs once and is checked against the reference: a smoke test.

Options select the grid:
    --bench-shape T100-B64-I256-H256   (repeatable; default: all of SHAPES)
    --bench-runner numba               (repeatable; default: every available runner)
    --bench-mode forward               (repeatable; default: forward and forward_backward)
    --bench-dtype float32              (default float32)
    --bench-rounds 5                   (timed calls per case, after one warm-up)
    --bench-threads N                  (threads for every runner; default: usable CPUs)
"""

import pytest

from polylstm import benchmarking as bm


def pytest_addoption(parser):
    group = parser.getgroup("polylstm-bench", "polylstm benchmark grid")
    group.addoption("--bench-shape", action="append", default=[],
                    help="shape label, e.g. T100-B64-I256-H256 (repeatable)")
    group.addoption("--bench-runner", action="append", default=[],
                    help="runner name: a polylstm backend, pytorch or onnxruntime (repeatable)")
    group.addoption("--bench-mode", action="append", default=[], choices=bm.MODES,
                    help="forward or forward_backward (repeatable)")
    group.addoption("--bench-dtype", default="float32", choices=bm.DTYPES)
    group.addoption("--bench-rounds", type=int, default=5, help="timed calls per case")
    group.addoption("--bench-threads", type=int, default=0,
                    help="threads for every runner (0: the CPUs this process may use)")


def _selected_shapes(config):
    labels = config.getoption("bench_shape")
    by_label = {s.label: s for s in bm.SHAPES}
    unknown = [label for label in labels if label not in by_label]
    if unknown:
        raise pytest.UsageError(f"unknown --bench-shape {unknown}; known: {list(by_label)}")
    return [by_label[label] for label in labels] or list(bm.SHAPES)


def _selected_runners(config):
    names = config.getoption("bench_runner") or None
    try:
        runners = bm.list_runners(include_unavailable=True, names=names)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    return runners


def pytest_generate_tests(metafunc):
    if "bench_case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    modes = config.getoption("bench_mode") or list(bm.MODES)
    cases, ids = [], []
    for shape in _selected_shapes(config):
        for mode in modes:
            for runner in _selected_runners(config):
                cases.append((shape, mode, runner))
                ids.append(f"{shape.label}-{mode}-{runner.name}")
    metafunc.parametrize("bench_case", cases, ids=ids)


@pytest.fixture(scope="session")
def bench_settings(request):
    """dtype, rounds and threads chosen on the command line."""
    config = request.config
    return {"dtype": config.getoption("bench_dtype"),
            "rounds": config.getoption("bench_rounds"),
            "threads": config.getoption("bench_threads") or bm.default_threads()}


_INPUTS = {}


@pytest.fixture
def bench_inputs(bench_case, bench_settings):
    """Seeded inputs of the case's shape, shared by the runners of that shape."""
    shape = bench_case[0]
    key = (shape, bench_settings["dtype"])
    if key not in _INPUTS:
        _INPUTS.clear()  # the largest shape's inputs are big: keep one set alive
        _INPUTS[key] = bm.make_inputs(shape, bench_settings["dtype"])
    return _INPUTS[key]
