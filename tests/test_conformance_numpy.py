"""The reference backend runs the conformance kit like any other backend.

In float64 this compares the reference with itself (it must be exact and
deterministic); in float32 it checks the reference's own float32 path against
its float64 result.
"""

from polylstm.testing import BackendConformance


class TestNumpyReference(BackendConformance):
    backend = "numpy"
