"""What the conformance kit does not cover: how the plugin registers and behaves
as a guest in someone else's process (no eager torch import, never chosen
unasked, inputs untouched, a tape differentiated twice)."""

import os
import subprocess
import sys

import numpy as np
import pytest

import polylstm


def _inputs(dtype="float32", T=6, B=4, I=3, H=5, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        x=rng.standard_normal((T, B, I)).astype(dtype),
        w_ih=(rng.standard_normal((4 * H, I)) * 0.5).astype(dtype),
        w_hh=(rng.standard_normal((4 * H, H)) * 0.5).astype(dtype),
        b=(rng.standard_normal(4 * H) * 0.1).astype(dtype),
        h0=rng.standard_normal((B, H)).astype(dtype),
        c0=rng.standard_normal((B, H)).astype(dtype),
    )


def test_registered_through_its_own_entry_point():
    status = {s.name: s for s in polylstm.available_backends()}["torch"]
    assert status.available, status.reason
    assert "polylstm-torch" in status.source and "entry point torch" in status.source
    assert status.version.startswith("torch ")
    assert status.auto_select is False


def test_discovery_and_availability_do_not_import_torch():
    code = (
        "import sys, polylstm\n"
        "rows = {s.name: s.available for s in polylstm.available_backends()}\n"
        "assert rows['torch'] is True, rows\n"
        "print('torch' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("POLYLSTM_PLUGINS", "POLYLSTM_DISABLE_PLUGIN_AUTOLOAD")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"


def test_never_chosen_automatically():
    out = polylstm.lstm_forward(**_inputs())
    assert out.backend != "torch"


@pytest.mark.parametrize("reverse", [False, True])
def test_inputs_unchanged_and_read_only_inputs_accepted(reverse):
    inputs = _inputs()
    lengths = np.array([6, 2, 1, 4])
    copies = {k: v.copy() for k, v in inputs.items()}
    for array in inputs.values():
        array.flags.writeable = False
    out = polylstm.lstm_forward(**inputs, lengths=lengths, reverse=reverse, keep_tape=True, backend="torch")
    dy = np.ones_like(out.y)
    dy.flags.writeable = False
    polylstm.lstm_backward(out.tape, dy=dy)
    for name, copy in copies.items():
        assert np.array_equal(inputs[name], copy), name
    assert np.array_equal(dy, np.ones_like(out.y))


def test_a_tape_can_be_differentiated_twice():
    out = polylstm.lstm_forward(**_inputs("float64"), keep_tape=True, backend="torch")
    first = polylstm.lstm_backward(out.tape, dy=np.ones_like(out.y))
    second = polylstm.lstm_backward(out.tape, dy=np.ones_like(out.y))
    for name in ("dx", "dw_ih", "dw_hh", "db", "dh0", "dc0"):
        assert np.array_equal(getattr(first, name), getattr(second, name)), name


def test_peepholes_are_refused_with_the_reason():
    inputs = _inputs()
    with pytest.raises(polylstm.UnsupportedFeatureError, match="peephole"):
        polylstm.lstm_forward(**inputs, peephole=np.zeros((3, 5), np.float32), backend="torch")


@pytest.mark.parametrize("reverse", [False, True])
def test_nan_with_lengths_stays_out_of_padding(reverse):
    """Rebuilt gate and cell trajectories keep zeros at padded steps even when
    the sequence's state is NaN, as the reference does."""
    inputs = _inputs("float64", T=6, B=3, I=2, H=4, seed=1)
    inputs["x"][1, 1, 0] = np.nan
    lengths = [6, 3, 2]
    got = polylstm.lstm_forward(**inputs, lengths=lengths, reverse=reverse, return_gates=True, backend="torch")
    ref = polylstm.lstm_forward(**inputs, lengths=lengths, reverse=reverse, return_gates=True, backend="numpy")
    for name in "ifgoc":
        a, b = getattr(got.gates, name), getattr(ref.gates, name)
        assert np.array_equal(np.isnan(a), np.isnan(b)), name
        np.testing.assert_allclose(np.nan_to_num(a), np.nan_to_num(b), rtol=0, atol=1e-12, err_msg=name)
    assert not np.isnan(got.gates.c[3:, 1]).any()  # padded steps of the NaN sequence
