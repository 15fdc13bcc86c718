"""The contract between polylstm's core and a compute backend.

This module is the whole public API a backend plugin needs. A backend computes
one primitive: a single-layer, single-direction LSTM over a whole sequence,
forward (optionally recording a tape) and backward (BPTT from that tape). The
core validates and normalises every argument before a backend sees it, so a
backend may rely on the guarantees written in :meth:`Backend.forward`.

Shapes use T = time steps, B = batch, I = input size, H = hidden size.
Gate order is i, f, g, o with PyTorch's layout: row block ``k*H:(k+1)*H`` of
``w_ih (4H, I)``, ``w_hh (4H, H)`` and ``b (4H,)`` belongs to gate k.

The cell (``p`` are the optional peephole weights, rows i, f, o)::

    a   = x_t @ w_ih.T + h_{t-1} @ w_hh.T + b          # (B, 4H) -> a_i a_f a_g a_o
    i   = sigmoid(a_i + p_i * c_{t-1})
    f   = sigmoid(a_f + p_f * c_{t-1})
    g   = tanh(a_g)
    c_t = f * c_{t-1} + i * g
    o   = sigmoid(a_o + p_o * c_t)
    h_t = o * tanh(c_t)

Variable lengths: a step ``t >= lengths[b]`` leaves sequence b's state
unchanged and writes zeros to its output, gates and cell trajectory. A reverse
direction starts at each sequence's own last valid step ``lengths[b] - 1``
(PyTorch packed-sequence semantics).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import pluggy

PROJECT_NAME = "polylstm"
ENTRY_POINT_GROUP = "polylstm.backends"

#: Decorate a plugin's ``polylstm_register_backends`` function with this.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: Capabilities a backend may announce. The conformance kit expects a backend
#: to raise :class:`~polylstm.errors.UnsupportedFeatureError` (the core does it
#: for you) for any capability it does not announce.
ALL_CAPABILITIES = frozenset(
    {"float32", "float64", "lengths", "reverse", "peephole", "gates", "backward"}
)


@dataclasses.dataclass(frozen=True)
class BackendInfo:
    """What a plugin passes to ``register(...)`` to describe one backend.

    name:        unique backend name users select it by (``"numba"``).
    load:        zero-argument callable returning a :class:`Backend`; called
                 lazily at first use, so heavy imports (numba, cupy) go inside it.
    available:   zero-argument callable returning ``None`` when the backend can
                 run here, else a short reason (``"numba not installed"``,
                 ``"no CUDA device"``). Must be cheap and must not raise.
    priority:    higher wins automatic selection among backends that claim
                 the input arrays' type (numba 20 > numpy 10).
    array_types: root module names of the array types the backend computes on
                 natively (``("numpy",)`` or ``("cupy",)``).
    auto_select: False keeps the backend out of automatic selection (it is
                 used only when named), e.g. an emulation or debugging backend.
    version:     version string shown by ``polylstm backends``.
    description: one line shown by ``polylstm backends``.
    """

    name: str
    load: Callable[[], "Backend"]
    available: Callable[[], Optional[str]] = lambda: None
    priority: int = 0
    array_types: tuple = ("numpy",)
    auto_select: bool = True
    version: Optional[str] = None
    description: str = ""


@dataclasses.dataclass
class ForwardOutput:
    """What :meth:`Backend.forward` returns.

    y:      (T, B, H) outputs, zero at padded steps.
    h_n:    (B, H) hidden state after each sequence's last valid step.
    c_n:    (B, H) cell state after each sequence's last valid step.
    gates:  (T, B, 4H) post-activation gates i, f, g, o per step (zero at
            padded steps); required when ``store`` was True, else None.
    c:      (T, B, H) cell state after each step (zero at padded steps);
            required when ``store`` was True, else None.
    extras: backend-private values to keep on the tape (read back in
            :meth:`Backend.backward` through ``tape.extras``).
    """

    y: Any
    h_n: Any
    c_n: Any
    gates: Any = None
    c: Any = None
    extras: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Tape:
    """Everything backward needs, recorded by a forward call with ``keep_tape``.

    backend:  name of the backend that recorded it (backward runs there).
    x:        (T, B, I) input.            w_ih: (4H, I)   w_hh: (4H, H)
    h0, c0:   (B, H) initial state.        peephole: (3, H) or None
    lengths:  (B,) int64 NumPy array or None.   reverse: bool
    y:        (T, B, H) outputs (the hidden states; zero at padded steps).
    gates:    (T, B, 4H) post-activation i, f, g, o (zero at padded steps).
    c:        (T, B, H) cell state after each step (zero at padded steps).
    extras:   backend-private values from :attr:`ForwardOutput.extras`.

    The arrays are the backend's own (NumPy or CuPy); the tape holds references
    to the caller's inputs, never copies, and nothing writes into them.
    """

    backend: str
    x: Any
    w_ih: Any
    w_hh: Any
    h0: Any
    c0: Any
    peephole: Any
    lengths: Any
    reverse: bool
    y: Any
    gates: Any
    c: Any
    extras: dict = dataclasses.field(default_factory=dict)

    @property
    def shape(self) -> tuple:
        """(T, B, I, H) of the recorded call."""
        T, B, I = self.x.shape
        return T, B, I, self.w_hh.shape[1]


@dataclasses.dataclass
class Gradients:
    """What :meth:`Backend.backward` returns (and :func:`polylstm.lstm_backward`).

    dx: (T, B, I)   dw_ih: (4H, I)   dw_hh: (4H, H)   db: (4H,)
    dh0, dc0: (B, H)   dpeephole: (3, H), or None when the forward had none.
    ``db`` is the gradient of the single bias the primitive takes; a module
    with separate ``b_ih`` and ``b_hh`` uses it for both.
    """

    dx: Any
    dw_ih: Any
    dw_hh: Any
    db: Any
    dh0: Any
    dc0: Any
    dpeephole: Any = None


class Backend:
    """Base class of a loaded backend. Subclass it and override the two halves.

    Attributes a subclass sets:
      name:         the registered name.
      xp:           the array module its arrays come from (numpy, cupy).
      capabilities: frozenset, a subset of :data:`ALL_CAPABILITIES`.
    """

    name: str = "unnamed"
    xp: Any = None
    capabilities: frozenset = ALL_CAPABILITIES

    def asarray(self, array: Any) -> Any:
        """Convert ``array`` to this backend's array type (same dtype).

        Called by the core only when the user named this backend explicitly and
        passed arrays of another type; the default handles NumPy-based backends
        (a CuPy array is copied to the host with ``.get()``).
        """
        import numpy

        if hasattr(array, "get") and type(array).__module__.split(".")[0] == "cupy":
            array = array.get()
        return numpy.asarray(array)

    def forward(self, x, w_ih, w_hh, b, h0, c0, peephole, lengths, reverse, store) -> ForwardOutput:
        """Run the LSTM over the whole sequence.

        The core guarantees: every float array is C-contiguous, of this
        backend's array type, and of one dtype (float32 or float64, announced
        in ``capabilities``); ``b (4H,)``, ``h0 (B, H)`` and ``c0 (B, H)`` are
        always given (zeros when the user gave none); ``peephole (3, H)`` or
        None; ``lengths`` is None or a host NumPy int64 array ``(B,)`` with
        values in 1..T; ``store`` asks for ``gates`` and ``c`` in the output.
        A backend must not write into any argument.
        """
        raise NotImplementedError

    def backward(self, tape: Tape, dy, dh_n, dc_n) -> Gradients:
        """BPTT from ``tape``. ``dy (T, B, H)``, ``dh_n (B, H)``, ``dc_n (B, H)``
        are always arrays (zeros when the user omitted them), of the tape's
        dtype and array type. Values of ``dy`` at padded steps are ignored.
        """
        raise NotImplementedError
