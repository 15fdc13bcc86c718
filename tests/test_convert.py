"""Gate-order converters: round trips, and each foreign layout's own cell
equations (written here from the layout's definition) agree with polylstm run
on the converted weights."""

from __future__ import annotations

import numpy as np
import pytest

import polylstm
from polylstm import convert
from polylstm.errors import InputError

I, H, T, B = 3, 4, 5, 2


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def foreign_cell(x, z_of, order, peephole=None):
    """Run an LSTM whose pre-activations z_of(x_t, h) (B, 4H) come in gate ``order``.

    peephole: dict gate -> (H,) or None. Returns h_n (B, H).
    """
    h = np.zeros((x.shape[1], H))
    c = np.zeros((x.shape[1], H))
    for t in range(x.shape[0]):
        blocks = dict(zip(order, np.split(z_of(x[t], h), 4, axis=1)))
        p = peephole or {}
        i = sigmoid(blocks["i"] + p.get("i", 0) * c)
        f = sigmoid(blocks["f"] + p.get("f", 0) * c)
        g = np.tanh(blocks.get("g", blocks.get("c")))
        c = f * c + i * g
        o = sigmoid(blocks["o"] + p.get("o", 0) * c)
        h = o * np.tanh(c)
    return h


@pytest.fixture
def weights():
    rng = np.random.default_rng(0)
    return dict(w_ih=rng.standard_normal((4 * H, I)), w_hh=rng.standard_normal((4 * H, H)) * 0.5,
                b_ih=rng.standard_normal(4 * H), b_hh=rng.standard_normal(4 * H),
                peephole=rng.standard_normal((3, H)), x=rng.standard_normal((T, B, I)))


def ours(w, peephole=False):
    return polylstm.lstm_forward(w["x"], w["w_ih"], w["w_hh"], w["b_ih"] + w["b_hh"],
                                 peephole=w["peephole"] if peephole else None, backend="numpy").h_n


def test_reorder_gates_permutes_blocks_and_round_trips():
    a = np.repeat(np.arange(4), 2)  # blocks [0 0 | 1 1 | 2 2 | 3 3] = i f g o
    np.testing.assert_array_equal(convert.reorder_gates(a, "pytorch", "onnx"), [0, 0, 3, 3, 1, 1, 2, 2])
    np.testing.assert_array_equal(convert.reorder_gates(a, "pytorch", "haste"), [0, 0, 2, 2, 1, 1, 3, 3])
    np.testing.assert_array_equal(convert.reorder_gates(a, "pytorch", "keras"), a)
    m = np.random.default_rng(1).standard_normal((5, 8))
    for layout in ("onnx", "haste", "keras", "ofig"):
        there = convert.reorder_gates(m, "pytorch", layout, axis=1)
        np.testing.assert_array_equal(convert.reorder_gates(there, layout, "pytorch", axis=1), m)
    with pytest.raises(InputError, match="gate order"):
        convert.reorder_gates(a, "pytorch", "iffo")
    with pytest.raises(InputError, match="multiple of 4"):
        convert.reorder_gates(np.zeros(6), "pytorch", "onnx")


def test_keras_layout_computes_the_same_lstm(weights):
    kernel, rk, bias = convert.to_keras(weights["w_ih"], weights["w_hh"], weights["b_ih"], weights["b_hh"])
    assert kernel.shape == (I, 4 * H) and rk.shape == (H, 4 * H) and bias.shape == (4 * H,)
    h = foreign_cell(weights["x"], lambda x, h: x @ kernel + h @ rk + bias, "ifco")
    np.testing.assert_allclose(h, ours(weights), atol=1e-12)
    w_ih, w_hh, b_ih, b_hh = convert.from_keras(kernel, rk, bias)
    np.testing.assert_allclose(w_ih, weights["w_ih"])
    np.testing.assert_allclose(w_hh, weights["w_hh"])
    np.testing.assert_allclose(b_ih + b_hh, weights["b_ih"] + weights["b_hh"])
    np.testing.assert_array_equal(b_hh, 0)
    assert convert.to_keras(weights["w_ih"], weights["w_hh"])[2] is None
    with pytest.raises(InputError, match="recurrent_kernel"):
        convert.from_keras(kernel, rk.T, bias)


def test_haste_layout_computes_the_same_lstm(weights):
    kernel, rk, bias = convert.to_haste(weights["w_ih"], weights["w_hh"], weights["b_ih"], weights["b_hh"])
    h = foreign_cell(weights["x"], lambda x, h: x @ kernel + h @ rk + bias, "igfo")
    np.testing.assert_allclose(h, ours(weights), atol=1e-12)
    w_ih, w_hh, b_ih, b_hh = convert.from_haste(kernel, rk, bias)
    np.testing.assert_allclose(w_ih, weights["w_ih"])
    np.testing.assert_allclose(w_hh, weights["w_hh"])
    np.testing.assert_allclose(b_ih + b_hh, weights["b_ih"] + weights["b_hh"])


def test_onnx_layout_computes_the_same_lstm_with_peepholes(weights):
    W, R, Bias, P = convert.to_onnx([dict(w_ih=weights["w_ih"], w_hh=weights["w_hh"], b_ih=weights["b_ih"],
                                          b_hh=weights["b_hh"], peephole=weights["peephole"])])
    assert W.shape == (1, 4 * H, I) and R.shape == (1, 4 * H, H) and Bias.shape == (1, 8 * H) and P.shape == (1, 3 * H)
    Wb, Rb = Bias[0, :4 * H], Bias[0, 4 * H:]
    pi, po, pf = np.split(P[0], 3)  # ONNX peephole order i, o, f
    h = foreign_cell(weights["x"], lambda x, h: x @ W[0].T + h @ R[0].T + Wb + Rb, "iofc",
                     peephole={"i": pi, "o": po, "f": pf})
    np.testing.assert_allclose(h, ours(weights, peephole=True), atol=1e-12)
    (back,) = convert.from_onnx(W, R, Bias, P)
    for ours_name in ("w_ih", "w_hh", "b_ih", "b_hh", "peephole"):
        np.testing.assert_array_equal(back[ours_name], weights[ours_name])


def test_onnx_two_directions_round_trip_and_validation(weights):
    rng = np.random.default_rng(3)
    dirs = [dict(w_ih=rng.standard_normal((4 * H, I)), w_hh=rng.standard_normal((4 * H, H))) for _ in range(2)]
    W, R, Bias, P = convert.to_onnx(dirs)
    assert W.shape[0] == 2 and Bias is None and P is None
    back = convert.from_onnx(W, R)
    for d in range(2):
        np.testing.assert_array_equal(back[d]["w_ih"], dirs[d]["w_ih"])
        assert back[d]["b_ih"] is None
    with pytest.raises(InputError, match="same bias/peephole"):
        convert.to_onnx([dirs[0], dict(dirs[1], b_ih=np.zeros(4 * H))])
    with pytest.raises(InputError, match=r"B: expected shape \(2, 32\)"):
        convert.from_onnx(W, R, np.zeros((2, 4 * H)))


def test_converters_do_not_modify_inputs(weights):
    copies = {k: v.copy() for k, v in weights.items()}
    out = convert.to_keras(weights["w_ih"], weights["w_hh"], weights["b_ih"], weights["b_hh"])
    out[0][...] = 0
    convert.to_onnx([dict(w_ih=weights["w_ih"], w_hh=weights["w_hh"], peephole=weights["peephole"])])
    for k in copies:
        np.testing.assert_array_equal(weights[k], copies[k])
