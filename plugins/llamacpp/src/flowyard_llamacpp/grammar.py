"""GBNF grammars for constrained decoding: JSON-schema answers and tool calls.

The JSON Schema to GBNF conversion is llama-cpp-python's ``SchemaConverter`` (a port of
llama.cpp's ``json_schema_to_grammar``). A tool call is the JSON object
``{"name": "<tool>", "arguments": {...}}``; its schema is a ``oneOf`` over the tools, each
branch fixing ``name`` with ``const`` and ``arguments`` with the tool's parameter schema, so
the sampled output is always a call of a known tool with arguments of the right shape.

With ``tool_choice="auto"`` the language is ``call | answer``: the model either emits a tool
call (which starts with ``{``) or a plain-text answer whose first character is not ``{`` (or,
when a ``response_schema`` is also given, a JSON value of that schema). The first character
the model samples decides. The provider implements the plain-text case without a grammar
(prose is generated unconstrained and an output opening with ``{`` restarts under the call
grammar), which is the same language and much cheaper per token; :func:`tool_grammar` with
``"auto"`` builds the equivalent single grammar.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from flowyard.errors import BadRequestError
from flowyard.models import ToolSpec

__all__ = ["tool_call_schema", "schema_grammar", "tool_grammar", "TEXT_RULE"]

#: Free text that does not start with ``{`` (so it cannot be confused with a tool call).
TEXT_RULE = r"[^{\x00] [^\x00]*"


def tool_call_schema(tools: Sequence[ToolSpec]) -> dict[str, Any]:
    """Return the JSON Schema of one call of one of ``tools``.

    Returns:
        ``{"oneOf": [{"type": "object", "properties": {"name": {"const": tool},
        "arguments": <tool parameters>}, "required": ["name", "arguments"],
        "additionalProperties": false}, ...]}`` (no ``oneOf`` wrapper for a single tool).
    """
    branches = []
    for tool in tools:
        params = dict(tool.parameters) if tool.parameters else {"type": "object"}
        params.setdefault("type", "object")
        branches.append({
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": params},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        })
    return branches[0] if len(branches) == 1 else {"oneOf": branches}


def _converter() -> Any:
    from llama_cpp.llama_grammar import SchemaConverter

    return SchemaConverter(  # type: ignore[no-untyped-call]
        prop_order={"name": 0, "arguments": 1}, allow_fetch=False, dotall=False,
        raw_pattern=False)


def _visit(converter: Any, schema: dict[str, Any], name: str, what: str) -> None:
    try:
        resolved = converter.resolve_refs(schema, "request")
        converter.visit(resolved, name)
    except (ValueError, KeyError, TypeError, AssertionError, NotImplementedError) as exc:
        raise BadRequestError(
            f"{what} cannot be turned into a grammar: {type(exc).__name__}: {exc}; schema: "
            f"{json.dumps(schema)[:300]}", provider="local") from exc


def schema_grammar(schema: dict[str, Any]) -> str:
    """Return a GBNF grammar whose sentences are the JSON values satisfying ``schema``.

    Raises:
        BadRequestError: the schema cannot be converted (unsupported keyword, bad ``$ref``).
    """
    if not isinstance(schema, dict):
        raise BadRequestError(f"response_schema must be a JSON Schema object, got {schema!r}",
                              provider="local")
    converter = _converter()
    _visit(converter, schema, "", "response_schema")
    return str(converter.format_grammar())


def tool_grammar(tools: Sequence[ToolSpec], *, tool_choice: str,
                 response_schema: dict[str, Any] | None = None) -> str:
    """Return the GBNF grammar for a request with tools.

    Args:
        tools: the tools offered (already filtered to one when ``tool_choice`` names a tool).
        tool_choice: ``"auto"`` (a call or an answer) or anything else (a call is required).
        response_schema: with ``"auto"``, the schema a non-call answer must satisfy.

    Raises:
        BadRequestError: a tool's parameter schema (or the response schema) cannot be
            converted.
    """
    converter = _converter()
    _visit(converter, tool_call_schema(tools), "call", "tool parameters")
    if tool_choice != "auto":
        converter._add_rule("root", "call")
    elif response_schema is not None:
        _visit(converter, response_schema, "answer", "response_schema")
        converter._add_rule("root", "call | answer")
    else:
        converter._add_rule("text", TEXT_RULE)
        converter._add_rule("root", "call | text")
    return str(converter.format_grammar())
