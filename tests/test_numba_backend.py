"""Numba-specific checks; the generic ones come from the conformance kit
(tests/test_conformance_numba.py).

Both recurrence strategies (row blocks, with single-threaded BLAS or the
hand-written product, and one BLAS GEMM per step) are forced on small shapes
and compared with the NumPy reference, with several thread counts so that row
blocks of unequal size, leftover rows of the 4-row blocking and single-row
blocks all occur.
"""

import dataclasses
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

pytest.importorskip("numba")
pytest.importorskip("scipy")

import polylstm  # noqa: E402
from polylstm.backend import Tape  # noqa: E402
from polylstm.testing import Case, make_inputs  # noqa: E402
from polylstm_numpy import reference  # noqa: E402

import polylstm_numba  # noqa: E402
from polylstm_numba import (  # noqa: E402
    _activations, _affinity, _backend, _barrier, _blas_threads, _kernels, _packed, _pool,
    _scratch)

# The PyPI scipy wheels bundle an OpenBLAS, whose thread count the backend
# sets; without one the row blocks fall back to the hand-written product.
ROW_BLAS = ["blas"] if _blas_threads.available() else []
# (path, threads, row_products): rows with 1, 2 and 3 blocks; BLAS.
PACKED = ["packed"] if _blas_threads.available() else []
# The column split (forward and backward) on 1, 2 and 3 slices: with
# H = 4..9, slices of 1-5 units, unequal ones.
COLUMNS = [("columns", n, None) for n in (1, 2, 3)] if _barrier.available() else []
STRATEGIES = ([("rows", 1, kind) for kind in ROW_BLAS + PACKED + ["hand"]]
              + [("rows", n, kind) for n in (2, 3) for kind in ROW_BLAS + PACKED + ["hand"]]
              + [("blas", None, None)] + COLUMNS)
TOL = {"float32": 2e-5, "float64": 1e-11}


def _initial_state(inputs, case):
    """(h0, c0) of the inputs, zeros where they have none."""
    dtype = inputs["x"].dtype
    h0 = inputs["h0"] if inputs["h0"] is not None else np.zeros((case.B, case.H), dtype)
    c0 = inputs["c0"] if inputs["c0"] is not None else np.zeros((case.B, case.H), dtype)
    return h0, c0


def _run(backend, inputs, case):
    """forward (with tape) then backward; returns (ForwardOutput, Gradients)."""
    h0, c0 = _initial_state(inputs, case)
    out = backend.forward(inputs["x"], inputs["w_ih"], inputs["w_hh"], inputs["b"], h0, c0,
                          inputs["peephole"], inputs["lengths"], case.reverse, True)
    tape = Tape("x", inputs["x"], inputs["w_ih"], inputs["w_hh"], h0, c0, inputs["peephole"],
                inputs["lengths"], case.reverse, out.y, out.gates, out.c)
    grads = backend.backward(tape, inputs["dy"], inputs["dh_n"], inputs["dc_n"])
    return out, grads


def _named(out, grads):
    named = {"y": out.y, "h_n": out.h_n, "c_n": out.c_n, "gates": out.gates, "c": out.c,
             "dx": grads.dx, "dw_ih": grads.dw_ih, "dw_hh": grads.dw_hh, "db": grads.db,
             "dh0": grads.dh0, "dc0": grads.dc0}
    if grads.dpeephole is not None:
        named["dpeephole"] = grads.dpeephole
    return named


# The packed products take any H; where their panel width (16 float32, 8
# float64 values; 32 and 16 in the fused forward) does not divide 4H or H,
# the last panel is padded with zero columns (H = 9, 4, 6 here).
CASES = [
    Case(T=6, B=7, I=5, H=9, lengths=True, peephole=True),
    Case(T=5, B=9, I=3, H=4, lengths=True, reverse=True),
    Case(T=8, B=1, I=6, H=8, peephole=True, reverse=True),
    Case(T=4, B=5, I=7, H=6, lengths=True, reverse=True, peephole=True),
    # H = 16: whole panels (float32); B = 11 leaves rows outside the 4-row
    # tiles in every block.
    Case(T=5, B=11, I=7, H=16, lengths=True, reverse=True, peephole=True),
    # H = 32: with 2 or 3 threads the packed blocks have 1-3 rows, which take
    # the projection as one product and ``_packed.matmul_few`` per step
    # (float32: 8 panels forward, 2 backward; float64: 16 and 4).
    Case(T=7, B=5, I=3, H=32, lengths=True, peephole=True),
    Case(T=6, B=3, I=4, H=16, lengths=True, reverse=True),
    # No lengths, 4H = 20: the 1-3-row blocks' projection buffer is padded
    # (24 or 32 columns), so it cannot double as the gate tape.
    Case(T=5, B=2, I=3, H=5, peephole=True),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("path,threads,products", STRATEGIES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c.T}B{c.B}I{c.I}H{c.H}"
                         f"{'-len' if c.lengths else ''}{'-rev' if c.reverse else ''}"
                         f"{'-peep' if c.peephole else ''}")
def test_strategy_matches_reference(case, path, threads, products, dtype):
    inputs = make_inputs(case, dtype)
    backend = _backend.NumbaBackend(path, threads, products)
    got = _named(*_run(backend, inputs, case))
    # Without a tape the kernels take another gate loop: same numbers, bit for bit.
    untaped = backend.forward(inputs["x"], inputs["w_ih"], inputs["w_hh"], inputs["b"],
                              *_initial_state(inputs, case), inputs["peephole"],
                              inputs["lengths"], case.reverse, False)
    for name in ("y", "h_n", "c_n"):
        np.testing.assert_array_equal(getattr(untaped, name), got[name], err_msg=name)
    inputs64 = {k: (v.astype(np.float64) if v is not None and v.dtype.kind == "f" else v)
                for k, v in inputs.items()}

    class Ref:
        forward = staticmethod(reference.forward)
        backward = staticmethod(reference.backward)

    want = _named(*_run(Ref, inputs64, case))
    assert set(got) == set(want)
    for name, value in got.items():
        assert value.dtype == np.dtype(dtype), f"{name} is {value.dtype}, not {dtype}"
        scale = max(1.0, float(np.abs(want[name]).max()))
        err = float(np.abs(value.astype(np.float64) - want[name]).max()) / scale
        assert err <= TOL[dtype], f"{name}: error {err:.3g} ({path}, threads={threads}, {products})"


@pytest.mark.parametrize("H", [7, 16])  # 7: the packed products' last panel padded
@pytest.mark.parametrize("path,threads,products", STRATEGIES)
def test_float32_stays_float32_and_calls_are_bit_identical(path, threads, products, H):
    case = Case(T=9, B=6, I=5, H=H, lengths=True, peephole=True)
    inputs = make_inputs(case, "float32")
    backend = _backend.NumbaBackend(path, threads, products)
    first = _named(*_run(backend, inputs, case))
    second = _named(*_run(backend, inputs, case))
    for name in first:
        assert first[name].dtype == np.float32, name
        assert first[name].tobytes() == second[name].tobytes(), f"{name} differs between calls"


@pytest.mark.parametrize("path,threads,products", STRATEGIES)
def test_inputs_left_unchanged(path, threads, products):
    case = Case(T=5, B=5, I=4, H=6, lengths=True, reverse=True, peephole=True)
    inputs = make_inputs(case, "float32")
    before = {k: v.copy() for k, v in inputs.items() if v is not None}
    _run(_backend.NumbaBackend(path, threads, products), inputs, case)
    for name, value in before.items():
        assert np.array_equal(inputs[name], value), f"{name} was written"


@pytest.mark.parametrize("products", ROW_BLAS + ["hand"])
def test_large_batch_uses_more_than_the_leftover_rows(products):
    # 4-row blocking plus leftovers, 2 blocks of 11 and 10 rows, against BLAS;
    # T*B = 63 rows of dx: two chunks of the split gradient products.
    case = Case(T=3, B=21, I=13, H=10, lengths=True)
    inputs = make_inputs(case, "float64")
    rows = _named(*_run(_backend.NumbaBackend("rows", 2, products), inputs, case))
    blas = _named(*_run(_backend.NumbaBackend("blas"), inputs, case))
    for name in rows:
        np.testing.assert_allclose(rows[name], blas[name], rtol=1e-12, atol=1e-12, err_msg=name)


