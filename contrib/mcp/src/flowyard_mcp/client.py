"""Connections to MCP servers: started lazily, reused, restarted after a failure, closed
with the stack.

Every connection of a stack lives in one helper thread that runs its own asyncio event loop
(an anyio :class:`~anyio.from_thread.BlockingPortal`): the SDK's client keeps tasks and a
child process per connection, which must be entered and left in one task of one event loop,
while flowyard calls tools from its steps' tasks (on asyncio or trio) and closes the stack
from yet another task. A call crosses into the helper thread and back; cancelling the caller
(a step's ``timeout``) cancels the call there.

Lifecycle of a server (protocol: MCP 2026-07-28, negotiated down to 2025-11-25 and older
revisions by the SDK's handshake):

- **start**: on the first call (or the first listing), within ``startup_timeout`` seconds;
- **reuse**: later calls of every step and run of the stack share the connection;
- **failure**: a closed connection (the process exited, the HTTP session ended) raises
  :class:`~flowyard_mcp.errors.MCPServerCrashedError`; no answer within ``timeout`` raises
  :class:`~flowyard_mcp.errors.MCPTimeoutError`; a cancelled call (the step's timeout) leaves
  the server's state unknown. In all three cases the server is stopped, and the next call
  starts it again;
- **close**: :meth:`MCPClientManager.aclose` (called by ``Stack.aclose``) closes stdin of each
  stdio server, waits 2 s, then terminates its process group (the SDK's shutdown), and ends
  the helper thread; when the stack is never closed, the thread is a daemon and the servers
  see their stdin close when flowyard exits. A stack used again after its close (``open``
  again, another ``run_sync``) starts the thread and its servers afresh, lazily.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import tempfile
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import flowyard
from anyio.abc import TaskGroup
from anyio.from_thread import BlockingPortal

from flowyard_mcp.config import MCPSettings, ServerConfig, resolve_references
from flowyard_mcp.errors import (
    MCPRequestError,
    MCPServerCrashedError,
    MCPStartError,
    MCPTimeoutError,
    MCPToolError,
)

__all__ = ["MCPClientManager", "ServerConnection", "redact"]

T = TypeVar("T")

#: The JSON-RPC code the SDK raises when the connection closed under a pending request.
_CONNECTION_CLOSED = -32000
#: Environment names the SDK's stdio transport would add from flowyard's own environment;
#: flowyard removes those the configuration does not set (``env -u``).
_SDK_INHERITED = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER")
#: How many bytes of a stdio server's standard error an error message quotes.
_STDERR_TAIL = 800
#: A connection idle this long (seconds) is probed (``tools/list``) before its next request:
#: a server that died while idle is then started again for that request instead of failing
#: it.
_PING_AFTER_IDLE = 1.0
#: Seconds a ping before a request may take (at most the server's ``timeout``).
_PING_TIMEOUT = 5.0


#: Every secret resolved by a connection of this process: redacted from the SDK's log records.
_LOG_SECRETS: set[str] = set()


class _RedactingFilter(logging.Filter):
    """Replace the secrets of :data:`_LOG_SECRETS` in a log record (its message and its
    exception text) by ``***``; the SDK logs, for instance, a line a server wrote on stdout
    that is not a protocol message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _LOG_SECRETS:
            return True
        message = record.getMessage()
        clean = redact(message, _LOG_SECRETS)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(text, _LOG_SECRETS)
            record.exc_info = None
        return True


_FILTER = _RedactingFilter()


def _guard_sdk_loggers() -> None:
    """Put the redacting filter on the SDK's loggers (``mcp`` and every ``mcp.*`` created so
    far: a logger's filters do not apply to its children's records)."""
    for name in ["mcp", *logging.Logger.manager.loggerDict]:
        if name == "mcp" or name.startswith("mcp."):
            logger = logging.getLogger(name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)


def redact(text: str, secrets: set[str] | frozenset[str]) -> str:
    """Replace every secret value in ``text`` by ``***``.

    Args:
        text: a message about to be raised or logged.
        secrets: resolved ``env`` and ``headers`` values (values shorter than 4 characters
            are not considered secrets: replacing them would mangle the message).

    Returns:
        the text without the secrets.
    """
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _secret_parts(values: Any) -> set[str]:
    """The values to redact: each whole value, and each word of it (``Bearer <token>``)."""
    out: set[str] = set()
    for value in values:
        out.add(value)
        out.update(part for part in value.split() if len(part) >= 8)
    return {v for v in out if len(v) >= 4}


