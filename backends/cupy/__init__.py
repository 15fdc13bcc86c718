"""polylstm's CuPy GPU backend (``cupy``) and its CPU emulation (``cupy-emulated``).

``cupy`` computes the LSTM on CuPy arrays on the current CUDA device, in the
shape fast GPU LSTMs use: one cuBLAS product for the input projection of all
steps, then per step one recurrent product and one fused pointwise CUDA
kernel; backward likewise, with the weight and input gradients as large
products after the loop. The kernels are CUDA C in the ``.cu`` files of this
package, compiled by ``cupy.RawModule`` once per process and dtype.

``cupy-emulated`` runs the same Python orchestration with NumPy arrays and the
same ``.cu`` files compiled for the CPU by g++ (through ``cuda_emulation.h``).
It exists so that every CI run, GPU or not, executes the GPU backend's code;
it is never selected automatically. How all this is verified without a GPU:
``docs/gpu-backend.md``.

Arrays and devices: CuPy arrays in, CuPy arrays out. The ``cupy`` backend
claims CuPy arrays, so automatic selection sends it CuPy inputs only. When a
user names ``backend="cupy"`` explicitly and passes NumPy arrays, the core
converts them with :meth:`CupyBackend.asarray`, which copies them to the
device, and the results stay CuPy arrays -- data moves between host and
device only when the user chose the backend by name. ``cupy-emulated`` takes
and returns NumPy arrays (a CuPy array named to it is copied to the host).

Importing this package never imports cupy: ``available()`` does, at most, and
only after ``importlib`` found it; ``load()`` does when the backend is used.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

from polylstm.backend import BackendInfo, hookimpl


def _cupy_available():
    """None when CuPy is installed and sees a CUDA device, else why not (never raises)."""
    try:
        if importlib.util.find_spec("cupy") is None:
            return "cupy not installed"
        import cupy

        if not cupy.is_available():
            return "no CUDA device"
    except Exception as exc:  # noqa: BLE001 -- a broken install is a reason, not a crash
        return f"cupy cannot be used: {type(exc).__name__}: {exc}"
    return None


def _emulation_available():
    """None when a C++ compiler for the emulation is on PATH, else why not."""
    try:
        from ._emulation import find_cxx

        if find_cxx() is None:
            return "no C++ compiler (g++) for the emulation"
    except Exception as exc:  # noqa: BLE001
        return f"cannot look for a C++ compiler: {type(exc).__name__}: {exc}"
    return None


def _cupy_version():
    for dist in ("cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x", "cupy"):
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _load_cupy():
    from ._backend import CupyBackend

    return CupyBackend()


def _load_emulated():
    from ._backend import emulated_backend

    return emulated_backend()


@hookimpl
def polylstm_register_backends(register):
    """Register ``cupy`` (GPU, claims CuPy arrays) and ``cupy-emulated`` (by name only)."""
    register(
        BackendInfo(
            name="cupy",
            load=_load_cupy,
            available=_cupy_available,
            priority=30,
            array_types=("cupy",),
            version=_cupy_version(),
            description="CuPy GPU: cuBLAS products and fused CUDA C pointwise kernels",
        )
    )
    register(
        BackendInfo(
            name="cupy-emulated",
            load=_load_emulated,
            available=_emulation_available,
            priority=0,
            array_types=("numpy",),
            auto_select=False,
            description="the CuPy backend's .cu kernels compiled for the CPU (testing)",
        )
    )
