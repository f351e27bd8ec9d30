"""Orchestrator pipelines (flowyard-orchestrator-format) through the command line, with every
plugin installed: the example pipelines of contrib/orchestrator-format/examples are validated
and run unchanged with `flowyard validate` / `flowyard run` on the real filesystem and exec
tools and the fake model; the deterministic ones give exact files and exit codes, the error
examples exact file:line:column messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "contrib" / "orchestrator-format" / "examples"

pytest.importorskip("flowyard_orchestrator_format")


def flowyard(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the flowyard CLI with a private data directory and workspace (tmp_path/ws), shell
    strings allowed, the exec tools working in the workspace, and the fake model."""
    workspace = tmp_path / "ws"
    workspace.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWYARD_")}
    env.update({"FLOWYARD_DATA_DIR": str(tmp_path / "data"),
                "FLOWYARD_FILESYSTEM__ROOT": str(workspace),
                "FLOWYARD_EXEC__WORK_DIR": str(workspace),
                "FLOWYARD_EXEC__ALLOW_SHELL": "true",
                "FLOWYARD_DEFAULT_MODEL": "fake/echo",
                "FLOWYARD_STRICT_PLUGINS": "1"})
    return subprocess.run(
        [sys.executable, "-c", "from flowyard.cli import main; main()", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def run(tmp_path: Path, name: str, *args: str, code: int = 0) -> dict[str, Any]:
    proc = flowyard(tmp_path, "run", str(EXAMPLES / name), "--no-live", "--json", *args)
    assert proc.returncode == code, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout)


def statuses(result: dict[str, Any]) -> dict[str, str]:
    return {step: value["status"] for step, value in result["steps"].items()}


def files(tmp_path: Path) -> dict[str, str]:
    workspace = tmp_path / "ws"
    return {str(p.relative_to(workspace)): p.read_text() for p in sorted(workspace.rglob("*"))
            if p.is_file()}


def test_the_readme_example_runs(tmp_path: Path) -> None:
    import re

    readme = (EXAMPLES.parent / "README.md").read_text()
    pipeline = tmp_path / "file-report.yaml"
    pipeline.write_text(re.search(r"## Example\n\n```yaml\n(.*?)```", readme, re.S).group(1))
    proc = flowyard(tmp_path, "run", str(pipeline), "-i", "out_dir=notes", "--no-live",
                    "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["outputs"] == {
        "lines": 2, "summary": "echo: Say that the note has 2 lines."}
    assert files(tmp_path) == {"notes/note.txt": "alpha\nbeta\n"}


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_example_validates(tmp_path: Path, name: str) -> None:
    proc = flowyard(tmp_path, "validate", str(EXAMPLES / name))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok: workflow" in proc.stdout


def test_files_and_terminal_writes_the_report(tmp_path: Path) -> None:
    result = run(tmp_path, "files_and_terminal.yaml")
    assert result["status"] == "completed"
    assert result["outputs"] == {"report_path": "reports/weekly-notes.md", "lines": 3}
    assert files(tmp_path) == {
        "reports/note.txt": "alpha\nbeta\ngamma\n",
        "reports/weekly-notes.md": "# Weekly notes\nLines: 3 (exit 0, ok True)\n"
                                   "Size: 17 bytes, written 17\nFirst: alpha",
    }


def test_files_and_terminal_takes_parameters_as_inputs(tmp_path: Path) -> None:
    result = run(tmp_path, "files_and_terminal.yaml", "-i", "out_dir=elsewhere",
                 "-i", "title=Daily Log")
    assert result["outputs"] == {"report_path": "elsewhere/daily-log.md", "lines": 3}
    assert sorted(files(tmp_path)) == ["elsewhere/daily-log.md", "elsewhere/note.txt"]


def test_parameter_choices_are_checked_first_and_foreach_runs_one_item_at_a_time(
        tmp_path: Path) -> None:
    result = run(tmp_path, "choices_and_foreach.yaml", "-i", "style=lower")
    assert result["outputs"] == {"written": ["notes/0.txt", "notes/1.txt", "notes/2.txt"],
                                 "text": "alphabetagamma"}
    assert files(tmp_path) == {"notes/0.txt": "alpha", "notes/1.txt": "beta",
                               "notes/2.txt": "gamma"}
    other = tmp_path / "other"
    other.mkdir()
    result = run(other, "choices_and_foreach.yaml", "-i", "style=title", code=1)
    assert statuses(result) == {"orchestrator-parameters": "failed",
                                "write_notes": "skipped", "list_notes": "skipped"}
    assert "parameter 'style' is 'title', not one of its choices ('upper', 'lower')" in (
        result["error"])
    assert files(other) == {}


def test_for_each_runs_the_nested_steps_per_item(tmp_path: Path) -> None:
    result = run(tmp_path, "for_each_files.yaml")
    assert result["status"] == "completed"
    assert result["outputs"] == {
        "first_path": "notes/0-rivers.txt",
        "contents": ["RIVERS first=True last=False of 3 (ready)",
                     "LAKES first=False last=False of 3 (ready)",
                     "GLACIERS first=False last=True of 3 (ready)"],
        "listing": "0-rivers.txt\n1-lakes.txt\n2-glaciers.txt",
        "run_matches": True,
    }
    assert files(tmp_path) == {
        "notes/0-rivers.txt": "RIVERS first=True last=False of 3 (ready)",
        "notes/1-lakes.txt": "LAKES first=False last=False of 3 (ready)",
        "notes/2-glaciers.txt": "GLACIERS first=False last=True of 3 (ready)",
    }
    # the execution context is one step, computed once per run
    execution = result["steps"]["orchestrator-execution"]["output"]
    assert execution["run_id"] == result["run_id"]
    assert execution["pipeline_id"] == "batch-notes"
    assert execution["timestamp"].endswith("+00:00")


def test_nested_loops_and_a_bang_command(tmp_path: Path) -> None:
    result = run(tmp_path, "nested_loops.yaml")
    assert result["status"] == "completed"
    assert result["outputs"] == {"done": ["a done", "b done"], "last": "nested/b-2.txt"}
    assert files(tmp_path) == {"nested/a-1.txt": "a1 at 0", "nested/a-2.txt": "a2 at 1",
                               "nested/b-1.txt": "b1 at 0", "nested/b-2.txt": "b2 at 1",
                               "nested/total.txt": "nested/b-2.txt of 2 groups"}


def test_python_executor_and_free_text_actions(tmp_path: Path) -> None:
    result = run(tmp_path, "python_executor.yaml")
    assert result["outputs"] == {"total": 50, "line": "total=50 ok=True said=squares computed"}
    assert files(tmp_path) == {"python/total.txt": "total=50 ok=True said=squares computed\n"}


def test_conditions_and_forward_jumps(tmp_path: Path) -> None:
    result = run(tmp_path, "conditions.yaml")
    assert statuses(result) == {"measure": "completed", "big_enough": "completed",
                                "detail": "completed", "quick_path": "completed",
                                "slow_path": "skipped", "summary": "completed"}
    assert files(tmp_path)["branch/summary.txt"] == \
        "big=branch/big.txt quick=branch/quick.txt slow=no"


def test_on_false_jumps_over_the_steps_before_its_target(tmp_path: Path) -> None:
    result = run(tmp_path, "conditions.yaml", "-i", "threshold=9")
    assert statuses(result) == {"measure": "completed", "big_enough": "skipped",
                                "detail": "skipped", "quick_path": "skipped",
                                "slow_path": "skipped", "summary": "completed"}
    assert files(tmp_path) == {"branch/summary.txt": "big=no quick=no slow=no"}


def test_a_false_if_does_not_trigger_on_success(tmp_path: Path) -> None:
    result = run(tmp_path, "conditions.yaml", "-i", "mode=slow")
    assert statuses(result)["quick_path"] == "skipped"
    assert statuses(result)["slow_path"] == "completed"
    assert files(tmp_path)["branch/summary.txt"] == \
        "big=branch/big.txt quick=no slow=branch/slow.txt"


def test_while_and_until_loops(tmp_path: Path) -> None:
    result = run(tmp_path, "loops.yaml")
    assert result["status"] == "completed"
    assert result["outputs"] == {"log": "start\ntick 0;tick 1;tick 2;", "lines": 2}
    assert files(tmp_path)["loops/lines.txt"] == "line\nline\n"


def test_while_and_until_on_a_single_action(tmp_path: Path) -> None:
    result = run(tmp_path, "single_action_loops.yaml")
    assert result["outputs"] == {"log": "round 0;round 1;round 2;", "count": 2}
    assert (result["steps"]["grow"]["iterations"], result["steps"]["count"]["iterations"]) \
        == (3, 2)
    assert files(tmp_path)["count.txt"] == "xx"


def test_a_while_loop_that_is_false_at_once_runs_no_iteration(tmp_path: Path) -> None:
    result = run(tmp_path, "loops.yaml", "-i", "limit=0")
    assert statuses(result)["count_up"] == "skipped"
    assert result["outputs"]["log"] == "start\n"


def test_llm_actions_and_auto_tags_on_the_fake_model(tmp_path: Path) -> None:
    result = run(tmp_path, "llm_actions.yaml")
    assert result["status"] == "completed"
    assert result["outputs"] == {
        "draft": "echo: Write one sentence about tides.",
        "review": "echo: Describe the tone.\n\nAnalysis type: tone\n\nText:\n"
                  "echo: Write one sentence about tides.",
        "polish": "echo: Polish this in a echo: choose a style for a sentence about tides"
                  "\n\nAnswer with the value only. style: echo: Write one sentence about "
                  "tides.",
        "extended": "not extended",
    }
    # each <AUTO> outside `model` is a model call of its own step; the echoed answer is not
    # "true", so the condition it decides is false
    assert statuses(result) == {"draft": "completed", "review": "completed",
                                "polish-auto-1": "completed", "polish": "completed",
                                "maybe_extend-auto-1": "completed", "maybe_extend": "skipped"}


def test_auto_tags_in_loops_and_outputs(tmp_path: Path) -> None:
    result = run(tmp_path, "auto_everywhere.yaml")
    assert result["status"] == "completed"
    assert result["outputs"] == {
        "subtopics": [],        # the fake model's example of a JSON array
        "refined": "echo: Improve round 0 on tides",
        "reviewed": "echo: Check 1",
        "verdict": "echo: Summarize tides in one word\n\nAnswer with the value only."}
    steps = result["steps"]
    # the echoed answer is never "true": the while loop stops after its first iteration,
    # the until loop runs to max_iterations
    assert (steps["refine"]["iterations"], steps["review"]["iterations"]) == (1, 2)
    assert steps["review"]["output"]["review-until"] == (
        "echo: Is 'echo: Check 1' good enough? true or false\n\nAnswer with the value only.")
    assert sorted(steps) == ["output-verdict-auto-1", "refine", "review", "subtopics",
                             "subtopics-auto-1"]


def test_structured_generation_and_report_generator(tmp_path: Path) -> None:
    result = run(tmp_path, "structured_report.yaml")
    assert result["status"] == "completed"
    assert result["outputs"]["facts"] == {"title": "", "count": 0}
    assert files(tmp_path) == {"report/facts.md": "# Facts\n\nTitle: ''; count: 0"}


def test_failure_policies(tmp_path: Path) -> None:
    result = run(tmp_path, "failures.yaml", code=1)
    # on_failure: continue -> the rest of the pipeline runs, and the run ends failed
    assert result["status"] == "failed"
    assert "step 'required_input' failed" in result["error"]
    steps = result["steps"]
    assert steps["flaky"]["status"] == "completed" and steps["flaky"]["attempts"] == 2
    assert steps["optional_input"]["status"] == "failed"
    assert steps["required_input"]["status"] == "failed"
    assert steps["report"]["status"] == "completed"
    assert files(tmp_path)["failures/report.txt"] == "flaky=recovered optional=none"


def test_on_failure_fail_stops_the_pipeline(tmp_path: Path) -> None:
    result = run(tmp_path, "fail_fast.yaml", code=1)
    assert result["status"] == "failed"
    assert statuses(result) == {"load": "failed", "never": "skipped"}
    assert files(tmp_path) == {}


@pytest.mark.parametrize(("name", "expected"), [
    ("unknown_tool.yaml", [
        "unknown_tool.yaml:10:11: step 'filter_rows': tool 'data-processing' has no flowyard "
        "counterpart (supported tools: filesystem, headless-browser, python-executor, "
        "report-generator, terminal, web-search)"]),
    ("unsupported.yaml", [
        "unsupported.yaml:7:15: for_each: an <AUTO> tag must be the whole value",
        "unsupported.yaml:18:5: step 'later': unknown or unsupported key 'cache'",
        "unsupported.yaml:17:17: on_failure must be one of continue, skip, fail, retry, got "
        "'pick'"]),
    ("unknown_name.yaml", [
        "unknown_name.yaml:9:15: unknown name 'undefined_thing': not a parameter, step or "
        "loop variable here (known: write, topic, execution, inputs, output_path, parameters, "
        "results, timestamp)"]),
])
def test_errors_are_located_in_the_pipeline(tmp_path: Path, name: str,
                                            expected: list[str]) -> None:
    for command in ("validate", "run"):
        proc = flowyard(tmp_path, command, str(EXAMPLES / "errors" / name))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        for message in expected:
            assert f"{EXAMPLES / 'errors'}/{message}" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_native_workflows_are_not_claimed_and_format_forces_a_loader(tmp_path: Path) -> None:
    native = tmp_path / "native.yaml"
    native.write_text("name: native\nsteps:\n  - id: a\n    uses: echo\n"
                      "    with: {value: 1}\noutputs:\n  a: '${a}'\n")
    assert flowyard(tmp_path, "validate", str(native)).returncode == 0
    forced = flowyard(tmp_path, "validate", "--format", "orchestrator", str(native))
    assert forced.returncode == 2
    assert "native.yaml:3:5: step 'a' has no 'action', 'tool' or nested 'steps'" \
        in forced.stderr
    pipeline = EXAMPLES / "files_and_terminal.yaml"
    as_native = flowyard(tmp_path, "validate", "--format", "native", str(pipeline))
    assert as_native.returncode == 2
    assert "unknown key 'tool'" in as_native.stderr or "'uses'" in as_native.stderr
