"""The conformance checks, as plain functions (no pytest needed).

Each check runs a backend through :func:`polylstm.lstm_forward` /
:func:`polylstm.lstm_backward` on seeded random inputs and compares it with
the NumPy reference computed in float64 on the same (dtype-rounded) inputs.
A check raises AssertionError with the worst element and the tolerance when
a backend disagrees.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Mapping, Optional

import numpy as np

from ..errors import UnsupportedFeatureError
from ..functional import lstm_backward, lstm_forward

#: Largest accepted error, as max|actual - reference| / max(1, max|reference|).
#: float32 is compared with a float64 reference, so it carries float32 rounding
#: accumulated over the sequence; float64 allows only summation-order effects.
DEFAULT_TOLERANCES = {"float32": 1e-4, "float64": 1e-10}
REFERENCE = "numpy"


@dataclasses.dataclass(frozen=True)
class Case:
    """One configuration: sizes T, B, I, H and the features switched on."""

    T: int = 7
    B: int = 3
    I: int = 5
    H: int = 4
    initial_state: bool = False
    lengths: bool = False
    reverse: bool = False
    peephole: bool = False
    seed: int = 0

    def requires(self) -> set:
        needed = set()
        if self.lengths:
            needed.add("lengths")
        if self.reverse:
            needed.add("reverse")
        if self.peephole:
            needed.add("peephole")
        return needed


def make_inputs(case: Case, dtype: str) -> dict:
    """Seeded inputs for ``case`` as NumPy arrays of ``dtype``.

    Returns x (T,B,I), w_ih (4H,I), w_hh (4H,H), b (4H,), h0, c0 (B,H) or None,
    peephole (3,H) or None, lengths (B,) or None, and incoming gradients
    dy (T,B,H), dh_n, dc_n (B,H).
    """
    rng = np.random.default_rng(1000 + case.seed)
    T, B, I, H = case.T, case.B, case.I, case.H
    scale = 1.0 / np.sqrt(max(I, H))

    def draw(*shape, s=1.0):
        return (rng.standard_normal(shape) * s).astype(dtype)

    inputs = {
        "x": draw(T, B, I),
        "w_ih": draw(4 * H, I, s=2 * scale),
        "w_hh": draw(4 * H, H, s=2 * scale),
        "b": draw(4 * H, s=0.5),
        "h0": draw(B, H, s=0.5) if case.initial_state else None,
        "c0": draw(B, H) if case.initial_state else None,
        "peephole": draw(3, H, s=0.5) if case.peephole else None,
        "lengths": None,
        "dy": draw(T, B, H),
        "dh_n": draw(B, H),
        "dc_n": draw(B, H),
    }
    if case.lengths:
        lengths = rng.integers(1, T + 1, size=B)
        lengths[0] = T  # the longest sequence may be any; make sure one is full
        if B > 1:
            lengths[-1] = 1  # and one is a single step
        inputs["lengths"] = lengths
    return inputs


def to_host(array):
    """A backend's array as a NumPy array (CuPy arrays are copied back)."""
    if array is None:
        return None
    if hasattr(array, "get") and type(array).__module__.split(".")[0] == "cupy":
        return array.get()
    return np.asarray(array)


def run(backend: str, inputs: Mapping, *, backward: bool = True, gates: bool = True,
        incoming: tuple = ("dy", "dh_n", "dc_n")) -> dict:
    """Forward (and backward) on ``backend``; every result copied to the host.

    Returns a dict with y, h_n, c_n, and when asked: tape_gates, tape_c,
    gate_i .. gate_c, dx, dw_ih, dw_hh, db, dh0, dc0, dpeephole.
    """
    out = lstm_forward(inputs["x"], inputs["w_ih"], inputs["w_hh"], inputs["b"], inputs["h0"], inputs["c0"],
                       peephole=inputs["peephole"], lengths=inputs["lengths"], reverse=inputs.get("reverse", False),
                       keep_tape=backward, return_gates=gates, backend=backend)
    result = {"y": out.y, "h_n": out.h_n, "c_n": out.c_n}
    if gates:
        for name in "ifgoc":
            result[f"gate_{name}"] = getattr(out.gates, name)
    if backward:
        result["tape_gates"] = out.tape.gates
        result["tape_c"] = out.tape.c
        grads = lstm_backward(out.tape, **{name: inputs[name] for name in incoming})
        for name in ("dx", "dw_ih", "dw_hh", "db", "dh0", "dc0", "dpeephole"):
            result[name] = getattr(grads, name)
    return result


