"""Per-call overhead of a flowyard tool served over MCP, against the same tool called natively.

One run measures, for the core tool ``echo`` (argument ``{"value": {"text": ..., "n": 1}}``):

* ``native``: ``tool.invoke(arguments, context)`` in process (``echo`` skips its schema check
  for a lone ``value``);
* ``native+schema``: the same after ``flowyard.validate_arguments`` (what a step with templated
  arguments pays);
* ``sdk in-process``: the SDK's ``Client`` against the server object of ``flowyard mcp serve``
  in the same process (the SDK's direct dispatcher: MCP messages and validation, no
  transport);
* ``sdk stdio``: ``flowyard mcp serve --tool echo`` in a subprocess, called by the official
  SDK's ``Client`` over stdio (one connection, sequential calls);
* ``sdk http``: the same server with ``--http`` on 127.0.0.1, over Streamable HTTP;
* ``plugin stdio`` / ``plugin http``: a flowyard stack using that server's tool through
  flowyard-mcp's client (``[mcp.servers.fy]``, tool ``fy.echo``), i.e. what a workflow step
  pays for ``uses: fy.echo``.

Each path is warmed up, then timed call by call; the table gives the median and p90 in
microseconds per call and the ratio of the medians to ``native``. Every server it starts
listens on 127.0.0.1 only and is stopped at the end.

Usage: .venv/bin/python benchmarks/mcp_overhead.py [--calls 300] [--warmup 20]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

ARGUMENTS = {"value": {"text": "hello from the benchmark", "n": 1}}
SERVE = [sys.executable, "-c", "from flowyard.cli import main; main()", "mcp", "serve",
         "--tool", "echo"]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWYARD_")}
    env.update({"FLOWYARD_DATA_DIR": str(home), "XDG_CONFIG_HOME": str(home / "config"),
                "FLOWYARD_STORAGE_URL": "memory://"})
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _timed(call: Callable[[], Awaitable[Any]], calls: int, warmup: int) -> list[float]:
    """Warm up, then return the seconds of each of ``calls`` sequential calls."""
    for _ in range(warmup):
        await call()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return times


def _check(value: Any) -> None:
    if value != ARGUMENTS["value"]:
        raise AssertionError(f"unexpected result {value!r}")


async def native(calls: int, warmup: int, home: Path) -> list[float]:
    """The echo tool invoked in process."""
    from flowyard import Stack, ToolContext

    stack = Stack(config={"storage": {"url": "memory://"}})
    async with stack:
        tool = stack.tools.get("echo")
        context = ToolContext(stack=stack)

        async def call() -> None:
            _check(await tool.invoke(ARGUMENTS, context))

        return await _timed(call, calls, warmup)


async def native_schema(calls: int, warmup: int, home: Path) -> list[float]:
    """The echo tool invoked in process after a schema check of its arguments."""
    from flowyard import Stack, ToolContext, validate_arguments

    stack = Stack(config={"storage": {"url": "memory://"}})
    async with stack:
        tool = stack.tools.get("echo")
        context = ToolContext(stack=stack)

        async def call() -> None:
            validate_arguments(tool.parameters, ARGUMENTS, tool="echo")
            _check(await tool.invoke(ARGUMENTS, context))

        return await _timed(call, calls, warmup)


async def sdk_in_process(calls: int, warmup: int, home: Path) -> list[float]:
    """The SDK's client against the served catalog in process (no transport)."""
    from flowyard import Stack
    from flowyard_mcp.server import McpToolServer, ServeSettings
    from mcp import Client

    stack = Stack(config={"storage": {"url": "memory://"}})
    server = McpToolServer(stack, ServeSettings(tools=("echo",)))
    async with stack, Client(server.lowlevel()) as client:
        return await _through_client(client, calls, warmup)


async def _through_client(client: Any, calls: int, warmup: int) -> list[float]:
    async def call() -> None:
        result = await client.call_tool("echo", ARGUMENTS)
        if result.is_error:
            raise AssertionError(result.content)
        _check(result.structured_content)

    return await _timed(call, calls, warmup)


