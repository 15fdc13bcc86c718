"""Where the Numba backend's forward time goes, per shape (float32; default: the grid).

    python benchmarks/numba_breakdown.py [--shape LABEL|T,B,I,H ...] [--repeats 7]

For each shape it times, as compiled loops over the same arrays the backend
uses: the whole ``NumbaBackend.forward`` (no tape); the input projection alone;
the T recurrent products alone; the T gate passes alone. (On the packed path
the projection is fused into the per-step products, so the parts are the
packing of the stacked weight, the T fused products and the gate passes.)
Each component is timed with the strategy the backend picks for that shape
(``rows``: one thread per row block, each calling a single-threaded BLAS, the
packed-weight kernel or the hand-written product; ``blas``: numba's np.dot on
one thread, i.e. scipy's multi-threaded OpenBLAS). Medians in ms, and GFLOP/s for the
products. This is the evidence for the "what limits it" notes in
docs/benchmarks.md. For a batch of 1-3 rows in one block the backend's forward
computes the projection on a second thread while its time loop runs
(``_kernels.forward_rows``'s roles); the parts are timed one after another, so
there they overlap in the whole call and "rest" may be negative.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
from numba import njit

from polylstm import benchmarking as bm
from polylstm.cli_bench import parse_shape_or_label
from polylstm_numba import _backend, _barrier, _kernels, _packed


@njit(nogil=True)
def _blas_projection(x2, w_ih, out):
    """out (T*B, 4H) = x2 (T*B, I) @ w_ih.T, one BLAS GEMM."""
    np.dot(x2, w_ih.T, out)


@njit(nogil=True)
def _blas_steps(h, w_hh_t, acc, T):
    """T recurrent GEMMs h (B, H) @ w_hh_t (H, 4H) into acc (B, 4H)."""
    for _ in range(T):
        np.dot(h, w_hh_t, acc)


@njit(nogil=True)
def _row_projection(r0, r1, x, w_ih_t, xw, product, sync):
    """Per step, rows r0..r1-1: xw[t] = x[t] @ w_ih_t (``_kernels.multiply``,
    BLAS or the hand-written product)."""
    _barrier.started(sync)  # as the backend's kernels: the pool's thread starts at once
    for t in range(x.shape[0]):
        unused = w_ih_t.reshape(1, w_ih_t.shape[0], w_ih_t.shape[1])
        _kernels.multiply(x[t, r0:r1], w_ih_t, unused, xw[t, r0:r1], product, False)


@njit(nogil=True)
def _row_projection_packed(r0, r1, x, w_ih_p, xw, sync):
    """The projection as the 1-3-row packed blocks do it: one packed product
    over all steps when the block is the whole batch, else one per step."""
    _barrier.started(sync)  # as the backend's kernels: the pool's thread starts at once
    T, B, I = x.shape
    if r1 - r0 == B:
        _packed.matmul(x.reshape(T * B, I), w_ih_p, xw.reshape(T * B, xw.shape[2]))
    else:
        for t in range(T):
            _packed.matmul(x[t, r0:r1], w_ih_p, xw[t, r0:r1])


@njit(nogil=True)
def _row_steps(r0, r1, h, w_hh_t, w_hh_p, acc, T, product, sync):
    """T recurrent products for rows r0..r1-1 as the rows path does them."""
    _barrier.started(sync)  # as the backend's kernels: the pool's thread starts at once
    for _ in range(T):
        _kernels.multiply(h[r0:r1], w_hh_t, w_hh_p, acc[r0:r1], product, False)


@njit(nogil=True)
def _packed_steps(r0, r1, x, zh, w_p, acc, sync):
    """T fused products [x_t | zh] @ w (packed) for rows r0..r1-1, as the
    packed rows path does them (zh = [h | 1], w = [w_ih.T; w_hh.T; b])."""
    _barrier.started(sync)  # as the backend's kernels: the pool's thread starts at once
    for t in range(x.shape[0]):
        _packed.matmul_wide_pair(x[t, r0:r1], zh[r0:r1], w_p, acc[r0:r1])


@njit(nogil=True)
def _few_row_steps(r0, r1, h, w_hh_p, acc, xw, b, T, sync):
    """T recurrent products for a block of 1-3 rows on the packed kernel,
    starting from the projection and bias, as the backend does them."""
    _barrier.started(sync)  # as the backend's kernels: the pool's thread starts at once
    for s in range(T):
        _packed.matmul_few(h[r0:r1], w_hh_p, acc[r0:r1], xw[s, r0:r1], b, True, s % 2 == 1)


@njit(nogil=True)
def _product_gate_passes(r0, r1, acc, p, h, c, y, g, ct, T, sync):
    """T gate passes of the packed path (projection and bias already in the
    product: the fused forward and the 1-3-row blocks)."""
    _barrier.started(sync)  # as the backend's kernels: the pool's thread starts at once
    for t in range(T):
        for r in range(r0, r1):
            _kernels._gate_row(acc[r], p, h[r], c[r], y[t, r], g[0, r], ct[0, r], False)


@njit(nogil=True)
def _gate_passes(r0, r1, acc, xw, b, p, h, c, y, g, ct, sync):
    """T gate passes (the cell) for rows r0..r1-1, no products."""
    _barrier.started(sync)  # as the backend's kernels: the pool's thread starts at once
    for t in range(xw.shape[0]):
        for r in range(r0, r1):
            _kernels._cell_forward_row(acc[r], xw[t, r], b, p, h[r], c[r], y[t, r], g[0, r],
                                       ct[0, r], False)


def _median_ms(function, repeats):
    return statistics.median(bm.time_call(function, repeats, warmup=1)) * 1e3


def breakdown(shape: bm.Shape, repeats: int):
    """Rows of (component, ms, GFLOP/s or None) for one shape."""
    inp = bm.make_inputs(shape, "float32")
    T, B, I, H = shape.T, shape.B, shape.I, shape.H
    dt = np.float32
    backend = _backend.NumbaBackend()
    threads, rows, products = backend._plan(T, B, I, H, np.dtype(dt))
    path = "rows" if rows else "blas"
    # Packed blocks of 1-3 rows: projection first, then matmul_few per step.
    few = products == "packed" and not _backend._whole_packed_blocks(products, B, threads)
    blocks = _backend._row_blocks(B, threads, products == "packed") if rows else [(0, B)]
    threads = threads if rows else 1

    def on_blocks(function, *args):
        # The rows path runs its blocks on the threads, as the backend does.
        _backend._run_blocks(_backend._without_block_index(function), blocks, threads, *args)

    w_hh_t = np.ascontiguousarray(inp.w_hh.T)
    w_ih_t = np.ascontiguousarray(inp.w_ih.T)
    # The projection buffer: not on the fused packed path, which has none.
    xw = np.zeros((T, B, 4 * H), dt) if products != "packed" or few else None
    acc = np.zeros((B, 4 * H), dt)
    h = inp.h0.copy()
    c = inp.c0.copy()
    y = np.zeros((T, B, H), dt)
    g = np.zeros((1, B, 4 * H), dt)
    ct = np.zeros((1, B, H), dt)
    p = np.zeros((3, H), dt)
    proj_flops = 2 * T * B * I * 4 * H
    rec_flops = 2 * T * B * H * 4 * H
    proj_name, rec_name = "input projection", "T recurrent products"

    total = _median_ms(lambda: backend.forward(inp.x, inp.w_ih, inp.w_hh, inp.b, inp.h0, inp.c0,
                                               None, None, False, False), repeats)
    if products == "columns":
        # Its parts run interleaved on threads that take pieces as they come
        # (_kernels.forward_split): timed apart they would not add up.
        return "columns (hidden units split)", threads, [
            ("forward (backend, no tape)", total, shape.flops("forward") / total / 1e6)]
    if path == "blas":
        proj = _median_ms(lambda: _blas_projection(inp.x.reshape(T * B, I), inp.w_ih,
                                                   xw.reshape(T * B, 4 * H)), repeats)
        rec = _median_ms(lambda: _blas_steps(h, w_hh_t, acc, T), repeats)
    elif few:
        path = "rows, packed products, 1-3-row blocks"
        w_ih_p = _backend._pack_transposed(inp.w_ih, "w_ih_p")
        w_hh_p = _backend._pack_transposed(inp.w_hh, "w_hh_p")
        proj = _median_ms(lambda: on_blocks(_row_projection_packed, inp.x, w_ih_p, xw), repeats)
        rec = _median_ms(lambda: on_blocks(_few_row_steps, h, w_hh_p, acc, xw, inp.b, T), repeats)
        packing = _median_ms(lambda: (_backend._pack_transposed(inp.w_ih, "w_ih_p"),
                                      _backend._pack_transposed(inp.w_hh, "w_hh_p")), repeats)
        proj_name = "packing w_ih.T, w_hh.T + input projection"
        proj += packing
    elif products == "packed":
        # The input projection and the bias are fused into the per-step
        # products: one product [x_t | h | 1] @ [w_ih.T; w_hh.T; b] per step
        # and block.
        path = "rows, packed products"
        w_p = _backend._pack_stacked(inp.w_ih, inp.w_hh, inp.b)
        zh = np.zeros((B, H + 1), dt)
        proj = _median_ms(lambda: _backend._pack_stacked(inp.w_ih, inp.w_hh, inp.b), repeats)
        rec = _median_ms(lambda: on_blocks(_packed_steps, inp.x, zh, w_p, acc), repeats)
        proj_name = "packing [w_ih.T; w_hh.T; b]"
        rec_name = "T fused products (input + recurrent)"
        rec_flops += proj_flops
        proj_flops = 0
    else:
        kind = _kernels.BLAS if products == "blas" else _kernels.HAND
        path = f"rows, {'BLAS' if products == 'blas' else 'hand-written'} products"
        unused = w_hh_t.reshape(1, H, 4 * H)
        proj = _median_ms(lambda: on_blocks(_row_projection, inp.x, w_ih_t, xw, kind), repeats)
        rec = _median_ms(lambda: on_blocks(_row_steps, h, w_hh_t, unused, acc, T, kind), repeats)
    if products == "packed":
        gates = _median_ms(lambda: on_blocks(_product_gate_passes, acc, p, h, c, y, g, ct, T),
                           repeats)
    else:
        gates = _median_ms(lambda: on_blocks(_gate_passes, acc, xw, inp.b, p, h, c, y, g, ct),
                           repeats)
    return path, len(blocks), [
        ("forward (backend, no tape)", total, shape.flops("forward") / total / 1e6),
        (proj_name, proj, proj_flops / proj / 1e6),
        (rec_name, rec, rec_flops / rec / 1e6),
        ("T gate passes", gates, None),
        ("rest (total - parts)", total - proj - rec - gates, None),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", action="append", default=None, type=parse_shape_or_label,
                        help="a grid shape's label or any T,B,I,H (repeatable; default: the grid)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    shapes = args.shape or list(bm.SHAPES)
    print(f"float32 GEMM ceiling (NumPy BLAS, 2048^3): {bm.measure_gemm_ceiling():.1f} GFLOP/s")
    print("| shape | path (blocks) | component | median ms | GFLOP/s |")
    print("|---|---|---|---|---|")
    for shape in shapes:
        path, nblocks, rows = breakdown(shape, args.repeats)
        for name, ms, gflops in rows:
            rate = f"{gflops:.0f}" if gflops else ""
            print(f"| {shape.label} | {path} ({nblocks}) | {name} | {ms:.3f} | {rate} |", flush=True)


if __name__ == "__main__":
    main()
