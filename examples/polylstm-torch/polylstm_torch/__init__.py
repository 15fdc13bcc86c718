"""polylstm-torch: a third-party polylstm plugin providing the backend ``torch``.

It uses nothing of polylstm but its public plugin API (:mod:`polylstm.backend`)
and registers through the ``polylstm.backends`` entry-point group declared in
this distribution's ``pyproject.toml``. Importing this module is cheap: torch
is imported only when the backend is first used (``load()``), and
``available()`` only asks importlib whether torch is installed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

from polylstm.backend import BackendInfo, hookimpl

__version__ = "0.1.0"


def _available():
    """None when torch is importable, else why not (never raises, never imports torch)."""
    try:
        if importlib.util.find_spec("torch") is None:
            return "torch not installed (pip install torch)"
    except (ImportError, ValueError) as exc:  # a broken install: report it, don't raise
        return f"cannot inspect torch: {exc}"
    return None


def _version():
    try:
        return f"torch {importlib.metadata.version('torch')}"
    except importlib.metadata.PackageNotFoundError:
        return None


def _load():
    from ._backend import TorchBackend

    return TorchBackend()


@hookimpl
def polylstm_register_backends(register):
    """Register the ``torch`` backend.

    auto_select=False: the backend lacks peepholes, so choosing it for users
    who did not name it could turn a working call into an UnsupportedFeatureError;
    it runs only when named (``backend="torch"``, ``use_backend("torch")``, ...).
    """
    register(
        BackendInfo(
            name="torch",
            load=_load,
            available=_available,
            priority=0,
            array_types=("numpy",),
            auto_select=False,
            version=_version(),
            description="PyTorch's fused LSTM (torch.lstm) on the CPU, backward by autograd; NumPy in/out",
        )
    )
