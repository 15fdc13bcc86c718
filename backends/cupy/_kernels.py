"""The CUDA kernel files of the CuPy backend, and their GPU launcher.

The ``.cu`` files next to this module are the single source of the kernels:
:class:`CupyKernels` loads them with ``cupy.RawModule`` on a GPU,
:mod:`polylstm_cupy._emulation` compiles the same files with g++ for the CPU,
and :mod:`polylstm_cupy._compile` checks them with NVRTC and nvcc.

A *launcher* is any callable ``launch(entry, dtype, grid, block, args)``:
``entry`` is the kernel family's base name (``"lstm_forward"``), ``dtype`` the
NumPy dtype selecting the ``_f32``/``_f64`` entry point, ``grid``/``block``
ints (1-D launches), and ``args`` the kernel arguments packed as CuPy packs
them -- arrays as pointers, ``None`` as a null pointer, NumPy scalars by their
dtype. The orchestration passes explicit ``numpy.int32`` scalars for ``int``
parameters so the same call is right on the GPU, where a Python int would be
packed as a 64-bit integer.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

#: Directory holding the .cu/.cuh/.h sources (installed as package data).
KERNEL_DIR = Path(__file__).resolve().parent

#: Kernel file -> entry-point families it defines (one family per file).
KERNEL_FILES = {
    "lstm_forward.cu": ("lstm_forward",),
    "lstm_backward.cu": ("lstm_backward",),
}

#: Our headers the kernel files include; module_source expands them inline.
KERNEL_HEADERS = ("lstm_common.cuh",)

#: dtype -> suffix of the extern "C" entry point and the macro that compiles
#: only that dtype's entries.
DTYPE_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
ONLY_DTYPE_MACRO = {"f32": "POLYLSTM_ONLY_F32", "f64": "POLYLSTM_ONLY_F64"}


def entry_name(entry: str, dtype) -> str:
    """Name of the extern "C" kernel for family ``entry`` and ``dtype``."""
    try:
        return f"{entry}_{DTYPE_SUFFIX[np.dtype(dtype)]}"
    except KeyError:
        raise TypeError(
            f"dtype: the cupy kernels exist for float32 and float64, got {np.dtype(dtype)}"
        ) from None


def file_of(entry: str) -> str:
    """The .cu file defining kernel family ``entry``."""
    for name, entries in KERNEL_FILES.items():
        if entry in entries:
            return name
    raise KeyError(f"entry: no kernel file defines {entry!r}")


def expected_entries(suffixes=("f32", "f64")) -> dict:
    """.cu file name -> list of extern "C" entry names it must export."""
    return {
        name: [f"{entry}_{s}" for entry in entries for s in suffixes]
        for name, entries in KERNEL_FILES.items()
    }


def read_source(name: str) -> str:
    """Text of kernel file or header ``name`` from the package directory."""
    return (KERNEL_DIR / name).read_text()


def module_source(name: str) -> str:
    """Kernel file ``name`` with its ``#include "<our header>"`` lines expanded.

    This is the text handed to ``cupy.RawModule`` (and to the NVRTC compile
    check). Expanding our own headers here, instead of passing ``-I``, puts
    their text into CuPy's kernel cache key: CuPy hashes the source string, so
    an edit to a header alone would otherwise reuse a stale cached binary.
    ``#line`` directives keep compiler messages pointing at the real files.
    """
    out = []
    for number, line in enumerate(read_source(name).splitlines(), start=1):
        stripped = line.strip()
        header = None
        for candidate in KERNEL_HEADERS:
            if stripped == f'#include "{candidate}"':
                header = candidate
        if header is None:
            out.append(line)
            continue
        body = read_source(header).replace("#pragma once", "// (#pragma once: expanded once here)")
        out.append(f'#line 1 "{header}"')
        out.append(body)
        out.append(f'#line {number + 1} "{name}"')
    return "\n".join(out) + "\n"


def raw_module_options(suffix: str) -> tuple:
    """Options the backend passes to ``cupy.RawModule`` for one dtype's module.

    The macro compiles only that dtype's entry points, so a float32 module
    holds no double-precision code (headers are expanded by
    :func:`module_source`, so no ``-I`` is needed). RawModule adds
    ``-arch``, ``-ftz=true``, ``--device-as-default-execution-space`` and its
    include directories itself (see _compile.raw_module_nvrtc_options).
    """
    return (f"-D{ONLY_DTYPE_MACRO[suffix]}", "--std=c++17")


def launch_config(n: int, block: int = 256, max_blocks: int | None = None) -> tuple:
    """(grid, block) for a 1-D grid-stride kernel over ``n`` elements.

    ``max_blocks`` caps the grid; the kernels loop, so a grid smaller than
    ``n / block`` still covers every element (tests use this to exercise the
    stride). Without a cap the grid is one thread per element, up to 65535
    blocks (beyond that, a bigger grid only adds scheduling work).
    """
    grid = max(1, min(-(-n // block), 65535))
    if max_blocks is not None:
        grid = max(1, min(grid, int(max_blocks)))
    return grid, block


class CupyKernels:
    """Launcher running the kernels on the current CUDA device with CuPy.

    Each (kernel file, dtype) is compiled once per process by
    ``cupy.RawModule`` (NVRTC; CuPy also keeps its own on-disk cache), lazily
    at its first launch. Arguments are passed to the RawKernel unchanged.
    """

    _modules: dict = {}
    _lock = threading.Lock()

    def __init__(self):
        import cupy

        self._cupy = cupy

    def module(self, file: str, dtype):
        """The ``cupy.RawModule`` of ``file`` compiled for ``dtype``."""
        suffix = DTYPE_SUFFIX[np.dtype(dtype)]
        key = (file, suffix)
        with self._lock:
            mod = self._modules.get(key)
            if mod is None:
                mod = self._cupy.RawModule(
                    code=module_source(file), options=raw_module_options(suffix)
                )
                self._modules[key] = mod
        return mod

    def __call__(self, entry: str, dtype, grid: int, block: int, args: tuple) -> None:
        kernel = self.module(file_of(entry), dtype).get_function(entry_name(entry, dtype))
        kernel((int(grid),), (int(block),), args)
