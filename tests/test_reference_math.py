"""The reference backend against the cell written out by hand and against
central finite differences (float64)."""

import itertools

import numpy as np
import pytest

import polylstm


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_one_hand_worked_step():
    """T=1, B=1, I=2, H=2 with peepholes, every equation spelled out."""
    x = np.array([[[0.5, -1.0]]])
    w_ih = np.array([[0.1, 0.2], [0.3, -0.1],    # i
                     [-0.2, 0.4], [0.05, 0.1],   # f
                     [0.2, 0.2], [-0.3, 0.1],    # g
                     [0.1, -0.1], [0.0, 0.3]])   # o
    w_hh = np.arange(16, dtype=float).reshape(8, 2) / 20 - 0.4
    b = np.linspace(-0.2, 0.2, 8)
    h0 = np.array([[0.1, -0.2]])
    c0 = np.array([[0.3, 0.4]])
    p = np.array([[0.1, -0.1], [0.2, 0.05], [-0.3, 0.2]])

    a = x[0] @ w_ih.T + h0 @ w_hh.T + b
    a_i, a_f, a_g, a_o = a[:, 0:2], a[:, 2:4], a[:, 4:6], a[:, 6:8]
    i = sigmoid(a_i + p[0] * c0)
    f = sigmoid(a_f + p[1] * c0)
    g = np.tanh(a_g)
    c1 = f * c0 + i * g
    o = sigmoid(a_o + p[2] * c1)
    h1 = o * np.tanh(c1)

    out = polylstm.lstm_forward(x, w_ih, w_hh, b, h0, c0, peephole=p, return_gates=True, backend="numpy")
    np.testing.assert_allclose(out.y[0], h1, rtol=0, atol=1e-15)
    np.testing.assert_allclose(out.h_n, h1, rtol=0, atol=1e-15)
    np.testing.assert_allclose(out.c_n, c1, rtol=0, atol=1e-15)
    for name, want in zip("ifgoc", (i, f, g, o, c1)):
        np.testing.assert_allclose(getattr(out.gates, name)[0], want, rtol=0, atol=1e-15)
    # A few numbers pinned by hand so the test also catches a wrong transcription above.
    np.testing.assert_allclose(a[0, 0], 0.5 * 0.1 - 1.0 * 0.2 + 0.1 * (-0.4) - 0.2 * (-0.35) - 0.2, atol=1e-15)


CONFIGS = [
    dict(T=T, initial_state=s, lengths=l, reverse=r, peephole=p)
    for T, s, l, r, p in itertools.product([1, 5], [False, True], [False, True], [False, True], [False, True])
    if not (T == 1 and l)
]


def _loss_and_grads(params, cfg, backend="numpy"):
    out = polylstm.lstm_forward(params["x"], params["w_ih"], params["w_hh"], params["b"], params.get("h0"),
                                params.get("c0"), peephole=params.get("peephole"), lengths=cfg["lengths_arr"],
                                reverse=cfg["reverse"], keep_tape=True, backend=backend)
    loss = (np.sum(out.y * cfg["dy"]) + np.sum(out.h_n * cfg["dh_n"]) + np.sum(out.c_n * cfg["dc_n"]))
    return loss, out


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "T{T}-state{initial_state:d}-len{lengths:d}-rev{reverse:d}-peep{peephole:d}".format(**c))
def test_gradients_match_finite_differences(cfg):
    rng = np.random.default_rng(hash(tuple(cfg.values())) % 2**32)
    T, B, I, H = cfg["T"], 3, 3, 3
    params = {"x": rng.standard_normal((T, B, I)), "w_ih": rng.standard_normal((4 * H, I)) * 0.6,
              "w_hh": rng.standard_normal((4 * H, H)) * 0.6, "b": rng.standard_normal(4 * H) * 0.3}
    if cfg["initial_state"]:
        params["h0"] = rng.standard_normal((B, H)) * 0.5
        params["c0"] = rng.standard_normal((B, H))
    if cfg["peephole"]:
        params["peephole"] = rng.standard_normal((3, H)) * 0.5
    run = dict(cfg, dy=rng.standard_normal((T, B, H)), dh_n=rng.standard_normal((B, H)),
               dc_n=rng.standard_normal((B, H)),
               lengths_arr=np.array([T, max(1, T - 2), 1]) if cfg["lengths"] else None)

    _, out = _loss_and_grads(params, run)
    grads = polylstm.lstm_backward(out.tape, dy=run["dy"], dh_n=run["dh_n"], dc_n=run["dc_n"])
    analytic = {"x": grads.dx, "w_ih": grads.dw_ih, "w_hh": grads.dw_hh, "b": grads.db, "h0": grads.dh0,
                "c0": grads.dc0, "peephole": grads.dpeephole}
    if not cfg["peephole"]:
        assert grads.dpeephole is None
    eps = 1e-6
    for name, value in params.items():
        numeric = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            shifted = {k: v.copy() for k, v in params.items()}
            shifted[name][index] += eps
            up, _ = _loss_and_grads(shifted, run)
            shifted[name][index] -= 2 * eps
            down, _ = _loss_and_grads(shifted, run)
            numeric[index] = (up - down) / (2 * eps)
        error = np.linalg.norm(numeric - analytic[name]) / max(np.linalg.norm(numeric) + np.linalg.norm(analytic[name]), 1e-12)
        assert error < 1e-6, f"d{name}: relative error {error:.2e}"


def test_initial_state_gradients_are_zero_state_aware():
    """Without h0/c0 the gradients for the (zero) initial state are still returned."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 2, 3))
    out = polylstm.lstm_forward(x, rng.standard_normal((8, 3)), rng.standard_normal((8, 2)), keep_tape=True,
                                backend="numpy")
    grads = polylstm.lstm_backward(out.tape, dh_n=np.ones((2, 2)))
    assert grads.dh0.shape == (2, 2) and grads.dc0.shape == (2, 2)
    assert np.abs(grads.dh0).sum() > 0


def test_lengths_semantics_match_separate_runs():
    """A padded batch equals running each sequence alone, forward and reverse."""
    rng = np.random.default_rng(4)
    T, B, I, H = 6, 3, 2, 4
    x = rng.standard_normal((T, B, I))
    w_ih, w_hh = rng.standard_normal((4 * H, I)), rng.standard_normal((4 * H, H))
    lengths = np.array([6, 3, 1])
    for reverse in (False, True):
        batch = polylstm.lstm_forward(x, w_ih, w_hh, lengths=lengths, reverse=reverse, backend="numpy")
        for b, n in enumerate(lengths):
            alone = polylstm.lstm_forward(x[:n, b:b + 1], w_ih, w_hh, reverse=reverse, backend="numpy")
            np.testing.assert_allclose(batch.y[:n, b], alone.y[:, 0], atol=1e-14)
            assert np.all(batch.y[n:, b] == 0)
            np.testing.assert_allclose(batch.h_n[b], alone.h_n[0], atol=1e-14)
            np.testing.assert_allclose(batch.c_n[b], alone.c_n[0], atol=1e-14)