def _reference_inputs(inputs: Mapping) -> dict:
    return {k: (v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)
            for k, v in inputs.items()}


def assert_close(what: str, actual, expected, dtype: str, tolerance: float) -> None:
    """Check dtype, shape and values of one result against the reference."""
    if expected is None:
        if actual is not None:
            raise AssertionError(f"{what}: expected None, got an array")
        return
    if actual is None:
        raise AssertionError(f"{what}: missing (None), expected shape {expected.shape}")
    actual_dtype = str(actual.dtype)
    host = to_host(actual)
    if actual_dtype != dtype:
        raise AssertionError(f"{what}: dtype {actual_dtype}, expected {dtype}")
    if host.shape != expected.shape:
        raise AssertionError(f"{what}: shape {host.shape}, expected {expected.shape}")
    if expected.size == 0:
        return
    nan_expected = np.isnan(expected)
    if not np.array_equal(np.isnan(host), nan_expected):
        raise AssertionError(f"{what}: NaN at {int(np.isnan(host).sum())} places, reference has {int(nan_expected.sum())}")
    diff = np.abs(host.astype(np.float64) - expected)
    diff[nan_expected] = 0
    scale = max(1.0, float(np.max(np.abs(np.where(nan_expected, 0, expected)))))
    error = float(diff.max()) / scale
    if not error <= tolerance:
        where = np.unravel_index(int(np.argmax(diff)), diff.shape)
        raise AssertionError(
            f"{what}: error {error:.3g} > tolerance {tolerance:.1g} ({dtype}); worst at index {where}: "
            f"got {host[where]!r}, reference {expected[where]!r}"
        )


def compare_with_reference(backend: str, case: Case, dtype: str, tolerance: float, *,
                           backward: bool, gates: bool, incoming=("dy", "dh_n", "dc_n")) -> None:
    inputs = make_inputs(case, dtype)
    inputs["reverse"] = case.reverse
    got = run(backend, inputs, backward=backward, gates=gates, incoming=incoming)
    want = run(REFERENCE, _reference_inputs(inputs), backward=backward, gates=gates, incoming=incoming)
    for name, expected in want.items():
        assert_close(name, got[name], to_host(expected), dtype, tolerance)


# -- the checks -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Check:
    """A named check: what it needs from a backend and the function that runs it.

    function(backend_name, dtype, tolerance) raises AssertionError on failure.
    """

    name: str
    requires: frozenset
    function: Callable[[str, str, float], None]
    doc: str


CHECKS: dict[str, Check] = {}


def _check(name: str, requires=(), doc: str = ""):
    def add(function):
        CHECKS[name] = Check(name, frozenset(requires), function, doc or (function.__doc__ or "").strip())
        return function

    return add


def _case_check(name: str, case: Case, *, backward: bool, gates: bool = False, doc: str,
                incoming=("dy", "dh_n", "dc_n")) -> None:
    requires = set(case.requires())
    if backward:
        requires.add("backward")
    if gates:
        requires.add("gates")

    def function(backend, dtype, tolerance):
        compare_with_reference(backend, case, dtype, tolerance, backward=backward, gates=gates, incoming=incoming)

    CHECKS[name] = Check(name, frozenset(requires), function, doc)


