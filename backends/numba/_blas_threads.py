"""Per-thread control of the BLAS that numba's ``np.dot`` calls.

numba's compiled ``np.dot`` calls the BLAS behind ``scipy.linalg.cython_blas``
(scipy's own OpenBLAS in the PyPI wheels). OpenBLAS runs every call on its
own thread pool, whose workers spin for ~0.1 s after the call returns; on a
2-core machine they take a core from the row-block threads of the next call
(measured: the T100-B16-I128-H128 forward took 7 ms right after a backward
instead of 4). OpenBLAS 0.3.27 and newer can run the calls of *one* thread
single-threaded (``openblas_set_num_threads_local``): the row-block threads
then call BLAS themselves, in parallel, and no pool wakes up.

``find_local_setter`` looks the function up from the shared object that
holds scipy's ``sgemm`` entry point (``scipy.linalg.cython_blas``; symbol
lookup through it also searches the BLAS it links), so a scipy built against
another BLAS simply gets None and the backend keeps its hand-written
products. Linux and macOS (``dladdr``); None elsewhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import threading


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def _sgemm_library_path():
    """File name of the shared object holding scipy's sgemm entry point, or None."""
    try:
        from scipy.linalg import cython_blas
    except ImportError:
        return None
    capsule = cython_blas.__pyx_capi__.get("sgemm")
    if capsule is None:
        return None
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.argtypes = [ctypes.py_object]
    get_name.restype = ctypes.c_char_p
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    get_pointer.restype = ctypes.c_void_p
    address = get_pointer(capsule, get_name(capsule))
    libc_name = ctypes.util.find_library("c") or ctypes.util.find_library("dl")
    if not address or libc_name is None:
        return None
    try:
        dladdr = ctypes.CDLL(libc_name).dladdr
    except (OSError, AttributeError):
        return None
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    dladdr.restype = ctypes.c_int
    info = _DlInfo()
    if not dladdr(address, ctypes.byref(info)) or not info.dli_fname:
        return None
    return info.dli_fname.decode()


@functools.lru_cache(maxsize=None)
def find_local_setter():
    """``openblas_set_num_threads_local(n) -> previous`` of scipy's BLAS, or
    None when that BLAS has no such function (not OpenBLAS, or older than
    0.3.27) or cannot be located."""
    path = _sgemm_library_path()
    if path is None:
        return None
    try:
        setter = ctypes.CDLL(path).openblas_set_num_threads_local
    except (OSError, AttributeError):
        return None
    setter.argtypes = [ctypes.c_int]
    setter.restype = ctypes.c_int
    return setter


def available() -> bool:
    """True when the calling thread's BLAS calls can be made single-threaded."""
    return find_local_setter() is not None


@contextlib.contextmanager
def single_threaded():
    """Within the block, this thread's BLAS calls (from numba code) run on
    this thread only; the previous setting comes back afterwards, so a
    caller's own thread is left as it was. A no-op when not ``available()``."""
    setter = find_local_setter()
    if setter is None:
        yield
        return
    previous = setter(1)
    try:
        yield
    finally:
        setter(previous)


_worker_state = threading.local()


def make_worker_single_threaded():
    """Thread-pool initializer: this worker's BLAS calls stay on this worker
    for its whole life (the worker belongs to the backend)."""
    setter = find_local_setter()
    if setter is not None and not getattr(_worker_state, "done", False):
        setter(1)
        _worker_state.done = True
