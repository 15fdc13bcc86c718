"""The NumPy reference LSTM: the readable specification of the cell.

Every other backend is checked against this file, so it is written for
clarity, not speed: one loop over time, the cell equations spelled out as in
:mod:`polylstm.backend`, and the backward pass written right next to them.
It computes in the dtype it is given (float64 is exact to rounding; float32
stays float32).

Shapes: T time steps, B batch, I input size, H hidden size.
"""

from __future__ import annotations

import numpy as np

from polylstm.backend import Backend, ForwardOutput, Gradients, Tape


def sigmoid(a):
    """Logistic function, written so that large |a| neither overflows nor warns."""
    out = np.empty_like(a)
    positive = a >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-a[positive]))
    exp_a = np.exp(a[~positive])
    out[~positive] = exp_a / (1.0 + exp_a)
    return out


def step_order(T, lengths, reverse):
    """Per-step validity mask (T, B) bool and the time indices in processing order.

    A reverse direction visits t = T-1 .. 0 but each sequence only becomes
    valid at its own last step lengths[b]-1, which is exactly PyTorch's packed
    semantics because invalid steps leave the state untouched.
    """
    if lengths is None:
        valid = None
    else:
        valid = np.arange(T)[:, None] < lengths[None, :]  # (T, B)
    order = range(T - 1, -1, -1) if reverse else range(T)
    return valid, order


def previous_step_values(values, initial, lengths, reverse):
    """Value that was the 'previous state' at each step: h_{t-1} or c_{t-1}.

    values:  (T, B, H) per-step states (zero at padded steps).
    initial: (B, H) state before the first processed step.
    Returns (T, B, H). At padded steps the result is meaningless but harmless:
    backward multiplies it by a zero gradient there.
    """
    T, B, _ = values.shape
    prev = np.empty_like(values)
    if not reverse:
        prev[0] = initial
        prev[1:] = values[:-1]
    else:
        prev[-1] = initial
        prev[:-1] = values[1:]
        if lengths is not None:
            # A reverse pass starts at step lengths[b]-1, where the previous
            # state is the initial state, not the (zero) padded step after it.
            batch = np.arange(B)
            prev[lengths - 1, batch] = initial
    return prev


def forward(x, w_ih, w_hh, b, h0, c0, peephole, lengths, reverse, store):
    """Run the cell over the sequence.

    x: (T, B, I)  w_ih: (4H, I)  w_hh: (4H, H)  b: (4H,)  h0, c0: (B, H)
    peephole: (3, H) or None (rows i, f, o)  lengths: (B,) int64 or None
    Returns ForwardOutput with y (T, B, H), h_n, c_n (B, H) and, when store,
    gates (T, B, 4H) post-activation i, f, g, o and c (T, B, H).
    """
    T, B, _ = x.shape
    H = w_hh.shape[1]
    dtype = x.dtype

    # The input projection of every step at once: one large product.
    x_proj = (x.reshape(T * B, -1) @ w_ih.T).reshape(T, B, 4 * H) + b

    y = np.zeros((T, B, H), dtype)
    gates = np.zeros((T, B, 4 * H), dtype)
    cells = np.zeros((T, B, H), dtype)
    h = h0.copy()
    c = c0.copy()
    valid, order = step_order(T, lengths, reverse)

    for t in order:
        a = x_proj[t] + h @ w_hh.T
        a_i, a_f, a_g, a_o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        if peephole is not None:
            a_i = a_i + peephole[0] * c
            a_f = a_f + peephole[1] * c
        i = sigmoid(a_i)
        f = sigmoid(a_f)
        g = np.tanh(a_g)
        c_new = f * c + i * g
        if peephole is not None:
            a_o = a_o + peephole[2] * c_new
        o = sigmoid(a_o)
        h_new = o * np.tanh(c_new)

        if valid is None:
            h, c = h_new, c_new
            step_gates = np.concatenate([i, f, g, o], axis=1)
        else:
            keep = valid[t][:, None]  # (B, 1): which sequences advance
            h = np.where(keep, h_new, h)
            c = np.where(keep, c_new, c)
            h_new = np.where(keep, h_new, 0)
            c_new = np.where(keep, c_new, 0)
            step_gates = np.where(keep, np.concatenate([i, f, g, o], axis=1), 0)
        y[t] = h_new
        cells[t] = c_new
        gates[t] = step_gates

    if not store:
        return ForwardOutput(y=y, h_n=h, c_n=c)
    return ForwardOutput(y=y, h_n=h, c_n=c, gates=gates, c=cells)


