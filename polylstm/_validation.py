"""Argument checks shared by the functional API and the module.

Every failure names the argument and states the expected and the actual
shape, dtype or value. Nothing here writes into an input.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError, UnsupportedFeatureError

FLOAT_DTYPES = ("float32", "float64")
# dtype -> name by dictionary: str(dtype) costs microseconds, and a call checks
# up to seven arrays (measured: a third of the core's per-call overhead).
_FLOAT_NAMES = {np.dtype(name): name for name in FLOAT_DTYPES}


def as_array(name: str, value):
    """Arrays pass through; anything else (lists, scalars) becomes a NumPy array.
    NumPy arrays are recognised by type first: the common case, and the
    core's checks are per-call overhead (7-11 us of a 0.2 ms T200-B1-I32-H64
    forward)."""
    if value is None or type(value) is np.ndarray:
        return value
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return value
    try:
        return np.asarray(value)
    except Exception as exc:
        raise InputError(f"{name} must be an array, got {type(value).__name__} ({exc})") from None


def check_float(name: str, array, dtype=None) -> str:
    """Check ``array`` holds float32 or float64 (and ``dtype`` if given); return its dtype name."""
    try:
        actual = _FLOAT_NAMES.get(array.dtype)
    except TypeError:  # an unhashable dtype object: certainly not one of ours
        actual = None
    if actual is None:
        actual = str(array.dtype)
        raise InputError(f"{name} must be a floating array (float32 or float64), got dtype {actual}")
    if dtype is not None and actual != dtype:
        raise InputError(
            f"{name} has dtype {actual} but x has dtype {dtype}; all arrays of one call share a dtype "
            f"(convert with .astype({dtype!r}))"
        )
    return actual


def check_shape(name: str, array, expected: tuple, meaning: str) -> None:
    """``expected`` holds ints; ``meaning`` is the symbolic shape, e.g. '(4H, I)'."""
    if tuple(array.shape) != tuple(expected):
        raise InputError(
            f"{name} must have shape {meaning} = {tuple(expected)}, got {tuple(array.shape)}"
        )


def check_rank(name: str, array, rank: int, meaning: str) -> None:
    if array.ndim != rank:
        raise InputError(f"{name} must have {rank} dimensions {meaning}, got shape {tuple(array.shape)}")


def validate_lengths(lengths, T: int, B: int):
    """Return lengths as a host int64 array (B,) with values in 1..T, or None.

    lengths: (B,) integers. CuPy arrays are read back to the host (B values).
    """
    if lengths is None:
        return None
    if hasattr(lengths, "get") and type(lengths).__module__.split(".")[0] == "cupy":
        lengths = lengths.get()
    raw = np.asarray(lengths)
    if raw.dtype == bool or not (np.issubdtype(raw.dtype, np.integer)):
        raise InputError(f"lengths must hold integers, got dtype {raw.dtype}")
    if raw.shape != (B,):
        raise InputError(f"lengths must have shape (B,) = ({B},), got {tuple(raw.shape)}")
    if raw.size and raw.min() < 1:
        raise InputError(
            f"lengths must be at least 1 (every sequence needs one step), got minimum {int(raw.min())}"
        )
    if raw.size and raw.max() > T:
        raise InputError(f"lengths must be at most T = {T}, got maximum {int(raw.max())}")
    return np.ascontiguousarray(raw, dtype=np.int64)


def check_capabilities(backend, dtype: str, *, peephole: bool, lengths: bool, reverse: bool,
                       store_gates: bool, keep_tape: bool) -> None:
    """Raise UnsupportedFeatureError for a feature the backend does not announce."""
    wanted = {dtype: True, "peephole": peephole, "lengths": lengths, "reverse": reverse,
              "gates": store_gates, "backward": keep_tape}
    missing = [feature for feature, used in wanted.items() if used and feature not in backend.capabilities]
    if missing:
        raise UnsupportedFeatureError(
            f"backend {backend.name!r} does not support {', '.join(missing)} "
            f"(it supports {', '.join(sorted(backend.capabilities))})"
        )
