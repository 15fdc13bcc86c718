"""Exceptions raised by polylstm.

Every error names the argument or backend at fault and says what was expected
and what was received, so a user never has to read a traceback into a kernel.
"""

from __future__ import annotations


class PolyLSTMError(Exception):
    """Base class of every error polylstm raises on purpose."""


class InputError(PolyLSTMError, ValueError):
    """An argument has the wrong shape, dtype, rank, value or array type."""


class BackendError(PolyLSTMError):
    """Base class of backend selection and capability errors."""


class UnknownBackendError(BackendError, KeyError):
    """No backend of that name is registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class BackendUnavailableError(BackendError, RuntimeError):
    """The backend is registered but cannot run here (missing package, no device, ...)."""


class UnsupportedFeatureError(BackendError, NotImplementedError):
    """The backend does not implement a feature the call asked for (e.g. peepholes)."""


class PluginError(BackendError):
    """A plugin misbehaved while registering (bad description, duplicate name, ...)."""
