"""The conformance kit against ``cupy-emulated``: the CuPy backend's orchestration
and its unchanged .cu kernels, compiled for the CPU. Every check, both dtypes,
default tolerances, no expected failures."""

import pytest

from polylstm_cupy._emulation import find_cxx

if find_cxx() is None:
    pytest.skip("no C++ compiler (g++) for the CuPy backend's CPU emulation", allow_module_level=True)

from polylstm.testing import BackendConformance  # noqa: E402


class TestCupyEmulatedConformance(BackendConformance):
    backend = "cupy-emulated"
