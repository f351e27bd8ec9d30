"""The ``agent`` and ``workflow`` actions, registered as tools by the ``builtin`` plugin.

``agent``     run an agent loop (:mod:`flowyard.agent`) on ``with.prompt``; returns
              ``AgentResult.to_output()``
``workflow``  run a sub-workflow (``with.workflow``: a path, relative to the calling
              workflow's file, or an inline definition) with ``with.inputs``; returns its
              outputs

They are ordinary registered actions: a plugin replaces either one by registering the same
name with a higher ``default_priority`` (see :class:`flowyard.registry.Registry`), and
disabling the ``builtin`` plugin removes them.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flowyard.agent import run_agent_step
from flowyard.context import ToolContext
from flowyard.engine import load_workflow, run_workflow
from flowyard.engine.validate import unknown_message
from flowyard.errors import WorkflowError, WorkflowValidationError
from flowyard.interfaces import Services
from flowyard.llm.typed import output_type_of
from flowyard.templating import has_template
from flowyard.tools import BaseTool
from flowyard.workflow import Step, Workflow

__all__ = ["AgentAction", "WorkflowAction", "AGENT_KEYS"]

#: The arguments an ``agent`` step accepts in ``with``.
AGENT_KEYS = {"model", "instructions", "prompt", "tools", "max_turns", "budget_usd", "mode",
              "memory", "temperature", "max_tokens", "requirements", "output_schema",
              "max_validation_retries", "cache"}

Issue = Callable[[str, str], None]


class AgentAction(BaseTool):
    """Run an agent loop: model calls and tool calls until a final answer.

    Arguments (``with``): ``prompt`` (required), ``model``, ``instructions``, ``tools`` (a list
    of tool names), ``max_turns`` (>= 1, default 10), ``budget_usd`` (US dollars), ``mode``
    (``native`` or ``react``), ``memory``, ``temperature``, ``max_tokens``, ``requirements``,
    ``output_schema`` (a JSON schema the final answer must match; the output then has
    ``output``, its JSON value), ``max_validation_retries`` (default 2) and ``cache`` (the
    response cache for the agent's model calls; needs ``temperature: 0``).
    Checked by :meth:`validate_step` when the workflow is validated.
    """

    name = "agent"
    description = "Run an agent loop (model and tool calls) until a final answer."
    parameters = {"type": "object"}
    idempotent = False
    side_effects = ("llm",)

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Return the agent's ``AgentResult.to_output()`` (answer, turns, tool calls).

        Raises:
            AgentTurnLimitError: no final answer within ``max_turns``.
            BudgetExceeded: a budget does not cover the next model call.
            ToolError: ``prompt`` is not a string.
        """
        return await run_agent_step(context, arguments)

    def validate_step(self, step: Step, *, workflow: Workflow, services: Services,
                      issue: Issue, base: str) -> None:
        """Report unknown arguments, a missing prompt, unknown tools and bad limits."""
        params = step.with_
        for key in params:
            if key not in AGENT_KEYS:
                close = difflib.get_close_matches(key, sorted(AGENT_KEYS), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                issue(f"unknown agent argument {key!r}{hint} (allowed: "
                      f"{', '.join(sorted(AGENT_KEYS))})", f"{base}.with.{key}")
        if "prompt" not in params:
            issue("an agent step needs with.prompt", f"{base}.with")
        mode = params.get("mode", "native")
        if mode not in ("native", "react"):
            issue(f"agent mode must be 'native' or 'react', got {mode!r}", f"{base}.with.mode")
        tools = params.get("tools", [])
        if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
            issue("agent tools must be a list of tool names", f"{base}.with.tools")
        else:
            for j, name in enumerate(tools):
                if name not in services.tools:
                    issue(unknown_message("tool", name, set(services.tools.names()),
                                          f"in the tools of agent {step.id!r}"),
                          f"{base}.with.tools[{j}]")
        max_turns = params.get("max_turns", 10)
        if isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1:
            issue("agent max_turns must be an integer >= 1", f"{base}.with.max_turns")
        schema = params.get("output_schema")
        if schema is not None and not (isinstance(schema, str) and has_template(schema)):
            try:
                output_type_of(schema if isinstance(schema, Mapping) else None)
            except TypeError as exc:
                issue(f"agent output_schema must be a JSON schema (a mapping): {exc}",
                      f"{base}.with.output_schema")
        budget = params.get("budget_usd")
        if budget is not None and (isinstance(budget, bool)
                                   or not isinstance(budget, (int, float)) or budget < 0):
            issue("agent budget_usd must be a number >= 0 (US dollars)",
                  f"{base}.with.budget_usd")
        memory = params.get("memory")
        if memory is not None:
            if not isinstance(memory, Mapping):
                issue("agent memory must be a mapping (namespace, top_k, store_answer)",
                      f"{base}.with.memory")
            else:
                extra = set(memory) - {"namespace", "top_k", "store_answer", "store"}
                if extra:
                    issue(f"unknown agent memory keys: {', '.join(sorted(extra))} (allowed: "
                          "namespace, top_k, store_answer, store)", f"{base}.with.memory")
                if not services.memory_stores.names():
                    issue("agent memory needs a memory store, and none is registered "
                          "(install flowyard-chroma or another memory plugin)",
                          f"{base}.with.memory")


class WorkflowAction(BaseTool):
    """Run a sub-workflow as one step; its run is linked to the parent run and step.

    Arguments (``with``): ``workflow`` (a path, relative to the calling workflow's file, or an
    inline definition; left unrendered: the sub-workflow renders its own templates) and
    ``inputs`` (a mapping). The sub-run's tokens and cost count into the calling step, and
    the parent step's budgets apply to it.
    """

    name = "workflow"
    description = "Run a sub-workflow and return its outputs."
    parameters = {"type": "object"}
    idempotent = False
    side_effects = ("workflow",)
    raw_arguments = ("workflow",)

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Return the sub-workflow's outputs (a dict).

        Raises:
            WorkflowValidationError: the sub-workflow is invalid.
            WorkflowError: the sub-run did not complete (its status and error are named).
        """
        target = arguments.get("workflow")
        if isinstance(target, str):
            target = _sub_path(context.workflow_source, target)
        services = context.services
        child = load_workflow(services, target)
        result = await run_workflow(services, child, dict(arguments.get("inputs") or {}),
                                    parent_run_id=context.run_id,
                                    parent_step=context.step_key, parent_budget=context.budget,
                                    metadata=({"actor": context.actor}
                                              if context.actor is not None else None))
        context.add_usage(result.input_tokens, result.output_tokens, result.cost_usd)
        if not result.ok:
            raise WorkflowError(f"sub-workflow {child.name!r} (run {result.run_id}) "
                                f"{result.status}: {result.error}")
        return result.outputs

    def validate_step(self, step: Step, *, workflow: Workflow, services: Services,
                      issue: Issue, base: str) -> None:
        """Report a missing or unreadable ``with.workflow``, an invalid inline definition
        and unknown arguments.
        """
        target = step.with_.get("workflow")
        if target is None:
            issue("a 'workflow' step needs with.workflow (a path or an inline definition)",
                  f"{base}.with")
        elif isinstance(target, str) and not has_template(target):
            path = _sub_path(workflow.source, target)
            if not path.is_file():
                issue(f"sub-workflow file {target!r} not found (looked at {path})",
                      f"{base}.with.workflow")
        elif isinstance(target, Mapping):
            try:
                load_workflow(services, target)
            except WorkflowValidationError as exc:
                for sub in exc.issues:
                    # located at the nested field itself when the outer file recorded it
                    # (the native loader records every path of the inline definition)
                    issue(f"in the inline sub-workflow: {sub.message}"
                          + (f" ({sub.path})" if sub.path else ""),
                          f"{base}.with.workflow.{sub.path}" if sub.path
                          else f"{base}.with.workflow")
        elif not isinstance(target, str):
            issue("with.workflow must be a path or a mapping", f"{base}.with.workflow")
        extra = set(step.with_) - {"workflow", "inputs"}
        if extra:
            issue(f"unknown arguments for a 'workflow' step: {', '.join(sorted(extra))} "
                  "(allowed: workflow, inputs)", f"{base}.with")


def _sub_path(source: str | None, target: str) -> Path:
    path = Path(target)
    if not path.is_absolute() and source:
        path = Path(source).parent / path
    return path
