"""The example workflows of examples/, validated and run end to end by the `flowyard` command
line (as a user would), on the fake provider, with their exact expected outputs. Only the
examples that need nothing but the core and this distribution run here; the python/execute
examples need flowyard-exec and run in tests/e2e/test_gleitzeit_format.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FLOWYARD = Path(sys.executable).parent / "flowyard"

TOPIC = "echo: Pick a topic about rivers"
ARTICLE = f"echo: Write about {TOPIC} in {{three}} sentences"
EXPECTED: dict[str, dict[str, Any]] = {
    "chat_chain.yaml": {"Pick_Topic": TOPIC, "write_article": ARTICLE,
                        "title": f"echo: {ARTICLE}"},
    "vision.yaml": {
        "analyze-inline": "echo: Describe this image. [1 image]",
        "analyze-file": "echo: What colour is this? [1 image]",
        "extract-colors": "echo: Colours in 'echo: Describe this image. [1 image]' and "
                          "'echo: What colour is this? [1 image]'"},
    "batch_text.yaml": {
        "files": ["documents/meeting_notes.txt", "documents/story.txt"],
        "results": [
            "echo: Summarize this document.\n\nFile content from documents/meeting_notes.txt:\n"
            "Meeting on Monday: ship the loader, review the docs.\n",
            "echo: Summarize this document.\n\nFile content from documents/story.txt:\n"
            "Once upon a time a workflow ran unchanged.\n"]},
    "batch_images.yaml": {
        "files": ["images/blue.png", "images/red.png"],
        "results": ["echo: Describe this image [1 image]"] * 2},
    "file_path.yaml": {
        "summarize_spec": "echo: Summarize:\n\nFile content from documents/spec.md:\n"
                          "# Spec\nThe loader keeps file:line:column.\n",
        "look": "echo: Which colour? [1 image]"},
}


def cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(FLOWYARD), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("FLOWYARD_")}
    out.update({"FLOWYARD_DEFAULT_MODEL": "fake/echo", "FLOWYARD_GLEITZEIT__PROVIDER": "",
                "FLOWYARD_STORAGE_URL": "memory://",
                "FLOWYARD_DATA_DIR": str(tmp_path / "data"),
                "XDG_CONFIG_HOME": str(tmp_path / "config")})
    return out


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    target = tmp_path / "examples"
    shutil.copytree(EXAMPLES, target)
    return target


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_validates_and_runs_with_the_expected_outputs(
        name: str, examples: Path, env: dict[str, str]) -> None:
    checked = cli("validate", name, cwd=examples, env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "ok: workflow" in checked.stdout
    ran = cli("run", name, "--json", cwd=examples, env=env)
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    result = json.loads(ran.stdout)
    assert result["status"] == "completed"
    assert result["outputs"] == EXPECTED[name]


def test_ollama_is_the_provider_of_gleitzeit_model_names_by_default(
        examples: Path, env: dict[str, str]) -> None:
    del env["FLOWYARD_GLEITZEIT__PROVIDER"]
    env["FLOWYARD_DISABLE_PLUGINS"] = "ollama"   # so the reference names no known provider
    ran = cli("run", "chat_chain.yaml", "--json", cwd=examples, env=env)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    result = json.loads(ran.stdout)
    assert result["steps"]["Pick_Topic"]["error"].startswith("unknown provider 'ollama'")


def test_format_option_forces_the_loader(examples: Path, env: dict[str, str]) -> None:
    native = examples / "native.yaml"
    native.write_text("name: n\nsteps:\n  - id: a\n    uses: echo\n    with: {value: 1}\n")
    forced = cli("validate", "--format", "gleitzeit", "native.yaml", cwd=examples, env=env)
    assert forced.returncode == 2
    assert "native.yaml:2:1: unknown key 'steps' in a Gleitzeit workflow" in forced.stderr
    plain = cli("validate", "native.yaml", cwd=examples, env=env)
    assert plain.returncode == 0, plain.stderr


def test_an_mcp_task_is_a_located_validation_error(examples: Path,
                                                   env: dict[str, str]) -> None:
    (examples / "mcp.yaml").write_text(
        'name: "MCP Test"\ntasks:\n  - name: "Echo Test"\n    method: "mcp/tool.echo"\n'
        '    params:\n      message: "Hello"\n    priority: "normal"\n')
    out = cli("validate", "mcp.yaml", cwd=examples, env=env)
    assert out.returncode == 2
    assert "mcp.yaml:4:13: method 'mcp/tool.echo' names no MCP server: write " \
        "mcp/tool.<server>.echo" in out.stderr


def test_the_readme_example_runs_as_documented(tmp_path: Path, env: dict[str, str]) -> None:
    import re

    readme = (EXAMPLES.parent / "README.md").read_text()
    (tmp_path / "summarize.yaml").write_text(re.search(r"```yaml\n(.*?)```", readme,
                                                       re.S).group(1))
    ran = cli("run", "summarize.yaml", "--json", cwd=tmp_path, env=env)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["outputs"] == {
        "Pick_Topic": "echo: Pick a topic about rivers",
        "write_article": "echo: Write about echo: Pick a topic about rivers"}
    assert '"write_article": "echo: Write about echo: Pick a topic about rivers"' in readme
