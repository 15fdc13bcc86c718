"""The backend's threads: a pool whose workers linger for a moment after a call.

A call's work is a list of tasks, callables that each run one GIL-free
kernel (a row block, a column slice's pieces, a gradient product) given the
pool's ``sync`` array. The caller runs tasks itself and up to
``threads - 1`` pool threads run the others; every thread takes the next
task when it finishes one, so a thread slowed by foreign load on its core
does fewer tasks instead of holding up the call.

Why the workers linger: on the 2-vCPU VM of docs/benchmarks.md a thread
that blocks (a futex: a lock, a condition, the GIL) lets its vCPU halt
(the guest polls 0 ns before halting), and waking it costs 30-90 us, 2-4%
of a T100-B16-I128-H128 forward, at both ends of every call: the pool
thread started ~45 us after the caller, and the caller, asleep on the
pool's result, woke tens of microseconds after the last task. So a worker
that has run a call's tasks does not block at once: it spins, GIL released,
for up to ``LINGER_NS`` (``_barrier.report_and_linger``), and a call that
comes in that time reaches it in microseconds. It spins on the number that
the call's first kernel publishes once its thread has released the GIL
(``_barrier.started``), not on the call itself: a worker that asked for
the GIL while the caller still held it would sleep in CPython's GIL wait
and pay the wake-up anyway (for tasks that publish nothing, it goes
``_barrier.STARTED_GRACE_NS`` after the call is handed out). The caller waits for the workers' tasks by
spinning as well (``_barrier.wait_until``), on a count the workers add from
GIL-free code. Past ``LINGER_NS`` the worker blocks on a condition, as an
idle OpenMP or OpenBLAS worker does after its spin (GNU OpenMP spins a
fraction of a millisecond, Intel's 200 ms, OpenBLAS's ~0.1 s was measured
here), so an idle process burns no CPU.

Where the spinning atomics cannot be built (``_barrier.available()``:
Linux) workers and callers block on the condition instead.

The pool threads keep off the caller's CPU (``_affinity``: after an idle
spell a VM's scheduler otherwise stacks them on it). One call at a time
uses the pool: a call from another thread while it is busy runs its tasks
on its own thread.
"""

from __future__ import annotations

import itertools
import os
import threading
import time

import numpy as np

from . import _affinity, _barrier


def _linger_ns_from_environment(value):
    """``POLYLSTM_NUMBA_LINGER_US`` (None: unset) in nanoseconds."""
    if value is None:
        return 1_000_000
    try:
        microseconds = int(value)
    except ValueError:
        microseconds = -1
    if microseconds < 0:
        raise ValueError("POLYLSTM_NUMBA_LINGER_US must be a whole number of microseconds, "
                         f"0 or more, not {value!r}")
    return 1000 * microseconds


#: How long a worker spins after a call's tasks before it blocks:
#: ``POLYLSTM_NUMBA_LINGER_US`` microseconds (0: never spin), by default
#: 1000. Long enough for the Python between two calls of a layer loop or a
#: training step, short enough that an idle process stops spinning within
#: a millisecond. Measured in docs/benchmarks.md ("A pool that lingers").
LINGER_NS = _linger_ns_from_environment(os.environ.get("POLYLSTM_NUMBA_LINGER_US"))

#: The ``sync`` array for kernels run outside the pool (one thread): their
#: ``_barrier.started`` writes here, where no worker looks.
UNPOOLED = np.zeros(2, np.int64)


