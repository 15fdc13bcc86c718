"""The functional API: one layer, one direction, on any backend.

The core validates and normalises the arguments, picks the backend (see
:mod:`polylstm._selection`) and hands it the whole sequence; it never computes
a gate itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from . import _validation as v
from ._registry import REGISTRY
from ._selection import array_type_of, resolve
from .backend import Gradients, Tape
from .errors import InputError


@dataclasses.dataclass
class GateTrajectories:
    """Post-activation gates and cell state over time, each (T, B, H).

    Zero at padded steps (t >= lengths[b]). Views into the forward's record:
    copy before writing into them.
    """

    i: Any
    f: Any
    g: Any
    o: Any
    c: Any


@dataclasses.dataclass
class LSTMOutput:
    """Result of :func:`lstm_forward`.

    y: (T, B, H) outputs (zero at padded steps); h_n, c_n: (B, H) state after
    each sequence's last valid step; tape: the record for :func:`lstm_backward`
    (when keep_tape); gates: :class:`GateTrajectories` (when return_gates);
    backend: name of the backend that ran.
    """

    y: Any
    h_n: Any
    c_n: Any
    tape: Optional[Tape] = None
    gates: Optional[GateTrajectories] = None
    backend: str = ""


def _to_backend(backend, explicit: bool, name: str, array, native: str):
    """Arrays of another type reach a backend only when the user chose it by
    name. native: the root module of the backend's arrays ("numpy", "cupy")."""
    if array is None:
        return None
    if type(array) is not np.ndarray or native != "numpy":
        if array_type_of(array) != native:
            if not explicit:  # resolution guarantees this; kept as a guard against silent moves
                raise InputError(f"{name} is a {array_type_of(array)} array but backend {backend.name!r} computes on {native} arrays")
            array = backend.asarray(array)
    return backend.xp.ascontiguousarray(array)


#: The array arguments of lstm_forward, in order, and the shapes the others
#: must have, as (name, index into the arrays, meaning).
_ARRAY_NAMES = ("x", "w_ih", "w_hh", "b", "h0", "c0", "peephole")
_SHAPED = (("w_ih", 1, "(4H, I)"), ("w_hh", 2, "(4H, H)"), ("b", 3, "(4H,)"), ("h0", 4, "(B, H)"),
           ("c0", 5, "(B, H)"), ("peephole", 6, "(3, H)"))


