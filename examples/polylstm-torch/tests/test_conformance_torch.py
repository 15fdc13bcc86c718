"""The polylstm conformance kit run against the ``torch`` backend.

Only what the backend does not announce is declared to fail: torch's LSTM has
no peepholes (the checks 'peephole', 'backward_peephole', 'backward_everything').
"""

import os

import pytest

from polylstm.testing import BackendConformance


def _torch_missing():
    import importlib.util

    if importlib.util.find_spec("polylstm_torch") is None:
        return "polylstm-torch is not installed (pip install -e examples/polylstm-torch)"
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    return None


# In CI (CI=true) the plugin and torch are part of the test install: missing
# them is a failure there, not a reason to skip.
if _torch_missing() and os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
    pytest.skip(_torch_missing(), allow_module_level=True)


class TestTorchBackend(BackendConformance):
    backend = "torch"
    expected_failures = {"peephole": "torch.nn.LSTM has no peephole connections"}