class _Job:
    """One call's tasks, handed out one at a time, and what became of them.

    done: (1,) int64, the tasks the pool's threads have finished (the caller
    waits for it to reach the tasks they took).
    """

    def __init__(self, tasks, workers, cpu, number):
        self.tasks = tasks
        self.workers = workers  # pool threads that may take part
        self.cpu = cpu  # the caller's CPU (``_affinity``)
        self.number = number
        self.done = np.zeros(1, np.int64)
        self.errors = []
        self.cancelled = False
        # seated[s]: 1 while the pool thread in seat s may be running a task.
        self.seated = np.zeros(max(workers, 1), np.int8)
        # next() on an itertools.count is atomic under the GIL: each task
        # and each worker seat is given out once.
        self._next_task = itertools.count()
        self._next_seat = itertools.count()

    def take_seat(self):
        """The seat of a pool thread that takes part (at most ``workers``
        do), or None."""
        seat = next(self._next_seat)
        if seat >= self.workers:
            return None
        self.seated[seat] = 1
        return seat

    def work(self, sync):
        """Run tasks until none is left; how many this thread ran. A task's
        exception is kept for the caller, after every task has run (they
        write into shared buffers: the call must not return while one runs)."""
        ran = 0
        for k in iter(self._next_task.__next__, None):
            if k >= len(self.tasks) or self.cancelled:
                break
            try:
                self.tasks[k](sync)
            except BaseException as error:  # noqa: B902 -- re-raised by the caller
                self.errors.append(error)
            ran += 1
        return ran


class Pool:
    """Worker threads for ``run``; started as calls need them, never stopped
    (daemon threads, blocked or spinning with the GIL released).

    spin: whether workers linger and callers wait by spinning (the default
    where ``_barrier`` is available); linger_ns: how long a worker spins.
    """

    def __init__(self, spin=None, linger_ns=None):
        self.spin = _barrier.available() if spin is None else spin
        self.linger_ns = (LINGER_NS if linger_ns is None else linger_ns) if self.spin else 0
        # sync[0]: the number of the last call handed out; sync[1]: the
        # number the last call's first kernel published (``_barrier.started``).
        self.sync = np.zeros(2, np.int64)
        self._condition = threading.Condition()
        self._job = None
        self._number = 0
        self._threads = []
        self._busy = threading.Lock()

    def run(self, tasks, threads):
        """Run ``tasks`` (callables taking ``sync``) on this thread and up to
        ``threads - 1`` pool threads; returns when all have run, raising the
        first task's exception if one raised."""
        if not self._busy.acquire(blocking=False):
            # Another thread's call has the workers: this one runs alone.
            for task in tasks:
                task(UNPOOLED)
            return
        try:
            job = self._hand_out(tasks, threads - 1)
            try:
                mine = job.work(self.sync)
            except BaseException:
                # Interrupted between tasks (a KeyboardInterrupt outside a
                # task): no more tasks for anyone, and no return while a
                # pool thread still writes into this call's buffers, which
                # the next call may reuse (``_scratch``).
                job.cancelled = True
                while job.seated.any():
                    time.sleep(1e-4)
                raise
            self._wait_for_workers(job, len(tasks) - mine)
        finally:
            self._busy.release()
        if job.errors:
            raise job.errors[0]

    def _hand_out(self, tasks, workers):
        while len(self._threads) < workers:
            thread = threading.Thread(target=self._serve, daemon=True,
                                      name=f"polylstm-numba-{len(self._threads)}")
            thread.start()
            self._threads.append(thread)
        with self._condition:
            self._number += 1
            job = _Job(tasks, workers, _affinity.caller_cpu(), self._number)
            self._job = job
            self.sync[0] = job.number
            self._condition.notify_all()
        return job

    def _wait_for_workers(self, job, count):
        if self.spin:
            _barrier.wait_until(job.done, count)
            return
        with self._condition:
            while job.done[0] < count:
                self._condition.wait()

    def _serve(self):
        """A worker: each call's tasks, then linger, then block."""
        seen = 0
        done, finished = None, 0
        while True:
            ready = False
            if done is not None:
                if self.spin:
                    ready = _barrier.report_and_linger(done, finished, self.sync, seen + 1,
                                                       self.linger_ns)
                else:
                    with self._condition:
                        done[0] += finished
                        self._condition.notify_all()
            if not ready:
                with self._condition:
                    while self._number <= seen:
                        self._condition.wait()
            job = self._job
            seen = job.number
            done, finished = job.done, 0
            seat = job.take_seat()
            if seat is not None:
                _affinity.keep_off(job.cpu, job.workers)
                finished = job.work(self.sync)
                job.seated[seat] = 0
