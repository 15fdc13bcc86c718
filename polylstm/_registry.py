"""Backend discovery and loading.

Plugins are found through the ``polylstm.backends`` entry-point group (the
built-in backends too, declared in polylstm's own pyproject), registered with a
pluggy PluginManager, and asked once to describe their backends. Loading a
backend (importing numba, cupy, ...) happens only when it is first used.
pluggy stays off the hot path: after discovery, dispatch is a dict lookup.

Environment (read when discovery first runs):
  POLYLSTM_DISABLE_PLUGIN_AUTOLOAD=1  load only the built-in backends.
  POLYLSTM_PLUGINS=a,b                load only the plugins (entry-point names) listed.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import os
import threading
from typing import Optional

import pluggy

from . import _hookspecs
from .backend import ENTRY_POINT_GROUP, PROJECT_NAME, ALL_CAPABILITIES, Backend, BackendInfo
from .errors import BackendUnavailableError, PluginError, UnknownBackendError

#: Entry-point name -> module of the backends shipped in polylstm's own distribution.
BUILTIN_PLUGINS = {"numpy": "polylstm_numpy", "numba": "polylstm_numba", "cupy": "polylstm_cupy"}
OWN_DISTRIBUTION = "polylstm"


@dataclasses.dataclass(frozen=True)
class BackendStatus:
    """One row of :func:`polylstm.available_backends`.

    name, available (bool), reason (why not, or None), priority, array_types,
    auto_select, version, description, source (which plugin registered it),
    broken (True for a plugin that failed to import or register: then ``name``
    is the plugin's name and ``reason`` its error).
    """

    name: str
    available: bool
    reason: Optional[str]
    priority: int
    array_types: tuple
    auto_select: bool
    version: Optional[str]
    description: str
    source: str
    broken: bool = False


@dataclasses.dataclass
class _Entry:
    info: BackendInfo
    source: str
    backend: Optional[Backend] = None
    load_error: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class BrokenPlugin:
    name: str
    source: str
    error: str


def _describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Registry:
    """Holds the registered backends. One process-wide instance: :data:`REGISTRY`."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._broken: list[BrokenPlugin] = []
        self._discovered = False
        self.plugin_manager = pluggy.PluginManager(PROJECT_NAME)
        self.plugin_manager.add_hookspecs(_hookspecs)

    # -- discovery ---------------------------------------------------------
    def _ensure_discovered(self) -> None:
        if self._discovered:
            return
        with self._lock:
            if not self._discovered:
                self._discover()
                self._discovered = True

    def _selected_entry_points(self):
        """Entry points to load, honouring the two environment variables."""
        points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        only = os.environ.get("POLYLSTM_PLUGINS", "").strip()
        builtins_only = os.environ.get("POLYLSTM_DISABLE_PLUGIN_AUTOLOAD", "").strip() not in ("", "0")

        def is_builtin(ep) -> bool:
            dist = getattr(ep, "dist", None)
            return ep.name in BUILTIN_PLUGINS and (dist is None or dist.name == OWN_DISTRIBUTION)

        # Our own distribution may be on sys.path without its metadata (a
        # source checkout): fall back to importing the built-ins directly.
        found = {ep.name for ep in points if is_builtin(ep)}
        fallback = [name for name in BUILTIN_PLUGINS if name not in found]

        if builtins_only:
            points = [ep for ep in points if is_builtin(ep)]
        if only:
            wanted = {name.strip() for name in only.split(",") if name.strip()}
            points = [ep for ep in points if ep.name in wanted]
            fallback = [name for name in fallback if name in wanted]
        return points, fallback

    def _discover(self) -> None:
        points, fallback = self._selected_entry_points()
        seen_names = set()
        for ep in points:
            # Two distributions may declare the same entry point (e.g. an
            # editable and a regular install); the first one wins.
            if ep.name in seen_names:
                continue
            seen_names.add(ep.name)
            dist = getattr(ep, "dist", None)
            where = f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"
            source = f"entry point {ep.name} = {ep.value} ({where})"
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not break the library
                self._broken.append(BrokenPlugin(ep.name, source, _describe_error(exc)))
                continue
            self._register_plugin(plugin, ep.name, source)
        for name in fallback:
            module_name = BUILTIN_PLUGINS[name]
            try:
                plugin = importlib.import_module(module_name)
            except ModuleNotFoundError:
                continue
            except Exception as exc:
                self._broken.append(BrokenPlugin(name, f"built-in module {module_name}", _describe_error(exc)))
                continue
            self._register_plugin(plugin, name, f"built-in module {module_name}")

    def _register_plugin(self, plugin, name: str, source: str) -> Optional[BrokenPlugin]:
        """Register ``plugin`` and call its hook; returns the failure, if any (also recorded)."""

        def broken(message: str) -> BrokenPlugin:
            record = BrokenPlugin(name, source, message)
            self._broken.append(record)
            return record

        try:
            self.plugin_manager.register(plugin, name=name)
        except Exception as exc:  # e.g. a hook with a wrong signature
            return broken(_describe_error(exc))
        impls = [i for i in self.plugin_manager.hook.polylstm_register_backends.get_hookimpls() if i.plugin is plugin]
        if not impls:
            self.plugin_manager.unregister(plugin)
            return broken("PluginError: plugin defines no polylstm_register_backends hook")
        for impl in impls:
            # Each plugin is called on its own so one failure stays contained.
            added: list[str] = []
            try:
                impl.function(register=lambda info: added.append(self._add(info, source)))
            except Exception as exc:
                for backend_name in added:
                    self._entries.pop(backend_name, None)
                return broken(_describe_error(exc))
        return None

    def _add(self, info: BackendInfo, source: str) -> str:
        if not isinstance(info, BackendInfo):
            raise PluginError(
                f"register() expects a polylstm.backend.BackendInfo, got {type(info).__name__}"
            )
        if not info.name or not isinstance(info.name, str):
            raise PluginError(f"backend name must be a non-empty string, got {info.name!r}")
        if not callable(info.load) or not callable(info.available):
            raise PluginError(f"backend {info.name!r}: load and available must be callables")
        existing = self._entries.get(info.name)
        if existing is not None:
            raise PluginError(
                f"backend {info.name!r} from {source} is already registered by {existing.source}"
            )
        self._entries[info.name] = _Entry(info=info, source=source)
        return info.name

    # -- public operations -------------------------------------------------
    def register_plugin(self, plugin, name: Optional[str] = None) -> None:
        """Register a plugin object (module or instance with the hook) at run time."""
        self._ensure_discovered()
        with self._lock:
            plugin_name = name or getattr(plugin, "__name__", None) or repr(plugin)
            failure = self._register_plugin(plugin, plugin_name, f"registered at run time ({plugin_name})")
        if failure is not None:
            raise PluginError(f"plugin {plugin_name!r} failed to register: {failure.error}")

    def register_backend(self, info: BackendInfo, source: str = "registered at run time") -> None:
        """Register one backend description directly."""
        self._ensure_discovered()
        with self._lock:
            self._add(info, source)

    def unregister_backend(self, name: str) -> None:
        self._ensure_discovered()
        with self._lock:
            if name not in self._entries:
                raise UnknownBackendError(self._unknown_message(name))
            del self._entries[name]

    def names(self) -> list[str]:
        self._ensure_discovered()
        return list(self._entries)

    def info(self, name: str) -> BackendInfo:
        self._ensure_discovered()
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownBackendError(self._unknown_message(name))
        return entry.info

    def unavailable_reason(self, name: str) -> Optional[str]:
        """None when backend ``name`` can run here, else why not."""
        entry = self._entries[name]
        if entry.load_error is not None:
            return entry.load_error
        try:
            reason = entry.info.available()
        except Exception as exc:  # available() must not raise; treat it as unavailable
            return f"available() raised {_describe_error(exc)}"
        return None if reason in (None, "") else str(reason)

    def statuses(self) -> list[BackendStatus]:
        self._ensure_discovered()
        rows = []
        for name, entry in self._entries.items():
            reason = self.unavailable_reason(name)
            info = entry.info
            rows.append(
                BackendStatus(
                    name=name,
                    available=reason is None,
                    reason=reason,
                    priority=info.priority,
                    array_types=tuple(info.array_types),
                    auto_select=info.auto_select,
                    version=info.version,
                    description=info.description,
                    source=entry.source,
                )
            )
        for broken in self._broken:
            rows.append(
                BackendStatus(
                    name=broken.name,
                    available=False,
                    reason=f"plugin failed to load: {broken.error}",
                    priority=0,
                    array_types=(),
                    auto_select=False,
                    version=None,
                    description="",
                    source=broken.source,
                    broken=True,
                )
            )
        return rows

    def broken_plugins(self) -> list[BrokenPlugin]:
        self._ensure_discovered()
        return list(self._broken)

    def available_names(self) -> list[str]:
        return [name for name in self.names() if self.unavailable_reason(name) is None]

    def _unknown_message(self, name: str) -> str:
        available = ", ".join(self.available_names()) or "none"
        return f"unknown backend {name!r}; available backends: {available}"

    def get(self, name: str) -> Backend:
        """The loaded backend ``name``; loads it on first use.

        Raises UnknownBackendError or BackendUnavailableError, naming the backend,
        the reason, and the backends that are available.
        """
        self._ensure_discovered()
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownBackendError(self._unknown_message(name))
        if entry.backend is not None:
            return entry.backend
        with self._lock:
            if entry.backend is not None:
                return entry.backend
            reason = self.unavailable_reason(name)
            if reason is None:
                try:
                    backend = entry.info.load()
                    _check_loaded_backend(backend, name)
                except Exception as exc:
                    entry.load_error = f"failed to load: {_describe_error(exc)}"
                    reason = entry.load_error
                else:
                    entry.backend = backend
                    return backend
            others = [n for n in self.available_names() if n != name]
            raise BackendUnavailableError(
                f"backend {name!r} is unavailable: {reason}; available backends: {', '.join(others) or 'none'}"
            )

    def candidates(self, array_type: str) -> list[str]:
        """Auto-selectable available backends claiming ``array_type``, best first."""
        self._ensure_discovered()
        names = [
            name
            for name, entry in self._entries.items()
            if entry.info.auto_select and array_type in entry.info.array_types
        ]
        names.sort(key=lambda n: -self._entries[n].info.priority)
        # A loaded backend is available: skip its available() probe (importlib
        # lookups, ~10 us per call on the auto-selection path of every call).
        return [name for name in names
                if self._entries[name].backend is not None or self.unavailable_reason(name) is None]

    def reset(self) -> None:
        """Forget everything and discover again at next use (for tests)."""
        with self._lock:
            for plugin in list(self.plugin_manager.get_plugins()):
                self.plugin_manager.unregister(plugin)
            self._entries.clear()
            self._broken.clear()
            self._discovered = False


def _check_loaded_backend(backend, name: str) -> None:
    if not isinstance(backend, Backend):
        raise PluginError(f"load() of backend {name!r} returned {type(backend).__name__}, not a polylstm.backend.Backend")
    unknown = set(backend.capabilities) - ALL_CAPABILITIES
    if unknown:
        raise PluginError(f"backend {name!r} announces unknown capabilities {sorted(unknown)}")
    if backend.xp is None:
        raise PluginError(f"backend {name!r} does not set its array module (xp)")


REGISTRY = Registry()
