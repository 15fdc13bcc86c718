"""The CuPy backend's kernels and orchestration, run on the CPU (``cupy-emulated``).

What the conformance kit does not cover: finite-difference gradients of the
backward kernel in float64, grid sizes smaller than the element count (the
kernels' grid-stride loops, and the emulator's grid walk itself), CuPy's
argument-packing rules (checked against each kernel's declared parameter
types), the build cache under concurrent builders, thread safety, and the
plugin's cheap, non-raising availability probes.
"""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import polylstm
from polylstm.backend import Tape
from polylstm_cupy import _cupy_available, _emulation, _emulation_available, _kernels, _orchestration
from polylstm_cupy._backend import emulated_backend
from polylstm_cupy._testsupport import require

CXX = _emulation.find_cxx()


@pytest.fixture(autouse=True)
def _need_cxx():
    require(CXX, "a C++ compiler (g++) for the emulation")


def _inputs(T, B, I, H, dtype, *, peephole, lengths, seed=0):
    rng = np.random.default_rng(seed)

    def draw(*shape, s=1.0):
        return (rng.standard_normal(shape) * s).astype(dtype)

    return dict(
        x=draw(T, B, I), w_ih=draw(4 * H, I, s=0.5), w_hh=draw(4 * H, H, s=0.5), b=draw(4 * H, s=0.3),
        h0=draw(B, H, s=0.5), c0=draw(B, H, s=0.5),
        peephole=draw(3, H, s=0.5) if peephole else None,
        lengths=None if lengths is None else np.asarray(lengths, dtype=np.int64),
    )


# ----------------------------------------------------------- finite differences

FD_CASES = [
    dict(lengths=None, reverse=False, peephole=False),
    dict(lengths=None, reverse=True, peephole=True),
    dict(lengths=[4, 2, 1], reverse=False, peephole=True),
    dict(lengths=[3, 4, 1], reverse=True, peephole=True),
]


