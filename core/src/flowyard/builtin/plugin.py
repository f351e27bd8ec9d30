"""Hook implementations of the in-core defaults (plugin name ``builtin``).

Everything here registers at ``default_priority=-1``: a plugin that registers the same name
at the default priority 0 replaces it (see the priority rule in :mod:`flowyard.registry`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowyard.builtin.executor import LocalExecutor
from flowyard.config import Config
from flowyard.errors import ConfigError
from flowyard.hookspecs import hookimpl
from flowyard.registry import Register

if TYPE_CHECKING:
    from flowyard.interfaces import Services


def _memory_storage(url: str, config: Config) -> Any:
    # lazy: built only when memory:// is the storage
    from flowyard.builtin.memory_storage import MemoryStorage

    return MemoryStorage(url, config)


@hookimpl
def register_storage(register: Register, config: Config) -> None:
    """``memory://``: the in-memory backend (lowest default priority)."""
    register("memory", _memory_storage, default_priority=-1,
             default_url=lambda _config: "memory://")


@hookimpl
def register_event_listeners(register: Register, config: Config, services: Services) -> None:
    """``audit``: the tamper-evident audit log (:class:`flowyard.audit.AuditListener`),
    unless ``[audit] enabled = false``; ``[audit] flush_interval`` (seconds, default 0.1).
    ``metrics``: the Prometheus metrics (see :func:`_register_metrics`).
    ``alerts``: the alert rules (see :func:`_register_alerts`).

    Raises:
        ConfigError: ``enabled`` is not a boolean or ``flush_interval`` not a number >= 0,
            or the ``[metrics]`` table is invalid.
    """
    enabled = config.get("audit.enabled", True)
    interval = config.get("audit.flush_interval", 0.1)
    if not isinstance(enabled, bool):
        raise ConfigError(f"[audit] enabled must be true or false, got {enabled!r}")
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval < 0:
        raise ConfigError(f"[audit] flush_interval must be a number >= 0, got {interval!r}")
    _register_metrics(register, config)
    _register_alerts(register, config, services)
    if not enabled:
        return

    def make() -> Any:
        from flowyard.audit import AuditListener  # lazy: built with the stack's listeners

        return AuditListener(services, flush_interval=float(interval))

    register("audit", factory=make, default_priority=-1)


def _register_alerts(register: Register, config: Config, services: Services) -> None:
    """``alerts``: the alert rules' listener (:class:`flowyard.alerts.AlertManager`), when
    ``[[alerts.rules]]`` has rules; ``[alerts] interval_s`` (seconds, default 15).

    The rules, channels and ``interval_s`` are checked when the stack builds its listeners:
    a ``ConfigError`` there stops the stack from building (an alert that silently never
    fires is worse than a stack that does not start).
    """
    rules_raw = config.get("alerts.rules")
    if not rules_raw:
        return

    def make_alerts() -> Any:
        from flowyard.alerts import AlertManager, parse_rules  # lazy: only with rules

        interval_s = config.get("alerts.interval_s", 15.0)
        if isinstance(interval_s, bool) or not isinstance(interval_s, (int, float)):
            raise ConfigError(f"[alerts] interval_s must be a number, got {interval_s!r}")
        return AlertManager(services, parse_rules(rules_raw),
                            channels=config.get("alerts.channels") or {},
                            interval_s=float(interval_s))

    register("alerts", factory=make_alerts, default_priority=-1)


@hookimpl
def register_alert_channels(register: Register, config: Config) -> None:
    """``log``, ``webhook`` and ``email``: the first-party alert channel types
    (:mod:`flowyard.alerts`).
    """
    from flowyard.alerts import EmailChannel, LogChannel, WebhookChannel  # lazy: small module

    register("log", LogChannel, default_priority=-1)
    register("webhook", WebhookChannel, default_priority=-1)
    register("email", EmailChannel, default_priority=-1)


@hookimpl
def register_health_checks(register: Register, config: Config, services: Services) -> None:
    """``storage``, ``model`` and ``disk``: the first-party health checks
    (:func:`flowyard.health.builtin_health_checks`).
    """
    from flowyard.health import builtin_health_checks  # lazy: small module

    for name, check in builtin_health_checks(services).items():
        register(name, check, default_priority=-1)


