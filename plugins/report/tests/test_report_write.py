"""report.write: contract, Markdown and HTML rendering, templates from the workspace,
confinement of paths, and server-side template injection failing safely."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from flowyard.context import ToolContext
from flowyard.errors import ToolError, ToolInputError
from flowyard.testing import ToolContract
from flowyard_report.tool import ReportWriteTool
from flowyard_safepath import SafeRoot

pytestmark = pytest.mark.anyio


@pytest.fixture
def root_dir(tmp_path: Path) -> Path:
    root = tmp_path / "r"
    root.mkdir()
    return root


@pytest.fixture
def report(root_dir: Path) -> ReportWriteTool:
    return ReportWriteTool(SafeRoot(root_dir, fsync=False, max_file_bytes=1_000_000),
                           max_output_chars=200_000, max_range_items=50_000)


class TestReportContract(ToolContract):
    @pytest.fixture
    def tool(self, report: ReportWriteTool) -> Any:
        return report

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"path": "out/report.md", "data": {"summary": "ok"}, "title": "T"}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"path": "out/report.md", "format": "pdf"}


async def write(tool: ReportWriteTool, **arguments: Any) -> Any:
    return await tool.invoke(arguments, ToolContext(stack=None))  # type: ignore[arg-type]


async def test_markdown_from_inline_template(report: ReportWriteTool, root_dir: Path) -> None:
    template = ("# {{ title }}\n\n{% for r in results %}- {{ r.name }}: {{ r.score }}\n"
                "{% endfor %}\nTotal: {{ results | sum(attribute='score') }}\n")
    got = await write(report, path="reports/scores.md", template=template, title="Scores",
                      data={"results": [{"name": "a", "score": 2}, {"name": "<b>", "score": 3}]})
    text = (root_dir / "reports" / "scores.md").read_text()
    # trim_blocks: the newline right after a block tag is dropped
    assert text == "# Scores\n\n- a: 2\n- <b>: 3\nTotal: 5\n"
    assert got == {"path": "reports/scores.md", "bytes_written": len(text.encode()),
                   "format": "markdown", "location": str(root_dir / "reports" / "scores.md")}


async def test_html_escapes_values_and_renders_markdown_safely(report: ReportWriteTool,
                                                               root_dir: Path) -> None:
    template = ("<h1>{{ title }}</h1><div>{{ answer }}</div>"
                "<section>{{ answer | markdown }}</section>")
    answer = ("**bold** <script>alert(1)</script> [x](javascript:alert(1)) "
              "<img src=x onerror=alert(1)>")
    got = await write(report, path="r.html", template=template, title="<i>T</i>",
                      data={"answer": answer})
    assert got["format"] == "html"
    html = (root_dir / "r.html").read_text()
    assert "<h1>&lt;i&gt;T&lt;/i&gt;</h1>" in html
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<strong>bold</strong>" in html
    assert 'href="javascript:' not in html


async def test_default_templates(report: ReportWriteTool, root_dir: Path) -> None:
    data = {"summary": "All **good**.", "findings": ["one", "two"], "metrics": {"runs": 3}}
    await write(report, path="d.md", title="Weekly", data=data)
    md = (root_dir / "d.md").read_text()
    assert md.startswith("# Weekly\n\n## summary\n\nAll **good**.\n\n## findings\n\n- one\n- two\n")
    assert '"runs": 3' in md
    await write(report, path="d.html", title="Weekly", data=data)
    html = (root_dir / "d.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "<title>Weekly</title>" in html
    assert "<p>All <strong>good</strong>.</p>" in html and "<li>two</li>" in html
    assert "&#34;runs&#34;: 3" in html or "&quot;runs&quot;: 3" in html


async def test_template_file_with_include(report: ReportWriteTool, root_dir: Path) -> None:
    (root_dir / "templates").mkdir()
    (root_dir / "templates" / "base.md.j2").write_text(
        "{% include 'templates/header.md.j2' %}Body: {{ body }}\n")
    (root_dir / "templates" / "header.md.j2").write_text("# {{ title }}\n")
    await write(report, path="out.md", template_path="templates/base.md.j2", title="H",
                data={"body": "text"})
    assert (root_dir / "out.md").read_text() == "# H\nBody: text\n"
    with pytest.raises(ToolError, match=r"report template 'templates/nope\.j2' not found"):
        await write(report, path="out2.md", template_path="templates/nope.j2")


async def test_paths_are_confined(report: ReportWriteTool, root_dir: Path, tmp_path: Path
                                  ) -> None:
    (tmp_path / "r_evil").mkdir()
    (tmp_path / "secret.j2").write_text("{{ 'stolen' }}")
    os.symlink(tmp_path / "secret.j2", root_dir / "link.j2")
    for args in [{"path": "../escape.md"}, {"path": str(tmp_path / "r_evil" / "x.md")},
                 {"path": "..\\escape.md"}, {"path": "a\x00.md"},
                 {"path": "ok.md", "template_path": "../secret.j2"},
                 {"path": "ok.md", "template_path": "link.j2"},
                 {"path": "ok.md", "template": "{% include '../secret.j2' %}"}]:
        with pytest.raises(ToolInputError):
            await write(report, data={}, **args)
    assert sorted(os.listdir(tmp_path)) == ["r", "r_evil", "secret.j2"]
    assert os.listdir(tmp_path / "r_evil") == []
    assert os.listdir(root_dir) == ["link.j2"]


SSTI = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.system('touch /tmp/pwned') }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ self._TemplateReference__context }}",
    "{{ config.items() }}",
    "{{ request.application.__globals__ }}",
    "{% set x = data.append(1) %}",
    "{{ data.update({'a': 1}) }}",
    "{{ 'x' * 10000000 }}",
    "{{ [1] * 10000000 }}",
    "{{ 9 ** 9999999 }}",
    "{% for i in range(40000) %}{% for j in range(40000) %}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}",
    "{{ undefined_name }}",
    "{{ (1).__class__.__base__.__subclasses__() }}",
    "{{ ''|attr('__class__') }}",
]


@pytest.mark.parametrize("template", SSTI)
async def test_template_injection_fails_safely(template: str, report: ReportWriteTool,
                                               root_dir: Path) -> None:
    with pytest.raises(ToolError) as info:
        await write(report, path="ssti.md", template=template, data={"items": [1]})
    assert info.value.tool == "report.write"
    message = str(info.value)
    assert any(reason in message for reason in [
        "forbidden operation", "undefined value", "exceeds"]), message
    assert os.listdir(root_dir) == []
    assert not Path("/tmp/pwned").exists()


async def test_template_errors_are_reported_with_their_line(report: ReportWriteTool) -> None:
    with pytest.raises(ToolInputError, match="syntax error in '<inline>' line 2"):
        await write(report, path="x.md", template="ok\n{% for %}")
    with pytest.raises(ToolInputError, match="either `template` or `template_path`"):
        await write(report, path="x.md", template="a", template_path="b")
    with pytest.raises(ToolError, match="failed while rendering: ZeroDivisionError"):
        await write(report, path="x.md", template="{{ 1 / 0 }}")


async def test_registered_through_the_stack_and_shares_the_filesystem_root(
        flowyard_home: Path, root_dir: Path) -> None:
    from flowyard.stack import Stack
    from flowyard_report import plugin

    stack = Stack(plugins=[("report", plugin)],
                  config={"filesystem": {"root": str(root_dir)}})
    tool = stack.tools.get("report.write")
    assert tool.idempotent is True and tuple(tool.side_effects) == ("filesystem",)
    await tool.invoke({"path": "final.md", "data": {"a": "b"}}, ToolContext(stack=stack))
    assert (root_dir / "final.md").read_text().startswith("# Report\n")

    other = root_dir.parent / "reports"
    stack2 = Stack(plugins=[("report", plugin)],
                   config={"filesystem": {"root": str(root_dir)},
                           "report": {"root": str(other), "max_file_bytes": 10}})
    tool2 = stack2.tools.get("report.write")
    await tool2.invoke({"path": "s.md", "template": "tiny"}, ToolContext(stack=stack2))
    assert (other / "s.md").read_text() == "tiny"
    with pytest.raises(ToolError, match="per-file quota of 10 bytes"):
        await tool2.invoke({"path": "s.md", "template": "x" * 11}, ToolContext(stack=stack2))
    assert (other / "s.md").read_text() == "tiny"


REPORT_WORKFLOW = """\
name: report-demo
inputs:
  items: {type: array}
