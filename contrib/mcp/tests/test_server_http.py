"""`flowyard mcp serve --http`: the Streamable HTTP transport on 127.0.0.1, driven by the SDK's
client, with and without a bearer token.

Each test starts the real command in a subprocess on a free loopback port and stops it at the
end (SIGTERM, then SIGKILL after 10 s).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

CLI = [sys.executable, "-c", "from flowyard.cli import main; main()"]
TOKEN = "test-bearer-token-0123456789"

GREET = """\
name: greet
description: Greet someone.
inputs:
  who: {type: string}
steps:
  - id: say
    uses: echo
    with: {value: "hello {{ inputs.who }}"}
outputs:
  greeting: "{{ steps.say.output }}"
"""

TIMES_OUT = """\
name: times_out
steps:
  - id: wait
    uses: sleep
    timeout: 0.05
    with: {seconds: 5}
outputs:
  done: "{{ steps.wait.output }}"
"""


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of the spawned server: the isolated flowyard home of the test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWYARD_")}
    env.update({"FLOWYARD_DATA_DIR": str(home / "flowyard-data"),
                "XDG_CONFIG_HOME": str(home / "flowyard-config"),
                "XDG_DATA_HOME": str(home / "flowyard-data")})
    env.update(extra)
    return env


def start(home: Path, port: int, *args: str, **env: str) -> subprocess.Popen[str]:
    """Start `flowyard mcp serve --http` in ``home`` and wait until it accepts connections.

    Raises:
        AssertionError: the server exited, or did not listen within 60 s (with its stderr).
    """
    (home / "flowyard.toml").write_text('[storage]\nurl = "memory://"\n'
                                        '[mcp.serve]\ntools = ["echo"]\n')
    (home / "greet.yaml").write_text(GREET)
    (home / "times_out.yaml").write_text(TIMES_OUT)
    proc = subprocess.Popen(
        [*CLI, "mcp", "serve", "--http", "--port", str(port), "--workflow", "greet.yaml",
         "--workflow", "times_out.yaml", *args],
        cwd=home, env=child_env(home, **env), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited ({proc.returncode}): "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            time.sleep(0.1)
    stop(proc)
    raise AssertionError("the server did not listen within 60 s")


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Stop the server; return its stdout and stderr."""
    proc.terminate()
    try:
        return proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate(timeout=10)


@pytest.fixture
def server_with_token(flowyard_home: Path) -> Iterator[str]:
    """A server requiring ``Authorization: Bearer TOKEN``; yields its URL."""
    port = free_port()
    proc = start(flowyard_home, port, FLOWYARD_MCP__SERVE__TOKEN=TOKEN)
    yield f"http://127.0.0.1:{port}/mcp"
    stop(proc)


def text_of(result: Any) -> str:
    """The text of a CallToolResult's single text block."""
    [block] = result.content
    return str(block.text)


def post_status(url: str, headers: dict[str, str]) -> tuple[int, str]:
    """POST an `initialize` request with ``headers``; return the status and the body."""
    body = (b'{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": '
            b'{"protocolVersion": "2025-11-25", "capabilities": {}, '
            b'"clientInfo": {"name": "t", "version": "1"}}}')
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream",
        **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_http_with_a_bearer_token(server_with_token: str) -> None:
    url = server_with_token
    status, body = post_status(url, {})
    assert status == 401
    assert "a valid bearer token is required" in body and TOKEN not in body
    assert post_status(url, {"Authorization": "Bearer wrong-token"})[0] == 401
    assert post_status(url, {"Authorization": f"Bearer {TOKEN}"})[0] == 200

    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"},
                                  timeout=60) as http:
        async with Client(streamable_http_client(url, http_client=http),
                          read_timeout_seconds=60) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) == {"echo", "greet", "times_out"}
            assert tools["greet"].input_schema == {
                "type": "object", "properties": {"who": {"type": "string"}},
                "required": ["who"], "additionalProperties": False}
            echoed = await client.call_tool("echo", {"value": [1, "two"]})
            assert not echoed.is_error and text_of(echoed) == '[1, "two"]'
            greeted = await client.call_tool("greet", {"who": "Bo"})
            assert greeted.structured_content == {"greeting": "hello Bo"}
            failed = await client.call_tool("times_out", {})
            assert failed.is_error and "timed out after 0.05 s" in text_of(failed)
            bad = await client.call_tool("greet", {"who": ["a"]})
            assert bad.is_error
            assert text_of(bad) == ("invalid arguments for workflow 'greet': inputs.who: "
                                    "input 'who' must be of type string, got ['a']")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_http_on_loopback_without_a_token(flowyard_home: Path) -> None:
    port = free_port()
    proc = start(flowyard_home, port, "--log-level", "info")
    try:
        async with Client(f"http://127.0.0.1:{port}/mcp", read_timeout_seconds=60) as client:
            assert {t.name for t in (await client.list_tools()).tools} == {
                "echo", "greet", "times_out"}
            greeted = await client.call_tool("greet", {"who": "Cy"})
            assert greeted.structured_content == {"greeting": "hello Cy"}
        # DNS rebinding: a page on another site cannot drive the server through the browser
        status, _ = post_status(f"http://127.0.0.1:{port}/mcp",
                                {"Origin": "http://evil.example"})
        assert status == 403
    finally:
        out, err = stop(proc)
    assert out == ""  # every log line, uvicorn's access lines included, goes to stderr
    assert f"3 tool(s) on http://127.0.0.1:{port}/mcp" in err
    assert '"POST /mcp HTTP/1.1" 200' in err
