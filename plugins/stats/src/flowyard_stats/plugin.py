"""Hook implementations of flowyard-stats (plugin name ``stats``).

Cheap to import: the listener and the command are imported when the hooks run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowyard import hookimpl

if TYPE_CHECKING:
    import click
    from flowyard import Config, Register

#: The name of the live metrics listener (``stack.listeners.get(LIVE)``).
LIVE = "stats.live"


@hookimpl
def register_event_listeners(register: Register, config: Config) -> None:
    """``stats.live``: in-process LLM metrics of the stack (calls, latency, errors, cost,
    rate-limit waits, breaker openings), including calls outside runs.
    """

    def make() -> Any:
        from flowyard_stats.metrics import LiveMetrics

        return LiveMetrics()

    register(LIVE, factory=make)


@hookimpl
def register_commands(cli: click.Group) -> None:
    """``flowyard stats``: run metrics from storage."""
    from flowyard_stats.command import stats

    cli.add_command(stats, name="stats")
