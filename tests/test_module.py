"""polylstm.module.LSTM against a by-hand stacking of the functional reference,
against finite differences, and its parameter, file and backend handling."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import polylstm
from polylstm.errors import InputError, UnknownBackendError
from polylstm.module import LSTM, LSTMGradients

I, H, T, B = 3, 4, 6, 5

CONFIGS = {
    "one-layer": dict(num_layers=1),
    "two-layer-bidirectional": dict(num_layers=2, bidirectional=True),
    "three-layer-lengths": dict(num_layers=3, lengths=True),
    "bidirectional-lengths-state-batch-first": dict(num_layers=2, bidirectional=True, lengths=True, state=True,
                                                    batch_first=True),
    "peephole-state": dict(num_layers=2, peephole=True, state=True),
    "no-bias-bidirectional-lengths": dict(num_layers=1, bias=False, bidirectional=True, lengths=True),
}


def make_module(cfg, dtype="float64", seed=0, **extra):
    kwargs = {k: v for k, v in cfg.items() if k not in ("lengths", "state")}
    return LSTM(I, H, dtype=dtype, seed=seed, backend="numpy", **kwargs, **extra)


def make_inputs(cfg, seed=1, dtype="float64"):
    rng = np.random.default_rng(seed)
    D = 2 if cfg.get("bidirectional") else 1
    LD = cfg.get("num_layers", 1) * D
    x = rng.standard_normal((B, T, I) if cfg.get("batch_first") else (T, B, I)).astype(dtype)
    state = None
    if cfg.get("state"):
        state = (rng.standard_normal((LD, B, H)).astype(dtype), rng.standard_normal((LD, B, H)).astype(dtype))
    lengths = np.array([6, 3, 1, 5, 6]) if cfg.get("lengths") else None
    dy = rng.standard_normal(x.shape[:2] + (D * H,)).astype(dtype)
    dh = rng.standard_normal((LD, B, H)).astype(dtype)
    dc = rng.standard_normal((LD, B, H)).astype(dtype)
    return x, state, lengths, dy, dh, dc


def stacked_by_hand(params, cfg, x, state, lengths, dy, dh, dc):
    """Independent stacking of the functional reference: forward, then backward."""
    L = cfg.get("num_layers", 1)
    D = 2 if cfg.get("bidirectional") else 1
    if cfg.get("batch_first"):
        x, dy = x.transpose(1, 0, 2), dy.transpose(1, 0, 2)
    inp, runs, h_n, c_n = x, [], [], []
    for layer in range(L):
        outs = []
        for d in range(D):
            s = f"_l{layer}" + ("_reverse" if d else "")
            b = params["bias_ih" + s] + params["bias_hh" + s] if cfg.get("bias", True) else None
            k = layer * D + d
            r = polylstm.lstm_forward(inp, params["weight_ih" + s], params["weight_hh" + s], b,
                                      None if state is None else state[0][k], None if state is None else state[1][k],
                                      peephole=params.get("weight_peephole" + s), lengths=lengths, reverse=d == 1,
                                      keep_tape=True, backend="numpy")
            runs.append(r)
            outs.append(r.y)
            h_n.append(r.h_n)
            c_n.append(r.c_n)
        inp = np.concatenate(outs, axis=2)
    y = inp
    grads, dh0, dc0 = {}, [None] * (L * D), [None] * (L * D)
    upstream = dy
    for layer in reversed(range(L)):
        below = 0
        for d in range(D):
            s = f"_l{layer}" + ("_reverse" if d else "")
            k = layer * D + d
            g = polylstm.lstm_backward(runs[k].tape, upstream[:, :, d * H:(d + 1) * H], dh[k], dc[k])
            grads["weight_ih" + s], grads["weight_hh" + s] = g.dw_ih, g.dw_hh
            if cfg.get("bias", True):
                grads["bias_ih" + s] = grads["bias_hh" + s] = g.db
            if cfg.get("peephole"):
                grads["weight_peephole" + s] = g.dpeephole
            dh0[k], dc0[k] = g.dh0, g.dc0
            below = below + g.dx
        upstream = below
    dx = upstream.transpose(1, 0, 2) if cfg.get("batch_first") else upstream
    if cfg.get("batch_first"):
        y = y.transpose(1, 0, 2)
    return y, np.stack(h_n), np.stack(c_n), grads, dx, np.stack(dh0), np.stack(dc0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_module_equals_stacked_functional_reference(name):
    cfg = CONFIGS[name]
    lstm = make_module(cfg)
    x, state, lengths, dy, dh, dc = make_inputs(cfg)
    y, (h_n, c_n), tape = lstm.forward(x, state, lengths)
    grads = lstm.backward(tape, dy, dh, dc)
    ry, rh, rc, rgrads, rdx, rdh0, rdc0 = stacked_by_hand(lstm.state_dict(), cfg, x, state, lengths, dy, dh, dc)
    np.testing.assert_allclose(y, ry, rtol=0, atol=1e-13)
    np.testing.assert_allclose(h_n, rh, rtol=0, atol=1e-13)
    np.testing.assert_allclose(c_n, rc, rtol=0, atol=1e-13)
    assert isinstance(grads, LSTMGradients)
    assert list(grads) == list(lstm.state_dict())  # one gradient per parameter, same order
    for k in rgrads:
        np.testing.assert_allclose(grads[k], rgrads[k], rtol=0, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(grads.input, rdx, rtol=0, atol=1e-12)
    np.testing.assert_allclose(grads.h0, rdh0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(grads.c0, rdc0, rtol=0, atol=1e-12)
    # Inference gives the same outputs as the training forward without dropout.
    y2, (h2, c2) = lstm(x, state, lengths)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(h2, h_n)


def _loss(lstm, x, state, lengths, dy, dh, dc, rng_seed=None):
    rng = None if rng_seed is None else np.random.default_rng(rng_seed)
    y, (h, c), _ = lstm.forward(x, state, lengths, rng=rng)
    return float((y * dy).sum() + (h * dh).sum() + (c * dc).sum())


@pytest.mark.parametrize("name", ["two-layer-bidirectional", "bidirectional-lengths-state-batch-first",
                                  "peephole-state"])
@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_module_gradients_match_finite_differences(name, dropout):
    cfg = CONFIGS[name]
    lstm = make_module(cfg, dropout=dropout)
    x, state, lengths, dy, dh, dc = make_inputs(cfg)
    if state is None:
        state = (np.zeros_like(dh) + 0.1, np.zeros_like(dc) - 0.2)
    rng_seed = 7 if dropout else None  # the same masks for every evaluation
    y, _, tape = lstm.forward(x, state, lengths, rng=None if rng_seed is None else np.random.default_rng(rng_seed))
    if dropout:
        assert tape.masks[0] is not None and (tape.masks[0] == 0).any()
    grads = lstm.backward(tape, dy, dh, dc)
    eps = 1e-6
    pick = np.random.default_rng(3)
    targets = [(k, p) for k, p in lstm.named_parameters().items()]
    targets += [("input", x), ("h0", state[0]), ("c0", state[1])]
    for key, array in targets:
        analytic = grads.input if key == "input" else getattr(grads, key) if key in ("h0", "c0") else grads[key]
        for _ in range(3):
            idx = tuple(pick.integers(0, n) for n in array.shape)
            old = array[idx]
            array[idx] = old + eps
            up = _loss(lstm, x, state, lengths, dy, dh, dc, rng_seed)
            array[idx] = old - eps
            down = _loss(lstm, x, state, lengths, dy, dh, dc, rng_seed)
            array[idx] = old
            numeric = (up - down) / (2 * eps)
            assert abs(numeric - analytic[idx]) <= 1e-6 * max(1.0, abs(numeric)), (key, idx, numeric, analytic[idx])


def test_dropout_mask_is_seeded_kept_on_tape_and_off_at_inference():
    cfg = dict(num_layers=3)
    x = make_inputs(cfg)[0]
    a = LSTM(I, H, 3, dropout=0.5, seed=11, dtype="float64")
    b = LSTM(I, H, 3, dropout=0.5, seed=11, dtype="float64")
    ya, _, ta = a.forward(x)
    yb, _, tb = b.forward(x)
    np.testing.assert_array_equal(ya, yb)  # same seed, same masks
    assert len(ta.masks) == 2 and all(m.shape == (T, B, H) for m in ta.masks)
    for m in ta.masks:
        assert set(np.unique(m)) == {0.0, 2.0}  # inverted dropout: kept units scaled by 1/(1-p)
    y_next, _, t_next = a.forward(x)
    assert not np.array_equal(t_next.masks[0], ta.masks[0])  # the stream advances
    y_eval, _, t_eval = a.forward(x, training=False)
    assert t_eval.masks == [None, None]
    np.testing.assert_array_equal(a(x)[0], y_eval)


def test_dropout_on_single_layer_warns():
    with pytest.warns(UserWarning, match="between layers"):
        LSTM(I, H, 1, dropout=0.2)


def test_parameter_names_and_shapes_follow_pytorch():
    lstm = LSTM(I, H, 2, bidirectional=True, peephole=True)
    shapes = {k: v.shape for k, v in lstm.state_dict().items()}
    assert list(shapes)[:5] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_peephole_l0"]
    assert shapes["weight_ih_l0"] == (4 * H, I)
    assert shapes["weight_ih_l1_reverse"] == (4 * H, 2 * H)
    assert shapes["weight_peephole_l1_reverse"] == (3, H)
    assert all(v.dtype == np.float32 for v in lstm.state_dict().values())
    assert lstm.num_parameters == sum(int(np.prod(s)) for s in shapes.values())


def test_init_schemes_are_seeded_and_documented_ranges():
    a = LSTM(I, 8, 2, seed=5).state_dict()
    b = LSTM(I, 8, 2, seed=5).state_dict()
    c = LSTM(I, 8, 2, seed=6).state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["weight_hh_l0"], c["weight_hh_l0"])
    bound = 1 / np.sqrt(8)
    assert all(np.abs(v).max() <= bound for v in a.values())

    x = LSTM(I, 8, 2, seed=5, init="xavier_orthogonal", forget_bias=1.0, peephole=True, dtype="float64").state_dict()
    for k in range(4):
        block = x["weight_hh_l1"][k * 8:(k + 1) * 8]
        np.testing.assert_allclose(block @ block.T, np.eye(8), atol=1e-12)
        assert np.abs(x["weight_ih_l0"][k * 8:(k + 1) * 8]).max() <= np.sqrt(6 / (I + 8))
    total = x["bias_ih_l0"] + x["bias_hh_l0"]
    np.testing.assert_array_equal(total[8:16], 1.0)
    np.testing.assert_array_equal(np.delete(total, np.s_[8:16]), 0.0)
    np.testing.assert_array_equal(x["weight_peephole_l0"], 0.0)
    with pytest.raises(InputError, match="init"):
        LSTM(I, H, init="glorot")


def test_reset_parameters_keeps_arrays_and_reproduces_seed():
    lstm = LSTM(I, H, seed=2)
    live = lstm.named_parameters()["weight_hh_l0"]
    first = live.copy()
    live += 1.0
    lstm.reset_parameters()
    assert lstm.named_parameters()["weight_hh_l0"] is live  # optimizers stay valid
    np.testing.assert_array_equal(live, first)


def test_load_state_dict_validates_everything_and_changes_nothing_on_error():
    lstm = LSTM(I, H, 2, seed=0)
    before = lstm.state_dict()
    bad = dict(before)
    del bad["bias_hh_l1"]
    bad["weight_ih_l7"] = np.zeros((4 * H, I), np.float32)
    bad["weight_hh_l0"] = np.zeros((4 * H, H + 1), np.float32)
    bad["bias_ih_l0"] = before["bias_ih_l0"].astype(np.float64)
    with pytest.raises(InputError) as info:
        lstm.load_state_dict(bad)
    message = str(info.value)
    assert "missing keys: bias_hh_l1" in message
    assert "unexpected keys: weight_ih_l7" in message
    assert "weight_hh_l0: expected shape (16, 4), got (16, 5)" in message
    assert "bias_ih_l0: expected dtype float32" in message
    after = lstm.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_state_dict_round_trip_and_copies():
    src = LSTM(I, H, 2, bidirectional=True, seed=1)
    dst = LSTM(I, H, 2, bidirectional=True, seed=2)
    state = src.state_dict()
    snapshot = {k: v.copy() for k, v in state.items()}
    dst.load_state_dict(state)
    state["weight_ih_l0"][...] = 0  # state_dict returns copies; loading copies too
    x = make_inputs(dict(bidirectional=True, num_layers=2), dtype="float32")[0]
    np.testing.assert_array_equal(src(x)[0], dst(x)[0])
    assert all(np.array_equal(snapshot[k], src.state_dict()[k]) for k in snapshot)


def test_forward_and_backward_do_not_mutate_inputs():
    cfg = CONFIGS["bidirectional-lengths-state-batch-first"]
    lstm = make_module(cfg, dropout=0.3)
    arrays = make_inputs(cfg)
    x, state, lengths, dy, dh, dc = arrays
    copies = [a.copy() for a in (x, state[0], state[1], lengths, dy, dh, dc)]
    _, _, tape = lstm.forward(x, state, lengths)
    lstm.backward(tape, dy, dh, dc)
    for a, c in zip((x, state[0], state[1], lengths, dy, dh, dc), copies):
        np.testing.assert_array_equal(a, c)


def test_backward_without_dy_uses_only_final_state_gradients():
    cfg = dict(num_layers=2)
    lstm = make_module(cfg)
    x, _, _, dy, dh, dc = make_inputs(cfg)
    _, _, tape = lstm.forward(x)
    g_none = lstm.backward(tape, None, dh, dc)
    g_zero = lstm.backward(tape, np.zeros_like(dy), dh, dc)
    for k in g_none:
        np.testing.assert_array_equal(g_none[k], g_zero[k])


def test_bad_inputs_name_the_argument():
    lstm = LSTM(I, H, 2)
    x = np.zeros((T, B, I), np.float32)
    with pytest.raises(InputError, match=r"x: expected shape \(T, B, I\) with I = 3, got \(6, 5, 2\)"):
        lstm(np.zeros((T, B, 2), np.float32))
    with pytest.raises(InputError, match="x: expected dtype float32"):
        lstm(x.astype(np.float64))
    with pytest.raises(InputError, match=r"state h0: expected shape \(L\*D, B, H\) = \(2, 5, 4\)"):
        lstm(x, (np.zeros((1, B, H), np.float32), np.zeros((2, B, H), np.float32)))
    with pytest.raises(InputError, match="lengths"):
        lstm(x, lengths=np.array([7, 1, 1, 1, 1]))
    _, _, tape = lstm.forward(x)
    with pytest.raises(InputError, match=r"dy: expected shape \(6, 5, 4\)"):
        lstm.backward(tape, np.zeros((T, B, 2 * H), np.float32))
    with pytest.raises(InputError, match="dh_n"):
        lstm.backward(tape, None, np.zeros((1, B, H), np.float32))
    for kwargs, arg in ((dict(hidden_size=0), "hidden_size"), (dict(dropout=1.0), "dropout"),
                        (dict(dtype="float16"), "dtype"), (dict(bias=1), "bias")):
        params = dict(input_size=I, hidden_size=H)
        params.update(kwargs)
        with pytest.raises(InputError, match=arg):
            LSTM(**params)


def test_gate_trajectories_match_the_functional_gates_and_layout():
    cfg = dict(num_layers=2, bidirectional=True, batch_first=True, lengths=True)
    lstm = make_module(cfg)
    x, _, lengths, *_ = make_inputs(cfg)
    gates = lstm.gate_trajectories(x, lengths=lengths)
    assert set(gates) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    p = lstm.state_dict()
    r = polylstm.lstm_forward(x.transpose(1, 0, 2), p["weight_ih_l0_reverse"], p["weight_hh_l0_reverse"],
                              p["bias_ih_l0_reverse"] + p["bias_hh_l0_reverse"], lengths=lengths, reverse=True,
                              return_gates=True, backend="numpy")
    for key in "ifgoc":
        got = getattr(gates[(0, 1)], key)
        assert got.shape == (B, T, H)  # batch-first like the module
        np.testing.assert_allclose(got, getattr(r.gates, key).transpose(1, 0, 2), atol=1e-14)
    _, _, tape = lstm.forward(x, lengths=lengths, return_gates=True)
    np.testing.assert_array_equal(tape.gates[(1, 0)].f, gates[(1, 0)].f)
    y, _ = lstm(x, lengths=lengths)
    np.testing.assert_array_equal(gates[(1, 1)].c[2, 1:], 0.0)  # padded steps are zero
    np.testing.assert_array_equal(y[2, 1:], 0.0)


def test_save_load_round_trip(tmp_path):
    lstm = LSTM(I, H, 2, bidirectional=True, peephole=True, batch_first=True, dropout=0.25, seed=3)
    path = lstm.save(tmp_path / "model")
    assert path.endswith("model.npz")
    loaded = LSTM.load(path)
    assert loaded.config() == lstm.config()
    x = np.random.default_rng(0).standard_normal((B, T, I)).astype(np.float32)
    np.testing.assert_array_equal(loaded(x)[0], lstm(x)[0])
    with np.load(path, allow_pickle=False) as archive:  # readable without pickle
        meta = json.loads(str(archive["__polylstm_config__"]))
    assert meta["format"] == "polylstm.LSTM" and meta["config"]["peephole"] is True


def _rewrite(path, out, change):
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    change(arrays)
    np.savez(out, **arrays)
    return out


def test_load_rejects_tampered_and_foreign_files(tmp_path):
    path = LSTM(I, H, seed=3).save(tmp_path / "m.npz")

    def bump(a):
        a["weight_hh_l0"] = a["weight_hh_l0"] + np.float32(0.5)

    with pytest.raises(InputError, match="weight_hh_l0.*checksum"):
        LSTM.load(_rewrite(path, tmp_path / "values.npz", bump))

    def reshape(a):
        meta = json.loads(str(a["__polylstm_config__"]))
        meta["config"]["hidden_size"] = 5
        a["__polylstm_config__"] = np.array(json.dumps(meta))

    with pytest.raises(InputError, match="do not match the stored configuration.*expected shape"):
        LSTM.load(_rewrite(path, tmp_path / "config.npz", reshape))

    with pytest.raises(InputError, match="no polylstm configuration"):
        LSTM.load(_rewrite(path, tmp_path / "noconfig.npz", lambda a: a.pop("__polylstm_config__")))

    def garble(a):
        a["__polylstm_config__"] = np.array("{not json")

    with pytest.raises(InputError, match="configuration is damaged"):
        LSTM.load(_rewrite(path, tmp_path / "garbled.npz", garble))

    def future(a):
        meta = json.loads(str(a["__polylstm_config__"]))
        meta["format_version"] = 99
        a["__polylstm_config__"] = np.array(json.dumps(meta))

    with pytest.raises(InputError, match="format version 99"):
        LSTM.load(_rewrite(path, tmp_path / "future.npz", future))

    def pickled(a):
        a["weight_ih_l0"] = np.array([{"evil": 1}], dtype=object)

    with pytest.raises(InputError, match="without pickled objects"):
        LSTM.load(_rewrite(path, tmp_path / "pickled.npz", pickled))

    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(InputError, match="not a readable .npz"):
        LSTM.load(tmp_path / "text.npz")
    with zipfile.ZipFile(tmp_path / "empty.npz", "w"):
        pass
    with pytest.raises(InputError, match="no polylstm configuration"):
        LSTM.load(tmp_path / "empty.npz")


def test_to_moves_between_backends_and_rejects_unknown():
    lstm = LSTM(I, H, 2, bidirectional=True, seed=4, dtype="float64")
    x = make_inputs(dict(num_layers=2, bidirectional=True))[0]
    ref = lstm.to("numpy")(x)[0]
    assert lstm.backend == "numpy"
    names = {s.name for s in polylstm.available_backends() if s.available}
    if "numba" in names:
        np.testing.assert_allclose(lstm.to("numba")(x)[0], ref, atol=1e-12)
    assert lstm.to(None).backend is None
    with pytest.raises(UnknownBackendError, match="no-such-backend"):
        lstm.to("no-such-backend")
    with pytest.raises(UnknownBackendError):
        LSTM(I, H, backend="no-such-backend")


def _host_backends():
    return [s.name for s in polylstm.available_backends()
            if s.available and not s.broken and s.name != "numpy" and "numpy" in s.array_types]


@pytest.mark.parametrize("backend", _host_backends())
def test_module_on_every_available_host_backend_matches_the_reference(backend):
    """The module only composes the primitive, so any conforming backend runs all of it."""
    cfg = CONFIGS["bidirectional-lengths-state-batch-first"]
    lstm = make_module(cfg, peephole="peephole" in polylstm.get_backend(backend).capabilities)
    x, state, lengths, dy, dh, dc = make_inputs(cfg)
    y0, (h0, _), t0 = lstm.forward(x, state, lengths)
    g0 = lstm.backward(t0, dy, dh, dc)
    lstm.to(backend)
    y, (h, _), tape = lstm.forward(x, state, lengths)
    assert tape.backend == backend
    g = lstm.backward(tape, dy, dh, dc)
    np.testing.assert_allclose(y, y0, atol=1e-10)
    np.testing.assert_allclose(h, h0, atol=1e-10)
    for k in g0:
        np.testing.assert_allclose(g[k], g0[k], atol=1e-9, err_msg=k)
    np.testing.assert_allclose(g.input, g0.input, atol=1e-10)
    np.testing.assert_allclose(g.h0, g0.h0, atol=1e-10)
