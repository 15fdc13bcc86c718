"""The conformance kit against the Numba backend: every check, both dtypes,
default tolerances, no expected failures."""

import pytest

pytest.importorskip("numba")
pytest.importorskip("scipy")

from polylstm.testing import BackendConformance  # noqa: E402


class TestNumbaConformance(BackendConformance):
    backend = "numba"
