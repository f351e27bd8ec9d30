"""Built-in workflow actions, registered as tools by the ``builtin`` plugin.

``echo``      return ``value`` unchanged (wiring, constants, tests)
``log``       record a log line for the run (``message``, ``level``); returns the message
``sleep``     wait ``seconds``; returns the seconds waited
``llm.chat``  one LLM call through the stack's gateway; returns the answer text, or the parsed
              JSON value when ``response_schema`` is given; streams the answer as
              ``step.delta`` events while a live display listens
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import aclosing
from typing import Any

import anyio

from flowyard.context import ToolContext
from flowyard.errors import ToolError
from flowyard.interfaces import RouteRequest
from flowyard.models import Message
from flowyard.tools import BaseTool

__all__ = ["EchoAction", "LogAction", "SleepAction", "ChatAction", "builtin_actions"]


class EchoAction(BaseTool):
    """Return ``value`` unchanged."""

    name = "echo"
    description = "Return the given value unchanged."
    parameters = {"type": "object", "properties": {"value": {"description": "any value"}},
                  "additionalProperties": False}
    idempotent = True
    side_effects = ()

    async def invoke(self, arguments: Mapping[str, Any], context: ToolContext) -> Any:
        """Return ``arguments["value"]`` (None when absent)."""
        if len(arguments) > 1 or (arguments and "value" not in arguments):
            return await super().invoke(arguments, context)
        return arguments.get("value")

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Return ``arguments["value"]``."""
        return arguments.get("value")


class LogAction(BaseTool):
    """Record a log line for the run (a ``log`` event)."""

    name = "log"
    description = "Record a log line for the run."
    parameters = {
        "type": "object",
        "properties": {
            "message": {"type": "string", "description": "the text to log"},
            "level": {"enum": ["debug", "info", "warning", "error"], "default": "info"},
        },
        "required": ["message"],
        "additionalProperties": False,
    }
    idempotent = True
    side_effects = ()

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Emit the log event; return the message."""
        context.log(arguments["message"], arguments.get("level", "info"))
        return arguments["message"]


class SleepAction(BaseTool):
    """Wait a number of seconds."""

    name = "sleep"
    description = "Wait a number of seconds."
    parameters = {
        "type": "object",
        "properties": {"seconds": {"type": "number", "minimum": 0, "maximum": 86400}},
        "required": ["seconds"],
        "additionalProperties": False,
    }
    idempotent = True
    side_effects = ()

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Sleep; return the seconds slept."""
        await anyio.sleep(arguments["seconds"])
        return arguments["seconds"]


_MESSAGE_SCHEMA = {
    "type": "object",
    "properties": {
        "role": {"enum": ["system", "user", "assistant"]},
        "content": {"type": "string"},
    },
    "required": ["role", "content"],
}


