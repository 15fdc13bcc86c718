"""Initialisation schemes for LSTM weights (gate order i, f, g, o).

LSTMs are sensitive to their random start, so the scheme is a choice you make
explicitly and reproducibly (every function draws from the NumPy Generator you
pass it). Two schemes are offered by :class:`polylstm.module.LSTM`:

``"pytorch"`` (default)
    Every weight and bias (and peephole) ~ U(-1/sqrt(H), 1/sqrt(H)), as
    ``torch.nn.LSTM`` does. Same distribution, not the same numbers: PyTorch's
    generator is not NumPy's.
``"xavier_orthogonal"``
    Input weights Xavier/Glorot-uniform per gate block (each gate's (H, I)
    block ~ U(+-sqrt(6 / (I + H)))), recurrent weights orthogonal per gate
    block (each (H, H) block is a random orthogonal matrix, so the recurrence
    neither grows nor shrinks signals at the start), biases and peepholes zero.

Either scheme can be combined with ``forget_bias``: the forget gate's total
bias (``b_ih + b_hh``, block f) is set to that value (``bias_ih`` carries it,
``bias_hh`` gets 0). A forget bias of 1 (Gers et al. 2000; Jozefowicz et al.
2015) makes the cell remember by default and helps long-range tasks.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InputError

SCHEMES = ("pytorch", "xavier_orthogonal")


def uniform(rng: np.random.Generator, shape: tuple, bound: float) -> np.ndarray:
    """U(-bound, bound) of ``shape`` in float64."""
    return rng.uniform(-bound, bound, size=shape)


def xavier_uniform_gates(rng: np.random.Generator, hidden_size: int, input_size: int) -> np.ndarray:
    """(4H, I): each gate block (H, I) Glorot-uniform with fan_in I, fan_out H.

    Per block rather than over the whole (4H, I) matrix because each gate is
    its own linear map of the input.
    """
    bound = math.sqrt(6.0 / (input_size + hidden_size))
    return rng.uniform(-bound, bound, size=(4 * hidden_size, input_size))


def orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    """A random (n, n) orthogonal matrix, Haar-distributed.

    QR of a Gaussian matrix, with the signs of R's diagonal folded into Q so
    the distribution is uniform over the orthogonal group (Mezzadri 2007).
    """
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))[None, :]


def orthogonal_gates(rng: np.random.Generator, hidden_size: int) -> np.ndarray:
    """(4H, H): each gate block (H, H) an independent random orthogonal matrix."""
    return np.concatenate([orthogonal(rng, hidden_size) for _ in range(4)], axis=0)


def layer_parameters(rng: np.random.Generator, scheme: str, input_size: int, hidden_size: int,
                     bias: bool, peephole: bool, forget_bias=None) -> dict:
    """Initial values (float64) for one layer and direction.

    Returns {"weight_ih": (4H, I), "weight_hh": (4H, H), ["bias_ih": (4H,),
    "bias_hh": (4H,)], ["weight_peephole": (3, H)]}, drawn in that order.
    """
    H = hidden_size
    if scheme == "pytorch":
        k = 1.0 / math.sqrt(H)
        out = {"weight_ih": uniform(rng, (4 * H, input_size), k),
               "weight_hh": uniform(rng, (4 * H, H), k)}
        if bias:
            out["bias_ih"] = uniform(rng, (4 * H,), k)
            out["bias_hh"] = uniform(rng, (4 * H,), k)
        if peephole:
            out["weight_peephole"] = uniform(rng, (3, H), k)
    elif scheme == "xavier_orthogonal":
        out = {"weight_ih": xavier_uniform_gates(rng, H, input_size),
               "weight_hh": orthogonal_gates(rng, H)}
        if bias:
            out["bias_ih"] = np.zeros(4 * H)
            out["bias_hh"] = np.zeros(4 * H)
        if peephole:
            out["weight_peephole"] = np.zeros((3, H))
    else:
        raise InputError(f"init: expected one of {', '.join(SCHEMES)}, got {scheme!r}")
    if forget_bias is not None and bias:
        out["bias_ih"][H:2 * H] = forget_bias
        out["bias_hh"][H:2 * H] = 0.0
    return out
