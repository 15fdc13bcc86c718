"""The CuPy backend's LSTM, written once for any array module and kernel launcher.

``forward`` and ``backward`` take ``xp`` (cupy, or numpy) and ``launch`` (a
:class:`~polylstm_cupy._kernels.CupyKernels` on a GPU, or an
:class:`~polylstm_cupy._emulation.EmulatedKernels` on the CPU), so the code
that runs on the GPU is the code the CPU test suite runs. Everything here is
array bookkeeping and matrix products; the cell itself lives in the kernels.

The shape of the computation is cuDNN's standard algorithm (as in haste):

forward::

    xw = x.reshape(T*B, I) @ w_ih.T                 # one product, all steps
    for step in range(T):
        hw = h @ w_hh.T                             # recurrent product
        lstm_forward kernel                         # bias, peepholes, gates, c, h,
                                                    # masking, tape -- one pass

backward::

    for step in reversed(range(T)):
        lstm_backward kernel                        # da_t, dc_{t-1}, masking,
                                                    # peephole partials of the step
        dh_rec = da_t @ w_hh                        # the only sequential product
    dx    = da @ w_ih                               # large products after the loop
    dw_ih = da.T @ x;  dw_hh = da.T @ h_prev;  db = sum(da)
    dpeephole = sum of the partials over all (t, b)

No atomics anywhere: every element is written by one thread, and the
reductions over time and batch are products and sums after the loop, so two
identical calls give bit-identical results.

Shapes: T time steps, B batch, I input size, H hidden size.
"""

from __future__ import annotations

import numpy as np

from polylstm.backend import ForwardOutput, Gradients, Tape

from ._kernels import launch_config

_INT32_MAX = 2**31 - 1


def _check_sizes(T: int, B: int, H: int) -> None:
    for name, value in (("T (time steps)", T), ("B (batch)", B), ("4*H (gate width)", 4 * H)):
        if value > _INT32_MAX:
            raise ValueError(f"{name} = {value} exceeds the kernels' int range")


def _device_lengths(xp, lengths):
    """lengths (B,) host int64 or None -> the kernels' int32 array of xp, or None."""
    if lengths is None:
        return None
    return xp.asarray(np.ascontiguousarray(lengths, dtype=np.int32))


def previous_step_values(xp, values, initial, lengths, reverse):
    """The state each step started from: h_{t-1} or c_{t-1} at every t.

    values:  (T, B, H) per-step states from the tape (zero at padded steps).
    initial: (B, H) state before each sequence's first processed step.
    lengths: (B,) int array of xp, or None. Returns (T, B, H); entries at
    padded steps are meaningless and are multiplied by a zero gradient.
    """
    T, B, _ = values.shape
    prev = xp.empty_like(values)
    if not reverse:
        prev[0] = initial
        prev[1:] = values[:-1]
    else:
        prev[T - 1] = initial
        prev[:-1] = values[1:]
        if lengths is not None:
            # A reverse direction starts at t = lengths[b]-1, where the state
            # before is the initial one (the padded step after it holds zeros).
            prev[lengths - 1, xp.arange(B)] = initial
    return prev


