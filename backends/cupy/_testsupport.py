"""Test-suite helpers shared by tests/test_cupy_*.py (pytest is imported lazily).

The rule for tools the GPU checks need (NVRTC, nvcc, g++, libasan): on a
developer's machine a missing tool skips its tests with the reason; in CI
(``CI=true``) it fails them, so a CI image that silently lost a compiler
cannot pass as "green".
"""

from __future__ import annotations

import os
import subprocess

# The skip-locally / fail-in-CI rule is polylstm.testing's; re-exported for the CuPy tests.
from polylstm.testing import in_ci, require  # noqa: F401


def asan_runtime(cxx: str) -> str | None:
    """Path of the compiler's AddressSanitizer runtime (libasan.so), or None."""
    try:
        proc = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True)
    except OSError:
        return None
    path = proc.stdout.strip()
    # Without the library g++ echoes the bare name back.
    return path if os.path.isabs(path) and os.path.exists(path) else None
