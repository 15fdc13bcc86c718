"""Compiling the backend's kernels for a GPU without having one: NVRTC and nvcc.

NVRTC is the check of record: it is what ``cupy.RawModule`` compiles with, and
it rejects code that nvcc accepts (a system ``#include``, for one). It is
reached through a small ctypes binding to ``libnvrtc`` -- found in the
``nvidia-cuda-nvrtc`` wheel, a CUDA toolkit, or the loader path -- because
CuPy's own compile entry points ask the driver for a device first and fail
without one. nvcc (``-ptx``/``-cubin``, no GPU needed) is a second opinion.

Both compile :func:`polylstm_cupy._kernels.module_source`, the exact text the
backend hands to RawModule, with RawModule's options (:func:`raw_module_nvrtc_options`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import _kernels


class CompileError(RuntimeError):
    """A kernel failed to compile; the message carries the compiler's log."""


# --------------------------------------------------------------------- NVRTC


def _nvrtc_candidates() -> list:
    """Paths (or sonames) where libnvrtc may be, most specific first."""
    found = []
    for entry in sys.path:
        # nvidia-cuda-nvrtc wheels: nvidia/cu13/lib (CUDA 13) or
        # nvidia/cuda_nvrtc/lib (CUDA 12).
        for pattern in ("nvidia/cu1*/lib/libnvrtc.so*", "nvidia/cuda_nvrtc/lib/libnvrtc.so*"):
            found.extend(sorted(glob.glob(os.path.join(entry, pattern)), reverse=True))
    for root in filter(None, (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda")):
        found.extend(sorted(glob.glob(os.path.join(root, "lib64", "libnvrtc.so*")), reverse=True))
    soname = ctypes.util.find_library("nvrtc")
    if soname:
        found.append(soname)
    # builtins libraries sit next to libnvrtc; they are not libnvrtc itself.
    return [p for p in found if "builtins" not in os.path.basename(p)]


class Nvrtc:
    """Minimal ctypes binding to libnvrtc: compile a source to PTX or cubin."""

    def __init__(self, path: str | None = None):
        errors = []
        for candidate in [path] if path else _nvrtc_candidates():
            try:
                self.lib = ctypes.CDLL(candidate)
                self.path = candidate
                break
            except OSError as exc:
                errors.append(f"{candidate}: {exc}")
        else:
            raise OSError(
                "libnvrtc not found (pip install nvidia-cuda-nvrtc, or install a CUDA "
                "toolkit)" + ("; tried " + "; ".join(errors) if errors else "")
            )
        lib = self.lib
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        lib.nvrtcCreateProgram.argtypes = [
            ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_char_p,
            ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
        ]
        lib.nvrtcCompileProgram.argtypes = [
            ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)
        ]
        for name in ("nvrtcGetPTXSize", "nvrtcGetCUBINSize", "nvrtcGetProgramLogSize"):
            getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
        for name in ("nvrtcGetPTX", "nvrtcGetCUBIN", "nvrtcGetProgramLog"):
            getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        lib.nvrtcVersion.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]

    def version(self) -> tuple:
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        return major.value, minor.value

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise CompileError(f"{what}: {self.lib.nvrtcGetErrorString(status).decode()}")

    def _get(self, prog, size_fn, get_fn) -> bytes:
        size = ctypes.c_size_t()
        self._check(size_fn(prog, ctypes.byref(size)), size_fn.__name__)
        buf = ctypes.create_string_buffer(size.value)
        self._check(get_fn(prog, buf), get_fn.__name__)
        return buf.raw[: size.value]

    def compile(self, source: str, name: str, options) -> dict:
        """Compile ``source``; returns {"ptx" or "cubin": bytes, "log": str}.

        The output kind follows the ``-arch`` option as in NVRTC:
        ``compute_XX`` gives PTX, ``sm_XX`` a cubin. Raises CompileError with
        the program log when compilation fails.
        """
        prog = ctypes.c_void_p()
        self._check(
            self.lib.nvrtcCreateProgram(
                ctypes.byref(prog), source.encode(), name.encode(), 0, None, None
            ),
            "nvrtcCreateProgram",
        )
        try:
            opts = [o.encode() for o in options]
            argv = (ctypes.c_char_p * len(opts))(*opts)
            status = self.lib.nvrtcCompileProgram(prog, len(opts), argv)
            log = self._get(prog, self.lib.nvrtcGetProgramLogSize, self.lib.nvrtcGetProgramLog)
            log = log.rstrip(b"\0").decode(errors="replace")
            if status != 0:
                raise CompileError(f"NVRTC failed to compile {name} with {list(options)}:\n{log}")
            out = {"log": log}
            if any(o.startswith("-arch=sm_") for o in options):
                out["cubin"] = self._get(prog, self.lib.nvrtcGetCUBINSize, self.lib.nvrtcGetCUBIN)
            else:
                out["ptx"] = self._get(prog, self.lib.nvrtcGetPTXSize, self.lib.nvrtcGetPTX)
            return out
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


