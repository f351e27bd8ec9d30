"""The plugin module named by the entry point ``mcp``: MCP servers of ``[mcp.servers.*]`` as
flowyard tools, and the ``flowyard mcp`` command group.

When tools are known (validation needs every ``uses`` name when a workflow is loaded):

- a server with ``tools = [...]`` in its table is **not contacted while the stack is built**:
  those names are registered at once, and the server starts on the first lookup of one of
  them (validating a workflow that uses it, giving it to an agent, or calling it), when its
  listing gives the tool's schema and description;
- a server without ``tools`` is **listed while the stack is built** (started within its
  ``startup_timeout``); the connection stays open and is reused by the calls.

Either way one connection per server and stack is shared by every step and run, and closed
with the stack (``Stack.aclose`` closes built tools that have ``aclose``).
"""

from __future__ import annotations

from typing import Any

import click
import flowyard

from flowyard_mcp.client import MCPClientManager, ServerConnection
from flowyard_mcp.config import parse_settings
from flowyard_mcp.errors import MCPToolError
from flowyard_mcp.tools import ACTIONS, MCPTool, server_actions

__all__ = ["register_tools", "register_commands"]


def _lookup(connection: ServerConnection, manager: MCPClientManager, remote_name: str
            ) -> MCPTool:
    """Build the declared tool ``remote_name`` from the server's live listing.

    Raises:
        MCPToolError: the server cannot be listed, or does not list the tool.
    """
    flowyard_name = f"{connection.config.name}.{remote_name}"
    for remote in manager.run_sync(connection.list_tools):
        if remote.name == remote_name:
            return MCPTool(flowyard_name, remote, connection, manager)
    raise MCPToolError(f"MCP server {connection.config.name!r} does not list the tool "
                       f"{remote_name!r} declared in [mcp.servers.{connection.config.name}] "
                       "tools", tool=flowyard_name, server=connection.config.name)


@flowyard.hookimpl
def register_tools(register: Any, config: flowyard.Config) -> None:
    """Register ``<server>.<tool>`` for each tool of each configured MCP server, and the
    server's ``resources.list``, ``resources.read``, ``prompts.list`` and ``prompts.get``
    actions.

    Raises:
        ConfigError: the ``[mcp]`` section is invalid.
        PluginError: a server without declared ``tools`` cannot be listed, or lists a tool
            whose name collides with a resource or prompt action.
    """
    settings = parse_settings(config)
    if not settings.servers:
        return
    manager = MCPClientManager(settings)
    try:
        _register(register, manager)
    except BaseException:
        manager.close_sync()  # stop the servers listed before the failure
        raise


def _register(register: Any, manager: MCPClientManager) -> None:
    for name, connection in manager.connections.items():
        for action, tool in server_actions(connection, manager).items():
            register(action, tool)
        declared = connection.config.tools
        if declared is not None:
            for remote_name in declared:
                if remote_name in ACTIONS:
                    raise flowyard.PluginError(f"[mcp.servers.{name}] tools: {remote_name!r} "
                                               f"collides with the action {name}.{remote_name}")
                register(f"{name}.{remote_name}",
                         factory=lambda c=connection, r=remote_name: _lookup(c, manager, r))
            continue
        try:
            remotes = manager.run_sync(connection.list_tools)
        except MCPToolError as exc:
            raise flowyard.PluginError(
                f"{exc} (listing the tools of [mcp.servers.{name}] while the stack is built; "
                "declare them with tools = [...] to start the server only when used)") from None
        for remote in remotes:
            if remote.name in ACTIONS:
                raise flowyard.PluginError(f"MCP server {name!r} lists a tool named "
                                           f"{remote.name!r}, which collides with the action "
                                           f"{name}.{remote.name}")
            register(f"{name}.{remote.name}", MCPTool(f"{name}.{remote.name}", remote,
                                                       connection, manager))


@flowyard.hookimpl
def register_commands(cli: click.Group) -> None:
    """Add the ``flowyard mcp`` group (``flowyard mcp serve``: flowyard as an MCP server)."""
    from flowyard_mcp.commands import mcp

    cli.add_command(mcp)
