"""The command group ``flowyard mcp`` and its command ``flowyard mcp serve``.

The plugin adds the group through the ``register_commands`` hook. Heavy imports (the MCP SDK,
uvicorn, the stack) happen inside the commands, so ``flowyard --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

import click

__all__ = ["mcp", "serve"]

_LEVELS = ["critical", "error", "warning", "info", "debug"]


@click.group()
def mcp() -> None:
    """Model Context Protocol: serve this stack's tools and workflows to MCP clients."""


@mcp.command()
@click.option("--tool", "tools", multiple=True, metavar="PATTERN",
              help="Serve the stack tool(s) matching PATTERN (a name or an fnmatch pattern "
                   "such as 'filesystem.*'); repeatable; replaces [mcp.serve] tools. "
                   "Default: no stack tool.")
@click.option("--workflow", "workflows", multiple=True, metavar="PATH",
              type=click.Path(exists=True, path_type=Path),
              help="Serve the workflow file PATH (or every *.yaml/*.yml/*.json workflow of a "
                   "folder) as a tool; repeatable; replaces [mcp.serve] workflows.")
@click.option("--http", "use_http", is_flag=True,
              help="Serve Streamable HTTP instead of stdio.")
@click.option("--host", default=None,
              help="Address --http binds (default: [mcp.serve] host, 127.0.0.1). Beyond "
                   "loopback needs --allow-remote and a bearer token.")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="TCP port of --http (default: [mcp.serve] port, 8760).")
@click.option("--allow-remote", is_flag=True, default=None,
              help="Allow --host beyond loopback (requires [mcp.serve] token or "
                   "FLOWYARD_MCP__SERVE__TOKEN).")
@click.option("--list", "list_only", is_flag=True,
              help="Print the tools that would be served, with their input schemas, and exit.")
@click.option("--log-level", default="warning", type=click.Choice(_LEVELS),
              help="Log level of the server's log (on stderr).")
def serve(tools: tuple[str, ...], workflows: tuple[Path, ...], use_http: bool,
          host: str | None, port: int | None, allow_remote: bool | None, list_only: bool,
          log_level: str) -> None:
    """Serve the allowed stack tools and the given workflows over MCP (stdio by default).

    Stdout carries the protocol on stdio; every log line goes to stderr.
    """
    import anyio
    import attrs
    from flowyard import FlowyardError, Stack

    from flowyard_mcp.server import McpToolServer, ServeSettings

    logging.basicConfig(stream=sys.stderr, level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        # a plugin printing while the stack is built must not corrupt the stdio protocol
        with contextlib.redirect_stdout(sys.stderr):
            stack = Stack.default()
            settings = ServeSettings.from_config(stack.config)
            changes: dict[str, Any] = {"host": host, "port": port, "allow_remote": allow_remote}
            if tools:
                changes["tools"] = tools
            settings = attrs.evolve(settings,
                                    **{k: v for k, v in changes.items() if v is not None})
            server = McpToolServer(stack, settings,
                                   workflows=list(workflows) if workflows else None)
    except FlowyardError as exc:
        raise click.ClickException(str(exc)) from None
    if list_only:
        _print_catalog(server)
        return
    if not server.tools:
        click.echo("flowyard mcp serve: no tool to serve (name stack tools with --tool or "
                   "[mcp.serve] tools, workflows with --workflow or [mcp.serve] workflows)",
                   err=True)
    try:
        if use_http:
            from flowyard_mcp.server import check_binding

            check_binding(settings)
            click.echo(f"flowyard mcp serve: {len(server.tools)} tool(s) on "
                       f"http://{settings.host}:{settings.port}{settings.path}", err=True)
            anyio.run(lambda: server.serve_http(log_level=log_level), backend="asyncio")
        else:
            anyio.run(server.serve_stdio)
    except FlowyardError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("flowyard mcp serve: stopped (interrupted)", err=True)


def _print_catalog(server: Any) -> None:
    import json

    for tool in server.tools.values():
        definition = tool.definition()
        click.echo(f"{tool.name}: {tool.description.splitlines()[0] if tool.description else ''}")
        click.echo("  input schema: " + json.dumps(definition.input_schema, sort_keys=True))