def _check_packed_product(product, M, K, N, width, dtype, seed):
    """``product`` (``_packed.matmul`` or ``matmul_wide``) of random (M, K)
    and (K, N) operands, the weight packed ``width`` columns to a panel,
    against the float64 product. An N that ``width`` does not divide pads
    the last panel: the output then has ``padded(N, width)`` columns, the
    ones beyond N exactly zero."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((M, K)).astype(dtype)
    w = rng.standard_normal((K, N)).astype(dtype)
    c = np.full((M, _packed.padded(N, width)), np.nan, dtype)
    wp = _backend._pack(w, "test", width)
    assert wp.shape == (_packed.panels(N, width), K, width)
    product(a, wp, c)
    want = a.astype(np.float64) @ w.astype(np.float64)
    tol = {"float32": 1e-5, "float64": 1e-13}[dtype]
    assert np.abs(c[:, :N] - want).max() <= tol * np.abs(want).max() * np.sqrt(K)
    assert (c[:, N:] == 0).all()


# M covers every way rows are tiled (6- and 4-row tiles, then 1, 2 or 3 rows
# left over), N panel counts with and without panels beyond the 1 x 6 tiles.
@pytest.mark.parametrize("M,K,N", [(1, 1, 16), (5, 3, 16), (7, 130, 48), (32, 256, 1024),
                                   (9, 64, 32), (13, 17, 16), (38, 40, 64), (4, 8, 16),
                                   (6, 5, 32), (1, 33, 112), (2, 40, 112), (3, 9, 80),
                                   (2, 7, 96), (3, 12, 64), (7, 5, 208),
                                   # N no multiple of the panel: the last one padded
                                   (5, 3, 5), (7, 20, 37), (13, 17, 100), (1, 33, 113),
                                   (3, 9, 81), (38, 40, 65)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_packed_product_matches_a_float64_product(M, K, N, dtype):
    _check_packed_product(_packed.matmul, M, K, N, _packed.PANEL[dtype], dtype, M * K + N)
    assert _packed.packable(np.float32, 32, 4) and _packed.packable(np.float64, 20, 4)
    assert _packed.packable(np.float32, 5, 1)
    assert not _packed.packable(np.int64, 32, 4) and not _packed.packable(np.float32, 0, 4)
    assert _packed.padded(37, 16) == 48 and _packed.padded(32, 16) == 32


# matmul_wide: every row tiling (as above) with panel counts below, at and
# beyond its 1 x 3-panel leftover tiles.
@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 6, 7, 9, 13, 32, 38])
@pytest.mark.parametrize("panels", [1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_wide_packed_product_matches_a_float64_product(M, panels, dtype):
    width = _packed.WIDE_PANEL[dtype]
    _check_packed_product(_packed.matmul_wide, M, 29, panels * width, width, dtype,
                          100 * M + panels)
    # The same panel count with the last one part zeros.
    _check_packed_product(_packed.matmul_wide, M, 29, panels * width - 3, width, dtype,
                          100 * M + panels + 7)


# matmul_wide_pair: the same tilings, the left operand cut into two arrays
# at every place (an empty first or second part included); the bits must be
# those of matmul_wide on the joined operand (same sums in the same order).
@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 6, 7, 9, 13, 38])
@pytest.mark.parametrize("panels", [1, 3, 4])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_wide_product_of_two_arrays_is_the_product_of_them_joined(M, panels, dtype):
    width = _packed.WIDE_PANEL[dtype]
    K, N = 9, panels * width - 3
    rng = np.random.default_rng(M * 10 + panels)
    a = rng.standard_normal((M, K)).astype(dtype)
    w = rng.standard_normal((K, N)).astype(dtype)
    wp = _backend._pack(w, "test", width)
    joined = np.full((M, _packed.padded(N, width)), np.nan, dtype)
    _packed.matmul_wide(a, wp, joined)
    want = a.astype(np.float64) @ w.astype(np.float64)
    tol = {"float32": 1e-5, "float64": 1e-13}[dtype] * 3 * np.abs(want).max()
    assert np.abs(joined[:, :N] - want).max() <= tol
    for cut in range(K + 1):
        first, second = np.ascontiguousarray(a[:, :cut]), np.ascontiguousarray(a[:, cut:])
        c = np.full_like(joined, np.nan)
        _packed.matmul_wide_pair(first, second, wp, c)
        np.testing.assert_array_equal(c, joined, err_msg=f"cut at {cut}")
    # Rows of a block of a larger array (as x[t, r0:r1] in the forward).
    big = np.zeros((M + 2, K), dtype)
    big[1:M + 1] = a
    c = np.full_like(joined, np.nan)
    _packed.matmul_wide_pair(big[1:M + 1, :4].copy(), big[1:M + 1, 4:].copy(), wp, c)
    np.testing.assert_array_equal(c, joined)


def test_packed_tiles_refuse_arrays_whose_rows_are_not_contiguous():
    # The tiles walk rows with a stride of the row length: a strided view
    # would be read wrong, so it must not compile.
    a = np.ones((4, 8), np.float32)
    wp = _backend._pack(np.ones((4, 64), np.float32), "test", 32)
    c = np.zeros((4, 64), np.float32)
    with pytest.raises(Exception, match="C-contiguous"):
        _packed.matmul_wide_pair(a[:, ::2], a[:, ::2], wp, c)
    with pytest.raises(Exception, match="C-contiguous"):
        _packed.matmul_wide(a[:, ::2], wp, c)


def test_packed_products_refuse_operands_of_inconsistent_shapes():
    wp = _backend._pack(np.ones((8, 64), np.float32), "test", 32)  # (2, 8, 32)
    a = np.ones((4, 8), np.float32)
    c = np.zeros((4, 64), np.float32)
    _packed.matmul_wide(a, wp, c)
    np.testing.assert_array_equal(c, 8)
    for bad_a, bad_c in ((a[:, :7].copy(), c), (a, c[:3].copy()), (a, c[:, :48].copy())):
        with pytest.raises(ValueError, match="inconsistent shapes"):
            _packed.matmul_wide(bad_a, wp, bad_c)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        _packed.matmul_wide_pair(a[:, :3].copy(), a[:, :3].copy(), wp, c)
    with pytest.raises(ValueError, match="different row counts"):
        _packed.matmul_wide_pair(a[:, :3].copy(), a[:3, 3:].copy(), wp, c)
    narrow = _backend._pack(np.ones((8, 32), np.float32), "test")  # (2, 8, 16)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        _packed.matmul(a[:, :5].copy(), narrow, c)


# matmul_blocked: row counts tiled by 6s, by 6s and 4s, with 1-3 rows left
# to the plain loop, across blocks of rows (BLOCK_M = 96) and of K
# (BLOCK_K = 1024), K = 0, a range of the rows; a.T read from (K, M).
@pytest.mark.parametrize("M,K,N", [(1, 5, 32), (3, 7, 40), (4, 1, 32), (6, 33, 64),
                                   (13, 9, 20), (100, 1030, 70), (203, 40, 96), (7, 0, 32)])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_blocked_product_matches_a_float64_product(M, K, N, transposed, dtype):
    width = _packed.WIDE_PANEL[dtype]
    rng = np.random.default_rng(M * K + N)
    a = rng.standard_normal((K, M) if transposed else (M, K)).astype(dtype)
    w = rng.standard_normal((K, N)).astype(dtype)
    wp = _backend._pack(w, "test", width)
    A = (a.T if transposed else a).astype(np.float64)
    want = A @ w.astype(np.float64)
    tol = {"float32": 1e-5, "float64": 1e-13}[dtype] * max(1.0, np.abs(want).max()) * np.sqrt(K)
    for m_begin, m_end in ((0, M), (M // 3, M - M // 4)):
        c = np.full((M, _packed.padded(N, width)), np.nan, dtype)
        _packed.matmul_blocked(a, wp, c, transposed, m_begin, m_end)
        rows = c[m_begin:m_end]
        assert np.abs(rows[:, :N] - want[m_begin:m_end]).max(initial=0) <= tol
        assert (rows[:, N:] == 0).all()
        assert np.isnan(c[:m_begin]).all() and np.isnan(c[m_end:]).all()  # rows outside left alone
    with pytest.raises(ValueError, match="out of range"):
        _packed.matmul_blocked(a, wp, c, transposed, 0, M + 1)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        _packed.matmul_blocked(a, wp, c[:, :-1].copy(), transposed, 0, M)


def _gradient_inputs(T, B, I, H, dtype, seed=0):
    """Random (da, x, w_ih, hprev) of one backward's gradient products."""
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal(shape).astype(dtype)
                 for shape in ((T, B, 4 * H), (T, B, I), (4 * H, I), (T, B, H)))


