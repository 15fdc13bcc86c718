"""Atomics for threads that share one call's work in compiled code (numba).

The column split (``_kernels.forward_split``) cuts the work of a forward
into pieces (a slice of the hidden units at one step) that depend on all
pieces of the step before. Steps are microseconds long, far too short for a
lock or a condition variable (a futex wake on this VM costs 26-90 us), so
threads claim pieces with a compare-and-swap (``claim``), count finished
ones with an atomic add (``finish``) and wait for a step's pieces by
spinning on that count (``wait_until``) with the CPU's pause hint; after
``SPINS_BEFORE_YIELD`` rounds each further round also gives the core away
with ``sched_yield``, so that on a machine shared with other work a waiting
thread does not burn the core that the thread it waits for needs.

The thread pool (``_pool``) uses the same waits between calls: each kernel
it runs first publishes that its thread has released the GIL (``started``);
a worker that has finished a call's tasks counts them and spins for the
next call's ``started`` (``report_and_linger``) for a bounded time, read
from ``clock_gettime``; the caller waits for the workers' count with
``wait_until``.

The atomics are LLVM instructions emitted through ``numba.extending.intrinsic``
(``cmpxchg`` and ``atomicrmw add``, sequentially consistent; ``load atomic``
acquire, ``store atomic`` release): the add publishes the thread's writes
for its piece (h, c, y) before the others see the count, and no load of
the next piece moves above the wait. ``sched_yield`` and ``clock_gettime``
are called by their C names, which the JIT's linker resolves in the
running process, so cached machine code holds no address. Linux only:
elsewhere ``available()`` is False, the backend keeps its other
strategies and the pool's threads block instead of spinning.
"""

import platform
import sys

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

#: Rounds of pause-and-check before each further round also yields the core:
#: with the pause hint at ~10-65 cycles on current x86, tens of
#: microseconds, several steps' worth, before a waiting thread starts
#: yielding. (A plain barrier measured ~60 ns per meeting of two running
#: threads here.)
SPINS_BEFORE_YIELD = 2000

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


#: How long a lingering pool thread that sees a call handed out waits for
#: its first kernel's ``started`` before it asks for the GIL anyway: the
#: caller's Python between the two is ~5-20 us; a task that publishes
#: nothing (a test's, a benchmark's) then costs this much, not the linger.
STARTED_GRACE_NS = 50_000


def available() -> bool:
    """Whether the barrier can be compiled here (Linux: ``sched_yield``)."""
    return sys.platform.startswith("linux")


def _counter_intrinsic(emit):
    """An intrinsic ``f(counter) -> int64`` for a (k,) int64 array: the value
    ``emit(builder, pointer)`` computes from a pointer to counter[0]."""

    def typer(typingctx, counter):
        if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
            return None

        def codegen(context, builder, signature, args):
            array = context.make_array(signature.args[0])(context, builder, args[0])
            return emit(builder, builder.bitcast(array.data, ir.IntType(64).as_pointer()))

        return types.int64(counter), codegen

    typer.__name__ = emit.__name__
    return intrinsic(typer)


def _increment(builder, pointer):
    """counter[0] += 1 atomically (sequentially consistent); the new value."""
    one = ir.Constant(ir.IntType(64), 1)
    return builder.add(builder.atomic_rmw("add", pointer, one, "seq_cst"), one)


def _load(builder, pointer):
    """counter[0], read atomically with acquire ordering."""
    return builder.load_atomic(pointer, "acquire", 8)


_atomic_increment = _counter_intrinsic(_increment)
_atomic_load = _counter_intrinsic(_load)


def _counter_update_intrinsic(emit):
    """An intrinsic ``f(counter, value)`` for a (k,) int64 array and an
    int64: ``emit(builder, pointer, value)`` with a pointer to counter[0]."""

    def typer(typingctx, counter, value):
        if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
            return None

        def codegen(context, builder, signature, args):
            array = context.make_array(signature.args[0])(context, builder, args[0])
            emit(builder, builder.bitcast(array.data, ir.IntType(64).as_pointer()), args[1])
            return context.get_dummy_value()

        return types.void(counter, types.int64), codegen

    typer.__name__ = emit.__name__
    return intrinsic(typer)


def _add(builder, pointer, value):
    """counter[0] += value atomically (sequentially consistent)."""
    builder.atomic_rmw("add", pointer, value, "seq_cst")


def _store(builder, pointer, value):
    """counter[0] = value, written atomically with release ordering."""
    builder.store_atomic(value, pointer, "release", 8)


_atomic_add = _counter_update_intrinsic(_add)
_atomic_store = _counter_update_intrinsic(_store)


