"""Hook implementations of flowyard-schedule (plugin name ``schedule``).

Cheap to import: the commands load when the command list is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flowyard import hookimpl

if TYPE_CHECKING:
    import click


@hookimpl
def register_commands(cli: click.Group) -> None:
    """``flowyard schedule add|list|remove|pause|resume|run``."""
    from flowyard_schedule.commands import schedule

    cli.add_command(schedule, name="schedule")
