"""The ``torch`` backend: polylstm's primitive computed by PyTorch's fused LSTM.

Shapes use T = time steps, B = batch, I = input size, H = hidden size; gate
order i, f, g, o, which is PyTorch's own, so polylstm's weights go to torch
unchanged: ``w_ih (4H, I)``, ``w_hh (4H, H)``, ``b (4H,)``.

How each part of the contract (:class:`polylstm.backend.Backend`) is met:

* forward: one call of ``torch.lstm`` (the ATen op behind ``nn.LSTM``; oneDNN
  or ATen kernels on the CPU). The primitive's single bias is passed as
  ``b_ih`` with a zero ``b_hh``, so ``db`` is exactly the gradient of ``b``.
* lengths: a packed sequence (``pack_padded_sequence(enforce_sorted=False)``),
  PyTorch's own semantics, which are polylstm's.
* reverse: each sequence is reversed within its own length, run forward and
  reversed back, which is what a bidirectional ``nn.LSTM`` does internally.
* tape (``store``): torch returns only the outputs, so the gate and cell
  trajectories the tape must hold are rebuilt after the fused call from the
  outputs (two matrix products over all steps, then an elementwise scan over
  time for c); autograd's graph is kept on the tape (``extras["torch"]``).
* backward: ``torch.autograd.grad`` through that graph.
* peepholes: torch's LSTM has none, so the capability is not announced and the
  core raises UnsupportedFeatureError before this code is reached.

Arrays in and out are NumPy arrays on the host; tensors share their memory
(``torch.from_numpy``), nothing is written into the caller's arrays.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from polylstm.backend import Backend, ForwardOutput, Gradients, Tape


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor sharing ``array``'s memory (a copy if the array is read-only,
    since torch.from_numpy would otherwise warn that it cannot protect it)."""
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().numpy()


