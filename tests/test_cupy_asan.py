"""AddressSanitizer over the CuPy backend's kernels, on the CPU.

The emulation library is rebuilt with ``-fsanitize=address`` and loaded in a
subprocess that has the ASan runtime preloaded (``LD_PRELOAD`` of
``g++ -print-file-name=libasan.so``; a process cannot load an ASan library
otherwise). NumPy allocates array data with malloc, so a kernel reading or
writing one element past an array lands in ASan's red zone.

First a planted out-of-bounds kernel proves the harness reports what it
should; then the real forward and backward kernels run clean under it over
every feature (lengths, reverse, peepholes, no tape, both dtypes, a grid
smaller than the element count).
"""

import os
import subprocess
import sys
import textwrap

import pytest

from polylstm_cupy._emulation import find_cxx
from polylstm_cupy._testsupport import asan_runtime, require


@pytest.fixture(scope="module")
def asan_env():
    cxx = require(find_cxx(), "a C++ compiler (g++) for the emulation")
    runtime = require(asan_runtime(cxx), f"the AddressSanitizer runtime of {cxx} (libasan.so)")
    env = dict(os.environ)
    env["LD_PRELOAD"] = runtime
    # CPython and NumPy keep allocations alive at exit on purpose; only memory
    # errors matter here.
    env["ASAN_OPTIONS"] = "detect_leaks=0:halt_on_error=1"
    return env


def _run(script: str, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env,
                          capture_output=True, text=True, timeout=300)


PLANTED = r'''
// Copies a into out, but the loop bound is off by one: element n is read
// from and written past the end of both arrays.
extern "C" __global__ void copy_past_end(const int n, const float* a, float* out) {
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i <= n;
       i += (long long)blockDim.x * gridDim.x) {
    out[i] = a[i];
  }
}
'''


def test_asan_harness_catches_an_out_of_bounds_kernel(asan_env, tmp_path):
    cu = tmp_path / "planted.cu"
    cu.write_text(PLANTED)
    script = f"""
        import numpy as np
        from polylstm_cupy import _emulation
        path, _ = _emulation.build_library({str(cu)!r}, ["copy_past_end"], sanitize="address",
                                           out_dir={str(tmp_path)!r})
        module = _emulation.EmulatedModule(path, ["copy_past_end"])
        a = np.arange(37, dtype=np.float32)
        out = np.zeros(37, np.float32)
        module.launch("copy_past_end", 2, 8, (np.int32(37), a, out))
        print("NOT CAUGHT")
    """
    proc = _run(script, asan_env)
    assert proc.returncode != 0, f"ASan did not stop the planted overflow:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert "AddressSanitizer: heap-buffer-overflow" in proc.stderr, proc.stderr[-3000:]
    assert "copy_past_end" in proc.stderr  # the report names the kernel
    assert "NOT CAUGHT" not in proc.stdout


def test_real_kernels_run_clean_under_asan(asan_env):
    script = """
        import numpy as np
        from polylstm.backend import Tape
        from polylstm_numpy import reference
        from polylstm_cupy._backend import emulated_backend

        rng = np.random.default_rng(5)
        T, B, I, H = 5, 4, 3, 7
        runs = 0
        for dtype in (np.float32, np.float64):
            for lengths in (None, np.array([5, 2, 1, 4])):
                for reverse in (False, True):
                    for peephole in (False, True):
                        for launch in ({}, {"block": 8, "max_blocks": 2}):
                            backend = emulated_backend(sanitize="address", **launch)
                            d = lambda *s: rng.standard_normal(s).astype(dtype)
                            x, wi, wh, b, h0, c0 = d(T, B, I), d(4*H, I), d(4*H, H), d(4*H), d(B, H), d(B, H)
                            p = d(3, H) if peephole else None
                            out = backend.forward(x, wi, wh, b, h0, c0, p, lengths, reverse, True)
                            ref = reference.forward(x, wi, wh, b, h0, c0, p, lengths, reverse, True)
                            tol = 1e-4 if dtype == np.float32 else 1e-12
                            np.testing.assert_allclose(out.y, ref.y, atol=tol)
                            backend.forward(x, wi, wh, b, h0, c0, p, lengths, reverse, False)
                            tape = Tape("cupy-emulated", x, wi, wh, h0, c0, p, lengths, reverse,
                                        out.y, out.gates, out.c)
                            dy, dh, dc = d(T, B, H), d(B, H), d(B, H)
                            g = backend.backward(tape, dy, dh, dc)
                            r = reference.backward(tape, dy, dh, dc)
                            np.testing.assert_allclose(g.dw_hh, r.dw_hh, atol=tol * 10)
                            runs += 1
        print("CLEAN", runs)
    """
    proc = _run(script, asan_env)
    assert "AddressSanitizer" not in proc.stderr, proc.stderr[-5000:]
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "CLEAN 32" in proc.stdout