@pytest.mark.parametrize("case", FD_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_backward_matches_finite_differences_float64(case):
    T, B, I, H = 4, 3, 2, 3
    args = _inputs(T, B, I, H, np.float64, peephole=case["peephole"], lengths=case["lengths"], seed=7)
    rng = np.random.default_rng(1)
    wy, wh, wc = rng.standard_normal((T, B, H)), rng.standard_normal((B, H)), rng.standard_normal((B, H))

    def loss(params):
        out = polylstm.lstm_forward(
            params["x"], params["w_ih"], params["w_hh"], params["b"], params["h0"], params["c0"],
            peephole=params["peephole"], lengths=args["lengths"], reverse=case["reverse"],
            backend="cupy-emulated",
        )
        return float((out.y * wy).sum() + (out.h_n * wh).sum() + (out.c_n * wc).sum())

    params = {k: v for k, v in args.items() if k != "lengths"}
    out = polylstm.lstm_forward(
        *(params[k] for k in ("x", "w_ih", "w_hh", "b", "h0", "c0")), peephole=params["peephole"],
        lengths=args["lengths"], reverse=case["reverse"], keep_tape=True, backend="cupy-emulated",
    )
    grads = polylstm.lstm_backward(out.tape, wy, wh, wc)
    analytic = {"x": grads.dx, "w_ih": grads.dw_ih, "w_hh": grads.dw_hh, "b": grads.db,
                "h0": grads.dh0, "c0": grads.dc0, "peephole": grads.dpeephole}

    eps = 1e-6
    for name, value in params.items():
        if value is None:
            assert analytic[name] is None
            continue
        numeric = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            shifted = {k: (v.copy() if v is not None else None) for k, v in params.items()}
            shifted[name][index] = value[index] + eps
            up = loss(shifted)
            shifted[name][index] = value[index] - eps
            down = loss(shifted)
            numeric[index] = (up - down) / (2 * eps)
        np.testing.assert_allclose(analytic[name], numeric, rtol=1e-6, atol=1e-7,
                                   err_msg=f"d loss / d {name} ({case})")


# ------------------------------------------------------------ algorithm shape

class _CountingNumpy:
    """NumPy as the orchestration's ``xp``, counting matrix products."""

    def __init__(self):
        self.matmuls = []

    def __getattr__(self, name):
        return getattr(np, name)

    def matmul(self, a, b, **kwargs):
        self.matmuls.append((a.shape, b.shape))
        return np.matmul(a, b, **kwargs)


@pytest.mark.parametrize("reverse,lengths", [(False, None), (True, [6, 2, 5])])
def test_products_and_launches_follow_cudnns_standard_algorithm(reverse, lengths):
    T, B, I, H = 6, 3, 4, 5
    args = _inputs(T, B, I, H, np.float32, peephole=True, lengths=lengths)
    kernels = _emulation.EmulatedKernels()
    launches = []

    def launch(entry, dtype, grid, block, kernel_args):
        launches.append(entry)
        kernels(entry, dtype, grid, block, kernel_args)

    xp = _CountingNumpy()
    fixed = [args[k] for k in ("x", "w_ih", "w_hh", "b", "h0", "c0", "peephole", "lengths")]
    inference = _orchestration.forward(xp, launch, *fixed, reverse, False)
    assert inference.gates is None and inference.c is None  # no tape kept
    assert launches == ["lstm_forward"] * T
    # One input projection for all steps, then one recurrent product per step.
    assert xp.matmuls == [((T * B, I), (I, 4 * H))] + [((B, H), (H, 4 * H))] * T

    out = _orchestration.forward(xp, launch, *fixed, reverse, True)
    tape = Tape("cupy-emulated", args["x"], args["w_ih"], args["w_hh"], args["h0"], args["c0"],
                args["peephole"], args["lengths"], reverse, out.y, out.gates, out.c)
    launches.clear()
    xp.matmuls.clear()
    rng = np.random.default_rng(0)
    dy, dh_n, dc_n = (rng.standard_normal(s).astype(np.float32) for s in ((T, B, H), (B, H), (B, H)))
    _orchestration.backward(xp, launch, tape, dy, dh_n, dc_n)
    assert launches == ["lstm_backward"] * T
    # One sequential product per step, then dx, dw_ih, dw_hh over all steps.
    assert xp.matmuls == [((B, 4 * H), (4 * H, H))] * T + [
        ((T * B, 4 * H), (4 * H, I)), ((4 * H, T * B), (T * B, I)), ((4 * H, T * B), (T * B, H))]


# ------------------------------------------------------------- grid-stride loops

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grid_smaller_than_element_count_gives_identical_results(dtype):
    T, B, I, H = 5, 5, 3, 13  # B*H = 65 elements
    args = _inputs(T, B, I, H, dtype, peephole=True, lengths=[5, 2, 4, 1, 3])
    rng = np.random.default_rng(3)
    dy, dh_n, dc_n = (rng.standard_normal(s).astype(dtype) for s in ((T, B, H), (B, H), (B, H)))

    def run(backend):
        out = backend.forward(args["x"], args["w_ih"], args["w_hh"], args["b"], args["h0"], args["c0"],
                              args["peephole"], args["lengths"], True, True)
        tape = Tape("cupy-emulated", args["x"], args["w_ih"], args["w_hh"], args["h0"], args["c0"],
                    args["peephole"], args["lengths"], True, out.y, out.gates, out.c)
        return out, backend.backward(tape, dy, dh_n, dc_n)

    full_out, full_grads = run(emulated_backend())
    assert _kernels.launch_config(B * H) == (1, 256)
    # 1 block of 32 threads, 3 blocks of 7: each thread covers several elements.
    # The backward walk runs blocks and threads in reverse order: a kernel
    # whose threads depended on each other's writes would differ.
    for block, max_blocks, walk in ((32, 1, "forward"), (7, 3, "forward"), (64, 1, "forward"),
                                    (7, 3, "backward"), (256, None, "backward")):
        assert max_blocks is None or block * max_blocks < B * H
        out, grads = run(emulated_backend(block=block, max_blocks=max_blocks, walk=walk))
        for name in ("y", "h_n", "c_n", "gates", "c"):
            np.testing.assert_array_equal(getattr(out, name), getattr(full_out, name), err_msg=name)
        for name in ("dx", "dw_ih", "dw_hh", "db", "dh0", "dc0", "dpeephole"):
            np.testing.assert_array_equal(getattr(grads, name), getattr(full_grads, name), err_msg=name)


PROBE = r'''
// Test kernels for the emulator itself.
//   n     int        (,)   number of elements
//   who   int*       (n,)  out: 1000*blockIdx.x + threadIdx.x of the thread that
//                          handled each element, +100000 per extra visit
extern "C" __global__ void probe(const int n, int* who) {
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (long long)blockDim.x * gridDim.x) {
    who[i] += 100000 + 1000 * (int)blockIdx.x + (int)threadIdx.x;
  }
}
//   n     int         number of elements
//   s     float       scale
//   a     const float* (n,)
//   out   float*       (n,)  out: s * a
extern "C" __global__ void scale_f32(const int n, const float s, const float* a, float* out) {
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (long long)blockDim.x * gridDim.x) {
    out[i] = s * a[i];
  }
}
// A data race: thread i reads element i+1, which thread i+1 writes.
//   n     int     number of elements
//   a     float*  (n,)  in/out: meant to become a shifted left by one
extern "C" __global__ void shift_left_racy(const int n, float* a) {
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i + 1 < n;
       i += (long long)blockDim.x * gridDim.x) {
    a[i] = a[i + 1];
  }
}
'''


@pytest.fixture(scope="module")
def probe_module(tmp_path_factory):
    if CXX is None:
        pytest.skip("no C++ compiler")
    tmp = tmp_path_factory.mktemp("probe")
    cu = tmp / "probe.cu"
    cu.write_text(PROBE)
    entries = ["probe", "scale_f32", "shift_left_racy"]
    path, _ = _emulation.build_library(cu, entries, out_dir=tmp)
    return _emulation.EmulatedModule(path, entries)


def test_emulator_walks_every_block_and_thread(probe_module):
    n, grid, block = 30, 3, 4  # 12 threads for 30 elements
    who = np.zeros(n, np.int32)
    probe_module.launch("probe", grid, block, (np.int32(n), who))
    k = np.arange(n)
    expected = 100000 + 1000 * ((k % (grid * block)) // block) + (k % block)
    np.testing.assert_array_equal(who, expected)  # every element visited exactly once


def test_backward_walk_visits_the_same_threads_in_reverse(probe_module):
    n, grid, block = 30, 3, 4
    forward, backward = np.zeros(n, np.int32), np.zeros(n, np.int32)
    probe_module.launch("probe", grid, block, (np.int32(n), forward))
    probe_module.launch("probe", grid, block, (np.int32(n), backward), backward_walk=True)
    np.testing.assert_array_equal(forward, backward)


def test_the_two_walks_expose_a_data_race(probe_module):
    start = np.arange(16, dtype=np.float32)
    results = []
    for backward in (False, True):
        a = start.copy()
        probe_module.launch("shift_left_racy", 1, 16, (np.int32(16), a), backward_walk=backward)
        results.append(a)
    assert not np.array_equal(results[0], results[1]), "the walks did not expose the race"


def test_kernel_signatures_are_reported(probe_module):
    assert probe_module.signatures["scale_f32"] == [("v", "i4"), ("v", "f4"), ("c", "f4"), ("p", "f4")]
    assert probe_module.signatures["probe"] == [("v", "i4"), ("p", "i4")]


def test_packing_follows_cupy_and_matches_declared_types(probe_module):
    a = np.arange(6, dtype=np.float32)
    out = np.zeros(6, np.float32)
    probe_module.launch("scale_f32", 2, 2, (np.int32(6), np.float32(1.5), a, out))
    np.testing.assert_array_equal(out, 1.5 * a)

    bad = [
        ((6, np.float32(1.5), a, out), "Python int as int64"),  # CuPy: int -> int64
        ((np.int32(6), 1.5, a, out), "Python float as float64"),  # CuPy: float -> double
        ((np.int32(6), np.float64(1.5), a, out), "takes float32 by value, got float64"),
        ((np.int32(6), np.float32(1.5), a.astype(np.float64), out), "pointer to float32, got a float64"),
        ((np.int32(6), np.float32(1.5), a, out[::2]), "C-contiguous"),
        ((None, np.float32(1.5), a, out), "cannot pass NoneType by value"),
        ((np.int32(6), np.float32(1.5), a), "takes 4 arguments, got 3"),
    ]
    for args, message in bad:
        with pytest.raises(TypeError, match=message):
            probe_module.launch("scale_f32", 1, 1, args)
    frozen = np.zeros(6, np.float32)
    frozen.flags.writeable = False
    with pytest.raises(TypeError, match="read-only"):
        probe_module.launch("scale_f32", 1, 1, (np.int32(6), np.float32(1.5), a, frozen))
    # A read-only array is fine where the kernel only reads.
    a.flags.writeable = False
    probe_module.launch("scale_f32", 1, 8, (np.int32(6), np.float32(2), a, out))
    np.testing.assert_array_equal(out, 2 * a)


# ---------------------------------------------------------------- build cache

def test_concurrent_builds_share_one_library(tmp_path):
    # Two processes building the same library into an empty cache at once:
    # each compiles into its own temporary file and renames it into place.
    cu = _kernels.KERNEL_DIR / "lstm_forward.cu"
    entries = _kernels.expected_entries()["lstm_forward.cu"]
    code = ("import sys; from polylstm_cupy import _emulation; "
            f"print(_emulation.build_library({str(cu)!r}, {entries!r}, out_dir=sys.argv[1])[0])")
    builders = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [b.communicate(timeout=120) for b in builders]
    for builder, (stdout, stderr) in zip(builders, outputs):
        assert builder.returncode == 0, stderr
    paths = {stdout.strip() for stdout, _ in outputs}
    assert len(paths) == 1
    built = tmp_path / os.path.basename(paths.pop())
    assert [p.name for p in tmp_path.iterdir()] == [built.name], "a temporary file was left behind"
    again, log = _emulation.build_library(cu, entries, out_dir=tmp_path)
    assert again == built and log == ""  # a cache hit
    module = _emulation.EmulatedModule(again, entries)
    assert set(module.signatures) == set(entries)


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("POLYLSTM_CACHE_DIR", str(tmp_path))
    assert _emulation.cache_dir() == tmp_path / "cupy-emulation"
    monkeypatch.delenv("POLYLSTM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _emulation.cache_dir() == tmp_path / "xdg" / "polylstm" / "cupy-emulation"


def test_threads_running_emulated_kernels_at_once():
    T, B, I, H = 6, 4, 3, 8
    args = _inputs(T, B, I, H, np.float64, peephole=True, lengths=[6, 3, 1, 5])
    backend = emulated_backend(block=4, max_blocks=2)
    call = lambda: backend.forward(*(args[k] for k in ("x", "w_ih", "w_hh", "b", "h0", "c0", "peephole", "lengths")),  # noqa: E731
                                   True, True)
    expected = call()
    outs = [None] * 4

    def work(k):
        outs[k] = [call() for _ in range(5)]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for runs in outs:
        for out in runs:
            np.testing.assert_array_equal(out.y, expected.y)
            np.testing.assert_array_equal(out.gates, expected.gates)


# --------------------------------------------------------------- the plugin

def test_importing_the_plugin_does_not_import_cupy():
    code = "import sys, polylstm, polylstm_cupy; assert 'cupy' not in sys.modules, 'cupy imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_availability_probes(monkeypatch):
    import importlib.util

    assert _emulation_available() is None
    reason = _cupy_available()
    assert reason is None or reason in ("cupy not installed", "no CUDA device") or reason.startswith("cupy cannot")

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cupy" else real_find_spec(name, *a))
    assert _cupy_available() == "cupy not installed"
    monkeypatch.setattr(_emulation, "find_cxx", lambda: None)
    assert _emulation_available() == "no C++ compiler (g++) for the emulation"
    monkeypatch.setattr(importlib.util, "find_spec", lambda *a: (_ for _ in ()).throw(ValueError("broken")))
    assert _cupy_available().startswith("cupy cannot be used")


def test_cupy_named_without_a_device_says_why():
    reason = _cupy_available()
    if reason is None:
        pytest.skip("a CUDA device is present")
    x = np.zeros((2, 1, 3))
    with pytest.raises(polylstm.errors.BackendUnavailableError, match=reason):
        polylstm.lstm_forward(x, np.zeros((8, 3)), np.zeros((8, 2)), backend="cupy")


def test_backward_needs_a_stored_tape():
    args = _inputs(3, 2, 2, 2, np.float64, peephole=False, lengths=None)
    tape = Tape("cupy-emulated", args["x"], args["w_ih"], args["w_hh"], args["h0"], args["c0"],
                None, None, False, np.zeros((3, 2, 2)), None, None)
    with pytest.raises(ValueError, match="tape"):
        _orchestration.backward(np, None, tape, np.zeros((3, 2, 2)), np.zeros((2, 2)), np.zeros((2, 2)))
