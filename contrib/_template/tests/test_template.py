"""The plugin's own tests: the tool contract from flowyard's test kit, discovery through the
installed entry point, and behaviour through a stack. They run in a venv where only the core
and this distribution (with its `test` extra) are installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import flowyard
import pytest
from flowyard.testing import ToolContract
from flowyard_template import plugin


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


def test_the_installed_entry_point_loads_the_plugin(flowyard_home: Path) -> None:
    stack = flowyard.Stack.default()
    [status] = [s for s in stack.plugin_report if s.name == "template"]
    assert status.status == "loaded", status.error
    assert stack.tools.plugin_of("template.word_count") == "template"


@pytest.mark.anyio
async def test_counts_words_through_a_stack(tool_context: Any) -> None:
    stack = flowyard.Stack(plugins=[("template", plugin)])
    tool = stack.tools.get("template.word_count")
    result = await tool.invoke({"text": "The cat, the hat.", "top": 1}, tool_context)
    assert result == {"words": 4, "top": [["the", 2]]}


def test_cli_command(tmp_path: Path, flowyard_home: Path) -> None:
    text = tmp_path / "words.txt"
    text.write_text("one two three\n")
    out = subprocess.run([str(Path(sys.executable).parent / "flowyard"), "template-wordcount",
                          str(text)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"