class ServerConnection:
    """One configured MCP server and its live connection (at most one at a time).

    Its coroutines run in the manager's helper thread only (see the module docstring).

    Args:
        config: the server's configuration.
        manager: the stack's manager (its task group keeps the connection's task).
    """

    def __init__(self, config: ServerConfig, manager: MCPClientManager) -> None:
        self.config = config
        self._manager = manager
        self._client: Any = None
        self._stop: anyio.Event | None = None
        self._done: anyio.Event | None = None
        self._lock: anyio.Lock | None = None
        self._stderr: Any = None
        #: resolved env and header values: redacted from every message
        self.secrets: set[str] = set()
        #: how many times the server was started (1 after the first start)
        self.starts = 0
        self._tools: list[Any] | None = None
        self._last_used = 0.0

    # ----------------------------------------------------------------- start and stop

    def _error(self, cls: type[MCPToolError], message: str, tool: str | None) -> MCPToolError:
        return cls(redact(message, self.secrets), tool=tool, server=self.config.name)

    def _stderr_tail(self) -> str:
        handle = self._stderr
        if handle is None:
            return ""
        try:
            handle.flush()
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - _STDERR_TAIL))
            tail = handle.read().strip()
        except (OSError, ValueError) as exc:
            return f" (its standard error is unreadable: {exc})"
        return f"; its standard error ends with: {tail}" if tail else ""

    def _transport(self) -> Any:
        """Build the SDK transport (or URL) of a fresh connection, resolving secrets.

        Raises:
            ConfigError: an unset ``${NAME}`` reference, or a working directory outside the
                work root, or an unusable sandbox.
        """
        from flowyard_sandbox import (
            bubblewrap_prefix,
            bubblewrap_usable,
            confine_directory,
            scrubbed_environment,
        )

        cfg = self.config
        where = f"[mcp.servers.{cfg.name}]"
        if cfg.url is not None:
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            headers = {key: resolve_references(value, where=f"{where} headers.{key}")
                       for key, value in cfg.headers.items()}
            self.secrets = _secret_parts(headers.values())
            _LOG_SECRETS.update(self.secrets)
            _guard_sdk_loggers()
            client = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(
                30.0, read=max(cfg.timeout, 30.0)))
            return streamable_http_client(cfg.url, http_client=client)

        from mcp.client.stdio import StdioServerParameters, stdio_client

        env_values = {key: resolve_references(value, where=f"{where} env.{key}")
                      for key, value in cfg.env.items()}
        self.secrets = _secret_parts(env_values.values())
        _LOG_SECRETS.update(self.secrets)
        _guard_sdk_loggers()
        work = confine_directory(cfg.cwd, self._manager.settings.work_root)
        env = scrubbed_environment(env_values, home=work, allow=cfg.env_allow)
        program = shutil.which(cfg.command, path=os.environ.get("PATH")) if cfg.command else None
        if program is None:
            raise flowyard.ConfigError(f"{where} command {cfg.command!r} is not found on "
                                       "flowyard's PATH")
        unset = [name for name in _SDK_INHERITED if name not in env]
        argv = ["/usr/bin/env", *(f"-u{name}" for name in unset), "--", program, *cfg.args]
        if cfg.sandbox == "bubblewrap":
            usable, detail = bubblewrap_usable()
            if not usable:
                raise flowyard.ConfigError(f"{where} sandbox = \"bubblewrap\" but {detail}; "
                                           "install bubblewrap or set sandbox = \"none\"")
            readonly = [*cfg.readonly]
            if not program.startswith(("/usr/", "/bin/", "/sbin/", "/lib")):
                readonly.append(os.path.dirname(program))
            argv = [*bubblewrap_prefix(detail, work, readonly=readonly,
                                       network=cfg.network), *argv]
        if self._stderr is not None:
            self._stderr.close()
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace",
                                              prefix=f"flowyard-mcp-{cfg.name}-")
        params = StdioServerParameters(command=argv[0], args=argv[1:], env=env, cwd=work)
        return stdio_client(params, errlog=self._stderr)

    async def _connect(self, tool: str | None) -> Any:
        """Return the live client, starting the server when there is none."""
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if self._client is not None:
                return self._client
            from mcp import Client
            from mcp.types import Implementation

            try:
                transport = self._transport()
            except flowyard.ConfigError as exc:
                raise self._error(MCPStartError, f"cannot start MCP server "
                                  f"{self.config.name!r}: {exc}", tool) from None
            ready, stop, done = anyio.Event(), anyio.Event(), anyio.Event()
            box: dict[str, Any] = {}
            scope = anyio.CancelScope()

            async def keep() -> None:
                try:
                    with scope:
                        async with Client(transport, client_info=Implementation(
                                name="flowyard", version=flowyard.__version__)) as client:
                            box["client"] = client
                            ready.set()
                            await stop.wait()
                except Exception as exc:  # noqa: BLE001 - handed to the caller waiting for `ready`
                    box["error"] = exc
                finally:
                    if self._client is not None and self._client is box.get("client"):
                        self._client = self._stop = None  # ended on its own: start afresh
                        self._tools = None
                    ready.set()
                    done.set()

            self._manager.task_group.start_soon(keep, name=f"mcp-{self.config.name}")
            with anyio.move_on_after(self.config.startup_timeout):
                await ready.wait()
            if "client" not in box:
                scope.cancel()
                await done.wait()
                why = (f"{type(box['error']).__name__}: {box['error']}" if "error" in box
                       else f"no answer within startup_timeout = {self.config.startup_timeout} s")
                raise self._error(MCPStartError, f"cannot start MCP server "
                                  f"{self.config.name!r}: {why}{self._stderr_tail()}", tool)
            self._client, self._stop, self._done = box["client"], stop, done
            self.starts += 1
            self._last_used = anyio.current_time()
            return self._client

    async def _alive(self, client: Any) -> bool:
        """Probe a connection that was idle for ``_PING_AFTER_IDLE`` s (``tools/list``);
        False when it closed or does not answer within ``_PING_TIMEOUT`` s (then it is
        discarded)."""
        from mcp import MCPError

        if anyio.current_time() - self._last_used < _PING_AFTER_IDLE:
            return True
        try:
            with anyio.fail_after(min(_PING_TIMEOUT, self.config.timeout)):
                # `ping` is removed from revision 2026-07-28: a listing is the probe
                await client.list_tools(cache_mode="bypass")
        except TimeoutError:
            self.discard()
            return False
        except MCPError as exc:
            if exc.code != _CONNECTION_CLOSED:
                return True  # it answered (with an error): it is alive
            self.discard()
            return False
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream,
                OSError):
            self.discard()
            return False
        return True

    def discard(self) -> None:
        """Stop the live connection in the background (its state is unknown); the next call
        starts the server again. Safe when there is none."""
        if self._stop is not None:
            self._stop.set()
        self._client = self._stop = None
        self._tools = None

    async def close(self) -> None:
        """Stop the live connection and wait until the server is gone (stdio: stdin closed,
        2 s grace, then its process group terminated)."""
        done = self._done
        self.discard()
        if done is not None:
            await done.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self._lock = None  # bound to the helper loop that is ending

    # ----------------------------------------------------------------- requests

    async def request(self, what: str, tool: str | None,
                      send: Callable[[Any], Awaitable[T]], timeout: float | None = None) -> T:
        """Send one request on the live connection (starting it when needed).

        Args:
            what: the request, for messages (``"tools/call read_file"``).
            tool: the flowyard tool name, for the errors.
            send: ``send(client)`` awaits the SDK call.
            timeout: seconds (default: the server's ``timeout``).

        Returns:
            the SDK's result.

        Raises:
            MCPStartError: the server cannot be started.
            MCPServerCrashedError: the connection closed during the request.
            MCPTimeoutError: no answer within ``timeout``.
            MCPRequestError: the server answered with a JSON-RPC error.
        """
        from mcp import MCPError

        client = await self._connect(tool)
        if not await self._alive(client):  # died while idle: start it again for this call
            client = await self._connect(tool)
        limit = self.config.timeout if timeout is None else timeout
        try:
            with anyio.fail_after(limit):
                result = await send(client)
            self._last_used = anyio.current_time()
            return result
        except TimeoutError:
            self.discard()
            raise self._error(MCPTimeoutError, f"MCP server {self.config.name!r} did not answer "
                              f"{what} within {limit} s; it is stopped and starts again on "
                              "the next call", tool) from None
        except anyio.get_cancelled_exc_class():
            self.discard()
            raise
        except MCPError as exc:
            if exc.code == _CONNECTION_CLOSED:
                self.discard()
                raise self._error(MCPServerCrashedError, f"MCP server {self.config.name!r} "
                                  f"closed the connection during {what} ({exc.message}); it "
                                  f"starts again on the next call{self._stderr_tail()}",
                                  tool) from None
            raise self._error(MCPRequestError, f"MCP server {self.config.name!r} refused "
                              f"{what}: {exc.message} (JSON-RPC error {exc.code})",
                              tool) from None
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream,
                OSError) as exc:
            self.discard()
            raise self._error(MCPServerCrashedError, f"MCP server {self.config.name!r}: the "
                              f"connection broke during {what} ({type(exc).__name__}: {exc}); "
                              f"it starts again on the next call{self._stderr_tail()}",
                              tool) from None

    async def list_tools(self) -> list[Any]:
        """Return the server's tools (every page), cached until the connection is replaced.

        Returns:
            ``mcp.types.Tool`` objects.

        Raises:
            MCPToolError: as :meth:`request`.
        """
        if self._tools is not None and self._client is not None:
            return self._tools
        tools: list[Any] = []
        cursor: str | None = None
        while True:
            page = await self.request("tools/list", None,
                                      lambda c, cur=cursor: c.list_tools(cursor=cur),
                                      timeout=self.config.startup_timeout)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        self._tools = tools
        return tools