# The packed gradient products against float64 ones: I and H that the wide
# panels pad (x's and h's panels then sit side by side with zero columns
# between, dx goes through a padded buffer) or not, T * B odd (a row of dx
# left to the plain loop), several threads.
@pytest.mark.parametrize("T,B,I,H", [(7, 5, 9, 20), (4, 3, 32, 16), (33, 3, 64, 40), (3, 1, 5, 3)])
@pytest.mark.parametrize("nthreads", [1, 2, 3])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_packed_gradient_products_match_a_float64_product(T, B, I, H, nthreads, dtype):
    da, x, w_ih, hprev = _gradient_inputs(T, B, I, H, dtype, seed=T * B + I)
    dx, dw_ih = np.full((T, B, I), np.nan, dtype), np.full((4 * H, I), np.nan, dtype)
    dw_hh, db = np.full((4 * H, H), np.nan, dtype), np.full(4 * H, np.nan, dtype)
    phases = _backend._packed_gradient_phases(da, x, w_ih, hprev, dx, dw_ih, dw_hh, db, nthreads)
    for phase in phases:
        _backend._run_tasks(phase, nthreads, blas=False)
    n = T * B
    da2 = da.reshape(n, 4 * H).astype(np.float64)
    want = {"dx": da2 @ w_ih, "dw_ih": da2.T @ x.reshape(n, I), "dw_hh": da2.T @ hprev.reshape(n, H),
            "db": da2.sum(axis=0)}
    got = {"dx": dx.reshape(n, I), "dw_ih": dw_ih, "dw_hh": dw_hh, "db": db}
    for name, value in got.items():
        scale = max(1.0, float(np.abs(want[name]).max()))
        assert np.abs(value - want[name]).max() / scale <= TOL[dtype] * np.sqrt(n), name


