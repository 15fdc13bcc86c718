"""The LSTM module: layers, directions, dropout and parameters on top of the primitive.

:class:`LSTM` is to :func:`polylstm.lstm_forward` what ``torch.nn.LSTM`` is to
a single cell loop: it owns the parameters (under PyTorch's names, so a
PyTorch ``state_dict`` converted with ``.numpy()`` loads as it is) and
composes layers and directions from the one-layer, one-direction primitive. It
never computes a gate itself; whichever backend runs the primitive runs the
whole module.

Shapes (T time steps, B batch, I input size, H hidden size, L layers,
D directions = 2 if bidirectional else 1):

* ``x``: (T, B, I), or (B, T, I) with ``batch_first=True``;
* ``y``: (T, B, D*H) (or (B, T, D*H)): the last layer's outputs, forward
  direction in ``y[..., :H]``, reverse in ``y[..., H:]``; zero at padded steps;
* ``state = (h0, c0)`` and ``(h_n, c_n)``: each (L*D, B, H), index
  ``layer * D + direction``, as in PyTorch (never batch-first).

Parameters of layer k (``sfx`` is ``""`` or ``"_reverse"``):
``weight_ih_l{k}{sfx}`` (4H, I_k) with I_0 = I and I_k = D*H above,
``weight_hh_l{k}{sfx}`` (4H, H), ``bias_ih_l{k}{sfx}`` and
``bias_hh_l{k}{sfx}`` (4H,) when ``bias``, and ``weight_peephole_l{k}{sfx}``
(3, H), rows i, f, o, when ``peephole``. Gate order i, f, g, o.

Host and device: the parameters live in the array type of the module's
backend. With ``backend=None`` (automatic selection) they are host NumPy
arrays, and a CuPy input is refused rather than copied: call
``lstm.to("cupy")`` first. Naming a backend (``LSTM(..., backend="cupy")`` or
``lstm.to("cupy")``) is an explicit choice: the parameters move to it once,
and inputs of another array type are converted on each call. Nothing moves
between host and device otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import warnings
import zipfile
from typing import Any, Mapping, Optional

import numpy as np

from . import init as _init
from ._selection import array_type_of
from .errors import InputError
from .functional import GateTrajectories, lstm_backward, lstm_forward
from .nn import Grads, _check_state, _to_host

__all__ = ["LSTM", "LSTMTape", "LSTMGradients", "FILE_FORMAT", "FILE_FORMAT_VERSION"]

FILE_FORMAT = "polylstm.LSTM"
FILE_FORMAT_VERSION = 1
_CONFIG_KEY = "__polylstm_config__"
_DTYPES = ("float32", "float64")


@dataclasses.dataclass
class LSTMTape:
    """What :meth:`LSTM.forward` records for :meth:`LSTM.backward`.

    tapes:  tapes[layer][direction] — the functional :class:`polylstm.Tape` of each run.
    masks:  masks[layer] — the inverted-dropout mask applied to layer ``layer``'s
            output (T, B, D*H), already scaled by 1/(1-p), or None (no dropout
            there). Length L-1: the last layer's output is never dropped.
    gates:  {(layer, direction): GateTrajectories} when ``return_gates``, else None.
    batch_first, shape (T, B): the layout of the recorded call.

    The tapes hold references to the module's parameter arrays: run backward
    before an optimizer updates them.
    """

    tapes: list
    masks: list
    gates: Optional[dict]
    batch_first: bool
    shape: tuple
    num_directions: int
    hidden_size: int

    @property
    def backend(self) -> str:
        """Name of the backend that ran the forward (and will run backward)."""
        return self.tapes[0][0].backend


class LSTMGradients(Grads):
    """Gradients from :meth:`LSTM.backward`.

    The mapping holds one gradient per parameter, under the parameter's name
    (hand it to an optimizer or to :func:`polylstm.nn.clip_grad_norm` as is).
    Attributes:
      input: gradient for x, same shape as x (batch-first if the module is);
      h0, c0: gradients for the initial state, each (L*D, B, H).
    """

    def __init__(self, params: Mapping[str, Any] = (), input: Any = None, h0: Any = None, c0: Any = None):
        super().__init__(params, input=input)
        self.h0 = h0
        self.c0 = c0


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


def _sha256(array: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


class LSTM:
    """A multi-layer, optionally bidirectional LSTM (PyTorch's ``nn.LSTM`` semantics).

    Arguments:
      input_size, hidden_size: I and H.
      num_layers: L, stacked layers (layer k > 0 reads layer k-1's output).
      bias: learn ``bias_ih``/``bias_hh`` per layer and direction.
      batch_first: x and y are (B, T, features) instead of (T, B, features).
      dropout: probability of zeroing each output of every layer but the last,
          in training mode only (inverted dropout; the mask is kept on the tape).
      bidirectional: add a reverse direction per layer; y concatenates both.
      peephole: add peephole weights ``weight_peephole_l{k}`` (3, H), rows i, f, o.
      dtype: "float32" or "float64"; parameters and inputs share it.
      backend: backend name, or None for automatic selection per call (see the
          module docstring for where parameters live).
      seed: seeds initialisation and dropout (``numpy.random.default_rng``);
          None draws fresh entropy.
      init: "pytorch" (U(-1/sqrt(H), 1/sqrt(H)) everywhere, the default) or
          "xavier_orthogonal" (see :mod:`polylstm.init`).
      forget_bias: if not None, the forget gate's total bias is set to this
          value (1.0 is a good choice for long-range tasks).

    Calling the module is inference: ``y, (h_n, c_n) = lstm(x, state, lengths)``.
    Training uses ``forward(..., training=True)`` -> ``(y, (h_n, c_n), tape)``
    and ``backward(tape, dy, dh_n, dc_n)`` -> :class:`LSTMGradients`.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 peephole: bool = False, dtype: str = "float32", backend: Optional[str] = None,
                 seed: Optional[int] = None, init: str = "pytorch", forget_bias: Optional[float] = None):
        self.input_size = _positive_int("input_size", input_size)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.num_layers = _positive_int("num_layers", num_layers)
        for name, value in (("bias", bias), ("batch_first", batch_first),
                            ("bidirectional", bidirectional), ("peephole", peephole)):
            if not isinstance(value, (bool, np.bool_)):
                raise InputError(f"{name}: expected True or False, got {value!r}")
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        self.peephole = bool(peephole)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise InputError(f"dropout: expected a number in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn("dropout applies between layers only; with num_layers=1 it has no effect",
                          stacklevel=2)
        try:
            dt = np.dtype(dtype)
        except TypeError:
            dt = None
        if dt is None or dt.name not in _DTYPES:
            raise InputError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
        self.dtype = dt.name
        if init not in _init.SCHEMES:
            raise InputError(f"init: expected one of {', '.join(_init.SCHEMES)}, got {init!r}")
        if forget_bias is not None and not isinstance(forget_bias, (int, float)):
            raise InputError(f"forget_bias: expected a number or None, got {forget_bias!r}")
        self.init = init
        self.forget_bias = None if forget_bias is None else float(forget_bias)
        self.seed = seed
        self.backend: Optional[str] = None
        # Two streams from one seed: re-initialising never shifts the dropout masks.
        seeds = np.random.SeedSequence(seed).spawn(2)
        self._init_seed, self._dropout_rng = seeds[0], np.random.default_rng(seeds[1])
        self._params: dict = {}
        self.reset_parameters()
        if backend is not None:
            self.to(backend)

    # ------------------------------------------------------------------ parameters

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _suffix(self, layer: int, direction: int) -> str:
        return f"_l{layer}" + ("_reverse" if direction else "")

    def _layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.num_directions * self.hidden_size

    def parameter_shapes(self) -> dict:
        """name -> shape of every parameter, in PyTorch's state_dict order."""
        H = self.hidden_size
        shapes = {}
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                sfx = self._suffix(layer, direction)
                shapes["weight_ih" + sfx] = (4 * H, self._layer_input_size(layer))
                shapes["weight_hh" + sfx] = (4 * H, H)
                if self.bias:
                    shapes["bias_ih" + sfx] = (4 * H,)
                    shapes["bias_hh" + sfx] = (4 * H,)
                if self.peephole:
                    shapes["weight_peephole" + sfx] = (3, H)
        return shapes

    def reset_parameters(self, init: Optional[str] = None, forget_bias: Any = "keep",
                         seed: Any = "keep") -> None:
        """(Re)draw every parameter.

        init: scheme name (default: the module's); forget_bias: number or None
        (default: the module's); seed: int or None (default: the module's seed,
        so a seeded module re-initialises to the same values). Draws go layer
        by layer, forward direction first, in :func:`polylstm.init.layer_parameters` order.
        """
        if init is not None:
            if init not in _init.SCHEMES:
                raise InputError(f"init: expected one of {', '.join(_init.SCHEMES)}, got {init!r}")
            self.init = init
        if forget_bias != "keep":
            self.forget_bias = None if forget_bias is None else float(forget_bias)
        rng = np.random.default_rng(self._init_seed if seed == "keep" else seed)
        values = {}
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                drawn = _init.layer_parameters(rng, self.init, self._layer_input_size(layer), self.hidden_size,
                                               self.bias, self.peephole, self.forget_bias)
                sfx = self._suffix(layer, direction)
                values.update({name + sfx: value.astype(self.dtype) for name, value in drawn.items()})
        if self._params:
            self._assign(values)
        else:
            self._params = values

    def named_parameters(self) -> dict:
        """name -> the live parameter array (an optimizer updates these in place)."""
        return dict(self._params)

    @property
    def num_parameters(self) -> int:
        return int(sum(math.prod(s) for s in self.parameter_shapes().values()))

    def state_dict(self) -> dict:
        """name -> a host NumPy copy of each parameter, in PyTorch's order."""
        return {name: _to_host(p).copy() for name, p in self._params.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Copy parameters from ``state`` (name -> NumPy array, e.g. a converted PyTorch state_dict).

        Every name, shape and dtype is checked first and all problems are
        reported together (missing and unexpected keys listed); nothing is
        changed unless everything matches. Values are copied into the existing
        arrays, so optimizers holding them stay valid.
        """
        if not isinstance(state, Mapping):
            raise InputError(f"state_dict: expected a mapping of name -> array, got {type(state).__name__}")
        host = {}
        for name, value in state.items():
            host[name] = value if array_type_of(value) in ("numpy", "cupy") else np.asarray(value)
        expected = {name: (shape, self.dtype) for name, shape in self.parameter_shapes().items()}
        _check_state(host, expected, "LSTM")
        self._assign(host)

    def _assign(self, values: Mapping[str, Any]) -> None:
        for name, p in self._params.items():
            xp = _array_module_of(p)
            p[...] = xp.asarray(values[name])

    def to(self, backend: Optional[str]) -> "LSTM":
        """Use ``backend`` from now on and move the parameters to its array type.

        ``None`` returns to automatic selection with host NumPy parameters.
        Raises UnknownBackendError / BackendUnavailableError for a backend that
        cannot run here. Moving replaces the parameter arrays: create
        optimizers after calling ``to``. Returns the module.
        """
        if backend is None:
            self._params = {name: np.ascontiguousarray(_to_host(p)) for name, p in self._params.items()}
            self.backend = None
            return self
        if not isinstance(backend, str):
            raise InputError(f"backend: expected a backend name or None, got {backend!r}")
        from ._registry import REGISTRY

        chosen = REGISTRY.get(backend)
        self._params = {name: chosen.xp.ascontiguousarray(chosen.asarray(p)) for name, p in self._params.items()}
        self.backend = backend
        return self

    def __repr__(self) -> str:
        extras = [f"num_layers={self.num_layers}"]
        for flag in ("batch_first", "bidirectional", "peephole"):
            if getattr(self, flag):
                extras.append(f"{flag}=True")
        if not self.bias:
            extras.append("bias=False")
        if self.dropout:
            extras.append(f"dropout={self.dropout}")
        extras.append(f"dtype={self.dtype!r}")
        extras.append(f"backend={self.backend!r}")
        return f"LSTM({self.input_size}, {self.hidden_size}, {', '.join(extras)})"

    # ------------------------------------------------------------------ running

    def _check_input(self, x, state, lengths):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise InputError(f"x: expected an array, got {type(x).__name__}")
        layout = "(B, T, I)" if self.batch_first else "(T, B, I)"
        if x.ndim != 3 or x.shape[2] != self.input_size:
            raise InputError(f"x: expected shape {layout} with I = {self.input_size}, got {tuple(x.shape)}")
        if x.dtype != np.dtype(self.dtype):
            raise InputError(f"x: expected dtype {self.dtype} (the module's dtype), got {x.dtype}")
        kind = array_type_of(x)
        param_kind = array_type_of(next(iter(self._params.values())))
        if self.backend is None and kind != param_kind:
            raise InputError(
                f"x is a {kind} array but the module's parameters are {param_kind} arrays; polylstm does not "
                f"move data between host and device on its own: call lstm.to(<backend name>) first")
        T, B = (x.shape[1], x.shape[0]) if self.batch_first else (x.shape[0], x.shape[1])
        LD = self.num_layers * self.num_directions
        h0 = c0 = None
        if state is not None:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise InputError("state: expected a pair (h0, c0) of arrays, each (L*D, B, H)")
            h0, c0 = state
            for name, s in (("h0", h0), ("c0", c0)):
                if s is not None and tuple(getattr(s, "shape", ())) != (LD, B, self.hidden_size):
                    raise InputError(f"state {name}: expected shape (L*D, B, H) = {(LD, B, self.hidden_size)}, "
                                     f"got {tuple(getattr(s, 'shape', ()))}")
        return T, B, h0, c0

    def _time_major(self, a):
        return a.transpose(1, 0, 2) if self.batch_first else a

    def _edge_layout(self, a):
        if not self.batch_first:
            return a
        return _array_module_of(a).ascontiguousarray(a.transpose(1, 0, 2))

    def _run(self, x, state, lengths, *, keep_tape: bool, training: bool, return_gates: bool, rng=None):
        T, B, h0, c0 = self._check_input(x, state, lengths)
        layer_input = self._time_major(x)
        D, H = self.num_directions, self.hidden_size
        h_n, c_n, tapes, masks = [], [], [], []
        gates = {} if return_gates else None
        for layer in range(self.num_layers):
            outputs, layer_tapes = [], []
            for direction in range(D):
                sfx = self._suffix(layer, direction)
                index = layer * D + direction
                bias = None
                if self.bias:
                    bias = self._params["bias_ih" + sfx] + self._params["bias_hh" + sfx]
                result = lstm_forward(
                    layer_input, self._params["weight_ih" + sfx], self._params["weight_hh" + sfx], bias,
                    None if h0 is None else h0[index], None if c0 is None else c0[index],
                    peephole=self._params.get("weight_peephole" + sfx), lengths=lengths,
                    reverse=bool(direction), keep_tape=keep_tape, return_gates=return_gates,
                    backend=self.backend)
                outputs.append(result.y)
                layer_tapes.append(result.tape)
                h_n.append(result.h_n)
                c_n.append(result.c_n)
                if return_gates:
                    g = result.gates
                    gates[(layer, direction)] = GateTrajectories(
                        *(self._edge_layout(a) for a in (g.i, g.f, g.g, g.o, g.c)))
            xp = _array_module_of(outputs[0])
            y = outputs[0] if D == 1 else xp.concatenate(outputs, axis=2)
            tapes.append(layer_tapes)
            if layer < self.num_layers - 1:
                mask = None
                if training and self.dropout > 0:
                    # Drawn on the host from the module's seeded stream, so a
                    # run is reproducible on every backend.
                    keep = (rng or self._dropout_rng).random(y.shape) >= self.dropout
                    mask = xp.asarray((keep / (1.0 - self.dropout)).astype(self.dtype))
                    y = y * mask
                masks.append(mask)
            layer_input = y
        xp = _array_module_of(h_n[0])
        y = self._edge_layout(layer_input)
        tape = None
        if keep_tape:
            tape = LSTMTape(tapes=tapes, masks=masks, gates=gates, batch_first=self.batch_first,
                            shape=(T, B), num_directions=D, hidden_size=H)
        return y, (xp.stack(h_n), xp.stack(c_n)), tape, gates

    def __call__(self, x, state=None, lengths=None):
        """Inference (no dropout, no tape).

        x: (T, B, I) or (B, T, I) when batch_first; state: (h0, c0), each
        (L*D, B, H), or None (zeros); lengths: (B,) ints in 1..T or None.
        Returns ``y, (h_n, c_n)``: y (T, B, D*H) (batch-first if the module
        is), h_n and c_n (L*D, B, H).
        """
        y, final, _, _ = self._run(x, state, lengths, keep_tape=False, training=False, return_gates=False)
        return y, final

    def forward(self, x, state=None, lengths=None, training: bool = True, return_gates: bool = False,
                rng: Optional[np.random.Generator] = None):
        """Forward pass that records a tape for :meth:`backward`.

        Same arguments and outputs as calling the module, plus the tape.
        training: apply inter-layer dropout (masks drawn from the module's
            seeded stream, or from ``rng`` if given) and keep them on the tape.
        return_gates: put the gate trajectories on ``tape.gates``.
        Returns ``y, (h_n, c_n), tape``.
        """
        y, final, tape, _ = self._run(x, state, lengths, keep_tape=True, training=training,
                                      return_gates=return_gates, rng=rng)
        return y, final, tape

    def gate_trajectories(self, x, state=None, lengths=None) -> dict:
        """Gates and cell state over time, for inspection or plotting.

        Returns {(layer, direction): GateTrajectories} with fields i, f, g, o, c,
        each (T, B, H) — or (B, T, H) when batch_first; zero at padded steps.
        Inference mode (no dropout).
        """
        _, _, _, gates = self._run(x, state, lengths, keep_tape=False, training=False, return_gates=True)
        return gates

    def backward(self, tape: LSTMTape, dy=None, dh_n=None, dc_n=None) -> LSTMGradients:
        """Backpropagation through time through every layer and direction.

        tape: from :meth:`forward`.
        dy: gradient w.r.t. y, same shape as y ((T, B, D*H), batch-first if the
            module is), or None (zero: the loss reads only the final state).
        dh_n, dc_n: gradients w.r.t. h_n and c_n, each (L*D, B, H), or None.
        Returns :class:`LSTMGradients`: every parameter's gradient under its
        name, plus ``.input`` (like x), ``.h0`` and ``.c0`` (L*D, B, H).
        """
        if not isinstance(tape, LSTMTape):
            raise InputError(f"tape: expected the LSTMTape from LSTM.forward, got {type(tape).__name__}")
        if tape.num_directions != self.num_directions or len(tape.tapes) != self.num_layers:
            raise InputError("tape: it was recorded by a module with another configuration")
        T, B = tape.shape
        D, H, L = self.num_directions, self.hidden_size, self.num_layers
        if dy is not None:
            want = (B, T, D * H) if tape.batch_first else (T, B, D * H)
            if tuple(getattr(dy, "shape", ())) != want:
                raise InputError(f"dy: expected shape {want} (as y), got {tuple(getattr(dy, 'shape', ()))}")
            dy = dy.transpose(1, 0, 2) if tape.batch_first else dy
        for name, g in (("dh_n", dh_n), ("dc_n", dc_n)):
            if g is not None and tuple(getattr(g, "shape", ())) != (L * D, B, H):
                raise InputError(f"{name}: expected shape (L*D, B, H) = {(L * D, B, H)}, "
                                 f"got {tuple(getattr(g, 'shape', ()))}")
        grads: dict = {}
        dh0 = [None] * (L * D)
        dc0 = [None] * (L * D)
        d_out = dy  # gradient w.r.t. the current layer's output (time-major), or None
        for layer in reversed(range(L)):
            d_in = None
            for direction in range(D):
                index = layer * D + direction
                sfx = self._suffix(layer, direction)
                dy_dir = None if d_out is None else d_out[:, :, direction * H:(direction + 1) * H]
                g = lstm_backward(tape.tapes[layer][direction], dy=dy_dir,
                                  dh_n=None if dh_n is None else dh_n[index],
                                  dc_n=None if dc_n is None else dc_n[index])
                grads["weight_ih" + sfx] = g.dw_ih
                grads["weight_hh" + sfx] = g.dw_hh
                if self.bias:
                    # b = b_ih + b_hh, so both receive the primitive's db.
                    grads["bias_ih" + sfx] = g.db
                    grads["bias_hh" + sfx] = g.db.copy()
                if self.peephole:
                    grads["weight_peephole" + sfx] = g.dpeephole
                dh0[index], dc0[index] = g.dh0, g.dc0
                d_in = g.dx if d_in is None else d_in + g.dx
            if layer > 0:
                mask = tape.masks[layer - 1]
                d_out = d_in if mask is None else d_in * mask
        xp = _array_module_of(dh0[0])
        ordered = {name: grads[name] for name in self._params}
        return LSTMGradients(ordered, input=self._edge_layout(d_in), h0=xp.stack(dh0), c0=xp.stack(dc0))

    # ------------------------------------------------------------------ files

    def config(self) -> dict:
        """The constructor arguments that fix the parameter shapes and behaviour."""
        return {"input_size": self.input_size, "hidden_size": self.hidden_size, "num_layers": self.num_layers,
                "bias": self.bias, "batch_first": self.batch_first, "dropout": self.dropout,
                "bidirectional": self.bidirectional, "peephole": self.peephole, "dtype": self.dtype}

    def save(self, path) -> str:
        """Write the parameters and configuration to an ``.npz`` file; returns the path written.

        The file holds one array per parameter (PyTorch names) and, under
        ``__polylstm_config__``, a JSON string (a NumPy unicode array: no
        pickle) with the configuration and each parameter's shape, dtype and
        SHA-256, checked by :meth:`load`. NumPy appends ``.npz`` if missing.
        """
        from . import __version__

        state = self.state_dict()
        meta = {"format": FILE_FORMAT, "format_version": FILE_FORMAT_VERSION, "polylstm_version": __version__,
                "config": self.config(),
                "parameters": {name: {"shape": list(a.shape), "dtype": a.dtype.name, "sha256": _sha256(a)}
                               for name, a in state.items()}}
        path = os.fspath(path)
        if not path.endswith(".npz"):
            path += ".npz"
        np.savez(path, **{_CONFIG_KEY: np.array(json.dumps(meta))}, **state)
        return path

    @classmethod
    def load(cls, path, backend: Optional[str] = None) -> "LSTM":
        """Build a module from a file written by :meth:`save` (never runs code: no pickle).

        Raises InputError naming the file and the problem for anything that is
        not an intact polylstm LSTM file: not an npz, no or unreadable
        configuration, unknown format version, missing/unexpected parameters,
        wrong shape/dtype, or content that no longer matches its checksum.
        """
        path = os.fspath(path)
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except FileNotFoundError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
            raise InputError(f"cannot load {path}: not a readable .npz file without pickled objects "
                             f"({type(exc).__name__}: {exc})") from None
        raw = arrays.pop(_CONFIG_KEY, None)
        if raw is None or raw.dtype.kind != "U" or raw.ndim != 0:
            raise InputError(f"cannot load {path}: no polylstm configuration ({_CONFIG_KEY}) in the file; "
                             "was it written by LSTM.save?")
        try:
            meta = json.loads(str(raw))
            fmt, version, config, recorded = (meta["format"], meta["format_version"], meta["config"],
                                              meta["parameters"])
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"cannot load {path}: its configuration is damaged ({type(exc).__name__}: {exc})") from None
        if fmt != FILE_FORMAT:
            raise InputError(f"cannot load {path}: format {fmt!r}, expected {FILE_FORMAT!r}")
        if not isinstance(version, int) or version > FILE_FORMAT_VERSION:
            raise InputError(f"cannot load {path}: format version {version!r}; this polylstm reads up to "
                             f"{FILE_FORMAT_VERSION} (upgrade polylstm)")
        known = {"input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                 "bidirectional", "peephole", "dtype"}
        if not isinstance(config, dict) or set(config) != known:
            raise InputError(f"cannot load {path}: configuration keys {sorted(config) if isinstance(config, dict) else config!r}, "
                             f"expected {sorted(known)}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = cls(**config, seed=0)
        except InputError as exc:
            raise InputError(f"cannot load {path}: invalid configuration: {exc}") from None
        try:
            module.load_state_dict(arrays)
        except InputError as exc:
            raise InputError(f"cannot load {path}: parameters do not match the stored configuration: {exc}") from None
        if not isinstance(recorded, dict) or set(recorded) != set(arrays):
            raise InputError(f"cannot load {path}: the recorded parameter list does not match the arrays in the file")
        for name, a in arrays.items():
            if recorded[name].get("sha256") != _sha256(a):
                raise InputError(f"cannot load {path}: parameter {name!r} does not match its recorded checksum "
                                 "(the file was modified or corrupted)")
        if backend is not None:
            module.to(backend)
        return module


def _array_module_of(a):
    if array_type_of(a) == "cupy":
        import cupy

        return cupy
    return np
