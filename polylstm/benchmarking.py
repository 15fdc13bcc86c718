"""Measure LSTM implementations side by side: polylstm backends, PyTorch, ONNX Runtime.

This module is what ``benchmarks/`` (pytest-benchmark) and a ``polylstm bench``
command line use, so both time exactly the same calls. Importing it imports
neither numba nor torch nor onnxruntime; a runner imports its library when it
prepares a call.

The pieces:

* :data:`SHAPES` -- the shape grid (T, B, I, H) of the numba issue; :class:`Shape`
  counts FLOPs: forward ``2*T*B*(I+H)*4H`` (input and recurrent products),
  forward+backward three times that (backward has two products per forward one:
  ``da @ W`` for dx/dh and ``da.T @ [x|h]`` for the weights).
* :func:`make_inputs` -- seeded inputs of one shape and dtype.
* :func:`list_runners` -- one :class:`Runner` per registered polylstm backend,
  plus ``pytorch`` (``torch.nn.LSTM`` on the CPU; fwd+bwd also computes the input
  gradient) and ``onnxruntime`` (the ONNX ``LSTM`` operator, forward only).
* :func:`check` -- a runner's result on the benchmark inputs against the NumPy
  reference computed in float64. :func:`measure` checks before it times, and a
  runner that computes something else is reported as ``"wrong"``, never timed.
* :func:`time_call` / :func:`measure` -- wall-clock medians; :class:`Measurement`.
* :func:`compare` / :func:`format_table` -- a grid of measurements and a
  Markdown table with ratios to chosen baselines.

Example::

    from polylstm import benchmarking as bm
    runners = {r.name: r for r in bm.list_runners()}  # numba, numpy, pytorch, onnxruntime
    m = bm.measure(runners["numba"], bm.SHAPES[0], "forward", "float32", repeats=10)
    print(m.median_s, m.gflops)
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import statistics
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

MODES = ("forward", "forward_backward")
DTYPES = ("float32", "float64")

#: A runner's outputs pass the check when, for every output array,
#: ``max|out - ref| <= tol * max(1, max|ref|)`` with ref the float64 reference.
#: float32 is loose enough for fast-math activations (oneDNN, ours) over 200 steps.
TOLERANCES = {"float32": 2e-3, "float64": 1e-9}

#: Seconds to wait after the reference check and before the warm-up of each
#: case. BLAS and OpenMP thread pools (NumPy's OpenBLAS computing the
#: reference, the previous runner's pool) keep spinning for up to ~0.1 s after
#: their last call; on a 2-core machine a spinning worker took a core from the
#: next runner (measured: 4.5 ms -> 7.5 ms for numba at T100-B16-I128-H128
#: right after a NumPy product). Waiting gives every runner idle neighbours.
SETTLE_S = 0.3

#: Minimum seconds of untimed warm-up calls after the settle pause: one call
#: of a sub-millisecond case does not bring clocks, caches and thread pools
#: back (measured: T200-B1-I32-H64 forward 0.26 ms warm, 0.37-0.41 ms after
#: the pause with a single warm-up call, for every runner alike).
WARMUP_S = 0.1

#: Seconds of timed calls per runner and round in ``benchmarks/report.py``
#: and ``polylstm bench`` (``min_time_s`` of :func:`time_call`; at least
#: ``repeats`` calls in any case). With a fixed count of 3 calls x 3 rounds,
#: the medians of sub-millisecond cases swung by +-30% between runs on the
#: shared 2-core box; a tenth of a second gives them hundreds of calls and
#: costs the large cases nothing (one call is longer).
MIN_TIME_S = 0.1


@dataclasses.dataclass(frozen=True)
class Shape:
    """One problem size: T time steps, B batch, I input size, H hidden size."""

    T: int
    B: int
    I: int  # noqa: E741 - the conventional name of the input size
    H: int

    @property
    def label(self) -> str:
        """Short id used in test names and tables, e.g. ``T100-B64-I256-H256``."""
        return f"T{self.T}-B{self.B}-I{self.I}-H{self.H}"

    def flops(self, mode: str) -> int:
        """Floating-point operations of one call in ``mode`` (products only)."""
        forward = 2 * self.T * self.B * (self.I + self.H) * 4 * self.H
        if mode == "forward":
            return forward
        if mode == "forward_backward":
            return 3 * forward
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")


#: The shape grid of the Numba backend's issue (small to large).
SHAPES = (
    Shape(100, 64, 256, 256),
    Shape(100, 64, 512, 512),
    Shape(100, 16, 128, 128),
    Shape(200, 1, 32, 64),
    Shape(50, 256, 1024, 1024),
)


@dataclasses.dataclass
class Inputs:
    """Host NumPy inputs of one benchmark case, all of ``dtype``.

    x: (T, B, I)   w_ih: (4H, I)   w_hh: (4H, H)   b: (4H,)   h0, c0: (B, H)
    dy: (T, B, H) the incoming gradient used by forward_backward.
    """

    shape: Shape
    dtype: str
    seed: int
    x: np.ndarray
    w_ih: np.ndarray
    w_hh: np.ndarray
    b: np.ndarray
    h0: np.ndarray
    c0: np.ndarray
    dy: np.ndarray


def make_inputs(shape: Shape, dtype: str = "float32", seed: int = 0) -> Inputs:
    """Seeded inputs: weights and bias U(-1/sqrt(H), 1/sqrt(H)) (PyTorch's
    initialisation), x and dy standard normal, h0 and c0 U(-0.5, 0.5)."""
    rng = np.random.default_rng(seed)
    T, B, I, H = shape.T, shape.B, shape.I, shape.H
    k = 1.0 / np.sqrt(H)

    def uniform(size, bound):
        return rng.uniform(-bound, bound, size).astype(dtype)

    return Inputs(
        shape=shape, dtype=dtype, seed=seed,
        x=rng.standard_normal((T, B, I)).astype(dtype),
        w_ih=uniform((4 * H, I), k), w_hh=uniform((4 * H, H), k), b=uniform((4 * H,), k),
        h0=uniform((B, H), 0.5), c0=uniform((B, H), 0.5),
        dy=rng.standard_normal((T, B, H)).astype(dtype),
    )


@dataclasses.dataclass
class Result:
    """A runner's outputs as host NumPy arrays.

    y: (T, B, H)   h_n, c_n: (B, H)   grads: None for forward, else a dict
    with dx (T, B, I), dw_ih (4H, I), dw_hh (4H, H), db (4H,).
    """

    y: np.ndarray
    h_n: np.ndarray
    c_n: np.ndarray
    grads: Optional[dict] = None


@dataclasses.dataclass
class Prepared:
    """A call ready to be timed: ``run()`` is the timed part; ``collect(run())``
    turns its return value into a :class:`Result` (not timed)."""

    run: Callable[[], Any]
    collect: Callable[[Any], Result]


@dataclasses.dataclass
class Runner:
    """One implementation that can be measured.

    name: ``"numba"``, ``"numpy"``, ``"pytorch"``, ``"onnxruntime"``...
    kind: ``"polylstm"`` (a registered backend) or ``"comparator"``.
    modes: the modes it supports.   description, version: for tables.
    unavailable: None when it can run here, else why not.
    prepare: ``prepare(inputs, mode, threads) -> Prepared``.
    """

    name: str
    kind: str
    modes: tuple
    description: str
    prepare: Callable[[Inputs, str, int], Prepared]
    version: Optional[str] = None
    unavailable: Optional[str] = None


# -- polylstm backends ----------------------------------------------------------

def _host(array) -> np.ndarray:
    """A backend's array as a host NumPy array (CuPy arrays are copied back)."""
    if hasattr(array, "get") and type(array).__module__.split(".")[0] == "cupy":
        return array.get()
    return np.asarray(array)


