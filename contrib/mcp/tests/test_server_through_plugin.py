"""flowyard talking to flowyard: a stack uses the tools and workflows that `flowyard mcp serve`
serves, through this distribution's own client (`[mcp.servers.fy]`), in a workflow that mixes
them with a native tool."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import flowyard
import pytest

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

MIXED = """\
name: mixed
steps:
  - id: native
    uses: echo
    with: {value: "Ada"}
  - id: remote_workflow
    uses: fy.greet
    with: {who: "{{ steps.native.output }}"}
  - id: remote_tool
    uses: fy.echo
    with: {value: {greeting: "{{ steps.remote_workflow.output.greeting }}", n: 2}}
outputs:
  greeting: "{{ steps.remote_workflow.output.greeting }}"
  echoed: "{{ steps.remote_tool.output }}"
"""

CALLS_FAILING = """\
name: calls_failing
steps:
  - id: remote
    uses: fy.times_out
    with: {}
"""


def served_stack(home: Path) -> Any:
    """A stack whose MCP server `fy` is `flowyard mcp serve --tool echo` with two workflows."""
    (home / "greet.yaml").write_text(GREET)
    (home / "times_out.yaml").write_text(TIMES_OUT)
    # what the served side reads: its own flowyard.toml in its working directory
    (home / "flowyard.toml").write_text('[storage]\nurl = "memory://"\n')
    env = {name: os.environ[name] for name in ("FLOWYARD_DATA_DIR", "XDG_CONFIG_HOME",
                                               "XDG_DATA_HOME")}
    return flowyard.Stack(discover=True, config={
        "storage": {"url": "memory://"},
        "mcp": {"work_root": str(home), "servers": {"fy": {
            "command": sys.executable,
            "args": ["-c", "from flowyard.cli import main; main()", "mcp", "serve",
                     "--tool", "echo", "--workflow", "greet.yaml",
                     "--workflow", "times_out.yaml"],
            "env": env,
            "tools": ["echo", "greet", "times_out"],
            "timeout": 60,
        }}},
    })


@pytest.mark.anyio
async def test_a_workflow_mixes_native_and_served_tools(flowyard_home: Path) -> None:
    stack = served_stack(flowyard_home)
    async with stack:
        assert stack.tools.get("fy.greet").parameters == {
            "type": "object", "properties": {"who": {"type": "string"}},
            "required": ["who"], "additionalProperties": False}
        result = await stack.run(MIXED)
        assert result.ok, result.error
        assert result.outputs == {"greeting": "hello Ada",
                                  "echoed": {"greeting": "hello Ada", "n": 2}}

        failed = await stack.run(CALLS_FAILING)
        assert failed.status == "failed"
        assert "MCP tool 'fy.times_out' failed: workflow 'times_out' failed (run " in failed.error
        assert "timed out after 0.05 s" in failed.error
