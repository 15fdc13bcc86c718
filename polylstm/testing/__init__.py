"""polylstm's conformance kit: prove a backend computes what the reference computes.

Three ways to run it:

* subclass :class:`BackendConformance` in your test suite (needs pytest)::

      from polylstm.testing import BackendConformance

      class TestMyBackend(BackendConformance):
          backend = "mybackend"
          expected_failures = {"peephole": "not implemented yet"}

* from pytest by name: ``pytest -p polylstm.testing --polylstm-backend mybackend``
  (``--polylstm-expect-fail peephole=reason`` declares an expected failure);
* from the command line: ``polylstm check mybackend``, or from Python
  :func:`run_conformance`, which needs no pytest.

What is checked (see :data:`CHECKS`): forward outputs and final states, the
tape, gate trajectories, variable lengths, reverse, peepholes, every gradient
with any subset of incoming gradients, float32 and float64 against the float64
reference (:data:`DEFAULT_TOLERANCES`), inputs left unchanged, bit-identical
repeated calls, and NaN propagation. A check that needs a capability the
backend lacks fails with UnsupportedFeatureError unless declared in
``expected_failures`` (by check name, capability or dtype); a declared failure
that passes is reported as 'xpass', a failure, so stale declarations surface.
"""

from __future__ import annotations

import os

from ._environment import in_ci, require
from ._checks import (
    CHECKS,
    DEFAULT_TOLERANCES,
    Case,
    Check,
    CheckResult,
    assert_close,
    make_inputs,
    run_check,
    run_conformance,
)

__all__ = ["BackendConformance", "CHECKS", "DEFAULT_TOLERANCES", "Case", "Check", "CheckResult",
           "assert_close", "make_inputs", "run_check", "run_conformance", "in_ci", "require"]


def __getattr__(name):
    # Imported on demand so `polylstm check` works without pytest installed.
    if name == "BackendConformance":
        from ._suite import BackendConformance

        return BackendConformance
    raise AttributeError(f"module 'polylstm.testing' has no attribute {name!r}")


# -- pytest plugin hooks (active with `pytest -p polylstm.testing`) ----------

def pytest_addoption(parser):
    group = parser.getgroup("polylstm", "polylstm conformance kit")
    group.addoption("--polylstm-backend", action="append", dest="polylstm_backend", default=[],
                    help="run the conformance kit against this backend (repeatable)")
    group.addoption("--polylstm-expect-fail", action="append", dest="polylstm_expect_fail", default=[],
                    help="declare an expected failure: CHECK_OR_CAPABILITY[=reason] (repeatable)")


def pytest_configure(config):
    # An explicitly named file is collected whatever its name, so the kit's
    # module needs no test_ prefix (and is never picked up by accident).
    if config.getoption("polylstm_backend"):
        config.args.append(os.path.join(os.path.dirname(__file__), "_selected.py"))


def pytest_generate_tests(metafunc):
    if "polylstm_backend" in metafunc.fixturenames:
        metafunc.parametrize("polylstm_backend", metafunc.config.getoption("polylstm_backend"))
        metafunc.parametrize("polylstm_check", list(CHECKS))
        metafunc.parametrize("polylstm_dtype", ["float32", "float64"])
