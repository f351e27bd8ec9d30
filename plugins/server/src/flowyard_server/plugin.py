"""Hook implementations of ``flowyard-server`` (plugin name ``server``): the commands
``flowyard serve``, ``flowyard worker`` and ``flowyard api-keys``.

Cheap to import: FastAPI, uvicorn and the app are imported when a command runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flowyard import hookimpl

if TYPE_CHECKING:
    import click


@hookimpl
def register_commands(cli: click.Group) -> None:
    """Add ``flowyard serve``, ``flowyard worker`` and ``flowyard api-keys``."""
    from flowyard_server.commands import api_keys, serve, worker

    cli.add_command(serve, name="serve")
    cli.add_command(worker, name="worker")
    cli.add_command(api_keys, name="api-keys")
