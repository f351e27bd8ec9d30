"""Tool invocation shared by steps and agents: every call emits a ``tool.call`` event."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from flowyard.audit import tool_resource
from flowyard.context import ToolContext
from flowyard.events import EventBus
from flowyard.guards import guard_set
from flowyard.models import Event
from flowyard.tools import BaseTool, validate_arguments

__all__ = ["invoke_tool"]

_BASE_INVOKE = BaseTool.invoke


async def invoke_tool(ctx: ToolContext, tool: Any, arguments: Mapping[str, Any], *,
                      validated: bool = False) -> Any:
    """Call ``tool.invoke(arguments, ctx)`` and emit a ``tool.call`` event.

    The arguments are checked against ``tool.parameters`` first (tools built on
    :class:`~flowyard.tools.BaseTool` check them in ``invoke`` themselves), unless
    ``validated``: the engine checked them already (what the workflow's validation did not
    check, see :func:`flowyard.tools.argument_checks`); a :class:`BaseTool` that keeps
    ``BaseTool.invoke`` then has its ``run`` called directly.

    The event's data: ``tool`` (name), ``idempotent``, ``side_effects``, ``duration_s``
    (seconds), ``ok`` and ``error`` (message, None when ok), plus ``agent`` when an agent
    made the call, and ``resource``: what the call acts on (a path, a redacted command line or
    URL; see :func:`flowyard.audit.tool_resource`; None when the arguments name none).
    Cancellation emits nothing and propagates.

    The stack's guards (:mod:`flowyard.guards`) see the arguments after the schema check and
    before the tool runs (stage ``tool``: they may deny or redact them), and the result
    before it is returned (stage ``tool_output``); with no guard this costs one lookup.

    Raises:
        GuardDenied: a guard denied the call or its result (a ``ToolError``; the
            ``tool.call`` event records it as the call's error).
        whatever the tool raises (``ToolInputError`` for bad arguments, ``ToolError``...).
    """
    guards = guard_set(ctx.stack)
    if guards is not None:
        return await _guarded(guards, ctx, tool, arguments, validated)
    started = time.perf_counter()
    try:
        if validated and isinstance(tool, BaseTool) and type(tool).invoke is _BASE_INVOKE:
            result = await tool.run(dict(arguments), ctx)
        else:
            if not validated and not isinstance(tool, BaseTool):  # BaseTool.invoke validates
                validate_arguments(tool.parameters or {}, arguments, tool=tool.name)
            result = await tool.invoke(arguments, ctx)
    except Exception as exc:
        _emit(ctx, tool, arguments, started, f"{type(exc).__name__}: {exc}")
        raise
    _emit(ctx, tool, arguments, started, None)
    return result


async def _guarded(guards: Any, ctx: ToolContext, tool: Any, arguments: Mapping[str, Any],
                   validated: bool) -> Any:
    """:func:`invoke_tool` through the guards (schema first, so guards see valid arguments)."""
    started = time.perf_counter()
    try:
        if not validated:
            validate_arguments(tool.parameters or {}, arguments, tool=tool.name)
        arguments = await guards.apply("tool", tool.name, dict(arguments), ctx, tool=tool)
        if isinstance(tool, BaseTool) and type(tool).invoke is _BASE_INVOKE:
            result = await tool.run(dict(arguments), ctx)
        else:
            result = await tool.invoke(arguments, ctx)
        if guards.has("tool_output"):
            result = await guards.apply("tool_output", tool.name, result, ctx, tool=tool)
    except Exception as exc:
        _emit(ctx, tool, arguments, started, f"{type(exc).__name__}: {exc}")
        raise
    _emit(ctx, tool, arguments, started, None)
    return result


def _emit(ctx: ToolContext, tool: Any, arguments: Mapping[str, Any], started: float,
          error: str | None) -> None:
    data = {"tool": tool.name, "idempotent": bool(tool.idempotent),
            "side_effects": list(tool.side_effects),
            "duration_s": round(time.perf_counter() - started, 6), "ok": error is None,
            "error": error, "agent": ctx.agent,
            "resource": tool_resource(tool.name, arguments)}
    events = ctx.stack.events
    if ctx.run_id and isinstance(events, EventBus):
        events.publish("tool.call", ctx.run_id, ctx.step_id, data)
    else:
        events.emit(Event(type="tool.call", run_id=ctx.run_id, step_id=ctx.step_id, data=data))
