"""Hook implementations of flowyard-exec (plugin name ``exec``); cheap to import."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowyard import Config, Register, hookimpl

if TYPE_CHECKING:
    import click


@hookimpl
def register_tools(register: Register, config: Config) -> None:
    """Register ``shell.run`` and ``python.run``, built lazily from the ``[exec]`` section."""

    def shell() -> Any:
        from flowyard_exec.tools import ShellRunTool

        return ShellRunTool.from_config(config)

    def python() -> Any:
        from flowyard_exec.tools import PythonRunTool

        return PythonRunTool.from_config(config)

    register("shell.run", factory=shell)
    register("python.run", factory=python)


@hookimpl
def register_commands(cli: click.Group) -> None:
    """Add ``flowyard sandbox check``."""
    from flowyard_exec.commands import sandbox

    cli.add_command(sandbox)
