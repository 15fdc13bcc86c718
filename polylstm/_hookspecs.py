"""The hook a backend plugin implements (pluggy project name ``polylstm``)."""

from __future__ import annotations

import pluggy

from .backend import PROJECT_NAME

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec
def polylstm_register_backends(register):
    """Describe the backends this plugin provides.

    Call ``register(BackendInfo(...))`` once per backend (see
    :class:`polylstm.backend.BackendInfo`). Keep this cheap: do not import the
    compute library here; put that inside ``BackendInfo.load``.

    :param register: callable taking one :class:`~polylstm.backend.BackendInfo`.
    """
