"""The adding problem (Hochreiter & Schmidhuber 1997), polylstm's end-to-end demo.

Each input sequence has T steps of two features: a value drawn from U(0, 1)
and a marker that is 1 at exactly two steps (one in the first half, one in the
second) and 0 elsewhere. The target is the sum of the two marked values. The
trivial answer (always 1, the target's mean) scores MSE = Var(u1 + u2) = 1/6
~ 0.167; a model that beats it clearly has learned to carry information across
T steps. A plain tanh RNN, trained the same way, usually does not at T = 100;
an LSTM does within a few hundred Adam steps.

Used by ``polylstm demo`` (:mod:`polylstm.cli`); importable for your own runs::

    from polylstm.demo import DemoConfig, train_adding
    result = train_adding(DemoConfig(seq_len=50, steps=300))
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Optional

import numpy as np

from . import init as _init
from .errors import InputError
from .module import LSTM
from .nn import Adam, Grads, Linear, array_module, clip_grad_norm, mse_loss, prefixed

#: MSE of always answering 1: Var(U(0,1) + U(0,1)) = 2 * 1/12.
TRIVIAL_MSE = 1.0 / 6.0


def adding_problem(rng: np.random.Generator, batch: int, seq_len: int, dtype="float32"):
    """One batch of the adding problem.

    Returns x: (T, B, 2) with x[..., 0] values ~ U(0, 1) and x[..., 1] the two
    markers, and target: (B, 1), the sum of the two marked values.
    """
    if seq_len < 2:
        raise InputError(f"seq_len: expected at least 2, got {seq_len}")
    values = rng.random((seq_len, batch))
    half = seq_len // 2
    first = rng.integers(0, half, size=batch)
    second = rng.integers(half, seq_len, size=batch)
    markers = np.zeros((seq_len, batch))
    cols = np.arange(batch)
    markers[first, cols] = 1.0
    markers[second, cols] = 1.0
    x = np.stack([values, markers], axis=2).astype(dtype)
    target = (values[first, cols] + values[second, cols])[:, None].astype(dtype)
    return x, target


class TanhRNN:
    """A plain (Elman) RNN, the baseline the LSTM is compared with.

    h_t = tanh(x_t @ weight_ih.T + h_{t-1} @ weight_hh.T + bias), h_0 = 0.
    weight_ih: (H, I), weight_hh: (H, H), bias: (H,). NumPy only, written
    out here with its own backward so the comparison does not depend on polylstm.
    Initialised like the demo's LSTM: Xavier-uniform input weights,
    orthogonal recurrent weights, zero bias.
    """

    def __init__(self, input_size: int, hidden_size: int, *, dtype="float32", seed: Optional[int] = None):
        rng = np.random.default_rng(seed)
        bound = math.sqrt(6.0 / (input_size + hidden_size))
        self.hidden_size = hidden_size
        self._params = {
            "weight_ih": rng.uniform(-bound, bound, (hidden_size, input_size)).astype(dtype),
            "weight_hh": _init.orthogonal(rng, hidden_size).astype(dtype),
            "bias": np.zeros(hidden_size, dtype),
        }

    def named_parameters(self) -> dict:
        return dict(self._params)

    def forward(self, x):
        """x: (T, B, I) -> (h_n (B, H), tape = (x, hs (T+1, B, H)))."""
        T, B, _ = x.shape
        w_ih, w_hh, b = self._params["weight_ih"], self._params["weight_hh"], self._params["bias"]
        x_proj = x @ w_ih.T + b  # every step's input projection at once
        hs = np.zeros((T + 1, B, self.hidden_size), x.dtype)
        for t in range(T):
            hs[t + 1] = np.tanh(x_proj[t] + hs[t] @ w_hh.T)
        return hs[T], (x, hs)

    def backward(self, tape, dh_n) -> Grads:
        """dh_n: (B, H) -> Grads{weight_ih, weight_hh, bias}, ``.input`` (T, B, I)."""
        x, hs = tape
        T, B, I = x.shape
        w_ih, w_hh = self._params["weight_ih"], self._params["weight_hh"]
        da = np.zeros((T, B, self.hidden_size), x.dtype)
        dh = dh_n
        for t in reversed(range(T)):
            da[t] = dh * (1 - hs[t + 1] ** 2)
            dh = da[t] @ w_hh
        flat = da.reshape(T * B, -1)
        return Grads({"weight_ih": flat.T @ x.reshape(T * B, I),
                      "weight_hh": flat.T @ hs[:T].reshape(T * B, -1),
                      "bias": flat.sum(axis=0)},
                     input=(flat @ w_ih).reshape(T, B, I))


@dataclasses.dataclass
class DemoConfig:
    """Options of ``polylstm demo`` (the defaults are the tuned main job)."""

    seq_len: int = 100
    hidden_size: int = 32
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-2
    clip: float = 1.0
    backend: Optional[str] = None
    seed: int = 0
    test_size: int = 1000
    eval_every: int = 100
    baseline: bool = False

    def validate(self) -> None:
        for name in ("seq_len", "hidden_size", "steps", "batch_size", "test_size", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{name}: expected a positive int, got {value!r}")
        if self.seq_len < 2:
            raise InputError(f"seq_len: expected at least 2, got {self.seq_len}")
        for name in ("lr", "clip"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name}: expected a positive number, got {getattr(self, name)!r}")


@dataclasses.dataclass
class RunHistory:
    """Loss record of one model: train loss per step and test MSE at checkpoints."""

    name: str
    train_loss: list = dataclasses.field(default_factory=list)
    test_steps: list = dataclasses.field(default_factory=list)
    test_mse: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_test_mse(self) -> float:
        return self.test_mse[-1]


@dataclasses.dataclass
class DemoResult:
    config: DemoConfig
    backend: str
    lstm: RunHistory
    baseline: Optional[RunHistory]
    trivial_mse: float
    model: LSTM
    head: Linear
    test_x: np.ndarray
    test_target: np.ndarray


class _LSTMRegressor:
    """LSTM over the sequence, a linear read-out of the last hidden state."""

    def __init__(self, config: DemoConfig):
        self.lstm = LSTM(2, config.hidden_size, init="xavier_orthogonal", forget_bias=1.0,
                         seed=config.seed, backend=config.backend)
        self.head = Linear(config.hidden_size, 1, seed=config.seed + 1)
        self.params = {**prefixed("lstm.", self.lstm.named_parameters()),
                       **prefixed("head.", self.head.named_parameters())}
        self.backend_used = None

    # The read-out is tiny, so it runs on the host whatever the LSTM's backend;
    # only (B, H) crosses between host and device.
    def predict(self, x):
        _, (h_n, _) = self.lstm(x)
        return self.head(_host(h_n[-1]))

    def loss_and_grads(self, x, target):
        _, (h_n, c_n), tape = self.lstm.forward(x)
        self.backend_used = tape.backend
        pred, head_tape = self.head.forward(_host(h_n[-1]))
        loss, dpred = mse_loss(pred, target)
        head_grads = self.head.backward(head_tape, dpred)
        xp = array_module(h_n)
        dh_n = xp.zeros_like(h_n)
        dh_n[-1] = xp.asarray(head_grads.input)
        lstm_grads = self.lstm.backward(tape, dh_n=dh_n)
        return loss, {**prefixed("lstm.", lstm_grads), **prefixed("head.", head_grads)}


class _RNNRegressor:
    def __init__(self, config: DemoConfig):
        self.rnn = TanhRNN(2, config.hidden_size, seed=config.seed)
        self.head = Linear(config.hidden_size, 1, seed=config.seed + 1)
        self.params = {**prefixed("rnn.", self.rnn.named_parameters()),
                       **prefixed("head.", self.head.named_parameters())}

    def predict(self, x):
        h_n, _ = self.rnn.forward(x)
        return self.head(h_n)

    def loss_and_grads(self, x, target):
        h_n, tape = self.rnn.forward(x)
        pred, head_tape = self.head.forward(h_n)
        loss, dpred = mse_loss(pred, target)
        head_grads = self.head.backward(head_tape, dpred)
        rnn_grads = self.rnn.backward(tape, head_grads.input)
        return loss, {**prefixed("rnn.", rnn_grads), **prefixed("head.", head_grads)}


def _test_mse(model, test_x, test_target, chunk: int = 500) -> float:
    total = 0.0
    n = test_x.shape[1]
    for start in range(0, n, chunk):
        pred = np.asarray(_host(model.predict(test_x[:, start:start + chunk])))
        total += float(((pred - test_target[start:start + chunk]) ** 2).sum())
    return total / n


def _host(a):
    return a.get() if type(a).__module__.split(".")[0] == "cupy" else a


def _train(name: str, model, config: DemoConfig, test_x, test_target,
           progress: Optional[Callable] = None) -> RunHistory:
    """Adam with global-norm clipping on fresh batches; evaluates on the fixed test set."""
    history = RunHistory(name)
    optimizer = Adam(model.params, lr=config.lr)
    # The training stream is the same for both models: a fair comparison.
    data_rng = np.random.default_rng([config.seed, 1])
    start = time.perf_counter()
    bar = progress(name, config.steps) if progress else None
    running = None
    for step in range(1, config.steps + 1):
        x, target = adding_problem(data_rng, config.batch_size, config.seq_len)
        loss, grads = model.loss_and_grads(x, target)
        grads, _ = clip_grad_norm(grads, config.clip)
        optimizer.step(grads)
        history.train_loss.append(loss)
        running = loss if running is None else 0.95 * running + 0.05 * loss
        if step % config.eval_every == 0 or step == config.steps:
            history.test_steps.append(step)
            history.test_mse.append(_test_mse(model, test_x, test_target))
        if bar is not None:
            postfix = {"loss": f"{running:.4f}"}
            if history.test_mse:
                postfix["test_mse"] = f"{history.test_mse[-1]:.4f}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
    if bar is not None:
        bar.close()
    history.seconds = time.perf_counter() - start
    return history


def train_adding(config: DemoConfig, progress: Optional[Callable] = None) -> DemoResult:
    """Train the LSTM (and optionally the tanh-RNN baseline) on the adding problem.

    progress: optional factory ``progress(name, total)`` returning an object
    with ``update(n)``, ``set_postfix(dict, refresh=...)`` and ``close()``
    (a tqdm bar, for instance).
    """
    config.validate()
    test_x, test_target = adding_problem(np.random.default_rng([config.seed, 2]), config.test_size, config.seq_len)
    model = _LSTMRegressor(config)
    lstm_history = _train("lstm", model, config, test_x, test_target, progress)
    backend = model.backend_used
    baseline = None
    if config.baseline:
        baseline = _train("tanh-rnn", _RNNRegressor(config), config, test_x, test_target, progress)
    trivial = float(((1.0 - test_target) ** 2).mean())
    return DemoResult(config=config, backend=backend, lstm=lstm_history, baseline=baseline, trivial_mse=trivial,
                      model=model.lstm, head=model.head, test_x=test_x, test_target=test_target)


def verdict(result: DemoResult) -> str:
    """One paragraph comparing the final test MSE with the trivial answer."""
    mse = result.lstm.final_test_mse
    ratio = result.trivial_mse / max(mse, 1e-12)
    if mse < 0.01:
        head = f"SOLVED: the LSTM carries the two marked values across {result.config.seq_len} steps"
    elif mse < 0.5 * result.trivial_mse:
        head = "LEARNING: the LSTM beats the trivial answer but has not converged (try more --steps)"
    else:
        head = "NOT LEARNED: the LSTM does no better than always answering 1 (try more --steps or another --seed)"
    lines = [head,
             f"  LSTM test MSE      {mse:.5f}  ({ratio:.0f}x better than trivial)" if ratio >= 2 else
             f"  LSTM test MSE      {mse:.5f}",
             f"  trivial answer 1.0 {result.trivial_mse:.5f}  (theory 1/6 = {TRIVIAL_MSE:.5f})"]
    if result.baseline is not None:
        lines.append(f"  tanh RNN test MSE  {result.baseline.final_test_mse:.5f}  (same data, optimizer, steps)")
    return "\n".join(lines)


def plot(result: DemoResult, path: str, example: int = 0) -> str:
    """Save the loss curves and the gates (i, f, g, o, c) over one test sequence.

    Needs matplotlib (``pip install polylstm[plot]``); raises ImportError without it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = result.test_x[:, example:example + 1]
    gates = result.model.gate_trajectories(x)[(result.model.num_layers - 1, 0)]
    T = x.shape[0]
    marks = np.flatnonzero(x[:, 0, 1])

    # A narrow second column holds the colour bars, so every time axis lines up.
    fig, grid = plt.subplots(7, 2, figsize=(10, 15),
                             gridspec_kw={"height_ratios": [2.2, 1, 1, 1, 1, 1, 1], "width_ratios": [1, 0.02]})
    axes = grid[:, 0]
    for cax in grid[:2, 1]:
        cax.set_visible(False)
    ax = axes[0]
    for history, colour in ((result.lstm, "C0"), (result.baseline, "C3")):
        if history is None:
            continue
        steps = np.arange(1, len(history.train_loss) + 1)
        ax.plot(steps, history.train_loss, color=colour, alpha=0.25, lw=0.8)
        ax.plot(history.test_steps, history.test_mse, color=colour, marker="o", ms=3,
                label=f"{history.name}: test MSE (final {history.final_test_mse:.4f})")
    ax.axhline(result.trivial_mse, color="gray", ls="--", label=f"trivial answer ({result.trivial_mse:.3f})")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("MSE")
    ax.set_title(f"Adding problem, T = {result.config.seq_len}, backend {result.backend}")
    ax.legend(loc="lower left", fontsize=8)

    ax = axes[1]
    ax.plot(np.arange(T), x[:, 0, 0], color="k", lw=0.8, label="value")
    ax.plot(marks, x[marks, 0, 0], "o", color="C1", label="marked")
    pred = float(result.head(_host(result.model(x)[1][0][-1]))[0, 0])
    ax.set_title(f"test sequence {example}: marked values at t = {', '.join(map(str, marks))}; "
                 f"target {float(result.test_target[example, 0]):.3f}, LSTM says {pred:.3f}", fontsize=9)
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_ylabel("input value")

    names = {"i": "input gate i", "f": "forget gate f", "g": "cell input g", "o": "output gate o", "c": "cell state c"}
    for ax, cax, key in zip(axes[2:], grid[2:, 1], "ifgoc"):
        data = np.asarray(_host(getattr(gates, key)))[:, 0, :].T  # (H, T)
        if key in "ifo":
            vmin, vmax, cmap = 0.0, 1.0, "viridis"
        else:
            lim = max(float(np.abs(data).max()), 1e-6)
            vmin, vmax, cmap = -lim, lim, "RdBu_r"
        im = ax.imshow(data, aspect="auto", interpolation="nearest", cmap=cmap, vmin=vmin, vmax=vmax,
                       extent=(-0.5, T - 0.5, data.shape[0] - 0.5, -0.5))
        # Marks above the panel rather than lines across it, so they hide no data.
        ax.plot(marks, np.full(len(marks), -0.5), "v", color="C1", ms=6, clip_on=False)
        ax.set_ylabel(f"{names[key]}\nunit")
        fig.colorbar(im, cax=cax)
    axes[-1].set_xlabel("time step t")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