def forward(xp, launch, x, w_ih, w_hh, b, h0, c0, peephole, lengths, reverse, store,
            *, block: int = 256, max_blocks: int | None = None) -> ForwardOutput:
    """LSTM forward over the sequence (the contract of Backend.forward).

    x: (T, B, I)  w_ih: (4H, I)  w_hh: (4H, H)  b: (4H,)  h0, c0: (B, H)
    peephole: (3, H) or None  lengths: (B,) host int64 or None
    reverse: bool  store: keep gates (T, B, 4H) and c (T, B, H) for backward.
    block / max_blocks: launch configuration (tests shrink the grid to
    exercise the kernels' grid-stride loops).
    Inputs are only read: h0 and c0 are copied into the state buffers.
    """
    T, B, I = x.shape
    H = w_hh.shape[1]
    dtype = x.dtype
    _check_sizes(T, B, H)
    i32 = np.int32

    xw = xp.matmul(x.reshape(T * B, I), w_ih.T).reshape(T, B, 4 * H)
    lengths_dev = _device_lengths(xp, lengths)
    h = h0.copy()
    c = c0.copy()
    # Every element of these is written by the kernel (zeros at padded steps),
    # so they start uninitialised.
    y = xp.empty((T, B, H), dtype)
    gates = xp.empty((T, B, 4 * H), dtype) if store else None
    cells = xp.empty((T, B, H), dtype) if store else None
    hw = xp.empty((B, 4 * H), dtype)
    # One transposed copy per call, so no step's product depends on how the
    # BLAS handles a transposed view.
    w_hh_t = xp.ascontiguousarray(w_hh.T)
    grid, threads = launch_config(B * H, block, max_blocks)
    for step in range(T):
        xp.matmul(h, w_hh_t, out=hw)
        launch("lstm_forward", dtype, grid, threads, (
            i32(T), i32(B), i32(H), i32(step), i32(bool(reverse)), lengths_dev,
            xw, hw, b, peephole, h, c, y, gates, cells,
        ))
    return ForwardOutput(y=y, h_n=h, c_n=c, gates=gates, c=cells)


def backward(xp, launch, tape: Tape, dy, dh_n, dc_n,
             *, block: int = 256, max_blocks: int | None = None) -> Gradients:
    """BPTT from ``tape`` (the contract of Backend.backward).

    dy: (T, B, H)  dh_n, dc_n: (B, H). The tape must hold gates (T, B, 4H)
    and c (T, B, H), i.e. come from a forward with ``store``.
    Returns dx (T, B, I), dw_ih (4H, I), dw_hh (4H, H), db (4H,),
    dh0, dc0 (B, H), dpeephole (3, H) or None.
    """
    if tape.gates is None or tape.c is None:
        raise ValueError("tape: backward needs the gates and cell states of a forward with store=True")
    x, w_ih, w_hh, p = tape.x, tape.w_ih, tape.w_hh, tape.peephole
    T, B, I, H = tape.shape
    dtype = x.dtype
    _check_sizes(T, B, H)
    i32 = np.int32
    reverse = bool(tape.reverse)
    lengths_dev = _device_lengths(xp, tape.lengths)
    # Sequences sit at different time indices in one step only when a reverse
    # direction has lengths; then the kernel gathers the step's rows of da
    # into da_step for the recurrent product.
    ragged = reverse and tape.lengths is not None

    da = xp.empty((T, B, 4 * H), dtype)
    da_step = xp.empty((B, 4 * H), dtype) if ragged else None
    dp_part = xp.empty((T, B, 3 * H), dtype) if p is not None else None
    dh = dh_n.copy()
    dc = dc_n.copy()
    dh_rec = xp.zeros((B, H), dtype)
    grid, threads = launch_config(B * H, block, max_blocks)
    for step in range(T - 1, -1, -1):
        launch("lstm_backward", dtype, grid, threads, (
            i32(T), i32(B), i32(H), i32(step), i32(reverse), lengths_dev,
            tape.gates, tape.c, tape.c0, p, dy, dh_rec, dh, dc, da, da_step, dp_part,
        ))
        rows = da_step if ragged else da[T - 1 - step if reverse else step]
        xp.matmul(rows, w_hh, out=dh_rec)
    dh0 = dh + dh_rec
    dc0 = dc

    flat_da = da.reshape(T * B, 4 * H)
    dx = xp.matmul(flat_da, w_ih).reshape(T, B, I)
    dw_ih = xp.matmul(flat_da.T, x.reshape(T * B, I))
    h_prev = previous_step_values(xp, tape.y, tape.h0, lengths_dev, reverse)
    dw_hh = xp.matmul(flat_da.T, h_prev.reshape(T * B, H))
    db = flat_da.sum(axis=0)
    dpeephole = None if dp_part is None else dp_part.reshape(T * B, 3, H).sum(axis=0)
    return Gradients(dx=dx, dw_ih=dw_ih, dw_hh=dw_hh, db=db, dh0=dh0, dc0=dc0, dpeephole=dpeephole)
