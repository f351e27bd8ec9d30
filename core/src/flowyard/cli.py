"""The ``flowyard`` command line.

Core commands live in :mod:`flowyard.commands` and are imported only when invoked (their
one-line help is kept here), so ``flowyard --help`` stays fast. Plugins add commands through
the ``register_commands`` hook; their modules are loaded when the command list is needed.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from flowyard import __version__
from flowyard.config import Config
from flowyard.errors import FlowyardError
from flowyard.plugins import PluginManager

if sys.version_info < (3, 11):  # pragma: no cover - the backport anyio depends on
    from exceptiongroup import BaseExceptionGroup as _BaseExceptionGroup
else:
    _BaseExceptionGroup = BaseExceptionGroup

__all__ = ["main", "cli", "CORE_COMMANDS"]

#: name -> (``module:attribute``, one-line help)
CORE_COMMANDS: dict[str, tuple[str, str]] = {
    "plugins": ("flowyard.commands.info:plugins", "List plugins: version, hooks, status, errors."),
    "providers": ("flowyard.commands.info:providers", "List LLM providers and their models."),
    "tools": ("flowyard.commands.info:tools", "List tools (workflow actions) and their schemas."),
    "run": ("flowyard.commands.run:run", "Run a workflow file."),
    "validate": ("flowyard.commands.run:validate", "Validate a workflow file."),
    "resume": ("flowyard.commands.run:resume", "Resume a stored run after a crash."),
    "runs": ("flowyard.commands.runs:runs", "Stored runs: list, show, logs, cost, answer, replay."),
    "doctor": ("flowyard.commands.doctor:doctor", "Check plugins, providers, storage and disk."),
    "audit": ("flowyard.commands.audit:audit", "The audit log: list, show, verify, export."),
    "metrics": ("flowyard.commands.metrics:metrics",
                "Prometheus metrics across processes: serve, show."),
    "cache": ("flowyard.commands.cache:cache", "The LLM response cache: stats, clear."),
    "keys": ("flowyard.commands.keys:keys",
             "Key store for provider secrets: set, get, list, delete, rotate."),
}


class LazyGroup(click.Group):
    """A click group that imports core commands on use and plugin commands on demand."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plugins_loaded = False
        self.plugin_failures: list[Any] = []

    def _load_plugin_commands(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True

        manager = PluginManager(Config.load())
        manager.discover()
        manager.call_commands(self)
        self.plugin_failures = list(manager.failed())

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return sorted(set(CORE_COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in CORE_COMMANDS:
            target, _ = CORE_COMMANDS[cmd_name]
            module_name, attr = target.split(":")
            try:
                return getattr(importlib.import_module(module_name), attr)  # type: ignore[no-any-return]
            except ModuleNotFoundError as exc:
                if exc.name != module_name:
                    raise
                return None
        if cmd_name not in self.commands:
            self._load_plugin_commands()
        return self.commands.get(cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; an error escaping it is printed as one line, never a traceback.

        A :class:`flowyard.errors.FlowyardError` (a plugin failing in strict mode, a storage
        error, ...) exits with status 1 and its message; any other exception (a bug, in
        flowyard or in a plugin) exits with status 1 and names its type. Set
        ``FLOWYARD_TRACEBACK=1`` to see the traceback instead. Exception groups holding one
        error are unwrapped first.
        """
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt,
                SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
            if os.environ.get("FLOWYARD_TRACEBACK", "") not in ("", "0"):
                raise
            raise click.ClickException(_one_line(exc)) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, help_) in CORE_COMMANDS.items()]
        self._load_plugin_commands()
        for name, cmd in sorted(self.commands.items()):
            if name not in CORE_COMMANDS and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=60)))
        rows.sort()
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _one_line(exc: BaseException) -> str:
    """Describe ``exc`` in one line for the CLI (single-error exception groups unwrapped)."""
    while isinstance(exc, _BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    message = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, FlowyardError):
        return message
    return (f"unexpected {type(exc).__name__}: {message} (a bug in flowyard or a plugin; "
            "FLOWYARD_TRACEBACK=1 shows the traceback)")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flowyard")
def cli() -> None:
    """flowyard: orchestrate LLM agents and workflows.

    Configuration comes from flowyard.toml and FLOWYARD_* environment variables; see
    docs/configuration.md.
    """


def main() -> None:
    """Console-script entry point."""
    cli()
