"""Compiled LSTM kernels (numba). Imported only by ``NumbaBackend`` at load time.

Shapes: T time steps, B batch, I input size, H hidden size, G = 4H.
Every array argument is C-contiguous and all float arrays share one dtype
(float32 or float64); every function is compiled once per dtype and cached on
disk (``cache=True``), so a machine pays the JIT cost once.

Time order follows the reference: the loop visits t = 0..T-1 (or T-1..0 when
``reverse``), every sequence at the same t; sequence b is *active* at t when
``t < lengths[b]``. An inactive sequence keeps its state and gets zeros in
``y``, ``gates`` and ``c`` (the output buffers arrive zero-filled when there
are padded steps). For a reverse direction this starts each sequence at its
own ``lengths[b] - 1``.

Three ways to run the recurrence, chosen by the caller per call:

* **rows** (``forward_rows``, ``forward_packed``, ``backward_rows``): the
  batch is cut into contiguous row blocks; each thread runs the whole time
  loop for its blocks, calling a single-threaded BLAS, the packed-weight
  micro-kernel of ``_packed`` (one block per thread, so that a weight panel
  serves all the thread's rows), or, where scipy's BLAS cannot be made
  single-threaded (not an OpenBLAS), a hand-written product. Rows of
  different blocks never interact, so there is no per-step synchronisation
  and no BLAS thread pool (without the packed kernel, blocks of fewer than 4
  rows keep the hand-written product: measured faster for one-row blocks).
  A batch of 1-3 rows on the packed product is one block on one thread;
  in a forward without a tape a second thread then computes its input
  projection ahead of the time loop (``forward_rows``'s roles).
  The threads are plain Python threads calling these GIL-free functions
  (see ``_backend``), not numba's ``parallel=True``: its OpenMP layer
  spin-waits, which on a 2-core machine shared with other work made one
  call 16x slower.
* **columns** (``forward_split``, ``backward_split``): the hidden units are
  cut into slices, one per thread; a thread multiplies every row by its
  slice of the weights, so it streams only that slice at every step, and
  the threads exchange h (the backward: da_t) through shared buffers,
  claiming each step's pieces and waiting for the step before with atomics
  (``_barrier``). For batches too small to give every thread rows of its
  own.
* **blas** (``*_blas``): one thread walks time; the per-step product is one
  BLAS GEMM over the whole batch (``np.dot`` with ``out``, so no allocation),
  using BLAS's own threads. For one row at hidden sizes where BLAS's two
  threads beat one thread's packed product (``_backend.choose_path``), and
  for large shapes where scipy's BLAS is not an OpenBLAS.

The input projection ``x @ w_ih.T`` is fused into the per-step product on
the packed kernel (``forward_packed``: ``[x_t | h] @ [w_ih.T; w_hh.T]``);
elsewhere it is computed for all steps before the time loop (per row block,
or one BLAS GEMM on the BLAS path). After the backward loop ``dx``,
``dw_ih``, ``dw_hh`` and ``db`` are products over all steps
(``backward_products``, or its pieces run on several threads): only
``dh_{t-1} = da_t @ w_hh`` is sequential.
"""

import numpy as np
from numba import njit

from . import _barrier, _packed
from ._activations import one_like, sigmoid, tanh

# How a kernel multiplies (``product`` arguments): the hand-written product,
# a BLAS call, or the packed-weight micro-kernel (``_packed``, float32).
HAND, BLAS, PACKED = 0, 1, 2

# 'contract' lets LLVM fuse a*b+c into one FMA: faster and still deterministic
# (the same machine code runs on every call). No reassociation is allowed.
# error_model="numpy": with Python's error model every float division checks
# for zero and raises, a branch that stops LLVM vectorising the gate loops.
_FASTMATH = {"contract"}


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def matmul_acc(a, w, out):
    """out (M, N) += a (M, K) @ w (K, N). All C-contiguous, one dtype.

    Register-friendly blocking without intrinsics: the inner loop runs over N
    (LLVM vectorises it) and each pass carries 4 rows of ``out`` x 4 rows of
    ``w``, so every vector of ``w`` loaded feeds 4 FMAs and every load/store of
    ``out`` carries 4 FMAs. Measured on the 2-core AVX-512 box: 1.7-2.5x the
    one-row version for 8-32 rows. Leftover rows and k go one at a time.
    """
    M, K = a.shape
    N = w.shape[1]
    K4 = K - K % 4
    M4 = M - M % 4
    for m in range(0, M4, 4):
        o0 = out[m]
        o1 = out[m + 1]
        o2 = out[m + 2]
        o3 = out[m + 3]
        for k in range(0, K4, 4):
            w0 = w[k]
            w1 = w[k + 1]
            w2 = w[k + 2]
            w3 = w[k + 3]
            a0, a1, a2, a3 = a[m, k], a[m, k + 1], a[m, k + 2], a[m, k + 3]
            b0, b1, b2, b3 = a[m + 1, k], a[m + 1, k + 1], a[m + 1, k + 2], a[m + 1, k + 3]
            c0, c1, c2, c3 = a[m + 2, k], a[m + 2, k + 1], a[m + 2, k + 2], a[m + 2, k + 3]
            d0, d1, d2, d3 = a[m + 3, k], a[m + 3, k + 1], a[m + 3, k + 2], a[m + 3, k + 3]
            for n in range(N):
                x0 = w0[n]
                x1 = w1[n]
                x2 = w2[n]
                x3 = w3[n]
                o0[n] += a0 * x0 + a1 * x1 + a2 * x2 + a3 * x3
                o1[n] += b0 * x0 + b1 * x1 + b2 * x2 + b3 * x3
                o2[n] += c0 * x0 + c1 * x1 + c2 * x2 + c3 * x3
                o3[n] += d0 * x0 + d1 * x1 + d2 * x2 + d3 * x3
        for k in range(K4, K):
            wk = w[k]
            a0, b0, c0, d0 = a[m, k], a[m + 1, k], a[m + 2, k], a[m + 3, k]
            for n in range(N):
                x0 = wk[n]
                o0[n] += a0 * x0
                o1[n] += b0 * x0
                o2[n] += c0 * x0
                o3[n] += d0 * x0
    for m in range(M4, M):
        orow = out[m]
        arow = a[m]
        for k in range(0, K4, 4):
            a0 = arow[k]
            a1 = arow[k + 1]
            a2 = arow[k + 2]
            a3 = arow[k + 3]
            w0 = w[k]
            w1 = w[k + 1]
            w2 = w[k + 2]
            w3 = w[k + 3]
            for n in range(N):
                orow[n] += a0 * w0[n] + a1 * w1[n] + a2 * w2[n] + a3 * w3[n]
        for k in range(K4, K):
            ak = arow[k]
            wk = w[k]
            for n in range(N):
                orow[n] += ak * wk[n]


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def multiply(a, w, w_packed, out, product, backwards):
    """out (M, N) = a (M, K) @ w (K, N), all C-contiguous, one dtype, by the
    ``product`` kind: PACKED, the micro-kernel on ``w_packed`` =
    ``_packed.pack(w)`` (``_packed.matmul_few`` for 1-3 rows, its panels
    visited last to first when ``backwards``: a time loop alternates it);
    BLAS, ``np.dot``; HAND, the hand-written kernel. ``w_packed`` is not
    read unless PACKED (any array of rank 3 will do), ``w`` only unless
    PACKED (any array of rank 2)."""
    if product == PACKED:
        if a.shape[0] <= 3:
            _packed.matmul_few(a, w_packed, out, out, out[0], False, backwards)
        else:
            _packed.matmul(a, w_packed, out)
    elif product == BLAS:
        np.dot(a, w, out)
    else:
        out[:] = 0
        matmul_acc(a, w, out)


