"""Collected only through ``pytest -p polylstm.testing --polylstm-backend NAME``:
runs the conformance kit against each named backend."""

from __future__ import annotations

import pytest

from ._checks import run_check


def test_conformance(polylstm_backend, polylstm_check, polylstm_dtype, request):
    declared = request.config.getoption("polylstm_expect_fail") or []
    expected = dict(item.split("=", 1) if "=" in item else (item, "declared on the command line") for item in declared)
    result = run_check(polylstm_backend, polylstm_check, polylstm_dtype, expected_failures=expected)
    if result.status == "xfail":
        pytest.xfail(result.message)
    if result.status != "pass":
        pytest.fail(f"[{polylstm_backend}] {polylstm_check} ({polylstm_dtype}): {result.message}", pytrace=False)