class ChatAction(BaseTool):
    """One LLM call through ``stack.llm`` (so budgets, routing, rate limits and cost apply).

    Arguments: ``prompt`` (a user message) and/or ``messages`` (``[{role, content}]``),
    ``system``, ``model`` (``provider/model``; default: the stack's default model),
    ``temperature``, ``top_p``, ``max_tokens``, ``stop``, ``seed``, ``response_schema`` (JSON
    Schema: the answer is parsed and checked), ``requirements`` (``capabilities``,
    ``min_context``, ``max_input_price``, ``candidates``: a router picks the model; the model
    defaults to ``auto``), ``stream``.

    Streaming: with ``stream: true`` the answer is generated through ``stack.llm.stream`` and
    each piece is reported with :meth:`~flowyard.context.ToolContext.stream_text` (throttled
    ``step.delta`` events, never stored); ``false`` makes one ``stack.llm.chat`` call. The
    default streams exactly when a live display listens (``flowyard run`` in a terminal;
    ``stack.events.wants_transient()``) and no ``response_schema`` is given, so runs without
    a display (``--json``, pipes, library calls) make the same call as always. The output is
    the complete answer either way.

    Returns the answer text, or the parsed JSON value with ``response_schema``.
    """

    name = "llm.chat"
    description = "Ask a language model; returns the answer text (or parsed JSON)."
    parameters = {
        "type": "object",
        "properties": {
            "prompt": {"type": "string"},
            "messages": {"type": "array", "items": _MESSAGE_SCHEMA},
            "system": {"type": "string"},
            "model": {"type": "string"},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "minimum": 0, "maximum": 1},
            "max_tokens": {"type": "integer", "minimum": 1},
            "stop": {"type": "array", "items": {"type": "string"}},
            "seed": {"type": "integer"},
            "response_schema": {"type": "object"},
            "stream": {"type": "boolean",
                       "description": "stream the answer as step.delta events (default: "
                                      "while a live display listens)"},
            "requirements": {
                "type": "object",
                "properties": {
                    "capabilities": {"type": "array", "items": {"type": "string"}},
                    "min_context": {"type": "integer", "minimum": 1},
                    "max_input_price": {"type": "number", "minimum": 0},
                    "candidates": {"type": "array", "items": {"type": "string"}},
                },
                "additionalProperties": False,
            },
        },
        "anyOf": [{"required": ["prompt"]}, {"required": ["messages"]}],
        "additionalProperties": False,
    }
    idempotent = False
    side_effects = ("network",)

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Call the model; return text or parsed JSON.

        Raises:
            ToolError: the answer is not valid JSON / does not match ``response_schema``
                (retriable: another sample may succeed).
            ProviderError, BudgetExceeded: from the gateway.
        """
        messages: list[Message] = []
        if arguments.get("system"):
            messages.append(Message.system(arguments["system"]))
        for m in arguments.get("messages", []):
            messages.append(Message(role=m["role"], content=m["content"]))
        if arguments.get("prompt") is not None:
            messages.append(Message.user(arguments["prompt"]))
        params: dict[str, Any] = {k: arguments[k] for k in
                                  ("temperature", "top_p", "max_tokens", "stop", "seed",
                                   "response_schema") if k in arguments}
        model = arguments.get("model")
        if arguments.get("requirements"):
            req = arguments["requirements"]
            params["route"] = RouteRequest(
                capabilities=req.get("capabilities", ()),
                min_context=req.get("min_context"),
                max_input_price=req.get("max_input_price"),
                candidates=req.get("candidates", ()),
                estimated_input_tokens=sum(len(m.text) for m in messages) // 4,
            )
            model = model or "auto"
        schema = arguments.get("response_schema")
        stream = arguments.get("stream")
        if stream is None:
            stream = schema is None and context.stack.events.wants_transient()
        if stream:
            text = await self._stream(context, messages, model, params)
        else:
            response = await context.stack.llm.chat(messages, model=model, context=context,
                                                    **params)
            text = response.text
        if schema is None:
            return text
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ToolError(f"llm.chat: the answer is not valid JSON ({exc}): "
                            f"{text[:200]!r}", tool=self.name, retriable=True) from None
        import jsonschema

        errors = list(jsonschema.Draft202012Validator(schema).iter_errors(value))
        if errors:
            raise ToolError(f"llm.chat: the answer does not match response_schema: "
                            f"{errors[0].message}", tool=self.name, retriable=True)
        return value

    @staticmethod
    async def _stream(context: ToolContext, messages: list[Any], model: str | None,
                      params: dict[str, Any]) -> str:
        """Stream the answer through ``stack.llm.stream``, reporting each piece with
        ``context.stream_text``; return the whole text (the concatenated deltas).

        Raises:
            ProviderError, BudgetExceeded: from the gateway (the text reported so far is
                flushed first).
        """
        if context.idempotency_key and "idempotency_key" not in params:
            params = {**params, "idempotency_key": context.idempotency_key}
        parts: list[str] = []
        try:
            async with aclosing(context.stack.llm.stream(messages, model=model,
                                                         context=context, **params)) as chunks:
                async for chunk in chunks:
                    if chunk.delta:
                        parts.append(chunk.delta)
                        context.stream_text(chunk.delta)
        finally:
            context.stream_text("", final=True)
        return "".join(parts)


def builtin_actions() -> list[BaseTool]:
    """Return fresh instances of every built-in action."""
    return [EchoAction(), LogAction(), SleepAction(), ChatAction()]
