"""The thread count of the BLAS that numba's ``np.dot`` calls.

numba's compiled ``np.dot`` calls the BLAS behind ``scipy.linalg.cython_blas``
(scipy's own OpenBLAS in the PyPI wheels, not NumPy's). OpenBLAS runs every
call on its own thread pool, whose workers spin for ~0.1 s after the call
returns; on a 2-core machine they take a core from the row-block threads of
the next call (measured: the T100-B16-I128-H128 forward took 7 ms right after
a backward instead of 4). So while the backend's own threads call BLAS (row
blocks, the gradient products split among them), BLAS is made
single-threaded: each of those calls runs on the thread that makes it, and
no pool wakes up.

OpenBLAS's thread count is one number for the whole process. That includes
``openblas_set_num_threads_local``, despite its name (measured here: a
pool worker that set it to 1 left every later call of the process on one
thread, and in OpenBLAS's pthreads build it calls the global setter).
``single_threaded`` therefore sets it for the duration of a phase and puts
it back when the last phase running in the process ends; BLAS calls made
meanwhile by other Python threads run single-threaded too (slower, never
different: OpenBLAS does not split a GEMM's sums across threads). Outside
those phases the count is the user's (``OPENBLAS_NUM_THREADS``, or the
CPUs): the backend's one-call products (gradients after a loop of small row
blocks, the BLAS path's per-step products) use BLAS's threads.

The functions are looked up in the shared object that holds scipy's ``sgemm``
entry point (``scipy.linalg.cython_blas``; symbol lookup through it also
searches the BLAS it links), under OpenBLAS's names or the ``scipy_``-prefixed
ones of scipy's wheels, so a scipy built against another BLAS simply gets
None and the backend keeps its hand-written products. Linux and macOS
(``dladdr``); None elsewhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
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


#: (getter, setter) names of OpenBLAS's thread count, in the order tried:
#: scipy's wheels prefix OpenBLAS's symbols with ``scipy_``.
_GET_SET_NAMES = (("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
                  ("openblas_get_num_threads", "openblas_set_num_threads"))


@functools.lru_cache(maxsize=None)
def thread_count_functions():
    """(get, set) of the process-wide thread count of scipy's BLAS --
    ``get() -> n``, ``set(n)`` -- or None when that BLAS is not an OpenBLAS
    (or cannot be located). Where only ``openblas_set_num_threads_local``
    (``set(n) -> previous``) is exported, both are built on it."""
    path = _sgemm_library_path()
    if path is None:
        return None
    try:
        library = ctypes.CDLL(path)
    except OSError:
        return None
    for get_name, set_name in _GET_SET_NAMES:
        get = getattr(library, get_name, None)
        set_ = getattr(library, set_name, None)
        if get is not None and set_ is not None:
            get.argtypes, get.restype = [], ctypes.c_int
            set_.argtypes, set_.restype = [ctypes.c_int], None
            return get, set_
    exchange = getattr(library, "openblas_set_num_threads_local", None)
    if exchange is None:
        return None
    exchange.argtypes, exchange.restype = [ctypes.c_int], ctypes.c_int

    def get_via_exchange():
        current = exchange(1)
        exchange(current)
        return current

    return get_via_exchange, exchange


def available() -> bool:
    """True when the backend can make scipy's BLAS calls single-threaded."""
    return thread_count_functions() is not None


_phase_lock = threading.Lock()
_phases = 0  # single_threaded blocks running now, in any thread
_saved = None  # the thread count before the first of them


@contextlib.contextmanager
def single_threaded():
    """Within the block, scipy's BLAS runs each call on its calling thread
    (process-wide: see the module's docstring). Blocks may overlap, in one
    thread or several; the count in force before the first comes back when
    the last ends. A no-op when not ``available()``."""
    global _phases, _saved
    functions = thread_count_functions()
    if functions is None:
        yield
        return
    get, set_ = functions
    with _phase_lock:
        if _phases == 0:
            _saved = get()
            set_(1)
        _phases += 1
    try:
        yield
    finally:
        with _phase_lock:
            _phases -= 1
            if _phases == 0:
                set_(_saved)


def _reset_after_fork():
    """A child made by ``fork`` has only the forking thread: phases other
    threads were running are not running there (and ``_phase_lock`` may have
    been held by one). Put back the count from before them."""
    global _phase_lock, _phases
    if _phases:
        functions = thread_count_functions()
        if functions is not None:
            functions[1](_saved)
    _phase_lock = threading.Lock()
    _phases = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
