"""Scratch memory that a calling thread keeps from one call to the next.

Why: a page of memory the process has never touched costs a page fault at
its first write, ~2.3 us per 4 KB page on the VM of docs/benchmarks.md
(1.6 MB of fresh memory: 0.9 ms). Whether a large NumPy array gets fresh
pages depends on glibc's history in the process: it hands large freed
blocks back to the kernel or keeps them, so the same call paid no fault in
one process and hundreds to thousands in the next (a T100-B64-I256-H256
forward+backward ~2800 faults per call, ~6 ms of 115; a T100-B4-I256-H256
forward ~500, 2.5 vs 4 ms). The buffers that live only inside one call (the
packed weights, the column split's projection, the backward's da and
h_{t-1}) therefore come from here: each thread keeps, per name, the largest
buffer it has been asked for (up to ``MAX_KEPT_BYTES``) and hands out views
of it, so a repeated call writes memory that is already mapped. What a call
returns (outputs, the tape) is never scratch: it belongs to the caller.

Rules for callers: within one call each name is taken once (a second take
of the same name hands out the same memory); nothing taken may outlive the
call or be returned. Thread-local, so two threads' calls never share a
buffer; the pool's threads only write into what the caller took.
"""

from __future__ import annotations

import math
import threading

import numpy as np

#: Buffers larger than this are allocated for the call and not kept: their
#: calls run for seconds, and a few ms of page faults are not worth holding
#: that much memory for the rest of the process.
MAX_KEPT_BYTES = 256 << 20

#: Every buffer starts on a cache line (the packed weights need it: see
#: ``_packed.ALIGN``).
ALIGN = 64

_LOCAL = threading.local()


def take(name: str, shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array of ``shape`` and ``dtype`` whose
    data starts on an ``ALIGN``-byte boundary, in this thread's kept buffer
    ``name`` (grown, or allocated and not kept past ``MAX_KEPT_BYTES``)."""
    kept = getattr(_LOCAL, "buffers", None)
    if kept is None:
        kept = _LOCAL.buffers = {}
    entry = kept.get(name)
    # The same shape and dtype as the last take of this name (a repeated
    # call): the same view again, ~0.2 us instead of ~1 us to slice one
    # (0.5% of a T200-B1-I32-H64 forward, which takes three).
    if entry is not None and entry[2] == (shape, dtype):
        return entry[3]
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    if entry is None or entry[0].nbytes < size + ALIGN:
        buffer = np.empty(size + ALIGN, np.uint8)
        # The offset of its first aligned byte, found once per buffer.
        entry = (buffer, -buffer.ctypes.data % ALIGN)
    buffer, skip = entry[:2]
    view = buffer[skip:skip + size].view(dtype).reshape(shape)
    if buffer.nbytes <= MAX_KEPT_BYTES:
        kept[name] = (buffer, skip, (shape, dtype), view)
    return view


def zeros(name: str, shape, dtype) -> np.ndarray:
    """``take`` filled with zeros."""
    array = take(name, shape, dtype)
    array.fill(0)
    return array


def kept_bytes() -> int:
    """Bytes this thread keeps (for tests and curious users)."""
    return sum(entry[0].nbytes for entry in getattr(_LOCAL, "buffers", {}).values())


def release() -> None:
    """Let go of this thread's kept buffers (the next call allocates anew):
    for a program that is done with large calls and wants the memory back."""
    _LOCAL.buffers = {}
