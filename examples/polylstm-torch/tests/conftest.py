"""Skip this folder's tests, with the reason, where the plugin or torch is not
installed -- except in CI (CI=true), where both are part of the test install
and missing them is a failure, not a reason to skip."""

import importlib.util
import os

import pytest

from polylstm.testing import in_ci


def _torch_missing():
    if importlib.util.find_spec("polylstm_torch") is None:
        return "polylstm-torch is not installed (pip install -e examples/polylstm-torch)"
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _torch_missing()
    if reason is None or in_ci():
        return
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.skip(reason=reason))
