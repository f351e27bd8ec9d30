"""Gleitzeit's MCP methods (``mcp/tool.<server>.<tool>``) become flowyard-mcp tools
(``uses: <server>.<tool>``), with their params as ``with`` and Gleitzeit references into
MCP results; what has no counterpart is a located error. Translation only: flowyard-mcp is
not needed here (tests/e2e/test_mcp_gleitzeit.py runs such a workflow against a real MCP
server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flowyard
import pytest
from flowyard_gleitzeit_format import Settings, plugin, translate

WORKFLOW = """name: "MCP Mixed"
tasks:
  - id: "add_numbers"
    name: "Add Numbers"
    method: "mcp/tool.calc.add"
    protocol: "mcp/v1"
    params: {a: 42, b: 58}
    timeout: 5
  - id: "echo"
    method: "mcp/tool.echo"
    dependencies: ["Add Numbers"]
    params:
      message: "Sum was ${add_numbers.result}"
  - id: "double"
    method: "mcp/tool.calc.add"
    dependencies: ["Add Numbers"]
    params:
      a: "${add_numbers.result}"
      b: "${add_numbers.result}"
"""


def load(text: str, tmp_path: Path, **settings: Any) -> Any:
    path = tmp_path / "mcp.yaml"
    path.write_text(text)
    data, locations = flowyard.parse_yaml(text, path=str(path))
    return translate(data, locations, path=str(path), settings=Settings(**settings))


def test_mcp_tool_methods_become_server_tools(tmp_path: Path) -> None:
    result = load(WORKFLOW, tmp_path, mcp_server="calc")
    add, echo, double = result.definition["steps"]
    assert (add["id"], add["uses"], add["with"], add["timeout"]) == (
        "add_numbers", "calc.add", {"a": 42, "b": 58}, 5)
    assert echo["uses"] == "calc.echo"  # no prefix: [gleitzeit] mcp_server
    assert echo["depends_on"] == ["add_numbers"]
    reference = ('steps["add_numbers"].output["result"] if steps["add_numbers"].output is '
                 'mapping and "result" in steps["add_numbers"].output else '
                 'steps["add_numbers"].output')
    assert reference in echo["with"]["message"]
    assert reference in double["with"]["a"] and double["with"]["a"] == double["with"]["b"]
    assert [i.kind for i in result.tasks] == ["mcp", "mcp", "mcp"]
    assert result.definition["outputs"]["add_numbers"] == "${add_numbers}"


def test_an_unprefixed_tool_without_mcp_server_and_other_mcp_methods_are_located(
        tmp_path: Path) -> None:
    text = ("name: m\ntasks:\n  - name: e\n    method: mcp/tool.echo\n"
            "  - name: r\n    method: mcp/resource.read\n"
            "  - name: b\n    method: mcp/tool.9x.read\n"
            "  - name: p\n    method: mcp/tool.calc.add\n    protocol: llm/v1\n")
    with pytest.raises(flowyard.WorkflowValidationError) as exc:
        load(text, tmp_path)
    got = [(i.line, i.column, i.message.split(":")[0]) for i in exc.value.issues]
    assert got == [(4, 13, "method 'mcp/tool.echo' names no MCP server"),
                   (6, 13, "method 'mcp/resource.read'"),
                   (8, 13, "method 'mcp/tool.9x.read'"),
                   (11, 15, "protocol 'llm/v1' does not serve method 'mcp/tool.calc.add' "
                            "(expected 'mcp/v1')")]


def test_an_unknown_mcp_tool_is_located_by_flowyard_validation(tmp_path: Path) -> None:
    path = tmp_path / "unknown.yaml"
    path.write_text("name: u\ntasks:\n  - name: r\n    method: mcp/tool.fs.read\n"
                    "    params: {path: x}\n")
    stack = flowyard.Stack(plugins=[("gleitzeit", plugin)],
                           config={"storage": {"url": "memory://"}})
    with pytest.raises(flowyard.WorkflowValidationError) as exc:
        stack.load_workflow(path)
    [issue] = exc.value.issues
    assert (Path(issue.file).name, issue.line, issue.column) == ("unknown.yaml", 4, 13)
    assert "fs.read" in issue.message


def test_the_mcp_server_setting_is_checked() -> None:
    assert Settings.from_config({"mcp_server": "calc"}).mcp_server == "calc"
    with pytest.raises(flowyard.ConfigError, match="mcp_server"):
        Settings.from_config({"mcp_server": "no such"})
