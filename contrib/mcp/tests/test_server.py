"""The server half: `flowyard mcp serve` driven by the official SDK's client.

Most tests spawn the real command (`flowyard mcp serve`, through `flowyard.cli.main`) and talk
to it over stdio, as Claude Desktop or Cursor would; the HTTP transport has its own module
(test_server_http.py). A few check the pieces (settings, allow-list, schemas, error texts)
in process, where a failure is easier to read. Only core tools (`echo`, `sleep`, `log`,
`llm.chat` on the fake provider) are used: these tests run in a venv with only the core and
this distribution.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import flowyard
import pytest
from flowyard import BaseTool, Config, ConfigError, ToolError, WorkflowValidationError
from flowyard_mcp.server import (
    McpToolServer,
    ServeSettings,
    check_binding,
    input_schema,
    is_loopback,
    redact,
    select_tools,
)
from mcp import Client, MCPError, StdioServerParameters

CLI = [sys.executable, "-c", "from flowyard.cli import main; main()"]

GREET = """\
name: greet
description: Greet someone, several times.
inputs:
  who: {type: string, description: who to greet}
  times: {type: integer, default: 1}
  extra: {type: any, default: null}
steps:
  - id: say
    uses: echo
    with: {value: "hello {{ inputs.who }} x{{ inputs.times }}"}
outputs:
  greeting: "{{ steps.say.output }}"
  times: "{{ inputs.times }}"
"""

TIMES_OUT = """\
name: times_out
description: A step that cannot finish in time.
steps:
  - id: wait
    uses: sleep
    timeout: 0.05
    with: {seconds: 5}
outputs:
  done: "{{ steps.wait.output }}"
"""

ASK = """\
name: ask
description: Ask the fake model.
inputs:
  question: {type: string}
steps:
  - id: answer
    uses: llm.chat
    with: {model: fake/echo, prompt: "{{ inputs.question }}"}
outputs:
  answer: "{{ steps.answer.output }}"
"""


def write_workflows(folder: Path) -> Path:
    """Write the test workflows into ``folder/workflows`` and return that folder."""
    workflows = folder / "workflows"
    workflows.mkdir()
    (workflows / "greet.yaml").write_text(GREET)
    (workflows / "times_out.yaml").write_text(TIMES_OUT)
    (workflows / "ask.yaml").write_text(ASK)
    return workflows


def child_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a spawned server: the isolated flowyard home of the test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWYARD_")}
    env.update({"FLOWYARD_DATA_DIR": str(home / "flowyard-data"),
                "XDG_CONFIG_HOME": str(home / "flowyard-config"),
                "XDG_DATA_HOME": str(home / "flowyard-data"),
                "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def write_config(home: Path, serve: str = "") -> None:
    """Write ``home/flowyard.toml``: memory storage, the fake model, and ``[mcp.serve]``."""
    (home / "flowyard.toml").write_text(
        '[storage]\nurl = "memory://"\n[models]\ndefault = "fake/echo"\n'
        + (f"[mcp.serve]\n{serve}\n" if serve else ""))


def stdio_params(home: Path, *args: str, **env: str) -> StdioServerParameters:
    """Parameters that spawn `flowyard mcp serve ARGS` in ``home``."""
    return StdioServerParameters(command=CLI[0], args=[*CLI[1:], "mcp", "serve", *args],
                                 env=child_env(home, **env), cwd=str(home))


def text_of(result: Any) -> str:
    """The text of a CallToolResult's single text block."""
    [block] = result.content
    return str(block.text)