@njit(cache=True, inline="always", fastmath=_FASTMATH, error_model="numpy")
def _cell_forward_row(a, xr, b, p, hr, cr, yr, gr, ctr, keep):
    """One sequence, one step of the cell; vectorised over the hidden units.

    a:  (4H,) recurrent part h_{t-1} @ w_hh.T     xr: (4H,) x_t @ w_ih.T
    b:  (4H,) bias (added here rather than in a pass over the projection)
    With ``keep``, ``a`` is overwritten with the pre-activations; ``xr`` may
    be the same memory as ``gr`` (the projection kept in the gate tape): it
    is read only in the first loop, before ``gr`` is written. Other
    arguments as ``_gate_row``.
    """
    if not keep:
        _gate_loop_summed(a, xr, b, p, hr, cr, yr)
        return
    # Separate short loop: with ``xr`` and ``b`` also read in the taped gate
    # loop, LLVM needs more runtime alias checks than it allows and gives up
    # vectorising it (measured: 10x slower).
    for j in range(a.shape[0]):
        a[j] += xr[j] + b[j]
    _gate_row(a, p, hr, cr, yr, gr, ctr, keep)


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _gate_loop_summed(a, xr, b, p, hr, cr, yr):
    """``_gate_loop`` on the pre-activations a + (xr + b), summed inside the
    loop (the taped path's order, so both give the same bits): without the
    tape's two output arrays the loop stays vectorised with ``xr`` and ``b``
    in it, and the separate adding pass goes (gate pass at 4 rows x H = 128:
    2.7 instead of 3.3-4.0 ns per unit)."""
    H = hr.shape[0]
    pi = p[0]
    pf = p[1]
    po = p[2]
    for j in range(H):
        cp = cr[j]
        ig, fg, gg, og, cn, hn = _cell_math(
            a[j] + (xr[j] + b[j]), a[H + j] + (xr[H + j] + b[H + j]),
            a[2 * H + j] + (xr[2 * H + j] + b[2 * H + j]),
            a[3 * H + j] + (xr[3 * H + j] + b[3 * H + j]), cp, pi[j], pf[j], po[j])
        cr[j] = cn
        hr[j] = hn
        yr[j] = hn


@njit(cache=True, inline="always", fastmath=_FASTMATH, error_model="numpy")
def _gate_row(a, p, hr, cr, yr, gr, ctr, keep):
    """The gates of one sequence at one step, from its pre-activations.

    a:  (4H,) pre-activations (i f g o blocks; input, recurrent and bias terms)
    p:  (3, H) peepholes (zeros when the call has none)
    hr, cr: (H,) state, updated in place.  yr: (H,) output row.
    gr: (4H,) post-activation gates out.   ctr: (H,) cell state out.
    Without ``keep`` (no tape) ``gr`` and ``ctr`` are not written: two
    fewer output arrays make the loop 14-29% faster (fewer stores and runtime
    alias checks; measured at H = 64..512).

    Inlined, like ``_cell_forward_row``, so that a row's gate pass is one
    call (of the loop), not two: each call level with seven arrays costs
    ~30 ns per row and step (100 steps x 4 rows of 64 units: 3.4 ns per
    unit through two levels, 2.9 through one; T200-B1-I32-H64 forward
    0.91x with the 1-3-row product's tiles inlined too). The loops stay
    called functions: inlined too (2.15 ns per unit) they made the first
    float32 call compile ~10 s longer, each copy of a gate loop costing
    seconds.
    """
    if keep:
        _gate_loop_taped(a, p, hr, cr, yr, gr, ctr)
    else:
        _gate_loop(a, p, hr, cr, yr)


