"""Weight converters between polylstm (PyTorch layout) and other LSTM layouts.

This is the one place that knows other frameworks' gate orders. polylstm's
native layout is PyTorch's: gate order **i, f, g, o**, ``w_ih (4H, I)``,
``w_hh (4H, H)``, two biases ``b_ih, b_hh (4H,)``, peepholes ``(3, H)`` rows
i, f, o. (``g`` is the candidate cell input; other projects call it ``c`` or
``z``.)

=========  ===========  ==========================================================
layout     gate order   arrays
=========  ===========  ==========================================================
pytorch    i, f, g, o   weight_ih (4H, I), weight_hh (4H, H), bias_ih, bias_hh (4H,)
keras      i, f, c, o   kernel (I, 4H), recurrent_kernel (H, 4H), bias (4H,)
onnx       i, o, f, c   W (D, 4H, I), R (D, 4H, H), B (D, 8H) = [Wb, Rb], P (D, 3H) rows i, o, f
haste      i, g, f, o   kernel (I, 4H), recurrent_kernel (H, 4H), bias (4H,)
=========  ===========  ==========================================================

Keras's order is the native one under another name; its arrays are
transposed. Layouts with a single bias (Keras, haste) receive
``b_ih + b_hh``; converting back puts the whole bias in ``b_ih`` and zeros in
``b_hh`` (the sum, which is all the cell uses, is preserved exactly).

Every function takes and returns NumPy-like arrays, never modifies its inputs,
and returns new arrays.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .errors import InputError

__all__ = [
    "GATE_ORDERS",
    "reorder_gates",
    "to_keras",
    "from_keras",
    "to_onnx",
    "from_onnx",
    "to_haste",
    "from_haste",
]

#: Gate order of each layout, as letters (``c`` and ``g`` both name the cell input).
GATE_ORDERS = {"pytorch": "ifgo", "keras": "ifco", "onnx": "iofc", "haste": "igfo"}

_CANONICAL = {"i": "i", "f": "f", "g": "g", "c": "g", "z": "g", "o": "o"}


def _order(order: str) -> str:
    letters = GATE_ORDERS.get(order, order)
    if not isinstance(letters, str) or len(letters) != 4:
        raise InputError(f"gate order: expected a layout name ({', '.join(GATE_ORDERS)}) "
                         f"or four letters from i, f, g/c/z, o; got {order!r}")
    canonical = "".join(_CANONICAL.get(ch, "?") for ch in letters)
    if sorted(canonical) != sorted("ifgo"):
        raise InputError(f"gate order: expected each of i, f, g (or c/z), o exactly once, got {order!r}")
    return canonical


def reorder_gates(array: Any, source: str, target: str, axis: int = 0):
    """Permute the four gate blocks of ``array`` along ``axis``.

    array:  any shape whose size along ``axis`` is 4H (e.g. (4H, I), (I, 4H), (4H,)).
    source, target: layout names (``"pytorch"``, ``"keras"``, ``"onnx"``,
            ``"haste"``) or letter strings such as ``"iofc"``.
    Returns a new array; ``reorder_gates(reorder_gates(a, s, t), t, s)`` equals ``a``.
    """
    src, dst = _order(source), _order(target)
    array = np.asarray(array)
    if array.ndim == 0:
        raise InputError("array: expected at least one axis holding the 4 gate blocks")
    n = array.shape[axis]
    if n % 4:
        raise InputError(f"array: axis {axis} must have size 4H (a multiple of 4), got {n}")
    blocks = np.split(array, 4, axis=axis)
    by_gate = dict(zip(src, blocks))
    return np.concatenate([by_gate[g] for g in dst], axis=axis)


def _check_pytorch(w_ih, w_hh, b_ih, b_hh):
    w_ih, w_hh = np.asarray(w_ih), np.asarray(w_hh)
    if w_hh.ndim != 2 or w_hh.shape[0] != 4 * w_hh.shape[1]:
        raise InputError(f"weight_hh: expected shape (4H, H), got {w_hh.shape}")
    H = w_hh.shape[1]
    if w_ih.ndim != 2 or w_ih.shape[0] != 4 * H:
        raise InputError(f"weight_ih: expected shape (4H, I) = ({4 * H}, I), got {w_ih.shape}")
    for name, b in (("bias_ih", b_ih), ("bias_hh", b_hh)):
        if b is not None and np.shape(b) != (4 * H,):
            raise InputError(f"{name}: expected shape ({4 * H},), got {np.shape(b)}")
    return w_ih, w_hh, H


def _summed_bias(b_ih, b_hh, H, dtype):
    if b_ih is None and b_hh is None:
        return None
    total = np.zeros(4 * H, dtype)
    for b in (b_ih, b_hh):
        if b is not None:
            total = total + np.asarray(b)
    return total


def _split_kernels(kernel, recurrent_kernel, bias, order):
    kernel, recurrent_kernel = np.asarray(kernel), np.asarray(recurrent_kernel)
    if recurrent_kernel.ndim != 2 or recurrent_kernel.shape[1] != 4 * recurrent_kernel.shape[0]:
        raise InputError(f"recurrent_kernel: expected shape (H, 4H), got {recurrent_kernel.shape}")
    H = recurrent_kernel.shape[0]
    if kernel.ndim != 2 or kernel.shape[1] != 4 * H:
        raise InputError(f"kernel: expected shape (I, 4H) = (I, {4 * H}), got {kernel.shape}")
    if bias is not None and np.shape(bias) != (4 * H,):
        raise InputError(f"bias: expected shape ({4 * H},), got {np.shape(bias)}")
    w_ih = reorder_gates(kernel, order, "pytorch", axis=1).T.copy()
    w_hh = reorder_gates(recurrent_kernel, order, "pytorch", axis=1).T.copy()
    if bias is None:
        return w_ih, w_hh, None, None
    b_ih = reorder_gates(bias, order, "pytorch")
    return w_ih, w_hh, b_ih, np.zeros_like(b_ih)


def _join_kernels(w_ih, w_hh, b_ih, b_hh, order):
    w_ih, w_hh, H = _check_pytorch(w_ih, w_hh, b_ih, b_hh)
    kernel = reorder_gates(w_ih, "pytorch", order, axis=0).T.copy()
    recurrent_kernel = reorder_gates(w_hh, "pytorch", order, axis=0).T.copy()
    bias = _summed_bias(b_ih, b_hh, H, w_ih.dtype)
    if bias is not None:
        bias = reorder_gates(bias, "pytorch", order)
    return kernel, recurrent_kernel, bias


def to_keras(w_ih, w_hh, b_ih=None, b_hh=None):
    """PyTorch layout -> Keras ``LSTM`` weights ``(kernel (I, 4H), recurrent_kernel (H, 4H), bias (4H,) or None)``.

    bias is ``b_ih + b_hh``; None when both are None (Keras ``use_bias=False``).
    """
    return _join_kernels(w_ih, w_hh, b_ih, b_hh, "keras")


def from_keras(kernel, recurrent_kernel, bias=None):
    """Keras ``LSTM`` weights -> ``(w_ih (4H, I), w_hh (4H, H), b_ih (4H,), b_hh (4H,))``.

    kernel: (I, 4H), recurrent_kernel: (H, 4H), bias: (4H,) or None (then both
    returned biases are None). The Keras bias goes to ``b_ih``; ``b_hh`` is zero.
    """
    return _split_kernels(kernel, recurrent_kernel, bias, "keras")


def to_haste(w_ih, w_hh, b_ih=None, b_hh=None):
    """PyTorch layout -> haste ``LSTM`` ``(kernel (I, 4H), recurrent_kernel (H, 4H), bias (4H,))``, gates i, g, f, o."""
    return _join_kernels(w_ih, w_hh, b_ih, b_hh, "haste")


def from_haste(kernel, recurrent_kernel, bias=None):
    """haste ``LSTM`` weights (i, g, f, o) -> ``(w_ih, w_hh, b_ih, b_hh)`` in PyTorch layout."""
    return _split_kernels(kernel, recurrent_kernel, bias, "haste")


def to_onnx(directions: list):
    """PyTorch-layout weights of each direction -> ONNX ``LSTM`` inputs ``(W, R, B, P)``.

    directions: a list (length D = 1 or 2, forward first) of dicts with keys
        ``w_ih (4H, I)``, ``w_hh (4H, H)``, optional ``b_ih``, ``b_hh (4H,)``,
        optional ``peephole (3, H)`` rows i, f, o.
    Returns W (D, 4H, I), R (D, 4H, H), B (D, 8H) or None, P (D, 3H) or None,
    gate order i, o, f, c; peephole order i, o, f.
    """
    if not directions or len(directions) > 2:
        raise InputError(f"directions: expected 1 or 2 dicts, got {len(directions) if directions else 0}")
    Ws, Rs, Bs, Ps = [], [], [], []
    has_bias = has_peep = None
    for d, params in enumerate(directions):
        w_ih, w_hh, H = _check_pytorch(params["w_ih"], params["w_hh"], params.get("b_ih"), params.get("b_hh"))
        Ws.append(reorder_gates(w_ih, "pytorch", "onnx"))
        Rs.append(reorder_gates(w_hh, "pytorch", "onnx"))
        bias = params.get("b_ih") is not None or params.get("b_hh") is not None
        peep = params.get("peephole") is not None
        if has_bias is None:
            has_bias, has_peep = bias, peep
        elif (bias, peep) != (has_bias, has_peep):
            raise InputError(f"directions[{d}]: every direction must have the same bias/peephole arrays")
        if bias:
            zeros = np.zeros(4 * H, w_ih.dtype)
            b_ih = zeros if params.get("b_ih") is None else np.asarray(params["b_ih"])
            b_hh = zeros if params.get("b_hh") is None else np.asarray(params["b_hh"])
            Bs.append(np.concatenate([reorder_gates(b_ih, "pytorch", "onnx"),
                                      reorder_gates(b_hh, "pytorch", "onnx")]))
        if peep:
            p = np.asarray(params["peephole"])
            if p.shape != (3, H):
                raise InputError(f"directions[{d}]['peephole']: expected shape (3, {H}), got {p.shape}")
            Ps.append(np.concatenate([p[0], p[2], p[1]]))  # i, f, o -> i, o, f
    return (np.stack(Ws), np.stack(Rs), np.stack(Bs) if has_bias else None,
            np.stack(Ps) if has_peep else None)


def from_onnx(W, R, B: Optional[Any] = None, P: Optional[Any] = None) -> list:
    """ONNX ``LSTM`` inputs -> one dict per direction in PyTorch layout.

    W: (D, 4H, I), R: (D, 4H, H), B: (D, 8H) or None, P: (D, 3H) or None.
    Returns [{"w_ih", "w_hh", "b_ih", "b_hh", "peephole"}, ...] (biases and
    peephole None when absent). ONNX's separate Wb and Rb map to b_ih and b_hh.
    """
    W, R = np.asarray(W), np.asarray(R)
    if R.ndim != 3 or R.shape[1] != 4 * R.shape[2]:
        raise InputError(f"R: expected shape (D, 4H, H), got {R.shape}")
    D, _, H = R.shape
    if W.ndim != 3 or W.shape[:2] != (D, 4 * H):
        raise InputError(f"W: expected shape (D, 4H, I) = ({D}, {4 * H}, I), got {W.shape}")
    if B is not None and np.shape(B) != (D, 8 * H):
        raise InputError(f"B: expected shape ({D}, {8 * H}), got {np.shape(B)}")
    if P is not None and np.shape(P) != (D, 3 * H):
        raise InputError(f"P: expected shape ({D}, {3 * H}), got {np.shape(P)}")
    out = []
    for d in range(D):
        params = {"w_ih": reorder_gates(W[d], "onnx", "pytorch"),
                  "w_hh": reorder_gates(R[d], "onnx", "pytorch"),
                  "b_ih": None, "b_hh": None, "peephole": None}
        if B is not None:
            b = np.asarray(B[d])
            params["b_ih"] = reorder_gates(b[:4 * H], "onnx", "pytorch")
            params["b_hh"] = reorder_gates(b[4 * H:], "onnx", "pytorch")
        if P is not None:
            p = np.asarray(P[d])
            params["peephole"] = np.stack([p[:H], p[2 * H:], p[H:2 * H]])  # i, o, f -> i, f, o
        out.append(params)
    return out