class MCPClientManager:
    """The MCP connections of one stack, and the helper thread they live in.

    Args:
        settings: the ``[mcp]`` section.

    Attributes:
        connections: one :class:`ServerConnection` per configured server, by name.
    """

    def __init__(self, settings: MCPSettings) -> None:
        self.settings = settings
        self.connections = {name: ServerConnection(cfg, self)
                            for name, cfg in settings.servers.items()}
        self._lock = threading.Lock()
        self._portal: BlockingPortal | None = None
        self._task_group: TaskGroup | None = None
        self._stop_thread: Any = None

    @property
    def task_group(self) -> TaskGroup:
        """The helper loop's task group (keeps the connections' tasks)."""
        assert self._task_group is not None
        return self._task_group

    def _ensure_portal(self) -> BlockingPortal:
        with self._lock:
            if self._portal is None:
                self._portal, self._task_group, thread = _start_helper()
                self._stop_thread = weakref.finalize(self, _stop_helper, self._portal, thread)
            return self._portal

    def run_sync(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``func(*args)`` in the helper loop and wait for it (from synchronous code:
        registration, a lazy tool's schema).

        Raises:
            MCPToolError: what ``func`` raises.
        """
        return self._ensure_portal().call(func, *args)

    async def run(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``func(*args)`` in the helper loop and await it from any event loop (asyncio
        or trio); cancelling the caller cancels it there.

        Raises:
            MCPToolError: what ``func`` raises.
        """
        future = self._ensure_portal().start_task_soon(func, *args)
        try:
            return await anyio.to_thread.run_sync(future.result, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            future.cancel()
            raise

    async def _close_all(self) -> None:
        async with anyio.create_task_group() as group:
            for connection in self.connections.values():
                group.start_soon(connection.close)

    def close_sync(self) -> None:
        """Close every connection (waiting for the servers to exit) and end the helper
        thread, from synchronous code. Safe to call twice; a later call starts afresh."""
        with self._lock:
            portal, self._portal = self._portal, None
            stop, self._stop_thread = self._stop_thread, None
        if portal is None:
            return
        try:
            portal.call(self._close_all)
        finally:
            stop()

    async def aclose(self) -> None:
        """Close every connection (waiting for the servers to exit) and end the helper
        thread, without blocking the caller's event loop. Safe to call twice; a later call
        starts the thread and the servers afresh."""
        await anyio.to_thread.run_sync(self.close_sync)


def _start_helper() -> tuple[BlockingPortal, TaskGroup, threading.Thread]:
    """Start the helper thread's event loop (asyncio); return its portal and task group."""
    handoff: queue.Queue[Any] = queue.Queue()

    async def main() -> None:
        async with anyio.create_task_group() as group:
            async with BlockingPortal() as portal:
                handoff.put((portal, group))
                await portal.sleep_until_stopped()
            group.cancel_scope.cancel()

    def run() -> None:
        try:
            anyio.run(main)
        except BaseException as exc:  # handed to the thread that waits for the start
            handoff.put(exc)
            raise

    thread = threading.Thread(target=run, name="flowyard-mcp", daemon=True)
    thread.start()
    started = handoff.get(timeout=30)
    if isinstance(started, BaseException):
        raise MCPToolError(f"cannot start the MCP helper thread: {started}")
    portal, group = started
    return portal, group, thread


def _stop_helper(portal: BlockingPortal, thread: threading.Thread) -> None:
    """Stop the helper loop (cancelling what still runs there) and join its thread."""
    if thread.is_alive():
        try:
            portal.call(portal.stop, True)
        except RuntimeError:  # the loop already ended (interpreter shutdown)
            pass
        thread.join(timeout=10)