@intrinsic
def _monotonic_ns(typingctx):
    """CLOCK_MONOTONIC in nanoseconds (POSIX ``clock_gettime``, called by its
    C name like ``sched_yield``; on Linux a vDSO call of ~20-50 ns)."""
    sig = types.int64()

    def codegen(context, builder, signature, args):
        i32, i64 = ir.IntType(32), ir.IntType(64)
        timespec = ir.LiteralStructType([i64, i64])  # time_t tv_sec; long tv_nsec (LP64)
        stamp = cgutils.alloca_once(builder, timespec)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(i32, [i32, timespec.as_pointer()]), "clock_gettime")
        builder.call(function, [ir.Constant(i32, _CLOCK_MONOTONIC), stamp])
        seconds = builder.load(cgutils.gep_inbounds(builder, stamp, 0, 0))
        nanoseconds = builder.load(cgutils.gep_inbounds(builder, stamp, 0, 1))
        return builder.add(builder.mul(seconds, ir.Constant(i64, 1_000_000_000)), nanoseconds)

    return sig, codegen


#: Linux's clock id of CLOCK_MONOTONIC.
_CLOCK_MONOTONIC = 1


@intrinsic
def _pause(typingctx):
    """The CPU's spin-wait hint (x86 ``pause``; nothing elsewhere)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if _X86:
            hint = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
            builder.call(hint, [])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _sched_yield(typingctx):
    """POSIX ``sched_yield()``: give this core to another runnable thread."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
        builder.call(function, [])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _compare_and_swap(typingctx, flags, index):
    """flags[index]: 0 -> 1 atomically (sequentially consistent); whether
    this call made the change."""
    if not (isinstance(flags, types.Array) and flags.dtype == types.int64):
        return None
    sig = types.boolean(flags, types.intp)

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        pointer = builder.gep(array.data, [args[1]])
        i64 = ir.IntType(64)
        result = builder.cmpxchg(pointer, ir.Constant(i64, 0), ir.Constant(i64, 1),
                                 "seq_cst", "seq_cst")
        return builder.extract_value(result, 1)

    return sig, codegen


@njit(cache=True, nogil=True)
def claim(flags, index):
    """Whether this thread takes piece ``index`` of the work: the first
    caller for that index gets True, every other False. flags: (n,) int64,
    zeros before the call's first claim."""
    return _compare_and_swap(flags, index)


@njit(cache=True, nogil=True)
def finish(counter):
    """Count one finished piece in ``counter[0]``, after this thread's
    writes for it (the atomic add orders them before the count)."""
    _atomic_increment(counter)


@njit(cache=True, nogil=True)
def started(sync):
    """Publish, as the first thing a task's kernel does, that a call's work
    has begun on a thread that has released the GIL: sync[1] = sync[0] (the
    call's number, which ``_pool`` writes there before handing out the
    tasks). sync: (2,) int64. A pool thread lingering in
    ``report_and_linger`` waits for this rather than for the call itself,
    so that it asks for the GIL only once the caller has let it go."""
    _atomic_store(sync[1:], _atomic_load(sync))


@njit(cache=True, nogil=True)
def report_and_linger(done, finished, sync, target, linger_ns):
    """In a pool thread after a call's tasks: add the ``finished`` tasks it
    ran to ``done[0]`` (the count the call's caller waits for), then wait up
    to ``linger_ns`` nanoseconds, spinning with the pause hint and yielding
    the core every 64 rounds, for ``sync[1]`` to reach ``target`` (the next
    call's number, published by ``started``), or for ``STARTED_GRACE_NS``
    after ``sync[0]`` has. Whether either happened. Both happen
    here, with the GIL released, so that neither the caller (which takes the
    GIL back once the count is in) nor the next call's kernel find it held.
    done: (1,) int64   sync: (2,) int64."""
    if finished:
        _atomic_add(done, finished)
    if linger_ns <= 0:
        return False
    entered = sync[1:]
    now = _monotonic_ns()
    deadline = now + linger_ns
    handed_out = 0  # when the call was first seen handed out, not yet started
    while True:
        for _ in range(64):
            if _atomic_load(entered) >= target:
                return True
            _pause()
        now = _monotonic_ns()
        if handed_out == 0 and _atomic_load(sync) >= target:
            handed_out = now
        if handed_out and now - handed_out >= STARTED_GRACE_NS:
            return True  # a task that publishes nothing: start anyway
        if now >= deadline:
            return False
        _sched_yield()


@njit(cache=True, nogil=True)
def wait_until(counter, target):
    """Return once ``counter[0]`` has reached ``target`` (the pieces that
    must be finished first); spins, then also yields the core at every
    round after ``SPINS_BEFORE_YIELD``."""
    spins = 0
    while _atomic_load(counter) < target:
        _pause()
        spins += 1
        if spins > SPINS_BEFORE_YIELD:
            _sched_yield()
