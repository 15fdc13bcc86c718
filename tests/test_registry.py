"""Discovery, selection precedence and plugin isolation, with plugins installed
through real entry points (distributions written to a directory on sys.path)."""

import importlib
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import polylstm
from polylstm._registry import REGISTRY
from polylstm.errors import BackendUnavailableError, UnknownBackendError

FAKE_PLUGIN = '''
"""A loopback backend: delegates to the reference and counts its calls."""
from polylstm.backend import BackendInfo, hookimpl

LOADS = []
CALLS = []


def _load():
    from polylstm_numpy.reference import NumpyReferenceBackend

    class Loopback(NumpyReferenceBackend):
        name = "fake"

        def forward(self, *args):
            CALLS.append("forward")
            return super().forward(*args)

    LOADS.append(1)
    return Loopback()


@hookimpl
def polylstm_register_backends(register):
    register(BackendInfo(name="fake", load=_load, priority=50, version="fake 0.1", description="loopback"))
    register(BackendInfo(name="fake-missing", load=_load, available=lambda: "fakelib not installed"))
'''

BROKEN_IMPORT = 'raise ImportError("fakelib is broken")\n'

BROKEN_HOOK = '''
from polylstm.backend import BackendInfo, hookimpl

@hookimpl
def polylstm_register_backends(register):
    register(BackendInfo(name="half-registered", load=lambda: None))
    raise RuntimeError("registration exploded")
'''


def _write_distribution(root, dist_name, modules: dict, entry_points: dict):
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist_name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 0.1\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[polylstm.backends]\n{lines}\n")


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """Install three plugin distributions: a working one and two broken ones."""
    modules = {"fake_polylstm_plugin": FAKE_PLUGIN, "broken_import_plugin": BROKEN_IMPORT,
               "broken_hook_plugin": BROKEN_HOOK}
    _write_distribution(tmp_path, "fake_polylstm_plugin", {"fake_polylstm_plugin": FAKE_PLUGIN},
                        {"fake": "fake_polylstm_plugin"})
    _write_distribution(tmp_path, "broken_plugins", {k: modules[k] for k in ("broken_import_plugin", "broken_hook_plugin")},
                        {"broken-import": "broken_import_plugin", "broken-hook": "broken_hook_plugin"})
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    REGISTRY.reset()
    yield importlib.import_module("fake_polylstm_plugin")
    REGISTRY.reset()
    for name in modules:
        sys.modules.pop(name, None)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((3, 2, 4)), rng.standard_normal((8, 4)), rng.standard_normal((8, 2))


def _status(name):
    return {s.name: s for s in polylstm.available_backends()}[name]


def test_discovery_lists_plugins_with_their_source(plugins):
    fake = _status("fake")
    assert fake.available and fake.priority == 50 and fake.version == "fake 0.1"
    assert "entry point fake = fake_polylstm_plugin (fake_polylstm_plugin 0.1)" == fake.source
    missing = _status("fake-missing")
    assert not missing.available and missing.reason == "fakelib not installed"
    numpy_status = _status("numpy")
    assert numpy_status.available and "polylstm" in numpy_status.source


def test_broken_plugins_are_reported_and_isolated(plugins):
    broken = _status("broken-import")
    assert broken.broken and not broken.available
    assert "ImportError: fakelib is broken" in broken.reason
    hook = _status("broken-hook")
    assert hook.broken and "RuntimeError: registration exploded" in hook.reason
    # What the failing hook registered before raising is rolled back.
    assert "half-registered" not in REGISTRY.names()
    out = polylstm.lstm_forward(*_inputs())  # the library still works
    assert out.y.shape == (3, 2, 2)


def test_loading_is_lazy(plugins):
    polylstm.available_backends()
    assert plugins.LOADS == []
    polylstm.lstm_forward(*_inputs(), backend="fake")
    polylstm.lstm_forward(*_inputs(), backend="fake")
    assert plugins.LOADS == [1]
    assert plugins.CALLS == ["forward", "forward"]


def test_highest_priority_wins_automatic_selection(plugins):
    assert polylstm.lstm_forward(*_inputs()).backend == "fake"


def test_selection_precedence(plugins, monkeypatch):
    args = _inputs()
    monkeypatch.setenv("POLYLSTM_BACKEND", "numpy")
    assert polylstm.lstm_forward(*args).backend == "numpy"  # env beats priority
    polylstm.set_backend("fake")
    assert polylstm.lstm_forward(*args).backend == "fake"  # set_backend beats env
    with polylstm.use_backend("numpy"):
        assert polylstm.lstm_forward(*args).backend == "numpy"  # context beats set_backend
        with polylstm.use_backend("fake"):
            assert polylstm.lstm_forward(*args).backend == "fake"  # nesting
        assert polylstm.lstm_forward(*args).backend == "numpy"
        assert polylstm.lstm_forward(*args, backend="fake").backend == "fake"  # keyword beats all
    assert polylstm.lstm_forward(*args).backend == "fake"
    polylstm.set_backend(None)
    assert polylstm.lstm_forward(*args).backend == "numpy"