def _polylstm_prepare(name: str) -> Callable[[Inputs, str, int], Prepared]:
    def prepare(inputs: Inputs, mode: str, threads: int) -> Prepared:
        import polylstm

        backend = polylstm.get_backend(name)
        convert = backend.asarray
        x, w_ih, w_hh, b, h0, c0, dy = (convert(a) for a in (
            inputs.x, inputs.w_ih, inputs.w_hh, inputs.b, inputs.h0, inputs.c0, inputs.dy))
        xp = backend.xp
        # Device backends return before the work is done; time until it is.
        if getattr(xp, "cuda", None) is not None:
            def sync():
                xp.cuda.Device().synchronize()
        else:
            def sync():
                return None

        if mode == "forward":
            def run():
                out = polylstm.lstm_forward(x, w_ih, w_hh, b, h0, c0, backend=name)
                sync()
                return out

            def collect(out):
                return Result(_host(out.y), _host(out.h_n), _host(out.c_n))
        else:
            def run():
                out = polylstm.lstm_forward(x, w_ih, w_hh, b, h0, c0, keep_tape=True, backend=name)
                grads = polylstm.lstm_backward(out.tape, dy)
                sync()
                return out, grads

            def collect(value):
                out, g = value
                return Result(_host(out.y), _host(out.h_n), _host(out.c_n),
                              {"dx": _host(g.dx), "dw_ih": _host(g.dw_ih),
                               "dw_hh": _host(g.dw_hh), "db": _host(g.db)})
        return Prepared(run, collect)

    return prepare