@njit(cache=True, inline="always", fastmath=_FASTMATH, error_model="numpy")
def _cell_math(ai, af, ag, ao, cp, pi, pf, po):
    """The LSTM cell for one unit: pre-activations ai af ag ao, c_{t-1} = cp,
    peepholes pi pf po. Returns (i, f, g, o, c_t, h_t)."""
    ig = sigmoid(ai + pi * cp)
    fg = sigmoid(af + pf * cp)
    gg = tanh(ag)
    cn = fg * cp + ig * gg
    og = sigmoid(ao + po * cn)
    return ig, fg, gg, og, cn, og * tanh(cn)


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _gate_loop_taped(a, p, hr, cr, yr, gr, ctr):
    """``_gate_row`` writing the tape (gates and cell state)."""
    H = hr.shape[0]
    pi = p[0]
    pf = p[1]
    po = p[2]
    for j in range(H):
        cp = cr[j]
        ig, fg, gg, og, cn, hn = _cell_math(a[j], a[H + j], a[2 * H + j], a[3 * H + j], cp,
                                            pi[j], pf[j], po[j])
        gr[j] = ig
        gr[H + j] = fg
        gr[2 * H + j] = gg
        gr[3 * H + j] = og
        ctr[j] = cn
        cr[j] = cn
        hr[j] = hn
        yr[j] = hn


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _gate_loop(a, p, hr, cr, yr):
    """``_gate_row`` without a tape: state and output only. A loop of its own,
    not a ``keep`` branch in ``_gate_loop_taped``: LLVM versions a loop on
    runtime alias checks between every pair of arrays it may write, so the
    tape arrays cost even where the branch skips them (the math is shared
    through ``_cell_math``)."""
    H = hr.shape[0]
    pi = p[0]
    pf = p[1]
    po = p[2]
    for j in range(H):
        cp = cr[j]
        ig, fg, gg, og, cn, hn = _cell_math(a[j], a[H + j], a[2 * H + j], a[3 * H + j], cp,
                                            pi[j], pf[j], po[j])
        cr[j] = cn
        hr[j] = hn
        yr[j] = hn


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _forward_steps(r0, r1, s0, s1, xw, b, w_hh_t, w_hh_p, p, lengths, reverse, h, c, y, gates,
                   ctape, acc, product):
    """Steps s0..s1-1 of the time loop (t = s, or T-1-s when ``reverse``)
    for batch rows r0..r1-1; ``product``: HAND, BLAS or PACKED.

    xw: (T, B, 4H) input projection x @ w_ih.T.   b: (4H,) bias.
    w_hh_t: (H, 4H) = w_hh.T, C order; w_hh_p: ``_packed.pack(w_hh_t)``,
    (P, H, L), read only for PACKED (as ``w_hh_t`` only otherwise). For
    PACKED, xw, b and acc have G = ``_packed.padded(4H, L)`` columns
    instead of 4H (the product writes whole panels; the gates read 4H).
    p: (3, H)   lengths: (B,) int64   h, c: (B, H) state, updated in place.
    y: (T, B, H), gates: (T, B, 4H), ctape: (T, B, H) outputs (zero-filled where
    a row has padded steps: inactive steps are not written); when
    the caller keeps no tape, ``gates`` and ``ctape`` are (1, B, ·)
    placeholders, not written.   acc: (B, 4H) scratch for the recurrent
    product.
    """
    T = xw.shape[0]
    keep = gates.shape[0] == T
    # Blocks of 1-3 rows on the packed product: its tiles start from the
    # projection and bias, so the gate pass needs no adding pass of its own
    # (at T200-B1-H64 that pass and its call were a third of the gate time).
    few = product == PACKED and r1 - r0 <= 3
    for s in range(s0, s1):
        t = T - 1 - s if reverse else s
        tt = t if keep else 0
        if few:
            _packed.matmul_few(h[r0:r1], w_hh_p, acc[r0:r1], xw[t, r0:r1], b, True, s % 2 == 1)
            for r in range(r0, r1):
                if t < lengths[r]:
                    _gate_row(acc[r], p, h[r], c[r], y[t, r], gates[tt, r], ctape[tt, r], keep)
            continue
        multiply(h[r0:r1], w_hh_t, w_hh_p, acc[r0:r1], product, s % 2 == 1)
        for r in range(r0, r1):
            if t < lengths[r]:
                _cell_forward_row(acc[r], xw[t, r], b, p, h[r], c[r], y[t, r],
                                  gates[tt, r], ctape[tt, r], keep)


# Roles of a ``forward_rows`` call (its ``role`` argument).
ALONE, RECURRENCE, PROJECTION = 0, 1, 2


