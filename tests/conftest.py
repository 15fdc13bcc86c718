import pytest

import polylstm
from polylstm import _selection


@pytest.fixture(autouse=True)
def _clean_backend_choice(monkeypatch):
    """Each test starts with no backend chosen by set_backend or the environment."""
    monkeypatch.delenv("POLYLSTM_BACKEND", raising=False)
    _selection.reset_for_tests()
    yield
    _selection.reset_for_tests()
