"""The priority rule: a plugin replaces any built-in by name; agent and workflow are actions."""

from __future__ import annotations

from typing import Any

import pytest

from flowyard import hookimpl
from flowyard.errors import DuplicateNameError
from flowyard.registry import Registry
from flowyard.stack import Stack
from flowyard.tools import BaseTool


class LoudEcho(BaseTool):
    name = "echo"
    description = "Echo, louder."
    parameters = {"type": "object", "properties": {"value": {}}}

    async def run(self, arguments: dict[str, Any], context: Any) -> Any:
        return str(arguments.get("value")).upper()


class ReplacesEcho:
    @hookimpl
    def register_tools(self, register: Any, config: Any) -> None:
        register("echo", LoudEcho())


def test_higher_priority_replaces_and_ties_keep_the_first() -> None:
    reg: Registry[str] = Registry("thing")
    reg.add("a", "builtin", plugin="builtin", default_priority=-1)
    reg.add("a", "plugin", plugin="p")
    reg.add("a", "late", plugin="q")
    assert reg.get("a") == "plugin" and reg.plugin_of("a") == "p"
    assert [(d.kept, d.dropped) for d in reg.duplicates] == [("p", "builtin"), ("p", "q")]
    strict: Registry[str] = Registry("thing", strict=True)
    strict.add("a", "builtin", plugin="builtin", default_priority=-1)
    strict.add("a", "plugin", plugin="p")  # a replacement is deliberate, not an error
    with pytest.raises(DuplicateNameError, match="already registered by 'p'"):
        strict.add("a", "tie", plugin="q")


def test_a_plugin_replaces_a_builtin_action_by_name() -> None:
    stack = Stack([("loud", ReplacesEcho())], config={"storage": {"url": "memory://"}})
    assert stack.tools.plugin_of("echo") == "loud"
    result = stack.run_sync({"name": "w", "steps": [
        {"id": "e", "uses": "echo", "with": {"value": "hi"}}]})
    assert result.ok and result.steps["e"].output == "HI"


def test_agent_and_workflow_are_registered_actions_of_the_builtin_plugin() -> None:
    stack = Stack(config={"storage": {"url": "memory://"}})
    assert stack.tools.plugin_of("agent") == "builtin"
    assert stack.tools.plugin_of("workflow") == "builtin"
    bare = Stack(builtins=False, config={"storage": {"url": "memory://"}})
    assert "agent" not in bare.tools and "workflow" not in bare.tools
