"""pytest side of the conformance kit: the class a backend author subclasses.

::

    # tests/test_conformance_mybackend.py
    from polylstm.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        backend = "mybackend"
        expected_failures = {"peephole": "peepholes not implemented"}

Every check of :data:`polylstm.testing.CHECKS` becomes one test per dtype.
"""

from __future__ import annotations

import pytest

from ._checks import CHECKS, run_check

DTYPES = ("float32", "float64")


class BackendConformance:
    """Subclass with ``backend = "name"``; optionally set ``expected_failures``
    (check name, capability or dtype -> reason) and ``tolerances``
    (dtype -> relative error, only to loosen a backend's fast-math float32)."""

    backend: str = ""
    expected_failures: dict = {}
    tolerances: dict = {}

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("check", list(CHECKS))
    def test_conformance(self, check, dtype):
        if not self.backend:
            pytest.fail(f"{type(self).__name__} must set the class attribute 'backend'")
        result = run_check(self.backend, check, dtype, expected_failures=self.expected_failures,
                           tolerances=self.tolerances)
        if result.status == "xfail":
            pytest.xfail(result.message)
        if result.status != "pass":
            pytest.fail(f"[{self.backend}] {check} ({dtype}): {result.message}", pytrace=False)