def test_packed_gradients_rule():
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    rule = _backend._packed_gradients
    assert rule(100, 16, 128, 128, f32) and rule(100, 16, 128, 128, f64)
    assert rule(50, 256, 1024, 1024, f32)
    assert not rule(20, 16, 32, 32, f32)  # too few multiply-adds to pay the packing
    assert not rule(4, 16, 1024, 1024, f32)  # too few rows to pay w_ih's packing
    assert rule(24, 16, 512, 512, f32) and not rule(23, 16, 512, 512, f32)
    assert not rule(100, 16, 100, 100, f32)  # panels 28% zero columns
    assert not rule(100, 16, 120, 120, f32)  # 7% zero columns
    assert rule(100, 16, 248, 248, f32) and rule(100, 16, 112, 112, f64)  # 3%, none
    assert not rule(100, 16, 100, 100, f64)  # 12%
    assert not rule(100, 16, 128, 128, np.dtype(np.int32))
    # Packing refuses a source that does not fit its panels (the kernel
    # would write past them).
    wp = np.zeros((3, 8, 32), np.float32)
    sync = np.zeros(2, np.int64)
    _kernels.pack_panels(np.ones((8, 40), np.float32), wp, 1, sync)
    assert (wp[1, :, :] == 1).all() and (wp[2, :, :8] == 1).all() and (wp[2, :, 8:] == 0).all()
    for source, p0 in ((np.ones((9, 40), np.float32), 0), (np.ones((8, 40), np.float32), 2),
                       (np.ones((8, 8), np.float32), -1)):
        with pytest.raises(ValueError, match="does not fit"):
            _kernels.pack_panels(source, wp, p0, sync)
    assert [len(_backend._row_chunks(n, 4, 12)) for n in (1, 36, 37, 512, 1600)] == [1, 1, 2, 4, 4]
    for n, pieces in ((512, 4), (1600, 4), (37, 4), (4096, 8), (101, 2)):
        chunks = _backend._row_chunks(n, pieces, 12)
        assert chunks[0][0] == 0 and chunks[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
        assert all((n1 - n0) % 12 == 0 for n0, n1 in chunks[:-1])


# A training step whose gradient products take the packed kernel (the rule
# lowered to every size and padding), on the strategies whose loop runs on
# our threads: against the reference, and bit-identical from call to call.
@pytest.mark.parametrize("path,threads,products",
                         [("rows", 2, kind) for kind in ROW_BLAS + PACKED]
                         + [c for c in COLUMNS if c[1] == 2])
@pytest.mark.parametrize("case", CASES[:5], ids=lambda c: f"T{c.T}B{c.B}I{c.I}H{c.H}")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_packed_gradient_products_in_a_training_step(monkeypatch, case, path, threads, products,
                                                     dtype):
    monkeypatch.setattr(_backend, "GRADIENT_PACKED_MIN_MACS", 0)
    monkeypatch.setattr(_backend, "GRADIENT_PACKED_MIN_ROWS", 0)
    monkeypatch.setattr(_backend, "GRADIENT_PACKED_MAX_PADDING", float("inf"))
    used = []
    phases = _backend._packed_gradient_phases
    monkeypatch.setattr(_backend, "_packed_gradient_phases",
                        lambda *args: used.append(1) or phases(*args))
    test_strategy_matches_reference(case, path, threads, products, dtype)
    assert used, "the packed gradient products were not used"
    inputs = make_inputs(case, dtype)
    backend = _backend.NumbaBackend(path, threads, products)
    first, second = (_named(*_run(backend, inputs, case)) for _ in range(2))
    for name in ("dx", "dw_ih", "dw_hh", "db"):
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


# Every tile of matmul_few: 1-3 rows, panel counts with 0-3 panels beyond
# its groups (4 panels for one row, 2 for more), in both directions, with and
# without the start from c0 + b.
@pytest.mark.parametrize("M", [1, 2, 3])
@pytest.mark.parametrize("panels", [1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_few_row_product_matches_a_float64_product(M, panels, dtype):
    from polylstm_numba import _packed

    K = 37
    # N fills the panels, or leaves the last one 5 columns of zeros; c, c0
    # and b then have the padded width (the tiles read and write whole panels).
    for N in (panels * _packed.PANEL[dtype], panels * _packed.PANEL[dtype] - 5):
        G = _packed.padded(N, _packed.PANEL[dtype])
        rng = np.random.default_rng(10 * M + panels + N)
        a = rng.standard_normal((M, K)).astype(dtype)
        w = rng.standard_normal((K, N)).astype(dtype)
        c0 = rng.standard_normal((M, G)).astype(dtype)
        b = rng.standard_normal(G).astype(dtype)
        wp = _backend._pack(w, "test")
        product = np.zeros((M, G))
        product[:, :N] = a.astype(np.float64) @ w.astype(np.float64)
        tol = {"float32": 1e-5, "float64": 1e-13}[dtype] * np.sqrt(K) * np.abs(product).max()
        for start in (False, True):
            want = product + c0 + b if start else product
            for backwards in (False, True):
                c = np.full((M, G), np.nan, dtype)
                _packed.matmul_few(a, wp, c, c0, b, start, backwards)
                assert np.abs(c - want).max() <= tol, (N, start, backwards)


def test_packed_rows_are_chosen_for_large_float32_hidden_sizes():
    backend = _backend.NumbaBackend(threads=2)
    if _blas_threads.available():
        assert backend.choose_row_products(64, 2, 256, np.float32) == "packed"
        assert backend.choose_path(64, 256, 2, np.float32) == "rows"
        assert backend.choose_path(64, 256, 2, np.float64) == "rows"
        # Any H: the packed product pads its last panel.
        assert backend.choose_path(64, 252, 2, np.float64) == "rows"
        assert backend.choose_row_products(64, 2, 250, np.float32) == "packed"
        # Small H: packed from PACKED_MIN_ROWS rows per thread.
        assert backend.choose_row_products(32, 2, 128, np.float32) == "packed"
        assert backend.choose_row_products(10, 2, 128, np.float32) == "packed"
        assert backend.choose_row_products(8, 2, 128, np.float32) == "blas"
        assert backend.choose_path(32, 128, 2, np.float32) == "rows"
        # Blocks of 1-3 rows: packed too.
        assert backend.choose_row_products(1, 2, 64, np.float32) == "packed"
        assert backend.choose_row_products(6, 2, 64, np.float32) == "packed"
        assert backend.choose_row_products(6, 2, 60, np.float32) == "packed"
        assert backend.choose_path(1, 64, 1, np.float32) == "rows"
        forced = _backend.NumbaBackend("rows", 2, "packed")
        assert forced.choose_row_products(3, 2, 16, np.float32) == "packed"
        assert forced.choose_row_products(3, 2, 16, np.float64) == "packed"
        assert forced.choose_row_products(3, 2, 12, np.float64) == "packed"
    assert _backend._row_blocks(10, 2, whole=True) == ((0, 5), (5, 10))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("H", [8, 5])
def test_pack_transposed_stacks_weights_along_k(dtype, H):
    rng = np.random.default_rng(3)
    w_ih = rng.standard_normal((4 * H, 5)).astype(dtype)  # (4H, I)
    w_hh = rng.standard_normal((4 * H, H)).astype(dtype)  # (4H, H)
    b = rng.standard_normal(4 * H).astype(dtype)  # (4H,): the last row
    panels = _backend._pack_stacked(w_ih, w_hh, b)
    width = _packed.WIDE_PANEL[dtype]
    # H = 5: 4H = 20 columns in a panel of 32 (float32) or two of 16.
    assert panels.shape == (_packed.panels(4 * H, width), 6 + H, width)
    np.testing.assert_array_equal(panels, _backend._pack(np.vstack([w_ih.T, w_hh.T, b]), "test",
                                                         width))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("H", [8, 5])
def test_pack_stacked_over_an_earlier_packing_gives_the_same_bits(dtype, H):
    # pack_stacked stores only what differs from the buffer's contents (the
    # backend packs into memory kept from the last call): whatever the
    # buffer held, the result is the packing, bit for bit, signed zeros
    # and NaNs included.
    rng = np.random.default_rng(5)
    w_ih = rng.standard_normal((4 * H, 9)).astype(dtype)
    w_hh = rng.standard_normal((4 * H, H)).astype(dtype)
    b = rng.standard_normal(4 * H).astype(dtype)
    width = _packed.WIDE_PANEL[dtype]
    want = _packed.packed_stacked(w_ih, w_hh, b, width)
    for before in (np.full_like(want, np.nan), -want, want.copy(), np.zeros_like(want)):
        wp = before.copy()
        _packed.pack_stacked(w_ih, w_hh, b, wp)
        assert wp.tobytes() == want.tobytes()
    w_ih[0, :3] = (0.0, -0.0, np.nan)  # over a packing of 0.0, 0.0 and a number
    b[1] = -0.0
    want = _packed.packed_stacked(w_ih, w_hh, b, width)
    wp = _packed.packed_stacked(np.abs(np.nan_to_num(w_ih)), w_hh, np.abs(b), width)
    _packed.pack_stacked(w_ih, w_hh, b, wp)
    assert wp.tobytes() == want.tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("N, K", [(64, 16), (36, 9), (7, 3)])
def test_pack_transposed_over_an_earlier_packing_gives_the_same_bits(dtype, N, K):
    # The same for pack_transposed_over (the one-block forward's weights):
    # whole 8 x 8 (4 x 4) blocks, leftover columns and a padded last panel.
    rng = np.random.default_rng(N + K)
    w = rng.standard_normal((N, K)).astype(dtype)
    w[0, :3] = (0.0, -0.0, np.nan)
    w[N - 1, K - 1] = -0.0
    L = _packed.PANEL[dtype]
    want = np.zeros((_packed.panels(N, L), K, L), dtype)
    _packed.pack_transposed(w, want, 0)
    for before in (np.full_like(want, np.nan), -want, want.copy(), np.zeros_like(want)):
        wp = before.copy()
        _packed.pack_transposed_over(w, wp, 0)
        assert wp.tobytes() == want.tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("N, K, panel", [(32, 5, "narrow"), (64, 37, "wide"), (512, 128, "wide"),
                                         (256, 64, "narrow"), (16, 8, "narrow"), (96, 19, "narrow"),
                                         (40, 9, "narrow"), (100, 37, "wide"), (7, 3, "wide")])
def test_pack_transposed_writes_exactly_its_k_range(N, K, panel, dtype):
    # Register-transposed blocks of 8 (4 for float64) columns plus the
    # columns left over, written at an offset k0 along K; nothing else. An N
    # that L does not divide: the last panel's columns beyond N are zeros.
    L = (_packed.WIDE_PANEL if panel == "wide" else _packed.PANEL)[dtype]
    P = _packed.panels(N, L)
    w = np.random.default_rng(N + K).standard_normal((N, K)).astype(dtype)
    wp = np.full((P, K + 5, L), np.nan, dtype)
    _packed.pack_transposed(w, wp, 2)
    w_padded = np.zeros((P * L, K), dtype)
    w_padded[:N] = w
    np.testing.assert_array_equal(wp[:, 2:2 + K], w_padded.T.reshape(K, P, L).transpose(1, 0, 2))
    assert np.isnan(wp[:, :2]).all() and np.isnan(wp[:, 2 + K:]).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(808, 202), (800, 37), (804, 201), (16, 3), (12, 5)])
def test_transposed_weights_are_exact_copies(shape, dtype):
    # Register-transposed where the row count is a multiple of the block
    # (8 float32, 4 float64 values), NumPy's copy otherwise.
    w = np.random.default_rng(shape[0]).standard_normal(shape).astype(dtype)
    got = _backend._transposed(w, "test")
    assert got.flags.c_contiguous and got.dtype == w.dtype
    np.testing.assert_array_equal(got, w.T)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_packed_weights_start_on_a_cache_line(dtype):
    # The kernels read whole panels with vector loads: a panel that starts
    # mid-line splits loads across lines (10% of a T200-B1-H64 forward).
    rng = np.random.default_rng(4)
    for G, I, H in ((64, 3, 16), (256, 32, 64), (512, 7, 128)):
        w_ih = rng.standard_normal((G, I)).astype(dtype)
        w_hh = rng.standard_normal((G, H)).astype(dtype)
        for panels in (_backend._pack(w_hh.T, "a"), _backend._pack_transposed(w_hh, "b"),
                       _backend._pack_stacked(w_ih, w_hh, w_hh[:, 0].copy())):
            assert panels.ctypes.data % _packed.ALIGN == 0
            assert panels.flags.c_contiguous
        np.testing.assert_array_equal(_backend._pack_transposed(w_hh, "a"),
                                      _backend._pack(w_hh.T, "b"))



def test_remembered_plans_follow_the_settings():
    backend = _backend.NumbaBackend(threads=2)
    f32 = np.dtype(np.float32)
    if _blas_threads.available():
        assert backend._plan(100, 64, 128, 128, f32) == (2, True, "packed")
        backend.row_products = "blas"  # a changed setting is a new plan, not the remembered one
        assert backend._plan(100, 64, 128, 128, f32) == (2, True, "blas")
    backend.path = "blas"
    assert backend._plan(100, 64, 128, 128, f32) == (2, False, None)


@pytest.mark.skipif(not _blas_threads.available(), reason="packed products need scipy's BLAS to be OpenBLAS")
def test_calls_too_short_to_pack_take_the_blas_path(monkeypatch):
    monkeypatch.setattr(_backend.numba, "get_num_threads", lambda: 2)
    auto = _backend.NumbaBackend()
    f32 = np.dtype(np.float32)
    blas_path = (2, False, None)
    packed = (2, True, "packed")
    # 4H * (I+H) = 8.4M weight values; T x rows per thread up to 128, from
    # 16 rows per thread: the BLAS path, forward and backward alike.
    for T, B in ((1, 64), (2, 128), (1, 256)):
        assert auto._plan(T, B, 1024, 1024, f32) == auto._backward_plan(T, B, 1024, 1024, f32) == blas_path
    for T, B in ((1, 512), (8, 64), (4, 16), (50, 256)):
        assert auto._plan(T, B, 1024, 1024, f32) == auto._backward_plan(T, B, 1024, 1024, f32) == packed
    # A smaller weight (2.1M values), or settings that choose: packed.
    assert auto._plan(1, 256, 512, 512, f32) == auto._backward_plan(1, 256, 512, 512, f32) == packed
    forced = _backend.NumbaBackend(row_products="packed")
    assert forced._plan(1, 64, 1024, 1024, f32) == forced._backward_plan(1, 64, 1024, 1024, f32) == packed
    # Blocks of 1-3 rows (one thread here: small calls): a step or two, or up
    # to 8 step rows on 2M weight values or more, take the BLAS path too.
    one = (1, False, None)
    for T, B, I, H in ((1, 1, 32, 64), (2, 1, 128, 128), (1, 2, 128, 128), (4, 1, 512, 512),
                       (8, 1, 512, 512)):
        assert auto._plan(T, B, I, H, f32) == auto._backward_plan(T, B, I, H, f32) == one, (T, B, H)
    for T, B, I, H in ((3, 1, 128, 128), (1, 3, 256, 256), (200, 1, 32, 64)):
        assert auto._plan(T, B, I, H, f32) == auto._backward_plan(T, B, I, H, f32) == (
            1, True, "packed"), (T, B, H)


@pytest.mark.skipif(not _blas_threads.available(), reason="packed products need scipy's BLAS to be OpenBLAS")
def test_small_packed_batches_get_a_thread_per_two_rows(monkeypatch):
    monkeypatch.setattr(_backend.numba, "get_num_threads", lambda: 2)
    auto = _backend.NumbaBackend()
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)

    def train(T, B, I, H, dtype, backward=False):
        # The plan of a forward that keeps a tape (or of a backward) where
        # the column split does not take it (H >= 256 on Linux: see
        # test_small_batches_without_tape_split_columns).
        return auto._rows_or_blas_plan(T, B, I, H, dtype, backward, auto.threads_for(T, B, I, H))

    assert train(100, 2, 256, 256, f32) == (1, True, "packed")  # both rows on one thread
    assert train(100, 3, 512, 512, f64) == (1, True, "packed")
    assert train(100, 4, 256, 256, f32) == (2, True, "packed")  # 2 + 2 rows
    assert train(100, 6, 128, 128, f32) == auto._plan(100, 6, 128, 128, f32) == (2, True, "packed")
    assert auto._plan(100, 4, 192, 192, f32, tape=True) == (2, True, "packed")
    # One row: the rows path for a small or a large recurrent weight, the
    # BLAS path's two threads between them.
    assert train(200, 1, 32, 64, f32) == auto._plan(200, 1, 32, 64, f32, tape=True) == (
        1, True, "packed")
    assert train(100, 1, 192, 192, f32) == auto._plan(100, 1, 192, 192, f32, tape=True) == (
        2, False, None)
    assert train(100, 1, 256, 256, f32) == (1, True, "packed")
    # An explicit thread count is kept (the row blocks', or the split's).
    explicit = _backend.NumbaBackend(threads=2)
    assert explicit._rows_or_blas_plan(100, 2, 256, 256, f32, False, 2) == (2, True, "packed")
    assert explicit._plan(100, 2, 256, 256, f32, tape=True)[0] == 2
    # The backward of one row with a weight beyond L2 takes the BLAS path;
    # of two rows, or at H = 256, the training forward's plan; a training
    # step's two plans agree.
    assert train(50, 1, 512, 512, f32, backward=True)[1:] == (False, None)
    assert train(100, 1, 256, 256, f32, backward=True) == train(100, 1, 256, 256, f32)
    assert train(50, 2, 512, 512, f32, backward=True) == (1, True, "packed")
    for shape in ((100, 1, 256, 256), (100, 4, 192, 192), (50, 2, 512, 512), (200, 1, 32, 64)):
        assert auto._backward_plan(*shape, f32) == auto._plan(*shape, f32, tape=True), shape
    forced = _backend.NumbaBackend(path="rows")
    assert forced._backward_plan(50, 1, 512, 512, f32) == forced._plan(50, 1, 512, 512, f32)


