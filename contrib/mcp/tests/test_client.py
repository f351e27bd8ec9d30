"""The MCP client against real MCP servers (the SDK's, in mcp_test_server.py): tools with
their schemas, resources and prompts through actions, reuse, restart after a crash or a hang,
isError results, workflows and agents, the sandbox and secrets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import flowyard
import pytest
from flowyard.testing import ToolContract
from flowyard_mcp.errors import (
    MCPCallError,
    MCPRequestError,
    MCPServerCrashedError,
    MCPStartError,
    MCPTimeoutError,
    MCPToolError,
)


def context(stack: Any) -> flowyard.ToolContext:
    return flowyard.ToolContext(stack=stack, run_id="", step_id="t", step_key="t")


# ------------------------------------------------------------------ contract


class TestMCPToolContract(ToolContract):
    @pytest.fixture
    def tool(self, flowyard_home: Path, make_stack: Any, stdio_server: Any) -> Any:
        stack = make_stack({"calc": stdio_server()})
        yield stack.tools.get("calc.add")
        import anyio

        anyio.run(stack.aclose)

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"a": 1, "b": 2}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"a": "one"}


class TestResourceReadContract(ToolContract):
    @pytest.fixture
    def tool(self, flowyard_home: Path, make_stack: Any, stdio_server: Any) -> Any:
        stack = make_stack({"calc": stdio_server(tools=["add"])})
        yield stack.tools.get("calc.resources.read")
        import anyio

        anyio.run(stack.aclose)

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"uri": "memo://greeting"}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"uri": 3}


# ------------------------------------------------------------------ tools


@pytest.mark.anyio
async def test_stdio_tools_are_registered_with_their_schemas_and_called(
        flowyard_home: Path, make_stack: Any, stdio_server: Any) -> None:
    stack = make_stack({"calc": stdio_server()})
    async with stack:
        names = [n for n in stack.tools.names() if n.startswith("calc.")]
        assert {"calc.add", "calc.echo_env", "calc.fail", "calc.hang", "calc.crash",
                "calc.resources.read", "calc.prompts.get"} <= set(names)
        add = stack.tools.get("calc.add")
        assert add.parameters["required"] == ["a", "b"]
        assert add.parameters["properties"]["a"]["type"] == "integer"
        assert add.description == "Add two integers."
        assert stack.tools.plugin_of("calc.add") == "mcp"
        assert await add.invoke({"a": 2, "b": 40}, context(stack)) == {"result": 42}
        with pytest.raises(flowyard.ToolInputError):
            await add.invoke({"a": 2}, context(stack))


@pytest.mark.anyio
async def test_http_server_with_headers(
        flowyard_home: Path, make_stack: Any, stdio_server: Any, http_server_url: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_TEST_TOKEN", "tok-http-1234")
    stack = make_stack({"web": {"url": http_server_url, "timeout": 10,
                                "headers": {"Authorization": "Bearer ${MCP_TEST_TOKEN}"}}})
    async with stack:
        add = stack.tools.get("web.add")
        assert await add.invoke({"a": 1, "b": 1}, context(stack)) == {"result": 2}
        read = stack.tools.get("web.resources.read")
        assert (await read.invoke({"uri": "memo://greeting"}, context(stack)))["text"] == \
            "hello from the memo"
        with pytest.raises(MCPCallError, match="refused: over http"):
            await stack.tools.get("web.fail").invoke({"reason": "over http"}, context(stack))


@pytest.mark.anyio
async def test_an_http_server_that_is_not_there_is_a_start_error(
        flowyard_home: Path, make_stack: Any) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    stack = make_stack({"gone": {"url": f"http://127.0.0.1:{port}/mcp", "tools": ["add"],
                                 "startup_timeout": 10}})
    async with stack:
        with pytest.raises(MCPStartError, match="cannot start MCP server 'gone'"):
            await stack.tools.get("gone.resources.list").invoke({}, context(stack))


@pytest.mark.anyio
async def test_declared_tools_start_the_server_lazily_and_reuse_it(
        flowyard_home: Path, make_stack: Any, stdio_server: Any) -> None:
    stack = make_stack({"calc": stdio_server(tools=["count", "add"])})
    async with stack:
        connection = stack.tools.get("calc.resources.list").connection
        assert connection.starts == 0  # registered without contacting the server
        count = stack.tools.get("calc.count")  # the first lookup lists the tools
        assert connection.starts == 1
        first = await count.invoke({}, context(stack))
        second = await count.invoke({}, context(stack))
        assert (first["calls"], second["calls"]) == (1, 2)
        assert first["pid"] == second["pid"]
        assert connection.starts == 1


@pytest.mark.anyio
async def test_a_declared_tool_the_server_lacks_is_an_error_at_lookup(
        flowyard_home: Path, make_stack: Any, stdio_server: Any) -> None:
    stack = make_stack({"calc": stdio_server(tools=["nope"])})
    async with stack:
        assert "calc.nope" in stack.tools
        with pytest.raises(MCPToolError, match="does not list the tool 'nope'"):
            stack.tools.get("calc.nope")


@pytest.mark.anyio
async def test_is_error_results_raise_a_tool_error(
        flowyard_home: Path, make_stack: Any, stdio_server: Any) -> None:
    stack = make_stack({"calc": stdio_server()})
    async with stack:
        with pytest.raises(MCPCallError, match="refused: no thanks") as caught:
            await stack.tools.get("calc.fail").invoke({"reason": "no thanks"}, context(stack))
        assert isinstance(caught.value, flowyard.ToolError)
        assert caught.value.retriable is False
        assert caught.value.content[0]["type"] == "text"


@pytest.mark.anyio
async def test_a_crash_mid_call_is_a_typed_error_and_the_next_call_restarts(
        flowyard_home: Path, make_stack: Any, stdio_server: Any) -> None:
    stack = make_stack({"calc": stdio_server()})
    async with stack:
        count = stack.tools.get("calc.count")
        pid = (await count.invoke({}, context(stack)))["pid"]
        with pytest.raises(MCPServerCrashedError) as caught:
            await stack.tools.get("calc.crash").invoke({}, context(stack))
        assert caught.value.retriable is True
        after = await count.invoke({}, context(stack))
        assert after["pid"] != pid and after["calls"] == 1
        assert count.connection.starts == 2


@pytest.mark.anyio
async def test_a_hung_server_times_out_and_is_restarted(
        flowyard_home: Path, make_stack: Any, stdio_server: Any) -> None:
    stack = make_stack({"calc": stdio_server(timeout=1)})
    async with stack:
        import anyio

        count = stack.tools.get("calc.count")
        pid = (await count.invoke({}, context(stack)))["pid"]
        started = anyio.current_time()
        with pytest.raises(MCPTimeoutError, match=r"did not answer tools/call hang within 1\.0 s"):
            await stack.tools.get("calc.hang").invoke({}, context(stack))
        assert anyio.current_time() - started < 5
        assert (await count.invoke({}, context(stack)))["pid"] != pid


@pytest.mark.anyio
async def test_a_step_timeout_cancels_a_hung_call_and_the_next_run_restarts_the_server(
        flowyard_home: Path, make_stack: Any, stdio_server: Any) -> None:
    stack = make_stack({"calc": stdio_server(timeout=60)})
    async with stack:
        import anyio

        started = anyio.current_time()
        result = await stack.run({"name": "hangs", "steps": [
            {"id": "h", "uses": "calc.hang", "timeout": 1}]})
        assert result.status == "failed"
        assert anyio.current_time() - started < 10
        assert "timed out after 1" in (result.error or "")
        again = await stack.run({"name": "adds", "steps": [
            {"id": "a", "uses": "calc.add", "with": {"a": 1, "b": 2}}],
            "outputs": {"sum": "${a.result}"}})
        assert again.status == "completed", again.error
        assert again.outputs == {"sum": 3}


@pytest.mark.anyio
async def test_an_unknown_command_is_a_start_error(
        flowyard_home: Path, make_stack: Any, stdio_server: Any) -> None:
    stack = make_stack({"gone": stdio_server(command="no-such-mcp-server-here",
                                             tools=["x"])})
    async with stack:
        with pytest.raises(MCPStartError, match="not found on flowyard's PATH"):
            await stack.tools.get("gone.resources.list").invoke({}, context(stack))


def test_a_server_that_cannot_be_listed_fails_the_plugin_with_a_hint(
        flowyard_home: Path, make_stack: Any, stdio_server: Any) -> None:
    stack = make_stack({"gone": stdio_server(command="no-such-mcp-server-here")})
    [status] = [s for s in stack.plugin_report if s.name == "mcp"]
    assert status.status == "failed"
    assert "declare them with tools = [...]" in str(status.error)


# ------------------------------------------------------------------ resources, prompts


@pytest.mark.anyio
async def test_resources_and_prompts_through_actions(
        flowyard_home: Path, make_stack: Any, stdio_server: Any) -> None:
    stack = make_stack({"calc": stdio_server(tools=["add"])})
    async with stack:
        ctx = context(stack)
        listed = await stack.tools.get("calc.resources.list").invoke({}, ctx)
        assert [r["uri"] for r in listed] == ["memo://greeting"]
        read = await stack.tools.get("calc.resources.read").invoke(
            {"uri": "memo://greeting"}, ctx)
        assert read["text"] == "hello from the memo"
        assert read["contents"][0]["mimeType"] == "text/plain"
        prompts = await stack.tools.get("calc.prompts.list").invoke({}, ctx)
        assert [p["name"] for p in prompts] == ["summarize"]
        prompt = await stack.tools.get("calc.prompts.get").invoke(
            {"name": "summarize", "arguments": {"text": "the report"}}, ctx)
        assert prompt["messages"] == [{"role": "user", "content": "Summarize: the report"}]
        assert prompt["text"] == "Summarize: the report"
        with pytest.raises(MCPRequestError):
            await stack.tools.get("calc.resources.read").invoke({"uri": "memo://nope"}, ctx)


# ------------------------------------------------------------------ workflows and agents


@pytest.mark.anyio
async def test_a_workflow_mixes_mcp_tools_with_native_ones(
        flowyard_home: Path, make_stack: Any, stdio_server: Any) -> None:
    stack = make_stack({"calc": stdio_server()})
    async with stack:
        result = await stack.run({"name": "mixed", "inputs": {"n": {"type": "integer"}},
                                  "steps": [
            {"id": "sum", "uses": "calc.add", "with": {"a": "${inputs.n}", "b": 1}},
            {"id": "say", "uses": "echo", "with": {"value": "sum is ${sum.result}"}},
            {"id": "twice", "uses": "calc.add",
             "with": {"a": "${sum.result}", "b": "${sum.result}"}}],
            "outputs": {"said": "${say}", "twice": "${twice.result}"}}, {"n": 4})
        assert result.status == "completed", result.error
        assert result.outputs["twice"] == 10
        assert result.outputs["said"] == "sum is 5"


@pytest.mark.anyio
async def test_validation_knows_mcp_tool_names_and_schemas(
        flowyard_home: Path, make_stack: Any, stdio_server: Any) -> None:
    stack = make_stack({"calc": stdio_server()})
    async with stack:
        with pytest.raises(flowyard.WorkflowValidationError) as caught:
            stack.load_workflow({"name": "bad", "steps": [
                {"id": "x", "uses": "calc.ad", "with": {}},
                {"id": "y", "uses": "calc.add", "with": {"a": "one", "b": 2}}]})
        text = str(caught.value)
        assert "calc.ad" in text and "calc.add" in text


@pytest.mark.anyio
async def test_an_agent_on_the_fake_provider_calls_an_mcp_tool(
        flowyard_home: Path, make_stack: Any, stdio_server: Any) -> None:
    stack = make_stack({"calc": stdio_server()})
    async with stack:
        fake = stack.providers.get("fake")
        fake.add(flowyard.ToolCall(id="c1", name="calc.add", arguments={"a": 20, "b": 22}),
                 "the answer is 42")
        result = await stack.run({"name": "agentic", "steps": [
            {"id": "helper", "uses": "agent", "with": {
                "model": "fake/echo", "prompt": "add 20 and 22", "tools": ["calc.add", "echo"]}}],
            "outputs": {"answer": "${helper}"}})
        assert result.status == "completed", result.error
        assert "42" in str(result.outputs["answer"])
        tool_messages = [m for m in fake.requests[-1].messages if m.role == "tool"]
        assert tool_messages and "42" in tool_messages[0].text
        assert {t.name for t in fake.requests[0].tools} == {"calc.add", "echo"}


# ------------------------------------------------------------------ lifecycle


@pytest.mark.anyio
async def test_the_stack_close_stops_the_server(
        flowyard_home: Path, make_stack: Any, stdio_server: Any) -> None:
    stack = make_stack({"calc": stdio_server()})
    async with stack:
        pid = (await stack.tools.get("calc.count").invoke({}, context(stack)))["pid"]
        os.kill(pid, 0)  # alive
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(pid, 0)
            import time

            time.sleep(0.1)
    # a stack used again after its close starts the server afresh
    async with stack:
        again = await stack.tools.get("calc.count").invoke({}, context(stack))
        assert again["pid"] != pid and again["calls"] == 1


@pytest.mark.anyio
async def test_parallel_calls_share_one_server(flowyard_home: Path, make_stack: Any,
                                               stdio_server: Any) -> None:
    import anyio

    stack = make_stack({"calc": stdio_server(tools=["count"])})
    async with stack:
        count = stack.tools.get("calc.count")
        results: list[dict[str, int]] = []

        async def call() -> None:
            results.append(await count.invoke({}, context(stack)))

        async with anyio.create_task_group() as group:
            for _ in range(8):
                group.start_soon(call)
        assert sorted(r["calls"] for r in results) == list(range(1, 9))
        assert len({r["pid"] for r in results}) == 1
        assert count.connection.starts == 1


@pytest.mark.anyio
async def test_a_server_that_never_initializes_is_a_start_error_within_startup_timeout(
        flowyard_home: Path, make_stack: Any, stdio_server: Any) -> None:
    import anyio

    silent = stdio_server(args=["-c", "import time; time.sleep(300)"], tools=["add"],
                          startup_timeout=1)
    stack = make_stack({"silent": silent})
    async with stack:
        started = anyio.current_time()
        with pytest.raises(MCPStartError, match=r"no answer within startup_timeout = 1\.0 s"):
            await stack.tools.get("silent.resources.list").invoke({}, context(stack))
        assert anyio.current_time() - started < 8


@pytest.mark.anyio
async def test_a_server_killed_between_calls_is_restarted_by_the_next_call(
        flowyard_home: Path, make_stack: Any, stdio_server: Any) -> None:
    import signal

    import anyio

    stack = make_stack({"calc": stdio_server(tools=["count"])})
    async with stack:
        count = stack.tools.get("calc.count")
        pid = (await count.invoke({}, context(stack)))["pid"]
        os.kill(pid, signal.SIGKILL)
        await anyio.sleep(1.2)  # idle for more than 1 s: the next call pings it first
        after = await count.invoke({}, context(stack))
        assert after["pid"] != pid and after["calls"] == 1
