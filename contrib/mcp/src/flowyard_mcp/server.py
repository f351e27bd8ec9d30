"""Serve a flowyard stack's tools and workflow files as MCP tools.

``flowyard mcp serve`` (see :mod:`flowyard_mcp.commands`) builds a :class:`McpToolServer` from
a stack and :class:`ServeSettings` and runs it over stdio or Streamable HTTP, the two standard
transports of the Model Context Protocol (specification revision 2025-11-25; the official
``mcp`` SDK also negotiates 2026-07-28 with clients that ask for it).

What is exposed:

* **stack tools** named by the allow-list (``[mcp.serve] tools`` or ``--tool``: exact names
  or ``fnmatch`` patterns such as ``"filesystem.*"``). The default allow-list is empty: no
  stack tool is served unless named. A tool's ``side_effects`` cannot be the safety test,
  because it says what a tool *changes*, not what it *reads* (``filesystem.read`` has no side
  effects and still reads files): whoever reaches the server gets what is exposed.
* **workflows** given as files or folders of files (``[mcp.serve] workflows`` or
  ``--workflow``): one tool per workflow, named by the workflow's ``name``, whose input schema
  is built from the workflow's declared ``inputs`` and whose result is the run's ``outputs``.

Every failure of a call (bad arguments, a tool's :class:`~flowyard.ToolError`, a run that
does not complete) is a ``CallToolResult`` with ``isError: true`` and a message, as the
specification asks ("Tool Execution Errors"); an unknown tool name is a protocol error
(JSON-RPC ``-32602``). Messages never contain the server's bearer token nor the values of
secret-looking environment variables and configuration keys (``api_key``...), and
unexpected exceptions are reported by type only (their details go to the server's log, on
stderr).
"""

from __future__ import annotations

import abc
import contextlib
import fnmatch
import hmac
import ipaddress
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
from flowyard import (
    BaseTool,
    ConfigError,
    FlowyardError,
    ToolContext,
    ToolError,
    ToolInputError,
    WorkflowValidationError,
    json_default,
    validate_arguments,
)

if TYPE_CHECKING:
    from flowyard import Config, Stack, Workflow
    from mcp import types as mcp_types
    from mcp.server.lowlevel import Server

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_PATH",
    "SPEC_VERSION",
    "ServeSettings",
    "ExposedTool",
    "StackTool",
    "WorkflowTool",
    "McpToolServer",
    "BearerTokenMiddleware",
    "BindingRefused",
    "is_loopback",
    "check_binding",
    "select_tools",
    "workflow_files",
    "input_schema",
    "redact",
]

log = logging.getLogger("flowyard_mcp.server")

#: The MCP specification revision this server is written against (the SDK also speaks the
#: earlier handshake revisions and 2026-07-28).
SPEC_VERSION = "2025-11-25"
#: TCP port of ``--http`` when neither ``--port`` nor ``[mcp.serve] port`` is given.
DEFAULT_PORT = 8760
#: URL path of the Streamable HTTP endpoint.
DEFAULT_PATH = "/mcp"

#: MCP tool names (specification 2025-11-25, "Tool names"): 1-128 characters of
#: ``A-Z a-z 0-9 _ - .``.
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
#: Environment variables whose values are never shown in a result.
_SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH)", re.IGNORECASE)
#: Shorter values are not redacted (they would mangle ordinary words).
_MIN_SECRET_LENGTH = 8
#: JSON Schema types of the workflow input types of :class:`flowyard.InputSpec`.
_INPUT_TYPES = {"string": "string", "integer": "integer", "number": "number",
                "boolean": "boolean", "array": "array", "object": "object"}
_WORKFLOW_SUFFIXES = (".yaml", ".yml", ".json")


# ---------------------------------------------------------------------------- settings


def _string_list(value: Any, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"configuration key {key!r} must be a list of non-empty strings, "
                          f"got {value!r}")
    return tuple(value)


