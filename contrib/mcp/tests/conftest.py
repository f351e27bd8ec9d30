"""Fixtures of the flowyard-mcp client tests: real MCP servers written with the SDK
(``mcp_test_server.py``) on stdio and on Streamable HTTP at 127.0.0.1, and stacks
configured for them. Every async test runs on asyncio and trio (flowyard's side; the SDK's
connections live in the plugin's own asyncio helper thread)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

SERVER = Path(__file__).with_name("mcp_test_server.py")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once on asyncio and once on trio."""
    return str(request.param)


def _stdio_server(**extra: Any) -> dict[str, Any]:
    return {"command": sys.executable, "args": [str(SERVER), "stdio"], "timeout": 10,
            "startup_timeout": 30, **extra}


@pytest.fixture
def stdio_server() -> Any:
    """``stdio_server(**keys)``: the ``[mcp.servers.<name>]`` table of the stdio test server
    (``keys`` added or replaced)."""
    return _stdio_server


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def http_server_url() -> Iterator[str]:
    """The test server on Streamable HTTP (one process for the session)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, str(SERVER), "http", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"the HTTP test server did not start: "
                                   f"{process.stderr.read().decode() if process.stderr else ''}"
                                   ) from None
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/mcp"
    process.terminate()
    process.wait(timeout=10)


def _make_stack(servers: dict[str, Any], **config: Any) -> Any:
    import flowyard
    from flowyard_mcp import plugin

    return flowyard.Stack(plugins=[("mcp", plugin)], config={
        "storage": {"url": "memory://"}, "models": {"default": "fake/echo"},
        "mcp": {"servers": servers, **config}})


@pytest.fixture
def make_stack() -> Any:
    """``make_stack(servers, **mcp_keys)``: a stack with the plugin, in-memory storage and
    ``fake/echo`` as the default model, whose ``[mcp]`` has ``servers``."""
    return _make_stack