@pytest.mark.skipif(not _barrier.available(), reason="the column split's barrier is Linux only")
def test_small_batches_without_tape_split_columns(monkeypatch):
    monkeypatch.setattr(_backend.numba, "get_num_threads", lambda: 2)
    auto = _backend.NumbaBackend()
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    columns = (2, True, "columns")
    # At most 2 rows per thread from H = 192, float32 and float64; a
    # training step (forward with a tape, backward) from H = 256, both
    # directions or neither.
    for T, B, I, H, dtype in ((100, 1, 192, 192, f32), (100, 1, 256, 256, f32),
                              (100, 2, 256, 256, f32), (100, 3, 512, 512, f64),
                              (50, 1, 1024, 1024, f32), (100, 4, 256, 256, f32),
                              (100, 4, 192, 192, f32)):
        assert auto._plan(T, B, I, H, dtype) == columns, (T, B, H)
        training = H >= 256
        assert (auto._plan(T, B, I, H, dtype, tape=True) == columns) == training, (T, B, H)
        assert (auto._backward_plan(T, B, I, H, dtype) == columns) == training, (T, B, H)
    # More than two rows per thread, H < 192, a call too small for two
    # threads or too short to pack, or settings that choose: something else.
    for T, B, I, H in ((100, 5, 256, 256), (100, 2, 128, 128), (100, 1, 160, 160),
                       (8, 1, 512, 512), (2, 2, 256, 256), (1, 1, 1024, 1024)):
        assert auto._plan(T, B, I, H, f32)[2] != "columns", (T, B, H)
    for settings in ({"path": "rows"}, {"row_products": "packed"}):
        assert _backend.NumbaBackend(**settings)._plan(100, 2, 256, 256, f32)[2] != "columns"
    # Forced: any shape, one slice per thread and at most one per unit.
    assert _backend.NumbaBackend("columns", 3)._plan(100, 64, 8, 2, f32) == (2, True, "columns")
    assert _backend.NumbaBackend("columns", 3)._plan(5, 2, 8, 9, f32, tape=True) == (
        3, True, "columns")


@pytest.mark.skipif(not _barrier.available(), reason="the column split's barrier is Linux only")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_automatic_column_split_of_a_training_step_matches_reference(monkeypatch, dtype):
    # The sizes the automatic rule splits (two slices of 128 units, packed
    # straight from the weights), both directions, against the reference.
    monkeypatch.setattr(_backend.numba, "get_num_threads", lambda: 2)
    case = Case(T=20, B=3, I=40, H=256, lengths=True, reverse=True, peephole=True)
    auto = _backend.NumbaBackend()
    shape = (case.T, case.B, case.I, case.H, np.dtype(dtype))
    assert auto._plan(*shape, tape=True) == auto._backward_plan(*shape) == (2, True, "columns")
    test_strategy_matches_reference(case, "auto", None, None, dtype)


@pytest.mark.skipif(not _barrier.available(), reason="the column split's barrier is Linux only")
@pytest.mark.parametrize("dtype,H", [("float32", 33), ("float64", 17)])
def test_column_split_packs_whole_panel_and_ragged_slices_alike(dtype, H):
    # Two slices of 16 and 17 (float32; 8 and 9 float64) units: the first
    # fills whole panels and is packed straight from the weights, the second
    # goes through the gathered rows. Both against the reference.
    case = Case(T=4, B=2, I=3, H=H, lengths=True, peephole=True)
    test_strategy_matches_reference(case, "columns", 2, None, dtype)


