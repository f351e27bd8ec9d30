"""A Gleitzeit workflow file that calls MCP tools (``mcp/tool.calc.add``, ``mcp/tool.echo_env``
through ``[gleitzeit] mcp_server``) runs end to end through the ``flowyard`` command line:
flowyard-gleitzeit-format translates the methods to ``uses: calc.<tool>``, flowyard-mcp
starts the MCP test server of contrib/mcp/tests (written with the official SDK) on stdio with
a secret from the environment, and an LLM task on the fake provider consumes the results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "contrib" / "mcp" / "tests" / "mcp_test_server.py"
FLOWYARD = Path(sys.executable).parent / "flowyard"
CANARY = "canary-e2e-5c1d-never-logged"

WORKFLOW = """name: "MCP in Gleitzeit"
description: "Gleitzeit's mcp/ methods on flowyard-mcp"
tasks:
  - id: "add_numbers"
    name: "Add Numbers"
    method: "mcp/tool.calc.add"
    protocol: "mcp/v1"
    params: {a: 42, b: 58}
  - id: "double"
    name: "Double"
    method: "mcp/tool.add"
    dependencies: ["Add Numbers"]
    params:
      a: "${add_numbers.result}"
      b: "${add_numbers.result}"
  - id: "token_length"
    method: "mcp/tool.calc.echo_env"
    params: {name: "API_TOKEN"}
  - id: "summary"
    method: "llm/chat"
    dependencies: ["double"]
    params:
      model: "fake/echo"
      prompt: "Sum ${add_numbers.result}, doubled ${double.result}"
  - id: "broken"
    method: "mcp/tool.calc.fail"
    dependencies: ["summary"]
    params: {reason: "by design"}
"""

CONFIG = f"""
[gleitzeit]
provider = ""
mcp_server = "calc"

[mcp.servers.calc]
command = {json.dumps(sys.executable)}
args = [{json.dumps(str(SERVER))}, "stdio"]
env = {{API_TOKEN = "${{E2E_MCP_TOKEN}}"}}
tools = ["add", "echo_env", "fail"]
timeout = 20
"""


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    (tmp_path / "mcp_flow.yaml").write_text(WORKFLOW)
    (tmp_path / "flowyard.toml").write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWYARD_")}
    env.update({"FLOWYARD_DEFAULT_MODEL": "fake/echo", "FLOWYARD_STORAGE_URL": "memory://",
                "FLOWYARD_DATA_DIR": str(tmp_path / "d"),
                "XDG_CONFIG_HOME": str(tmp_path / "config"), "E2E_MCP_TOKEN": CANARY})
    return tmp_path, env


def test_a_gleitzeit_workflow_calls_mcp_tools_end_to_end(
        project: tuple[Path, dict[str, str]]) -> None:
    cwd, env = project
    checked = subprocess.run([str(FLOWYARD), "validate", "mcp_flow.yaml"], cwd=cwd, env=env,
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    proc = subprocess.run([str(FLOWYARD), "run", "mcp_flow.yaml", "--json"], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=180)
    result = json.loads(proc.stdout)
    # the isError result of the last task fails the run, after everything else completed
    assert proc.returncode == 1 and result["status"] == "failed"
    steps = result["steps"]
    assert {k: steps[k]["status"] for k in ("add_numbers", "double", "token_length",
                                            "summary")} == dict.fromkeys(
        ("add_numbers", "double", "token_length", "summary"), "completed")
    assert result["outputs"]["add_numbers"] == {"result": 100}
    assert result["outputs"]["double"] == {"result": 200}
    assert result["outputs"]["summary"] == "echo: Sum 100, doubled 200"
    # the server got the secret (its tool echoes it: a tool result, not a log)...
    assert result["outputs"]["token_length"] == {"result": CANARY}
    broken = steps["broken"]
    assert broken["status"] == "failed"
    assert broken["error_type"] == "MCPCallError"
    assert "refused: by design" in broken["error"]
    # ...and it is on no error and in no log line of the run
    assert CANARY not in proc.stderr
    assert CANARY not in broken["error"]


def test_validation_locates_an_unconfigured_mcp_server_in_the_gleitzeit_file(
        project: tuple[Path, dict[str, str]]) -> None:
    cwd, env = project
    (cwd / "other.yaml").write_text("name: o\ntasks:\n  - id: r\n    method: mcp/tool.fs.read\n"
                                    "    params: {path: x}\n")
    checked = subprocess.run([str(FLOWYARD), "validate", "other.yaml"], cwd=cwd, env=env,
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 2
    assert "other.yaml:4:13:" in checked.stderr and "fs.read" in checked.stderr
