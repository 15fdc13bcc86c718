"""polylstm's NumPy reference backend, registered as a plugin named ``numpy``.

It registers through the ``polylstm.backends`` entry-point group exactly as a
third-party plugin would, using only polylstm's public API.
"""

from __future__ import annotations

from polylstm.backend import BackendInfo, hookimpl


def _load():
    from .reference import NumpyReferenceBackend

    return NumpyReferenceBackend()


def _version():
    import numpy

    return f"numpy {numpy.__version__}"


@hookimpl
def polylstm_register_backends(register):
    """Register the reference backend (always available: NumPy is a dependency)."""
    register(
        BackendInfo(
            name="numpy",
            load=_load,
            priority=10,
            array_types=("numpy",),
            version=_version(),
            description="NumPy reference: the readable specification, float64-exact",
        )
    )