@pytest.mark.parametrize("path,threads,products", STRATEGIES)
def test_results_and_tapes_outlive_later_calls(path, threads, products):
    # The buffers that live only inside a call come from memory the thread
    # keeps (_scratch): what a call returns, and the tape a backward reads,
    # must not be in it. A tape and results from the first inputs, then a
    # whole call on other inputs of the same shape, then the first tape's
    # backward: all as if the second call had not happened.
    case = Case(T=6, B=7, I=5, H=9, lengths=True, peephole=True)
    first = make_inputs(case, "float32")
    second = make_inputs(dataclasses.replace(case, seed=1), "float32")
    backend = _backend.NumbaBackend(path, threads, products)
    want = {name: value.copy() for name, value in _named(*_run(backend, first, case)).items()}
    h0, c0 = _initial_state(first, case)
    out = backend.forward(first["x"], first["w_ih"], first["w_hh"], first["b"], h0, c0,
                          first["peephole"], first["lengths"], case.reverse, True)
    kept = {name: getattr(out, name).copy() for name in ("y", "h_n", "c_n", "gates", "c")}
    later = _named(*_run(backend, second, case))
    for name, value in kept.items():
        assert getattr(out, name).tobytes() == value.tobytes(), name
    tape = Tape("x", first["x"], first["w_ih"], first["w_hh"], h0, c0, first["peephole"],
                first["lengths"], case.reverse, out.y, out.gates, out.c)
    grads = backend.backward(tape, first["dy"], first["dh_n"], first["dc_n"])
    _run(backend, second, case)
    got = _named(out, grads)
    for name in want:
        assert got[name].tobytes() == want[name].tobytes(), name
    assert later["y"].tobytes() != want["y"].tobytes()  # the second call did compute


