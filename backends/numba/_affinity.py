"""Keep the backend's pool threads off the CPU of the thread that called it.

Why: on a 2-vCPU cloud VM (the machine of docs/benchmarks.md), once the
process has been idle for 10 ms or more, Linux woke the pool thread on the
*caller's* CPU, so both threads shared one CPU for the whole call, which
took twice as long: a T100-B16-I128-H128 forward 4.7-5.1 ms after 10-300 ms
idle, against 2.4-2.5 ms back to back (the likely cause: the other vCPU,
halted by the hypervisor while idle, does not count as an idle CPU to the
scheduler's wake-up placement). With the pool thread's affinity excluding
the caller's CPU the scheduler has to wake it on the other: 2.7-3.0 ms after
the same pauses, and the same back to back (docs/benchmarks.md, "The pool
kept off the caller's CPU").

How: before handing out work the caller reads its own CPU and allowed CPU set
(``target``, ~1 us); each pool thread, as it starts a call's work, restricts
itself to that set minus the caller's CPU (``keep_off``), with one
``sched_setaffinity`` only when the set changed since its last call. With
more threads than CPUs (``NUMBA_NUM_THREADS`` above the CPU count) the pool
threads keep the whole set: kept off one CPU they would queue on the others
while the caller's CPU idles after its own share. The pool threads follow
the caller's own set, so a process confined with ``taskset`` or cgroups
stays confined. Linux only (``os.sched_setaffinity`` and glibc's
``sched_getcpu``); elsewhere ``target`` returns None and nothing changes.
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Optional


def _load_sched_getcpu():
    """glibc's ``sched_getcpu`` through ctypes, or None where there is none."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sched_getcpu
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_int
    function.argtypes = []
    return function


_SCHED_GETCPU = _load_sched_getcpu()

# Each pool thread remembers the set it last restricted itself to.
_APPLIED = threading.local()


def available() -> bool:
    """Whether workers can be kept off the caller's CPU here (Linux)."""
    return _SCHED_GETCPU is not None


def target(nthreads: int) -> Optional[frozenset]:
    """In the calling thread, for a call on ``nthreads`` threads (this one
    and ``nthreads - 1`` pool threads): the CPUs the pool threads should run
    on, its allowed CPUs minus the one it runs on; all its allowed CPUs when
    the others are fewer than the pool threads (more threads than CPUs: there
    the caller's CPU must take its share); None where the CPU is unknown."""
    if _SCHED_GETCPU is None:
        return None
    cpu = _SCHED_GETCPU()
    allowed = frozenset(os.sched_getaffinity(0))
    if cpu < 0:
        return None
    if cpu not in allowed or len(allowed) < nthreads:
        return allowed
    return allowed - {cpu}


def keep_off(cpus: Optional[frozenset]) -> None:
    """In a pool thread: run only on ``cpus`` (from the caller's ``target``);
    None leaves the thread as it is. A failed restriction (a CPU taken offline
    since, a sandbox that forbids it) only costs the speed it was for."""
    if cpus is None or getattr(_APPLIED, "cpus", None) == cpus:
        return
    try:
        os.sched_setaffinity(0, cpus)
    except OSError:
        return
    _APPLIED.cpus = cpus