_case_check("forward", Case(), backward=False, doc="y, h_n, c_n from a zero initial state")
_case_check("forward_initial_state", Case(initial_state=True, seed=1), backward=False, doc="given h0, c0")
_case_check("forward_single_step", Case(T=1, B=2, I=3, H=5, initial_state=True, seed=2), backward=False,
            doc="T = 1")
_case_check("forward_odd_sizes", Case(T=4, B=1, I=17, H=33, initial_state=True, seed=3), backward=False,
            doc="B = 1 and sizes that are no multiple of a vector width")
_case_check("forward_medium", Case(T=12, B=32, I=48, H=96, initial_state=True, lengths=True, seed=4),
            backward=False, doc="a medium shape with lengths (exercises blocked paths)")
_case_check("gates", Case(initial_state=True, seed=5), backward=False, gates=True,
            doc="gate trajectories i, f, g, o and cell c over time")
_case_check("lengths", Case(T=9, B=5, initial_state=True, lengths=True, seed=6), backward=False, gates=True,
            doc="variable lengths: state held, zeros at padded steps")
_case_check("reverse", Case(initial_state=True, reverse=True, seed=7), backward=False, gates=True,
            doc="reverse direction")
_case_check("reverse_lengths", Case(T=9, B=5, initial_state=True, lengths=True, reverse=True, seed=8),
            backward=False, gates=True, doc="reverse direction starting at each sequence's last valid step")
_case_check("peephole", Case(initial_state=True, peephole=True, seed=9), backward=False, gates=True,
            doc="peephole connections")
_case_check("backward", Case(initial_state=True, seed=10), backward=True,
            doc="every gradient, with dy, dh_n and dc_n")
_case_check("backward_only_final_state", Case(initial_state=True, seed=11), backward=True,
            incoming=("dh_n", "dc_n"), doc="gradients when only dh_n, dc_n are given (dy omitted)")
_case_check("backward_only_outputs", Case(seed=12), backward=True, incoming=("dy",),
            doc="gradients when only dy is given")
_case_check("backward_single_step", Case(T=1, B=2, I=3, H=5, initial_state=True, seed=13), backward=True,
            doc="T = 1 backward")
_case_check("backward_lengths", Case(T=9, B=5, initial_state=True, lengths=True, seed=14), backward=True,
            doc="backward with variable lengths (dy at padded steps is ignored)")
_case_check("backward_reverse", Case(T=9, B=5, initial_state=True, lengths=True, reverse=True, seed=15),
            backward=True, doc="backward of a reverse direction with lengths")
_case_check("backward_peephole", Case(initial_state=True, peephole=True, seed=16), backward=True,
            doc="peephole gradients")
_case_check("backward_everything", Case(T=10, B=6, I=7, H=9, initial_state=True, lengths=True, reverse=True,
                                        peephole=True, seed=17), backward=True, gates=True,
            doc="lengths, reverse, peepholes and initial state together")
_case_check("backward_medium", Case(T=12, B=32, I=48, H=96, initial_state=True, lengths=True, seed=18),
            backward=True, doc="a medium shape backward (exercises blocked paths)")


def _snapshot(inputs: Mapping) -> dict:
    return {k: v.copy() for k, v in inputs.items() if isinstance(v, np.ndarray)}


def _capabilities(backend: str) -> frozenset:
    from .._registry import REGISTRY

    return REGISTRY.get(backend).capabilities


def _full_featured_case(backend: str, **sizes) -> Case:
    """A case using every optional feature the backend announces, so the
    generic checks below still run (on fewer features) for a partial backend."""
    capabilities = _capabilities(backend)
    return Case(initial_state=True, lengths="lengths" in capabilities, peephole="peephole" in capabilities,
                **sizes)


@_check("inputs_unchanged", requires={"backward"})
def _inputs_unchanged(backend, dtype, tolerance):
    """Forward and backward leave every input array bit-for-bit unchanged."""
    inputs = make_inputs(_full_featured_case(backend, T=6, B=4, seed=19), dtype)
    before = _snapshot(inputs)
    run(backend, inputs, gates="gates" in _capabilities(backend))
    for name, copy in before.items():
        if not np.array_equal(inputs[name], copy, equal_nan=True):
            raise AssertionError(f"backend {backend!r} modified its input {name}")


