"""polylstm's Numba CPU backend, registered as a plugin named ``numba``.

Importing this package is cheap: numba is imported only when the backend is
first used (``load()``), and ``available()`` only asks importlib whether numba
and scipy are installed. It registers through the ``polylstm.backends``
entry-point group exactly as a third-party plugin would.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

from polylstm.backend import BackendInfo, hookimpl


def _available():
    """None when numba and scipy are importable, else why not (never raises)."""
    try:
        if importlib.util.find_spec("numba") is None:
            return "numba not installed"
        # numba's np.dot inside compiled code calls BLAS through scipy.
        if importlib.util.find_spec("scipy") is None:
            return "scipy not installed (numba needs it for BLAS)"
    except (ImportError, ValueError) as exc:  # broken installs: report, don't raise
        return f"cannot inspect numba/scipy: {exc}"
    return None


def _version():
    try:
        return f"numba {importlib.metadata.version('numba')}"
    except importlib.metadata.PackageNotFoundError:
        return None


def release_scratch() -> None:
    """Let go of the scratch memory (packed weights, the backward's da, ...)
    that the calling thread keeps from one call of the backend to the next
    (``_scratch``: fresh memory costs a page fault per 4 KB page). Imports
    no numba."""
    from ._scratch import release

    release()


def _load():
    from ._backend import NumbaBackend

    return NumbaBackend()


@hookimpl
def polylstm_register_backends(register):
    """Register the Numba backend (preferred over the NumPy reference on host arrays)."""
    register(
        BackendInfo(
            name="numba",
            load=_load,
            available=_available,
            priority=20,
            array_types=("numpy",),
            version=_version(),
            description="Numba CPU: compiled time loop, BLAS products, float32/float64",
        )
    )
