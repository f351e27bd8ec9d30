"""Typed errors of MCP tool calls: every one is a :class:`flowyard.ToolError`, so a step or
an agent sees a tool failure (never a success) and the step's ``retry`` policy can match it.
"""

from __future__ import annotations

from typing import Any

import flowyard

__all__ = ["MCPToolError", "MCPCallError", "MCPRequestError", "MCPServerCrashedError",
           "MCPStartError", "MCPTimeoutError"]


class MCPToolError(flowyard.ToolError):
    """A call to an MCP server failed (the base of the flowyard-mcp errors).

    Args:
        message: what failed; secrets of the server's configuration are already redacted.
        tool: the flowyard tool name (``files.read_file``).
        server: the configured server name (``files``).
        retriable: True when the same call may succeed later (a restarted server).
    """

    def __init__(self, message: str, *, tool: str | None = None, server: str = "",
                 retriable: bool = False) -> None:
        super().__init__(message, tool=tool, retriable=retriable)
        self.server = server


class MCPCallError(MCPToolError):
    """The tool ran and answered with a result whose ``isError`` is true.

    Attributes:
        content: the result's content blocks (JSON-ready dicts), the error's details.
    """

    def __init__(self, message: str, *, tool: str | None = None, server: str = "",
                 content: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message, tool=tool, server=server, retriable=False)
        self.content = content or []


class MCPRequestError(MCPToolError):
    """The server answered the request with a JSON-RPC error (unknown tool, invalid
    parameters, unknown resource or prompt).

    Attributes:
        code: the JSON-RPC error code.
    """

    def __init__(self, message: str, *, tool: str | None = None, server: str = "",
                 code: int = 0) -> None:
        super().__init__(message, tool=tool, server=server, retriable=False)
        self.code = code


class MCPServerCrashedError(MCPToolError):
    """The server's connection closed during the call (the process exited or the HTTP
    session ended). Retriable: the next call starts the server again."""

    def __init__(self, message: str, *, tool: str | None = None, server: str = "") -> None:
        super().__init__(message, tool=tool, server=server, retriable=True)


class MCPTimeoutError(MCPToolError):
    """The server did not answer within the call's timeout. The server is stopped (its
    state is unknown) and the next call starts it again. Retriable."""

    def __init__(self, message: str, *, tool: str | None = None, server: str = "") -> None:
        super().__init__(message, tool=tool, server=server, retriable=True)


class MCPStartError(MCPToolError):
    """The server could not be started or connected to (missing command, refused
    connection, failed handshake, unusable sandbox, unset environment reference).
    Retriable: the next call tries again."""

    def __init__(self, message: str, *, tool: str | None = None, server: str = "") -> None:
        super().__init__(message, tool=tool, server=server, retriable=True)