@njit(cache=True, nogil=True, error_model="numpy")
def forward_rows(r0, r1, x, w_ih_t, w_ih_p, b, w_hh_t, w_hh_p, p, lengths, reverse, h, c, y,
                 gates, ctape, xw, acc, product, role, pieces, sync):
    """Whole forward for batch rows r0..r1-1; releases the GIL so the caller
    runs one row block per thread.

    x: (T, B, I)   w_ih_t: (I, 4H) = w_ih.T, C order   b: (4H,)
    w_ih_p: ``_packed.pack(w_ih_t)``, (P, I, L), read only for PACKED.
    xw: (T, B, 4H) scratch for the input projection (this block's rows;
    G columns for PACKED, see ``_forward_steps``).
    Other arguments as ``_forward_steps``. ``product`` (``multiply``): BLAS
    calls, which the caller has made single-threaded for this thread
    (``_blas_threads``); HAND, the hand-written kernel, as a multi-threaded
    BLAS here would wake BLAS's thread pool, whose spinning workers then
    compete with the other row blocks' threads; or PACKED, used here for
    blocks of 1-3 rows (blocks of more rows have ``forward_packed``, with
    the projection fused into the step's product: for a row or three that
    turns an efficient product over all steps into a weight streamed from
    L2 at every step). The input projection of all steps is done first, one
    product per step over the block's rows. ``sync``: as ``forward_packed``.

    ``role`` ALONE: all of the above. Otherwise a second thread computes
    the projection ahead of the time loop, which a one-block call (a batch
    of 1-3 rows) runs on one thread while the other core idles: two calls,
    one with ``role`` RECURRENCE, one with PROJECTION, on the same
    arguments (r0 = 0, r1 = B, PACKED). The projection is pieces, one per
    span of the time loop's steps (``pieces``: (spans,) int64 zeros; spans
    of ceil(T / spans) steps). The PROJECTION call takes every piece that no
    thread has taken yet (``_barrier.claim``), in order, and marks it done;
    the RECURRENCE call, before each span, takes that span's piece if it is
    still free, or waits for the thread that took it to mark it done. So if
    the other thread starts late or never, the RECURRENCE call does all the
    work itself, and it waits only on a piece being computed. Measured back
    to back against the projection on the loop's thread
    (``benchmarks/numba_ab.py``, forward): T200-B1-I32-H64 0.94-0.96x,
    T100-B2-I64-H64 0.79-0.81x, T100-B1-I128-H128 0.81x, T100-B3-I32-H64
    0.90-0.91x (and with the weights packed over the last call's copy,
    ``_backend._pack_transposed``, 0.92-0.95x, 0.86-0.89x, 0.79-0.83x
    more).
    """
    _barrier.started(sync)
    T = x.shape[0]
    spans = 1 if role == ALONE else pieces.shape[0]
    span = -(-T // spans)
    # One call site each of the projection and of the time loop for every
    # role: with a second call site of each (the roles written apart) the
    # first call of this kernel compiled ~1 s longer (15.5 against 14.5 s).
    for q in range(spans):
        s0 = q * span
        s1 = min(T, s0 + span)
        if role == ALONE or _barrier.claim(pieces, q):
            t0, t1 = (T - s1, T - s0) if reverse else (s0, s1)
            _project(r0, r1, t0, t1, x, w_ih_t, w_ih_p, xw, product)
            if role != ALONE:
                _barrier.finish(pieces[q:])  # 1 -> 2: done, its rows of xw written
        elif role == RECURRENCE:
            _barrier.wait_until(pieces[q:], 2)
        if role != PROJECTION:
            _forward_steps(r0, r1, s0, s1, xw, b, w_hh_t, w_hh_p, p, lengths, reverse, h, c, y,
                           gates, ctape, acc, product)


@njit(cache=True, nogil=True, error_model="numpy")
def _project(r0, r1, t0, t1, x, w_ih_t, w_ih_p, xw, product):
    """xw[t, r0:r1] = x[t, r0:r1] @ w_ih_t for t = t0..t1-1 (``multiply``;
    arguments as ``forward_rows``): one product over all those rows where
    the block holds the whole batch (they are then contiguous), else one
    per step."""
    T, B, I = x.shape
    G = xw.shape[2]
    if t1 <= t0:
        return
    if r1 - r0 == B:
        n = (t1 - t0) * B
        multiply(x[t0:t1].reshape(n, I), w_ih_t, w_ih_p, xw[t0:t1].reshape(n, G), product, False)
    else:
        for t in range(t0, t1):
            multiply(x[t, r0:r1], w_ih_t, w_ih_p, xw[t, r0:r1], product, False)


@njit(cache=True, nogil=True, fastmath=_FASTMATH, error_model="numpy")
def forward_packed(r0, r1, x, w_p, p, lengths, reverse, h, c, y, gates, ctape, zh, acc, sync):
    """Whole forward for batch rows r0..r1-1 on the packed kernel, the input
    projection and the bias fused into the per-step product (GIL released:
    one row block per thread).

    Each step multiplies [x_t | h_{t-1} | 1] (rows, I+H+1) by the stacked
    weight [w_ih.T; w_hh.T; b] (I+H+1, 4H), packed once per call:
    w_p = ``_packed.packed_stacked``, (P, I+H+1, L),
    L = ``_packed.WIDE_PANEL`` (``_packed.matmul_wide_pair``: x_t is read
    where it lies, [h_{t-1} | 1] from zh), P = 4H/L rounded up.
    No (T, B, 4H) projection buffer is written and read back: at
    T100-B64-H512 that buffer is 52 MB, beyond L3, first touched (page
    faults) on every call. The bias row costs one multiply-add per output
    in the product instead of a pass of its own over the pre-activations,
    with the same bits (see ``packed_stacked``).

    x: (T, B, I)   zh: (B, H+1) scratch: during the loop the state h lives
    in zh[:, :H], where the gate pass writes h_t for the next step's product
    (copying h into a joined operand at every step took ~37 us of a
    T100-B8-I128-H128 forward's 2.16 ms on one thread); h gets it back at
    the end.   acc: (B, PL) scratch (the gates read its first 4H columns).
    sync: (2,) int64, the thread pool's (``_pool``), where the kernel first
    publishes that it has begun (``_barrier.started``), as every kernel the
    pool runs does. Other arguments as ``_forward_steps``.
    """
    _barrier.started(sync)
    T = x.shape[0]
    H = h.shape[1]
    keep = gates.shape[0] == T
    zh[r0:r1, :H] = h[r0:r1]
    zh[r0:r1, H] = 1
    for s in range(T):
        t = T - 1 - s if reverse else s
        tt = t if keep else 0
        _packed.matmul_wide_pair(x[t, r0:r1], zh[r0:r1], w_p, acc[r0:r1])
        for r in range(r0, r1):
            if t < lengths[r]:
                _gate_row(acc[r], p, zh[r, :H], c[r], y[t, r], gates[tt, r], ctape[tt, r], keep)
    h[r0:r1] = zh[r0:r1, :H]


@njit(cache=True, nogil=True, fastmath=_FASTMATH, error_model="numpy")
def forward_split(first, x, w_ih, w_hh, b, p, lengths, reverse, hbuf, c, y, gates, ctape,
                  flags, finished, edges, w_rows_ih, w_rows_hh, w_ih_p, w_hh_p, b_p, p_p, xw,
                  acc, grow, sync):
    """A forward with the hidden units split into column slices, run by
    several threads at once, each calling this (GIL released).

    The work is pieces (q, j): for slice j (units edges[j]..edges[j+1]-1,
    their four gate columns, for every row), q = 0 packs its weights and
    computes its columns of the input projection for all steps and rows;
    q = s + 1 is time step s. A thread walks q = 0..T and, for each, claims
    the slices no thread has claimed yet (``_barrier.claim``), slice
    ``first`` first, so that each thread keeps its own slice's weights in
    its cache; it computes a claimed piece once all pieces of q - 1 are
    finished (``_barrier.wait_until``). A thread that starts late or loses
    its core therefore never holds the others up (they take its pieces):
    only a piece it has claimed and not finished is waited for.

    Shared: x: (T, B, I)   w_ih: (4H, I)   w_hh: (4H, H)   b: (4H,)
    p: (3, H)   lengths: (B,)   hbuf: (2, B, H), hbuf[0] = h0: step s
    reads h_{t-1} from hbuf[s % 2] and writes h_t into hbuf[(s + 1) % 2]
    (step s - 1 has finished reading hbuf[(s + 1) % 2] before any piece of
    step s starts)   c: (B, H) updated in place   y, gates, ctape: as
    ``_forward_steps``   flags: (C * (T + 1),) int64 zeros   finished:
    (k,) int64 zeros   edges: (C + 1,) int64.
    Per slice j, with U = the largest slice's units, P = ``_packed.panels(
    4U, L)``, G = P * L: w_rows_ih (C, 4U, I), w_rows_hh (C, 4U, H): the
    rows of the four gates for its units, gathered before packing where its
    units do not fill whole panels (else (C, 0, .), not read); w_ih_p
    (C, P, I, L), w_hh_p (C, P, H, L) panels (each slice's aligned); b_p
    (C, G); p_p (C, 3U);
    xw (C, T, B, G); acc (C, B, G); grow (C, G). A slice's scratch is only
    touched by the thread computing one of its pieces, and two pieces of one
    slice never run at once. sync: as ``forward_packed``.
    """
    _barrier.started(sync)
    T = x.shape[0]
    C = edges.shape[0] - 1
    for q in range(T + 1):
        for i in range(C):
            j = (first + i) % C
            if not _barrier.claim(flags, q * C + j):
                continue
            _barrier.wait_until(finished, q * C)
            _split_piece(q, j, x, w_ih, w_hh, b, p, lengths, reverse, hbuf, c, y, gates, ctape,
                         edges, w_rows_ih, w_rows_hh, w_ih_p, w_hh_p, b_p, p_p, xw, acc, grow)
            _barrier.finish(finished)


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _split_piece(q, j, x, w_ih, w_hh, b, p, lengths, reverse, hbuf, c, y, gates, ctape, edges,
                 w_rows_ih, w_rows_hh, w_ih_p, w_hh_p, b_p, p_p, xw, acc, grow):
    """Piece (q, j) of ``forward_split`` (arguments as there)."""
    T, B, I = x.shape
    H = w_hh.shape[1]
    u0 = edges[j]
    u1 = edges[j + 1]
    U = u1 - u0
    # Every slice has the largest one's panels; a smaller slice's extra
    # columns are zeros (weights and bias), computed and never read.
    wp_ih = w_ih_p[j]
    wp_hh = w_hh_p[j]
    b_k = b_p[j]
    p_k = p_p[j, :3 * U].reshape((3, U))
    xw_k = xw[j]
    acc_k = acc[j]
    if q == 0:
        L = wp_ih.shape[2]
        if U % L == 0:
            # Each gate's rows of the slice fill whole panels: packed straight
            # from the weights, without first gathering the four gates' rows
            # (that copy was half of the packing: (50,2,512,512), per thread,
            # 0.16 of 0.31 ms for each weight).
            n = U // L
            for g in range(4):
                _packed.pack_transposed(w_ih[g * H + u0:g * H + u1], wp_ih[g * n:(g + 1) * n], 0)
                _packed.pack_transposed(w_hh[g * H + u0:g * H + u1], wp_hh[g * n:(g + 1) * n], 0)
            wp_ih[4 * n:] = 0
            wp_hh[4 * n:] = 0
        else:
            rows_ih = w_rows_ih[j]
            rows_hh = w_rows_hh[j]
            for g in range(4):
                rows_ih[g * U:(g + 1) * U] = w_ih[g * H + u0:g * H + u1]
                rows_hh[g * U:(g + 1) * U] = w_hh[g * H + u0:g * H + u1]
            rows_ih[4 * U:] = 0
            rows_hh[4 * U:] = 0
            _packed.pack_transposed(rows_ih, wp_ih, 0)
            _packed.pack_transposed(rows_hh, wp_hh, 0)
        for g in range(4):
            b_k[g * U:(g + 1) * U] = b[g * H + u0:g * H + u1]
        b_k[4 * U:] = 0
        p_k[:] = p[:, u0:u1]
        _packed.matmul(x.reshape(T * B, I), wp_ih, xw_k.reshape(T * B, xw_k.shape[2]))
        return
    s = q - 1
    t = T - 1 - s if reverse else s
    keep = gates.shape[0] == T
    tt = t if keep else 0
    h_prev = hbuf[s % 2]
    h_next = hbuf[(s + 1) % 2]
    gr = grow[j]
    few = B <= 3
    if few:
        _packed.matmul_few(h_prev, wp_hh, acc_k, xw_k[t], b_k, True, s % 2 == 1)
    else:
        _packed.matmul(h_prev, wp_hh, acc_k)
    for r in range(B):
        if t < lengths[r]:
            if few:
                _gate_row(acc_k[r], p_k, h_next[r, u0:u1], c[r, u0:u1], y[t, r, u0:u1], gr,
                          ctape[tt, r, u0:u1], keep)
            else:
                _cell_forward_row(acc_k[r], xw_k[t, r], b_k, p_k, h_next[r, u0:u1],
                                  c[r, u0:u1], y[t, r, u0:u1], gr, ctape[tt, r, u0:u1], keep)
            if keep:
                for g in range(4):
                    gates[tt, r, g * H + u0:g * H + u1] = gr[g * U:(g + 1) * U]
        else:
            h_next[r, u0:u1] = h_prev[r, u0:u1]


@njit(cache=True, nogil=True, error_model="numpy")
def forward_blas(x, w_ih, b, w_hh_t, p, lengths, reverse, h, c, y, gates, ctape, xw, acc):
    """Whole forward on one thread: the input projection of all steps as one
    BLAS GEMM, then a BLAS GEMM per step over the whole batch.

    x: (T, B, I)   w_ih: (4H, I)   b: (4H,)   xw: (T, B, 4H) scratch.
    w_hh_t: (H, 4H) = w_hh.T, in either memory order (the caller passes the
    transposed view of w_hh: BLAS reads it as it is).
    Other arguments as ``_forward_steps``. Every product goes through the same
    BLAS (scipy's, which numba calls), so only one BLAS thread pool is awake.
    """
    T, B, I = x.shape
    G = xw.shape[2]
    xw2 = xw.reshape(T * B, G)
    np.dot(x.reshape(T * B, I), w_ih.T, xw2)
    # No packed weight on this path: any array of rank 3 fills that place.
    _forward_steps(0, B, 0, T, xw, b, w_hh_t, xw, p, lengths, reverse, h, c, y, gates, ctape, acc,
                   BLAS)


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _cell_backward_row(dhr, dcr, dyr, gr, ctr, cpr, p, dar, dp):
    """One sequence, one step of BPTT through the cell, over the hidden units.

    dhr, dcr: (H,) gradient reaching h_t, c_t from later steps; dcr is
    replaced by the gradient for c_{t-1}.   dyr: (H,) dy_t.
    gr: (4H,) gates i f g o.   ctr: (H,) c_t.   cpr: (H,) c_{t-1}.
    p: (3, H) peepholes (zeros when none).   dar: (4H,) da_t out.
    dp: (3, H) peephole gradient, accumulated.
    (A column slice passes its units' parts, gathered: ``_backward_piece``.
    Looping over units u0..u1-1 of the whole arrays instead kept LLVM from
    vectorising it: 8.8 against 2.0 ns per unit at H = 128.)
    """
    H = dhr.shape[0]
    one = one_like(dhr[0])
    for j in range(H):
        ig = gr[j]
        fg = gr[H + j]
        gg = gr[2 * H + j]
        og = gr[3 * H + j]
        ct = ctr[j]
        cp = cpr[j]
        tc = tanh(ct)
        dh = dhr[j] + dyr[j]
        dao = dh * tc * og * (one - og)
        dct = dcr[j] + dh * og * (one - tc * tc) + dao * p[2, j]
        dai = dct * gg * ig * (one - ig)
        daf = dct * cp * fg * (one - fg)
        dag = dct * ig * (one - gg * gg)
        dcr[j] = dct * fg + dai * p[0, j] + daf * p[1, j]
        dar[j] = dai
        dar[H + j] = daf
        dar[2 * H + j] = dag
        dar[3 * H + j] = dao
        dp[0, j] += dai * cp
        dp[1, j] += daf * cp
        dp[2, j] += dao * ct


@njit(cache=True, inline="always", error_model="numpy")
def _previous_state(r, t, lengths, reverse, h0, c0, y, ctape):
    """(c_{t-1}, h_{t-1}) of row r at its active step t, both (H,): from the
    tape, or c0 and h0 at the row's first step (t = 0, or its last valid
    step when ``reverse``). Inlined: it runs per row and step."""
    tp = t + 1 if reverse else t - 1
    if (tp >= lengths[r]) if reverse else (tp < 0):
        return c0[r], h0[r]
    return ctape[tp, r], y[tp, r]


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _backward_steps(r0, r1, blk, dy, w_hh, w_hh_p, p, lengths, reverse, h0, c0, y, gates, ctape,
                    dh, dc, da, hprev, dp, tmp, product):
    """BPTT time loop for batch rows r0..r1-1; ``product`` as in
    ``_forward_steps``, or PACKED with ``w_hh_p`` = ``_packed.pack(w_hh)``,
    (P, 4H, L), L = ``_packed.PANEL`` of the dtype, P = H/L rounded up
    (otherwise any float array of that rank).

    dy: (T, B, H)   w_hh: (4H, H)   p: (3, H)   lengths: (B,)   h0, c0: (B, H)
    y, ctape: (T, B, H) and gates: (T, B, 4H) from the tape.
    dh, dc: (B, H) start as dh_n, dc_n and end as dh0, dc0 (updated in place).
    da: (T, B, 4H) receives da_t (zero-filled when rows have padded steps).
    hprev: (T, B, H) receives
    h_{t-1} of every active step (for dw_hh).   dp: (nblocks, 3, H) zero-filled,
    row ``blk`` receives this block's peephole gradient.   tmp: (B, H)
    scratch; for PACKED (B, ``_packed.padded(H, L)``), as the product writes
    whole panels.
    """
    T, _, H = dy.shape
    for s in range(T):
        t = s if reverse else T - 1 - s
        for r in range(r0, r1):
            if t < lengths[r]:
                cpr, hpr = _previous_state(r, t, lengths, reverse, h0, c0, y, ctape)
                hprev[t, r] = hpr
                _cell_backward_row(dh[r], dc[r], dy[t, r], gates[t, r], ctape[t, r], cpr,
                                   p, da[t, r], dp[blk])
        multiply(da[t, r0:r1], w_hh, w_hh_p, tmp[r0:r1], product, s % 2 == 1)
        for r in range(r0, r1):
            if t < lengths[r]:
                dh[r] = tmp[r, :H]


@njit(cache=True, nogil=True, error_model="numpy")
def backward_rows(r0, r1, blk, dy, w_hh, w_hh_p, p, lengths, reverse, h0, c0, y, gates, ctape,
                  dh, dc, da, hprev, dp, tmp, product, sync):
    """BPTT time loop for rows r0..r1-1 (one row block per thread, GIL
    released); block ``blk`` writes ``dp[blk]`` (nb, 3, H). Arguments as
    ``_backward_steps``; ``product`` as in ``forward_rows``. The caller then
    computes the gradients of all steps (``input_gradient_rows``,
    ``weight_gradient``, ``bias_gradient``). sync: as ``forward_packed``.
    """
    _barrier.started(sync)
    _backward_steps(r0, r1, blk, dy, w_hh, w_hh_p, p, lengths, reverse, h0, c0,
                    y, gates, ctape, dh, dc, da, hprev, dp, tmp, product)


@njit(cache=True, nogil=True, error_model="numpy")
def backward_split(first, dy, w_hh, p, lengths, reverse, h0, c0, y, gates, ctape, dh, dc, da,
                   hprev, flags, finished, edges, w_hh_p, tmp, g_k, da_k, p_k, dp_k, sync):
    """BPTT with the hidden units split into column slices, run by several
    threads at once, each calling this (GIL released): the backward of
    ``forward_split``, in which each thread streams only its slice's columns
    of w_hh at every step.

    The work is pieces (q, j) for slice j (units edges[j]..edges[j+1]-1):
    q = 0 packs its columns of w_hh; backward step s (t = T-1-s, or s when
    ``reverse``) has two, q = 2s+1, the cell's backward for the slice's units
    of every row (their columns of da_t, dc, dp, hprev), and q = 2s+2, the
    slice's units of dh_{t-1} = da_t @ w_hh, which reads all of da_t, so all
    slices' pieces 2s+1. Claimed and waited for as in ``forward_split``: a
    thread claims its own slice first and starts a piece once every piece
    of q - 1 has finished.

    dy: (T, B, H)   w_hh: (4H, H)   p: (3, H)   lengths: (B,)
    h0, c0: (B, H)   y, ctape: (T, B, H), gates: (T, B, 4H) from the tape
    dh, dc: (B, H), dh_n and dc_n in, dh0 and dc0 out   da: (T, B, 4H) and
    hprev: (T, B, H) out, as ``_backward_steps``   flags: (C * (2T + 1),)
    int64 zeros   finished: (k,) int64 zeros   edges: (C + 1,) int64. Per
    slice, with U the largest slice's units and P = ``_packed.panels(U,
    L)``: w_hh_p (C, P, 4H, L) and tmp (C, B, P * L), g_k and da_k (C, 4U)
    (a row's gates and da_t for the slice's units, gathered and scattered
    around the cell's backward), p_k (C, 3U) scratch; dp_k (C, 3U) out: the
    slice's peephole gradient, (3, u) for its u units. sync: as
    ``forward_packed``.
    """
    _barrier.started(sync)
    T = dy.shape[0]
    C = edges.shape[0] - 1
    for q in range(2 * T + 1):
        for i in range(C):
            j = (first + i) % C
            if not _barrier.claim(flags, q * C + j):
                continue
            _barrier.wait_until(finished, q * C)
            _backward_piece(q, j, dy, w_hh, p, lengths, reverse, h0, c0, y, gates, ctape, dh,
                            dc, da, hprev, edges, w_hh_p, tmp, g_k, da_k, p_k, dp_k)
            _barrier.finish(finished)


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _backward_piece(q, j, dy, w_hh, p, lengths, reverse, h0, c0, y, gates, ctape, dh, dc, da,
                    hprev, edges, w_hh_p, tmp, g_k, da_k, p_k, dp_k):
    """Piece (q, j) of ``backward_split`` (arguments as there)."""
    T, B, H = dy.shape
    u0 = edges[j]
    u1 = edges[j + 1]
    U = u1 - u0
    wp = w_hh_p[j]
    p_j = p_k[j, :3 * U].reshape((3, U))
    dp_j = dp_k[j, :3 * U].reshape((3, U))
    if q == 0:
        used = (U + wp.shape[2] - 1) // wp.shape[2]
        _packed.pack(w_hh[:, u0:u1], wp[:used])
        wp[used:] = 0  # a smaller slice's extra panels: computed, never read
        p_j[:] = p[:, u0:u1]
        dp_j[:] = 0
        return
    s = (q - 1) // 2
    t = s if reverse else T - 1 - s
    if q % 2 == 1:
        g = g_k[j, :4 * U]
        d = da_k[j, :4 * U]
        for r in range(B):
            if t < lengths[r]:
                cpr, hpr = _previous_state(r, t, lengths, reverse, h0, c0, y, ctape)
                hprev[t, r, u0:u1] = hpr[u0:u1]
                for k in range(4):
                    g[k * U:(k + 1) * U] = gates[t, r, k * H + u0:k * H + u1]
                _cell_backward_row(dh[r, u0:u1], dc[r, u0:u1], dy[t, r, u0:u1], g,
                                   ctape[t, r, u0:u1], cpr[u0:u1], p_j, d, dp_j)
                for k in range(4):
                    da[t, r, k * H + u0:k * H + u1] = d[k * U:(k + 1) * U]
        return
    out = tmp[j]
    multiply(da[t], w_hh, wp, out, PACKED, s % 2 == 1)
    for r in range(B):
        if t < lengths[r]:
            dh[r, u0:u1] = out[r, :U]


@njit(cache=True, nogil=True, error_model="numpy")
def backward_blas(dy, w_hh, p, lengths, reverse, h0, c0, y, gates, ctape,
                  dh, dc, da, hprev, dp, tmp):
    """BPTT on one thread with a BLAS GEMM per step; ``dp`` is (1, 3, H)."""
    _backward_steps(0, dh.shape[0], 0, dy, w_hh, w_hh.reshape(1, w_hh.shape[0], w_hh.shape[1]),
                    p, lengths, reverse, h0, c0, y, gates, ctape, dh, dc, da, hprev, dp, tmp, BLAS)


@njit(cache=True, nogil=True, error_model="numpy")
def backward_products(da, x, w_ih, hprev, dx, dw_ih, dw_hh, db):
    """The parameter and input gradients, one BLAS GEMM each over all steps.

    da: (T, B, 4H)   x: (T, B, I)   w_ih: (4H, I)   hprev: (T, B, H)
    Out: dx (T, B, I) = da @ w_ih;  dw_ih (4H, I) = da.T @ x;
    dw_hh (4H, H) = da.T @ hprev;  db (4H,) = sum of da over steps and batch.
    The same products, split into pieces for several threads: the functions
    below.
    """
    T, B, G = da.shape
    da2 = da.reshape(T * B, G)
    sync = np.zeros(2, np.int64)  # not the pool's: no worker looks here
    input_gradient_rows(da2, w_ih, dx.reshape(T * B, x.shape[2]), 0, T * B, sync)
    weight_gradient(da2, x.reshape(T * B, x.shape[2]), dw_ih, sync)
    weight_gradient(da2, hprev.reshape(T * B, hprev.shape[2]), dw_hh, sync)
    bias_gradient(da2, db, sync)


@njit(cache=True, nogil=True, error_model="numpy")
def input_gradient_rows(da2, w_ih, dx2, n0, n1, sync):
    """dx2[n0:n1] = da2[n0:n1] @ w_ih.   da2: (N, 4H)  w_ih: (4H, I)  dx2: (N, I)
    sync: as ``forward_packed``."""
    _barrier.started(sync)
    np.dot(da2[n0:n1], w_ih, dx2[n0:n1])


@njit(cache=True, nogil=True, error_model="numpy")
def weight_gradient(da2, source2, dw, sync):
    """dw (4H, K) = da2.T @ source2.   da2: (N, 4H)  source2: (N, K)
    sync: as ``forward_packed``."""
    _barrier.started(sync)
    np.dot(da2.T, source2, dw)


@njit(cache=True, nogil=True, error_model="numpy")
def bias_gradient(da2, db, sync):
    """db (4H,) = sum over the N rows of da2 (N, 4H), accumulated in row order
    (deterministic). sync: as ``forward_packed``."""
    _barrier.started(sync)
    db[:] = 0
    for n in range(da2.shape[0]):
        row = da2[n]
        for j in range(da2.shape[1]):
            db[j] += row[j]


@njit(cache=True, nogil=True, error_model="numpy")
def pack_panels(source, wp, p0, sync):
    """wp[p0:p0+P] = the (K, N) matrix ``source`` in wp.shape[2]-column
    panels (``_packed.pack``), P = ``_packed.panels(N, L)``: one operand of
    the packed gradient products (``gradient_product``). sync: as
    ``forward_packed``."""
    _barrier.started(sync)
    L = wp.shape[2]
    P = (source.shape[1] + L - 1) // L
    if source.shape[0] != wp.shape[1] or not 0 <= p0 <= wp.shape[0] - P:
        raise ValueError("pack_panels: the source does not fit the panels")
    _packed.pack(source, wp[p0:p0 + P])


@njit(cache=True, nogil=True, error_model="numpy")
def gradient_product(a, wp, out, transposed, r0, r1, copy, first, first_at, second, second_at,
                     sync):
    """Rows r0..r1-1 of one gradient product after the backward loop,
    ``_packed.matmul_blocked``: out (R, P * L) = A @ w for wp = w in wide
    panels, A = a or, with ``transposed``, a.T; with ``copy``, those rows
    of out are then copied into the gradients, first[r0:r1] =
    out[r0:r1, first_at:first_at + first.shape[1]] and second likewise.

    The backend's two uses (``_packed_gradient_phases``), da2 (N, 4H) being
    da over all steps:
    - dw_ih and dw_hh in one product, da2.T @ [x2 | hprev2] (x2 (N, I),
      hprev2 (N, H) side by side in wp): transposed, first = dw_ih (4H, I)
      at 0, second = dw_hh (4H, H) at ``padded(I, L)``;
    - dx2 (N, I) = da2 @ w_ih: first = dx2 at 0 and an empty second where
      I is no multiple of L, else out is dx2 and nothing is copied.
    Each branch calls ``matmul_blocked`` with a constant flag, which the
    compiler specializes: the backward at T100-B64-I256-H256 took 0.98x
    the time of one call with the flag known at run time, for ~0.5 s more
    compiling. sync: as ``forward_packed``."""
    _barrier.started(sync)
    if transposed:
        _packed.matmul_blocked(a, wp, out, True, r0, r1)
    else:
        _packed.matmul_blocked(a, wp, out, False, r0, r1)
    if copy:
        _copy_columns(out, first_at, first, r0, r1)
        _copy_columns(out, second_at, second, r0, r1)


@njit(cache=True, nogil=True)
def _copy_columns(source, j0, out, r0, r1):
    """out[r0:r1] = source[r0:r1, j0:j0+N] for out (R, N), by scalar
    indexing: the same as two slices took ~1.5 s longer to compile."""
    for r in range(r0, r1):
        for j in range(out.shape[1]):
            out[r, j] = source[r, j0 + j]