def lstm_forward(x, w_ih, w_hh, b=None, h0=None, c0=None, *, peephole=None, lengths=None,
                 reverse=False, keep_tape=False, return_gates=False, backend=None) -> LSTMOutput:
    """Run one LSTM layer in one direction over a whole sequence.

    x: (T, B, I)   w_ih: (4H, I)   w_hh: (4H, H)   b: (4H,) or None (zero bias)
    h0, c0: (B, H) or None (zeros)   peephole: (3, H) or None (rows i, f, o)
    lengths: (B,) integers in 1..T or None (all sequences have length T)
    reverse: run from the last valid step of each sequence back to step 0.
    keep_tape: record what :func:`lstm_backward` needs (``result.tape``).
    return_gates: return the gate trajectories (``result.gates``).
    backend: backend name; overrides every other way of choosing one.

    Gate order is i, f, g, o (PyTorch's layout). All float arrays share x's dtype
    (float32 or float64). Inputs are never modified.
    """
    arrays = [v.as_array(name, value) for name, value in
              zip(_ARRAY_NAMES, (x, w_ih, w_hh, b, h0, c0, peephole))]
    chosen, explicit = resolve(backend, zip(_ARRAY_NAMES, arrays))

    x = arrays[0]
    v.check_rank("x", x, 3, "(T, B, I)")
    dtype = v.check_float("x", x)
    T, B, I = x.shape
    if min(T, B, I) < 1:
        raise InputError(f"x must have T, B, I >= 1, got shape {tuple(x.shape)}")
    w_ih = arrays[1]
    v.check_rank("w_ih", w_ih, 2, "(4H, I)")
    if w_ih.shape[0] % 4 or w_ih.shape[0] == 0:
        raise InputError(f"w_ih must have shape (4H, I) with 4H a positive multiple of 4, got {tuple(w_ih.shape)}")
    H = w_ih.shape[0] // 4
    expected = ((4 * H, I), (4 * H, H), (4 * H,), (B, H), (B, H), (3, H))
    for (name, index, meaning), shape in zip(_SHAPED, expected):
        if arrays[index] is not None:
            v.check_float(name, arrays[index], dtype)
            v.check_shape(name, arrays[index], shape, meaning)
    host_lengths = v.validate_lengths(lengths, T, B)
    store = bool(keep_tape or return_gates)
    v.check_capabilities(chosen, dtype, peephole=arrays[6] is not None, lengths=host_lengths is not None,
                         reverse=bool(reverse), store_gates=bool(return_gates), keep_tape=bool(keep_tape))

    native = chosen.xp.__name__.split(".")[0]
    x, w_ih, w_hh, b, h0, c0, peephole = (
        _to_backend(chosen, explicit, name, value, native) for name, value in zip(_ARRAY_NAMES, arrays))
    xp = chosen.xp
    if b is None:
        b = xp.zeros((4 * H,), dtype=dtype)
    if h0 is None:
        h0 = xp.zeros((B, H), dtype=dtype)
    if c0 is None:
        c0 = xp.zeros((B, H), dtype=dtype)

    out = chosen.forward(x, w_ih, w_hh, b, h0, c0, peephole, host_lengths, bool(reverse), store)

    tape = None
    if keep_tape:
        tape = Tape(backend=chosen.name, x=x, w_ih=w_ih, w_hh=w_hh, h0=h0, c0=c0, peephole=peephole,
                    lengths=host_lengths, reverse=bool(reverse), y=out.y, gates=out.gates, c=out.c,
                    extras=dict(out.extras))
    gates = None
    if return_gates:
        gates = GateTrajectories(*(out.gates[:, :, k * H:(k + 1) * H] for k in range(4)), c=out.c)
    return LSTMOutput(y=out.y, h_n=out.h_n, c_n=out.c_n, tape=tape, gates=gates, backend=chosen.name)


def lstm_backward(tape: Tape, dy=None, dh_n=None, dc_n=None) -> Gradients:
    """Backpropagation through time from a tape recorded by :func:`lstm_forward`.

    tape: ``lstm_forward(..., keep_tape=True).tape``
    dy: (T, B, H) gradient of the loss w.r.t. y (values at padded steps are ignored)
    dh_n, dc_n: (B, H) gradients w.r.t. the final states. Any may be None (zero).
    Returns :class:`~polylstm.backend.Gradients`: dx (T, B, I), dw_ih (4H, I),
    dw_hh (4H, H), db (4H,), dh0, dc0 (B, H), dpeephole (3, H) or None.
    Runs on the backend that recorded the tape.
    """
    if not isinstance(tape, Tape):
        raise InputError(
            f"tape must be the Tape of lstm_forward(..., keep_tape=True), got {type(tape).__name__}"
        )
    chosen = REGISTRY.get(tape.backend)
    T, B, _, H = tape.shape
    dtype = v.check_float("tape.x", tape.x)
    native = array_type_of(tape.x)
    incoming = {}
    for name, value, shape, meaning in (("dy", dy, (T, B, H), "(T, B, H)"), ("dh_n", dh_n, (B, H), "(B, H)"),
                                        ("dc_n", dc_n, (B, H), "(B, H)")):
        if value is None:
            incoming[name] = chosen.xp.zeros(shape, dtype=tape.x.dtype)
            continue
        value = v.as_array(name, value)
        if array_type_of(value) != native:
            raise InputError(f"{name} is a {array_type_of(value)} array but the tape's arrays are {native} arrays "
                             f"(backend {tape.backend!r}); convert it first")
        v.check_float(name, value, dtype)
        v.check_shape(name, value, shape, meaning)
        incoming[name] = chosen.xp.ascontiguousarray(value)
    return chosen.backward(tape, incoming["dy"], incoming["dh_n"], incoming["dc_n"])