# ---------------------------------------------------------------------------- over stdio


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("mode", ["auto", "legacy"])  # legacy: the initialize handshake
@pytest.mark.anyio
async def test_stdio_lists_allowed_tools_and_workflows_with_their_schemas(
        flowyard_home: Path, mode: str) -> None:
    write_config(flowyard_home, 'tools = ["echo", "sle*"]')
    folder = write_workflows(flowyard_home)
    async with Client(stdio_params(flowyard_home, "--workflow", str(folder)),
                      read_timeout_seconds=60, mode=mode) as client:
        assert client.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
        listed = {t.name: t for t in (await client.list_tools()).tools}
    # the allow-list: echo by name, sleep by pattern; log and llm.chat are not allowed
    assert set(listed) == {"echo", "sleep", "greet", "times_out", "ask"}
    assert listed["echo"].input_schema == flowyard.Stack().tools.get("echo").parameters
    assert listed["echo"].annotations.read_only_hint is True
    assert listed["echo"].annotations.idempotent_hint is True
    greet = listed["greet"]
    assert greet.description == "Greet someone, several times."
    assert greet.input_schema == {
        "type": "object",
        "properties": {"who": {"type": "string", "description": "who to greet"},
                       "times": {"type": "integer", "default": 1},
                       "extra": {"default": None}},
        "required": ["who"],
        "additionalProperties": False,
    }
    assert greet.output_schema == {"type": "object",
                                   "properties": {"greeting": {}, "times": {}},
                                   "required": ["greeting", "times"]}


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_stdio_calls_tools_and_workflows_and_reports_failures(
        flowyard_home: Path) -> None:
    write_config(flowyard_home)
    folder = write_workflows(flowyard_home)
    async with Client(stdio_params(flowyard_home, "--tool", "echo", "--workflow", str(folder)),
                      read_timeout_seconds=60) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert names == {"echo", "greet", "times_out", "ask"}  # --tool: only echo

        echoed = await client.call_tool("echo", {"value": {"n": [1, 2]}})
        assert not echoed.is_error
        assert echoed.structured_content == {"n": [1, 2]}
        assert text_of(echoed) == '{"n": [1, 2]}'
        plain = await client.call_tool("echo", {"value": "just text"})
        assert text_of(plain) == "just text" and plain.structured_content is None

        greeted = await client.call_tool("greet", {"who": "Ada", "times": 2})
        assert not greeted.is_error, text_of(greeted)
        assert greeted.structured_content == {"greeting": "hello Ada x2", "times": 2}
        answered = await client.call_tool("ask", {"question": "why?"})
        assert answered.structured_content == {"answer": "echo: why?"}

        failed = await client.call_tool("times_out", {})
        assert failed.is_error
        assert text_of(failed).startswith("workflow 'times_out' failed (run ")
        assert "step 'wait'" in text_of(failed) and "timed out after 0.05 s" in text_of(failed)

        bad_tool = await client.call_tool("echo", {"valu": 1})
        assert bad_tool.is_error
        assert text_of(bad_tool) == ("invalid arguments for tool 'echo': <root>: Additional "
                                     "properties are not allowed ('valu' was unexpected)")
        bad_workflow = await client.call_tool("greet", {"who": 7, "whom": "x"})
        assert bad_workflow.is_error
        assert text_of(bad_workflow) == (
            "invalid arguments for workflow 'greet': inputs.whom: unknown input 'whom' "
            "(declared: who, times, extra); inputs.who: input 'who' must be of type string, "
            "got 7")
        missing = await client.call_tool("greet", {})
        assert text_of(missing) == ("invalid arguments for workflow 'greet': inputs.who: "
                                    "missing required input 'who' (who to greet)")

        with pytest.raises(MCPError, match="unknown tool 'sleep'"):
            await client.call_tool("sleep", {"seconds": 0})


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_stdio_serves_no_stack_tool_by_default(flowyard_home: Path) -> None:
    write_config(flowyard_home)
    async with Client(stdio_params(flowyard_home), read_timeout_seconds=60) as client:
        assert (await client.list_tools()).tools == []