@attrs.frozen
class ServeSettings:
    """What ``flowyard mcp serve`` exposes and where (the ``[mcp.serve]`` table).

    Attributes:
        tools: the allow-list of stack tools: exact names or ``fnmatch`` patterns
            (``"filesystem.*"``); empty (the default) exposes no stack tool.
        workflows: workflow files, or folders whose ``*.yaml``/``*.yml``/``*.json`` files are
            workflows; relative paths resolve against the current directory.
        host: the address ``--http`` binds (default ``127.0.0.1``).
        port: the TCP port ``--http`` binds (default :data:`DEFAULT_PORT`).
        path: the URL path of the Streamable HTTP endpoint (default ``/mcp``).
        token: a bearer token every HTTP request must carry (``Authorization: Bearer ...``);
            None: no authentication, allowed on loopback only. Never shown in ``repr``.
        allow_remote: bind an address beyond loopback (requires ``token``).
    """

    tools: tuple[str, ...] = ()
    workflows: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    path: str = DEFAULT_PATH
    token: str | None = attrs.field(default=None, repr=False)
    allow_remote: bool = False

    @classmethod
    def from_config(cls, config: Config) -> ServeSettings:
        """Read the ``[mcp.serve]`` table.

        Args:
            config: the stack's configuration.

        Returns:
            the settings; keys that are absent keep their defaults.

        Raises:
            ConfigError: a key of the wrong type or an unknown key (the message names it).
        """
        table = config.get("mcp.serve") or {}
        if not isinstance(table, Mapping):
            raise ConfigError(f"configuration key 'mcp.serve' must be a table, got {table!r}")
        known = {"tools", "workflows", "host", "port", "path", "token", "allow_remote"}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(f"unknown key(s) in [mcp.serve]: {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(known))})")
        values: dict[str, Any] = {
            "tools": _string_list(table.get("tools"), "mcp.serve.tools"),
            "workflows": _string_list(table.get("workflows"), "mcp.serve.workflows"),
        }
        for key in ("host", "path", "token"):
            if key in table:
                if not isinstance(table[key], str) or not table[key]:
                    raise ConfigError(f"configuration key 'mcp.serve.{key}' must be a "
                                      "non-empty string")
                values[key] = table[key]
        if "port" in table:
            port = table["port"]
            if isinstance(port, str) and port.isdigit():  # FLOWYARD_MCP__SERVE__PORT=8760
                port = int(port)
            if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
                raise ConfigError(f"configuration key 'mcp.serve.port' must be a TCP port "
                                  f"(1-65535), got {table['port']!r}")
            values["port"] = port
        if "allow_remote" in table:
            flag = table["allow_remote"]
            if isinstance(flag, str) and flag.lower() in ("true", "false", "1", "0"):
                flag = flag.lower() in ("true", "1")
            if not isinstance(flag, bool):
                raise ConfigError("configuration key 'mcp.serve.allow_remote' must be a boolean")
            values["allow_remote"] = flag
        if not str(values.get("path", DEFAULT_PATH)).startswith("/"):
            raise ConfigError("configuration key 'mcp.serve.path' must start with '/'")
        return cls(**values)


class BindingRefused(ConfigError):
    """``--http`` was asked to bind beyond loopback without ``--allow-remote`` and a token."""