def _register_metrics(register: Register, config: Config) -> None:
    """``metrics``: the Prometheus metrics listener (:class:`flowyard.metrics.MetricsListener`),
    unless ``[metrics] enabled = false``; ``[metrics] multiprocess_dir`` (a directory, default
    the ``PROMETHEUS_MULTIPROC_DIR`` environment variable) switches the process to
    multiprocess mode (docs/metrics.md).

    Raises:
        ConfigError: ``enabled`` is not a boolean or ``multiprocess_dir`` not a non-empty
            string.
    """
    enabled = config.get("metrics.enabled", True)
    directory = config.get("metrics.multiprocess_dir", None)
    if not isinstance(enabled, bool):
        raise ConfigError(f"[metrics] enabled must be true or false, got {enabled!r}")
    if directory is not None and (not isinstance(directory, str) or not directory):
        raise ConfigError(f"[metrics] multiprocess_dir must be a directory path, got "
                          f"{directory!r}")
    if not enabled:
        return

    def make() -> Any:
        # lazy: imports prometheus_client, only for a stack that builds its listeners
        from flowyard.metrics import MetricsListener, configure_multiprocess

        if directory is not None:
            configure_multiprocess(directory)
        return MetricsListener()

    register("metrics", factory=make, default_priority=-1)


@hookimpl
def register_executors(register: Register, config: Config) -> None:
    """``local``: run actions in-process."""
    register("local", LocalExecutor(), default_priority=-1)


@hookimpl
def register_providers(register: Register, config: Config) -> None:
    """``fake``: the deterministic scripted provider (never the default model)."""

    def make() -> Any:
        # lazy: built on first use of the fake provider
        from flowyard.builtin.fake import FakeProvider

        return FakeProvider()

    register("fake", factory=make, default_priority=-1)


@hookimpl
def register_workflow_loaders(register: Register, config: Config) -> None:
    """``native``: YAML/JSON workflow files (the default format)."""

    def make() -> Any:
        # lazy: the YAML parser loads with the first workflow file
        from flowyard.builtin.loader import NativeLoader
        from flowyard.parsing import ParseLimits  # lazy: with the loader, for the first file

        limits = ParseLimits.from_config(config)
        return NativeLoader(max_bytes=limits.max_bytes, max_nodes=limits.max_nodes,
                            max_aliases=limits.max_aliases, max_depth=limits.max_depth)

    register("native", factory=make, suffixes=(".yaml", ".yml", ".json"),
             default_priority=-1)


@hookimpl
def register_tools(register: Register, config: Config) -> None:
    """The built-in actions: ``echo``, ``log``, ``sleep``, ``llm.chat``, ``agent``,
    ``workflow``, ``human.approve`` and ``human.input`` (each replaceable by a registration
    with a higher ``default_priority``).
    """
    from flowyard.builtin.actions import builtin_actions  # lazy: keeps Stack() building fast
    from flowyard.builtin.flow import AgentAction, WorkflowAction  # lazy: imports the engine
    from flowyard.builtin.human import human_actions  # lazy: keeps Stack() building fast

    for action in (*builtin_actions(), AgentAction(), WorkflowAction(), *human_actions()):
        register(action.name, action, default_priority=-1)


@hookimpl
def register_guards(register: Register, config: Config) -> None:
    """The first-party guards of the ``[guards]`` table (``validation``, ``redaction``,
    ``egress``; see ``docs/guards.md``); none without the table. An invalid table fails
    closed: with ``plugins.strict`` the error is raised (the stack does not start), else the
    ``invalid-config`` guard denies every guarded call with the error.

    Raises:
        ConfigError: the ``[guards]`` table is invalid and ``plugins.strict`` is set.
    """
    section = config.section("guards")
    if not section:
        return
    # lazy: only with [guards]
    from flowyard.builtin.guards import InvalidConfigGuard, guards_from_config

    try:
        built = guards_from_config(section)
    except ConfigError as exc:
        if config.strict_plugins:
            raise
        register("invalid-config", InvalidConfigGuard(str(exc)), default_priority=-1)
        return
    for name, guard in built:
        register(name, guard, default_priority=-1)