steps:
  - id: total
    uses: echo
    with: {value: "{{ inputs.items | length }}"}
  - id: write
    uses: report.write
    with:
      path: out/summary.html
      title: "Summary of {{ inputs.items | length }} items"
      data:
        count: "${total}"
        items: "{{ inputs.items }}"
      template: "{% raw %}<h1>{{ title }}</h1><p>{{ count }}</p>\
{% for i in items %}<i>{{ i }}</i>{% endfor %}{% endraw %}"
outputs:
  report: "${write.path}"
  size: "${write.bytes_written}"
"""


async def test_report_written_by_a_workflow(flowyard_home: Path, root_dir: Path) -> None:
    from flowyard.stack import Stack
    from flowyard_report import plugin

    stack = Stack(plugins=[("report", plugin)],
                  config={"storage": {"url": "memory://"},
                          "filesystem": {"root": str(root_dir), "fsync": False}})
    async with stack:
        result = await stack.run(REPORT_WORKFLOW, {"items": ["a<b", "c"]})
    assert result.status == "completed", result.error
    html = (root_dir / "out" / "summary.html").read_text()
    assert html == "<h1>Summary of 2 items</h1><p>2</p><i>a&lt;b</i><i>c</i>"
    assert result.outputs == {"report": "out/summary.html", "size": len(html.encode())}
