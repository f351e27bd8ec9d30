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

import attrs
import pluggy

if TYPE_CHECKING:
    import click

    from flowyard.config import Config
    from flowyard.interfaces import Services
    from flowyard.registry import Register

PROJECT = "flowyard"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = ["hookspec", "hookimpl", "PROJECT", "HookFamily", "HOOK_FAMILIES", "FAMILIES",
           "COMMANDS_HOOK", "HOOK_LABELS"]


@attrs.frozen
class HookFamily:
    """One registration hook family: a hook, the registry it fills and how it is named.

    :data:`HOOK_FAMILIES` is the one table of the families: the :class:`~flowyard.stack.Stack`
    builds its registries from it, the plugin manager and ``flowyard plugins`` name hooks by
    it, and the families table of ``docs/plugins.md`` is generated from it (and checked by
    ``tests/core/test_hook_meta.py``).

    Attributes:
        name: the family's name, as ``Stack.registry(name)`` and ``flowyard plugins`` show it
            (``"memory"``).
        hook: the registration hook (``"register_memory_stores"``), a specification below.
        attribute: the registry's attribute on ``Stack`` and
            :class:`~flowyard.interfaces.Services` (``"memory_stores"``).
        kind: the singular noun used in error messages (``"memory store"``).
        registers: what the hook registers, for the docs (``"MemoryStore"``).
        key: what the registered name means, for the docs (``"store name"``).
        contract: the :mod:`flowyard.testing` contract suite of the family, or ``""``.
    """

    name: str
    hook: str
    attribute: str
    kind: str
    registers: str
    key: str
    contract: str = ""


#: The registration hook families, in the order their hooks are called when a stack is built.
HOOK_FAMILIES: tuple[HookFamily, ...] = (
    HookFamily("providers", "register_providers", "providers", "provider", "Provider",
               "provider name, the prefix of `provider/model`", "ProviderContract"),
    HookFamily("tools", "register_tools", "tools", "tool", "Tool",
               "dotted action name (`filesystem.write`)", "ToolContract"),
    HookFamily("storage", "register_storage", "storage_schemes", "storage scheme",
               "factory(url, config) -> StorageBackend", "URL scheme (`sqlite`)",
               "StorageContract"),
    HookFamily("memory", "register_memory_stores", "memory_stores", "memory store",
               "MemoryStore", "store name", "MemoryContract"),
    HookFamily("retrievers", "register_retrievers", "retrievers", "retriever", "Retriever",
               "retriever name", "RetrieverContract"),
    HookFamily("routers", "register_routers", "routers", "router", "Router",
               "router name (`cheapest`)", "RouterContract"),
    HookFamily("executors", "register_executors", "executors", "executor", "Executor",
               "executor name (`local`)", "ExecutorContract"),
    HookFamily("loaders", "register_workflow_loaders", "loaders", "workflow loader",
               "WorkflowLoader", "format name (`native`)", "WorkflowLoaderContract"),
    HookFamily("listeners", "register_event_listeners", "listeners", "event listener",
               "EventListener", "listener name"),
    HookFamily("templates", "register_template_filters", "template_filters",
               "template filter", "function",
               "filter, test or global name (`slugify`; metadata `kind=`)"),
    HookFamily("guards", "register_guards", "guards", "guard", "Guard",
               "guard name (`egress`)"),
    HookFamily("alert_channels", "register_alert_channels", "alert_channels", "alert channel",
               "factory(name, options) -> AlertChannel",
               "channel type (`webhook`), named by `[alerts.channels.<name>] type`"),
    HookFamily("health", "register_health_checks", "health_checks", "health check",
               "async function() -> HealthResult", "check name (`storage`)"),
)

#: ``family name -> hook name``, derived from :data:`HOOK_FAMILIES`.
FAMILIES: dict[str, str] = {family.name: family.hook for family in HOOK_FAMILIES}

#: The one hook that is not a registration family: it adds commands to the CLI.
COMMANDS_HOOK = "register_commands"

