"""The exec plugin's sandbox rules for stdio servers (scrubbed environment, confined working
directory, optional bubblewrap), and secrets that never reach logs, events or errors."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import flowyard
import pytest
from flowyard_mcp.config import ServerConfig, parse_settings
from flowyard_mcp.errors import MCPServerCrashedError, MCPStartError
from flowyard_sandbox import bubblewrap_usable

CANARY = "canary-7f3a9c-do-not-log"


def context(stack: Any) -> flowyard.ToolContext:
    return flowyard.ToolContext(stack=stack, run_id="", step_id="t", step_key="t")


@pytest.mark.anyio
async def test_the_environment_is_scrubbed_to_the_allow_list_and_the_configured_env(
        flowyard_home: Path, make_stack: Any, stdio_server: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWYARD_MCP_OUTER_SECRET", "outer")
    monkeypatch.setenv("SHELL", "/bin/bash")
    monkeypatch.setenv("LANG", "C.UTF-8")
    stack = make_stack({"calc": stdio_server(env={"GIVEN": "yes"})})
    async with stack:
        echo = stack.tools.get("calc.echo_env")

        async def env(name: str) -> str:
            return (await echo.invoke({"name": name}, context(stack)))["result"]

        assert await env("FLOWYARD_MCP_OUTER_SECRET") == "<unset>"
        assert await env("SHELL") == "<unset>"  # the SDK would pass it; flowyard removes it
        assert await env("GIVEN") == "yes"
        assert await env("LANG") == "C.UTF-8"  # allow-listed
        assert await env("HOME") == os.path.realpath(flowyard_home)


@pytest.mark.anyio
async def test_the_working_directory_is_confined_to_the_work_root(
        flowyard_home: Path, make_stack: Any, stdio_server: Any) -> None:
    (flowyard_home / "data").mkdir()
    stack = make_stack({"inside": stdio_server(cwd="data", tools=["cwd"]),
                        "outside": stdio_server(cwd="../..", tools=["cwd"])})
    async with stack:
        cwd = await stack.tools.get("inside.cwd").invoke({}, context(stack))
        assert cwd["result"] == os.path.realpath(flowyard_home / "data")
        with pytest.raises(MCPStartError, match="outside the allowed root"):
            await stack.tools.get("outside.resources.list").invoke({}, context(stack))


@pytest.mark.anyio
async def test_bubblewrap_confines_the_server(flowyard_home: Path, make_stack: Any,
                                              stdio_server: Any) -> None:
    usable, why = bubblewrap_usable()
    if not usable:
        # scripts/system-deps.sh installs bubblewrap: a missing one is a failure, not a skip
        pytest.fail(f"bubblewrap is not usable here: {why}")
    server_dir = str(Path(__file__).parent)
    secret_file = flowyard_home.parent / "not-for-the-server.txt"
    secret_file.write_text("x")
    stack = make_stack({"boxed": stdio_server(sandbox="bubblewrap", readonly=[server_dir])})
    async with stack:
        ctx = context(stack)
        exists = stack.tools.get("boxed.exists")
        assert (await exists.invoke({"path": str(secret_file)}, ctx))["result"] is False
        assert (await exists.invoke({"path": server_dir}, ctx))["result"] is True
        cwd = await stack.tools.get("boxed.cwd").invoke({}, ctx)
        assert cwd["result"] == os.path.realpath(flowyard_home)
        cmdline = (await stack.tools.get("boxed.cmdline").invoke({}, ctx))["result"]
        assert "mcp_test_server.py stdio" in cmdline


def test_bubblewrap_refuses_when_unusable(flowyard_home: Path, make_stack: Any,
                                          stdio_server: Any,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("flowyard_sandbox._USABLE", {})
    monkeypatch.setenv("PATH", "/nonexistent")
    stack = make_stack({"boxed": stdio_server(sandbox="bubblewrap", tools=["add"])})
    import anyio

    async def call() -> None:
        async with stack:
            await stack.tools.get("boxed.resources.list").invoke({}, context(stack))

    with pytest.raises(MCPStartError, match="bubblewrap"):
        anyio.run(call)


@pytest.mark.anyio
async def test_a_secret_reaches_the_server_but_no_log_event_error_or_command_line(
        flowyard_home: Path, make_stack: Any, stdio_server: Any,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("MY_API_TOKEN", CANARY)
    stack = make_stack({"calc": stdio_server(env={"API_TOKEN": "${MY_API_TOKEN}"})})
    events: list[Any] = []
    stack.events.subscribe(events.append, name="canary-test")
    async with stack:
        ctx = context(stack)
        # the server has it...
        got = await stack.tools.get("calc.echo_env").invoke({"name": "API_TOKEN"}, ctx)
        assert got["result"] == CANARY
        # ...never on its command line...
        cmdline = (await stack.tools.get("calc.cmdline").invoke({}, ctx))["result"]
        assert CANARY not in cmdline
        # ...and a crash whose stderr prints it is reported redacted
        with pytest.raises(MCPServerCrashedError) as caught:
            await stack.tools.get("calc.crash").invoke({}, ctx)
        assert "API_TOKEN=***" in str(caught.value)
        # an SDK server printing it: the print lands on its stderr (the SDK keeps stdout for
        # the protocol), which flowyard keeps in a file, quoted only redacted after a crash
        said = await stack.tools.get("calc.babble").invoke({}, ctx)
        assert said == {"result": "said it"}
        result = await stack.run({"name": "crashes", "steps": [
            {"id": "boom", "uses": "calc.crash"}]})
        assert result.status == "failed"
        records = await stack.storage.list_events(result.run_id)
        assert records
    seen = [str(caught.value), repr(caught.value), result.error or "", repr(result),
            caplog.text, *(repr(e) for e in events), *(repr(r) for r in records),
            repr(parse_settings(stack.config).servers["calc"])]
    out, err = capfd.readouterr()
    seen += [out, err]
    assert "API_TOKEN=***" in (result.error or "")
    for text in seen:
        assert CANARY not in text


def test_configuration_errors_name_the_key(flowyard_home: Path) -> None:
    def settings(servers: dict[str, Any]) -> Any:
        return parse_settings(flowyard.Config.load(overrides={"mcp": {"servers": servers}}))

    with pytest.raises(flowyard.ConfigError, match="exactly one of command"):
        settings({"x": {"command": "a", "url": "http://h/mcp"}})
    with pytest.raises(flowyard.ConfigError, match=r"unknown key\(s\) \['headers'\]"):
        settings({"x": {"command": "a", "headers": {}}})
    with pytest.raises(flowyard.ConfigError, match="sandbox must be one of"):
        settings({"x": {"command": "a", "sandbox": "maybe"}})
    with pytest.raises(flowyard.ConfigError, match="server name"):
        settings({"x.y": {"command": "a"}})
    with pytest.raises(flowyard.ConfigError, match="timeout must be a positive"):
        settings({"x": {"url": "http://h/mcp", "timeout": 0}})
    config = settings({"x": {"url": "http://h/mcp", "headers": {"A": f"Bearer {CANARY}"}}})
    assert isinstance(config.servers["x"], ServerConfig)
    assert CANARY not in repr(config.servers["x"])


@pytest.mark.anyio
async def test_an_unset_reference_is_a_start_error_naming_the_variable(
        flowyard_home: Path, make_stack: Any, stdio_server: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    stack = make_stack({"calc": stdio_server(env={"T": "${NOT_SET_ANYWHERE}"}, tools=["add"])})
    async with stack:
        with pytest.raises(MCPStartError, match=r"\$\{NOT_SET_ANYWHERE\}, which is not set"):
            await stack.tools.get("calc.add").invoke({"a": 1, "b": 2}, context(stack))


@pytest.mark.anyio
async def test_a_secret_a_server_writes_on_the_protocol_stream_is_redacted_from_sdk_logs(
        flowyard_home: Path, make_stack: Any, stdio_server: Any,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("MY_API_TOKEN", CANARY)
    server = stdio_server()["args"][0]
    # not an SDK server at first: it writes the token on stdout, then becomes one
    noisy = ("import os, sys; print('API_TOKEN=' + os.environ['API_TOKEN'], flush=True); "
             "os.execv(sys.executable, [sys.executable, sys.argv[1], 'stdio'])")
    stack = make_stack({"noisy": stdio_server(args=["-c", noisy, server],
                                              env={"API_TOKEN": "${MY_API_TOKEN}"})})
    async with stack:
        result = await stack.tools.get("noisy.add").invoke({"a": 1, "b": 2}, context(stack))
        assert result == {"result": 3}
    logged = caplog.text + "".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "API_TOKEN=***" in logged  # the SDK did log the line, redacted
    assert CANARY not in logged
