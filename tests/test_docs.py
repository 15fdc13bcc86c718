"""The documentation site builds with warnings as errors, and its figure script runs.

mkdocs and its plugins come with the docs extra (``pip install -e '.[docs]'``),
which the CI test command installs: in CI (CI=true) a missing package is a
failure, elsewhere a skip.
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from polylstm.testing import in_ci

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS_MODULES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "pymdownx")


def _require(*modules):
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a dotted name whose parent is missing
            found = False
        if not found:
            missing.append(name)
    if missing:
        message = f"{', '.join(missing)} not installed (pip install -e '.[docs]')"
        if in_ci():
            pytest.fail(message + "; CI installs the docs extra, so this is a broken test setup")
        pytest.skip(message)


def test_site_builds_strict(tmp_path):
    _require(*DOCS_MODULES)
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # material's banner, not a warning of ours
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"

    assert (site / "img" / "gates.png").stat().st_size > 10_000
    assert 'src="../img/gates.png"' in (site / "cell" / "index.html").read_text()
    # The plugin page includes the example plugin's real files, not a copy.
    plugin_page = (site / "writing-a-plugin" / "index.html").read_text()
    assert 'class="nc">TorchBackend<' in plugin_page  # polylstm_torch/_backend.py
    assert "A distribution with an entry point" in plugin_page  # the plugin README's steps
    # The API reference is generated from the docstrings.
    functional = (site / "reference" / "functional" / "index.html").read_text()
    assert "Run one LSTM layer in one direction over a whole sequence." in functional


def test_gate_figure_script_draws_real_trajectories(tmp_path):
    _require("matplotlib")
    out = tmp_path / "gates.png"
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "scripts" / "make_gate_figure.py"), "--steps", "3", "--seq-len", "8",
         "--hidden-size", "4", "--units", "2", "--backend", "numpy", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "backend numpy" in result.stdout


def test_docstring_extension_keeps_lines_and_code_blocks():
    _require("griffe")
    import importlib.util as iu

    spec = iu.spec_from_file_location("griffe_plain_docstrings", ROOT / "docs" / "scripts" / "griffe_plain_docstrings.py")
    module = iu.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = ("Run it::\n\n    a = b  # code\n    c = d\n\n"
            "x: (T, B, I)\nw_ih: (4H, I), see :func:`~polylstm.lstm_forward`\n\nlast")
    assert module.plain(text) == ("Run it:\n\n    a = b  # code\n    c = d\n\n"
                                  "x: (T, B, I)  \nw_ih: (4H, I), see `polylstm.lstm_forward`\n\nlast")
