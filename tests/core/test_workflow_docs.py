"""Every example of docs/workflows.md runs, on asyncio and trio, with the outputs the page
states in its ``<!-- expect ... -->`` comments."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from flowyard.errors import WorkflowValidationError
from flowyard.stack import Stack

DOC = Path(__file__).resolve().parents[2] / "docs" / "workflows.md"
_BLOCK = re.compile(r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*\n"
                    r"(?P<after>(?:<!-- expect [^\n]*-->\n)*)", re.S | re.M)
_EXPECT = re.compile(r"<!-- expect (?P<what>outputs|status|error): (?P<value>.*?) -->")


def examples() -> list[Any]:
    found = []
    for m in _BLOCK.finditer(DOC.read_text(encoding="utf-8")):
        if m.group("lang") not in ("yaml", "python"):
            continue
        line = DOC.read_text(encoding="utf-8")[:m.start()].count("\n") + 1
        expect = {e.group("what"): e.group("value") for e in _EXPECT.finditer(m.group("after"))}
        found.append(pytest.param(m.group("lang"), m.group("body"), expect,
                                  id=f"{m.group('lang')}-line{line}"))
    return found


EXAMPLES = examples()


def test_the_page_has_examples_and_every_yaml_one_states_its_result() -> None:
    assert len(EXAMPLES) >= 12
    for param in EXAMPLES:
        lang, _, expect = param.values
        if lang == "yaml":
            assert expect, f"{param.id}: YAML example without an <!-- expect ... --> comment"


@pytest.mark.anyio
@pytest.mark.parametrize(("lang", "body", "expect"), EXAMPLES)
async def test_example(lang: str, body: str, expect: dict[str, str], tmp_path: Path) -> None:
    if lang == "python":
        namespace: dict[str, Any] = {"__name__": "docs_example"}
        code = compile(body, f"{DOC}:example", "exec")
        if "async def main" in body:
            exec(code, namespace)
            await namespace["main"]()
        else:  # synchronous scripts (run_sync) run in a worker thread with their own loop
            await anyio.to_thread.run_sync(exec, code, namespace)
        return
    stack = Stack()
    if "error" in expect:
        with pytest.raises(WorkflowValidationError) as info:
            stack.load_workflow(body)
        assert expect["error"] in str(info.value)
        return
    async with stack:
        result = await stack.run(body)
    assert result.status == expect.get("status", "completed"), result.error
    if "outputs" in expect:
        assert result.outputs == json.loads(expect["outputs"])
