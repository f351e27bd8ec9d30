"""The workflow example of docs/plugins/report.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[3] / "docs" / "plugins" / "report.md"


@pytest.mark.anyio
async def test_the_documented_workflow_writes_the_report(flowyard_home: Path,
                                                         tmp_path: Path) -> None:
    from flowyard.stack import Stack
    from flowyard_report import plugin

    text = DOC.read_text(encoding="utf-8")
    workflow = re.search(r"```yaml\n(name: summary-report.*?)```", text, re.S).group(1)
    template = re.search(r"```html\n(.*?)```", text, re.S).group(1)
    root = tmp_path / "workspace"
    (root / "templates").mkdir(parents=True)
    (root / "templates" / "summary.html.j2").write_text(template)
    stack = Stack(plugins=[("report", plugin)],
                  config={"storage": {"url": "memory://"}, "models": {"default": "fake/echo"},
                          "filesystem": {"root": str(root), "fsync": False}})
    async with stack:
        result = await stack.run(workflow, {"text": "rivers <b>flow</b>",
                                            "url": "https://example.org/?a=1&b=2"})
    assert result.status == "completed", result.error
    assert result.outputs == {"report": "reports/summary.html"}
    html = (root / "reports" / "summary.html").read_text()
    assert html.startswith("<h1>Summary</h1>\n<p>echo: Summarize: rivers &lt;b&gt;flow&lt;/b&gt;")
    assert 'href="https://example.org/?a=1&amp;b=2"' in html
