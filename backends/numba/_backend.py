"""The Numba backend object: allocation, argument normalisation, path choice.

The compiled code lives in :mod:`polylstm_numba._kernels`; this module
allocates, normalises optional arguments, picks one of the strategies
described there and runs row blocks (or column slices) on threads. It calls no NumPy matrix
product itself: NumPy's BLAS is a second OpenBLAS with its own thread pool,
and its workers spin for a while after each call, stealing a core from the
kernels that follow (see docs/benchmarks.md).

Shapes: T time steps, B batch, I input size, H hidden size.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading

import numba
import numpy as np

from polylstm.backend import Backend, ForwardOutput, Gradients

from . import _barrier, _blas_threads, _kernels, _packed, _pool, _scratch

#: Row blocks calling single-threaded BLAS beat one multi-threaded BLAS call
#: per step up to this hidden size; above it every block streams a recurrent
#: weight too large for its core's cache on every step. Measured rows / BLAS
#: path time, forward: float32 H=128 at B=16..512 0.53-0.68, H=192 at B=8..64
#: 0.49-0.81, H=224 at B=64 0.86, H=256 at B=8..64 2.1-3.5; float64 H=192
#: at B=32 0.82. See docs/benchmarks.md.
ROWS_PATH_MAX_H = 192

#: With the hand-written product, the rows path is taken up to this many
#: multiply-adds per step and thread in the recurrent product
#: (rows_per_thread * H * 4H): T100-B16-I128-H128 rows 2.9 ms vs BLAS path
#: 4.8 ms, T100-B64-I256-H256 62 vs 47 ms.
ROWS_PATH_HAND_MAX_MACS = 1 << 20

#: The same bound for blocks of fewer than BLOCK_ROWS rows (small batches)
#: on the hand-written product (no OpenBLAS under scipy), and for a single
#: row on the packed one below ONE_ROW_PACKED_MIN_H. Measured
#: with the hand-written product, rows / BLAS path time at B=1, H=64 0.9,
#: H=192 1.05-1.2, H=256 0.9-1.2, H=512 1.7; B=4 (2-row blocks), H=192
#: 1.4-1.9.
ROWS_PATH_SMALL_BLOCK_MAX_MACS = 1 << 17


#: The rows path is taken for packed blocks of 1-3 rows whenever the batch
#: has two rows or more (then one thread per 2 rows, see ``_plan``):
#: rows / BLAS path time at T100 (50 for H=512), forward and fwd+bwd, B=2
#: H=128 0.81 and 0.86, H=256 0.70 and 0.85, H=512 0.35 and 0.43; B=3
#: H=128..512 0.41-0.68 and 0.54-0.76; B=4 and 6 (2 threads) H=256..512
#: 0.55-0.74 and 0.64-0.72. For one row it is taken within
#: ROWS_PATH_SMALL_BLOCK_MAX_MACS or from this hidden size on, where the
#: recurrent weight (1 MB at 256) outgrows a core's L2 and the BLAS path's
#: per-step GEMM, which packs it again at every call, loses: B=1 H=256
#: 0.92 and 0.96, H=512 0.65 and 0.84 (between them the BLAS path's two
#: threads win: H=160..224 1.07-1.11 and 0.98-1.16).
ONE_ROW_PACKED_MIN_H = 256

#: ... but a one-row backward above this hidden size takes the BLAS path:
#: its per-step product (1, 4H) x (4H, H) from a weight in L3 runs on BLAS's
#: two threads there (OpenBLAS hands a one-row GEMM to its GEMV), against
#: one thread on the rows path. Backward, BLAS / rows path: H=64..256
#: 0.94-1.02, H=320 0.83, H=384 0.65, H=512 0.54-0.67, H=1024 0.47; with
#: two rows the rows path wins (B=2 H=512: 1.86).
ONE_ROW_BACKWARD_ROWS_MAX_H = 256


#: Up to ROWS_PATH_MAX_H, the packed kernel (with the input projection fused
#: into it) is used from this many rows per thread; below it the blocks'
#: single-threaded BLAS calls are as fast or faster. Packed / BLAS rows time,
#: 2 threads, forward and fwd+bwd, medians of interleaved calls in one
#: process, since the wide panels and the aligned packed weights (2026-11-29):
#: float32 T100-B16-H128 (8 rows per thread) 0.86 and 0.98, T100-B16-H192
#: 0.85 and 0.97, T100-B16-I64-H64 0.90 and 1.00, T100-B24-H128 0.83 and
#: 0.91, T100-B12-I64-H64 (6 rows) 0.83 and 0.88, T100-B10-I256-H128 (5
#: rows) 0.94 and 0.98; float64 T100-B16-H128 0.92 and 0.99. At 4 rows per
#: thread it is a wash: T100-B8 at H=64..192 forward 0.89-0.97, fwd+bwd
#: 0.98-1.04 (T200-B8-H128 1.04). (Before the wide panels, at 16 rows per
#: thread and above: T100-B32-H128 0.94 and 0.96, T50-B512-H128 0.67 and
#: 0.94, T100-B64-I2-H32, the demo, 0.71 and 0.84.)
PACKED_MIN_ROWS = 5


#: Calls of few steps on a large weight take the BLAS path (multi-threaded
#: GEMMs over all rows, forward and backward) instead of whole packed
#: blocks, whose weights are packed on one thread while the other waits and
#: whose backward splits the gradient products (K = T*B small) over
#: single-threaded BLAS calls: from SHORT_CALL_MIN_WEIGHTS weight values
#: (4H * (I+H)) on, with at least SHORT_CALL_MIN_ROWS rows per thread and T
#: times those rows at most SHORT_CALL_MAX_STEP_ROWS. Measured (float32, 2
#: threads, separate processes), BLAS path / packed blocks, forward and
#: forward+backward, H = I = 1024: T1-B64 0.53 and 0.42, T2-B128 0.80 and
#: 0.74, T1-B256 0.72 and 0.68; outside the rule T1-B512 1.13 and 0.72,
#: T8-B64 1.04 and 0.82, T4-B16 (8 rows per thread) 0.76 and 1.06. Forward
#: and backward keep one strategy: with the forward on packed blocks and
#: the backward on the BLAS path, OpenBLAS's pool, spinning after the
#: backward, slowed the next forward's two threads (T8-B64 forward+backward
#: 205-228 ms against 189-192 all packed). At H = I = 512 (2.1M values) the
#: two were within the noise (T1-B256, T2-B64, T10-B64).
SHORT_CALL_MIN_WEIGHTS = 1 << 22
SHORT_CALL_MIN_ROWS = 16
SHORT_CALL_MAX_STEP_ROWS = 128

#: The same for packed blocks of 1-3 rows, whose two weights are packed on
#: one thread (about two passes over them) for products of 1-3 rows: the
#: BLAS path (no packing; BLAS reads the weights as they are) when T times
#: the rows per thread is at most FEW_ROWS_SHORT_MAX_STEP_ROWS, or at most
#: FEW_ROWS_LARGE_MAX_STEP_ROWS on FEW_ROWS_LARGE_MIN_WEIGHTS weight values
#: or more. Measured in one process (float32), BLAS path / packed, forward
#: and forward+backward: T1-B1 at I,H = 32,64 0.60 and 0.58, 256,256 0.43
#: and 0.36, 512,512 0.17 and 0.53; T1-B2-H128 0.51 and 0.49, T2-B1-H128
#: 0.52 and 0.43, T1-B2-H1024 0.26 and 0.27; T4-B1-H512 0.55 and 0.77,
#: T8-B1-H512 0.49 and 0.70; but T3-B1-H128 1.26 and 0.79, T4-B1-H128 1.20
#: and 0.78, T1-B3-H256 1.56 and 0.83, T4-B2-H256 2.54 and 1.02.
FEW_ROWS_SHORT_MAX_STEP_ROWS = 2
FEW_ROWS_LARGE_MIN_WEIGHTS = 1 << 21
FEW_ROWS_LARGE_MAX_STEP_ROWS = 8


#: The forward without a tape (with one, see COLUMNS_TRAINING_MIN_H) of
#: batches of at most two rows per thread (where the row blocks get a
#: thread per 2 rows, leaving threads idle below that) from COLUMNS_MIN_H
#: hidden units on splits the hidden units, not the rows, between the
#: threads (``_forward_columns``): each thread multiplies all rows by its
#: slice of the recurrent weight, so on two threads it streams half of it
#: at every step, from L2 where the whole one would not fit, and a batch of
#: 1-3 rows gets two threads instead of one. Measured against the row
#: blocks (float32, 2 threads, back-to-back calls, interleaved in one
#: process; 2026-11-29): B=1 H=192 0.78, H=256 0.58-0.65, H=512 0.60,
#: H=1024 0.70; B=2 H=192 0.63, H=256 0.55-0.68, H=512 0.58-0.69; B=3 H=256
#: 0.60; B=4 H=192 0.82-0.97, H=256 0.78-0.83, H=512 0.78; B=6 H=192 1.02,
#: H=256 0.96; and at H=128 B=1 0.89-1.25, B=2 0.74-1.16, B=4 1.00, B=8 and
#: B=16 1.09-1.27. Timed as the report does (0.3 s pause, 0.1 s warm-up),
#: since the slices are packed straight from the weights: B=4 H=192 0.93,
#: H=256 0.88-0.94, H=320 0.97, H=512 0.86, T50-B4-H1024 0.68, T20-B4-H256
#: 0.73; B=5 H=256 0.93 but H=512 1.03; B=6 H=256 1.01; B=8 H=512 1.03.
#: With a tape only where the backward splits too (COLUMNS_TRAINING_MIN_H):
#: a backward on row blocks of 1-2 rows ends with multi-threaded BLAS
#: products whose pool spins for ~0.1 s into the next forward, and threads
#: that meet at every step lose to it (forward + backward 1.07-1.8x the
#: row blocks'). After ~10 ms idle (the second vCPU asleep) a call gets
#: little from its second thread: B=1 H=256 2.33-2.43 ms against 2.14-2.20
#: on the row blocks' one thread.
COLUMNS_MIN_H = 192
#: ... with at least this many hidden units per thread: fewer threads for a
#: smaller H on a machine with many cores (not measured beyond two threads;
#: each thread's step is then a (B, H) x (H, 4 * 64) product, ~1 us, against
#: a barrier of ~0.1 us per thread).
COLUMNS_MIN_UNITS = 64

#: A training step (the forward with a tape, then the backward, whose loop
#: splits the same way: ``_kernels.backward_split``) splits the hidden units
#: from this size on, by the same rule otherwise. Forward+backward
#: alternating as in a training loop, each version in its own process,
#: split / row blocks (2026-11-29, 12:30-12:37 UTC): B=1 H=256 0.69-0.83,
#: H=512 0.72-0.98, H=1024 0.83; B=2 H=256 0.74-0.92, H=512 0.74-0.98,
#: T50-B2-H512 0.70-0.88; B=3 H=256 0.77-0.93; B=4 H=256 0.67-0.86, H=512
#: 0.90-1.02; but B=4 H=192 1.17-1.72 and B=2 H=192 0.97-1.41 (two slices
#: of 96 units: too little work per step for the backward's two meetings).
COLUMNS_TRAINING_MIN_H = 256


#: Below this many multiply-adds per forward call (T*B*4H*(I+H)), one thread
#: does the whole call: handing work to a pool thread costs ~90 us (median;
#: 260 us at the 90th percentile) on the 2-core box, more than a second core
#: saves. Measured, forward with 1 vs 2 threads: T5-B3-I4-H2 21 vs 112 us,
#: T100-B4-I64-H64 (2^23.6) 495 vs 683 us, T200-B2-I32-H64 (2^23.2) 603 vs 610
#: us, T100-B8-I64-H64 (2^24.6) 914 vs 698 us.
PARALLEL_MIN_MACS = 1 << 24


#: Rows per block of the rows path: the hand-written product works on 4 rows
#: at a time, so 4-row blocks cost no efficiency and give the threads many
#: blocks to share.
BLOCK_ROWS = 4

#: Spans of the time loop whose input projection a second thread computes
#: ahead of a one-block forward (``NumbaBackend._projection_ahead``): T/16
#: steps each (at least one), so that the loop's first span, whose
#: projection it waits for, is short.
PROJECTION_SPANS = 16
#: Below this many multiply-adds in its input projection (T*B*I*4H) a
#: one-block forward computes the projection itself: handing pieces to a
#: second thread costs a few microseconds.
PROJECTION_AHEAD_MIN_MACS = 1 << 20


#: The gradient products after the backward loop (dx = da @ w_ih,
#: dw_ih = da.T @ x, dw_hh = da.T @ h_{t-1}) take the packed kernel over
#: this many rows (T * B: the dw products' K, over which w_ih's packing
#: for dx is spread) and multiply-adds, where the wide panels pad I and H
#: by at most this factor (``_packed_gradients``). Measured, float32, two
#: threads (2026-11-29, ``docs/benchmarks.md``), the products alone, packed
#: / split single-threaded OpenBLAS: T100-B16-I128-H128 0.91,
#: T100-B64-I256-H256 0.91, T50-B32-I256-H256 0.88, T100-B4-I256-H256 0.89,
#: T50-B256-I1024-H1024 0.95; T100-B4-I64-H64 (2e7 multiply-adds) 1.01,
#: T20-B16-I32-H32 1.04, T10-B8-I16-H16 1.49 (a few tens of us either way);
#: T100-B16-I100-H100, whose panels compute 28% zero columns, 1.13, and
#: 1.05-1.07 with 7-8% (T100-B16-I120-H120, T100-B8-I300-H200). The
#: whole backward, by rows: I = H = 512, T * B = 128, 256, 320, 512: 1.19,
#: 1.13, 1.01-1.02, 0.90; I = H = 1024, 64 and 512 rows: 1.15-1.33 and
#: 1.01; I = H = 128, 256-1024 rows: 0.94-0.98; at 400 rows 0.84-1.10 by
#: shape and run.
GRADIENT_PACKED_MIN_ROWS = 384
GRADIENT_PACKED_MIN_MACS = 1 << 25
GRADIENT_PACKED_MAX_PADDING = 1.05


@functools.lru_cache(maxsize=1024)
def _row_blocks(B, nthreads, whole=False):
    """((r0, r1), ...): B rows cut into contiguous blocks of at most
    BLOCK_ROWS rows, but at least min(B, nthreads) blocks; with ``whole``,
    one block per thread (the packed product: a weight panel is then reused
    by all the thread's rows). Remembered: ~1 us per call otherwise."""
    size = -(-B // max(1, nthreads))
    if not whole:
        size = max(1, min(size, BLOCK_ROWS))
    edges = list(range(0, B, size)) + [B]
    return tuple(zip(edges[:-1], edges[1:]))


_POOL = None
_POOL_LOCK = threading.Lock()


def _forget_pool_after_fork():
    """In a child made by ``fork`` (multiprocessing's default start method
    on Linux before Python 3.14), the pool's threads do not exist: a task
    handed to it would never run and the call would wait forever (measured:
    a two-thread forward in such a child hung). The child starts its own
    pool at its first two-thread call."""
    global _POOL, _POOL_LOCK
    _POOL = None
    _POOL_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _run_tasks(tasks, nthreads, blas=True):
    """Run ``tasks``, callables that each call a GIL-free kernel given the
    ``sync`` array of ``_pool`` (``task(sync)``), on up to ``nthreads``
    threads: this one and the process's ``_pool.Pool``, whose threads
    take the next task when they finish one and spin for a moment after a
    call instead of sleeping at once (see ``_pool``). While tasks that call
    BLAS run, scipy's BLAS is single-threaded (``_blas_threads``): the
    threads are the parallelism. ``blas``: whether the tasks call BLAS;
    when they do not, the BLAS setting is left alone (setting and restoring
    it costs ~2 us, 1% of a T200-B1-I32-H64 forward)."""
    global _POOL
    nthreads = max(1, min(nthreads, len(tasks)))
    with _blas_threads.single_threaded() if blas else contextlib.nullcontext():
        if nthreads == 1:
            for task in tasks:
                task(_pool.UNPOOLED)
            return
        if _POOL is None:
            with _POOL_LOCK:
                if _POOL is None:
                    _POOL = _pool.Pool()
        _POOL.run(tasks, nthreads)


def _run_blocks(function, blocks, nthreads, *args, blas=True):
    """``function(r0, r1, k, *args, sync)`` for every row block k, on up to
    ``nthreads`` threads (``_run_tasks``; ``blas``: whether it calls BLAS)."""
    if len(blocks) == 1 and not blas:
        # One block calling no BLAS (a small batch): straight to the kernel,
        # without the task list (~2 us, 1% of a T200-B1-I32-H64 forward).
        function(blocks[0][0], blocks[0][1], 0, *args, _pool.UNPOOLED)
        return
    _run_tasks([functools.partial(function, r0, r1, k, *args)
                for k, (r0, r1) in enumerate(blocks)], nthreads, blas)


def _rows_per_thread(B, nthreads):
    """Rows of the largest share of a B-row batch over ``nthreads`` threads."""
    return -(-B // max(1, nthreads))


def _whole_packed_blocks(products, B, nthreads):
    """Whether a call runs the packed product on one block of at least
    BLOCK_ROWS rows per thread: the forward with the projection fused in,
    and the gradient products split over the threads after the backward
    loop (blocks of 1-3 rows do neither)."""
    return products == "packed" and _rows_per_thread(B, nthreads) >= BLOCK_ROWS


def _too_short_to_pack(T, B, I, H, nthreads, products):
    """Whether a call planned on packed products has too few steps for
    packing its weights to pay (the BLAS path then runs it): whole packed
    blocks by ``SHORT_CALL_*``, blocks of 1-3 rows by ``FEW_ROWS_*``."""
    if products != "packed":
        return False
    rows_per_thread = _rows_per_thread(B, nthreads)
    step_rows = T * rows_per_thread
    weights = 4 * H * (I + H)
    if _whole_packed_blocks(products, B, nthreads):
        return (weights >= SHORT_CALL_MIN_WEIGHTS and rows_per_thread >= SHORT_CALL_MIN_ROWS
                and step_rows <= SHORT_CALL_MAX_STEP_ROWS)
    return (step_rows <= FEW_ROWS_SHORT_MAX_STEP_ROWS
            or (weights >= FEW_ROWS_LARGE_MIN_WEIGHTS and step_rows <= FEW_ROWS_LARGE_MAX_STEP_ROWS))


def _row_chunks(n, pieces, multiple=1):
    """[(n0, n1), ...]: rows 0..n-1 in about ``pieces`` contiguous chunks of
    at least 32 rows (each chunk is one product), each a multiple of
    ``multiple`` rows but the last. With 12 (``_packed_gradient_phases``),
    ``_packed.matmul_blocked`` covers every chunk with 6-row tiles and the
    last with 6- and 4-row tiles, leaving no row to its plain loop where n
    is a multiple of 4 (4H always is)."""
    chunk = max(32, -(-n // pieces))
    chunk += -chunk % multiple
    return [(n0, min(n, n0 + chunk)) for n0 in range(0, n, chunk)]


def _gradient_tasks(da, x, w_ih, hprev, dx, dw_ih, dw_hh, db, nthreads):
    """The products of ``_kernels.backward_products`` as tasks for
    ``_run_tasks``, largest first: dw_ih and dw_hh whole, dx in row chunks
    that fill in around them, db. Same results as the one-call version up to
    BLAS rounding; the same chunks every call, so calls are bit-identical."""
    T, B, G = da.shape
    n = T * B
    da2 = da.reshape(n, G)
    x2 = x.reshape(n, x.shape[2])
    hprev2 = hprev.reshape(n, hprev.shape[2])
    dx2 = dx.reshape(n, x.shape[2])
    weights = sorted([(x2, dw_ih), (hprev2, dw_hh)], key=lambda pair: -pair[1].shape[1])
    tasks = [functools.partial(_kernels.weight_gradient, da2, source, out)
             for source, out in weights]
    tasks += [functools.partial(_kernels.input_gradient_rows, da2, w_ih, dx2, n0, n1)
              for n0, n1 in _row_chunks(n, 4 * nthreads)]
    tasks.append(functools.partial(_kernels.bias_gradient, da2, db))
    return tasks


def _packed_gradients(T, B, I, H, dtype):
    """Whether the gradient products of a backward whose loop ran on our
    threads take the packed kernel (``_packed_gradient_phases``) rather
    than single-threaded BLAS split over the threads (``_gradient_tasks``):
    float32 or float64 products over at least ``GRADIENT_PACKED_MIN_ROWS``
    rows (T * B) and of at least ``GRADIENT_PACKED_MIN_MACS`` multiply-adds,
    whose panels add at most ``GRADIENT_PACKED_MAX_PADDING`` of zero
    columns (I and H are padded to the wide panel's width)."""
    if not _packed.packable(dtype, I, 1):
        return False
    L = _packed.WIDE_PANEL_OF[np.dtype(dtype)]
    columns = 2 * I + H
    padded = 2 * _packed.padded(I, L) + _packed.padded(H, L)
    return (T * B >= GRADIENT_PACKED_MIN_ROWS
            and T * B * 4 * H * columns >= GRADIENT_PACKED_MIN_MACS
            and padded <= GRADIENT_PACKED_MAX_PADDING * columns)


def _packed_gradient_phases(da, x, w_ih, hprev, dx, dw_ih, dw_hh, db, nthreads):
    """The products of ``_kernels.backward_products`` on the packed kernel,
    as two task lists for ``_run_tasks``, run one after the other: the
    packing of their right operands (x and h_{t-1} side by side in one
    panel array, and w_ih), then dw_ih and dw_hh as one product in blocks
    of 4H's rows, dx in blocks of steps' rows (``_kernels.gradient_product``),
    and db. The panels and the products' outputs are
    scratch; the same blocks every call, so calls are bit-identical."""
    T, B, G = da.shape
    n = T * B
    I = x.shape[2]
    H = hprev.shape[2]
    dtype = da.dtype
    L = _packed.WIDE_PANEL_OF[dtype]
    da2 = da.reshape(n, G)
    x2 = x.reshape(n, I)
    hprev2 = hprev.reshape(n, H)
    dx2 = dx.reshape(n, I)
    p_i = _packed.panels(I, L)
    sources_p = _scratch.take("grad_sources_p", (p_i + _packed.panels(H, L), n, L), dtype)
    both = _scratch.take("grad_both", (G, sources_p.shape[0] * L), dtype)
    w_ih_p = _scratch.take("grad_w_ih_p", (p_i, G, L), dtype)
    packing = [functools.partial(_kernels.pack_panels, x2, sources_p, 0),
               functools.partial(_kernels.pack_panels, hprev2, sources_p, p_i),
               functools.partial(_kernels.pack_panels, np.ascontiguousarray(w_ih), w_ih_p, 0)]
    products = [functools.partial(_kernels.gradient_product, da2, sources_p, both, True, g0, g1,
                                  True, dw_ih, 0, dw_hh, p_i * L)
                for g0, g1 in _row_chunks(G, 2 * nthreads, 12)]
    # dx straight into dx2 where its columns fill whole panels.
    copy = I % L != 0
    out = _scratch.take("grad_dx", (n, p_i * L), dtype) if copy else dx2
    nothing = np.empty((n, 0), dtype)
    products += [functools.partial(_kernels.gradient_product, da2, w_ih_p, out, False, n0, n1,
                                   copy, dx2, 0, nothing, 0)
                 for n0, n1 in _row_chunks(n, 2 * nthreads, 12)]
    products.append(functools.partial(_kernels.bias_gradient, da2, db))
    return packing, products


class NumbaBackend(Backend):
    """LSTM primitive compiled with numba; float32 and float64, every feature.

    path: ``"auto"`` (choose per call), ``"rows"`` or ``"blas"`` (force one
    recurrence strategy; used by the tests to check each on any shape), or
    ``"columns"`` (every forward and backward split by hidden units,
    ``_forward_columns`` and ``_backward_columns``, with ``threads``
    threads; Linux).
    threads: threads of the rows path and the column split; None uses ``numba.get_num_threads()``
    (the CPUs, or ``NUMBA_NUM_THREADS``), but one thread for calls below
    ``PARALLEL_MIN_MACS`` and at most one per 2 rows for packed blocks of
    fewer than ``BLOCK_ROWS`` rows.
    row_products: how the rows path multiplies: ``"blas"`` (each row-block
    thread calls a single-threaded BLAS, and the gradient products after the
    backward loop are split over the same threads, on the packed kernel
    where ``_packed_gradients`` says so, else on single-threaded BLAS;
    needs scipy's BLAS to be
    an OpenBLAS, whose thread count ``_blas_threads`` sets), ``"packed"``
    (as ``"blas"``, but the per-step products run the micro-kernel of
    ``_packed`` on weights packed once per call, one row block per thread,
    with the input projection fused into the forward's; for blocks of 1-3
    rows the projection is one product before the loop and each gradient
    one multi-threaded BLAS call instead; any H: where the panel width (16
    float32, 8 float64 values; 32 and 16 for the fused forward) does not
    divide 4H or H, the last panel is padded with zero columns), ``"hand"``
    (the hand-written product in the loops, one multi-threaded BLAS call per
    gradient), or None: when scipy's BLAS is an OpenBLAS
    (``_blas_threads.available()``), ``"packed"`` where blocks have fewer
    than ``BLOCK_ROWS`` rows, H > ``ROWS_PATH_MAX_H`` or a thread has at
    least ``PACKED_MIN_ROWS`` rows, else ``"blas"``; without it ``"hand"``.
    """

    name = "numba"
    xp = np

    def __init__(self, path: str = "auto", threads=None, row_products=None):
        if path not in ("auto", "rows", "blas", "columns"):
            raise ValueError(f"path must be 'auto', 'rows', 'blas' or 'columns', not {path!r}")
        if path == "columns" and not _barrier.available():
            raise ValueError("path='columns' needs the threads' barrier, which is built for "
                             f"Linux only (this is {sys.platform!r})")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, not {threads!r}")
        if row_products not in (None, "blas", "hand", "packed"):
            raise ValueError("row_products must be None, 'blas', 'hand' or 'packed', "
                             f"not {row_products!r}")
        if row_products in ("blas", "packed") and not _blas_threads.available():
            raise ValueError(f"row_products={row_products!r} needs scipy's BLAS to be an OpenBLAS "
                             "(whose thread count the backend sets); it is not")
        self.path = path
        self.threads = threads
        self.row_products = row_products

    def choose_row_products(self, B, nthreads=None, H=None, dtype=None):
        """'packed', 'blas' or 'hand' for the rows path on a batch of B rows
        (H and dtype: of the call, when known)."""
        packable = (H is not None and dtype is not None and _blas_threads.available()
                    and _packed.packable(dtype, H, 1))
        if self.row_products == "packed":
            return "packed" if packable else "blas"
        if self.row_products is not None:
            return self.row_products
        nthreads = nthreads or self._threads()
        if not _blas_threads.available():
            return "hand"
        rows_per_thread = _rows_per_thread(B, nthreads)
        if rows_per_thread < BLOCK_ROWS:
            return "packed" if packable else "hand"
        if packable and (H > ROWS_PATH_MAX_H or rows_per_thread >= PACKED_MIN_ROWS):
            return "packed"
        return "blas"

    def _threads(self):
        return self.threads if self.threads is not None else numba.get_num_threads()

    def threads_for(self, T, B, I, H):
        """Threads for one call of shape (T, B, I, H): the configured number,
        or, when none is configured, one for a call too small to share."""
        if self.threads is None and T * B * 4 * H * (I + H) < PARALLEL_MIN_MACS:
            return 1
        return self._threads()

    def choose_path(self, B, H, nthreads=None, dtype=None):
        """'rows' or 'blas' for a batch of B rows and hidden size H (with
        ``path="columns"``, what the other strategies would take)."""
        if self.path in ("rows", "blas"):
            return self.path
        nthreads = nthreads or self._threads()
        products = self.choose_row_products(B, nthreads, H, dtype)
        rows_per_thread = _rows_per_thread(B, nthreads)
        if products == "packed" and (rows_per_thread >= BLOCK_ROWS or B >= 2
                                     or H >= ONE_ROW_PACKED_MIN_H):
            return "rows"
        if products == "blas":
            return "rows" if H <= ROWS_PATH_MAX_H else "blas"
        # The hand-written product, or the packed one on blocks of 1-3 rows:
        # per-step products too small for BLAS's threads to pay.
        small_blocks = self.row_products is None and _blas_threads.available()
        limit = ROWS_PATH_SMALL_BLOCK_MAX_MACS if small_blocks else ROWS_PATH_HAND_MAX_MACS
        return "rows" if rows_per_thread * H * 4 * H <= limit else "blas"

    def _plan(self, T, B, I, H, dtype, backward=False, tape=False):
        """(threads, rows path?, row products or None) for one forward call
        (``tape``: one that keeps a tape; ``backward``: for one backward
        call, ``_backward_plan``); row products "columns": the column split
        (``_forward_columns``); the choices of ``threads_for``,
        ``choose_path`` and ``choose_row_products``, then the rules below,
        remembered per shape and setting (they cost ~8 us per call, 3% of a T200-B1-I32-H64
        forward)."""
        key = (self.path, self.threads, self.row_products, numba.get_num_threads(),
               T, B, I, H, dtype, backward, tape)
        plan = _PLANS.get(key)
        if plan is None:
            nthreads = self.threads_for(T, B, I, H)
            column_threads = self._column_threads(T, B, I, H, nthreads, dtype, backward, tape)
            plan = (column_threads, True, "columns") if column_threads else self._rows_or_blas_plan(
                T, B, I, H, dtype, backward, nthreads)
            if len(_PLANS) >= _PLANS_MAX:  # variable shapes: keep it bounded
                _PLANS.clear()
            _PLANS[key] = plan
        return plan

    def _rows_or_blas_plan(self, T, B, I, H, dtype, backward, nthreads):
        """``_plan`` for the rows path and the BLAS path (no column split)."""
        rows = self.choose_path(B, H, nthreads, dtype) == "rows"
        products = self.choose_row_products(B, nthreads, H, dtype) if rows else None
        if (products == "packed" and self.threads is None
                and not _whole_packed_blocks(products, B, nthreads)):
            # Packed blocks of 1-3 rows: a thread per 2 rows at most.
            # Each thread streams the whole recurrent weight at every
            # step, so one-row blocks on two threads lost to one thread
            # with both rows (and to the BLAS path: 1.4-1.6x at
            # T100-B2-H192..256); two threads of 2-3 rows beat one of
            # 4-6 (0.56-0.86).
            nthreads = max(1, min(nthreads, B // 2))
        # Where the settings leave the choice to the backend: the BLAS
        # path for calls too short for packing, and for a one-row
        # backward above ONE_ROW_BACKWARD_ROWS_MAX_H.
        if rows and self.path in ("auto", "columns") and self.row_products is None and (
                _too_short_to_pack(T, B, I, H, nthreads, products)
                or (backward and B == 1 and H > ONE_ROW_BACKWARD_ROWS_MAX_H)):
            rows, products = False, None
        return (nthreads, rows, products)

    def _column_threads(self, T, B, I, H, nthreads, dtype, backward, tape):
        """Threads of a column-split forward (``_forward_columns``) or
        backward (``_backward_columns``) for this call, or 0 where it takes
        another strategy: with ``path="columns"`` always (at most one thread
        per hidden unit); with ``"auto"`` and no ``row_products`` by
        ``COLUMNS_*``, for calls large enough for two threads and not too
        short to pack. The same rule for a forward with or without a tape
        and for a backward, but from ``COLUMNS_TRAINING_MIN_H`` hidden units
        with a tape or for a backward, so that a training step splits both
        directions or neither (the backward's gradient products then run
        on our threads too)."""
        if not _barrier.available() or not _packed.packable(dtype, H, 1):
            return 0
        if self.path == "columns":
            return max(1, min(nthreads, H))
        min_h = COLUMNS_TRAINING_MIN_H if tape or backward else COLUMNS_MIN_H
        if self.path != "auto" or self.row_products is not None or H < min_h:
            return 0
        nthreads = min(nthreads, H // COLUMNS_MIN_UNITS)
        if nthreads < 2 or B > 2 * nthreads:
            return 0
        return 0 if _too_short_to_pack(T, B, I, H, nthreads, "packed") else nthreads

    def _backward_plan(self, T, B, I, H, dtype):
        """``_plan`` for the backward: the same, except that a one-row batch
        above ``ONE_ROW_BACKWARD_ROWS_MAX_H`` takes the BLAS path when the
        settings leave the choice to the backend."""
        return self._plan(T, B, I, H, dtype, backward=True)

    def forward(self, x, w_ih, w_hh, b, h0, c0, peephole, lengths, reverse, store):
        """x: (T, B, I)  w_ih: (4H, I)  w_hh: (4H, H)  b: (4H,)  h0, c0: (B, H)
        peephole: (3, H) or None  lengths: (B,) int64 or None.
        Returns ForwardOutput (gates (T, B, 4H) and c (T, B, H) when store)."""
        T, B, I = x.shape
        H = w_hh.shape[1]
        dtype = x.dtype
        # Without lengths every step of every row is written: no zero fill.
        alloc = np.zeros if lengths is not None else np.empty
        lengths = _lengths(lengths, T, B)
        p = _peephole(peephole, H, dtype)
        y = alloc((T, B, H), dtype)
        if store:
            gates = alloc((T, B, 4 * H), dtype)
            ctape = alloc((T, B, H), dtype)
        else:  # placeholders: without a tape the kernels write no gates
            gates = np.empty((1, B, 4 * H), dtype)
            ctape = np.empty((1, B, H), dtype)
        h = h0.copy()
        c = c0.copy()
        reverse = bool(reverse)
        nthreads, rows, products = self._plan(T, B, I, H, dtype, tape=store)
        if products == "columns":
            _forward_columns(x, w_ih, w_hh, b, p, lengths, reverse, h, c, y, gates, ctape,
                             nthreads)
            return _forward_output(y, h, c, gates, ctape, store)
        if _whole_packed_blocks(products, B, nthreads):
            # The input projection and the bias are fused into the per-step
            # products: no (T, B, 4H) projection buffer, no bias pass. The
            # product writes whole panels: acc has 4H columns rounded up to
            # the panel width (the gates read the first 4H).
            w_p = _pack_stacked(w_ih, w_hh, b)
            zh = np.empty((B, H + 1), dtype)
            acc = np.empty((B, _packed.padded(4 * H, w_p.shape[2])), dtype)
            _run_blocks(_without_block_index(_kernels.forward_packed),
                        _row_blocks(B, nthreads, whole=True), nthreads,
                        x, w_p, p, lengths, reverse, h, c, y, gates, ctape, zh, acc, blas=False)
            return _forward_output(y, h, c, gates, ctape, store)
        # The packed products write whole panels: their outputs (the
        # projection xw, and acc, which starts from xw and b) have G columns,
        # 4H rounded up to the panel width.
        G = _packed.padded(4 * H, _packed.PANEL_OF[dtype]) if products == "packed" else 4 * H
        acc = np.empty((B, G), dtype)
        if store and alloc is np.empty and G == 4 * H:
            # The input projection x @ w_ih.T goes straight into the gate tape:
            # the gate pass of step t reads its row, then overwrites it with the
            # post-activation gates. Saves a (T, B, 4H) buffer (210 MB at
            # T50-B256-H1024). Not with lengths: padded steps must stay zero.
            xw = gates
        else:
            xw = _scratch.take("xw", (T, B, G), dtype)
        if not rows:
            # w_hh.T as a view: BLAS reads it transposed, no copy (a copy of
            # a (4096, 1024) weight took 6 ms, a third of a T1-B64 forward).
            _kernels.forward_blas(x, w_ih, b, w_hh.T, p, lengths, reverse,
                                  h, c, y, gates, ctape, xw, acc)
            return _forward_output(y, h, c, gates, ctape, store)
        if products == "packed":
            # Blocks of 1-3 rows: the projection as one product, then the
            # packed recurrent product at every step. The weights are packed
            # straight from their (4H, .) layout; the unpacked arguments are
            # not read by PACKED products.
            w_ih_t, w_ih_p = w_ih, _pack_transposed(w_ih, "w_ih_p")
            w_hh_t, w_hh_p = w_hh, _pack_transposed(w_hh, "w_hh_p")
            if G != 4 * H:  # the tiles read the bias as wide as acc
                b = np.concatenate((b, np.zeros(G - 4 * H, dtype)))
            if not store and self._projection_ahead(T, B, I, H, _row_blocks(B, nthreads)):
                # One block on one thread: a second thread computes the input
                # projection ahead of the time loop (``_kernels.forward_rows``,
                # roles).
                pieces = np.zeros(min(T, PROJECTION_SPANS), np.int64)
                args = (0, B, x, w_ih_t, w_ih_p, b, w_hh_t, w_hh_p, p, lengths, reverse, h, c,
                        y, gates, ctape, xw, acc, _kernels.PACKED)
                _run_tasks([functools.partial(_kernels.forward_rows, *args, role, pieces)
                            for role in (_kernels.RECURRENCE, _kernels.PROJECTION)], 2,
                           blas=False)
                return _forward_output(y, h, c, gates, ctape, store)
        else:
            w_ih_t = _transposed(w_ih, "w_ih_t")  # (I, 4H)
            w_hh_t = _transposed(w_hh, "w_hh_t")  # (H, 4H)
            # Not read (no PACKED products): placeholders of the right rank.
            w_ih_p = w_ih_t.reshape(1, I, 4 * H)
            w_hh_p = w_hh_t.reshape(1, H, 4 * H)
        _run_blocks(_without_block_index(_kernels.forward_rows), _row_blocks(B, nthreads),
                    nthreads, x, w_ih_t, w_ih_p, b, w_hh_t, w_hh_p, p, lengths, reverse,
                    h, c, y, gates, ctape, xw, acc, _PRODUCT[products], _kernels.ALONE,
                    _NO_PIECES, blas=products == "blas")
        return _forward_output(y, h, c, gates, ctape, store)

    def _projection_ahead(self, T, B, I, H, blocks):
        """Whether a forward whose plan gives packed blocks of 1-3 rows,
        ``blocks`` (``_row_blocks``), all in one, has a second thread compute the input
        projection ahead of its time loop (``_kernels.forward_rows``'s
        roles): where the settings allow two threads, the barrier's atomics
        exist and the projection has at least ``PROJECTION_AHEAD_MIN_MACS``
        multiply-adds. The caller asks only for forwards without a tape:
        in a training step the backward that follows ends with
        multi-threaded BLAS products, whose pool then holds the second core
        (forward+backward 1.03-1.07x without this, at T200-B1-I32-H64,
        T100-B2-I64-H64 and T100-B1-I128-H128)."""
        allowed = self.threads if self.threads is not None else numba.get_num_threads()
        return (len(blocks) == 1 and allowed >= 2 and _barrier.available()
                and T * B * I * 4 * H >= PROJECTION_AHEAD_MIN_MACS)

    def backward(self, tape, dy, dh_n, dc_n):
        """dy: (T, B, H)  dh_n, dc_n: (B, H). Returns Gradients."""
        T, B, I, H = tape.shape
        dtype = tape.x.dtype
        # Padded steps must be zero in da and hprev (the gradient products
        # run over all steps); both live only in this call (``_scratch``).
        alloc = _scratch.zeros if tape.lengths is not None else _scratch.take
        lengths = _lengths(tape.lengths, T, B)
        p = _peephole(tape.peephole, H, dtype)
        dh = dh_n.copy()
        dc = dc_n.copy()
        da = alloc("da", (T, B, 4 * H), dtype)
        hprev = alloc("hprev", (T, B, H), dtype)
        reverse = bool(tape.reverse)
        nthreads, rows, products = self._backward_plan(T, B, I, H, dtype)
        # dh_{t-1} = da_t @ w_hh lands in tmp: on the packed product, H
        # columns rounded up to the panel width (whole panels are written).
        packed = rows and products == "packed"
        tmp = np.empty((B, _packed.padded(H, _packed.PANEL_OF[dtype]) if packed else H), dtype)
        # Split the gradient products over our threads after a loop that ran
        # on several of them, or on single-threaded BLAS or full packed
        # blocks; after a loop on one thread (blocks of 1-3 rows, a batch of
        # 1-2), one multi-threaded BLAS call each is faster, as the split
        # would get one thread too. Forward+backward, multi-threaded / split
        # over the loop's one thread, in separate processes (2026-11-29):
        # T200-B1-I32-H64 0.55-0.67 / 0.94-0.95 ms, T100-B2-I128-H128 2.0-2.2
        # / 3.6-3.7, T50-B2-I512-H512 14-19 / 21-24, T100-B1-I256-H256
        # 4.7-5.3 / 6.4-6.9. After a loop on two threads of 1-3-row blocks
        # the split wins, as OpenBLAS's pool, spinning after the products,
        # slows the next forward's two threads: split / multi-threaded,
        # forward+backward alternating like the report, separate processes
        # (12:27 UTC): T100 B4-H256 0.73-0.78, B4-H512 0.63-0.70, B6-H256
        # 0.71-0.84, B6-H512 0.71-0.77; B2, B3 and B8 0.96-1.08.
        row_blas = (products in ("blas", "columns") or nthreads > 1
                    or _whole_packed_blocks(products, B, nthreads))
        if products == "columns":
            dp = np.zeros((1, 3, H), dtype)
            _backward_columns(tape, dy, p, lengths, reverse, dh, dc, da, hprev, dp, nthreads)
        elif rows:
            blocks = _row_blocks(B, nthreads, products == "packed")
            dp = np.zeros((len(blocks), 3, H), dtype)
            w_hh = np.ascontiguousarray(tape.w_hh)
            w_hh_p = _pack(w_hh, "w_hh_p") if packed else w_hh.reshape(1, 4 * H, H)
            _run_blocks(_kernels.backward_rows, blocks, nthreads, dy, w_hh, w_hh_p, p, lengths,
                        reverse, tape.h0, tape.c0, tape.y, tape.gates, tape.c, dh, dc, da, hprev,
                        dp, tmp, _PRODUCT[products], blas=products == "blas")
        else:
            dp = np.zeros((1, 3, H), dtype)
            _kernels.backward_blas(dy, tape.w_hh, p, lengths, reverse, tape.h0, tape.c0,
                                   tape.y, tape.gates, tape.c, dh, dc, da, hprev, dp, tmp)
        # Parameter and input gradients: products over all steps.
        dx = np.empty((T, B, I), dtype)
        dw_ih = np.empty((4 * H, I), dtype)
        dw_hh = np.empty((4 * H, H), dtype)
        db = np.empty(4 * H, dtype)
        if row_blas:
            # Split over our threads, like the loop before them, with our
            # packed kernel or single-threaded BLAS: a multi-threaded BLAS
            # call here leaves its pool spinning for ~0.1 s, which slowed the
            # next call's row threads (T100-B16-I128-H128: forward 7 ms after
            # a backward instead of 4).
            if _packed_gradients(T, B, I, H, dtype):
                for phase in _packed_gradient_phases(da, tape.x, tape.w_ih, hprev, dx, dw_ih,
                                                     dw_hh, db, nthreads):
                    _run_tasks(phase, nthreads, blas=False)
            else:
                _run_tasks(_gradient_tasks(da, tape.x, tape.w_ih, hprev, dx, dw_ih, dw_hh, db,
                                           nthreads), nthreads)
        else:
            _kernels.backward_products(da, tape.x, tape.w_ih, hprev, dx, dw_ih, dw_hh, db)
        dpeephole = dp.sum(axis=0) if tape.peephole is not None else None
        return Gradients(dx=dx, dw_ih=dw_ih, dw_hh=dw_hh, db=db, dh0=dh, dc0=dc,
                         dpeephole=dpeephole)


_PLANS = {}
_PLANS_MAX = 4096

#: ``forward_rows``'s pieces argument where it runs ALONE (not read).
_NO_PIECES = np.zeros(1, np.int64)

_PRODUCT = {"hand": _kernels.HAND, "blas": _kernels.BLAS, "packed": _kernels.PACKED}


def _column_slices(H, slices):
    """(edges, U): H hidden units cut into ``slices`` near-equal slices,
    slice j holding units edges[j]..edges[j+1]-1 (edges: (slices + 1,)
    int64), U the largest slice's units."""
    edges = np.array([H * k // slices for k in range(slices + 1)], np.int64)
    return edges, int(np.diff(edges).max())


def _forward_columns(x, w_ih, w_hh, b, p, lengths, reverse, h, c, y, gates, ctape, nthreads):
    """The forward with the hidden units split into ``nthreads`` column
    slices, computed by up to ``nthreads`` threads that take the pieces as
    they come (``_kernels.forward_split``). Arguments as
    ``NumbaBackend.forward``'s buffers: x: (T, B, I)   w_ih: (4H, I)
    w_hh: (4H, H)   b: (4H,)   p: (3, H)   lengths: (B,)   h, c: (B, H)
    start as h0, c0 and end as h_n, c_n   y: (T, B, H)   gates: (T, B, 4H)
    and ctape: (T, B, H), or (1, B, .) placeholders without a tape."""
    T, B, I = x.shape
    H = w_hh.shape[1]
    dtype = x.dtype
    L = _packed.PANEL_OF[dtype]
    slices = nthreads
    edges, U = _column_slices(H, slices)
    P = _packed.panels(4 * U, L)
    G = P * L
    hbuf = np.empty((2, B, H), dtype)  # h_{t-1} and h_t, by step parity
    hbuf[0] = h
    # Every buffer is allocated here, none in the kernels (a thread failing
    # inside a piece it had claimed would leave the others waiting). A
    # slice's panels, P * K * L values, are a whole number of 64-byte lines
    # (L values are 64 bytes), so every slice starts aligned. Only slices
    # whose units do not fill whole panels gather their gates' rows first.
    gathered = 4 * U if np.any(np.diff(edges) % L) else 0
    args = (x, np.ascontiguousarray(w_ih), np.ascontiguousarray(w_hh), np.ascontiguousarray(b),
            p, lengths, reverse, hbuf, c, y, gates, ctape,
            np.zeros(slices * (T + 1), np.int64), np.zeros(8, np.int64), edges,
            _scratch.take("w_rows_ih", (slices, gathered, I), dtype),
            _scratch.take("w_rows_hh", (slices, gathered, H), dtype),
            _scratch.take("w_ih_p", (slices, P, I, L), dtype),
            _scratch.take("w_hh_p", (slices, P, H, L), dtype),
            np.empty((slices, G), dtype), np.empty((slices, 3 * U), dtype),
            _scratch.take("xw", (slices, T, B, G), dtype), np.empty((slices, B, G), dtype),
            np.empty((slices, G), dtype))
    _run_tasks([functools.partial(_kernels.forward_split, first, *args)
                for first in range(slices)], nthreads, blas=False)
    h[...] = hbuf[T % 2]


def _backward_columns(tape, dy, p, lengths, reverse, dh, dc, da, hprev, dp, nthreads):
    """The backward loop with the hidden units split into ``nthreads``
    column slices (``_kernels.backward_split``), for a tape of any forward.
    dy: (T, B, H)   p: (3, H)   lengths: (B,)   dh, dc: (B, H), dh_n and
    dc_n in, dh0 and dc0 out   da: (T, B, 4H), hprev: (T, B, H) out
    dp: (1, 3, H), the peephole gradient out."""
    T, B, I, H = tape.shape
    dtype = tape.x.dtype
    L = _packed.PANEL_OF[dtype]
    slices = nthreads
    edges, U = _column_slices(H, slices)
    P = _packed.panels(U, L)
    dp_k = np.empty((slices, 3 * U), dtype)
    # Every buffer is allocated here (see _forward_columns).
    args = (dy, np.ascontiguousarray(tape.w_hh), p, lengths, reverse, tape.h0, tape.c0, tape.y,
            tape.gates, tape.c, dh, dc, da, hprev,
            np.zeros(slices * (2 * T + 1), np.int64), np.zeros(8, np.int64), edges,
            _scratch.take("w_hh_p", (slices, P, 4 * H, L), dtype),
            np.empty((slices, B, P * L), dtype), np.empty((slices, 4 * U), dtype),
            np.empty((slices, 4 * U), dtype), np.empty((slices, 3 * U), dtype), dp_k)
    _run_tasks([functools.partial(_kernels.backward_split, first, *args)
                for first in range(slices)], nthreads, blas=False)
    for j in range(slices):
        u0, u1 = int(edges[j]), int(edges[j + 1])
        dp[0, :, u0:u1] = dp_k[j, :3 * (u1 - u0)].reshape(3, u1 - u0)


def _pack(w, name, width=None):
    """``_packed.pack`` of the (K, N) matrix w into (P, K, L) scratch
    ``name`` (``_scratch``, aligned to a cache line), L = ``width`` or
    ``_packed.PANEL`` of its dtype (16 for float32, 8 for float64), P = N/L
    rounded up (zero columns pad the last panel)."""
    K, N = w.shape
    L = width or _packed.PANEL_OF[w.dtype]
    wp = _scratch.take(name, (_packed.panels(N, L), K, L), w.dtype)
    _packed.pack(np.ascontiguousarray(w), wp)
    return wp


def _pack_transposed(w, name):
    """w.T packed for ``_packed.matmul``: (P, K, L) scratch ``name`` for w
    (N, K), L = ``_packed.PANEL`` of its dtype, P = N/L rounded up, aligned
    to a cache line; no transposed copy of w is made, and only the vectors
    that differ from the last call's packing are stored
    (``_packed.pack_transposed_over``)."""
    N, K = w.shape
    L = _packed.PANEL_OF[w.dtype]
    wp = _scratch.take(name, (_packed.panels(N, L), K, L), w.dtype)
    _packed.pack_transposed_over(np.ascontiguousarray(w), wp, 0)
    return wp


def _transposed(w, name):
    """w.T as a C-contiguous (K, N) array, scratch ``name``, for w (N, K). Transposed in
    registers by ``_packed.pack_transposed`` (a single panel N wide) where N
    is a multiple of its block (8 float32, 4 float64 values; 4H always is in
    float64, for even H in float32): NumPy's copy of a transposed view
    took 0.7 ms for a (2000, 500) float32 weight and 30 ms for (4096, 1024),
    30% of a T1-B16-I500-H500 forward on the BLAS path."""
    N, K = w.shape
    out = _scratch.take(name, (K, N), w.dtype)
    if N % (32 // w.itemsize):
        np.copyto(out, w.T)
    else:
        _packed.pack_transposed(np.ascontiguousarray(w), out.reshape(1, K, N), 0)
    return out


def _pack_stacked(w_ih, w_hh, b):
    """[w_ih.T; w_hh.T; b] (I+H+1, 4H) packed for ``_packed.matmul_wide_pair``
    into scratch (``_scratch``): (P, I+H+1, L) aligned to a cache line,
    L = ``_packed.WIDE_PANEL`` of the dtype (32 for float32, 16 for
    float64), P = 4H/L rounded up. w_ih: (4H, I)  w_hh: (4H, H)  b: (4H,);
    ``_packed.pack_stacked``."""
    N, I = w_ih.shape
    L = _packed.WIDE_PANEL_OF[w_ih.dtype]
    wp = _scratch.take("w_p", (_packed.panels(N, L), I + w_hh.shape[1] + 1, L), w_ih.dtype)
    _packed.pack_stacked(np.ascontiguousarray(w_ih), np.ascontiguousarray(w_hh),
                         np.ascontiguousarray(b), wp)
    return wp


def _forward_output(y, h, c, gates, ctape, store):
    """ForwardOutput; the tape (gates (T, B, 4H), c (T, B, H)) only when ``store``."""
    if not store:
        return ForwardOutput(y=y, h_n=h, c_n=c)
    return ForwardOutput(y=y, h_n=h, c_n=c, gates=gates, c=ctape)


def _without_block_index(kernel):
    """``kernel(r0, r1, *args)`` as a ``_run_blocks`` function, which is
    also given the block index k (the forward kernels take none)."""
    return lambda r0, r1, k, *args: kernel(r0, r1, *args)


def _lengths(lengths, T, B):
    """(B,) int64 lengths; all T when the call has none (a shared array: the
    kernels only read lengths)."""
    if lengths is None:
        return _full_lengths(T, B)
    return np.ascontiguousarray(lengths, dtype=np.int64)


@functools.lru_cache(maxsize=256)
def _full_lengths(T, B):
    """(B,) int64 array of T, made once per (T, B): ~0.6 us per call
    otherwise. Never written (the kernels read lengths; none is returned)."""
    full = np.empty(B, np.int64)
    full.fill(T)
    return full


def _peephole(peephole, H, dtype):
    """(3, H) peepholes; zeros when the call has none (adds exactly 0 to finite values)."""
    if peephole is None:
        return np.zeros((3, H), dtype)
    return peephole
