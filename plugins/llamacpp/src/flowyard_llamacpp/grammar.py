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
import math
from collections.abc import Sequence
from typing import Any

from flowyard import BadRequestError, ToolSpec

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


#: Most digits of a generated integer (the converter's own integer rule allows 16).
MAX_DIGITS = 16
_INT_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _int_bounds(schema: dict[str, Any]) -> tuple[int | None, int | None]:
    """Inclusive integer bounds of an integer schema (None: unbounded)."""
    lo = hi = None
    if isinstance(schema.get("minimum"), (int, float)):
        lo = math.ceil(schema["minimum"])
    if isinstance(schema.get("exclusiveMinimum"), (int, float)) and not isinstance(
            schema["exclusiveMinimum"], bool):
        candidate = math.floor(schema["exclusiveMinimum"]) + 1
        lo = candidate if lo is None else max(lo, candidate)
    if isinstance(schema.get("maximum"), (int, float)):
        hi = math.floor(schema["maximum"])
    if isinstance(schema.get("exclusiveMaximum"), (int, float)) and not isinstance(
            schema["exclusiveMaximum"], bool):
        candidate = math.ceil(schema["exclusiveMaximum"]) - 1
        hi = candidate if hi is None else min(hi, candidate)
    return lo, hi


def _digit_class(a: str, b: str) -> str:
    return f'"{a}"' if a == b else f"[{a}-{b}]"


def _same_length_ranges(lo: int, hi: int) -> list[tuple[int, int]]:
    """Split ``[lo, hi]`` (non-negative, same digit count) into ranges each of which is a
    fixed prefix, one digit range, then free digits: 123-129, 130-199, 200-599, ...
    """
    out: list[tuple[int, int]] = []
    start = lo
    while start <= hi:
        # grow the block while it stays aligned at start and inside [start, hi]
        size = 1
        while start % (size * 10) == 0 and start + size * 10 - 1 <= hi:
            size *= 10
        # take as many whole blocks of this size as fit before the next bigger boundary
        end = start + size - 1
        while (end + 1) % (size * 10) != 0 and end + size <= hi:
            end += size
        out.append((start, end))
        start = end + 1
    return out


def _range_pattern(start: int, end: int) -> str:
    """GBNF sequence matching the integers ``start..end`` (same digit count, one block from
    :func:`_same_length_ranges`).
    """
    a, b = str(start), str(end)
    parts = [_digit_class(x, y) for x, y in zip(a, b, strict=True)]
    return " ".join(parts)


def _nonnegative_rule(lo: int, hi: int | None) -> str:
    """GBNF alternatives for the integers ``lo..hi`` (``lo >= 0``; ``hi`` None: unbounded,
    up to 16 digits), without leading zeros.
    """
    alternatives: list[str] = []
    top = hi if hi is not None else 10 ** MAX_DIGITS - 1
    top = min(top, 10 ** MAX_DIGITS - 1)
    length = len(str(lo))
    start = lo
    while start <= top:
        end = min(top, 10 ** length - 1)
        if hi is None and start == 10 ** (length - 1) and length < MAX_DIGITS:
            # every number of this many digits or more: one compact rule
            alternatives.append(f"[1-9] [0-9]{{{length - 1},{MAX_DIGITS - 1}}}")
            break
        alternatives.extend(_range_pattern(x, y) for x, y in _same_length_ranges(start, end))
        start = end + 1
        length += 1
    return " | ".join(f"({alt})" for alt in alternatives) if alternatives else ""


def integer_range_rule(lo: int | None, hi: int | None) -> str:
    """Return a GBNF expression matching the JSON integers in ``[lo, hi]`` (None: unbounded).

    Raises:
        BadRequestError: the range is empty.
    """
    if lo is not None and hi is not None and lo > hi:
        raise BadRequestError(f"integer schema has an empty range [{lo}, {hi}]",
                              provider="local")
    alternatives = []
    if hi is None or hi >= 0:  # the non-negative part
        alternatives.append(_nonnegative_rule(max(lo, 0) if lo is not None else 0, hi))
    if lo is None or lo < 0:  # the negative part: "-" then the magnitude
        magnitude_lo = 1 if hi is None or hi >= 0 else -hi
        magnitude_hi = None if lo is None else -lo
        alternatives.append(f'"-" ({_nonnegative_rule(magnitude_lo, magnitude_hi)})')
    return " | ".join(f"({alt})" for alt in alternatives if alt)


def _converter() -> Any:
    from llama_cpp.llama_grammar import RESERVED_NAMES, SchemaConverter

    class _Converter(SchemaConverter):  # type: ignore[misc]
        """llama-cpp-python's converter plus integer ranges (minimum/maximum and the
        exclusive forms), which it leaves unconstrained.
        """

        def visit(self, schema: Any, name: str) -> Any:
            if (isinstance(schema, dict) and schema.get("type") == "integer"
                    and any(k in schema for k in _INT_BOUNDS)
                    and not any(k in schema for k in ("enum", "const", "$ref"))):
                lo, hi = _int_bounds(schema)
                rule_name = (name + "-" if name in RESERVED_NAMES else name) or "root"
                return self._add_rule(rule_name, f"({integer_range_rule(lo, hi)}) space")
            return super().visit(schema, name)

    return _Converter(prop_order={"name": 0, "arguments": 1}, allow_fetch=False,
                      dotall=False, raw_pattern=False)


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
