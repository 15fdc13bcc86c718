"""A matrix product on a weight packed once per call (numba; float32, float64).

The per-step products of an LSTM multiply a small, changing matrix (a few
rows of ``h`` or ``da``) by the same weight at every step. A BLAS call packs
that weight again on every step; here it is packed once per call into
panels of two 256-bit vectors' width (16 float32 or 8 float64 columns:
``(N/L, K, L)``), and each product runs a register-tiled micro-kernel over
the panels: a 6-row tile of the output is twelve vector accumulators that
stay in registers for the whole K loop, fed by broadcast FMAs. numba loops do not get this from LLVM (a 4 x 16 tile written
as scalar locals ran at 7-8 GFLOP/s), so the kernel's inner loop is emitted
as LLVM IR through ``numba.extending.intrinsic``.

Measured on one Zen 4 core (float32, single-threaded, weight packed once),
4 x 16 tiles: 90-104 GFLOP/s at (M, K, N) = (32..128, 256..1024,
1024..4096), against 66-84 for a single-threaded OpenBLAS call on the
unpacked weight; 6 x 16 tiles: 109-113 at M = 36..48 in one run, within the
noise of 4 x 16 in two repeats (see docs/benchmarks.md).

``matmul_wide`` is the same product on panels twice as wide (``WIDE_PANEL``:
32 float32 or 16 float64 columns), each a pair of 512-bit vectors: the same
twelve accumulators per 6-row tile hold twice the columns, so each broadcast
and each instruction feeds twice the multiply-adds. On Zen 4, which executes
a 512-bit FMA as two 256-bit halves, a single-threaded product runs at the
same 98-102 GFLOP/s either way, but the fused LSTM forward on two threads
took 0.86-0.97x the time with it (docs/benchmarks.md; why the product alone
does not show it was not measured), so that forward uses it, through
``matmul_wide_pair``: the same product with its left operand in two arrays
([x_t | h_{t-1} | 1] read from x and from a [h | 1] buffer), so that no
step copies x_t or h into a joined row.

Any N: where the panel width does not divide it, the last panel is padded
with zero columns, and the kernels, which write whole panels, write into an
output of ``padded(N, L)`` columns that the caller reads in its first N
(measured, 2026-11-29: the BLAS strategies this replaced for such N took
1.9-2.4x the time of the next multiple of 16, see docs/benchmarks.md).
The vector code is plain LLVM (``llvm.fma.v8f32`` /
``llvm.fma.v4f64``, ``v16f32`` / ``v8f64`` for the wide panels), so it is
correct on any CPU; it is fast where the CPU has 256-bit (512-bit) FMA.

numba's on-disk cache keys a function on its own source file only: after
editing this module, delete ``__pycache__`` here (or touch ``_kernels.py``),
or the cached kernels keep the old version of ``matmul`` compiled in.
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import _scratch

#: Columns per panel, by element type: two 256-bit vectors (8 float32 or 4
#: float64 lanes each), so a 6-row tile holds twelve vector accumulators in
#: either precision.
PANEL = {"float32": 16, "float64": 8}
_LANES = {"float32": 8, "float64": 4}
#: PANEL by dtype object: ``dtype.name`` builds a string on every call
#: (~1 us, per packed weight per call).
PANEL_OF = {np.dtype(name): width for name, width in PANEL.items()}
#: Columns per panel of ``matmul_wide``: two 512-bit vectors.
WIDE_PANEL = {name: 2 * width for name, width in PANEL.items()}
WIDE_PANEL_OF = {np.dtype(name): width for name, width in WIDE_PANEL.items()}


def _tile_intrinsic(rows, panels=1, start=False, wide=False, two_sources=False, blocked=False):
    """An intrinsic ``tile(a, m0, wp, p, c)``: for each of the ``panels``
    panels q = p .. p+panels-1, c[m0:m0+rows, qL:qL+L] = a[m0:m0+rows, :] @ wp[q],
    for C-contiguous a (M, K), wp (P, K, L), c (M, N) of one float dtype,
    L = PANEL[dtype]. The tile keeps 2 * rows * panels vector accumulators in
    registers for the whole K loop. K = 0 gives zeros (or c0 + b below).

    With ``start``, ``tile(a, m0, wp, p, c, c0, b, from_c0)``: when the
    runtime flag ``from_c0`` is true the accumulators start from
    c0[m0+i, cols] + b[cols] instead of zero, for c0 (M, N) and b (N,) of
    the same dtype: c = c0 + b + a @ w, the pre-activations of an LSTM step
    (c0 the input projection, b the bias) in one pass. c0 and b are read
    either way (a few vectors per tile), so they must be valid arrays of
    those shapes.

    With ``two_sources``, ``tile(a, a2, m0, wp, p, c)``: the left operand is
    [a | a2] (M, K1 + K2) without being copied into one array, for a
    (M, K1) and a2 (M, K2) whose rows are contiguous (C order, or a block
    of rows of such an array), wp (P, K1 + K2, L): one K loop over a's
    columns, then one over a2's, on the same accumulators, so the sums are
    those of the one-array tile, in the same order, bit for bit.

    With ``wide``, the vectors have twice the lanes (512 bits) and
    L = WIDE_PANEL[dtype].

    With ``blocked``, ``tile(a, m0, wp, p, c, k0, kc, i0, j0, accumulate)``:
    one block of K, kc steps, from row k0 of the panels, and a's block from
    row i0 and column j0 (i0, j0 = m0, k0 for a whole left operand; the
    block's place in a copy of it), and when the runtime flag
    ``accumulate`` is true the accumulators start from the tile of c
    instead of zero: c[m0:m0+rows] += a[i0:i0+rows, j0:j0+kc] @ wp[q, k0:k0+kc]."""

    def typed(sources, wp, c, start_args):
        """(signature, codegen) of the tile for these argument types."""
        sources = tuple(sources)
        operands = sources + (wp, c) + start_args
        flag = (types.boolean,) if start_args or blocked else ()
        block = (types.intp,) * 4 if blocked else ()
        sig = types.void(*sources, types.intp, wp, types.intp, c, *start_args, *block, *flag)
        dtypes = {str(getattr(t, "dtype", "")) for t in operands}
        if len(dtypes) != 1 or next(iter(dtypes)) not in PANEL:
            raise TypeError(f"tile: the arrays must share a float32 or float64 dtype, got {dtypes}")
        if any(t.layout != "C" for t in sources + (wp, c)):
            # The rows are walked with a stride of the row length.
            raise TypeError("tile: a, wp and c must be C-contiguous, got "
                            f"{[t.layout for t in sources + (wp, c)]}")
        name = next(iter(dtypes))
        lanes = _LANES[name] * (2 if wide else 1)
        panel_width = 2 * lanes
        n_sources = len(sources)

        def codegen(context, builder, signature, args):
            source_values = args[:n_sources]
            m0_v, wp_v, p_v, c_v = args[n_sources:n_sources + 4]
            wpty, _, cty = signature.args[n_sources + 1:n_sources + 4]
            extra = args[n_sources + 4:]
            W = context.make_array(wpty)(context, builder, wp_v)
            C = context.make_array(cty)(context, builder, c_v)
            element = ir.FloatType() if name == "float32" else ir.DoubleType()
            vec = ir.VectorType(element, lanes)
            i64 = ir.IntType(64)
            i32 = ir.IntType(32)

            def const(value):
                return ir.Constant(i64, value)

            # Per source: a function giving the pointer to row i's k-th
            # value at loop index k, the loop's count and its first k.
            segments = []
            for aty, a_v in zip(signature.args[:n_sources], source_values):
                A = context.make_array(aty)(context, builder, a_v)
                K_source = builder.extract_value(A.shape, 1)
                # Blocked: a's block starts at row i0 = extra[2], column j0 = extra[3].
                first_row = extra[2] if blocked else m0_v
                row_pointers = [
                    builder.gep(A.data, [builder.mul(builder.add(first_row, const(i)), K_source)])
                    for i in range(rows)]
                if blocked:
                    row_pointers = [builder.gep(row, [extra[3]]) for row in row_pointers]
                    count, first = extra[1], extra[0]
                else:
                    count, first = K_source, None

                def value_pointer(i, k, row_pointers=row_pointers):
                    return builder.gep(row_pointers[i], [k])
                segments.append((value_pointer, count, first))
            N = builder.extract_value(C.shape, 1)
            K_panel = builder.extract_value(W.shape, 1)
            panel_size = builder.mul(K_panel, const(panel_width))
            panel_starts = [
                builder.gep(W.data, [builder.mul(builder.add(p_v, const(q)), panel_size)])
                for q in range(panels)]
            suffix = f"v{lanes}f{32 if name == 'float32' else 64}"
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fma.{suffix}")
            zero = ir.Constant(vec, [0.0] * lanes)
            undef = ir.Constant(vec, ir.Undefined)
            splat = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
            align = 4 if name == "float32" else 8

            def row_vectors(data, row_start):
                """The tile's vectors of one row of an (M, N) array, in
                accumulator order: panel q, then half h."""
                vectors = []
                for q in range(panels):
                    column = builder.mul(builder.add(p_v, const(q)), const(panel_width))
                    at = builder.gep(data, [builder.add(row_start, column)])
                    for h in range(2):
                        target = builder.gep(at, [const(h * lanes)]) if h else at
                        vectors.append(builder.bitcast(target, vec.as_pointer()))
                return vectors

            def k_loop(value_pointer, count, first_k, accs_in):
                """The accumulators after adding a[:, k] * wp[q, first_k + k]
                for k = 0..count-1 (value_pointer(i, k): where row i's value
                for loop index k lies)."""
                entry = builder.block
                loop = builder.append_basic_block("k_loop")
                done = builder.append_basic_block("k_done")
                builder.cbranch(builder.icmp_signed(">", count, const(0)), loop, done)
                builder.position_at_end(loop)
                k = builder.phi(i64)
                k.add_incoming(const(0), entry)
                # accs[(i * panels + q) * 2 + h]: row i, panel q, half h of the panel.
                accs = [builder.phi(vec) for _ in accs_in]
                for acc, value in zip(accs, accs_in):
                    acc.add_incoming(value, entry)
                offset = builder.mul(builder.add(first_k, k), const(panel_width))
                w_halves = []
                for panel_start in panel_starts:
                    wk = builder.gep(panel_start, [offset])
                    low = builder.bitcast(wk, vec.as_pointer())
                    w_halves.append(builder.load(low, align=align))
                    high = builder.bitcast(builder.gep(wk, [const(lanes)]), vec.as_pointer())
                    w_halves.append(builder.load(high, align=align))
                new = []
                for i in range(rows):
                    aik = builder.load(value_pointer(i, k))
                    broadcast = builder.shuffle_vector(
                        builder.insert_element(undef, aik, ir.Constant(i32, 0)), undef, splat)
                    for h, w_half in enumerate(w_halves):
                        new.append(builder.call(fma, [broadcast, w_half, accs[2 * i * panels + h]]))
                k_next = builder.add(k, const(1))
                body_end = builder.block
                k.add_incoming(k_next, body_end)
                for acc, value in zip(accs, new):
                    acc.add_incoming(value, body_end)
                builder.cbranch(builder.icmp_signed("<", k_next, count), loop, done)
                builder.position_at_end(done)
                out = []
                for before, after in zip(accs_in, new):
                    result = builder.phi(vec)
                    result.add_incoming(before, entry)
                    result.add_incoming(after, body_end)
                    out.append(result)
                return out

            accs = [zero] * (2 * rows * panels)
            if start:
                C0 = context.make_array(signature.args[n_sources + 4])(context, builder, extra[0])
                Bias = context.make_array(signature.args[n_sources + 5])(context, builder, extra[1])
                from_c0 = extra[2]
                bias = [builder.load(ptr, align=align)
                        for ptr in row_vectors(Bias.data, const(0))]
                accs = []
                for i in range(rows):
                    row_start = builder.mul(builder.add(m0_v, const(i)), N)
                    accs += [builder.select(from_c0, builder.fadd(
                        builder.load(ptr, align=align), bias_vector), zero)
                             for ptr, bias_vector in zip(row_vectors(C0.data, row_start), bias)]

            if blocked:
                accumulate = extra[4]
                accs = []
                for i in range(rows):
                    row_start = builder.mul(builder.add(m0_v, const(i)), N)
                    accs += [builder.select(accumulate, builder.load(ptr, align=align), zero)
                             for ptr in row_vectors(C.data, row_start)]
            first_k = const(0)
            for value_pointer, count, first in segments:
                accs = k_loop(value_pointer, count, first if blocked else first_k, accs)
                first_k = builder.add(first_k, count)
            for i in range(rows):
                row_start = builder.mul(builder.add(m0_v, const(i)), N)
                for h, ptr in enumerate(row_vectors(C.data, row_start)):
                    builder.store(accs[2 * i * panels + h], ptr, align=align)
            return context.get_dummy_value()

        return sig, codegen

    if sum((start, two_sources, blocked)) > 1:
        raise ValueError("tile: start, two_sources and blocked are exclusive")
    if blocked:
        @intrinsic
        def tile(typingctx, a, m0, wp, p, c, k0, kc, i0, j0, accumulate):
            return typed((a,), wp, c, ())
    elif start:
        @intrinsic
        def tile(typingctx, a, m0, wp, p, c, c0, b, from_c0):
            return typed((a,), wp, c, (c0, b))
    elif two_sources:
        @intrinsic
        def tile(typingctx, a, a2, m0, wp, p, c):
            return typed((a, a2), wp, c, ())
    else:
        @intrinsic
        def tile(typingctx, a, m0, wp, p, c):
            return typed((a,), wp, c, ())
    return tile


# Full-height tiles: one panel, 6 or 4 rows (12 or 8 accumulators).
_tile6 = _tile_intrinsic(6)
_tile4 = _tile_intrinsic(4)
# The 1-3 rows left over (an odd M; every row when M <= 3), one at a time in
# tiles that span six panels, so that they too keep twelve accumulators (a
# 1 x 16 tile alone waits on its two FMA chains), and 1 x 16 for the panels
# beyond a multiple of six.
_tile1x6 = _tile_intrinsic(1, 6)
_tile1 = _tile_intrinsic(1)
# The same shapes on wide panels, the left operand in two arrays
# (``matmul_wide_pair``; ``matmul_wide`` leaves the second empty); the
# leftover rows span three panels (twelve accumulators again).
_pair6 = _tile_intrinsic(6, wide=True, two_sources=True)
_pair4 = _tile_intrinsic(4, wide=True, two_sources=True)
_pair1x3 = _tile_intrinsic(1, 3, wide=True, two_sources=True)
_pair1 = _tile_intrinsic(1, wide=True, two_sources=True)
# matmul_blocked: 6- and 4-row tiles on wide panels over one block of K,
# adding to the output.
_block6 = _tile_intrinsic(6, wide=True, blocked=True)
_block4 = _tile_intrinsic(4, wide=True, blocked=True)
# matmul_few: all of its 1-3 rows in one tile, so each weight vector loaded
# feeds every row; (rows, panels) keeps 8-12 accumulators, and the leftover
# panels go in one narrower tile. They can start from c0 + b (``start``).
_FEW_SHAPES = ((1, 4), (1, 3), (1, 2), (1, 1), (2, 2), (2, 1), (3, 2), (3, 1))
(_few1x4, _few1x3, _few1x2, _few1x1, _few2x2, _few2x1, _few3x2,
 _few3x1) = (_tile_intrinsic(r, q, start=True) for r, q in _FEW_SHAPES)


def panels(N, L):
    """Panels of L columns that hold N columns: the last one is padded with
    zero columns when L does not divide N."""
    return -(-N // L)


def padded(N, L):
    """Columns of a product's output on ``panels(N, L)`` panels: the kernels
    write whole panels, so an output (M, N) is allocated (M, padded(N, L))
    and read in its first N columns."""
    return panels(N, L) * L


@njit(cache=True, nogil=True)
def pack(w, wp):
    """wp (P, K, L) = the (K, N) matrix w in L-column panels, L = wp.shape[2],
    P = ``panels(N, L)``; columns N..PL-1 of the last panel are zeros.

    Row by row: each row of w is read once, front to back, and written to
    every panel. Panel by panel, the reads went down w's columns a row's
    length apart, a stride the prefetchers do not follow: (12800, 1024)
    into 32-column panels took 45-47 ms against 12 (float32, one thread,
    2026-11-29), (4096, 1024) into 16-column ones 15.6 against 4.7; within
    L2 ((1600, 128), (512, 512)) 7-13% slower, ~0.01 ms."""
    K, N = w.shape
    L = wp.shape[2]
    for k in range(K):
        row = w[k]
        for p in range(N // L):
            out = wp[p, k]
            for j in range(L):
                out[j] = row[p * L + j]
    if N % L:  # the last panel, part columns of w, part zeros
        p = N // L
        for k in range(K):
            for j in range(L):
                n = p * L + j
                wp[p, k, j] = w[k, n] if n < N else 0


def _transpose_intrinsic(only_changed=False):
    """An intrinsic ``transpose_block(w, j0, k0, wp, p, k1, jp)``: for
    C-contiguous w (N, K) and wp (P, K', L) of one float dtype and n = 8
    (float32) or 4 (float64) lanes of a 256-bit vector,
    wp[p, k1 + k, jp + j] = w[j0 + j, k0 + k] for j, k in 0..n-1: an n x n
    block transposed in registers (n row loads, a shuffle network of
    log2(n) stages, n stores). The scalar copy loop it replaces gathered
    each output vector one value per source row.

    ``only_changed``: each output vector is stored only where its bits
    differ from what wp holds (a load, a compare and a branch first), so
    that packing the same weights into the same buffer again writes
    nothing: see ``pack_stacked``."""

    def butterfly(builder, vectors, n):
        """The n vectors (rows) of an n x n block, transposed (columns).
        Stage ``width`` = 1, 2, .. n/2 pairs each vector a with a + width:
        of every run of 2 * width lanes, the new a takes the first ``width``
        lanes of a then those of a + width, the new a + width the second
        ``width`` of each. Each lane's (row, column) is tracked alongside,
        and the result is checked when the intrinsic is compiled: vector k
        must hold column k of rows 0..n-1 in order."""
        mask_type = ir.VectorType(ir.IntType(32), n)
        values = list(vectors)
        lanes = [[(r, c) for c in range(n)] for r in range(n)]
        width = 1
        while width < n:
            lo = [b + q + side for b in range(0, n, 2 * width) for side in (0, n) for q in range(width)]
            hi = [m + width for m in lo]
            for a in (v for v in range(n) if not v & width):
                b = a + width
                pair = lanes[a] + lanes[b]
                values[a], values[b] = (
                    builder.shuffle_vector(values[a], values[b], ir.Constant(mask_type, mask))
                    for mask in (lo, hi))
                lanes[a], lanes[b] = [pair[m] for m in lo], [pair[m] for m in hi]
            width *= 2
        columns = [None] * n
        for v in range(n):
            assert [r for r, _ in lanes[v]] == list(range(n)), lanes[v]
            assert len({c for _, c in lanes[v]}) == 1, lanes[v]
            columns[lanes[v][0][1]] = values[v]
        return columns

    @intrinsic
    def transpose_block(typingctx, w, j0, k0, wp, p, k1, jp):
        dtypes = {str(getattr(t, "dtype", "")) for t in (w, wp)}
        if len(dtypes) != 1 or next(iter(dtypes)) not in PANEL:
            raise TypeError(f"transpose_block: the arrays must share a float32 or float64 dtype, got {dtypes}")
        if w.layout != "C" or wp.layout != "C" or w.ndim != 2 or wp.ndim != 3:
            raise TypeError("transpose_block: w (N, K) and wp (P, K', L) must be C-contiguous")
        name = next(iter(dtypes))
        n = _LANES[name]
        sig = types.void(w, types.intp, types.intp, wp, types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            w_v, j0_v, k0_v, wp_v, p_v, k1_v, jp_v = args
            W = context.make_array(signature.args[0])(context, builder, w_v)
            WP = context.make_array(signature.args[3])(context, builder, wp_v)
            element = ir.FloatType() if name == "float32" else ir.DoubleType()
            vec = ir.VectorType(element, n)
            i64 = ir.IntType(64)
            align = 4 if name == "float32" else 8
            K = builder.extract_value(W.shape, 1)
            Kp = builder.extract_value(WP.shape, 1)
            L = builder.extract_value(WP.shape, 2)
            rows = []
            for j in range(n):
                start = builder.add(builder.mul(builder.add(j0_v, ir.Constant(i64, j)), K), k0_v)
                ptr = builder.bitcast(builder.gep(W.data, [start]), vec.as_pointer())
                rows.append(builder.load(ptr, align=align))
            columns = butterfly(builder, rows, n)
            panel = builder.mul(p_v, Kp)
            bits = ir.VectorType(ir.IntType(32 if name == "float32" else 64), n)
            for k in range(n):
                row = builder.add(panel, builder.add(k1_v, ir.Constant(i64, k)))
                start = builder.add(builder.mul(row, L), jp_v)
                ptr = builder.bitcast(builder.gep(WP.data, [start]), vec.as_pointer())
                if not only_changed:
                    builder.store(columns[k], ptr, align=align)
                    continue
                # Compared as bits: NaNs and signed zeros count as they are.
                old = builder.bitcast(builder.load(ptr, align=align), bits)
                new = builder.bitcast(columns[k], bits)
                differ = builder.icmp_unsigned("!=", old, new)
                mask = builder.bitcast(differ, ir.IntType(n))
                changed = builder.icmp_unsigned("!=", mask, ir.Constant(ir.IntType(n), 0))
                with builder.if_then(changed, likely=False):
                    builder.store(columns[k], ptr, align=align)
            return context.get_dummy_value()

        return sig, codegen

    return transpose_block


_transpose_block = _transpose_intrinsic()
_transpose_block_if_changed = _transpose_intrinsic(only_changed=True)


@njit(cache=True, nogil=True)
def pack_transposed(w, wp, k0):
    """wp[:, k0:k0+K, :] = the (K, N) matrix w.T in L-column panels, for
    w (N, K) C-contiguous and L = wp.shape[2]: stacks weights stored
    (out, in), such as an LSTM's (4H, I), along K without a transposed copy.
    wp holds ``panels(N, L)`` panels; columns N..PL-1 of the last are zeros.

    n x n blocks (n = 8 float32, 4 float64 values) are transposed in
    registers; the K % n columns left over are copied one value at a time.
    Measured, float32, both weights of an LSTM stacked into a new array,
    against the scalar copy loop this replaced: I = H = 128, 15-19 us
    against 39 us (50 against 94 us inside a T100-B16 forward, whose
    previous call has evicted the weights from L2); I = H = 512, 0.47-0.89
    against 2.4-3.7 ms; I = 32, H = 64, 4 against 8 us."""
    _pack_transposed(w, wp, k0, False)


@njit(cache=True, nogil=True)
def pack_transposed_over(w, wp, k0):
    """``pack_transposed`` into a wp that holds an earlier packing (memory
    kept between calls), storing only the values whose bits differ from it
    (see ``pack_stacked``): unchanged weights leave the buffer untouched,
    so the lines that the threads of the last call read stay in their
    caches."""
    _pack_transposed(w, wp, k0, True)


@njit(cache=True, nogil=True)
def _pack_transposed(w, wp, k0, only_changed):
    """``pack_transposed``; with ``only_changed``, storing only the values
    whose bits differ from what wp holds (``_transpose_intrinsic``)."""
    N, K = w.shape
    L = wp.shape[2]
    n = 32 // w.itemsize
    Kn = K - K % n
    for p in range(N // L):
        for k in range(0, Kn, n):
            for j in range(0, L, n):
                if only_changed:
                    _transpose_block_if_changed(w, p * L + j, k, wp, p, k0 + k, j)
                else:
                    _transpose_block(w, p * L + j, k, wp, p, k0 + k, j)
        rows = w[p * L:(p + 1) * L]
        for k in range(Kn, K):
            out = wp[p, k0 + k]
            for j in range(L):
                _put(out, j, rows[j, k], only_changed)
    if N % L:
        # The last panel, part columns of w, part zeros (at most one panel
        # of the call: copied one value at a time).
        p = N // L
        rows = w[p * L:]
        for k in range(K):
            out = wp[p, k0 + k]
            for j in range(L):
                _put(out, j, rows[j, k] if j < N - p * L else 0, only_changed)


@njit(cache=True, nogil=True, inline="always")
def _put(out, j, value, only_changed):
    """out[j] = value; with ``only_changed`` only where it differs (as bits:
    a NaN is always stored, -0.0 over 0.0 too)."""
    if (not only_changed or out[j] != value
            or math.copysign(1.0, out[j]) != math.copysign(1.0, value)):
        out[j] = value


#: Packed weights start on a cache-line boundary (64 bytes), so that no
#: vector load of a panel straddles two lines. Measured at T200-B1-I32-H64
#: (the recurrent weight read from L1/L2 at every step), kernel alone: 183-186
#: us with the packed weights at 0 or 32 bytes past a line, 202-210 us at 16
#: or 48, which is where malloc had put them (np.empty gives 16-byte
#: alignment). No measurable effect where the weight streams from L2/L3 (the
#: fused forward at H >= 256: 0.97-1.03). The backend's kept buffers
#: (``_scratch``) start on the same boundary.
ALIGN = _scratch.ALIGN


@njit(cache=True, nogil=True)
def new_panels(P, K, L, like):
    """An uninitialised (P, K, L) C-contiguous array of ``like``'s dtype
    whose data starts on an ``ALIGN``-byte boundary."""
    n = P * K * L
    size = like.itemsize
    buffer = np.empty(n + ALIGN // size, like.dtype)
    skip = ((ALIGN - buffer.ctypes.data % ALIGN) % ALIGN) // size
    return buffer[skip:skip + n].reshape((P, K, L))


@njit(cache=True, nogil=True)
def packed_stacked(w_ih, w_hh, b, L):
    """[w_ih.T; w_hh.T; b] (I+H+1, N) packed into a new aligned
    (P, I+H+1, L) array, P = ``panels(N, L)`` (zero columns pad the last);
    w_ih: (N, I), w_hh: (N, H), both C-contiguous, b: (N,). Multiplied by
    [x_t | h | 1], the last row adds the bias in the product's last
    multiply-add: 1 * b[n] is exact, so the sum is rounded as
    (x_t @ w_ih.T + h @ w_hh.T) + b, bit for bit."""
    N, I = w_ih.shape
    K = I + w_hh.shape[1]
    wp = new_panels((N + L - 1) // L, K + 1, L, w_ih)
    pack_stacked(w_ih, w_hh, b, wp)
    return wp


@njit(cache=True, nogil=True)
def pack_stacked(w_ih, w_hh, b, wp):
    """``packed_stacked`` into wp: (P, I+H+1, L), P = ``panels(N, L)``,
    L = wp.shape[2] (the caller's buffer, aligned to ``ALIGN``), storing
    only values that differ from what wp holds.

    Why: the backend packs into memory it keeps between calls
    (``_scratch``), which both row-block threads of the last call have read,
    so each line sits in both cores' caches. A store must first take the
    line from the other core, and the other core then reads it back in its
    first step: packing a T100-B16-I128-H128 forward's weights over its own
    previous copy took ~166 us that way, against ~15 us into memory only
    this core held. Weights that did not change since the last call (an
    inference loop) now leave the buffer untouched, at the price of one
    load and compare per stored vector when they did (a training step)."""
    N, I = w_ih.shape
    K = I + w_hh.shape[1]
    L = wp.shape[2]
    _pack_transposed(w_ih, wp, 0, True)
    _pack_transposed(w_hh, wp, I, True)
    for p in range(wp.shape[0]):
        for j in range(L):
            n = p * L + j
            _put(wp[p, K], j, b[n] if n < N else 0, True)


@njit(cache=True, nogil=True)
def _row_tiles(M):
    """(M6, M4) for M rows: 6-row tiles cover rows 0..M6-1, then up to two
    4-row tiles rows M6..M4-1, chosen so that at most 3 rows are left."""
    n4 = 0
    best = M % 6
    for k in (1, 2):
        if 4 * k <= M and (M - 4 * k) % 6 < best:
            n4 = k
            best = (M - 4 * k) % 6
    M6 = (M - 4 * n4) // 6 * 6
    return M6, M6 + 4 * n4


@njit(cache=True, nogil=True, inline="always")
def _check_operands(K, M, wp, c):
    """The tiles trust the shapes: a left operand of K columns and M rows
    whose K differs from the packed weight's rows, or an output with fewer
    rows or panel columns, would be read or written out of place."""
    if K != wp.shape[1] or c.shape[0] < M or c.shape[1] < wp.shape[0] * wp.shape[2]:
        raise ValueError("packed product: operands of inconsistent shapes")


@njit(cache=True, nogil=True)
def matmul(a, wp, c):
    """c (M, N) = a (M, K) @ w, where wp = pack(w); C-contiguous, one float
    dtype, N = L * wp.shape[0] with L = wp.shape[2] = PANEL[dtype] (for a
    w of N' columns, c is (M, ``padded(N', L)``): its columns from N' on
    are zeros), K = wp.shape[1] >= 1. Each panel is used for all row tiles before the
    next one, so it stays in L1.

    Rows go in 6-row tiles (12 accumulators, the latency slack that 8 lack),
    then up to two 4-row tiles chosen so that at most 3 rows are left (M = 32:
    four 6-row and two 4-row tiles). Those 1-3 rows (for M <= 3 every row:
    a batch of one per thread) go one at a time in 1 x 6-panel tiles, which
    also keep twelve accumulators."""
    _check_operands(a.shape[1], a.shape[0], wp, c)
    M = a.shape[0]
    M6, M4 = _row_tiles(M)
    P = wp.shape[0]
    if M4 > 0:
        for p in range(P):
            for m0 in range(0, M6, 6):
                _tile6(a, m0, wp, p, c)
            for m0 in range(M6, M4, 4):
                _tile4(a, m0, wp, p, c)
    P6 = P - P % 6
    for m0 in range(M4, M):  # 0..3 rows for every M
        for p in range(0, P6, 6):
            _tile1x6(a, m0, wp, p, c)
        for p in range(P6, P):
            _tile1(a, m0, wp, p, c)


@njit(cache=True, nogil=True)
def matmul_wide(a, wp, c):
    """``matmul`` on wide panels: wp = pack(w) into L = WIDE_PANEL[dtype]
    columns per panel (twice PANEL), c as in ``matmul``. The same tiling:
    6- and 4-row tiles of one panel, the 1-3 rows left over in 1 x 3-panel
    tiles, then 1 x 1; run by ``matmul_wide_pair`` with an empty second
    operand (whose K loop is skipped), so one set of wide tiles serves both."""
    matmul_wide_pair(a, np.empty((a.shape[0], 0), a.dtype), wp, c)


@njit(cache=True, nogil=True)
def matmul_wide_pair(a, a2, wp, c):
    """``matmul_wide`` of [a | a2] (M, K1 + K2), for a (M, K1) and a2
    (M, K2) with contiguous rows, without joining them: the same tiles,
    each running over a's columns then a2's (``_tile_intrinsic``'s
    ``two_sources``), so c holds the same bits as ``matmul_wide`` of the
    joined array. wp: (P, K1 + K2, L). An LSTM step multiplies
    [x_t | h_{t-1} | 1] this way straight from x: copying x_t into a joined
    row buffer at every step took ~35 us of a T100-B8-I128-H128 forward's
    2.16 ms on one thread (measured, 2026-11-29)."""
    if a2.shape[0] != a.shape[0]:
        raise ValueError("matmul_wide_pair: a and a2 have different row counts")
    _check_operands(a.shape[1] + a2.shape[1], a.shape[0], wp, c)
    M = a.shape[0]
    M6, M4 = _row_tiles(M)
    P = wp.shape[0]
    if M4 > 0:
        for p in range(P):
            for m0 in range(0, M6, 6):
                _pair6(a, a2, m0, wp, p, c)
            for m0 in range(M6, M4, 4):
                _pair4(a, a2, m0, wp, p, c)
    P3 = P - P % 3
    for m0 in range(M4, M):
        for p in range(0, P3, 3):
            _pair1x3(a, a2, m0, wp, p, c)
        for p in range(P3, P):
            _pair1(a, a2, m0, wp, p, c)


#: ``matmul_blocked``'s block of K and block of rows (a multiple of 6).
#: Measured single-threaded, float32, 2026-11-29, GFLOP/s against one
#: OpenBLAS call (docs/benchmarks.md, "Gradient products on the packed
#: kernel, blocked"): a @ w at (M, K, N) = (1600, 512, 128) 105-116 for K
#: blocks of 512 or more (OpenBLAS 91-102), at (3200, 4096, 1024) 109-114
#: from 1024, 97-106 at 256 (103-104); a.T @ w at (512, 1600, 128) 96-101
#: (76-88), at (4096, 3200, 1024) 104-106 from 1024, 94-96 at 256 (100-101);
#: blocks of 48-384 rows within 2-3% of each other.
BLOCK_K = 1024
BLOCK_M = 96


@njit(cache=True, nogil=True)
def matmul_blocked(a, wp, c, transposed, m_begin, m_end):
    """Rows m_begin..m_end-1 of c (M, N) = A @ w, on wide panels (wp =
    pack(w), L = WIDE_PANEL[dtype], c as in ``matmul``): A = a (M, K), or
    with ``transposed`` A = a.T for a (K, M). For products over all the
    steps of a sequence, where ``matmul``'s panel no longer stays in cache:
    the gradients of an LSTM's weights, dw = da.T @ x, have K = T * B.

    K goes in blocks of ``BLOCK_K``, rows in blocks of ``BLOCK_M`` (6-row
    tiles, then up to two 4-row tiles); for each, every panel's block is
    multiplied by all the rows' tiles before the next panel, the tiles
    adding to c after the first block of K. With ``transposed``, each block
    of a.T is first copied into a (BLOCK_M, BLOCK_K) buffer, rows
    contiguous: read in place, a tile's values at one k lie in one row of a,
    and the rows of a, 4H values apart (a power of two for most H), fall in
    the same few cache sets (a.T @ w read in place, (4096, 3200, 1024): 99
    GFLOP/s against 106 copied). The 1-3 rows left over (a row count that is
    not a sum of 6s and 4s) go through a plain loop."""
    M = a.shape[1] if transposed else a.shape[0]
    K = a.shape[0] if transposed else a.shape[1]
    _check_operands(K, M, wp, c)
    if not 0 <= m_begin <= m_end <= M:
        raise ValueError("matmul_blocked: rows out of range")
    P = wp.shape[0]
    L = wp.shape[2]
    M6, M4 = _row_tiles(m_end - m_begin)
    M6 += m_begin
    M4 += m_begin
    if K == 0:
        c[m_begin:m_end] = 0
        return
    block = np.empty((1, BLOCK_M, BLOCK_K) if transposed else (1, 1, 1), a.dtype)
    for k0 in range(0, K, BLOCK_K):
        kc = min(BLOCK_K, K - k0)
        more = k0 > 0
        for mb in range(m_begin, M4, BLOCK_M):
            m6 = min(mb + BLOCK_M, M6)
            m4 = min(mb + BLOCK_M, M4)
            if transposed:
                _copy_transposed(a, k0, kc, mb, m4 - mb, block)
                source, shift, j0 = block[0], mb, 0
            else:
                source, shift, j0 = a, 0, k0
            for p in range(P):
                for m0 in range(mb, m6, 6):
                    _block6(source, m0, wp, p, c, k0, kc, m0 - shift, j0, more)
                for m0 in range(m6, m4, 4):
                    _block4(source, m0, wp, p, c, k0, kc, m0 - shift, j0, more)
    # Scalar indexing only: the same loop over row slices took 1.6 s more
    # to compile (numba's slice assignments), for rows that are rare.
    for m in range(M4, m_end):
        for n in range(P * L):
            c[m, n] = 0
        for k in range(K):
            value = a[k, m] if transposed else a[m, k]
            for p in range(P):
                for j in range(L):
                    c[m, p * L + j] += value * wp[p, k, j]


@njit(cache=True, nogil=True)
def _copy_transposed(a, k0, kc, m0, mc, block):
    """block[0, :mc, :kc] = a[k0:k0+kc, m0:m0+mc].T, for a (K, M) and block
    (1, BM, BK), both C-contiguous: n x n blocks (n = 8 float32, 4 float64
    values) transposed in registers, the edges one value at a time. In
    ``_transpose_block``'s terms w is a, whose rows are the k's here, and
    its output rows are the block's rows i (a's columns m0 + i)."""
    n = 32 // a.itemsize
    mn = mc - mc % n
    kn = kc - kc % n
    for i in range(0, mn, n):
        for k in range(0, kn, n):
            _transpose_block(a, k0 + k, m0 + i, block, 0, i, k)
    for i in range(mc):
        for k in range(kn if i < mn else 0, kc):
            block[0, i, k] = a[k0 + k, m0 + i]


def packable(dtype, N, K) -> bool:
    """Whether ``matmul`` applies: float32 or float64, N and K >= 1 (an N
    that is not a multiple of the panel width pads the last panel, and the
    output, to ``padded(N, L)`` columns)."""
    return np.dtype(dtype).name in PANEL and N > 0 and K >= 1


@njit(cache=True, nogil=True)
def _few_tile(a, wp, p, c, c0, b, start, panels):
    """Panels p..p+panels-1 of ``matmul_few`` (a of 1-3 rows; ``panels`` at
    most 4 for one row, 2 for more): the ``_FEW_SHAPES`` tile that fits;
    ``matmul_few`` uses it for the panels beyond its full-width tiles.
    Called, not inlined: inlined at matmul_few's four call sites, its
    sixteen tiles (then one plain and one starting set) made a first
    float32 call compile for 32 s instead of 25."""
    M = a.shape[0]
    if M == 1:
        if panels == 4:
            _few1x4(a, 0, wp, p, c, c0, b, start)
        elif panels == 3:
            _few1x3(a, 0, wp, p, c, c0, b, start)
        elif panels == 2:
            _few1x2(a, 0, wp, p, c, c0, b, start)
        else:
            _few1x1(a, 0, wp, p, c, c0, b, start)
    elif M == 2:
        if panels == 2:
            _few2x2(a, 0, wp, p, c, c0, b, start)
        else:
            _few2x1(a, 0, wp, p, c, c0, b, start)
    elif panels == 2:
        _few3x2(a, 0, wp, p, c, c0, b, start)
    else:
        _few3x1(a, 0, wp, p, c, c0, b, start)


@njit(cache=True, nogil=True)
def matmul_few(a, wp, c, c0, b, start, backwards):
    """``matmul`` for 1-3 rows (M <= 3): the product of one step of a
    recurrence on a batch of one to three rows (a thread's share of a small
    batch), where the weight lives in L2. With ``start``,
    c = c0 + b + a @ w (c0 (M, N), b (N,): an LSTM step's input projection
    and bias; N = ``padded`` columns like c's, c0 with c's row stride);
    otherwise c = a @ w (c0 and b are still read, a few vectors per tile,
    and must be arrays of those shapes: ``c`` and ``c[0]`` do).

    Each tile holds all M rows, so every weight vector is loaded once per
    product (``matmul`` walks leftover rows one at a time). With
    ``backwards`` the panels are visited last to first: a caller that
    alternates it from step to step starts each product on the panels the
    previous one touched last, still in L1. Measured on one Zen 4 core,
    float32, 1 x 64 @ 64 x 256 (64 KB of weight, twice L1): 758 ns for the
    hand-written product, 574 for 1 x 4-panel tiles in one direction, 482
    alternating (at 256 KB, beyond L1's reach, all ~2.4 us).

    Unlike the other products it does not check its operands' shapes: it
    runs at every step of a latency-bound recurrence (a T200-B1-I32-H64
    forward takes ~1 us per step, product and gates), and its callers pass
    the shapes they packed."""
    M = a.shape[0]
    P = wp.shape[0]
    group = 4 if M == 1 else 2
    full = P - P % group
    if backwards:
        if full < P:
            _few_tile(a, wp, full, c, c0, b, start, P - full)
        first, stop, step = full - group, -1, -group
    else:
        first, stop, step = 0, full, group
    # The full-width tiles, one loop per row count with its tile inlined:
    # through ``_few_tile`` the call per tile cost ~65 ns of a ~715 ns step
    # at 1 x 64 @ 64 x 256 (four tiles per step).
    if M == 1:
        for p in range(first, stop, step):
            _few1x4(a, 0, wp, p, c, c0, b, start)
    elif M == 2:
        for p in range(first, stop, step):
            _few2x2(a, 0, wp, p, c, c0, b, start)
    else:
        for p in range(first, stop, step):
            _few3x2(a, 0, wp, p, c, c0, b, start)
    if not backwards and full < P:
        _few_tile(a, wp, full, c, c0, b, start, P - full)
