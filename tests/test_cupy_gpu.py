"""The ``cupy`` backend on a real CUDA device (skipped without one).

Runs wherever ``cupy.is_available()`` is True (``scripts/gpu_check.sh`` runs it
on a lent GPU machine). It checks the GPU against the NumPy reference (the
conformance kit), against the CPU emulation of the same kernels (float64 to
rounding, float32 within a few ulp allowing for the GPU's fused multiply-adds,
flushed denormals and cuBLAS summation order), and the device-side rules:
CuPy arrays in, CuPy arrays out, inputs untouched, bit-identical repeats,
CuPy arrays selecting the backend automatically.
"""

import importlib.util
import os

import numpy as np
import pytest


def _no_gpu(reason):
    # scripts/gpu_check.sh sets POLYLSTM_REQUIRE_GPU=1: on the machine lent for
    # the GPU check a skip would hide that nothing ran.
    if os.environ.get("POLYLSTM_REQUIRE_GPU", "") not in ("", "0"):
        pytest.fail(f"{reason}, and POLYLSTM_REQUIRE_GPU is set", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


if importlib.util.find_spec("cupy") is None:
    _no_gpu("cupy not installed: the GPU tests need CuPy and a CUDA device")

import cupy  # noqa: E402

if not cupy.is_available():
    _no_gpu("no CUDA device (cupy.is_available() is False): GPU tests skipped")

import polylstm  # noqa: E402
from polylstm.backend import Tape  # noqa: E402
from polylstm.testing import BackendConformance  # noqa: E402
from polylstm_cupy import _kernels  # noqa: E402
from polylstm_cupy._backend import CupyBackend, emulated_backend  # noqa: E402
from polylstm_cupy._emulation import find_cxx  # noqa: E402

pytestmark = pytest.mark.gpu


class TestCupyConformance(BackendConformance):
    backend = "cupy"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("file", sorted(_kernels.KERNEL_FILES))
def test_raw_modules_compile_on_the_device(file, dtype):
    kernels = _kernels.CupyKernels()
    module = kernels.module(file, dtype)
    for entry in _kernels.KERNEL_FILES[file]:
        module.get_function(_kernels.entry_name(entry, dtype))
    assert kernels.module(file, dtype) is module  # compiled once per process and dtype


def _inputs(T, B, I, H, dtype, *, peephole, lengths, seed=0):
    rng = np.random.default_rng(seed)

    def draw(*shape, s=1.0):
        return (rng.standard_normal(shape) * s).astype(dtype)

    return dict(
        x=draw(T, B, I), w_ih=draw(4 * H, I, s=1 / np.sqrt(H)), w_hh=draw(4 * H, H, s=1 / np.sqrt(H)),
        b=draw(4 * H, s=0.3), h0=draw(B, H, s=0.5), c0=draw(B, H, s=0.5),
        peephole=draw(3, H, s=0.5) if peephole else None,
        lengths=None if lengths is None else np.asarray(lengths, dtype=np.int64),
        dy=draw(T, B, H), dh_n=draw(B, H), dc_n=draw(B, H),
    )


def _run(backend, args, reverse, to_device):
    """Forward (with tape) and backward on ``backend``; returns host dicts."""
    a = {k: (to_device(v) if isinstance(v, np.ndarray) and k != "lengths" else v) for k, v in args.items()}
    out = backend.forward(a["x"], a["w_ih"], a["w_hh"], a["b"], a["h0"], a["c0"], a["peephole"],
                          a["lengths"], reverse, True)
    tape = Tape(backend.name, a["x"], a["w_ih"], a["w_hh"], a["h0"], a["c0"], a["peephole"],
                a["lengths"], reverse, out.y, out.gates, out.c)
    grads = backend.backward(tape, a["dy"], a["dh_n"], a["dc_n"])
    host = lambda v: cupy.asnumpy(v) if v is not None else None  # noqa: E731
    fwd = {k: host(getattr(out, k)) for k in ("y", "h_n", "c_n", "gates", "c")}
    bwd = {k: host(getattr(grads, k)) for k in ("dx", "dw_ih", "dw_hh", "db", "dh0", "dc0", "dpeephole")}
    return fwd, bwd


#: Largest accepted max|gpu - emulated| / max(1, max|emulated|), in units of
#: the dtype's epsilon: forward values are a few roundings deep per step;
#: gradients add sums over T*B rows in a different order (cuBLAS vs the host BLAS).
ULPS = {"forward": 32, "backward": 256}


@pytest.mark.skipif(find_cxx() is None, reason="no C++ compiler for the emulation")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [
    dict(lengths=None, reverse=False, peephole=False),
    dict(lengths=None, reverse=True, peephole=True),
    dict(lengths="ragged", reverse=False, peephole=True),
    dict(lengths="ragged", reverse=True, peephole=False),
], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_gpu_matches_the_cpu_emulation_of_the_same_kernels(case, dtype):
    T, B, I, H = 23, 37, 40, 70  # B*H = 2590: several blocks of 256 threads
    lengths = None
    if case["lengths"] == "ragged":
        lengths = np.random.default_rng(9).integers(1, T + 1, B)
        lengths[0] = T
    args = _inputs(T, B, I, H, dtype, peephole=case["peephole"], lengths=lengths)
    gpu_fwd, gpu_bwd = _run(CupyBackend(), args, case["reverse"], cupy.asarray)
    emu_fwd, emu_bwd = _run(emulated_backend(), args, case["reverse"], lambda v: v)
    eps = np.finfo(dtype).eps
    for stage, gpu, emu in (("forward", gpu_fwd, emu_fwd), ("backward", gpu_bwd, emu_bwd)):
        for name, expected in emu.items():
            actual = gpu[name]
            if expected is None:
                assert actual is None, name
                continue
            assert actual.dtype == expected.dtype and actual.shape == expected.shape, name
            scale = max(1.0, float(np.abs(expected).max()))
            ulps = float(np.abs(actual.astype(np.float64) - expected).max()) / scale / eps
            assert ulps <= ULPS[stage], f"{name}: GPU and emulation differ by {ulps:.1f} ulp (> {ULPS[stage]})"
        # Padded steps are exactly zero on both.
        if lengths is not None and stage == "forward":
            padded = np.arange(T)[:, None] >= lengths[None, :]
            assert not gpu["y"][padded].any() and not gpu["gates"][padded].any()


def test_cupy_arrays_in_cupy_arrays_out_and_inputs_untouched():
    args = _inputs(9, 5, 6, 16, np.float32, peephole=True, lengths=[9, 4, 1, 7, 2])
    dev = {k: cupy.asarray(v) for k, v in args.items() if k != "lengths"}
    before = {k: v.copy() for k, v in dev.items()}
    out = polylstm.lstm_forward(dev["x"], dev["w_ih"], dev["w_hh"], dev["b"], dev["h0"], dev["c0"],
                                peephole=dev["peephole"], lengths=args["lengths"], reverse=True,
                                keep_tape=True, return_gates=True)
    assert out.backend == "cupy"  # CuPy arrays select the backend that claims them
    for value in (out.y, out.h_n, out.c_n):
        assert isinstance(value, cupy.ndarray)
    grads = polylstm.lstm_backward(out.tape, dev["dy"], dev["dh_n"], dev["dc_n"])
    for name in ("dx", "dw_ih", "dw_hh", "db", "dh0", "dc0", "dpeephole"):
        assert isinstance(getattr(grads, name), cupy.ndarray), name
    for name, value in dev.items():
        assert cupy.array_equal(value, before[name]), f"{name} was written to"


def test_numpy_arrays_named_to_cupy_are_copied_to_the_device():
    args = _inputs(4, 3, 2, 5, np.float64, peephole=False, lengths=None)
    out = polylstm.lstm_forward(args["x"], args["w_ih"], args["w_hh"], backend="cupy")
    assert isinstance(out.y, cupy.ndarray)
    ref = polylstm.lstm_forward(args["x"], args["w_ih"], args["w_hh"], backend="numpy")
    np.testing.assert_allclose(cupy.asnumpy(out.y), ref.y, rtol=0, atol=1e-12)


def test_repeated_calls_are_bit_identical_on_the_device():
    args = _inputs(30, 64, 32, 128, np.float32, peephole=True, lengths=None)
    first = _run(CupyBackend(), args, False, cupy.asarray)
    second = _run(CupyBackend(), args, False, cupy.asarray)
    for a, b in zip(first, second):
        for name in a:
            if a[name] is not None:
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)
