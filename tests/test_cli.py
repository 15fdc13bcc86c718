"""The polylstm command line: every command runs and says what it should."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import polylstm
from polylstm._registry import REGISTRY
from polylstm.backend import Backend, BackendInfo
from polylstm.cli import main
from polylstm.module import LSTM


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", [[], ["backends"], ["check"], ["demo"]])
def test_help_everywhere(capsys, command):
    with pytest.raises(SystemExit) as info:
        main(command + ["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: polylstm")
    if command == ["demo"]:
        assert "--seq-len" in out and "--baseline" in out and "(default: 100)" in out


def test_no_command_prints_help_and_fails(capsys):
    code, out, _ = run(capsys)
    assert code == 2 and "backends" in out and "demo" in out


def test_backends_lists_every_record(capsys):
    code, out, _ = run(capsys, "backends")
    assert code == 0
    assert out.splitlines()[0].split() == ["NAME", "STATUS", "PRIORITY", "ARRAYS", "VERSION", "NOTE"]
    for record in polylstm.available_backends():
        row = next(line for line in out.splitlines() if line.split() and line.split()[0] == record.name)
        assert ("broken" if record.broken else "available" if record.available else "unavailable") in row
        assert f"  {record.name}: from {record.source}" in out
        if record.reason:
            assert record.reason.splitlines()[0].strip() in out
    numpy_row = next(line for line in out.splitlines() if line.startswith("numpy "))
    assert "10" in numpy_row and "numpy" in numpy_row


def test_backends_json(capsys):
    code, out, _ = run(capsys, "backends", "--json")
    assert code == 0
    records = json.loads(out)
    assert {r["name"] for r in records} == {r.name for r in polylstm.available_backends()}
    numpy_record = next(r for r in records if r["name"] == "numpy")
    assert numpy_record["available"] is True and numpy_record["priority"] == 10


def test_check_passes_for_the_reference(capsys):
    code, out, _ = run(capsys, "check", "numpy", "--dtype", "float64", "--only", "forward", "--only", "backward")
    assert code == 0
    assert "forward" in out and "backward" in out and "PASS" in out
    assert "OK: 2 pass" in out


class _OffByOne(Backend):
    """The reference with a wrong output: what `polylstm check` must catch."""

    name = "cli-test-wrong"
    xp = np

    def forward(self, *args):
        from polylstm_numpy.reference import forward

        out = forward(*args)
        out.y = out.y + 1e-3
        return out


@pytest.fixture
def wrong_backend():
    REGISTRY.register_backend(BackendInfo(name="cli-test-wrong", load=_OffByOne, auto_select=False))
    yield "cli-test-wrong"
    REGISTRY.unregister_backend("cli-test-wrong")


def test_check_fails_with_exit_1_on_a_wrong_backend(capsys, wrong_backend):
    code, out, _ = run(capsys, "check", wrong_backend, "--dtype", "float64", "--only", "forward")
    assert code == 1
    assert "FAIL" in out and "FAILED: 1 fail" in out
    code, out, _ = run(capsys, "check", wrong_backend, "--dtype", "float64", "--only", "forward",
                       "--expect-fail", "forward=known off by one")
    assert code == 0 and "XFAIL" in out


def test_check_unknown_backend_or_check_is_a_usage_error(capsys):
    code, _, err = run(capsys, "check", "no-such-backend")
    assert code == 2 and "no-such-backend" in err and "available backends" in err
    code, _, err = run(capsys, "check", "numpy", "--only", "no-such-check")
    assert code == 2 and "unknown check" in err


def test_check_list(capsys):
    code, out, _ = run(capsys, "check", "numpy", "--list")
    assert code == 0 and "backward_everything" in out


def test_demo_runs_saves_figure_and_model(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    figure = tmp_path / "demo.png"
    model = tmp_path / "model.npz"
    code, out, _ = run(capsys, "demo", "--steps", "4", "--seq-len", "12", "--hidden-size", "6", "--batch-size", "8",
                       "--test-size", "16", "--eval-every", "2", "--backend", "numpy", "--baseline",
                       "--output", str(figure), "--save-model", str(model), "--no-progress")
    assert code == 0
    assert "backend numpy" in out and "LSTM test MSE" in out and "tanh RNN test MSE" in out
    assert "trivial answer" in out
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"figure saved to {figure}" in out
    loaded = LSTM.load(model)
    assert loaded.hidden_size == 6 and loaded.input_size == 2


def test_demo_without_matplotlib_says_how_to_get_the_figure(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    code, out, _ = run(capsys, "demo", "--steps", "2", "--seq-len", "6", "--hidden-size", "4", "--batch-size", "4",
                       "--test-size", "8", "--backend", "numpy", "--output", str(tmp_path / "x.png"),
                       "--no-progress")
    assert code == 0
    assert "pip install 'polylstm[plot]'" in out
    assert not (tmp_path / "x.png").exists()


def test_demo_rejects_bad_options(capsys):
    code, _, err = run(capsys, "demo", "--steps", "0", "--no-plot", "--no-progress")
    assert code == 2 and "steps" in err
    code, _, err = run(capsys, "demo", "--backend", "no-such-backend", "--steps", "1", "--no-plot", "--no-progress")
    assert code == 2 and "unknown backend 'no-such-backend'" in err and "available backends" in err


def test_console_script_module_entry():
    done = subprocess.run([sys.executable, "-m", "polylstm.cli", "backends"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "numpy" in done.stdout


def test_check_treats_unannounced_capabilities_as_expected_failures(capsys):
    from polylstm_numpy.reference import NumpyReferenceBackend

    class NoPeephole(NumpyReferenceBackend):
        name = "cli-no-peephole"
        capabilities = NumpyReferenceBackend.capabilities - {"peephole"}

    REGISTRY.register_backend(BackendInfo(name="cli-no-peephole", load=NoPeephole, auto_select=False))
    try:
        assert main(["check", "cli-no-peephole"]) == 0
        out = capsys.readouterr().out
        assert "38 pass, 6 xfail" in out
    finally:
        REGISTRY.unregister_backend("cli-no-peephole")