def test_serve_refuses_an_unknown_tool_name_and_a_bad_workflow(flowyard_home: Path) -> None:
    write_config(flowyard_home)
    out = subprocess.run([*CLI, "mcp", "serve", "--tool", "no.such"], capture_output=True,
                         text=True, timeout=120, env=child_env(flowyard_home),
                         cwd=flowyard_home, stdin=subprocess.DEVNULL)
    assert out.returncode == 1
    assert "no tool 'no.such' in this stack" in out.stderr
    assert out.stdout == ""
    broken = flowyard_home / "broken.yaml"
    broken.write_text("name: broken\nsteps:\n  - id: a\n    uses: no.such.tool\n")
    out = subprocess.run([*CLI, "mcp", "serve", "--workflow", str(broken)],
                         capture_output=True, text=True, timeout=120,
                         env=child_env(flowyard_home), cwd=flowyard_home,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 1
    assert "workflow is invalid" in out.stderr and "no.such.tool" in out.stderr


def test_serve_list_prints_the_catalog(flowyard_home: Path) -> None:
    write_config(flowyard_home, 'tools = ["echo"]')
    folder = write_workflows(flowyard_home)
    out = subprocess.run([*CLI, "mcp", "serve", "--list", "--workflow", str(folder / "greet.yaml")],
                         capture_output=True, text=True, timeout=120,
                         env=child_env(flowyard_home), cwd=flowyard_home)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "echo: Return the given value unchanged."
    assert lines[2] == "greet: Greet someone, several times."
    assert '"required": ["who"]' in lines[3]


# ---------------------------------------------------------------------------- in process


def test_input_schema_maps_every_input_type() -> None:
    workflow = flowyard.Stack().load_workflow({
        "name": "types",
        "inputs": {"s": {"type": "string"}, "i": {"type": "integer", "default": 2},
                   "n": {"type": "number"}, "b": {"type": "boolean", "default": False},
                   "a": {"type": "array", "description": "items"}, "o": {"type": "object"},
                   "x": {"type": "any"}},
        "steps": [{"id": "e", "uses": "echo", "with": {"value": 1}}],
    })
    assert input_schema(workflow) == {
        "type": "object",
        "properties": {"s": {"type": "string"}, "i": {"type": "integer", "default": 2},
                       "n": {"type": "number"}, "b": {"type": "boolean", "default": False},
                       "a": {"type": "array", "description": "items"},
                       "o": {"type": "object"}, "x": {}},
        "required": ["s", "n", "a", "o", "x"],
        "additionalProperties": False,
    }


def test_settings_from_config_and_their_errors() -> None:
    settings = ServeSettings.from_config(Config({"mcp": {"serve": {
        "tools": ["echo"], "workflows": ["w.yaml"], "port": "9001", "token": "s3cret-token",
        "allow_remote": "true", "host": "0.0.0.0"}}}))
    assert settings == ServeSettings(tools=("echo",), workflows=("w.yaml",), port=9001,
                                     token="s3cret-token", allow_remote=True, host="0.0.0.0")
    assert "s3cret" not in repr(settings)
    assert ServeSettings.from_config(Config({})) == ServeSettings()
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in \[mcp.serve\]: tool "):
        ServeSettings.from_config(Config({"mcp": {"serve": {"tool": ["echo"]}}}))
    with pytest.raises(ConfigError, match=r"'mcp\.serve\.tools' must be a list"):
        ServeSettings.from_config(Config({"mcp": {"serve": {"tools": "echo"}}}))
    with pytest.raises(ConfigError, match=r"'mcp\.serve\.port' must be a TCP port"):
        ServeSettings.from_config(Config({"mcp": {"serve": {"port": 0}}}))


def test_allow_list_matches_names_and_patterns_and_is_empty_by_default() -> None:
    names = ["echo", "filesystem.read", "filesystem.write", "log", "sleep"]
    assert select_tools(names, []) == []
    assert select_tools(names, ["filesystem.*", "echo"]) == ["echo", "filesystem.read",
                                                             "filesystem.write"]
    assert select_tools(names, ["web.*"]) == []  # a pattern may match nothing (logged)
    with pytest.raises(ConfigError, match=r"no tool 'web.fetch' in this stack \(tools: echo,"):
        select_tools(names, ["web.fetch"])


def test_http_binding_beyond_loopback_needs_allow_remote_and_a_token() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")
    check_binding(ServeSettings(host="127.0.0.2"))
    with pytest.raises(ConfigError, match=r"refusing to bind 0\.0\.0\.0: .* --allow-remote"):
        check_binding(ServeSettings(host="0.0.0.0"))
    with pytest.raises(ConfigError, match="without a bearer token"):
        check_binding(ServeSettings(host="0.0.0.0", allow_remote=True))
    check_binding(ServeSettings(host="0.0.0.0", allow_remote=True, token="a-long-token"))


def test_serve_http_refuses_to_bind_beyond_loopback(flowyard_home: Path) -> None:
    write_config(flowyard_home)
    out = subprocess.run([*CLI, "mcp", "serve", "--http", "--host", "0.0.0.0", "--port", "1"],
                         capture_output=True, text=True, timeout=120,
                         env=child_env(flowyard_home), cwd=flowyard_home)
    assert out.returncode == 1
    assert "refusing to bind 0.0.0.0" in out.stderr


def test_redact_hides_every_secret_longest_first() -> None:
    assert redact("key sk-abcdef123 and sk-abc", ["sk-abc", "sk-abcdef123"][::-1]) == (
        "key *** and ***")


class Exploding(BaseTool):
    """A tool that fails in the ways the server must report."""

    name = "explode"
    description = "Fail."
    parameters = {"type": "object", "properties": {"how": {"type": "string"}},
                  "required": ["how"]}
    idempotent = True
    side_effects = ()

    async def run(self, arguments: dict[str, Any], context: Any) -> Any:
        how = arguments["how"]
        secret = os.environ["FLOWYARD_TEST_API_KEY"]
        if how == "tool":
            raise ToolError(f"upstream refused key {secret}", tool=self.name, retriable=True)
        if how == "bug":
            raise KeyError(f"internal detail {secret}")
        if how == "config":
            raise ToolError("the provider said: bad key conf-key-987654321", tool=self.name)
        return {"ok": True}


class ExplodingPlugin:
    """Registers :class:`Exploding`."""

    @flowyard.hookimpl
    def register_tools(self, register: Any) -> None:
        register("explode", Exploding())


@pytest.mark.anyio
async def test_tool_errors_are_is_error_results_without_secrets(
        flowyard_home: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("FLOWYARD_TEST_API_KEY", secret)
    stack = flowyard.Stack(plugins=[ExplodingPlugin()], config={
        "storage": {"url": "memory://"}, "providers": {"acme": {"api_key": "conf-key-987654321"}}})
    server = McpToolServer(stack, ServeSettings(tools=("explode",), token="bearer-secret-1"))
    async with stack, Client(server.lowlevel()) as client:
        failed = await client.call_tool("explode", {"how": "tool"})
        assert failed.is_error
        assert text_of(failed) == ("tool 'explode' failed: upstream refused key *** "
                                   "(retriable: the same call may succeed later)")
        bug = await client.call_tool("explode", {"how": "bug"})
        assert bug.is_error
        assert text_of(bug) == ("tool 'explode' failed with an unexpected KeyError; the "
                                "server's log has the details")
        assert secret not in text_of(bug)
        assert "internal detail" in caplog.text  # the details are in the log
        from_config = await client.call_tool("explode", {"how": "config"})
        assert text_of(from_config) == "tool 'explode' failed: the provider said: bad key ***"
        ok = await client.call_tool("explode", {"how": "fine"})
        assert ok.structured_content == {"ok": True}


@pytest.mark.anyio
async def test_workflow_tools_in_process(flowyard_home: Path) -> None:
    folder = write_workflows(flowyard_home)
    stack = flowyard.Stack(config={"storage": {"url": "memory://"}})
    server = McpToolServer(stack, ServeSettings(), workflows=[folder / "greet.yaml",
                                                              folder / "times_out.yaml"])
    async with stack, Client(server.lowlevel()) as client:
        greeted = await client.call_tool("greet", {"who": "Eve", "extra": [1]})
        assert greeted.structured_content == {"greeting": "hello Eve x1", "times": 1}
        failed = await client.call_tool("times_out", {})
        assert failed.is_error and "timed out after 0.05 s" in text_of(failed)
        run_id = text_of(failed).split("(run ")[1].split(")")[0]
        stored = await stack.storage.get_run(run_id)
        assert stored.status == "failed"  # the run is stored like any other


def test_two_tools_of_one_name_are_refused(flowyard_home: Path) -> None:
    folder = flowyard_home / "wf"
    folder.mkdir()
    (folder / "echo.yaml").write_text(
        "name: echo\nsteps:\n  - id: a\n    uses: echo\n    with: {value: 1}\n")
    stack = flowyard.Stack(config={"storage": {"url": "memory://"}})
    with pytest.raises(ConfigError, match="two served tools are named 'echo'"):
        McpToolServer(stack, ServeSettings(tools=("echo",)), workflows=[folder])
    spaced = flowyard_home / "spaced.yaml"
    spaced.write_text("name: two words\nsteps:\n  - id: a\n    uses: echo\n    with: {value: 1}\n")
    with pytest.raises(ConfigError, match="'two words' is not a valid MCP tool name"):
        McpToolServer(stack, ServeSettings(), workflows=[spaced])
    invalid = flowyard_home / "invalid.yaml"
    invalid.write_text("name: invalid\nsteps:\n  - id: a\n    uses: no.such\n")
    with pytest.raises(WorkflowValidationError, match=r"no\.such"):
        McpToolServer(stack, ServeSettings(), workflows=[invalid])
    with pytest.raises(ConfigError, match="no such file or folder"):
        McpToolServer(stack, ServeSettings(workflows=("missing.yaml",)))
