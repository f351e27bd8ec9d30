"""The filesystem tools inside a real workflow run: step outputs flow between them, refused
paths fail the step cleanly, and the engine records a tool call per step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.anyio

WORKFLOW = """\
name: fs-demo
inputs:
  topic: {type: string}
steps:
  - id: save
    uses: filesystem.write
    with: {path: "notes/{{ inputs.topic }}.md", content: "# {{ inputs.topic }}\\n"}
  - id: log
    uses: filesystem.append
    with: {path: "notes/{{ inputs.topic }}.md", content: "saved ${save.bytes_written} bytes\\n"}
  - id: load
    uses: filesystem.read
    with: {path: "notes/{{ inputs.topic }}.md"}
    depends_on: [log]
  - id: found
    uses: filesystem.glob
    with: {pattern: "**/*.md"}
    depends_on: [load]
outputs:
  text: "${load.content}"
  files: "${found.matches}"
"""


async def test_workflow_writes_and_reads_in_the_root(fs_stack: Any, root_dir: Path) -> None:
    events: list[Any] = []
    fs_stack.events.subscribe(events.append, name="test")
    async with fs_stack:
        result = await fs_stack.run(WORKFLOW, {"topic": "rivers"})
    assert result.status == "completed", result.error
    assert result.outputs == {"text": "# rivers\nsaved 9 bytes\n", "files": ["notes/rivers.md"]}
    assert (root_dir / "notes" / "rivers.md").read_text() == "# rivers\nsaved 9 bytes\n"
    tool_steps = {e.step_id for e in events if e.type.startswith("tool.")}
    assert {"save", "log", "load", "found"} <= tool_steps


async def test_an_escaping_path_fails_the_step_and_writes_nothing(
        fs_stack: Any, root_dir: Path, tmp_path: Path) -> None:
    async with fs_stack:
        result = await fs_stack.run(WORKFLOW, {"topic": "../../escaped"})
    assert result.status == "failed"
    assert "leaves the filesystem root" in str(result.steps["save"].error)
    assert not list(tmp_path.rglob("escaped.md"))