def test_env_variable_is_read_at_use_not_import(plugins, monkeypatch):
    assert polylstm.lstm_forward(*_inputs()).backend == "fake"
    monkeypatch.setenv("POLYLSTM_BACKEND", "numpy")
    assert polylstm.lstm_forward(*_inputs()).backend == "numpy"


def test_use_backend_is_per_thread(plugins):
    seen = {}
    inner_ready = threading.Event()
    outer_done = threading.Event()

    def worker():
        with polylstm.use_backend("numpy"):
            inner_ready.set()
            outer_done.wait(5)
            seen["worker"] = polylstm.lstm_forward(*_inputs()).backend

    thread = threading.Thread(target=worker)
    thread.start()
    inner_ready.wait(5)
    seen["main"] = polylstm.lstm_forward(*_inputs()).backend  # the worker's choice does not leak here
    outer_done.set()
    thread.join()
    assert seen == {"main": "fake", "worker": "numpy"}


def test_unknown_and_unavailable_backends_explain_themselves(plugins):
    with pytest.raises(UnknownBackendError, match=r"unknown backend 'nope'; available backends: .*numpy"):
        polylstm.lstm_forward(*_inputs(), backend="nope")
    with pytest.raises(BackendUnavailableError, match=r"'fake-missing' is unavailable: fakelib not installed; "
                                                       r"available backends: .*fake"):
        polylstm.lstm_forward(*_inputs(), backend="fake-missing")
    with pytest.raises(BackendUnavailableError, match="fakelib not installed"):
        polylstm.set_backend("fake-missing")
    with pytest.raises(UnknownBackendError):
        with polylstm.use_backend("nope"):
            pass


def test_disable_autoload_keeps_only_builtins(plugins, monkeypatch):
    monkeypatch.setenv("POLYLSTM_DISABLE_PLUGIN_AUTOLOAD", "1")
    REGISTRY.reset()
    names = {s.name for s in polylstm.available_backends()}
    assert "numpy" in names and not names & {"fake", "fake-missing", "broken-import", "broken-hook"}


def test_plugins_variable_selects_plugins(plugins, monkeypatch):
    monkeypatch.setenv("POLYLSTM_PLUGINS", "fake, numpy")
    REGISTRY.reset()
    names = {s.name for s in polylstm.available_backends()}
    assert names == {"fake", "fake-missing", "numpy"}


def test_runtime_registration_and_duplicate_names(plugins):
    info = polylstm.BackendInfo(name="fake", load=lambda: None)
    with pytest.raises(polylstm.PluginError, match="already registered"):
        polylstm.register_backend(info)


def test_load_returning_wrong_type_is_a_clear_error(plugins):
    polylstm.register_backend(polylstm.BackendInfo(name="bad-load", load=lambda: object(), auto_select=False))
    with pytest.raises(BackendUnavailableError, match="bad-load.*not a polylstm.backend.Backend"):
        polylstm.lstm_forward(*_inputs(), backend="bad-load")
    REGISTRY.unregister_backend("bad-load")


def test_import_polylstm_is_light():
    # import polylstm never imports a compute library; listing backends may
    # import cupy (asking for a CUDA device needs it) but never numba or torch.
    code = ("import sys, polylstm; "
            "heavy = [m for m in ('numba', 'cupy', 'torch', 'scipy') if m in sys.modules]; "
            "assert not heavy, ('import', heavy); "
            "polylstm.available_backends(); "
            "heavy = [m for m in ('numba', 'torch', 'scipy') if m in sys.modules]; "
            "assert not heavy, ('available_backends', heavy); print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_runtime_plugin_with_wrong_hook_signature_is_rejected(plugins):
    class WrongSignature:
        @polylstm.hookimpl
        def polylstm_register_backends(self, registrar):  # the spec's argument is 'register'
            pass

    with pytest.raises(polylstm.PluginError, match=r"(?s)plugin .wrong. failed to register: PluginValidationError.*registrar"):
        polylstm.register_plugin(WrongSignature(), name="wrong")


def test_runtime_plugin_registers_backends(plugins):
    class Extra:
        @polylstm.hookimpl
        def polylstm_register_backends(self, register):
            from polylstm_numpy.reference import NumpyReferenceBackend
            register(polylstm.BackendInfo(name="extra", load=NumpyReferenceBackend, auto_select=False))

    polylstm.register_plugin(Extra(), name="extra-plugin")
    assert _status("extra").source == "registered at run time (extra-plugin)"
    assert polylstm.lstm_forward(*_inputs(), backend="extra").y.shape == (3, 2, 2)
