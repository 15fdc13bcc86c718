"""The polylstm conformance kit run against the ``torch`` backend.

Only what the backend does not announce is declared to fail: torch's LSTM has
no peepholes (the checks 'peephole', 'backward_peephole', 'backward_everything').
"""

from polylstm.testing import BackendConformance


class TestTorchBackend(BackendConformance):
    backend = "torch"
    expected_failures = {"peephole": "torch.nn.LSTM has no peephole connections"}
