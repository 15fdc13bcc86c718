"""The rule for what a test suite needs but may lack (a compiler, torch, mkdocs):
on a developer's machine a missing tool skips its tests with the reason; in CI
(``CI=true``) it fails them, so a CI image that silently lost a tool cannot
pass as green. pytest is imported only when a test is skipped or failed."""

from __future__ import annotations

import os


def in_ci() -> bool:
    """True when the environment says it is a CI run (CI=true/1/yes)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(found, what: str):
    """Skip (locally) or fail (CI) the calling test when ``found`` is falsy; returns ``found``."""
    import pytest

    if not found:
        message = f"{what} is not available"
        if in_ci():
            pytest.fail(f"{message}, and CI=true requires it", pytrace=False)
        pytest.skip(message)
    return found