# -- PyTorch ----------------------------------------------------------------------

def _torch_prepare(inputs: Inputs, mode: str, threads: int, device: str = "cpu") -> Prepared:
    """torch.nn.LSTM with polylstm's weights (b = b_ih, b_hh = 0) on ``device``.

    device: "cpu" (oneDNN) or "cuda" (cuDNN; TF32 switched off so both sides
    compute in strict float32, and every timed call ends with a device sync).
    """
    import torch

    torch.set_num_threads(threads)
    on_gpu = device == "cuda"
    if on_gpu:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    dtype = getattr(torch, inputs.dtype)
    s = inputs.shape
    lstm = torch.nn.LSTM(s.I, s.H).to(device=device, dtype=dtype)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(inputs.w_ih))
        lstm.weight_hh_l0.copy_(torch.from_numpy(inputs.w_hh))
        # polylstm's one bias b is PyTorch's b_ih + b_hh.
        lstm.bias_ih_l0.copy_(torch.from_numpy(inputs.b))
        lstm.bias_hh_l0.zero_()
    h0 = torch.from_numpy(inputs.h0)[None].to(device)
    c0 = torch.from_numpy(inputs.c0)[None].to(device)
    dy = torch.from_numpy(inputs.dy).to(device)

    def host(tensor):
        return tensor.detach().cpu().numpy()

    if mode == "forward":
        x = torch.from_numpy(inputs.x).to(device)

        def run():
            with torch.inference_mode():
                out = lstm(x, (h0, c0))
            sync()
            return out

        def collect(out):
            y, (h_n, c_n) = out
            return Result(host(y), host(h_n[0]), host(c_n[0]))
    else:
        # A copy: the leaf that collects x.grad must not alias the caller's array.
        x = torch.from_numpy(inputs.x.copy()).to(device).requires_grad_(True)

        def run():
            x.grad = None
            for param in lstm.parameters():
                param.grad = None
            y, (h_n, c_n) = lstm(x, (h0, c0))
            y.backward(dy)
            sync()
            return y, h_n, c_n

        def collect(out):
            y, h_n, c_n = out
            grads = {"dx": host(x.grad), "dw_ih": host(lstm.weight_ih_l0.grad),
                     "dw_hh": host(lstm.weight_hh_l0.grad), "db": host(lstm.bias_ih_l0.grad)}
            return Result(host(y), host(h_n[0]), host(c_n[0]), grads)
    return Prepared(run, collect)


def _cudnn_prepare(inputs: Inputs, mode: str, threads: int) -> Prepared:
    return _torch_prepare(inputs, mode, threads, device="cuda")


def _cudnn_runner() -> Runner:
    """The ``pytorch-cudnn`` comparator. Asking whether a CUDA device exists
    imports torch, so list_runners builds it only when it is named."""
    if importlib.util.find_spec("torch") is None:
        return Runner("pytorch-cudnn", "comparator", MODES, "torch.nn.LSTM on the GPU (cuDNN)",
                      _cudnn_prepare, None, "torch not installed")
    import torch

    version = f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}"
    reason = None if torch.cuda.is_available() else "no CUDA device for torch"
    return Runner("pytorch-cudnn", "comparator", MODES, "torch.nn.LSTM on the GPU (cuDNN)",
                  _cudnn_prepare, version, reason)


# -- ONNX Runtime -------------------------------------------------------------------

def _ifgo_to_iofc(w: np.ndarray, H: int) -> np.ndarray:
    """Reorder the 4H gate rows from polylstm's i, f, g, o to ONNX's i, o, f, c."""
    i, f, g, o = (w[k * H:(k + 1) * H] for k in range(4))
    return np.concatenate([i, o, f, g])


