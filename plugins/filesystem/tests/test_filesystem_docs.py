"""The workflow example of docs/plugins/filesystem.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

DOC = Path(__file__).resolve().parents[3] / "docs" / "plugins" / "filesystem.md"


@pytest.mark.anyio
async def test_the_documented_workflow_runs(fs_stack: Any, root_dir: Path) -> None:
    text = DOC.read_text(encoding="utf-8")
    workflow = re.search(r"```yaml\n(name: notes.*?)```", text, re.S).group(1)
    async with fs_stack:
        result = await fs_stack.run(workflow, {"topic": "tides"})
    assert result.status == "completed", result.error
    assert result.outputs == {"files": ["notes/tides.md"]}
    assert (root_dir / "notes" / "tides.md").read_text() == "# tides\n"