@_check("deterministic", requires={"backward"})
def _deterministic(backend, dtype, tolerance):
    """Two identical calls give bit-identical outputs and gradients."""
    inputs = make_inputs(_full_featured_case(backend, T=8, B=6, I=9, H=10, seed=20), dtype)
    first = run(backend, inputs, gates=False)
    second = run(backend, inputs, gates=False)
    for name in first:
        a, b = to_host(first[name]), to_host(second[name])
        if a is None and b is None:
            continue
        if not np.array_equal(a, b, equal_nan=True):
            raise AssertionError(f"{name} differs between two identical calls")


@_check("nan_propagates")
def _nan_propagates(backend, dtype, tolerance):
    """A NaN in one sequence's input gives NaN outputs for that sequence only (no error)."""
    inputs = make_inputs(Case(T=5, B=3, seed=21), dtype)
    inputs["x"][2, 1, 0] = np.nan
    out = run(backend, inputs, backward=False, gates=False)
    y = to_host(out["y"])
    if not np.isnan(y[2:, 1]).all():
        raise AssertionError("a NaN in x[2, 1] did not reach y[2:, 1]")
    if np.isnan(y[:2]).any() or np.isnan(y[:, [0, 2]]).any():
        raise AssertionError("a NaN in sequence 1 leaked into other sequences or earlier steps")


# -- running ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CheckResult:
    """Outcome of one check in one dtype.

    status: 'pass', 'fail', 'xfail' (failed as declared) or 'xpass' (declared to
    fail but passed: a failure, so stale declarations get noticed).
    """

    check: str
    dtype: str
    status: str
    message: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "xfail")


def expected_failure_reason(check: Check, dtype: str, expected_failures: Mapping[str, str]) -> Optional[str]:
    """Why ``check`` in ``dtype`` is declared to fail, or None.

    expected_failures maps a check name, a capability (e.g. 'peephole') or a
    dtype to a reason; a capability covers every check that requires it.
    """
    for key in (check.name, dtype, *sorted(check.requires)):
        if key in expected_failures:
            return expected_failures[key]
    return None


def run_check(backend: str, check_name: str, dtype: str, *, expected_failures: Mapping[str, str] = None,
              tolerances: Mapping[str, float] = None) -> CheckResult:
    """Run one check; never raises for a backend's failure (it is in the result)."""
    check = CHECKS[check_name]
    tolerance = {**DEFAULT_TOLERANCES, **(tolerances or {})}[dtype]
    reason = expected_failure_reason(check, dtype, expected_failures or {})
    start = time.perf_counter()
    try:
        check.function(backend, dtype, tolerance)
    except (AssertionError, UnsupportedFeatureError) as exc:
        message = f"{type(exc).__name__}: {exc}"
        status = "xfail" if reason is not None else "fail"
        if reason is not None:
            message = f"expected failure ({reason}): {message}"
    except Exception as exc:  # a crash is a failure too, reported with its type
        message = f"{type(exc).__name__}: {exc}"
        status = "xfail" if reason is not None else "fail"
    else:
        status, message = ("xpass", f"declared to fail ({reason}) but passed") if reason else ("pass", "")
    return CheckResult(check_name, dtype, status, message, time.perf_counter() - start)


def run_conformance(backend: str, *, dtypes=("float32", "float64"), checks=None,
                    expected_failures: Mapping[str, str] = None, tolerances: Mapping[str, float] = None,
                    progress: Callable[[CheckResult], None] = None) -> list[CheckResult]:
    """Run the whole kit (or the named ``checks``) against ``backend``."""
    results = []
    for name in checks or CHECKS:
        for dtype in dtypes:
            result = run_check(backend, name, dtype, expected_failures=expected_failures, tolerances=tolerances)
            results.append(result)
            if progress is not None:
                progress(result)
    return results