def _onnx_lstm_model(inputs: Inputs):
    """An ONNX model with one LSTM node; weights are initializers, inputs
    X (T, B, I), initial_h / initial_c (1, B, H); outputs Y, Y_h, Y_c."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    s = inputs.shape
    elem = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE}[inputs.dtype]
    W = _ifgo_to_iofc(inputs.w_ih, s.H)[None]
    R = _ifgo_to_iofc(inputs.w_hh, s.H)[None]
    B = np.concatenate([_ifgo_to_iofc(inputs.b, s.H), np.zeros(4 * s.H, inputs.dtype)])[None]
    node = helper.make_node("LSTM", ["X", "W", "R", "B", "", "initial_h", "initial_c"],
                            ["Y", "Y_h", "Y_c"], hidden_size=s.H)
    graph = helper.make_graph(
        [node], "polylstm_bench_lstm",
        [helper.make_tensor_value_info("X", elem, [s.T, s.B, s.I]),
         helper.make_tensor_value_info("initial_h", elem, [1, s.B, s.H]),
         helper.make_tensor_value_info("initial_c", elem, [1, s.B, s.H])],
        [helper.make_tensor_value_info("Y", elem, [s.T, 1, s.B, s.H]),
         helper.make_tensor_value_info("Y_h", elem, [1, s.B, s.H]),
         helper.make_tensor_value_info("Y_c", elem, [1, s.B, s.H])],
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"),
                     numpy_helper.from_array(B, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8  # readable by every onnxruntime of the last years
    onnx.checker.check_model(model)
    return model


def _onnxruntime_prepare(inputs: Inputs, mode: str, threads: int) -> Prepared:
    if mode != "forward":
        raise NotImplementedError("onnxruntime runs inference only (forward)")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(_onnx_lstm_model(inputs).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feeds = {"X": inputs.x, "initial_h": inputs.h0[None], "initial_c": inputs.c0[None]}

    def run():
        return session.run(None, feeds)

    def collect(out):
        y, h_n, c_n = out
        return Result(y[:, 0], h_n[0], c_n[0])

    return Prepared(run, collect)


def _version_of(distribution: str) -> Optional[str]:
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def list_runners(include_unavailable: bool = False, names: Optional[Sequence[str]] = None) -> list:
    """The registered polylstm backends, then the comparators ``pytorch`` and
    ``onnxruntime`` (and ``pytorch-cudnn``, only when named: its availability
    check imports torch).

    names: keep only these runners, in this order. Without ``names``, backends
    kept out of automatic selection (emulators, example plugins) are left out.
    A runner that cannot run here is left out, or listed with ``unavailable``
    set when ``include_unavailable``. Nothing heavy is imported.
    """
    import polylstm

    runners = []
    for status in polylstm.available_backends():
        if status.broken or (names is None and not status.auto_select):
            continue
        modes = MODES  # the conformance kit makes backward part of the contract
        runners.append(Runner(status.name, "polylstm", modes, status.description,
                              _polylstm_prepare(status.name), status.version,
                              None if status.available else (status.reason or "unavailable")))
    torch_missing = importlib.util.find_spec("torch") is None
    runners.append(Runner("pytorch", "comparator", MODES, "torch.nn.LSTM on the CPU",
                          _torch_prepare, _version_of("torch"),
                          "torch not installed" if torch_missing else None))
    ort_missing = (importlib.util.find_spec("onnxruntime") is None
                   or importlib.util.find_spec("onnx") is None)
    runners.append(Runner("onnxruntime", "comparator", ("forward",),
                          "ONNX Runtime LSTM operator (CPU execution provider)",
                          _onnxruntime_prepare, _version_of("onnxruntime"),
                          "onnxruntime or onnx not installed" if ort_missing else None))
    if names is not None and "pytorch-cudnn" in names:
        runners.append(_cudnn_runner())
    if names is not None:
        by_name = {r.name: r for r in runners}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ValueError(f"unknown runner(s) {unknown}; known: {sorted(by_name)}")
        runners = [by_name[n] for n in names]
    if not include_unavailable:
        runners = [r for r in runners if r.unavailable is None]
    return runners


# -- reference check --------------------------------------------------------------

_REFERENCE_CACHE: dict = {}


def reference_result(inputs: Inputs, mode: str) -> Result:
    """The NumPy reference backend's result on ``inputs`` computed in float64
    (cached per shape, dtype, seed and mode for the life of the process)."""
    key = (inputs.shape, inputs.dtype, inputs.seed, mode)
    if key not in _REFERENCE_CACHE:
        import polylstm

        f64 = [np.asarray(a, np.float64) for a in (
            inputs.x, inputs.w_ih, inputs.w_hh, inputs.b, inputs.h0, inputs.c0)]
        out = polylstm.lstm_forward(*f64, keep_tape=mode != "forward", backend="numpy")
        grads = None
        if mode != "forward":
            g = polylstm.lstm_backward(out.tape, np.asarray(inputs.dy, np.float64))
            grads = {"dx": g.dx, "dw_ih": g.dw_ih, "dw_hh": g.dw_hh, "db": g.db}
        _REFERENCE_CACHE.clear()  # large shapes: keep one reference alive at a time
        _REFERENCE_CACHE[key] = Result(out.y, out.h_n, out.c_n, grads)
    return _REFERENCE_CACHE[key]


def max_error(result: Result, reference: Result) -> float:
    """max over outputs of ``max|out - ref| / max(1, max|ref|)``; inf on a
    shape mismatch or a NaN."""
    pairs = [(result.y, reference.y), (result.h_n, reference.h_n), (result.c_n, reference.c_n)]
    if reference.grads is not None:
        if result.grads is None:
            return float("inf")
        pairs += [(result.grads[k], reference.grads[k]) for k in reference.grads]
    worst = 0.0
    for out, ref in pairs:
        out = np.asarray(out, np.float64)
        if out.shape != ref.shape:
            return float("inf")
        err = float(np.max(np.abs(out - ref))) / max(1.0, float(np.max(np.abs(ref))))
        if not np.isfinite(err):
            return float("inf")
        worst = max(worst, err)
    return worst


def check(prepared: Prepared, inputs: Inputs, mode: str) -> float:
    """Run ``prepared`` once and return its :func:`max_error` against the reference."""
    return max_error(prepared.collect(prepared.run()), reference_result(inputs, mode))


# -- timing -------------------------------------------------------------------------

def time_call(function: Callable[[], Any], repeats: int = 5, warmup: int = 1,
              warmup_s: float = 0.0, min_time_s: float = 0.0) -> list:
    """Wall-clock seconds of timed calls after untimed ones: at least
    ``warmup`` untimed calls, and more until ``warmup_s`` seconds have passed;
    then at least ``repeats`` timed calls, and more until they add up to
    ``min_time_s`` seconds (a sub-millisecond case then gets hundreds of
    calls instead of a handful, see :data:`MIN_TIME_S`)."""
    start = time.perf_counter()
    done = 0
    while done < warmup or time.perf_counter() - start < warmup_s:
        function()
        done += 1
    times = []
    timed = 0.0
    while len(times) < repeats or timed < min_time_s:
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
        timed += times[-1]
    return times


@dataclasses.dataclass
class Measurement:
    """One runner on one case.

    status: ``"ok"`` (checked, then timed), ``"wrong"`` (failed the reference
    check: not timed), ``"unsupported"`` (mode not offered), ``"unavailable"``
    or ``"error"`` (it raised; ``message`` says what).
    median_s: median wall-clock seconds; gflops: FLOPs / median / 1e9.
    max_error: the check's error (None when not checked).
    """

    runner: str
    shape: Shape
    mode: str
    dtype: str
    status: str
    median_s: Optional[float] = None
    times_s: tuple = ()
    gflops: Optional[float] = None
    max_error: Optional[float] = None
    message: str = ""


def default_threads() -> int:
    """Threads given to every runner: the CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def measure(runner: Runner, shape: Shape, mode: str = "forward", dtype: str = "float32",
            repeats: int = 5, warmup: int = 1, seed: int = 0, threads: Optional[int] = None,
            verify: bool = True, inputs: Optional[Inputs] = None,
            settle_s: float = SETTLE_S, min_time_s: float = 0.0) -> Measurement:
    """Check ``runner`` against the reference on seeded inputs, then time it.

    The check's call also serves as the first warm-up (JIT compilation, weight
    packing); then a pause of ``settle_s`` (see :data:`SETTLE_S`), ``warmup``
    more untimed calls (continued for :data:`WARMUP_S` after a pause), and
    ``repeats`` timed ones, continued until they add up to ``min_time_s``.
    """
    def outcome(status, **kw):
        return Measurement(runner.name, shape, mode, dtype, status, **kw)

    if runner.unavailable is not None:
        return outcome("unavailable", message=runner.unavailable)
    if mode not in runner.modes:
        return outcome("unsupported", message=f"{runner.name} has no {mode}")
    inputs = inputs if inputs is not None else make_inputs(shape, dtype, seed)
    threads = threads or default_threads()
    try:
        prepared = runner.prepare(inputs, mode, threads)
        error = None
        if verify:
            error = check(prepared, inputs, mode)
            if not error <= TOLERANCES[dtype]:
                return outcome("wrong", max_error=error,
                               message=f"max error {error:.3g} > tolerance {TOLERANCES[dtype]:g}")
        time.sleep(settle_s)
        times = time_call(prepared.run, repeats, warmup, warmup_s=WARMUP_S if settle_s else 0.0,
                          min_time_s=min_time_s)
    except Exception as exc:  # a benchmark grid reports a failing runner and goes on
        return outcome("error", message=f"{type(exc).__name__}: {exc}")
    median = statistics.median(times)
    return outcome("ok", median_s=median, times_s=tuple(times),
                   gflops=shape.flops(mode) / median / 1e9, max_error=error)