def backward(tape: Tape, dy, dh_n, dc_n):
    """Backpropagation through time from a tape.

    dy: (T, B, H)  dh_n, dc_n: (B, H). Returns Gradients (see polylstm.backend).
    Only dh_{t-1} = da_t @ w_hh is sequential; the parameter and input
    gradients are single large products after the loop (Appleyard et al. 2016).
    """
    x, w_ih, w_hh, p = tape.x, tape.w_ih, tape.w_hh, tape.peephole
    T, B, I, H = tape.shape
    dtype = x.dtype
    valid, order = step_order(T, tape.lengths, tape.reverse)
    c_prev_all = previous_step_values(tape.c, tape.c0, tape.lengths, tape.reverse)

    d_preact = np.zeros((T, B, 4 * H), dtype)  # da_t for every step, i f g o
    dpeephole = np.zeros((3, H), dtype) if p is not None else None
    dh = dh_n.copy()  # gradient reaching h after the step being processed
    dc = dc_n.copy()

    for t in reversed(list(order)):
        i, f, g, o = (tape.gates[t, :, k * H:(k + 1) * H] for k in range(4))
        c_t = tape.c[t]
        c_prev = c_prev_all[t]
        tanh_c = np.tanh(c_t)

        dh_t = dh + dy[t]
        do = dh_t * tanh_c
        da_o = do * o * (1 - o)
        dc_t = dc + dh_t * o * (1 - tanh_c ** 2)
        if p is not None:
            dc_t = dc_t + da_o * p[2]  # o peeks at c_t
        di = dc_t * g
        df = dc_t * c_prev
        dg = dc_t * i
        da_i = di * i * (1 - i)
        da_f = df * f * (1 - f)
        da_g = dg * (1 - g ** 2)
        dc_prev = dc_t * f
        if p is not None:
            dc_prev = dc_prev + da_i * p[0] + da_f * p[1]

        da = np.concatenate([da_i, da_f, da_g, da_o], axis=1)  # (B, 4H)
        dh_prev = da @ w_hh
        if valid is None:
            dh, dc = dh_prev, dc_prev
        else:
            # Padded steps did nothing in forward: no gradient flows into
            # them, and the carried gradient passes through unchanged.
            keep = valid[t][:, None]
            da = np.where(keep, da, 0)
            dh = np.where(keep, dh_prev, dh)
            dc = np.where(keep, dc_prev, dc)
        d_preact[t] = da
        if p is not None:
            dpeephole[0] += (da[:, :H] * c_prev).sum(axis=0)
            dpeephole[1] += (da[:, H:2 * H] * c_prev).sum(axis=0)
            dpeephole[2] += (da[:, 3 * H:] * c_t).sum(axis=0)

    h_prev_all = previous_step_values(tape.y, tape.h0, tape.lengths, tape.reverse)
    flat_da = d_preact.reshape(T * B, 4 * H)
    dx = (flat_da @ w_ih).reshape(T, B, I)
    dw_ih = flat_da.T @ x.reshape(T * B, I)
    dw_hh = flat_da.T @ h_prev_all.reshape(T * B, H)
    db = flat_da.sum(axis=0)
    return Gradients(dx=dx, dw_ih=dw_ih, dw_hh=dw_hh, db=db, dh0=dh, dc0=dc, dpeephole=dpeephole)


class NumpyReferenceBackend(Backend):
    """The reference backend: every feature, float32 and float64, host arrays."""

    name = "numpy"
    xp = np

    def forward(self, x, w_ih, w_hh, b, h0, c0, peephole, lengths, reverse, store):
        return forward(x, w_ih, w_hh, b, h0, c0, peephole, lengths, reverse, store)

    def backward(self, tape, dy, dh_n, dc_n):
        return backward(tape, dy, dh_n, dc_n)
