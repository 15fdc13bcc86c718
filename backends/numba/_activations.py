"""Activation functions for the compiled kernels: ``tanh`` and ``sigmoid``.

Imported only from :mod:`polylstm_numba._kernels` (it imports numba).

Why not ``math.tanh`` / ``math.exp``: without Intel SVML (the llvmlite wheels
we use are not SVML-patched) LLVM cannot vectorise libm calls, so every gate
element would cost a scalar ``expf`` call (~10 ns) and the gate math would
dominate small and medium shapes. For float32 we therefore evaluate a rational
approximation made of multiplies, adds, one divide and two clamps, which LLVM
turns into AVX-512 code.

The approximation ``tanh(x) ~= x * P(x^2) / Q(x^2)`` on ``|x| <= 9`` (beyond 9,
``tanh`` rounds to +-1 in float32) was fitted for this project by iterated
weighted least squares on the relative error (``python -m
polylstm_numba._fit_tanh`` refits and re-measures it). Against float64
``numpy.tanh`` on 2e6 points of [-9, 9], evaluated in float32: max relative
error 3.5e-7 (about 3 ulp); the result is clamped to [-1, 1].
``sigmoid(x) = 0.5 + 0.5 * tanh(x / 2)`` has an absolute error below 1.6e-7
(measured on [-30, 30]; it cannot go below half an ulp of 0.5, 3e-8, near 0).

Float64 keeps libm (``math.tanh``/``math.exp``): its tolerance is far tighter
than any cheap approximation and speed in float64 is not a goal.

Dispatch is at compile time through ``numba.extending.overload``, so each
dtype gets its own straight-line code and no constant is a Python float
(a Python float literal would promote float32 arithmetic to float64).
"""

import math

import numpy as np
from numba import types
from numba.extending import overload

# Coefficients of P (degree 6 in s = x^2) and Q (degree 3, Q0 = 1).
_P = (
    0.999999997168746,
    0.13092407381247845,
    0.003113305201757145,
    1.1251323299970968e-05,
    -2.06146764978829e-08,
    5.4635017491376326e-11,
    -8.960813120705704e-14,
)
_Q = (
    1.0,
    0.46425737428466946,
    0.0245324923046828,
    0.00025597124086862785,
)
_CLAMP = 9.0


def tanh(x):
    """Scalar tanh; replaced inside compiled code by the overload below."""
    return math.tanh(x)


def sigmoid(x):
    """Scalar logistic function; replaced inside compiled code by the overload."""
    return 1.0 / (1.0 + math.exp(-x))


def one_like(x):
    """The number 1 in the type of scalar ``x`` (compiled code: no promotion)."""
    return type(x)(1)


@overload(one_like, inline="always")
def _one_like_overload(x):
    if isinstance(x, types.Float):
        one = np.float32(1.0) if x == types.float32 else np.float64(1.0)
        return lambda x: one
    return None


def _float32_tanh_impl():
    p0, p1, p2, p3, p4, p5, p6 = (np.float32(v) for v in _P)
    q0, q1, q2, q3 = (np.float32(v) for v in _Q)
    hi = np.float32(_CLAMP)
    lo = np.float32(-_CLAMP)
    one = np.float32(1.0)
    mone = np.float32(-1.0)

    def impl(x):
        x = min(max(x, lo), hi)
        s = x * x
        p = ((((((p6 * s + p5) * s + p4) * s + p3) * s + p2) * s + p1) * s + p0)
        q = (((q3 * s + q2) * s + q1) * s + q0)
        r = x * p / q
        return min(max(r, mone), one)

    return impl


@overload(tanh, inline="always")
def _tanh_overload(x):
    if x == types.float32:
        return _float32_tanh_impl()
    if isinstance(x, types.Float):
        return lambda x: math.tanh(x)
    return None


@overload(sigmoid, inline="always")
def _sigmoid_overload(x):
    if x == types.float32:
        half = np.float32(0.5)

        def impl32(x):
            return half + half * tanh(half * x)

        return impl32
    if isinstance(x, types.Float):
        # 1 / (1 + exp(-x)) overflows harmlessly to 0 for x << 0 (exp -> inf).
        return lambda x: 1.0 / (1.0 + math.exp(-x))
    return None
