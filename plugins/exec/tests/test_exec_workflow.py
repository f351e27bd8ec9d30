"""shell.run and python.run as steps of a real workflow run (engine, events, templating)."""

from __future__ import annotations

from typing import Any

import flowyard_exec.plugin
import pytest
from flowyard.stack import Stack

pytestmark = pytest.mark.anyio

WORKFLOW = {
    "name": "exec-pipeline",
    "inputs": {"numbers": {"type": "array"}},
    "steps": [
        {"id": "stats", "uses": "python.run",
         "with": {"code": "xs = context['numbers']\n"
                          "result = {'total': sum(xs), 'largest': max(xs)}",
                  "context": {"numbers": "${inputs.numbers}"}}},
        {"id": "report", "uses": "shell.run",
         "with": {"command": ["printf", "total=%s largest=%s",
                              "${stats.result.total}", "${stats.result.largest}"],
                  "isolation": "required", "check": True}},
    ],
    "outputs": {"line": "${report.stdout}", "isolation": "${report.isolation}"},
}


async def test_steps_run_sandboxed_and_emit_tool_call_events(flowyard_home: Any) -> None:
    stack = Stack(plugins=[("exec", flowyard_exec.plugin)],
                  config={"storage": {"url": "memory://"}})
    events: list[Any] = []
    stack.events.subscribe(lambda event: events.append(event), name="test")
    async with stack:
        result = await stack.run(WORKFLOW, {"numbers": [3, 9, 4]})
    assert result.status == "completed", result.error
    assert result.outputs == {"line": "total=16 largest=9", "isolation": "bubblewrap"}
    calls = [e.data for e in events if e.type == "tool.call"]
    assert [c["tool"] for c in calls] == ["python.run", "shell.run"]
    assert all(c["ok"] and "process" in c["side_effects"] for c in calls)


async def test_a_refused_step_fails_the_run_with_the_reason(flowyard_home: Any) -> None:
    stack = Stack(plugins=[("exec", flowyard_exec.plugin)],
                  config={"storage": {"url": "memory://"},
                          # no bubblewrap; run the harmless first step as the current user
                          "exec": {"bwrap": "/nonexistent/bwrap", "user": "",
                                   "isolation": "landlock"}})
    async with stack:
        result = await stack.run(WORKFLOW, {"numbers": [1]})
    assert result.status == "failed"
    assert result.steps["stats"].status == "completed"
    assert result.steps["report"].status == "failed"
    assert "isolation is required but unavailable" in (result.steps["report"].error or "")
