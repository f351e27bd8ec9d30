"""``on_error: continue_and_fail``: the rest of the workflow runs as with ``continue``, and the
run ends ``failed`` (CLI exit 1) with the step's error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flowyard
import pytest
from click.testing import CliRunner
from flowyard import Stack, ToolError, WorkflowValidationError

MEMORY = {"storage": {"url": "memory://"}}


@flowyard.tool(name="test.explode")
def explode(message: str = "boom") -> str:
    """Fail with ``message``.

    Args:
        message: the error's text.
    """
    raise ToolError(message)


class Tools:
    @flowyard.hookimpl
    def register_tools(self, register: Any) -> None:
        register(explode.name, explode)


@pytest.fixture
def stack() -> Stack:
    return Stack([("tools", Tools())], config=MEMORY)


def _workflow(on_error: str, **top: Any) -> dict[str, Any]:
    return {"name": "caf", **top, "steps": [
        {"id": "bad", "uses": "test.explode", "with": {"message": "disk full"},
         "on_error": on_error},
        {"id": "after", "uses": "echo",
         "with": {"value": "{{ steps.bad.status }}/{{ steps.bad.output }}"}},
        {"id": "grandchild", "uses": "echo", "with": {"value": "${after}"}},
        {"id": "other", "uses": "echo", "with": {"value": 1}},
    ], "outputs": {"after": "${grandchild}", "other": "${other}"}}


def test_the_rest_runs_and_the_run_fails_with_the_steps_error(stack: Stack) -> None:
    result = stack.run_sync(_workflow("continue_and_fail"))
    assert result.status == "failed"
    assert result.error == ("step 'bad' failed: disk full (on_error: continue_and_fail)")
    assert result.steps["bad"].status == "failed" and result.steps["bad"].error == "disk full"
    for sid in ("after", "grandchild", "other"):
        assert result.steps[sid].status == "completed", sid
    assert result.outputs == {"after": "failed/None", "other": 1}
    # the same workflow with `continue` completes
    assert stack.run_sync(_workflow("continue")).status == "completed"


def test_the_stored_run_is_failed(stack: Stack) -> None:
    async def main() -> tuple[Any, Any]:
        async with stack:
            result = await stack.run(_workflow("continue_and_fail"))
            return result, await stack.storage.get_run(result.run_id)

    import anyio

    _, record = anyio.run(main)
    assert record.status == "failed" and "disk full" in (record.error or "")


def test_two_failures_are_counted_and_on_failure_continue_does_not_make_it_partial(
        stack: Stack) -> None:
    wf = _workflow("continue_and_fail")
    wf["steps"].append({"id": "bad2", "uses": "test.explode", "on_error": "continue_and_fail"})
    result = stack.run_sync(wf)
    assert result.status == "failed"
    assert result.error == ("step 'bad' failed: disk full (and 1 more step(s)) "
                            "(on_error: continue_and_fail)")
    # a blocking failure elsewhere under on_failure: continue would end `partial`; a
    # continue_and_fail step makes it `failed`
    wf = _workflow("continue_and_fail", on_failure="continue")
    wf["steps"].append({"id": "blocking", "uses": "test.explode"})
    result = stack.run_sync(wf)
    assert result.status == "failed"
    assert result.steps["other"].status == "completed"


def test_a_bad_on_error_value_is_a_located_error(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text("name: x\nsteps:\n  - id: a\n    uses: echo\n"
                    "    on_error: continue_then_fail\n", encoding="utf-8")
    with pytest.raises(WorkflowValidationError) as info:
        stack.load_workflow(path)
    (issue,) = info.value.issues
    assert (issue.line, issue.column) == (5, 15)
    assert "'continue_and_fail'" in issue.message and "'continue_then_fail'" in issue.message


CLI_WORKFLOW = """\
name: cli-caf
steps:
  - id: slow
    uses: sleep
    with: {seconds: 5}
    timeout: 0.01
    on_error: POLICY
  - id: after
    uses: echo
    with: {value: "{{ steps.slow.status }}"}
outputs:
  after: "${after}"
"""


@pytest.mark.parametrize(("policy", "code", "status"), [
    ("continue_and_fail", 1, "failed"), ("continue", 0, "completed")])
def test_cli_exit_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str,
                         code: int, status: str) -> None:
    import json

    from flowyard.cli import cli

    monkeypatch.setenv("FLOWYARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FLOWYARD_STORAGE_URL", "memory://")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "wf.yaml").write_text(CLI_WORKFLOW.replace("POLICY", policy), encoding="utf-8")
    result = CliRunner().invoke(cli, ["run", "--json", "wf.yaml"])
    assert result.exit_code == code, result.output
    data = json.loads(result.output)
    assert data["status"] == status
    assert data["steps"]["after"]["status"] == "completed"
    assert data["outputs"] == {"after": "failed"}