def is_loopback(host: str) -> bool:
    """Return True when ``host`` names the loopback interface only.

    Args:
        host: an IP address or ``localhost``.

    Returns:
        True for ``localhost`` and addresses in 127.0.0.0/8 or ``::1``; False for anything
        else, including ``0.0.0.0`` (every interface) and host names.
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(settings: ServeSettings) -> None:
    """Refuse to serve HTTP beyond loopback unless asked explicitly and authenticated.

    Args:
        settings: the host, ``allow_remote`` and ``token`` to check.

    Raises:
        BindingRefused: the host is not loopback and ``allow_remote`` is off or no token is
            set.
    """
    if is_loopback(settings.host):
        return
    if not settings.allow_remote:
        raise BindingRefused(
            f"refusing to bind {settings.host}: the MCP server would be reachable beyond this "
            "machine. Pass --allow-remote (and set a bearer token) to mean it, or bind "
            "127.0.0.1.")
    if not settings.token:
        raise BindingRefused(
            f"refusing to bind {settings.host} without a bearer token: anyone who reaches "
            "that address could call the exposed tools. Set [mcp.serve] token (or the "
            "environment variable FLOWYARD_MCP__SERVE__TOKEN).")


# ---------------------------------------------------------------------------- redaction


def _secrets(extra: Iterable[str | None]) -> list[str]:
    found = [v for v in extra if v and len(v) >= _MIN_SECRET_LENGTH]
    found += [value for name, value in os.environ.items()
              if _SECRET_ENV.search(name) and len(value) >= _MIN_SECRET_LENGTH]
    return sorted(set(found), key=len, reverse=True)


def _config_secrets(node: Any, secret_key: bool = False) -> list[str]:
    """The string values of the configuration under secret-looking keys (``api_key``...)."""
    if isinstance(node, Mapping):
        return [v for key, value in node.items()
                for v in _config_secrets(value, secret_key or bool(_SECRET_ENV.search(str(key))))]
    if isinstance(node, list):
        return [v for item in node for v in _config_secrets(item, secret_key)]
    return [node] if secret_key and isinstance(node, str) else []


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret in ``text`` by ``***``.

    Args:
        text: a message about to leave the server.
        secrets: the values to hide (longest first, so a secret containing another is hidden
            whole).

    Returns:
        the text without the secrets.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


# ---------------------------------------------------------------------------- catalog


def select_tools(names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """Return the tool names the allow-list admits, in the order of ``names``.

    Args:
        names: every tool name the stack has.
        patterns: exact names or ``fnmatch`` patterns (``*``, ``?``, ``[...]``).

    Returns:
        the admitted names (none when ``patterns`` is empty).

    Raises:
        ConfigError: an exact name (no wildcard) that the stack does not have; the message
            lists the tools it has.
    """
    missing = [p for p in patterns if not any(c in p for c in "*?[") and p not in names]
    if missing:
        raise ConfigError(f"[mcp.serve] tools / --tool: no tool {', '.join(map(repr, missing))} "
                          f"in this stack (tools: {', '.join(sorted(names)) or 'none'})")
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            log.warning("the allow-list pattern %r matches no tool", pattern)
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def workflow_files(entries: Sequence[str | Path]) -> list[Path]:
    """Expand workflow files and folders into a list of files.

    Args:
        entries: files, or folders whose ``*.yaml``, ``*.yml`` and ``*.json`` files (not
            recursive, sorted by name) are workflows.

    Returns:
        the files, each once, in the order given.

    Raises:
        ConfigError: an entry that does not exist, or a folder with no workflow file.
    """
    files: list[Path] = []
    for entry in entries:
        path = Path(entry).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in _WORKFLOW_SUFFIXES)
            if not found:
                raise ConfigError(f"workflow folder {path} has no *.yaml, *.yml or *.json file")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"workflow {path}: no such file or folder")
    unique: list[Path] = []
    for f in files:
        if f.resolve() not in {u.resolve() for u in unique}:
            unique.append(f)
    return unique


def input_schema(workflow: Workflow) -> dict[str, Any]:
    """Return the JSON Schema (an object) of a workflow's declared inputs.

    Each :class:`flowyard.InputSpec` becomes a property of its JSON type (``any``: no type),
    with its ``description`` and ``default``; inputs without a default are ``required``;
    other keys are refused (``additionalProperties: false``), as the engine refuses unknown
    inputs.

    Args:
        workflow: the loaded workflow.

    Returns:
        the schema.
    """
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, spec in workflow.inputs.items():
        prop: dict[str, Any] = {}
        if spec.type in _INPUT_TYPES:
            prop["type"] = _INPUT_TYPES[spec.type]
        if spec.description:
            prop["description"] = spec.description
        if spec.required:
            required.append(name)
        else:
            prop["default"] = spec.default
        properties[name] = prop
    schema: dict[str, Any] = {"type": "object", "properties": properties,
                              "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, default=json_default, ensure_ascii=False)


def _success(value: Any) -> mcp_types.CallToolResult:
    """A result: the value as text (strings as they are, anything else as JSON) and, when it
    is a JSON object, also as ``structuredContent``."""
    from mcp import types as mcp_types

    text = _text(value)
    structured = json.loads(text) if isinstance(value, Mapping) else None
    return mcp_types.CallToolResult(content=[mcp_types.TextContent(text=text)],
                                    structured_content=structured)


def _failure(message: str) -> mcp_types.CallToolResult:
    from mcp import types as mcp_types

    return mcp_types.CallToolResult(content=[mcp_types.TextContent(text=message)],
                                    is_error=True)


@attrs.define
class ExposedTool(abc.ABC):
    """One MCP tool of the server: its definition and how to call it (a base class).

    Attributes:
        name: the MCP tool name.
        description: shown to clients and their models.
        schema: the JSON Schema (object) of the arguments.
    """

    name: str
    description: str
    schema: dict[str, Any]

    def definition(self) -> mcp_types.Tool:
        """Return the ``Tool`` entry of ``tools/list``."""
        from mcp import types as mcp_types

        return mcp_types.Tool(name=self.name, description=self.description or None,
                              input_schema=self.schema)

    @abc.abstractmethod
    async def call(self, arguments: dict[str, Any]) -> Any:
        """Run the tool and return its JSON-ready result.

        Raises:
            FlowyardError: the call failed (turned into an ``isError`` result by the server).
        """


@attrs.define
class StackTool(ExposedTool):
    """A tool of the stack's registry, called outside any run.

    Attributes:
        tool: the flowyard tool object.
        stack: the stack whose services the call gets (its :class:`~flowyard.ToolContext`).
    """

    tool: Any = None
    stack: Any = None

    @classmethod
    def of(cls, stack: Stack, name: str) -> StackTool:
        """Wrap the stack's tool ``name``.

        Raises:
            UnknownNameError: the stack has no such tool.
        """
        tool = stack.tools.get(name)
        return cls(name=name, description=str(getattr(tool, "description", "") or ""),
                   schema=dict(getattr(tool, "parameters", None)
                               or {"type": "object", "properties": {}}),
                   tool=tool, stack=stack)

    def definition(self) -> mcp_types.Tool:
        """Return the ``Tool`` entry, with annotations derived from the flowyard tool:
        ``readOnlyHint`` when it declares no side effects, ``idempotentHint`` from
        ``idempotent``, ``openWorldHint`` when it touches the network.
        """
        from mcp import types as mcp_types

        effects = tuple(getattr(self.tool, "side_effects", ()) or ())
        annotations = mcp_types.ToolAnnotations(
            read_only_hint=not effects,
            idempotent_hint=bool(getattr(self.tool, "idempotent", False)),
            open_world_hint="network" in effects)
        return mcp_types.Tool(name=self.name, description=self.description or None,
                              input_schema=self.schema, annotations=annotations)

    async def call(self, arguments: dict[str, Any]) -> Any:
        """Validate the arguments against the tool's schema and invoke it.

        Raises:
            ToolInputError: the arguments do not match the schema.
            FlowyardError: whatever the tool raises.
        """
        if not isinstance(self.tool, BaseTool):  # BaseTool.invoke validates itself
            validate_arguments(self.schema, arguments, tool=self.name)
        context = ToolContext(stack=self.stack, step_id=f"mcp:{self.name}",
                              workflow_name="mcp")
        return await self.tool.invoke(arguments, context)


class _RunFailed(FlowyardError):
    """A served workflow's run ended without completing (its message is the client's)."""


@attrs.define
class WorkflowTool(ExposedTool):
    """A workflow served as a tool: the arguments are its inputs, the result its outputs.

    Attributes:
        workflow: the loaded workflow.
        stack: the stack that runs it (runs are stored like any other run).
    """

    workflow: Any = None
    stack: Any = None

    @classmethod
    def of(cls, stack: Stack, path: Path) -> WorkflowTool:
        """Load and validate the workflow file ``path``.

        Raises:
            WorkflowValidationError: the file is not a valid workflow.
            ConfigError: its name is not a valid MCP tool name.
        """
        workflow = stack.load_workflow(path)
        if not _TOOL_NAME.match(workflow.name):
            raise ConfigError(f"workflow {path}: its name {workflow.name!r} is not a valid MCP "
                              "tool name (1-128 of A-Z a-z 0-9 _ - .)")
        description = workflow.description.strip() or f"Run the flowyard workflow {workflow.name}."
        return cls(name=workflow.name, description=description, schema=input_schema(workflow),
                   workflow=workflow, stack=stack)

    def definition(self) -> mcp_types.Tool:
        """Return the ``Tool`` entry, with an output schema naming the workflow's outputs."""
        from mcp import types as mcp_types

        outputs = list(self.workflow.outputs)
        output_schema = {"type": "object", "properties": {name: {} for name in outputs},
                         "required": outputs}
        return mcp_types.Tool(name=self.name, description=self.description,
                              input_schema=self.schema, output_schema=output_schema)

    async def call(self, arguments: dict[str, Any]) -> Any:
        """Run the workflow with ``arguments`` as its inputs; return its outputs.

        Raises:
            ToolInputError: unknown, missing or mistyped inputs (every problem, by input).
            FlowyardError: the run did not complete (its status, id and error), or storage
                failed.
        """
        try:
            result = await self.stack.run(self.workflow, arguments)
        except WorkflowValidationError as exc:
            problems = "; ".join(f"{i.path or '<root>'}: {i.message}" for i in exc.issues)
            raise ToolInputError(f"invalid arguments for workflow {self.name!r}: {problems}",
                                 tool=self.name) from None
        if not result.ok:
            raise _RunFailed(f"workflow {self.name!r} {result.status} (run {result.run_id}): "
                             f"{result.error or 'no error recorded'}")
        return result.outputs


