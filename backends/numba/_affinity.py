"""Keep the backend's pool threads off the CPU of the thread that called it.

Why: on a 2-vCPU cloud VM (the machine of docs/benchmarks.md), once the
process has been idle for 10 ms or more, Linux woke the pool thread on the
*caller's* CPU, so both threads shared one CPU for the whole call, which
took twice as long: a T100-B16-I128-H128 forward 4.7-5.1 ms after 10-300 ms
idle, against 2.4-2.5 ms back to back (the likely cause: the other vCPU,
halted by the hypervisor while idle, does not count as an idle CPU to the
scheduler's wake-up placement). With the pool thread's affinity excluding
the caller's CPU the scheduler has to wake it on the other: 2.8-3.9 ms after
the same pauses, and the same back to back (docs/benchmarks.md, "The pool
kept off the caller's CPU").

How: before handing out work the caller reads the CPU it runs on
(``caller_cpu``, glibc's ``sched_getcpu``, ~0.2 us); each pool thread, as it
starts a call's work, restricts itself to the CPU set it was started with
minus that CPU (``keep_off``), with one ``sched_setaffinity`` only when that
changes. The pool threads keep their own set, inherited from the thread
that started them (so a process confined with ``taskset`` or cgroups stays
confined), not the caller's: a caller pinned to one CPU does not pull them
onto it. Where the set minus the caller's CPU has fewer CPUs than there are
pool threads (``NUMBA_NUM_THREADS`` above the CPU count) they keep the whole
set: kept off one CPU they would queue on the others while the caller's CPU
idles after its own share. Linux only (``os.sched_setaffinity`` and
``sched_getcpu``); elsewhere ``caller_cpu`` returns None and nothing
changes.
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

# Each pool thread remembers the CPU set it started with and the one it last
# restricted itself to.
_STATE = threading.local()


def available() -> bool:
    """Whether workers can be kept off the caller's CPU here (Linux)."""
    return _SCHED_GETCPU is not None


def caller_cpu() -> Optional[int]:
    """The CPU the calling thread runs on, or None where that is unknown."""
    if _SCHED_GETCPU is None:
        return None
    cpu = _SCHED_GETCPU()
    return cpu if cpu >= 0 else None


def workers_cpus(own: frozenset, cpu: Optional[int], workers: int) -> frozenset:
    """The CPUs for a pool thread whose own set is ``own`` during a call
    whose caller runs on ``cpu``, with ``workers`` pool threads: ``own``
    without ``cpu``, unless that leaves fewer CPUs than pool threads."""
    if cpu is None or cpu not in own or len(own) - 1 < workers:
        return own
    return own - {cpu}


def keep_off(cpu: Optional[int], workers: int) -> None:
    """In a pool thread, for a call whose caller runs on ``cpu`` (from
    ``caller_cpu``) with ``workers`` pool threads: run only on
    ``workers_cpus`` of this thread's own set. A failed restriction (a CPU
    taken offline since, a sandbox that forbids it) only costs the speed it
    was for."""
    if cpu is None:
        return
    own = getattr(_STATE, "own", None)
    if own is None:
        own = _STATE.own = frozenset(os.sched_getaffinity(0))
    cpus = workers_cpus(own, cpu, workers)
    if getattr(_STATE, "applied", own) == cpus:
        return
    try:
        os.sched_setaffinity(0, cpus)
    except OSError:
        return
    _STATE.applied = cpus
