"""A small MCP server written with the official SDK, used by the client tests.

Run as ``python mcp_test_server.py stdio`` or ``python mcp_test_server.py http PORT``. Its
tools: ``add`` (sum), ``echo_env`` (one variable of its environment), ``cwd`` (its working
directory), ``fail`` (a result with ``isError``), ``crash`` (the process exits mid-call),
``hang`` (never answers), ``babble`` (prints API_TOKEN), ``exists``, ``cmdline`` and
``count`` (calls counted per process, to prove reuse). One resource (``memo://greeting``)
and one prompt (``summarize``).
"""

from __future__ import annotations

import os
import sys
import time

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("flowyard-test", log_level="ERROR")
_calls = {"n": 0}


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def echo_env(name: str) -> str:
    """Return the value of one environment variable ("<unset>" when it is not set)."""
    return os.environ.get(name, "<unset>")


@server.tool()
def cwd() -> str:
    """Return the server's working directory."""
    return os.getcwd()


@server.tool()
def fail(reason: str) -> str:
    """Always fail with ``reason`` (an isError result)."""
    raise ToolError(f"refused: {reason}")


@server.tool()
def crash() -> str:
    """Exit the server process in the middle of the call (saying on stderr what API_TOKEN
    holds, as a careless server would)."""
    print(f"dying; API_TOKEN={os.environ.get('API_TOKEN', '<unset>')}", file=sys.stderr,
          flush=True)
    os._exit(3)


@server.tool()
def babble() -> str:
    """Print API_TOKEN on stdout, the protocol stream, before answering (a broken server)."""
    print(f"API_TOKEN={os.environ.get('API_TOKEN', '<unset>')}", flush=True)
    return "said it"


@server.tool()
def exists(path: str) -> bool:
    """Whether ``path`` exists for the server."""
    return os.path.exists(path)


@server.tool()
def cmdline() -> str:
    """The server's own command line (NUL-separated arguments joined by spaces)."""
    with open(f"/proc/{os.getpid()}/cmdline", "rb") as fh:
        return fh.read().replace(b"\0", b" ").decode()


@server.tool()
def hang() -> str:
    """Never answer (blocks the server)."""
    while True:
        time.sleep(3600)


@server.tool()
def count() -> dict[str, int]:
    """Count calls in this process; also return the process id."""
    _calls["n"] += 1
    return {"calls": _calls["n"], "pid": os.getpid()}


@server.resource("memo://greeting")
def greeting() -> str:
    """A greeting."""
    return "hello from the memo"


@server.prompt()
def summarize(text: str) -> str:
    """Ask for a summary of ``text``."""
    return f"Summarize: {text}"


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
