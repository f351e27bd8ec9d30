"""The ``[mcp]`` configuration: which MCP servers flowyard connects to, and how.

::

    [mcp]
    work_root = "."                 # stdio servers' working directories must lie inside it

    [mcp.servers.files]             # a stdio server: flowyard starts the command
    command = "npx"
    args = ["-y", "@modelcontextprotocol/server-filesystem", "."]
    env = {GITHUB_TOKEN = "${GITHUB_TOKEN}"}   # ${NAME}: read from flowyard's environment
    cwd = "data"                    # relative to work_root (default: work_root)
    tools = ["read_file", "list_directory"]    # optional: declared names, lazy start
    timeout = 60                    # seconds per call
    sandbox = "bubblewrap"          # or "none" (default)

    [mcp.servers.search]            # a Streamable HTTP server
    url = "http://127.0.0.1:8931/mcp"
    headers = {Authorization = "Bearer ${SEARCH_TOKEN}"}

Secrets are given as ``${NAME}`` references to flowyard's environment, resolved when the
server starts; their values are redacted (``***``) from every error message flowyard-mcp
raises, and never put on a command line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import attrs
import flowyard
from flowyard_sandbox import DEFAULT_ENV_ALLOW, is_env_name

__all__ = ["ServerConfig", "MCPSettings", "parse_settings", "resolve_references"]

_SERVER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_STDIO_KEYS = {"command", "args", "env", "cwd", "env_allow", "sandbox", "network", "readonly"}
_HTTP_KEYS = {"url", "headers"}
_COMMON_KEYS = {"tools", "timeout", "startup_timeout", "description"}
SANDBOXES = ("none", "bubblewrap")


@attrs.frozen
class ServerConfig:
    """One ``[mcp.servers.<name>]`` table, validated.

    Attributes:
        name: the server's name, the prefix of its tools (``files`` -> ``files.read_file``).
        command: the program of a stdio server (looked up on flowyard's ``PATH``), or None.
        args: its arguments.
        env: variables given to a stdio server; values may hold ``${NAME}`` references.
        cwd: its working directory, relative to ``work_root`` (None: ``work_root``).
        env_allow: names copied from flowyard's environment (default PATH, LANG, LC_ALL,
            LC_CTYPE, TZ); nothing else is inherited.
        sandbox: ``"none"`` (default: scrubbed environment and confined directory only) or
            ``"bubblewrap"`` (also new namespaces; refused when bubblewrap is unusable).
        network: under bubblewrap, keep the host network (default False).
        readonly: host paths made readable under bubblewrap (the server's installation).
        url: the endpoint of a Streamable HTTP server, or None.
        headers: HTTP headers sent with every request; values may hold ``${NAME}``.
        tools: declared tool names (None: list them when the stack is built).
        timeout: seconds one call may take (default 60).
        startup_timeout: seconds to start and initialize the server (default 30).
        description: shown in ``flowyard tools`` before the server's own descriptions.
    """

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = attrs.field(factory=dict)
    cwd: str | None = None
    env_allow: tuple[str, ...] = DEFAULT_ENV_ALLOW
    sandbox: str = "none"
    network: bool = False
    readonly: tuple[str, ...] = ()
    url: str | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict)
    tools: tuple[str, ...] | None = None
    timeout: float = 60.0
    startup_timeout: float = 30.0
    description: str = ""

    @property
    def transport(self) -> str:
        """``"stdio"`` or ``"http"``."""
        return "stdio" if self.command is not None else "http"

    def __repr__(self) -> str:
        # values of env and headers may be secrets: names only
        where = self.command if self.command is not None else self.url
        return (f"ServerConfig(name={self.name!r}, {self.transport}={where!r}, "
                f"env={sorted(self.env)!r}, headers={sorted(self.headers)!r})")


@attrs.frozen
class MCPSettings:
    """The whole ``[mcp]`` section.

    Attributes:
        servers: the configured servers by name.
        work_root: the directory stdio servers' working directories are confined to (an
            absolute path; default: flowyard's current directory when the stack is built).
    """

    servers: Mapping[str, ServerConfig]
    work_root: str


def _strings(where: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise flowyard.ConfigError(f"{where} {key} must be a list of strings")
    return tuple(value)


def _table(where: str, key: str, value: Any, *, names: bool) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise flowyard.ConfigError(f"{where} {key} must be a table of NAME = \"string\"")
    if names:
        for k in value:
            if not is_env_name(k):
                raise flowyard.ConfigError(f"{where} {key}: {k!r} is not a variable name")
    return dict(value)


def _seconds(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise flowyard.ConfigError(f"{where} {key} must be a positive number of seconds")
    return float(value)


def _server(name: str, table: Any) -> ServerConfig:
    where = f"[mcp.servers.{name}]"
    if not _SERVER_NAME.match(name):
        raise flowyard.ConfigError(f"{where}: a server name is a letter then letters, digits, "
                                   "'_' or '-' (it prefixes tool names)")
    if not isinstance(table, Mapping):
        raise flowyard.ConfigError(f"{where} must be a table")
    has_command, has_url = "command" in table, "url" in table
    if has_command == has_url:
        raise flowyard.ConfigError(f"{where} needs exactly one of command (stdio) and url "
                                   "(Streamable HTTP)")
    allowed = _COMMON_KEYS | (_STDIO_KEYS if has_command else _HTTP_KEYS)
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise flowyard.ConfigError(f"{where} unknown key(s) {unknown} for a "
                                   f"{'stdio' if has_command else 'Streamable HTTP'} server; "
                                   f"known: {sorted(allowed)}")
    kwargs: dict[str, Any] = {"name": name}
    if has_command:
        if not isinstance(table["command"], str) or not table["command"]:
            raise flowyard.ConfigError(f"{where} command must be a non-empty string")
        kwargs["command"] = table["command"]
        kwargs["args"] = _strings(where, "args", table.get("args", []))
        kwargs["env"] = _table(where, "env", table.get("env", {}), names=True)
        if "cwd" in table:
            if not isinstance(table["cwd"], str):
                raise flowyard.ConfigError(f"{where} cwd must be a path string")
            kwargs["cwd"] = table["cwd"]
        allow = _strings(where, "env_allow", table.get("env_allow", list(DEFAULT_ENV_ALLOW)))
        for item in allow:
            if not is_env_name(item):
                raise flowyard.ConfigError(f"{where} env_allow: {item!r} is not a variable name")
        kwargs["env_allow"] = allow
        sandbox = table.get("sandbox", "none")
        if sandbox not in SANDBOXES:
            raise flowyard.ConfigError(f"{where} sandbox must be one of {SANDBOXES}, "
                                       f"got {sandbox!r}")
        kwargs["sandbox"] = sandbox
        if not isinstance(table.get("network", False), bool):
            raise flowyard.ConfigError(f"{where} network must be true or false")
        kwargs["network"] = table.get("network", False)
        readonly = _strings(where, "readonly", table.get("readonly", []))
        if not all(os.path.isabs(p) for p in readonly):
            raise flowyard.ConfigError(f"{where} readonly entries must be absolute paths")
        kwargs["readonly"] = readonly
    else:
        url = table["url"]
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise flowyard.ConfigError(f"{where} url must be an http:// or https:// URL")
        kwargs["url"] = url
        kwargs["headers"] = _table(where, "headers", table.get("headers", {}), names=False)
    if "tools" in table:
        kwargs["tools"] = _strings(where, "tools", table["tools"])
    for key in ("timeout", "startup_timeout"):
        if key in table:
            kwargs[key] = _seconds(where, key, table[key])
    if not isinstance(table.get("description", ""), str):
        raise flowyard.ConfigError(f"{where} description must be a string")
    kwargs["description"] = table.get("description", "")
    return ServerConfig(**kwargs)


def parse_settings(config: flowyard.Config) -> MCPSettings:
    """Read and validate the ``[mcp]`` section.

    Args:
        config: the stack's configuration.

    Returns:
        the settings (no server when the section is absent).

    Raises:
        ConfigError: an unknown key, a wrong type, a server with both or neither of
            ``command`` and ``url`` (the message names the table and the key, never a value
            of ``env`` or ``headers``).
    """
    section = config.section("mcp")
    # `serve` is the table of `flowyard mcp serve` (the server half reads it)
    unknown = sorted(set(section) - {"servers", "work_root", "serve"})
    if unknown:
        raise flowyard.ConfigError(f"[mcp] unknown key(s) {unknown}; known: servers, "
                                   "work_root, serve")
    servers = section.get("servers", {})
    if not isinstance(servers, Mapping):
        raise flowyard.ConfigError("[mcp] servers must be a table of tables")
    root = section.get("work_root", ".")
    if not isinstance(root, str):
        raise flowyard.ConfigError("[mcp] work_root must be a path string")
    return MCPSettings(servers={name: _server(name, table) for name, table in servers.items()},
                       work_root=os.path.abspath(os.path.expanduser(root)))


def resolve_references(value: str, *, where: str,
                       environ: Mapping[str, str] | None = None) -> str:
    """Replace every ``${NAME}`` in ``value`` by flowyard's environment variable ``NAME``.

    Args:
        value: a configured ``env`` or ``headers`` value.
        where: what the value is, for the error (``"[mcp.servers.gh] env.TOKEN"``).
        environ: the environment read (default: ``os.environ``).

    Returns:
        the value with its references filled in.

    Raises:
        ConfigError: a referenced variable is not set (the message names it).
    """
    environ = os.environ if environ is None else environ

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise flowyard.ConfigError(f"{where} refers to ${{{name}}}, which is not set in "
                                       "flowyard's environment")
        return environ[name]

    return _REFERENCE.sub(fill, value)