def measure_gemm_ceiling(dtype: str = "float32", n: int = 2048, repeats: int = 9) -> float:
    """GFLOP/s of one (n, n) @ (n, n) product through NumPy's BLAS: the
    fastest of ``repeats`` calls, since a ceiling is what the machine can do
    (a median moved with a neighbour's load: 107 GFLOP/s in one run on the
    2-core box where the best calls reach 200)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = np.empty((n, n), dtype)
    times = time_call(lambda: np.matmul(a, b, out=out), repeats, warmup=1)
    return 2 * n ** 3 / min(times) / 1e9


def compare(runners: Sequence[Runner], shapes: Sequence[Shape] = SHAPES,
            modes: Sequence[str] = MODES, dtype: str = "float32", repeats: int = 5,
            warmup: int = 1, threads: Optional[int] = None, rounds: int = 1,
            progress: Optional[Callable[[Measurement], None]] = None,
            min_time_s: float = 0.0) -> list:
    """Measure every runner on every shape and mode on the same inputs.

    rounds: each case is timed in ``rounds`` rounds; every round times every
    runner (``warmup`` + ``repeats`` calls, after the settle pause; timed
    calls continue until they add up to ``min_time_s``), starting
    with a different runner each round, and a runner's median is taken over
    all its rounds. On a shared machine a burst of foreign load then lands on
    every runner alike instead of on whichever ran at the time, which keeps the
    ratios honest. Only the first round checks against the reference.
    ``progress`` is called with each case's merged result.
    """
    results = []
    for shape in shapes:
        inputs = make_inputs(shape, dtype)
        for mode in modes:
            active = [r for r in runners if mode in r.modes]
            merged = {}
            for k in range(max(1, rounds)):
                order = active[k % len(active):] + active[:k % len(active)] if active else []
                for runner in order:
                    previous = merged.get(runner.name)
                    if previous is not None and previous.status != "ok":
                        continue  # wrong, failed or unavailable: reported once, not timed
                    m = measure(runner, shape, mode, dtype, repeats, warmup, threads=threads,
                                verify=previous is None, inputs=inputs, min_time_s=min_time_s)
                    if previous is None or m.status != "ok":
                        merged[runner.name] = m
                        continue
                    times = previous.times_s + m.times_s
                    median = statistics.median(times)
                    merged[runner.name] = dataclasses.replace(
                        previous, times_s=times, median_s=median,
                        gflops=shape.flops(mode) / median / 1e9)
            for runner in active:
                results.append(merged[runner.name])
                if progress is not None:
                    progress(merged[runner.name])
    return results


def format_table(measurements: Sequence[Measurement], baselines: Sequence[str] = ("pytorch", "onnxruntime"),
                 ceiling_gflops: Optional[float] = None) -> str:
    """Markdown table: one row per measurement, grouped by shape and mode, with
    the ratio of each median to each baseline's median on the same case
    (``< 1`` is faster than the baseline) and, given ``ceiling_gflops``,
    the share of that ceiling reached."""
    medians = {(m.shape, m.mode, m.runner): m.median_s for m in measurements if m.status == "ok"}
    head = ["shape (T, B, I, H)", "mode", "runner", "median ms", "GFLOP/s"]
    if ceiling_gflops:
        head.append("% ceiling")
    head += [f"/ {b}" for b in baselines]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in measurements:
        shape = f"{m.shape.T}, {m.shape.B}, {m.shape.I}, {m.shape.H}"
        if m.status != "ok":
            row = [shape, m.mode, m.runner, m.status, m.message or ""]
            row += [""] * (len(head) - len(row))
        else:
            row = [shape, m.mode, m.runner, f"{m.median_s * 1e3:.3f}", f"{m.gflops:.1f}"]
            if ceiling_gflops:
                row.append(f"{100 * m.gflops / ceiling_gflops:.0f}%")
            for b in baselines:
                base = medians.get((m.shape, m.mode, b))
                row.append(f"{m.median_s / base:.2f}" if base else "")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
