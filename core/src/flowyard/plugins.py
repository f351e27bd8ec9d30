"""Plugin discovery and loading on pluggy, each plugin inside its own guard.

Plugins come from the entry-point group ``flowyard`` and from objects passed in code. A plugin
that fails to import, or raises in a registration hook, is reported (name, version, error)
and skipped, and whatever it had registered in that hook is dropped; everything else keeps
working. With ``FLOWYARD_STRICT_PLUGINS=1`` the failure raises :class:`PluginError` instead.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Iterable, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from flowyard import hookspecs
from flowyard.config import Config
from flowyard.errors import PluginError
from flowyard.registry import Register, Registry

if TYPE_CHECKING:
    from flowyard.interfaces import Services

__all__ = ["PluginStatus", "PluginManager", "ENTRY_POINT_GROUP", "BUILTIN_PLUGIN", "BUILTIN_MODULE"]

ENTRY_POINT_GROUP = "flowyard"
#: The name under which the in-core defaults are registered (disable it like any plugin).
BUILTIN_PLUGIN = "builtin"
_REGISTRATION_HOOKS = frozenset(hookspecs.FAMILIES.values()) | {"register_commands"}
#: The module of the built-in plugin, imported by name by the composition root.
BUILTIN_MODULE = "flowyard.builtin.plugin"


@attrs.define
class PluginStatus:
    """What happened to one plugin.

    ``status`` is ``"loaded"``, ``"failed"`` or ``"disabled"``; ``error`` holds the failure's
    type and message (``"ImportError: No module named 'x'"``) for a failed plugin.
    """

    name: str
    version: str = ""
    distribution: str = ""
    source: str = ""
    status: str = "loaded"
    hooks: list[str] = attrs.field(factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the status as a JSON-ready dict."""
        return attrs.asdict(self)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class PluginManager:
    """Loads plugins into a pluggy manager and calls registration hooks per plugin.

    Args:
        config: the stack's configuration (plugin selection, strictness, tracing).
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.statuses: dict[str, PluginStatus] = {}
        self._order: list[str] = []

    # ------------------------------------------------------------------ loading

    def _selected(self, name: str) -> bool:
        enabled = self.config.enabled_plugins
        if name in self.config.disabled_plugins:
            return False
        return enabled is None or name in enabled

    def _fail(self, status: PluginStatus, exc: BaseException) -> None:
        status.status = "failed"
        status.error = _describe(exc)
        if self.config.trace_plugins:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        if self.config.strict_plugins:
            raise PluginError(
                f"plugin {status.name!r} ({status.distribution} {status.version}) failed: "
                f"{status.error}"
            ) from exc

    def add(self, plugin: object, *, name: str, version: str = "", distribution: str = "",
            source: str = "code") -> PluginStatus:
        """Register a plugin object (module, class instance) under ``name``.

        Returns its status; a name already taken gives a failed status (the first one stays).
        """
        status = PluginStatus(name=name, version=version, distribution=distribution,
                              source=source)
        if name in self.statuses:
            status.status = "failed"
            status.error = (f"duplicate plugin name {name!r}: already provided by "
                            f"{self.statuses[name].distribution or self.statuses[name].source}")
            self.statuses[f"{name} (duplicate from {distribution or source})"] = status
            if self.config.strict_plugins:
                raise PluginError(status.error)
            return status
        self.statuses[name] = status
        if not self._selected(name):
            status.status = "disabled"
            return status
        try:
            self.pm.register(plugin, name=name)
            callers = self.pm.get_hookcallers(plugin) or []
            status.hooks = sorted(caller.name for caller in callers)
            self._refuse_wrappers(name, callers)
        except (pluggy.PluginValidationError, ValueError, PluginError) as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            self._fail(status, exc)
            return status
        self._order.append(name)
        return status

    def _refuse_wrappers(self, name: str, callers: Sequence[Any]) -> None:
        """Raise PluginError for a wrapper implementation of a registration hook: they are
        called one plugin at a time, so there is nothing for a wrapper to wrap.
        """
        for caller in callers:
            if caller.name not in _REGISTRATION_HOOKS:
                continue
            for impl in caller.get_hookimpls():
                if impl.plugin_name == name and (impl.hookwrapper or impl.wrapper):
                    kind = "hookwrapper=True" if impl.hookwrapper else "wrapper=True"
                    raise PluginError(
                        f"plugin {name!r}: hook {caller.name!r} is marked {kind}, which "
                        f"registration hooks do not support (each plugin's hook is called "
                        f"on its own); use tryfirst=True or trylast=True to order it")

    def discover(self, entry_points: Iterable[metadata.EntryPoint] | None = None) -> None:
        """Load every plugin of the entry-point group ``flowyard`` inside its own guard."""
        if entry_points is None:
            entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep in entry_points:
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else ""
            version = dist.version if dist is not None else ""
            if ep.name in self.statuses:
                self.add(object(), name=ep.name, version=version, distribution=dist_name,
                         source=f"entry point {ep.value}")
                continue
            if not self._selected(ep.name):
                self.statuses[ep.name] = PluginStatus(
                    name=ep.name, version=version, distribution=dist_name,
                    source=f"entry point {ep.value}", status="disabled")
                continue
            started = time.perf_counter()
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is reported per plugin
                status = PluginStatus(name=ep.name, version=version, distribution=dist_name,
                                      source=f"entry point {ep.value}")
                self.statuses[ep.name] = status
                self._fail(status, exc)
                continue
            self.add(plugin, name=ep.name, version=version, distribution=dist_name,
                     source=f"entry point {ep.value}")
            if self.config.trace_plugins:
                ms = (time.perf_counter() - started) * 1000
                print(f"flowyard: loaded plugin {ep.name} in {ms:.1f} ms", file=sys.stderr)

    # ------------------------------------------------------------------ calling

    def ordered(self, hook_name: str) -> list[Any]:
        """Return the hook implementations of loaded plugins in calling order: those marked
        ``tryfirst``, then the others, then those marked ``trylast``, each group in plugin load
        order.
        """
        hook = getattr(self.pm.hook, hook_name)
        impls = {impl.plugin_name: impl for impl in hook.get_hookimpls()}
        found = [impls[name] for name in self._order
                 if name in impls and self.statuses[name].status == "loaded"]
        return sorted(found, key=lambda impl: 0 if impl.tryfirst else 2 if impl.trylast else 1)

    def call_registration(self, hook_name: str, registry: Registry[Any],
                          services: Services | None = None) -> None:
        """Call ``hook_name(register, config[, services])`` on each loaded plugin, each in its
        own guard, in the order of :meth:`ordered`.

        An implementation receives the arguments it names (pluggy's opt-in arguments). A
        plugin whose hook raises is marked failed and what it registered in that call is
        dropped.
        """
        for impl in self.ordered(hook_name):
            name = impl.plugin_name
            status = self.statuses[name]
            if status.status != "loaded":  # failed in an earlier hook of this loop
                continue
            if services is None and "services" in impl.argnames:
                self._fail(status, PluginError(
                    f"plugin {name!r}: {hook_name} asks for services, and none were given "
                    "(call the hook through a Stack)"))
                continue
            staged = Register(registry, name, staged=True)
            kwargs = {"register": staged, "config": self.config, "services": services}
            started = time.perf_counter()
            count = 0
            try:
                impl.function(*[kwargs[arg] for arg in impl.argnames])
                count = len(staged.entries)
                staged.commit()
            except Exception as exc:  # noqa: BLE001 - a plugin's failure is reported, not fatal
                self._fail(status, exc)
            if self.config.trace_plugins:
                ms = (time.perf_counter() - started) * 1000
                print(f"flowyard: {hook_name} -> {name}: {count} registered in {ms:.2f} ms",
                      file=sys.stderr)

    def call_commands(self, cli: Any) -> None:
        """Call ``register_commands(cli)`` on each loaded plugin inside its own guard."""
        for impl in self.ordered("register_commands"):
            name = impl.plugin_name
            try:
                impl.function(cli)
            except Exception as exc:  # noqa: BLE001 - reported per plugin
                self._fail(self.statuses[name], exc)

    def report(self) -> list[PluginStatus]:
        """Return the status of every plugin seen, loaded ones first, then by name."""
        order = {"loaded": 0, "failed": 1, "disabled": 2}
        return sorted(self.statuses.values(), key=lambda s: (order.get(s.status, 3), s.name))

    def failed(self) -> Sequence[PluginStatus]:
        """Return the plugins that failed."""
        return [s for s in self.statuses.values() if s.status == "failed"]
