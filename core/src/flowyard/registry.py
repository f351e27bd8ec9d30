"""Per-family registries of a stack.

A :class:`Registry` maps names to objects (or to lazy factories) and remembers which plugin
registered each one. Registries belong to one stack; there is no module-level registry.

The priority rule (how a plugin replaces a built-in, or any other registration, by name):
every registration has a ``default_priority`` (its metadata, 0 when unset). When a name is
registered twice, the registration with the **higher** priority is kept; on a tie the first
one is kept (plugins register in load order: ``builtin`` first, then entry points, then
plugins given in code). The ``builtin`` plugin registers everything at priority -1, so a
plugin that registers ``echo``, ``agent``, ``workflow``, ``local`` or ``memory`` at the default
priority 0 replaces the built-in one. Every replaced or ignored registration is recorded as a
:class:`Duplicate`; only an ignored one (a tie) raises in strict mode. The same priority picks
the default among different names (:meth:`Registry.preferred`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import attrs

from flowyard.errors import DuplicateNameError, PluginError, UnknownNameError

__all__ = ["Registry", "Register", "Duplicate", "missing_members"]

T = TypeVar("T")

_MISSING = object()


def missing_members(obj: Any, protocol: type) -> list[str]:
    """Return the public members of ``protocol`` that ``obj`` lacks.

    Args:
        obj: the object to check.
        protocol: a Protocol class; its methods and annotated attributes count.

    Returns:
        The missing member names in declaration order; empty when ``obj`` has them all.
    """
    wanted: list[str] = []
    for klass in reversed(protocol.__mro__):
        if klass in (object, Generic) or getattr(klass, "_is_protocol", False) is False:
            continue
        for member in [*getattr(klass, "__annotations__", {}), *vars(klass)]:
            if not member.startswith("_") and member not in wanted:
                wanted.append(member)
    return [member for member in wanted if not hasattr(obj, member)]


@attrs.frozen
class Duplicate:
    """A name registered twice in one registry: the first registration wins.

    ``kept`` and ``dropped`` are plugin names.
    """

    kind: str
    name: str
    kept: str
    dropped: str


class Register:
    """The ``register`` callable handed to registration hooks.

    Call ``register(name, obj)`` or ``register(name, factory=callable)``; extra keyword
    arguments are kept as the entry's metadata (for example ``default_model="local/smollm2"``
    and ``default_priority=10`` on a provider; see :meth:`Registry.metadata_of`). The plugin
    name is filled in by the plugin manager.

    Args:
        registry: where entries go.
        plugin: the registering plugin's name (kept per entry).
        staged: buffer entries until :meth:`commit` (the plugin manager commits only when the
            plugin's hook returned without raising); otherwise add them at once.

    Raises (on call):
        TypeError: not exactly one of ``obj`` and ``factory=``.
        ValueError: ``name`` is empty or not a string.
    """

    __slots__ = ("_registry", "_plugin", "_staged", "entries")

    def __init__(self, registry: Registry[Any], plugin: str, *, staged: bool = False) -> None:
        self._registry = registry
        self._plugin = plugin
        self._staged = staged
        self.entries: list[tuple[str, Any, Callable[[], Any] | None, dict[str, Any]]] = []

    def __call__(self, name: str, obj: Any = _MISSING, *, factory: Callable[[], Any] | None = None,
                 **metadata: Any) -> None:
        """Register ``obj``, or a lazy ``factory``, under ``name`` with ``metadata``.

        Args:
            name: the registered name, unique in its registry (a non-empty string).
            obj: the object to register now.
            factory: a zero-argument callable building the object on first lookup.
            **metadata: kept with the entry (``default_priority``, ``default_model``...).

        Raises:
            TypeError: not exactly one of ``obj`` and ``factory=``.
            ValueError: ``name`` is empty or not a string.
        """
        if (obj is _MISSING) == (factory is None):
            raise TypeError("register() takes exactly one of obj and factory=")
        self._registry.check_name(name)
        self.entries.append((name, obj, factory, metadata))
        if not self._staged:
            self.commit()

    def commit(self) -> None:
        """Add the buffered entries to the registry (in registration order)."""
        entries, self.entries = self.entries, []
        for name, obj, factory, metadata in entries:  # all or nothing: check before adding
            if factory is None:
                self._registry._check_object(name, obj, self._plugin, metadata)
        for name, obj, factory, metadata in entries:
            self._registry.add(name, obj, factory=factory, plugin=self._plugin, **metadata)


class Registry(Generic[T]):
    """Names to objects of one family (providers, tools, ...).

    Args:
        kind: the family's singular name, used in error messages (``"provider"``).
        strict: raise :class:`DuplicateNameError` on a duplicate name instead of recording it.
        protocol: the interface every registered object must provide (a runtime-checkable
            Protocol); an object registered directly is checked when added, one built by a
            lazy factory when first built. A mismatch raises :class:`PluginError` naming the
            plugin, the name and the missing members.
        validator: ``validator(name, obj, metadata) -> problem or None``, a family's own check
            of each entry (made where ``protocol`` is checked); a problem raises
            :class:`PluginError` naming the plugin and the name.
    """

    def __init__(self, kind: str, *, strict: bool = False,
                 protocol: type | None = None,
                 validator: Callable[[str, Any, dict[str, Any]], str | None] | None = None
                 ) -> None:
        self.kind = kind
        self.strict = strict
        self.protocol = protocol
        self.validator = validator
        self._values: dict[str, Any] = {}
        self._factories: dict[str, Callable[[], T]] = {}
        self._plugins: dict[str, str] = {}
        self._metadata: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.duplicates: list[Duplicate] = []

    def add(self, name: str, obj: Any = _MISSING, *, factory: Callable[[], T] | None = None,
            plugin: str = "<code>", **metadata: Any) -> None:
        """Register ``obj`` (or a lazy ``factory``) under ``name``.

        A second registration of the same name replaces the first when its
        ``default_priority`` is higher (the module's priority rule); otherwise it is ignored.
        Either way it is recorded in :attr:`duplicates`.

        Raises:
            ValueError: ``name`` is empty or not a string.
            DuplicateNameError: an ignored registration (same or lower priority) in a strict
                registry.
        """
        self.check_name(name)
        if factory is None:
            self._check_object(name, obj, plugin, metadata)
        if name in self._plugins:
            old_priority = int(self._metadata[name].get("default_priority", 0))
            if int(metadata.get("default_priority", 0)) > old_priority:
                self.duplicates.append(Duplicate(self.kind, name, plugin, self._plugins[name]))
                self._values.pop(name, None)
                self._factories.pop(name, None)
                del self._plugins[name]  # re-added below, at the end of the order
                return self.add(name, obj, factory=factory, plugin=plugin, **metadata)
            dup = Duplicate(self.kind, name, self._plugins[name], plugin)
            if self.strict:
                raise DuplicateNameError(
                    f"{self.kind} {name!r} registered by {plugin!r} is already registered by "
                    f"{self._plugins[name]!r}"
                )
            self.duplicates.append(dup)
            return
        self._plugins[name] = plugin
        self._metadata[name] = metadata
        if factory is not None:
            self._factories[name] = factory
        else:
            self._values[name] = obj

    def check_name(self, name: object) -> None:
        """Raise ValueError unless ``name`` is a non-empty string."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

    def get(self, name: str) -> T:
        """Return the object registered as ``name``, building it on first use when lazy.

        Raises:
            UnknownNameError: ``name`` is not registered; the message lists what is.
        """
        try:
            return self._values[name]  # type: ignore[no-any-return]
        except KeyError:
            pass
        factory = self._factories.get(name)
        if factory is None:
            raise UnknownNameError(self.kind, name, self._plugins)
        with self._lock:
            if name not in self._values:
                built = factory()
                self._check_object(name, built, self._plugins[name], self._metadata[name])
                self._values[name] = built
        return self._values[name]  # type: ignore[no-any-return]

    def _check_object(self, name: str, obj: Any, plugin: str,
                      metadata: dict[str, Any] | None = None) -> None:
        """Raise PluginError when ``obj`` lacks members of :attr:`protocol` or the
        :attr:`validator` finds a problem.
        """
        if self.validator is not None:
            problem = self.validator(name, obj, dict(metadata or {}))
            if problem:
                raise PluginError(f"plugin {plugin!r} registered {self.kind} {name!r}: "
                                  f"{problem}")
        if self.protocol is None:
            return
        missing = missing_members(obj, self.protocol)
        if missing:
            raise PluginError(
                f"plugin {plugin!r} registered {self.kind} {name!r} as a "
                f"{type(obj).__name__}, which is not a {self.kind}: it lacks "
                f"{', '.join(missing)} (see flowyard.interfaces.{self.protocol.__name__})")

    def loaded(self) -> dict[str, T]:
        """Return the objects already built (lazy entries that were never used are left out)."""
        return dict(self._values)

    def plugin_of(self, name: str) -> str:
        """Return the name of the plugin that registered ``name``."""
        if name not in self._plugins:
            raise UnknownNameError(self.kind, name, self._plugins)
        return self._plugins[name]

    def metadata_of(self, name: str) -> dict[str, Any]:
        """Return the metadata given at registration (an empty dict when none)."""
        if name not in self._plugins:
            raise UnknownNameError(self.kind, name, self._plugins)
        return dict(self._metadata[name])

    def preferred(self, *, requires: str | None = None) -> str | None:
        """Return the name with the highest ``default_priority`` metadata (0 when unset; ties
        go to the name registered first), or None when nothing qualifies.

        Args:
            requires: only consider entries whose metadata has this key set (truthy).
        """
        best: tuple[int, str] | None = None
        for name in self._plugins:  # registration order
            meta = self._metadata[name]
            if requires is not None and not meta.get(requires):
                continue
            priority = int(meta.get("default_priority", 0))
            if best is None or priority > best[0]:
                best = (priority, name)
        return None if best is None else best[1]

    def names(self) -> list[str]:
        """Return the registered names, sorted."""
        return sorted(self._plugins)

    def __contains__(self, name: object) -> bool:
        return name in self._plugins

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._plugins)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()!r})"
