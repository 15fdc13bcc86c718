"""polylstm: LSTM forward and backpropagation through time on interchangeable backends.

Importing polylstm is light: no backend library (numba, cupy) is imported until
a backend is first used.
"""

from __future__ import annotations

from ._registry import REGISTRY as _REGISTRY
from ._registry import BackendStatus
from ._selection import set_backend, use_backend
from .backend import BackendInfo, Gradients, Tape, hookimpl
from .errors import (
    BackendError,
    BackendUnavailableError,
    InputError,
    PluginError,
    PolyLSTMError,
    UnknownBackendError,
    UnsupportedFeatureError,
)
from .functional import GateTrajectories, LSTMOutput, lstm_backward, lstm_forward
from . import convert, init, nn
from .module import LSTM, LSTMGradients, LSTMTape
from .nn import SGD, Adam, Linear, clip_grad_norm, mse_loss, softmax_cross_entropy

__version__ = "0.1.0"


def available_backends() -> list[BackendStatus]:
    """Every registered backend (and every broken plugin), one status record each.

    Each :class:`BackendStatus` says whether it can run here and why not,
    its priority, the array types it claims, its version and which plugin
    registered it. Checking availability never imports numba or cupy.
    """
    return _REGISTRY.statuses()


def get_backend(name: str):
    """The loaded backend object ``name`` (loads it on first use)."""
    return _REGISTRY.get(name)


def register_backend(info: BackendInfo) -> None:
    """Register a backend description at run time (a plugin without an entry point)."""
    _REGISTRY.register_backend(info)


def register_plugin(plugin, name: str | None = None) -> None:
    """Register a plugin object (a module or object with the hook) at run time."""
    _REGISTRY.register_plugin(plugin, name)


__all__ = [
    "LSTM", "LSTMTape", "LSTMGradients", "Linear", "SGD", "Adam", "mse_loss", "softmax_cross_entropy",
    "clip_grad_norm", "nn", "convert", "init",
    "lstm_forward", "lstm_backward", "LSTMOutput", "GateTrajectories", "Gradients", "Tape",
    "available_backends", "get_backend", "set_backend", "use_backend", "register_backend", "register_plugin",
    "BackendInfo", "BackendStatus", "hookimpl",
    "PolyLSTMError", "InputError", "BackendError", "UnknownBackendError", "BackendUnavailableError",
    "UnsupportedFeatureError", "PluginError", "__version__",
]
