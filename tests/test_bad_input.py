"""Every kind of bad input gets an error naming the argument, expected and actual."""

import numpy as np
import pytest

import polylstm
from polylstm.errors import InputError, UnsupportedFeatureError

T, B, I, H = 4, 3, 5, 2


def good(dtype="float64"):
    rng = np.random.default_rng(0)
    return dict(x=rng.standard_normal((T, B, I)).astype(dtype), w_ih=rng.standard_normal((4 * H, I)).astype(dtype),
                w_hh=rng.standard_normal((4 * H, H)).astype(dtype))


def forward(**overrides):
    args = good()
    args.update(overrides)
    return polylstm.lstm_forward(args.pop("x"), args.pop("w_ih"), args.pop("w_hh"), backend="numpy", **args)


@pytest.mark.parametrize("name, value, pattern", [
    ("x", np.zeros((T, B)), r"x must have 3 dimensions \(T, B, I\), got shape \(4, 3\)"),
    ("x", np.zeros((0, B, I)), r"x must have T, B, I >= 1, got shape \(0, 3, 5\)"),
    ("w_ih", np.zeros((4 * H, I + 1)), r"w_ih must have shape \(4H, I\) = \(8, 5\), got \(8, 6\)"),
    ("w_ih", np.zeros((7, I)), r"w_ih must have shape \(4H, I\) with 4H a positive multiple of 4, got \(7, 5\)"),
    ("w_ih", np.zeros(8), r"w_ih must have 2 dimensions \(4H, I\), got shape \(8,\)"),
    ("w_hh", np.zeros((4 * H, H + 1)), r"w_hh must have shape \(4H, H\) = \(8, 2\), got \(8, 3\)"),
    ("b", np.zeros(4 * H + 1), r"b must have shape \(4H,\) = \(8,\), got \(9,\)"),
    ("h0", np.zeros((B + 1, H)), r"h0 must have shape \(B, H\) = \(3, 2\), got \(4, 2\)"),
    ("c0", np.zeros((B, H, 1)), r"c0 must have shape \(B, H\) = \(3, 2\), got \(3, 2, 1\)"),
    ("peephole", np.zeros((4, H)), r"peephole must have shape \(3, H\) = \(3, 2\), got \(4, 2\)"),
])
def test_wrong_shapes(name, value, pattern):
    with pytest.raises(InputError, match=pattern):
        forward(**{name: value})


@pytest.mark.parametrize("dtype", ["int64", "int32", "complex128", "bool", "float16"])
def test_non_float_x(dtype):
    with pytest.raises(InputError, match=f"x must be a floating array \\(float32 or float64\\), got dtype {dtype}"):
        forward(x=np.zeros((T, B, I), dtype=dtype))


def test_mixed_dtypes():
    with pytest.raises(InputError, match=r"w_hh has dtype float32 but x has dtype float64"):
        forward(w_hh=good()["w_hh"].astype(np.float32))
    with pytest.raises(InputError, match=r"b must be a floating array .* got dtype int64"):
        forward(b=np.zeros(4 * H, dtype=np.int64))


@pytest.mark.parametrize("lengths, pattern", [
    ([4, 0, 2], r"lengths must be at least 1 .* got minimum 0"),
    ([4, -1, 2], r"lengths must be at least 1 .* got minimum -1"),
    ([4, 5, 2], r"lengths must be at most T = 4, got maximum 5"),
    ([4.0, 3.0, 2.0], r"lengths must hold integers, got dtype float64"),
    ([True, True, True], r"lengths must hold integers, got dtype bool"),
    ([4, 3], r"lengths must have shape \(B,\) = \(3,\), got \(2,\)"),
])
def test_bad_lengths(lengths, pattern):
    with pytest.raises(InputError, match=pattern):
        forward(lengths=lengths)


def test_backward_argument_checks():
    out = forward(keep_tape=True)
    with pytest.raises(InputError, match=r"dy must have shape \(T, B, H\) = \(4, 3, 2\), got \(4, 3, 3\)"):
        polylstm.lstm_backward(out.tape, dy=np.zeros((T, B, 3)))
    with pytest.raises(InputError, match=r"dh_n has dtype float32 but x has dtype float64"):
        polylstm.lstm_backward(out.tape, dh_n=np.zeros((B, H), np.float32))
    with pytest.raises(InputError, match=r"tape must be the Tape of lstm_forward\(..., keep_tape=True\), got NoneType"):
        polylstm.lstm_backward(forward().tape)


def test_unsupported_feature_names_backend_and_feature():
    from polylstm_numpy.reference import NumpyReferenceBackend

    class NoPeephole(NumpyReferenceBackend):
        name = "no-peephole"
        capabilities = NumpyReferenceBackend.capabilities - {"peephole"}

    polylstm.register_backend(polylstm.BackendInfo(name="no-peephole", load=NoPeephole, auto_select=False))
    try:
        with pytest.raises(UnsupportedFeatureError, match=r"backend 'no-peephole' does not support peephole"):
            polylstm.lstm_forward(*good().values(), peephole=np.zeros((3, H)), backend="no-peephole")
    finally:
        polylstm._REGISTRY.unregister_backend("no-peephole")


def test_inputs_are_never_mutated_and_nan_propagates():
    args = good()
    args["x"][1, 0, 0] = np.nan
    copies = {k: v.copy() for k, v in args.items()}
    out = polylstm.lstm_forward(args["x"], args["w_ih"], args["w_hh"], keep_tape=True, backend="numpy")
    polylstm.lstm_backward(out.tape, dy=np.ones((T, B, H)))
    for k in args:
        np.testing.assert_array_equal(args[k], copies[k])
    assert np.isnan(out.y[1:, 0]).all() and not np.isnan(out.y[:, 1:]).any()


def test_lists_are_accepted_as_arrays():
    args = {k: v.tolist() for k, v in good().items()}
    out = polylstm.lstm_forward(args["x"], args["w_ih"], args["w_hh"], backend="numpy")
    assert out.y.shape == (T, B, H)
