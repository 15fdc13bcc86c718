"""A small training toolkit: a linear layer, two losses, SGD, Adam, clipping.

Enough to train a :class:`polylstm.module.LSTM` end to end without another
framework. Everything is backend-agnostic: a function computes with the array
module of its inputs (NumPy, or CuPy when given CuPy arrays), so it runs
wherever the LSTM's outputs live.

Conventions shared with :mod:`polylstm.module`:

* a layer's ``forward(x)`` returns ``(y, tape)`` and ``backward(tape, dy)``
  returns a :class:`Grads`: a dict of parameter name -> gradient, with the
  gradient for the layer's input as the attribute ``.input``;
* a loss returns ``(value, grad)``: a Python float and the gradient of that
  value with respect to the prediction;
* an optimizer holds the live parameter arrays (``module.named_parameters()``)
  and updates them in place from a mapping of the same names to gradients.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import numpy as np

from .errors import InputError

__all__ = [
    "Grads",
    "Linear",
    "mse_loss",
    "softmax_cross_entropy",
    "SGD",
    "Adam",
    "clip_grad_norm",
    "global_norm",
    "array_module",
    "prefixed",
]


def array_module(*arrays: Any):
    """The array module (numpy or cupy) of the given arrays.

    CuPy is returned only when an argument is a CuPy array, so NumPy-only
    installations never import it. Mixing NumPy and CuPy arrays is an error:
    polylstm never moves arrays between host and device behind your back.
    """
    kinds = set()
    for a in arrays:
        if a is None:
            continue
        root = type(a).__module__.split(".")[0]
        kinds.add("cupy" if root == "cupy" else "numpy")
    if len(kinds) > 1:
        raise InputError(
            "arrays live on different devices (NumPy host and CuPy device); "
            "move them to one place first (cupy.asarray / cupy.asnumpy)"
        )
    if kinds == {"cupy"}:
        import cupy

        return cupy
    return np


def _to_module(name_or_module: Any):
    """Resolve ``"numpy"``, ``"cupy"`` or an array module to the module."""
    if isinstance(name_or_module, str):
        if name_or_module == "numpy":
            return np
        if name_or_module == "cupy":
            import cupy

            return cupy
        raise InputError(f"array module: expected 'numpy' or 'cupy', got {name_or_module!r}")
    return name_or_module


def _check_float(name: str, a: Any) -> None:
    dtype = getattr(a, "dtype", None)
    if dtype is None or dtype.kind != "f":
        raise InputError(f"{name}: expected a floating-point array, got {type(a).__name__} "
                         f"with dtype {dtype}")


class Grads(dict):
    """Parameter gradients by parameter name, plus ``.input``.

    It is a plain dict of the parameter gradients (so it can be handed to an
    optimizer or to :func:`clip_grad_norm` as it is); the gradient for the
    layer's input is kept out of the mapping, as the attribute ``input``.
    """

    def __init__(self, params: Mapping[str, Any] = (), input: Any = None):
        super().__init__(params)
        self.input = input


def prefixed(prefix: str, mapping: Mapping[str, Any]) -> dict:
    """``{prefix + name: value}``: merge several modules' parameters or grads.

    >>> params = {**prefixed("lstm.", lstm.named_parameters()),
    ...           **prefixed("head.", head.named_parameters())}
    """
    return {prefix + k: v for k, v in mapping.items()}


class Linear:
    """``y = x @ weight.T + bias``, applied to the last axis.

    weight: (out_features, in_features)   bias: (out_features,)
    x: (..., in_features) -> y: (..., out_features)

    Initialised as PyTorch's ``nn.Linear``: U(-1/sqrt(in), 1/sqrt(in)) for
    both, drawn from ``numpy.random.default_rng(seed)`` (weight first).
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 dtype: Any = "float32", seed: Optional[int] = None):
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise InputError(f"{name}: expected a positive int, got {v!r}")
        dt = np.dtype(dtype)
        if dt.kind != "f":
            raise InputError(f"dtype: expected a floating dtype, got {dt}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.dtype = dt
        rng = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(self.in_features)
        self._params = {"weight": rng.uniform(-bound, bound, (self.out_features, self.in_features)).astype(dt)}
        if bias:
            self._params["bias"] = rng.uniform(-bound, bound, (self.out_features,)).astype(dt)

    def named_parameters(self) -> dict:
        """The live parameter arrays by name (an optimizer updates them in place)."""
        return dict(self._params)

    def state_dict(self) -> dict:
        """Copies of the parameters as host NumPy arrays."""
        return {k: _to_host(v).copy() for k, v in self._params.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Copy values into the existing parameter arrays (names/shapes/dtypes checked)."""
        _check_state(state, {k: (v.shape, v.dtype) for k, v in self._params.items()}, "Linear")
        xp = array_module(*self._params.values())
        for k, v in self._params.items():
            v[...] = xp.asarray(state[k])

    def to(self, array_module_name: Any) -> "Linear":
        """Move the parameters to ``"numpy"`` (host) or ``"cupy"`` (device)."""
        xp = _to_module(array_module_name)
        self._params = {k: xp.asarray(_to_host(v) if xp is np else v) for k, v in self._params.items()}
        return self

    def __call__(self, x):
        return self.forward(x)[0]

    def forward(self, x):
        """x: (..., in_features) -> (y (..., out_features), tape)."""
        if getattr(x, "ndim", 0) < 1 or x.shape[-1] != self.in_features:
            raise InputError(f"x: expected shape (..., {self.in_features}), "
                             f"got {getattr(x, 'shape', type(x).__name__)}")
        _check_float("x", x)
        if x.dtype != self.dtype:
            raise InputError(f"x: expected dtype {self.dtype} (the layer's), got {x.dtype}")
        w = self._params["weight"]
        array_module(x, w)
        y = x @ w.T
        if "bias" in self._params:
            y = y + self._params["bias"]
        return y, x

    def backward(self, tape, dy) -> Grads:
        """dy: (..., out_features) -> Grads{weight, bias}, ``.input`` (..., in_features)."""
        x = tape
        if dy.shape != x.shape[:-1] + (self.out_features,):
            raise InputError(f"dy: expected shape {x.shape[:-1] + (self.out_features,)}, got {dy.shape}")
        w = self._params["weight"]
        flat_dy = dy.reshape(-1, self.out_features)
        flat_x = x.reshape(-1, self.in_features)
        grads = {"weight": flat_dy.T @ flat_x}
        if "bias" in self._params:
            grads["bias"] = flat_dy.sum(axis=0)
        return Grads(grads, input=dy @ w)


def _to_host(a):
    """A NumPy view/copy of ``a`` (CuPy arrays are copied to the host)."""
    if type(a).__module__.split(".")[0] == "cupy":
        return a.get()
    return np.asarray(a)


def _check_state(state: Mapping[str, Any], expected: Mapping[str, tuple], owner: str) -> None:
    """Raise one InputError listing every missing/unexpected key and bad shape/dtype.

    expected: name -> (shape, dtype).
    """
    if not isinstance(state, Mapping):
        raise InputError(f"state_dict: expected a mapping of name -> array, got {type(state).__name__}")
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(map(str, unexpected))}")
    for k, (shape, dtype) in expected.items():
        if k not in state:
            continue
        v = state[k]
        vshape = tuple(getattr(v, "shape", ()))
        vdtype = getattr(v, "dtype", None)
        if vshape != tuple(shape):
            problems.append(f"{k}: expected shape {tuple(shape)}, got {vshape}")
        if vdtype is None or np.dtype(vdtype) != np.dtype(dtype):
            problems.append(f"{k}: expected dtype {np.dtype(dtype)}, got {vdtype} "
                            f"(convert with .astype, or build the {owner} with that dtype)")
    if problems:
        raise InputError(f"cannot load state_dict into {owner}: " + "; ".join(problems))


# ----------------------------------------------------------------------------
# Losses: each returns (value as a Python float, gradient w.r.t. the prediction)


def mse_loss(pred, target):
    """Mean squared error over every element.

    pred, target: same shape (...). Returns (loss, dpred) with
    loss = mean((pred - target)**2) and dpred = 2 (pred - target) / pred.size.
    """
    _check_float("pred", pred)
    if getattr(target, "shape", None) != pred.shape:
        raise InputError(f"target: expected shape {pred.shape} (as pred), got {getattr(target, 'shape', None)}")
    array_module(pred, target)
    diff = pred - target.astype(pred.dtype, copy=False)
    loss = float((diff * diff).mean())
    return loss, (2.0 / diff.size) * diff


def softmax_cross_entropy(logits, targets):
    """Softmax cross-entropy averaged over examples.

    logits: (..., C) float; targets: (...) integer class indices in [0, C).
    Returns (loss, dlogits) with loss = mean(-log softmax(logits)[target]) and
    dlogits = (softmax - onehot) / N, N = number of examples.
    """
    _check_float("logits", logits)
    if getattr(logits, "ndim", 0) < 1:
        raise InputError("logits: expected shape (..., C)")
    xp = array_module(logits, targets)
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise InputError(f"targets: expected shape {tuple(logits.shape[:-1])} (logits without C), "
                         f"got {tuple(targets.shape)}")
    if targets.dtype.kind not in "iu":
        raise InputError(f"targets: expected integer class indices, got dtype {targets.dtype}")
    C = logits.shape[-1]
    flat = logits.reshape(-1, C)
    t = targets.reshape(-1)
    if t.size and (int(t.min()) < 0 or int(t.max()) >= C):
        raise InputError(f"targets: expected class indices in [0, {C}), got values in "
                         f"[{int(t.min())}, {int(t.max())}]")
    # Subtracting the row max keeps exp() finite without changing softmax.
    shifted = flat - flat.max(axis=1, keepdims=True)
    log_z = xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    log_p = shifted - log_z
    n = flat.shape[0]
    rows = xp.arange(n)
    loss = float(-log_p[rows, t].mean())
    d = xp.exp(log_p)
    d[rows, t] -= 1
    d /= n
    return loss, d.reshape(logits.shape)


# ----------------------------------------------------------------------------
# Gradient clipping


def global_norm(grads: Mapping[str, Any]) -> float:
    """sqrt of the sum of squares of every gradient in the mapping."""
    total = 0.0
    for g in grads.values():
        total += float((g.astype(np.float64, copy=False) ** 2).sum())
    return math.sqrt(total)


def clip_grad_norm(grads: Mapping[str, Any], max_norm: float):
    """Scale all gradients together so that their global norm is at most max_norm.

    Returns ``(clipped, norm)``: a new dict (the inputs are not modified) and
    the global norm before clipping, as in ``torch.nn.utils.clip_grad_norm_``.
    A :class:`Grads` keeps its ``.input`` (unscaled: it is not a parameter).
    """
    if not (isinstance(max_norm, (int, float)) and max_norm > 0):
        raise InputError(f"max_norm: expected a positive number, got {max_norm!r}")
    norm = global_norm(grads)
    scale = min(1.0, max_norm / (norm + 1e-6))
    clipped = {k: g * g.dtype.type(scale) if scale < 1.0 else g.copy() for k, g in grads.items()}
    if isinstance(grads, Grads):
        out = type(grads).__new__(type(grads))
        dict.__init__(out, clipped)
        out.__dict__.update(grads.__dict__)
        return out, norm
    return clipped, norm


# ----------------------------------------------------------------------------
# Optimizers


class _Optimizer:
    """Holds live parameter arrays by name and updates them in place.

    params: mapping name -> array (e.g. ``lstm.named_parameters()``). Create
    the optimizer after moving a module to its backend (``lstm.to(...)``):
    moving replaces the arrays. ``load_state_dict`` copies into the same
    arrays, so an optimizer stays valid across it.
    """

    def __init__(self, params: Mapping[str, Any], lr: float):
        if not isinstance(params, Mapping) or not params:
            raise InputError("params: expected a non-empty mapping of name -> array "
                             "(e.g. lstm.named_parameters())")
        for k, p in params.items():
            _check_float(f"params[{k!r}]", p)
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise InputError(f"lr: expected a positive number, got {lr!r}")
        self.params = dict(params)
        self.lr = float(lr)
        self.step_count = 0

    def _checked(self, grads: Mapping[str, Any]):
        missing = [k for k in self.params if k not in grads]
        unexpected = [k for k in grads if k not in self.params]
        if missing or unexpected:
            raise InputError(f"grads: names must match the optimizer's parameters; missing: "
                             f"{missing or 'none'}, unexpected: {unexpected or 'none'}")
        for k, p in self.params.items():
            if grads[k].shape != p.shape:
                raise InputError(f"grads[{k!r}]: expected shape {p.shape}, got {grads[k].shape}")
        return [(k, p, grads[k]) for k, p in self.params.items()]

    def step(self, grads: Mapping[str, Any]) -> None:
        raise NotImplementedError


class SGD(_Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and weight decay.

    Same update as ``torch.optim.SGD`` (dampening 0)::

        g = grad + weight_decay * p
        v = momentum * v + g            (v = g at the first step)
        p -= lr * (g + momentum * v if nesterov else v)
    """

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr)
        if not 0.0 <= momentum < 1.0:
            raise InputError(f"momentum: expected 0 <= momentum < 1, got {momentum!r}")
        if nesterov and momentum == 0:
            raise InputError("nesterov: needs momentum > 0")
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.nesterov = bool(nesterov)
        self._velocity: dict = {}

    def step(self, grads):
        """Apply one update from ``grads`` (mapping name -> gradient, same shapes)."""
        for k, p, g in self._checked(grads):
            if self.weight_decay:
                g = g + self.weight_decay * p
            if self.momentum:
                v = self._velocity.get(k)
                v = g.copy() if v is None else self.momentum * v + g
                self._velocity[k] = v
                g = g + self.momentum * v if self.nesterov else v
            p -= p.dtype.type(self.lr) * g
        self.step_count += 1


class Adam(_Optimizer):
    """Adam (Kingma & Ba 2015), same update as ``torch.optim.Adam``::

        g = grad + weight_decay * p
        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr)
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise InputError(f"betas: expected two numbers in [0, 1), got {betas!r}")
        self.betas = (float(b1), float(b2))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self._m: dict = {}
        self._v: dict = {}

    def step(self, grads):
        """Apply one update from ``grads`` (mapping name -> gradient, same shapes)."""
        checked = self._checked(grads)
        self.step_count += 1
        b1, b2 = self.betas
        t = self.step_count
        c1 = 1 - b1 ** t
        c2 = 1 - b2 ** t
        for k, p, g in checked:
            xp = array_module(p, g)
            if self.weight_decay:
                g = g + self.weight_decay * p
            m = self._m.get(k)
            v = self._v.get(k)
            if m is None:
                m = xp.zeros_like(p)
                v = xp.zeros_like(p)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * (g * g)
            self._m[k], self._v[k] = m, v
            update = (self.lr / c1) * m / (xp.sqrt(v / c2) + self.eps)
            p -= update.astype(p.dtype, copy=False)
