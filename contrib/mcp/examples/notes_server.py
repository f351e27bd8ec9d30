"""A tiny MCP server (official SDK) for the README example: two tools and one resource.

flowyard starts it over stdio as configured in ``flowyard.toml`` next to this file.
"""

from __future__ import annotations

import os

from mcp.server.mcpserver import MCPServer

server = MCPServer("notes", log_level="ERROR")


@server.tool()
def word_count(text: str) -> int:
    """Count the words of ``text``."""
    return len(text.split())


@server.tool()
def shout(text: str) -> str:
    """Return ``text`` in capitals, signed with the NOTES_SIGNATURE variable."""
    return f"{text.upper()} -- {os.environ.get('NOTES_SIGNATURE', 'anonymous')}"


@server.resource("notes://motd")
def motd() -> str:
    """The message of the day."""
    return "Keep workflows small."


if __name__ == "__main__":
    server.run("stdio")
