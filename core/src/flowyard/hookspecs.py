"""Hook specifications: how a plugin adds behaviour to a stack.

A plugin is a module (or object) with functions marked ``@flowyard.hookimpl`` whose names
match the specifications below, registered through the entry-point group ``flowyard``::

    [project.entry-points.flowyard]
    myplugin = "myplugin.plugin"

Registration hooks are called once when a :class:`~flowyard.stack.Stack` is built. They must be
cheap and synchronous: import heavy libraries inside the objects' methods or factories, not at
module level. Each hook receives a ``register`` callable, the stack's
:class:`~flowyard.config.Config` and, if the implementation names it (pluggy's opt-in
arguments: an implementation takes any subset of the specification's arguments), the stack's
``services`` (:class:`~flowyard.interfaces.Services`: registries, the LLM gateway, storage).
Objects that need the gateway keep ``services`` and use it lazily, at call time; a plugin
never builds a stack of its own:

``register(name, obj)``
    registers an object now.
``register(name, factory=callable)``
    registers a zero-argument factory called on first lookup (lazy, for objects that are
    expensive to build, such as a local model).

The objects registered implement the interfaces in :mod:`flowyard.interfaces` and carry the
async methods. No hook here is ``firstresult``: every plugin gets its say. Implementations
run in plugin load order; ``@hookimpl(tryfirst=True)`` runs before the others and
``trylast=True`` after them. ``wrapper=True`` and ``hookwrapper=True`` are refused on
registration hooks (the plugin fails with a :class:`~flowyard.errors.PluginError`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from flowyard.config import Config
    from flowyard.interfaces import Services
    from flowyard.registry import Register

PROJECT = "flowyard"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = ["hookspec", "hookimpl", "PROJECT", "FAMILIES"]

#: The registration hook families, as ``family -> hook name``.
FAMILIES: dict[str, str] = {
    "providers": "register_providers",
    "tools": "register_tools",
    "storage": "register_storage",
    "memory": "register_memory_stores",
    "retrievers": "register_retrievers",
    "routers": "register_routers",
    "executors": "register_executors",
    "loaders": "register_workflow_loaders",
    "listeners": "register_event_listeners",
}


@hookspec
def register_providers(register: Register, config: Config, services: Services) -> None:
    """Register LLM providers (:class:`flowyard.interfaces.Provider`) by provider name.

    The name is the prefix of model references: a provider registered as ``"openai"`` serves
    ``openai/gpt-4o-mini``.
    """


@hookspec
def register_tools(register: Register, config: Config, services: Services) -> None:
    """Register tools (:class:`flowyard.interfaces.Tool`) by their dotted action name
    (``"filesystem.write"``). Workflow steps name them in ``uses``."""


@hookspec
def register_storage(register: Register, config: Config, services: Services) -> None:
    """Register storage backend *factories* by URL scheme.

    The factory is called as ``factory(url: str, config: Config)`` and returns a
    :class:`flowyard.interfaces.StorageBackend`. ``"memory"`` is the in-core backend;
    ``"sqlite"`` and ``"postgresql"`` come from ``flowyard-sql``. Register these with
    ``register(scheme, factory)`` (an object, not ``factory=``: the factory itself is the value).
    """


@hookspec
def register_memory_stores(register: Register, config: Config, services: Services) -> None:
    """Register memory stores (:class:`flowyard.interfaces.MemoryStore`) by name."""


@hookspec
def register_retrievers(register: Register, config: Config, services: Services) -> None:
    """Register retrievers (:class:`flowyard.interfaces.Retriever`) by name."""


@hookspec
def register_routers(register: Register, config: Config, services: Services) -> None:
    """Register model routers (:class:`flowyard.interfaces.Router`) by name
    (``"cheapest"``, ``"fallback"``, ``"ucb"``)."""


@hookspec
def register_executors(register: Register, config: Config, services: Services) -> None:
    """Register executors (:class:`flowyard.interfaces.Executor`), which decide where a step
    runs. ``"local"`` is the in-core default."""


@hookspec
def register_workflow_loaders(register: Register, config: Config, services: Services) -> None:
    """Register workflow loaders (:class:`flowyard.interfaces.WorkflowLoader`) by format name.
    ``"native"`` (YAML/JSON) is the in-core default."""


@hookspec
def register_event_listeners(register: Register, config: Config, services: Services) -> None:
    """Register event listeners (:class:`flowyard.interfaces.EventListener`) by name.

    Listeners see every event of every run of the stack: the cost ledger, audit log,
    metrics and progress displays are listeners.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``flowyard`` command line (a :class:`click.Group`).

    Called when the CLI starts; keep imports inside the command functions so that
    ``flowyard --help`` stays fast.
    """

