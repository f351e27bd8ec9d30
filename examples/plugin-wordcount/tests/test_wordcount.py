"""The example plugin's own tests: the tool contract from flowyard's test kit, plus behaviour."""

from __future__ import annotations

from typing import Any

import pytest

from flowyard import Stack
from flowyard.testing import ToolContract
from flowyard_wordcount import plugin


class TestWordCountContract(ToolContract):
    @pytest.fixture
    def tool(self) -> Any:
        return plugin.word_count

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"text": "a b a", "top": 1}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"top": 1}


@pytest.mark.anyio
async def test_counts_words_through_a_stack(tool_context: Any) -> None:
    stack = Stack(plugins=[("wordcount", plugin)])
    tool = stack.tools.get("text.word_count")
    result = await tool.invoke({"text": "The cat, the hat.", "top": 1}, tool_context)
    assert result == {"words": 4, "top": [["the", 2]]}
