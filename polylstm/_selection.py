"""Which backend runs a call.

Precedence, highest first:
1. the ``backend=`` keyword of the call (or module);
2. ``with polylstm.use_backend(name):`` (a context variable: per thread and per
   asyncio task, nestable);
3. ``polylstm.set_backend(name)`` (process-wide);
4. the ``POLYLSTM_BACKEND`` environment variable, read when a call needs it
   (never at import);
5. the input arrays' type: a CuPy array goes to the best backend claiming CuPy
   arrays;
6. the available backend with the highest priority for host (NumPy) arrays.

Rules 1-4 are an explicit choice: arrays of another type are converted to the
chosen backend's (e.g. NumPy to CuPy), and results come back in its type.
Rules 5-6 never move data between host and device.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from typing import Iterable, Optional

import numpy as np

from ._registry import REGISTRY
from .backend import Backend
from .errors import BackendUnavailableError, InputError

_context_backend: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar(
    "polylstm_backend", default=None
)
_global_backend: Optional[str] = None
_global_lock = threading.Lock()


def set_backend(name: Optional[str]) -> None:
    """Choose the process-wide default backend (``None`` clears the choice).

    Raises UnknownBackendError / BackendUnavailableError at once, so a typo
    fails here rather than at the first call.
    """
    global _global_backend
    if name is not None:
        REGISTRY.get(name)
    with _global_lock:
        _global_backend = name


def get_backend_choice() -> Optional[str]:
    """The explicitly chosen backend name in force here (rules 2-4), or None."""
    return _context_backend.get() or _global_backend or (os.environ.get("POLYLSTM_BACKEND") or None)


@contextlib.contextmanager
def use_backend(name: str):
    """Run the block with backend ``name`` (overrides set_backend, nestable, per thread)."""
    REGISTRY.get(name)
    token = _context_backend.set(name)
    try:
        yield REGISTRY.get(name)
    finally:
        _context_backend.reset(token)


def array_type_of(array) -> str:
    """Root module of an array's type: 'numpy', 'cupy', 'torch', ..."""
    return type(array).__module__.split(".")[0]


def resolve(explicit: Optional[str], arrays: Iterable[tuple[str, object]]) -> tuple[Backend, bool]:
    """Pick the backend for a call.

    explicit: the call's ``backend=`` keyword. arrays: (argument name, array)
    pairs, Nones skipped. Returns (backend, chosen_explicitly).
    """
    name = explicit or get_backend_choice()
    if name is not None:
        return REGISTRY.get(name), True

    kinds: dict[str, str] = {}
    for arg, array in arrays:
        if type(array) is np.ndarray:  # the common case, without the module lookup
            kinds.setdefault("numpy", arg)
        elif array is not None and hasattr(array, "shape"):
            kinds.setdefault(array_type_of(array), arg)
    device_kinds = [k for k in kinds if k != "numpy"]
    if len(device_kinds) > 1 or (device_kinds and "numpy" in kinds):
        described = ", ".join(f"{arg} is a {kind} array" for kind, arg in kinds.items())
        raise InputError(
            f"arrays of different types in one call ({described}); polylstm does not move data "
            "between host and device on its own: convert them, or name a backend explicitly"
        )
    kind = device_kinds[0] if device_kinds else "numpy"
    candidates = REGISTRY.candidates(kind)
    if not candidates:
        available = ", ".join(REGISTRY.available_names()) or "none"
        raise BackendUnavailableError(
            f"no available backend computes on {kind} arrays; available backends: {available} "
            f"(name one with backend=... to have the arrays converted)"
        )
    # A candidate that looked available may still fail to load (a broken
    # install): fall through to the next one rather than failing the call.
    first_error = None
    for candidate in candidates:
        try:
            return REGISTRY.get(candidate), False
        except BackendUnavailableError as exc:
            first_error = first_error or exc
    raise first_error


def reset_for_tests() -> None:
    global _global_backend
    with _global_lock:
        _global_backend = None