# ---------------------------------------------------------------------------- server


class McpToolServer:
    """The MCP server of ``flowyard mcp serve``: a catalog of tools over the SDK's low-level
    server (``tools/list`` and ``tools/call``, MCP specification 2025-11-25).

    Args:
        stack: the stack whose tools and workflows are served (opened by :meth:`serve_stdio`
            and :meth:`serve_http`, or by the caller).
        settings: what to expose, and the HTTP address.
        workflows: workflow files or folders to serve; None: ``settings.workflows``.

    Raises:
        ConfigError: an allow-listed exact name the stack does not have, a missing workflow
            file, a workflow name that is not a valid tool name, two tools of one name.
        WorkflowValidationError: a workflow file is invalid.
    """

    def __init__(self, stack: Stack, settings: ServeSettings, *,
                 workflows: Sequence[str | Path] | None = None) -> None:
        self.stack = stack
        self.settings = settings
        self.tools: dict[str, ExposedTool] = {}
        for name in select_tools(stack.tools.names(), settings.tools):
            if not _TOOL_NAME.match(name):
                raise ConfigError(f"tool {name!r} cannot be served: not a valid MCP tool name")
            self._add(StackTool.of(stack, name))
        for path in workflow_files(settings.workflows if workflows is None else workflows):
            self._add(WorkflowTool.of(stack, path))
        self._secrets = _secrets([settings.token, *_config_secrets(stack.config.data)])
        effects = [n for n, t in self.tools.items() if isinstance(t, StackTool)
                   and getattr(t.tool, "side_effects", ())]
        if effects:
            log.warning("serving tools with side effects: %s", ", ".join(effects))

    def _add(self, tool: ExposedTool) -> None:
        if tool.name in self.tools:
            raise ConfigError(f"two served tools are named {tool.name!r} (a stack tool and a "
                              "workflow, or two workflows); rename the workflow")
        self.tools[tool.name] = tool

    async def call(self, name: str, arguments: Mapping[str, Any] | None
                   ) -> mcp_types.CallToolResult:
        """Call the served tool ``name`` and turn the outcome into a ``CallToolResult``.

        Args:
            name: a name of :attr:`tools`.
            arguments: the call's arguments (None: none).

        Returns:
            the result; ``isError`` with a message when the call failed (bad arguments, a
            tool or run failure, an unexpected exception, reported by type only).

        Raises:
            MCPError: ``name`` is not served (JSON-RPC ``-32602``, as the specification
                asks for unknown tools).
        """
        from mcp import MCPError
        from mcp.types import INVALID_PARAMS

        tool = self.tools.get(name)
        if tool is None:
            raise MCPError(INVALID_PARAMS, f"unknown tool {name!r}; served tools: "
                                           f"{', '.join(sorted(self.tools)) or 'none'}")
        try:
            value = await tool.call(dict(arguments or {}))
            return _success(value)
        except ToolInputError as exc:
            message = str(exc)
        except ToolError as exc:
            message = f"tool {name!r} failed: {exc}"
            if exc.retriable:
                message += " (retriable: the same call may succeed later)"
        except FlowyardError as exc:
            message = str(exc) if isinstance(exc, _RunFailed) else f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug or an unexpected library error: type only
            log.exception("tool %r raised", name)
            message = (f"tool {name!r} failed with an unexpected {type(exc).__name__}; "
                       "the server's log has the details")
        return _failure(redact(message, self._secrets))

    # ------------------------------------------------------------------ SDK server

    def lowlevel(self) -> Server[Any]:
        """Return the SDK's low-level ``Server`` answering ``tools/list`` and ``tools/call``.

        Returns:
            a new ``mcp.server.lowlevel.Server`` (one per transport).
        """
        from flowyard import __version__
        from mcp import types as mcp_types
        from mcp.server.lowlevel import Server

        definitions = [t.definition() for t in self.tools.values()]

        async def list_tools(ctx: Any, params: Any) -> mcp_types.ListToolsResult:
            return mcp_types.ListToolsResult(tools=definitions)

        async def call_tool(ctx: Any, params: mcp_types.CallToolRequestParams
                            ) -> mcp_types.CallToolResult:
            return await self.call(params.name, params.arguments)

        schemas = {t.name: t.schema for t in self.tools.values()}
        return Server("flowyard", version=__version__,
                      instructions="Tools and workflows of a flowyard stack.",
                      get_tool_input_schema=schemas.get,
                      on_list_tools=list_tools, on_call_tool=call_tool)

    async def serve_stdio(self) -> None:
        """Serve over this process's stdin and stdout until the client closes stdin.

        While serving, the SDK points file descriptor 1 at stderr, so stray prints cannot
        corrupt the protocol stream. The stack is opened here and closed at the end.
        """
        from mcp.server.stdio import stdio_server

        server = self.lowlevel()
        async with self._opened(), stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())

    def http_app(self) -> Any:
        """Return the Starlette app of the Streamable HTTP transport at ``settings.path``,
        behind :class:`BearerTokenMiddleware` when ``settings.token`` is set.

        DNS-rebinding protection (``Host``/``Origin`` checks) is on for loopback hosts.
        """
        from mcp.server.transport_security import TransportSecuritySettings

        security = None
        if not is_loopback(self.settings.host):
            # the SDK protects loopback itself; beyond it the bearer token guards the door
            security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        app = self.lowlevel().streamable_http_app(
            streamable_http_path=self.settings.path, host=self.settings.host,
            transport_security=security)
        if self.settings.token:
            return BearerTokenMiddleware(app, self.settings.token)
        return app

    async def serve_http(self, *, log_level: str = "info",
                         ready: Callable[[], Awaitable[None]] | None = None) -> None:
        """Serve Streamable HTTP on ``settings.host:settings.port`` (asyncio only: uvicorn).

        Args:
            log_level: uvicorn's log level (its logs, access lines included, go to stderr).
            ready: awaited once the stack is open, before uvicorn starts (tests, benchmarks).

        Raises:
            BindingRefused: see :func:`check_binding`.
        """
        import copy

        import uvicorn
        from uvicorn.config import LOGGING_CONFIG

        check_binding(self.settings)
        app = self.http_app()
        log_config = copy.deepcopy(LOGGING_CONFIG)
        log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"  # stdout: nothing
        config = uvicorn.Config(app, host=self.settings.host, port=self.settings.port,
                                log_level=log_level, log_config=log_config, lifespan="on",
                                server_header=False)
        async with self._opened():
            if ready is not None:
                await ready()
            await uvicorn.Server(config).serve()

    @contextlib.asynccontextmanager
    async def _opened(self) -> Any:
        if self.stack.storage_is_open:
            yield
            return
        async with self.stack:
            yield


class BearerTokenMiddleware:
    """ASGI middleware that answers 401 to HTTP requests without ``Authorization: Bearer
    <token>`` (compared in constant time); lifespan events pass through.

    Args:
        app: the ASGI app to guard.
        token: the expected token.
    """

    def __init__(self, app: Any, token: str) -> None:
        if not token:
            raise ValueError("the bearer token must not be empty")
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Pass authenticated requests to the app; answer 401 to the others."""
        if scope["type"] == "http":
            given = b""
            for key, value in scope.get("headers", ()):
                if key.lower() == b"authorization":
                    given = value
                    break
            if not hmac.compare_digest(given, self._expected):
                body = b'{"error": "unauthorized: a valid bearer token is required"}'
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"www-authenticate", b'Bearer realm="flowyard-mcp"'),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