async def sdk_stdio(calls: int, warmup: int, home: Path) -> list[float]:
    """The SDK's client against `flowyard mcp serve` over stdio."""
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(command=SERVE[0], args=SERVE[1:], env=_env(home),
                                   cwd=str(home))
    async with Client(params, read_timeout_seconds=60) as client:
        return await _through_client(client, calls, warmup)


class _HttpServer:
    """`flowyard mcp serve --http --tool echo` on a free loopback port."""

    def __init__(self, home: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.proc = subprocess.Popen([*SERVE, "--http", "--port", str(self.port)],
                                     cwd=home, env=_env(home), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the HTTP server exited: {self.proc.stderr.read()!r}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the HTTP server did not listen within 60 s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate(timeout=10)


async def sdk_http(calls: int, warmup: int, home: Path) -> list[float]:
    """The SDK's client against `flowyard mcp serve --http` over Streamable HTTP."""
    from mcp import Client

    server = _HttpServer(home)
    try:
        async with Client(server.url, read_timeout_seconds=60) as client:
            return await _through_client(client, calls, warmup)
    finally:
        server.stop()


async def _through_plugin(server_table: dict[str, Any], calls: int, warmup: int,
                          home: Path) -> list[float]:
    from flowyard import Stack, ToolContext

    stack = Stack(discover=True, config={
        "storage": {"url": "memory://"},
        "mcp": {"work_root": str(home), "servers": {"fy": {**server_table, "tools": ["echo"]}}},
    })
    async with stack:
        tool = stack.tools.get("fy.echo")
        context = ToolContext(stack=stack)

        async def call() -> None:
            _check(await tool.invoke(ARGUMENTS, context))

        return await _timed(call, calls, warmup)


async def plugin_stdio(calls: int, warmup: int, home: Path) -> list[float]:
    """A flowyard stack calling `fy.echo` through flowyard-mcp's client, over stdio."""
    env = _env(home)
    return await _through_plugin(
        {"command": SERVE[0], "args": SERVE[1:],
         "env": {k: env[k] for k in ("FLOWYARD_DATA_DIR", "XDG_CONFIG_HOME",
                                     "FLOWYARD_STORAGE_URL")}},
        calls, warmup, home)


async def plugin_http(calls: int, warmup: int, home: Path) -> list[float]:
    """A flowyard stack calling `fy.echo` through flowyard-mcp's client, over HTTP."""
    server = _HttpServer(home)
    try:
        return await _through_plugin({"url": server.url}, calls, warmup, home)
    finally:
        server.stop()


PATHS: dict[str, Callable[[int, int, Path], Awaitable[list[float]]]] = {
    "native": native,
    "native+schema": native_schema,
    "sdk in-process": sdk_in_process,
    "sdk stdio": sdk_stdio,
    "sdk http": sdk_http,
    "plugin stdio": plugin_stdio,
    "plugin http": plugin_http,
}


def main() -> None:
    """Run every path and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="timed calls per path")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls first")
    args = parser.parse_args()
    results: dict[str, list[float]] = {}
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="mcp-overhead-") as tmp:
        home = Path(tmp)
        (home / "config").mkdir()
        for name, path in PATHS.items():
            try:
                results[name] = anyio.run(path, args.calls, args.warmup, home)
            except Exception as exc:  # reported in the table, never hidden
                if name == "native":
                    raise
                failures[name] = f"{type(exc).__name__}: {exc}"
    base = statistics.median(results["native"])
    print(f"echo tool, {args.calls} sequential calls per path (after {args.warmup} warm-up)")
    print(f"{'path':<16}{'median us':>11}{'p90 us':>11}{'mean us':>11}{'x native':>10}")
    for name in PATHS:
        if name in failures:
            print(f"{name:<16}  not measured: {failures[name]}")
            continue
        times = sorted(results[name])
        med = statistics.median(times)
        p90 = times[int(0.9 * (len(times) - 1))]
        print(f"{name:<16}{med * 1e6:>11.1f}{p90 * 1e6:>11.1f}"
              f"{statistics.fmean(times) * 1e6:>11.1f}{med / base:>10.1f}")


if __name__ == "__main__":
    main()
