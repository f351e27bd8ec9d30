"""Tool invocation shared by steps and agents: every call emits a ``tool.call`` event."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from flowyard.context import ToolContext

__all__ = ["invoke_tool"]


async def invoke_tool(ctx: ToolContext, tool: Any, arguments: Mapping[str, Any]) -> Any:
    """Call ``tool.invoke(arguments, ctx)`` and emit a ``tool.call`` event.

    The event's data: ``tool`` (name), ``idempotent``, ``side_effects``, ``duration_s``
    (seconds), ``ok`` and ``error`` (message, None when ok), plus ``agent`` when an agent
    made the call. Cancellation emits nothing and propagates.

    Raises:
        whatever the tool raises (``ToolInputError`` for bad arguments, ``ToolError``...).
    """
    started = time.perf_counter()
    try:
        result = await tool.invoke(arguments, ctx)
    except Exception as exc:
        ctx.emit("tool.call", tool=tool.name, idempotent=bool(tool.idempotent),
                 side_effects=list(tool.side_effects),
                 duration_s=round(time.perf_counter() - started, 6), ok=False,
                 error=f"{type(exc).__name__}: {exc}", agent=ctx.agent)
        raise
    ctx.emit("tool.call", tool=tool.name, idempotent=bool(tool.idempotent),
             side_effects=list(tool.side_effects),
             duration_s=round(time.perf_counter() - started, 6), ok=True, error=None,
             agent=ctx.agent)
    return result
