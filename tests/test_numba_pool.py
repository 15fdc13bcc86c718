"""The Numba backend's thread pool (``_pool``) and the atomics its workers
linger on (``_barrier.started``, ``_barrier.report_and_linger``).

The pool's speed (a worker that lingers starts the next call's tasks
within microseconds) is measured in docs/benchmarks.md, not here; these
tests check what must hold whatever the timing: every task runs once, on
the threads asked for, errors reach the caller, a busy pool or a blocked
worker costs speed and never an answer.
"""

import threading
import time

import numpy as np
import pytest

pytest.importorskip("numba")
pytest.importorskip("scipy")

from polylstm_numba import _backend, _barrier, _pool  # noqa: E402

SPIN = [True, False] if _barrier.available() else [False]


@pytest.mark.skipif(not _barrier.available(), reason="the pool's spinning atomics are Linux only")
def test_started_publishes_the_number_handed_out():
    sync = np.array([7, 3], np.int64)
    _barrier.started(sync)
    assert sync.tolist() == [7, 7]


@pytest.mark.skipif(not _barrier.available(), reason="the pool's spinning atomics are Linux only")
def test_report_and_linger_counts_then_waits_for_the_next_call():
    done = np.zeros(1, np.int64)
    # The next call (number 5) has started: the worker goes at once, after
    # adding the tasks it finished to the count.
    assert _barrier.report_and_linger(done, 3, np.array([5, 5], np.int64), 5, 10**9)
    assert done[0] == 3
    # Nothing handed out: it gives up at the deadline (1 ms here) ...
    assert not _barrier.report_and_linger(done, 0, np.array([4, 4], np.int64), 5, 10**6)
    # ... and without a linger it only counts.
    assert not _barrier.report_and_linger(done, 2, np.array([5, 5], np.int64), 5, 0)
    assert done[0] == 5
    # Handed out but never started (a task that publishes nothing): it
    # goes after the grace period, well before a one-minute linger ends.
    assert _barrier.report_and_linger(done, 0, np.array([5, 4], np.int64), 5, 60 * 10**9)


def _recording_tasks(n, started=True):
    """n tasks, and the list where the i-th records the thread that ran it."""
    seen = [None] * n

    def task(i, sync):
        if started:
            _barrier.started(sync)
        seen[i] = threading.get_ident()

    return [lambda sync, i=i: task(i, sync) for i in range(n)], seen


@pytest.mark.parametrize("spin", SPIN)
@pytest.mark.parametrize("threads,ntasks", [(2, 2), (2, 7), (3, 5), (4, 2)])
def test_every_task_runs_once_on_at_most_the_threads_asked_for(spin, threads, ntasks):
    pool = _pool.Pool(spin=spin, linger_ns=2_000_000)
    for call in range(5):  # later calls find the workers lingering (or blocked)
        tasks, seen = _recording_tasks(ntasks, started=call % 2 == 0)
        pool.run(tasks, threads)
        assert None not in seen
        assert len(set(seen)) <= threads


@pytest.mark.parametrize("spin", SPIN)
def test_a_task_error_reaches_the_caller_after_every_task_ran(spin):
    pool = _pool.Pool(spin=spin)
    barrier = threading.Barrier(2, timeout=30)
    ran = []

    def failing(sync):
        barrier.wait()  # both threads hold a task: one of them is the worker
        raise ValueError("from a task")

    def other(sync):
        barrier.wait()
        ran.append(True)

    with pytest.raises(ValueError, match="from a task"):
        pool.run([failing, other], 2)
    assert ran == [True]
    tasks, seen = _recording_tasks(4)
    pool.run(tasks, 2)  # the pool still works
    assert None not in seen


def test_a_busy_pool_runs_another_threads_call_on_that_thread():
    pool = _pool.Pool()
    inside = threading.Event()
    release = threading.Event()
    other_call = {}

    def holding(sync):
        inside.set()
        assert release.wait(30)

    def second_caller():
        assert inside.wait(30)
        tasks, seen = _recording_tasks(3)
        pool.run(tasks, 2)
        other_call["seen"] = seen
        other_call["thread"] = threading.get_ident()
        release.set()

    thread = threading.Thread(target=second_caller)
    thread.start()
    pool.run([holding], 1)  # the pool is busy until the other call is done
    thread.join()
    assert other_call["seen"] == [other_call["thread"]] * 3


@pytest.mark.parametrize("spin", SPIN)
def test_calls_from_several_threads_compute_the_same_bits(spin, monkeypatch):
    # Two Python threads calling the backend at once: one gets the pool,
    # the other runs alone; both answers are the single-thread ones.
    monkeypatch.setattr(_backend, "_POOL", _pool.Pool(spin=spin))
    rng = np.random.default_rng(0)
    T, B, I, H = 20, 16, 12, 24
    args = [rng.standard_normal(s).astype(np.float32) for s in
            ((T, B, I), (4 * H, I), (4 * H, H), (4 * H,), (B, H), (B, H))]
    want = _backend.NumbaBackend("rows", 1).forward(*args, None, None, False, False).y
    backend = _backend.NumbaBackend("rows", 2)
    results = []

    def caller():
        for _ in range(20):
            results.append(backend.forward(*args, None, None, False, False).y)

    threads = [threading.Thread(target=caller) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 40
    for y in results:
        assert y.tobytes() == want.tobytes()


@pytest.mark.parametrize("spin", SPIN)
def test_an_interrupted_caller_returns_only_once_no_task_runs(spin, monkeypatch):
    # A KeyboardInterrupt between two of the caller's tasks (outside any
    # task, where the pool cannot catch it): the call ends with it, but not
    # while a pool thread still writes into the call's buffers, and no task
    # starts after it.
    pool = _pool.Pool(spin=spin)
    caller = threading.get_ident()
    started = threading.Event()
    log = []

    def slow(sync):
        started.set()
        time.sleep(0.05)
        log.append("slow done")

    def quick(sync):
        assert started.wait(30)  # the pool thread holds the slow task
        log.append("quick")

    def late(sync):
        log.append("late")

    real_work = _pool._Job.work

    def interrupted_work(job, sync):
        if threading.get_ident() != caller:
            return real_work(job, sync)
        k = next(job._next_task)  # the caller's first task, then an interrupt
        job.tasks[k](sync)
        raise KeyboardInterrupt

    monkeypatch.setattr(_pool._Job, "work", interrupted_work)
    with pytest.raises(KeyboardInterrupt):
        pool.run([quick, slow] + [late] * 3, 2)
    assert log[:2] == ["quick", "slow done"]
    time.sleep(0.01)
    assert "late" not in log


def test_the_linger_setting_is_read_in_microseconds_and_checked():
    assert _pool._linger_ns_from_environment(None) == 1_000_000
    assert _pool._linger_ns_from_environment("250") == 250_000
    assert _pool._linger_ns_from_environment("0") == 0
    for bad in ("-1", "1.5", "fast", ""):
        with pytest.raises(ValueError, match="POLYLSTM_NUMBA_LINGER_US"):
            _pool._linger_ns_from_environment(bad)
