"""Draw docs/img/gates.png: the gates of an LSTM trained on the adding problem.

The trajectories are real: a small LSTM is trained with polylstm's own toolkit
(:func:`polylstm.demo.train_adding`), then one test sequence is run through
:func:`polylstm.lstm_forward` with ``return_gates=True`` using the trained
weights. The figure shows the input, forget and output gates (and the cell
state) of the units that react most to the two marked steps.

    python docs/scripts/make_gate_figure.py            # writes docs/img/gates.png
    python docs/scripts/make_gate_figure.py --steps 20 --out /tmp/g.png   # a quick look

Needs matplotlib (``pip install -e '.[docs]'``). The printed summary (backend,
test MSE, seconds) is what goes with the figure in docs/cell.md.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np

import polylstm
from polylstm.demo import DemoConfig, train_adding

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "img" / "gates.png"


def gate_trajectories(model, x):
    """Run layer 0 of ``model`` on x: (T, 1, 2) with return_gates=True.

    Returns polylstm's GateTrajectories: i, f, g, o, c each (T, 1, H).
    """
    p = model.named_parameters()
    out = polylstm.lstm_forward(x, p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"] + p["bias_hh_l0"],
                                return_gates=True, backend=model.backend)
    return out.gates, out.backend


def pick_units(gates, marks, count):
    """The ``count`` hidden units whose input gate rises most at the marked steps
    (compared with its mean elsewhere): the units that store the marked values."""
    i = gates.i[:, 0, :]  # (T, H)
    unmarked = np.ones(i.shape[0], bool)
    unmarked[marks] = False
    contrast = i[marks].mean(axis=0) - i[unmarked].mean(axis=0)
    return np.argsort(contrast)[::-1][:count]


def draw(x, gates, units, marks, title, out_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = x.shape[0]
    t = np.arange(T)
    rows = [("input x (value; marked steps shaded)", None), ("input gate i", gates.i), ("forget gate f", gates.f),
            ("output gate o", gates.o), ("cell state c", gates.c)]
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 8.5), sharex=True, constrained_layout=True)
    colors = plt.get_cmap("tab10").colors
    for ax, (label, values) in zip(axes, rows):
        for m in marks:
            ax.axvspan(m - 0.5, m + 0.5, color="0.85", zorder=0)
        if values is None:
            ax.plot(t, x[:, 0, 0], color="0.3", lw=1)
            ax.set_ylim(-0.05, 1.05)
        else:
            for k, unit in enumerate(units):
                ax.plot(t, values[:, 0, unit], color=colors[k], lw=1.4, label=f"unit {unit}")
            if label != "cell state c":
                ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
    axes[1].legend(loc="upper right", ncol=len(units), fontsize=8, frameon=False)
    axes[-1].set_xlabel("time step t")
    fig.suptitle(title, fontsize=10)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=40)
    parser.add_argument("--hidden-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=600, help="Adam steps (batch 64)")
    parser.add_argument("--units", type=int, default=3, help="how many hidden units to draw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default=None, help="polylstm backend (default: automatic)")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    config = DemoConfig(seq_len=args.seq_len, hidden_size=args.hidden_size, steps=args.steps, seed=args.seed,
                        backend=args.backend, eval_every=max(1, args.steps // 4), test_size=256)
    result = train_adding(config)
    seconds = time.perf_counter() - start

    x = result.test_x[:, :1]  # one test sequence, (T, 1, 2)
    marks = np.flatnonzero(x[:, 0, 1])
    gates, backend = gate_trajectories(result.model, x)
    units = pick_units(gates, marks, args.units)
    mse = result.lstm.final_test_mse
    title = (f"LSTM (H={args.hidden_size}) after {args.steps} Adam steps on the adding problem, T={args.seq_len}: "
             f"test MSE {mse:.4f} (trivial {result.trivial_mse:.3f}); backend {backend}")
    draw(x, gates, units, marks, title, args.out)
    print(f"wrote {args.out}")
    print(f"backend {backend}, test MSE {mse:.5f}, trivial {result.trivial_mse:.5f}, marked steps {marks.tolist()}, "
          f"units {units.tolist()}, training {seconds:.1f} s")


if __name__ == "__main__":
    main()
