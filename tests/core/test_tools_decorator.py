"""@flowyard.tool derives JSON schemas from type hints and docstrings."""

from __future__ import annotations

import enum
from typing import Any, Literal

import flowyard
import pytest
from flowyard.context import ToolContext
from flowyard.errors import ToolInputError
from flowyard.tools import FunctionTool, schema_for_type


class Opaque:
    """A type with no JSON Schema."""


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


def test_schema_from_hints_and_google_docstring() -> None:
    @flowyard.tool(name="search.docs", side_effects=["network"])
    def search(query: str, limit: int = 5, tags: list[str] | None = None,
               mode: Literal["fast", "exact"] = "fast", color: Color = Color.RED) -> list[str]:
        """Search the documents.

        Longer explanation.

        Args:
            query: what to look for.
            limit: how many results at most.
            tags: only documents with these tags.
            mode: how to match.
            color: a colour.
        """
        return []

    assert search.name == "search.docs"
    assert search.description == "Search the documents.\n\nLonger explanation."
    assert search.side_effects == ("network",) and search.idempotent is False
    props = search.parameters["properties"]
    assert props["query"] == {"type": "string", "description": "what to look for."}
    assert props["limit"] == {"type": "integer", "description": "how many results at most.",
                              "default": 5}
    assert props["tags"]["anyOf"] == [{"type": "array", "items": {"type": "string"}},
                                      {"type": "null"}]
    assert props["mode"]["enum"] == ["fast", "exact"] and props["mode"]["type"] == "string"
    assert props["color"]["enum"] == ["red", "blue"]
    assert search.parameters["required"] == ["query"]
    assert search.parameters["additionalProperties"] is False


@pytest.mark.anyio
async def test_context_parameter_is_injected_not_exposed(tool_context: ToolContext) -> None:
    seen: list[Any] = []

    @flowyard.tool
    async def note(text: str, context: ToolContext) -> str:
        """Remember a note.

        Args:
            text: the note.
        """
        seen.append(context)
        return text.upper()

    assert "context" not in note.parameters["properties"]
    result = await note.invoke({"text": "hi"}, tool_context)
    assert result == "HI" and seen == [tool_context]


@pytest.mark.anyio
async def test_sync_functions_run_in_a_worker_thread(tool_context: ToolContext) -> None:
    import threading

    main = threading.get_ident()

    @flowyard.tool
    def where() -> int:
        """Return the current thread id."""
        return threading.get_ident()

    assert await where.invoke({}, tool_context) != main


@pytest.mark.anyio
async def test_invalid_arguments_are_rejected_with_their_path(tool_context: ToolContext) -> None:
    @flowyard.tool
    def add(a: int, b: int = 1) -> int:
        """Add.

        Args:
            a: first.
            b: second.
        """
        return a + b

    with pytest.raises(ToolInputError, match="'a' is a required property"):
        await add.invoke({}, tool_context)
    with pytest.raises(ToolInputError, match="b: 'x' is not of type 'integer'"):
        await add.invoke({"a": 1, "b": "x"}, tool_context)
    assert await add.invoke({"a": 2}, tool_context) == 3


def test_unsupported_hints_fail_at_definition_with_the_argument_name() -> None:
    def bad(x: Opaque) -> None:
        """Bad."""

    with pytest.raises(TypeError, match="argument 'x'"):
        FunctionTool(bad)

    class Local:
        pass

    def unresolvable(x: Local) -> None:
        """Its hint names a class that is not visible at module level."""

    with pytest.raises(TypeError, match="cannot resolve its type hints"):
        FunctionTool(unresolvable)
    assert schema_for_type(dict[str, int]) == {"type": "object",
                                               "additionalProperties": {"type": "integer"}}
