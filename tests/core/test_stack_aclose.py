"""Stack.aclose closes built tools that hold resources (SupportsAclose), once per close,
lazy tools that were never built are left alone, and a second close is harmless."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flowyard
import pytest


class ClosingTool(flowyard.BaseTool):
    name = "closing.tool"
    description = "A tool that counts its closes."

    def __init__(self) -> None:
        self.closed = 0

    async def run(self, arguments: dict[str, Any], context: flowyard.ToolContext) -> Any:
        return None

    async def aclose(self) -> None:
        self.closed += 1


@pytest.mark.anyio
async def test_stack_aclose_closes_built_tools_with_aclose(flowyard_home: Path) -> None:
    built, lazy = ClosingTool(), ClosingTool()
    never_built: list[ClosingTool] = []

    class Plugin:
        @flowyard.hookimpl
        def register_tools(self, register: Any, config: Any) -> None:
            register("closing.tool", built)
            register("closing.lazy", factory=lambda: lazy)
            register("closing.never", factory=lambda: never_built.append(ClosingTool())
                     or never_built[-1])

    stack = flowyard.Stack(plugins=[("closing", Plugin())],
                           config={"storage": {"url": "memory://"}})
    async with stack:
        assert stack.tools.get("closing.lazy") is lazy
    assert (built.closed, lazy.closed) == (1, 1)
    assert never_built == []
    await stack.aclose()
    assert built.closed == 2  # safe to call twice: the tool's own aclose decides