#: ``hook name -> short label`` (the family's name; ``"commands"`` for the CLI hook), as
#: ``flowyard plugins`` lists a plugin's hooks.
HOOK_LABELS: dict[str, str] = {family.hook: family.name for family in HOOK_FAMILIES}
HOOK_LABELS[COMMANDS_HOOK] = "commands"


@hookspec
def register_providers(register: Register, config: Config, services: Services) -> None:
    """Register LLM providers (:class:`flowyard.interfaces.Provider`) by provider name.

    The name is the prefix of model references: a provider registered as ``"openai"`` serves
    ``openai/gpt-4o-mini``.
    """


@hookspec
def register_tools(register: Register, config: Config, services: Services) -> None:
    """Register tools (:class:`flowyard.interfaces.Tool`) by their dotted action name
    (``"filesystem.write"``). Workflow steps name them in ``uses``.
    """


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
    (``"cheapest"``, ``"fallback"``, ``"ucb"``).
    """


@hookspec
def register_executors(register: Register, config: Config, services: Services) -> None:
    """Register executors (:class:`flowyard.interfaces.Executor`), which decide where a step
    runs. ``"local"`` is the in-core default.
    """


@hookspec
def register_workflow_loaders(register: Register, config: Config, services: Services) -> None:
    """Register workflow loaders (:class:`flowyard.interfaces.WorkflowLoader`) by format name.
    ``"native"`` (YAML/JSON) is the in-core default.
    """


@hookspec
def register_event_listeners(register: Register, config: Config, services: Services) -> None:
    """Register event listeners (:class:`flowyard.interfaces.EventListener`) by name.

    Listeners see every event of every run of the stack: the cost ledger, audit log,
    metrics and progress displays are listeners.
    """


@hookspec
def register_template_filters(register: Register, config: Config, services: Services) -> None:
    """Register functions for workflow templates: ``register(name, function)`` adds a Jinja
    filter (``{{ x | name }}``), ``register(name, function, kind="test")`` a test
    (``{% if x is name %}``) and ``register(name, value, kind="global")`` a global (a function
    called as ``{{ name(...) }}``, or a constant). Names share one namespace; a name that is
    already built in is refused unless registered with ``replace=True``.

    The functions run inside the engine's sandboxed environment and its render limits: each
    call counts as an operation against the work and time budget, and its arguments and
    result are size-checked. They receive plain data (never the engine's objects) and must be
    pure, fast and synchronous.
    """


@hookspec
def register_guards(register: Register, config: Config, services: Services) -> None:
    """Register guards (:class:`flowyard.guards.Guard`) by name: checks that run before a tool
    call or a model call (and on workflow inputs, tool results and model replies) and may
    allow, deny or redact. Each guard has ``stages`` (a subset of
    :data:`flowyard.guards.STAGES`) and an async ``check(request)`` returning a
    :class:`flowyard.guards.GuardVerdict` or None. Guards run in the order of their names; a
    denial emits ``guard.denied`` and raises :class:`flowyard.guards.GuardDenied` (a
    ``ToolError``: an agent sees it as its tool's error). See ``docs/guards.md``.
    """


@hookspec
def register_alert_channels(register: Register, config: Config, services: Services) -> None:
    """Register alert channel *factories* by channel type (``"log"``, ``"webhook"``,
    ``"email"`` are built in): ``register("pager", factory)``. A ``[alerts.channels.<name>]``
    table with ``type = "pager"`` builds its channel as ``factory(name, options)`` (the table
    without ``type``); the result has an async ``send(notice)`` taking a
    :class:`flowyard.alerts.AlertNotice`. See ``docs/alerts.md``.
    """


@hookspec
def register_health_checks(register: Register, config: Config, services: Services) -> None:
    """Register health checks by name: async functions without arguments returning a
    :class:`flowyard.health.HealthResult` (``UP``, ``DEGRADED`` or ``DOWN`` and a detail).
    flowyard-server's ``/v1/health/ready`` and ``flowyard doctor`` run them (each within a
    timeout). ``storage``, ``model`` and ``disk`` are built in. See ``docs/alerts.md``.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``flowyard`` command line (a :class:`click.Group`).

    Called when the CLI starts; keep imports inside the command functions so that
    ``flowyard --help`` stays fast.
    """

