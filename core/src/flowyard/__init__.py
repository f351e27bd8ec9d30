"""flowyard: orchestrate LLM agents and workflows with plugins.

The top-level names are imported lazily so that ``import flowyard`` (and the CLI) stay fast.

Main entry points:

- :class:`flowyard.Stack` — plugins plus configuration; ``Stack.default()`` loads installed
  plugins; ``await stack.run(workflow, inputs)`` runs a workflow.
- :data:`flowyard.hookimpl` — the marker for plugin hook implementations.
- :func:`flowyard.tool` — turn a function into a tool.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowyard.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["BaseTool", "Config", "RunResult", "Stack", "ToolContext", "Workflow",
           "WorkflowBuilder", "__version__", "hookimpl", "tool"]

_LAZY = {
    "Stack": ("flowyard.stack", "Stack"),
    "tool": ("flowyard.tools", "tool"),
    "Config": ("flowyard.config", "Config"),
    "ToolContext": ("flowyard.context", "ToolContext"),
    "BaseTool": ("flowyard.tools", "BaseTool"),
    "Workflow": ("flowyard.workflow", "Workflow"),
    "WorkflowBuilder": ("flowyard.workflow", "WorkflowBuilder"),
    "RunResult": ("flowyard.workflow", "RunResult"),
}

if TYPE_CHECKING:
    from flowyard.config import Config
    from flowyard.context import ToolContext
    from flowyard.stack import Stack
    from flowyard.tools import BaseTool, tool
    from flowyard.workflow import RunResult, Workflow, WorkflowBuilder


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'flowyard' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value
