"""The training toolkit (polylstm.nn) and the demo's pieces, against finite
differences and hand-written update rules (and torch.optim when installed)."""

from __future__ import annotations

import numpy as np
import pytest

from polylstm.demo import TRIVIAL_MSE, DemoConfig, TanhRNN, adding_problem, train_adding, verdict
from polylstm.errors import InputError
from polylstm.module import LSTM
from polylstm.nn import SGD, Adam, Grads, Linear, clip_grad_norm, global_norm, mse_loss, prefixed, \
    softmax_cross_entropy


def numeric_grad(f, array, eps=1e-6):
    """Central differences of the scalar f() w.r.t. every entry of array (modified and restored)."""
    out = np.zeros_like(array)
    for idx in np.ndindex(array.shape):
        old = array[idx]
        array[idx] = old + eps
        up = f()
        array[idx] = old - eps
        down = f()
        array[idx] = old
        out[idx] = (up - down) / (2 * eps)
    return out


def test_linear_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    lin = Linear(4, 3, dtype="float64", seed=1)
    x = rng.standard_normal((2, 5, 4))
    dy = rng.standard_normal((2, 5, 3))
    y, tape = lin.forward(x)
    np.testing.assert_allclose(y, x @ lin.named_parameters()["weight"].T + lin.named_parameters()["bias"])
    grads = lin.backward(tape, dy)
    assert isinstance(grads, Grads) and set(grads) == {"weight", "bias"}

    def f():
        return float((lin(x) * dy).sum())

    for name, p in lin.named_parameters().items():
        np.testing.assert_allclose(grads[name], numeric_grad(f, p), atol=1e-8)
    np.testing.assert_allclose(grads.input, numeric_grad(f, x), atol=1e-8)


def test_linear_validates_and_round_trips_state():
    lin = Linear(4, 3, seed=2)
    with pytest.raises(InputError, match=r"x: expected shape \(\.\.\., 4\)"):
        lin(np.zeros((2, 5), np.float32))
    with pytest.raises(InputError, match="x: expected dtype float32"):
        lin(np.zeros((2, 4)))
    other = Linear(4, 3, seed=3)
    other.load_state_dict(lin.state_dict())
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(other(x), lin(x))
    with pytest.raises(InputError, match="missing keys: bias"):
        other.load_state_dict({"weight": lin.state_dict()["weight"]})
    assert set(Linear(4, 3, bias=False).named_parameters()) == {"weight"}


def test_mse_loss_value_and_gradient():
    rng = np.random.default_rng(1)
    pred, target = rng.standard_normal((6, 2)), rng.standard_normal((6, 2))
    loss, grad = mse_loss(pred, target)
    assert loss == pytest.approx(float(((pred - target) ** 2).mean()))
    np.testing.assert_allclose(grad, numeric_grad(lambda: mse_loss(pred, target)[0], pred), atol=1e-8)
    with pytest.raises(InputError, match="target: expected shape"):
        mse_loss(pred, target[:3])


def test_softmax_cross_entropy_value_gradient_and_stability():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((3, 4, 5))
    targets = rng.integers(0, 5, size=(3, 4))
    loss, grad = softmax_cross_entropy(logits, targets)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = -np.log(np.take_along_axis(p, targets[..., None], -1)).mean()
    assert loss == pytest.approx(expected)
    np.testing.assert_allclose(grad, numeric_grad(lambda: softmax_cross_entropy(logits, targets)[0], logits),
                               atol=1e-8)
    huge = np.array([[1000.0, 0.0, -1000.0]])
    loss, grad = softmax_cross_entropy(huge, np.array([2]))
    assert np.isfinite(loss) and loss == pytest.approx(2000.0) and np.isfinite(grad).all()
    with pytest.raises(InputError, match=r"targets: expected class indices in \[0, 5\)"):
        softmax_cross_entropy(logits, np.full((3, 4), 5))
    with pytest.raises(InputError, match="targets: expected integer"):
        softmax_cross_entropy(logits, targets.astype(float))


def test_clip_grad_norm_scales_together_without_mutating():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[0.0, 4.0]])}
    clipped, norm = clip_grad_norm(grads, 1.0)
    assert norm == pytest.approx(5.0)
    assert global_norm(clipped) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0], rtol=1e-5)
    np.testing.assert_array_equal(grads["a"], [3.0, 0.0])  # inputs untouched
    same, norm = clip_grad_norm(grads, 10.0)
    np.testing.assert_array_equal(same["b"], grads["b"])
    g = Grads({"w": np.array([10.0])}, input=np.array([7.0]))
    out, _ = clip_grad_norm(g, 1.0)
    assert isinstance(out, Grads) and out.input is g.input
    with pytest.raises(InputError, match="max_norm"):
        clip_grad_norm(grads, 0)


def test_sgd_momentum_matches_the_update_rule():
    p = np.array([1.0, -2.0])
    opt = SGD({"p": p}, lr=0.1, momentum=0.9, weight_decay=0.01)
    g1, g2 = np.array([0.5, 1.0]), np.array([-1.0, 0.25])
    expected, v = p.copy(), None
    for g in (g1, g2):
        gg = g + 0.01 * expected
        v = gg if v is None else 0.9 * v + gg
        expected = expected - 0.1 * v
        opt.step({"p": g})
    np.testing.assert_allclose(p, expected)  # updated in place
    with pytest.raises(InputError, match="missing"):
        opt.step({})


