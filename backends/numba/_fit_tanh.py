"""Refit the float32 ``tanh`` approximation used by ``_activations`` (NumPy only).

    python -m polylstm_numba._fit_tanh

Fits ``tanh(x) ~= x * P(x^2) / Q(x^2)`` (P degree 6, Q degree 3, Q0 = 1) on
[0, 9] by iterated weighted linear least squares: each round solves
``x P(s) - tanh(x) Q(s) ~= 0`` weighted by ``1 / (tanh(x) Q_prev(s))`` so the
residual approximates the relative error. Prints the coefficients and the
max errors of the formula evaluated in float64 and in float32 (Horner, as the
kernels do) against float64 ``numpy.tanh``.
"""

import numpy as np

LIMIT = 9.0
P_TERMS, Q_TERMS = 7, 4


def fit(rounds: int = 30):
    """Return (P, Q) coefficient arrays, lowest degree first (Q[0] == 1)."""
    x = np.concatenate([np.linspace(1e-4, 1, 4000), np.linspace(1, LIMIT, 8000)])
    s = x * x
    t = np.tanh(x)
    weight = 1.0 / t
    for _ in range(rounds):
        design = np.hstack([x[:, None] * s[:, None] ** np.arange(P_TERMS),
                            -(t[:, None] * s[:, None] ** np.arange(1, Q_TERMS))])
        scaled = design * weight[:, None]
        norm = np.abs(scaled).max(axis=0)
        coef, *_ = np.linalg.lstsq(scaled / norm, t * weight, rcond=None)
        coef /= norm
        P = coef[:P_TERMS]
        Q = np.concatenate([[1.0], coef[P_TERMS:]])
        weight = 1.0 / (t * np.polyval(Q[::-1], s))
    return P, Q


def evaluate(x, P, Q, dtype):
    """The kernels' formula in ``dtype``: clamp, Horner, divide, clamp."""
    x = np.clip(x.astype(dtype), -LIMIT, LIMIT)
    s = x * x
    p = dtype(P[-1])
    for c in P[-2::-1]:
        p = p * s + dtype(c)
    q = dtype(Q[-1])
    for c in Q[-2::-1]:
        q = q * s + dtype(c)
    return np.clip(x * p / q, -1, 1)


def main():
    P, Q = fit()
    print("P =", [float(v) for v in P])
    print("Q =", [float(v) for v in Q])
    grid = np.linspace(-LIMIT, LIMIT, 2_000_001)
    for dtype in (np.float64, np.float32):
        got = evaluate(grid, P, Q, dtype).astype(np.float64)
        want = np.tanh(grid.astype(dtype).astype(np.float64))
        rel = np.abs(got - want) / np.maximum(np.abs(want), 1e-30)
        print(f"{dtype.__name__}: max relative error {rel.max():.3g}")


if __name__ == "__main__":
    main()