def _reversal_index(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(T, B) int64 time index that reverses each sequence within its own length.

    index[t, b] = lengths[b] - 1 - t for t < lengths[b], else t (padded steps
    stay where they are). Applying it twice is the identity.
    """
    t = torch.arange(T, dtype=torch.int64)[:, None]
    return torch.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)


def _gather_time(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values: (T, B, N), index: (T, B) -> values[index[t, b], b, :]."""
    return torch.gather(values, 0, index[:, :, None].expand(-1, -1, values.shape[2]))


def _run_lstm(x, w_ih, w_hh, b, h0, c0, lengths, reverse, train):
    """torch's fused LSTM over the whole sequence.

    x: (T, B, I); w_ih: (4H, I); w_hh: (4H, H); b: (4H,); h0, c0: (B, H);
    lengths: (B,) int64 tensor or None. Returns y (T, B, H) with zeros at
    padded steps, h_n and c_n (B, H) after each sequence's last valid step.
    """
    T = x.shape[0]
    params = [w_ih, w_hh, b, torch.zeros_like(b)]
    if lengths is None:
        xs = x.flip(0) if reverse else x
        y, h_n, c_n = torch.lstm(xs, (h0[None], c0[None]), params, True, 1, 0.0, train, False, False)
        return (y.flip(0) if reverse else y), h_n[0], c_n[0]

    index = _reversal_index(lengths, T) if reverse else None
    xs = _gather_time(x, index) if reverse else x
    packed = pack_padded_sequence(xs, lengths, enforce_sorted=False)
    # torch.lstm takes hx in the packed (sorted by length) batch order, as
    # nn.LSTM arranges internally; the results come back in that order too.
    order, back = packed.sorted_indices, packed.unsorted_indices
    hx = (h0[None][:, order], c0[None][:, order])
    data, h_n, c_n = torch.lstm(packed.data, packed.batch_sizes, hx, params, True, 1, 0.0, train, False)
    y, _ = pad_packed_sequence(PackedSequence(data, packed.batch_sizes, order, back), total_length=T)
    if reverse:
        y = _gather_time(y, index)
    return y, h_n[0][back], c_n[0][back]


def _trajectories(x, w_ih, w_hh, b, h0, c0, y, lengths, reverse):
    """Rebuild the tape's gates (T, B, 4H) and cells (T, B, H) from torch's outputs.

    All arguments are NumPy arrays (lengths: (B,) int64 or None). The
    pre-activations need h_{t-1}, which is y at the previously processed step
    (h0 at each sequence's first processed step), so they take two matrix
    products over all steps; only c_t = f*c_{t-1} + i*g is a scan over time.
    Gates and cells are zero at padded steps, as the contract asks.
    """
    T, B, I = x.shape
    H = w_hh.shape[1]
    h_prev = np.empty_like(y)
    if not reverse:
        h_prev[0] = h0
        h_prev[1:] = y[:-1]
    else:
        h_prev[-1] = h0
        h_prev[:-1] = y[1:]
        if lengths is not None:
            first = np.arange(T)[:, None] == (lengths - 1)[None, :]  # (T, B): first processed step
            h_prev[first] = np.broadcast_to(h0, (T, B, H))[first]
    a = torch.addmm(_tensor(b), _tensor(x.reshape(T * B, I)), _tensor(w_ih).T)
    a.addmm_(_tensor(h_prev.reshape(T * B, H)), _tensor(w_hh).T)
    a = a.view(T, B, 4, H)
    sigmoid_rows = [0, 1, 3]  # i, f, o; row 2 is g
    a[:, :, sigmoid_rows] = torch.sigmoid(a[:, :, sigmoid_rows])
    a[:, :, 2] = torch.tanh(a[:, :, 2])
    gates = a.view(T, B, 4 * H).numpy()

    valid = None if lengths is None else (np.arange(T)[:, None] < lengths[None, :])[:, :, None]  # (T, B, 1)
    if valid is not None:
        gates[...] = np.where(valid, gates, 0)
    f = gates[:, :, H:2 * H]
    c = gates[:, :, :H] * gates[:, :, 2 * H:3 * H]  # i * g for every step at once; the scan adds f * c_{t-1}
    c_prev = c0
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        c[t] += f[t] * c_prev
        if valid is None:
            c_prev = c[t]
        else:
            # A padded step keeps the state and records zero (its i * g is already zero).
            # np.where, not a multiplication, so that a NaN state stays out of padding.
            c_prev = np.where(valid[t], c[t], c_prev)
            c[t] = np.where(valid[t], c[t], 0)
    return gates, c


@dataclasses.dataclass
class _Graph:
    """What backward needs from torch: the autograd leaves and the outputs."""

    inputs: tuple  # x, w_ih, w_hh, b, h0, c0 (tensors with requires_grad)
    outputs: tuple  # y, h_n, c_n


class TorchBackend(Backend):
    """polylstm's primitive on PyTorch (CPU, NumPy arrays in and out)."""

    name = "torch"
    xp = np
    capabilities = frozenset({"float32", "float64", "lengths", "reverse", "gates", "backward"})

    def forward(self, x, w_ih, w_hh, b, h0, c0, peephole, lengths, reverse, store) -> ForwardOutput:
        """x: (T, B, I), w_ih: (4H, I), w_hh: (4H, H), b: (4H,), h0, c0: (B, H),
        peephole: always None (not announced), lengths: (B,) int64 or None.
        Returns y (T, B, H), h_n, c_n (B, H); with ``store`` also gates
        (T, B, 4H), c (T, B, H) and the autograd graph in extras."""
        arrays = [_tensor(a) for a in (x, w_ih, w_hh, b, h0, c0)]
        t_lengths = None if lengths is None else torch.from_numpy(np.asarray(lengths, dtype=np.int64))
        if not store:
            with torch.no_grad():
                y, h_n, c_n = _run_lstm(*arrays, t_lengths, reverse, train=False)
            return ForwardOutput(y=_numpy(y), h_n=_numpy(h_n), c_n=_numpy(c_n))

        leaves = tuple(a.detach().requires_grad_(True) for a in arrays)
        with torch.enable_grad():
            outputs = _run_lstm(*leaves, t_lengths, reverse, train=True)
        y, h_n, c_n = (_numpy(o) for o in outputs)
        with torch.no_grad():
            gates, c = _trajectories(x, w_ih, w_hh, b, h0, c0, y, lengths, reverse)
        return ForwardOutput(y=y, h_n=h_n, c_n=c_n, gates=gates, c=c,
                             extras={"torch": _Graph(inputs=leaves, outputs=outputs)})

    def backward(self, tape: Tape, dy, dh_n, dc_n) -> Gradients:
        """dy: (T, B, H), dh_n, dc_n: (B, H) -> dx (T, B, I), dw_ih (4H, I),
        dw_hh (4H, H), db (4H,), dh0, dc0 (B, H); dpeephole None."""
        graph = tape.extras["torch"]
        incoming = tuple(_tensor(g) for g in (dy, dh_n, dc_n))
        # retain_graph: a tape may be differentiated more than once (as with
        # every other backend); the graph lives exactly as long as the tape.
        grads = torch.autograd.grad(graph.outputs, graph.inputs, incoming, retain_graph=True, allow_unused=True)
        dx, dw_ih, dw_hh, db, dh0, dc0 = (
            _numpy(g) if g is not None else np.zeros(tuple(leaf.shape), dtype=tape.x.dtype)
            for g, leaf in zip(grads, graph.inputs)
        )
        return Gradients(dx=dx, dw_ih=dw_ih, dw_hh=dw_hh, db=db, dh0=dh0, dc0=dc0, dpeephole=None)