def test_scratch_is_aligned_kept_per_name_and_grown():
    from polylstm_numba import _scratch

    a = _scratch.take("test-a", (3, 5), np.float32)
    assert a.shape == (3, 5) and a.dtype == np.float32 and a.flags.c_contiguous
    assert a.ctypes.data % _scratch.ALIGN == 0
    b = _scratch.take("test-b", (7,), np.float64)
    assert b.ctypes.data % _scratch.ALIGN == 0 and not np.shares_memory(a, b)
    again = _scratch.take("test-a", (2, 2), np.float64)  # smaller: the same memory
    assert again.ctypes.data == a.ctypes.data
    grown = _scratch.take("test-a", (1000,), np.float64)  # larger: a new buffer, kept
    assert grown.ctypes.data % _scratch.ALIGN == 0
    assert _scratch.take("test-a", (10,), np.float64).ctypes.data == grown.ctypes.data
    assert (_scratch.zeros("test-a", (4, 4), np.float32) == 0).all()
    seen = {}
    thread = threading.Thread(target=lambda: seen.update(
        other=_scratch.take("test-a", (10,), np.float64).ctypes.data))
    thread.start()
    thread.join()
    assert seen["other"] != grown.ctypes.data  # each thread keeps its own
    huge = _scratch.take("test-huge", (_scratch.MAX_KEPT_BYTES // 8 + 1,), np.float64)
    assert _scratch.kept_bytes() < _scratch.MAX_KEPT_BYTES  # not kept
    del huge
    polylstm_numba.release_scratch()
    assert _scratch.kept_bytes() == 0


@pytest.mark.skipif(not _barrier.available(), reason="the column split's barrier is Linux only")
@pytest.mark.parametrize("threads", [2, 3])
def test_column_split_finishes_when_one_thread_does_every_piece(monkeypatch, threads):
    # Threads claim the pieces as they come: a thread that starts after the
    # others have finished (or never) must not hold the call up, and one
    # thread running every slice computes the same bits as a thread each.
    case = Case(T=9, B=3, I=5, H=11, lengths=True, reverse=True, peephole=True)
    inputs = make_inputs(case, "float32")
    backend = _backend.NumbaBackend("columns", threads)
    want = _named(*_run(backend, inputs, case))
    monkeypatch.setattr(_backend, "_run_tasks", lambda tasks, nthreads, blas=True: [
        task(_pool.UNPOOLED) for task in tasks])  # the tasks one after another, on this thread
    got = _named(*_run(backend, inputs, case))
    for name in want:
        assert got[name].tobytes() == want[name].tobytes(), name


# One-block forwards (batches of 1-3 rows on the packed product) whose input
# projection a second thread computes ahead of the time loop: T not a
# multiple of the spans, fewer steps than spans, one step; padded panels
# (4H = 36, 12); lengths, reverse, peepholes.
AHEAD_CASES = [
    Case(T=37, B=1, I=5, H=9, lengths=True, peephole=True),
    Case(T=20, B=3, I=7, H=8, reverse=True, lengths=True),
    Case(T=5, B=2, I=3, H=3, reverse=True, peephole=True),
    Case(T=1, B=1, I=2, H=4),
]


@pytest.mark.skipif(not _barrier.available(), reason="the threads' atomics are Linux only")
@pytest.mark.skipif(not PACKED, reason="the packed products need scipy's OpenBLAS")
@pytest.mark.parametrize("case", AHEAD_CASES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("order", ["pool", "recurrence first", "projection first",
                                   "recurrence alone"])
def test_projection_ahead_gives_the_bits_of_one_thread(monkeypatch, case, dtype, order):
    # The time loop takes each span's projection piece itself where the
    # other thread has not taken it, and waits only for a piece being
    # computed: with the pool, with either role run to its end before the
    # other starts, and with no projection thread at all, the results are
    # those of the forward that projects every step first on one thread.
    inputs = make_inputs(case, dtype)
    h0, c0 = _initial_state(inputs, case)
    monkeypatch.setattr(_backend.numba, "get_num_threads", lambda: 2)
    backend = _backend.NumbaBackend("rows", row_products="packed")

    def forward():
        # The kept projection buffer poisoned first: a row that the call
        # does not compute must not be read from the call before (which, as
        # the first one, computed them all).
        G = _packed.padded(4 * case.H, _packed.PANEL[dtype])
        _scratch.take("xw", (case.T, case.B, G), dtype).fill(np.nan)
        out = backend.forward(inputs["x"], inputs["w_ih"], inputs["w_hh"], inputs["b"], h0, c0,
                              inputs["peephole"], inputs["lengths"], case.reverse, False)
        return {"y": out.y, "h_n": out.h_n, "c_n": out.c_n}

    monkeypatch.setattr(_backend, "PROJECTION_AHEAD_MIN_MACS", 1 << 62)
    want = forward()
    monkeypatch.setattr(_backend, "PROJECTION_AHEAD_MIN_MACS", 0)
    roles = []
    run_tasks = _backend._run_tasks

    def recorded(tasks, nthreads, blas=True):
        roles.append([task.args[-2] for task in tasks])
        if order == "pool":
            return run_tasks(tasks, nthreads, blas)
        if order == "projection first":
            tasks = tasks[::-1]
        elif order == "recurrence alone":
            tasks = tasks[:1]
        for task in tasks:
            task(_pool.UNPOOLED)

    monkeypatch.setattr(_backend, "_run_tasks", recorded)
    for _ in range(3):
        got = forward()
        for name in want:
            assert got[name].tobytes() == want[name].tobytes(), (name, order)
    assert roles == [[_kernels.RECURRENCE, _kernels.PROJECTION]] * 3


@pytest.mark.skipif(not _barrier.available(), reason="the threads' atomics are Linux only")
def test_projection_ahead_only_for_one_block_without_tape_and_two_threads(monkeypatch):
    monkeypatch.setattr(_backend.numba, "get_num_threads", lambda: 2)
    auto = _backend.NumbaBackend()
    one_block = _backend._row_blocks(1, 1)
    assert auto._projection_ahead(200, 1, 32, 64, one_block)
    assert not auto._projection_ahead(200, 1, 32, 64, _backend._row_blocks(4, 2))
    assert not auto._projection_ahead(100, 1, 32, 32, one_block)  # below the minimum
    assert not _backend.NumbaBackend(threads=1)._projection_ahead(200, 1, 32, 64, one_block)
    monkeypatch.setattr(_backend.numba, "get_num_threads", lambda: 1)
    assert not auto._projection_ahead(200, 1, 32, 64, one_block)
    # A forward with a tape projects on its own thread: the tasks would
    # show here.
    monkeypatch.setattr(_backend.numba, "get_num_threads", lambda: 2)
    monkeypatch.setattr(_backend, "_run_tasks", lambda *args, **kwargs: pytest.fail("tasks"))
    inputs = make_inputs(Case(T=200, B=1, I=32, H=64), "float32")
    h0 = np.zeros((1, 64), np.float32)
    auto.forward(inputs["x"], inputs["w_ih"], inputs["w_hh"], inputs["b"], h0, h0, None, None,
                 False, True)


@pytest.mark.skipif(not _barrier.available(), reason="the column split's barrier is Linux only")
def test_barrier_claims_each_piece_once_and_counts_finished_pieces():
    flags = np.zeros(4, np.int64)
    assert _barrier.claim(flags, 2) and not _barrier.claim(flags, 2)
    assert flags.tolist() == [0, 0, 1, 0]
    counter = np.zeros(8, np.int64)
    for _ in range(3):
        _barrier.finish(counter)
    _barrier.wait_until(counter, 3)  # returns at once: 3 pieces finished
    assert counter[0] == 3


TWO_CPUS = _affinity.available() and len(os.sched_getaffinity(0)) >= 2


@pytest.mark.skipif(not TWO_CPUS, reason="needs Linux's sched_getcpu and two allowed CPUs")
def test_caller_cpu_is_one_of_its_allowed_cpus():
    assert _affinity.caller_cpu() in os.sched_getaffinity(0)


def test_workers_cpus_leave_out_the_callers_cpu_while_enough_remain():
    own = frozenset({0, 1, 2, 3})
    assert _affinity.workers_cpus(own, 2, 1) == {0, 1, 3}
    assert _affinity.workers_cpus(own, 2, 3) == {0, 1, 3}
    # More pool threads than the other CPUs: the whole set.
    assert _affinity.workers_cpus(own, 2, 4) == own
    # A caller outside the set, or on an unknown CPU: nothing to leave out.
    assert _affinity.workers_cpus(own, 7, 1) == own
    assert _affinity.workers_cpus(own, None, 1) == own


@pytest.mark.skipif(not TWO_CPUS, reason="needs sched_setaffinity and two allowed CPUs")
def test_keep_off_restricts_only_its_own_thread():
    import threading

    allowed = frozenset(os.sched_getaffinity(0))
    first = min(allowed)
    seen = {}

    def in_thread():
        _affinity.keep_off(None, 1)  # unknown caller CPU: no-op
        seen["none"] = os.sched_getaffinity(0)
        _affinity.keep_off(first, 1)
        seen["off"] = os.sched_getaffinity(0)
        _affinity.keep_off(first, len(allowed))  # too many pool threads: all again
        seen["all"] = os.sched_getaffinity(0)

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert seen == {"none": allowed, "off": allowed - {first}, "all": allowed}
    assert os.sched_getaffinity(0) == allowed  # the caller's own set untouched


@pytest.mark.skipif(not TWO_CPUS, reason="needs Linux's sched_getcpu and two allowed CPUs")
def test_pool_threads_keep_off_a_pinned_callers_cpu():
    # A caller pinned to one CPU: the pool's thread keeps its own set less
    # that CPU, rather than following the caller onto it.
    import threading

    allowed = frozenset(os.sched_getaffinity(0))
    first = min(allowed)
    barrier = threading.Barrier(2, timeout=30)
    record = {}

    def task(sync):
        record[threading.get_ident()] = frozenset(os.sched_getaffinity(0))
        barrier.wait()  # both threads hold a task: the pool's thread ran one

    def pinned_caller():
        os.sched_setaffinity(0, {first})
        _backend._run_tasks([task] * 2, 2, blas=False)
        record["caller"] = threading.get_ident()

    _backend._run_tasks([lambda sync: None] * 2, 2, blas=False)  # the pool, started here
    caller = threading.Thread(target=pinned_caller)
    caller.start()
    caller.join()
    pool_thread = [key for key in record if key not in ("caller", record["caller"])]
    assert record[record["caller"]] == {first}
    assert record[pool_thread[0]] == allowed - {first}
    # A call from this (unpinned) thread: the pool thread off its CPU again.
    _backend._run_tasks([lambda sync: None] * 2, 2, blas=False)


def test_small_calls_stay_on_one_thread():
    auto = _backend.NumbaBackend()
    assert auto.threads_for(5, 3, 4, 2) == 1
    assert auto.threads_for(100, 16, 128, 128) == auto._threads()
    # An explicit thread count is kept whatever the size (the tests rely on it).
    assert _backend.NumbaBackend(threads=3).threads_for(5, 3, 4, 2) == 3


def test_row_products_option():
    assert _backend.NumbaBackend(row_products="hand").choose_row_products(16, 2) == "hand"
    auto = _backend.NumbaBackend()
    assert auto.choose_row_products(1, 2) == "hand"  # one-row blocks, H unknown: not packable
    assert auto.choose_row_products(3, 2) == "hand"
    assert auto.choose_row_products(16, 2) == ("blas" if _blas_threads.available() else "hand")
    with pytest.raises(ValueError, match="row_products"):
        _backend.NumbaBackend(row_products="fast")


def test_scipy_wheel_blas_thread_count_is_found():
    # CI installs scipy from PyPI, whose OpenBLAS exports its thread count;
    # if this stops holding the rows path silently loses its BLAS products.
    from polylstm.testing import require

    require(_blas_threads.available(),
            "OpenBLAS's thread count functions in scipy's BLAS "
            f"(looked up through {_blas_threads._sgemm_library_path()})")


@pytest.fixture
def blas_thread_count():
    """(get, set) of scipy's OpenBLAS thread count; the count the test found
    is put back afterwards. Skips where scipy's BLAS is not an OpenBLAS."""
    if not _blas_threads.available():
        pytest.skip("scipy's BLAS is not an OpenBLAS")
    get, set_ = _blas_threads.thread_count_functions()
    before = get()
    yield get, set_
    set_(before)


def test_single_threaded_restores_the_blas_thread_count_after_the_last_block(blas_thread_count):
    get, set_ = blas_thread_count
    set_(3)
    with _blas_threads.single_threaded():
        assert get() == 1  # inside: one thread
        with _blas_threads.single_threaded():  # overlapping blocks
            assert get() == 1
        assert get() == 1  # the outer block still runs
    assert get() == 3  # after the last: the count from before


def test_a_two_thread_call_leaves_the_blas_thread_count_alone(monkeypatch, blas_thread_count):
    # OpenBLAS's thread count is process-wide (openblas_set_num_threads_local
    # included). The backend once made each new pool thread "single-threaded"
    # with it, which left every later BLAS call of the process on one thread
    # (the gradient products after small row blocks ran at half speed).
    get, set_ = blas_thread_count
    set_(2)
    for B, products in ((16, "blas"), (16, "packed"), (4, "packed")):
        monkeypatch.setattr(_backend, "_POOL", None)  # this call starts the pool
        case = Case(T=4, B=B, I=8, H=32)
        _run(_backend.NumbaBackend("rows", 2, products), make_inputs(case, "float32"), case)
        assert get() == 2, (B, products)


_FORK_CHILD_CALL = """
import os, signal, sys
import numpy as np
from polylstm_numba import _backend, _blas_threads
rng = np.random.default_rng(0)
T, B, I, H = 5, 8, 4, 8
args = [rng.standard_normal(s).astype(np.float32) for s in
        ((T, B, I), (4 * H, I), (4 * H, H), (4 * H,), (B, H), (B, H))]
backend = _backend.NumbaBackend("rows", 2, sys.argv[1])  # two row blocks: the pool
want = backend.forward(*args, None, None, False, False).y
count = _blas_threads.thread_count_functions()[0]() if _blas_threads.available() else None
# Another thread is inside a single-threaded BLAS phase when the fork comes:
# the child, which has no such thread, must get the count from before it.
import threading
inside, leave = threading.Event(), threading.Event()
def hold():
    with _blas_threads.single_threaded():
        inside.set()
        leave.wait()
holder = threading.Thread(target=hold)
holder.start()
inside.wait()
pid = os.fork()
if pid == 0:
    signal.alarm(30)  # a hang ends the child with SIGALRM
    got = backend.forward(*args, None, None, False, False).y
    same_count = count is None or _blas_threads.thread_count_functions()[0]() == count
    os._exit(0 if np.array_equal(got, want) and same_count else 3)
leave.set()
holder.join()
_, status = os.waitpid(pid, 0)
sys.exit(0 if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else (4 if os.WIFSIGNALED(status) else 3))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("products", ROW_BLAS or ["hand"])  # "blas": a BLAS phase too
def test_a_forked_child_runs_two_thread_calls(products):
    # The pool's threads do not survive fork (multiprocessing's default on
    # Linux before Python 3.14): before the pool was forgotten in the
    # child, its first two-thread call waited forever for them.
    done = subprocess.run([sys.executable, "-c", _FORK_CHILD_CALL, products],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, {3: "wrong result or BLAS thread count", 4: "the child hung"}.get(
        done.returncode, done.stderr)


# Products large enough for OpenBLAS to use its threads when allowed: row
# blocks of 8 rows on BLAS, and of 2 rows on the packed product, whose
# gradient products follow a loop on two threads.
@pytest.mark.parametrize("B,H,products", [(16, 128, "blas"), (4, 256, "packed")])
def test_row_threads_leave_no_blas_pool_running(B, H, products):
    # The rows path must not wake scipy's OpenBLAS pool: its workers would spin
    # for ~0.1 s after the call. Process CPU time right after a rows-path
    # forward+backward, over an idle 50 ms, stays near zero.
    import time

    if not _blas_threads.available():
        pytest.skip("scipy's BLAS is not an OpenBLAS")
    case = Case(T=100, B=B, I=H, H=H)
    inputs = make_inputs(case, "float32")
    backend = _backend.NumbaBackend("rows", 2, products)
    _run(backend, inputs, case)  # compile
    time.sleep(0.3)  # let any pool from earlier tests go back to sleep
    _run(backend, inputs, case)
    cpu = time.process_time()
    time.sleep(0.05)
    spun = time.process_time() - cpu
    assert spun < 0.02, f"{spun * 1e3:.0f} ms of CPU time while idle: a BLAS pool is spinning"


def test_path_choice():
    backend = _backend.NumbaBackend(threads=2)
    assert backend.choose_path(1, 64) == "rows"
    assert backend.choose_path(1, 512) == "blas"
    assert backend.choose_path(16, 128) == "rows"
    assert backend.choose_path(8, 256) == "blas"
    assert backend.choose_path(256, 1024) == "blas"
    if _blas_threads.available():  # row blocks with BLAS: up to H = 192, any batch
        assert backend.choose_path(512, 128) == "rows"
        assert backend.choose_path(64, 192) == "rows"
        assert backend.choose_path(64, 256) == "blas"
        assert backend.choose_path(1, 128) == "rows"  # one-row blocks: small H only
        assert backend.choose_path(1, 192) == "blas"
        assert backend.choose_path(4, 192) == "blas"
    hand = _backend.NumbaBackend(threads=2, row_products="hand")
    assert hand.choose_path(16, 128) == "rows"
    assert hand.choose_path(64, 128) == "blas"
    assert _backend.NumbaBackend("blas").choose_path(1, 8) == "blas"
    with pytest.raises(ValueError):
        _backend.NumbaBackend("gpu")


def test_functional_api_selects_numba_by_default_and_by_name():
    case = Case(T=4, B=3, I=2, H=5)
    inputs = make_inputs(case, "float32")
    named = polylstm.lstm_forward(inputs["x"], inputs["w_ih"], inputs["w_hh"], backend="numba")
    auto = polylstm.lstm_forward(inputs["x"], inputs["w_ih"], inputs["w_hh"])
    assert named.backend == auto.backend == "numba"
    assert named.y.tobytes() == auto.y.tobytes()


def test_every_kernel_is_cached_on_disk():
    from polylstm_numba import _packed

    dispatchers = [getattr(module, name) for module in (_kernels, _packed) for name in dir(module)
                   if hasattr(getattr(module, name), "py_func")]
    assert len(dispatchers) >= 10
    for dispatcher in dispatchers:
        assert type(dispatcher._cache).__name__ != "NullCache", dispatcher.py_func.__name__


def test_threaded_kernels_release_the_gil():
    for dispatcher in (_kernels.forward_rows, _kernels.backward_rows,
                       _kernels.forward_blas, _kernels.backward_blas,
                       _kernels.input_gradient_rows, _kernels.weight_gradient,
                       _kernels.bias_gradient, _kernels.forward_packed,
                       _kernels.forward_split, _kernels.backward_split):
        assert dispatcher.targetoptions.get("nogil") is True, dispatcher.py_func.__name__


def test_importing_the_plugin_does_not_import_numba():
    code = ("import sys, polylstm, polylstm_numba; polylstm.available_backends(); "
            "assert 'numba' not in sys.modules, 'numba imported'; "
            "assert 'polylstm_numba._kernels' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_available_reports_what_is_missing(monkeypatch):
    real = polylstm_numba.importlib.util.find_spec

    def missing(name):
        return lambda module, *a: None if module == name else real(module, *a)

    assert polylstm_numba._available() is None
    monkeypatch.setattr(polylstm_numba.importlib.util, "find_spec", missing("numba"))
    assert polylstm_numba._available() == "numba not installed"
    monkeypatch.setattr(polylstm_numba.importlib.util, "find_spec", missing("scipy"))
    assert polylstm_numba._available() == "scipy not installed (numba needs it for BLAS)"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_accuracy_and_dtype(dtype):
    from numba import njit

    @njit
    def apply(a, t, s):
        for i in range(a.shape[0]):
            t[i] = _activations.tanh(a[i])
            s[i] = _activations.sigmoid(a[i])

    x = np.concatenate([np.linspace(-30, 30, 200001), [0.0, 1e-30, -1e-30]]).astype(dtype)
    t = np.empty_like(x)
    s = np.empty_like(x)
    apply(x, t, s)
    x64 = x.astype(np.float64)
    want_t = np.tanh(x64)
    want_s = 0.5 * (1 + np.tanh(0.5 * x64))
    if dtype == np.float32:  # the rational approximation
        assert np.max(np.abs(t - want_t) / np.maximum(np.abs(want_t), 1e-30)) < 4e-7
        assert np.max(np.abs(s - want_s)) < 2e-7
    else:  # libm
        assert np.max(np.abs(t - want_t)) < 1e-15
        assert np.max(np.abs(s - want_s)) < 1e-15
    assert np.abs(t).max() <= 1 and s.min() >= 0 and s.max() <= 1

    # Special values, through the vector body and the scalar tail (36 elements).
    special = np.array([np.nan, np.inf, -np.inf] * 12, dtype=dtype)
    t = np.empty_like(special)
    s = np.empty_like(special)
    apply(special, t, s)
    for got, at_inf, at_minus_inf in ((t, 1, -1), (s, 1, 0)):
        assert np.isnan(got[0::3]).all()
        # The float32 approximation is clamped at |x| = 9: within 2e-7 of the limit.
        assert np.abs(got[1::3] - at_inf).max() < 2e-7
        assert np.abs(got[2::3] - at_minus_inf).max() < 2e-7


@pytest.mark.parametrize("path,products,H,dtype",
                         [("rows", "hand", 8, "float64")]
                         + [("rows", k, 8, "float64") for k in ROW_BLAS]
                         + [("rows", k, 16, "float32") for k in PACKED]
                         + [("columns", None, 16, "float32")] * bool(COLUMNS)
                         + [("blas", None, 8, "float64")])
def test_concurrent_calls_from_several_threads_match_serial_ones(path, products, H, dtype):
    # The row-block pool is shared and the BLAS thread setting is per thread:
    # calls from several user threads at once must not mix up their blocks.
    import concurrent.futures

    case = Case(T=12, B=9, I=5, H=H, lengths=True, peephole=True)
    inputs = []
    for k in range(6):  # six different problems of one shape
        inp = make_inputs(case, dtype)
        inp["x"] = inp["x"] * (1 + 0.25 * k)
        inputs.append(inp)
    backend = _backend.NumbaBackend(path, 2, products)
    serial = [_named(*_run(backend, inp, case)) for inp in inputs]
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        parallel = list(pool.map(lambda inp: _named(*_run(backend, inp, case)), inputs))
    for want, got in zip(serial, parallel):
        for name in want:
            assert got[name].tobytes() == want[name].tobytes(), name