def raw_module_nvrtc_options(suffix: str, arch: str) -> list:
    """The NVRTC options ``cupy.RawModule`` compiles one dtype's module with.

    ``arch`` is ``"compute_80"`` (PTX) or ``"sm_80"`` (cubin). What RawModule
    adds to the backend's own options (read from CuPy's compiler.py): CuPy's
    include directories and ``--std=c++17``, ``-ftz=true``, ``-arch`` and
    ``--device-as-default-execution-space``. With CuPy installed its own
    assembly of the include options is used; without, the include directories
    are left out (the kernels include nothing from CuPy or the toolkit).
    """
    opts = list(_kernels.raw_module_options(suffix))
    try:
        from cupy._core.core import assemble_cupy_compiler_options

        opts = list(assemble_cupy_compiler_options(tuple(opts)))
    except Exception:  # noqa: BLE001 -- CuPy absent, or its private API moved
        pass
    return opts + ["-ftz=true", f"-arch={arch}", "--device-as-default-execution-space"]


# ---------------------------------------------------------------------- nvcc


def find_nvcc() -> str | None:
    """Path of nvcc: $NVCC, PATH, $CUDA_PATH/bin, /usr/local/cuda/bin."""
    explicit = os.environ.get("NVCC")
    if explicit:
        return explicit
    found = shutil.which("nvcc")
    if found:
        return found
    for root in filter(None, (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda")):
        path = os.path.join(root, "bin", "nvcc")
        if os.access(path, os.X_OK):
            return path
    return None


def nvcc_compile(nvcc: str, file, suffix: str, arch: str, kind: str = "ptx") -> bytes:
    """Compile kernel file ``file`` for one dtype with nvcc; returns PTX or cubin.

    ``file`` is a name in the package directory or a path. ``arch`` is
    ``"sm_80"``-style; ``kind`` is ``"ptx"`` or ``"cubin"``. Warnings
    are errors and ptxas flags any double-precision use, so a float32 module
    that silently computes in double fails here.
    """
    with tempfile.TemporaryDirectory(prefix="polylstm-nvcc-") as tmp:
        out = Path(tmp) / f"out.{kind}"
        cmd = [
            nvcc, f"-{kind}", f"-arch={arch}", "-std=c++17", "-ftz=true",
            f"-I{_kernels.KERNEL_DIR}", f"-D{_kernels.ONLY_DTYPE_MACRO[suffix]}",
            "-Werror", "all-warnings", "-x", "cu",
        ]
        if suffix == "f32":
            cmd += ["-Xptxas", "--warn-on-double-precision-use"]
        cmd += [str(_kernels.KERNEL_DIR / file), "-o", str(out)]  # an absolute path stays as is
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise CompileError(
                f"nvcc failed on {file} ({suffix}, {arch}):\n{' '.join(cmd)}\n{proc.stderr}"
            )
        return out.read_bytes()


# ---------------------------------------------------------------- PTX checks


def ptx_entries(ptx: bytes) -> list:
    """Names of the kernels (``.entry``) defined in a PTX text."""
    names = []
    for line in ptx.decode(errors="replace").splitlines():
        parts = line.split()
        if ".entry" in parts:
            after = parts[parts.index(".entry") + 1]
            names.append(after.split("(")[0])
    return names


def ptx_uses_double(ptx: bytes) -> list:
    """Lines of a PTX text that compute or move double-precision values."""
    return [line.strip() for line in ptx.decode(errors="replace").splitlines() if ".f64" in line]
