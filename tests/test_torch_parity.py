"""polylstm.module.LSTM against torch.nn.LSTM with copied weights: outputs and
every gradient, for the configurations PyTorch supports (no peepholes there)."""

from __future__ import annotations

import numpy as np
import pytest

from polylstm.module import LSTM

torch = pytest.importorskip("torch")

I, H, T, B = 3, 5, 7, 4

CONFIGS = {
    "one-layer": dict(num_layers=1),
    "two-layer-bidirectional": dict(num_layers=2, bidirectional=True),
    "three-layer-lengths-state": dict(num_layers=3, lengths=True, state=True),
    "bidirectional-lengths-batch-first": dict(num_layers=2, bidirectional=True, lengths=True, batch_first=True,
                                              state=True),
    "no-bias": dict(num_layers=2, bias=False),
}


def torch_run(net, x, state, lengths, batch_first):
    """Run torch.nn.LSTM, packing the batch when lengths are given (PyTorch's variable-length path)."""
    if lengths is None:
        return net(x, state)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first,
                                                     enforce_sorted=False)
    out, final = net(packed, state)
    y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    return y, final


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_torch_outputs_and_gradients(name, dtype):
    cfg = CONFIGS[name]
    module_kwargs = {k: v for k, v in cfg.items() if k not in ("lengths", "state")}
    tdtype = getattr(torch, dtype)
    net = torch.nn.LSTM(I, H, dtype=tdtype, **module_kwargs)
    ours = LSTM(I, H, dtype=dtype, backend="numpy", **module_kwargs)
    # A PyTorch state_dict converted with .numpy() loads as it is.
    ours.load_state_dict({k: v.detach().numpy() for k, v in net.state_dict().items()})

    rng = np.random.default_rng(0)
    D = 2 if cfg.get("bidirectional") else 1
    LD = cfg["num_layers"] * D
    batch_first = cfg.get("batch_first", False)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    lengths = np.array([7, 2, 5, 1]) if cfg.get("lengths") else None
    state = None
    if cfg.get("state"):
        state = tuple(rng.standard_normal((LD, B, H)).astype(dtype) for _ in range(2))
    dy = rng.standard_normal(x.shape[:2] + (D * H,)).astype(dtype)
    dh, dc = (rng.standard_normal((LD, B, H)).astype(dtype) for _ in range(2))

    y, (h_n, c_n), tape = ours.forward(x, state, lengths)
    grads = ours.backward(tape, dy, dh, dc)

    tx = torch.tensor(x, requires_grad=True)
    tstate = None if state is None else tuple(torch.tensor(s, requires_grad=True) for s in state)
    ty, (th, tc) = torch_run(net, tx, tstate, lengths, batch_first)
    loss = (ty * torch.tensor(dy)).sum() + (th * torch.tensor(dh)).sum() + (tc * torch.tensor(dc)).sum()
    loss.backward()

    tol = dict(rtol=0, atol=1e-12) if dtype == "float64" else dict(rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(y, ty.detach().numpy(), **tol)
    np.testing.assert_allclose(h_n, th.detach().numpy(), **tol)
    np.testing.assert_allclose(c_n, tc.detach().numpy(), **tol)
    assert set(grads) == {k for k, _ in net.named_parameters()}
    for k, p in net.named_parameters():
        np.testing.assert_allclose(grads[k], p.grad.numpy(), err_msg=k, **tol)
    np.testing.assert_allclose(grads.input, tx.grad.numpy(), **tol)
    if state is not None:
        np.testing.assert_allclose(grads.h0, tstate[0].grad.numpy(), **tol)
        np.testing.assert_allclose(grads.c0, tstate[1].grad.numpy(), **tol)


def test_state_dict_goes_back_to_torch():
    ours = LSTM(I, H, 2, bidirectional=True, seed=3)
    net = torch.nn.LSTM(I, H, 2, bidirectional=True)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    x = np.random.default_rng(1).standard_normal((T, B, I)).astype(np.float32)
    np.testing.assert_allclose(ours(x)[0], net(torch.from_numpy(x))[0].detach().numpy(), rtol=1e-5, atol=1e-6)