def test_adam_matches_the_update_rule():
    p = np.array([1.0, -2.0, 0.5])
    opt = Adam({"p": p}, lr=0.01, betas=(0.8, 0.99), eps=1e-8)
    expected, m, v = p.copy(), 0.0, 0.0
    rng = np.random.default_rng(4)
    for t in range(1, 4):
        g = rng.standard_normal(3)
        m = 0.8 * m + 0.2 * g
        v = 0.99 * v + 0.01 * g * g
        expected = expected - 0.01 * (m / (1 - 0.8 ** t)) / (np.sqrt(v / (1 - 0.99 ** t)) + 1e-8)
        opt.step({"p": g})
    np.testing.assert_allclose(p, expected, rtol=1e-12)


@pytest.mark.parametrize("kind", ["sgd", "sgd-nesterov", "adam"])
def test_optimizers_match_torch(kind):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    init = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(4)]
    ours = init.copy()
    tp = torch.nn.Parameter(torch.tensor(init))
    if kind == "adam":
        opt, topt = Adam({"w": ours}, lr=0.05, weight_decay=0.01), torch.optim.Adam([tp], lr=0.05, weight_decay=0.01)
    else:
        nesterov = kind == "sgd-nesterov"
        opt = SGD({"w": ours}, lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.01)
        topt = torch.optim.SGD([tp], lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.01)
    for g in grads:
        opt.step({"w": g})
        tp.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(ours, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_tanh_rnn_baseline_gradients_match_finite_differences():
    rng = np.random.default_rng(6)
    rnn = TanhRNN(2, 3, dtype="float64", seed=0)
    x = rng.standard_normal((5, 2, 2))
    dh = rng.standard_normal((2, 3))
    h, tape = rnn.forward(x)
    grads = rnn.backward(tape, dh)

    def f():
        return float((rnn.forward(x)[0] * dh).sum())

    for name, p in rnn.named_parameters().items():
        np.testing.assert_allclose(grads[name], numeric_grad(f, p), atol=1e-8, err_msg=name)
    np.testing.assert_allclose(grads.input, numeric_grad(f, x), atol=1e-8)


def test_lstm_linear_cross_entropy_chain_matches_finite_differences():
    """The toolkit composed with the module: one gradient through everything."""
    rng = np.random.default_rng(7)
    lstm = LSTM(3, 4, 2, bidirectional=True, dtype="float64", seed=1, backend="numpy")
    head = Linear(8, 5, dtype="float64", seed=2)
    x = rng.standard_normal((6, 3, 3))
    labels = rng.integers(0, 5, size=(6, 3))

    def loss_fn():
        y, _ = lstm(x)
        return softmax_cross_entropy(head(y), labels)[0]

    y, _, tape = lstm.forward(x)
    logits, head_tape = head.forward(y)
    _, dlogits = softmax_cross_entropy(logits, labels)
    head_grads = head.backward(head_tape, dlogits)
    lstm_grads = lstm.backward(tape, head_grads.input)
    grads = {**prefixed("lstm.", lstm_grads), **prefixed("head.", head_grads)}
    params = {**prefixed("lstm.", lstm.named_parameters()), **prefixed("head.", head.named_parameters())}
    assert set(grads) == set(params)
    for name in ("lstm.weight_hh_l1_reverse", "lstm.bias_ih_l0", "head.weight"):
        np.testing.assert_allclose(grads[name], numeric_grad(loss_fn, params[name]), atol=1e-7, err_msg=name)
    Adam(params, lr=0.1).step(grads)  # names line up with the optimizer's


def test_adding_problem_batches():
    x, target = adding_problem(np.random.default_rng(0), batch=200, seq_len=20)
    assert x.shape == (20, 200, 2) and target.shape == (200, 1) and x.dtype == np.float32
    markers = x[:, :, 1]
    np.testing.assert_array_equal(markers.sum(axis=0), 2.0)
    np.testing.assert_array_equal(markers[:10].sum(axis=0), 1.0)  # one marker in each half
    np.testing.assert_allclose(target[:, 0], (x[:, :, 0] * markers).sum(axis=0), rtol=1e-6)
    big = adding_problem(np.random.default_rng(1), batch=20000, seq_len=10)[1]
    assert float(((big - 1.0) ** 2).mean()) == pytest.approx(TRIVIAL_MSE, rel=0.05)


def test_demo_training_learns_a_short_adding_problem():
    cfg = DemoConfig(seq_len=8, hidden_size=8, steps=150, batch_size=32, test_size=200, eval_every=50,
                     backend="numpy", baseline=True)
    result = train_adding(cfg)
    assert len(result.lstm.train_loss) == 150 and result.lstm.test_steps == [50, 100, 150]
    assert result.lstm.final_test_mse < 0.5 * result.trivial_mse  # it learns, even this briefly
    assert result.baseline is not None and len(result.baseline.test_mse) == 3
    text = verdict(result)
    assert "LSTM test MSE" in text and "tanh RNN test MSE" in text
    with pytest.raises(InputError, match="seq_len"):
        train_adding(DemoConfig(seq_len=1))
