"""The human steps ``human.approve`` and ``human.input`` (see ``docs/workflows.md``, "Human
steps", and :mod:`flowyard.engine.human`).

Each looks up its step key's answer in the run record; without one it raises
:class:`~flowyard.workflow.WaitingForInput`, so the engine ends the run ``waiting``. When the
run is resumed after the answer, it returns the answer:

* ``human.approve`` -> ``{"approved": bool, "comment": str | None, "by": str, "at": float,
  "expired": bool}``;
* ``human.input`` -> ``{"value": <the answer>, "by": str, "at": float, "expired": bool}``.

``by`` is who answered (``"flowyard:timeout"`` when the deadline passed), ``at`` UNIX
seconds. With ``timeout_s``, once that many seconds passed since the step first waited, the
step takes ``default`` (when given) or fails with "no answer before the deadline".
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from flowyard.context import ToolContext
from flowyard.errors import ToolError, ToolInputError
from flowyard.tools import BaseTool
from flowyard.workflow import WaitingForInput

__all__ = ["HumanApproveAction", "HumanInputAction", "human_actions"]

_COMMON: dict[str, Any] = {
    "prompt": {"type": "string", "minLength": 1,
               "description": "what the human is asked"},
    "timeout_s": {"type": "number", "exclusiveMinimum": 0,
                  "description": "seconds to wait before the default outcome"},
}


class _HumanAction(BaseTool):
    kind = "input"
    idempotent = True
    side_effects = ()

    def _schema(self, arguments: Mapping[str, Any]) -> dict[str, Any] | None:
        raise NotImplementedError

    def _output(self, value: Any, answer: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Return the stored answer of this step key, or raise WaitingForInput.

        Raises:
            WaitingForInput: no answer yet (the run ends ``waiting``).
            ToolError: called outside a run, or the deadline passed without an answer and
                the step has no ``default``.
            ToolInputError: ``default`` does not match the answer's schema.
        """
        if not context.run_id:
            raise ToolError(f"{self.name} waits for a human answer and needs a run (it was "
                            "called outside a workflow run)", tool=self.name)
        key = context.step_key or context.step_id or ""
        # called by an agent: each tool call has its own answer (the agent keeps its
        # conversation with the request, see flowyard.agent)
        call_id = context.extras.get("tool_call_id") if context.agent else None
        if call_id:
            key = f"{key}/{call_id}"
        record = await context.stack.storage.get_run(context.run_id)
        human = record.metadata.get("human") or {}
        answer = (human.get("answers") or {}).get(key)
        has_default = "default" in arguments
        if answer is None:
            request = (human.get("waiting") or {}).get(key)
            if request is not None:
                deadline = request.get("deadline")
            else:
                timeout = arguments.get("timeout_s")
                deadline = time.time() + float(timeout) if timeout is not None else None
            if has_default:
                self._check_default(arguments)
            if deadline is None or time.time() < deadline:
                raise WaitingForInput(str(arguments["prompt"]), kind=self.kind,
                                      schema=self._schema(arguments), deadline=deadline,
                                      default=arguments.get("default"),
                                      has_default=has_default,
                                      key=key if call_id else None)
            # resumed after the deadline without an answer (and before any expiry sweep)
            answer = {"value": arguments.get("default"), "by": "flowyard:timeout",
                      "at": time.time(), "expired": True}
        if answer.get("expired") and not has_default:
            raise ToolError(f"step {key!r}: no answer before the deadline "
                            f"({arguments.get('timeout_s')} s) and no default", tool=self.name)
        return self._output(answer.get("value"), answer)

    def _check_default(self, arguments: Mapping[str, Any]) -> None:
        import jsonschema  # lazy: only for human steps with a default

        schema = self._schema(arguments)
        if schema is None:
            return
        value = arguments["default"]
        if self.kind == "approve":
            value = {"approved": value}
        errors = list(jsonschema.Draft202012Validator(schema).iter_errors(value))
        if errors:
            raise ToolInputError(f"{self.name}: default {arguments['default']!r} does not match "
                                 f"the answer's schema: {errors[0].message}", tool=self.name)


class HumanApproveAction(_HumanAction):
    """``human.approve``: wait until a human approves or rejects.

    Arguments: ``prompt`` (text), ``timeout_s`` (seconds, optional), ``default`` (true or
    false: the decision when the deadline passes). The answer is ``{"approved": bool,
    "comment": str}``; the step returns ``{"approved", "comment", "by", "at", "expired"}``.
    """

    name = "human.approve"
    description = "Wait for a human to approve or reject; returns {approved, comment, by}."
    parameters = {"type": "object",
                  "properties": {**_COMMON, "default": {
                      "type": "boolean",
                      "description": "the decision when the deadline passes"}},
                  "required": ["prompt"], "additionalProperties": False}
    kind = "approve"

    def _schema(self, arguments: Mapping[str, Any]) -> dict[str, Any] | None:
        from flowyard.engine.human import APPROVE_SCHEMA  # lazy: the engine's answer module

        return APPROVE_SCHEMA

    def _output(self, value: Any, answer: Mapping[str, Any]) -> Any:
        if answer.get("expired"):  # the default is a bare boolean
            value = {"approved": bool(value), "comment": "no answer before the deadline"}
        return {"approved": bool(value.get("approved")), "comment": value.get("comment"),
                "by": answer.get("by"), "at": answer.get("at"),
                "expired": bool(answer.get("expired"))}


class HumanInputAction(_HumanAction):
    """``human.input``: wait until a human gives a value.

    Arguments: ``prompt`` (text), ``schema`` (a JSON Schema the answer must match, optional),
    ``timeout_s`` (seconds, optional), ``default`` (the value when the deadline passes). The
    step returns ``{"value", "by", "at", "expired"}``.
    """

    name = "human.input"
    description = "Wait for a human to give a value (optionally matching a JSON Schema)."
    parameters = {"type": "object",
                  "properties": {**_COMMON,
                                 "schema": {"type": "object",
                                            "description": "JSON Schema of the answer"},
                                 "default": {"description": "the value when the deadline "
                                                            "passes"}},
                  "required": ["prompt"], "additionalProperties": False}

    def _schema(self, arguments: Mapping[str, Any]) -> dict[str, Any] | None:
        schema = arguments.get("schema")
        if schema is None:
            return None
        import jsonschema  # lazy: only for human steps with a schema

        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ToolInputError(f"human.input: schema is not a valid JSON Schema: "
                                 f"{exc.message}", tool=self.name) from None
        return dict(schema)

    def _output(self, value: Any, answer: Mapping[str, Any]) -> Any:
        return {"value": value, "by": answer.get("by"), "at": answer.get("at"),
                "expired": bool(answer.get("expired"))}


def human_actions() -> list[BaseTool]:
    """Return fresh instances of ``human.approve`` and ``human.input``."""
    return [HumanApproveAction(), HumanInputAction()]
