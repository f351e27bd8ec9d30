"""``flowyard run``, ``validate`` and ``resume`` through the real click entry point."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from flowyard.cli import cli
from flowyard.commands.run import parse_inputs

WORKFLOW = """\
name: cli-demo
inputs:
  n: {type: integer}
  tags: {type: array, default: []}
steps:
  - id: double
    uses: echo
    with: {value: "{{ inputs.n * 2 }}"}
  - id: ask
    uses: llm.chat
    with: {prompt: "n is ${double}", model: fake/priced}
outputs:
  double: "${double}"
  answer: "${ask}"
  tags: "{{ inputs.tags }}"
"""


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("FLOWYARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FLOWYARD_STORAGE_URL", "memory://")
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def test_parse_inputs_reads_yaml_scalars_and_json() -> None:
    assert parse_inputs(("n=3", "flag=true", "name=Ada", "tags=[a, b]", 'obj={"k": 1}',
                         "empty=")) == {"n": 3, "flag": True, "name": "Ada",
                                        "tags": ["a", "b"], "obj": {"k": 1}, "empty": ""}
    import click

    with pytest.raises(click.BadParameter, match="not key=value"):
        parse_inputs(("novalue",))


def test_run_prints_a_summary_and_exits_zero(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    result = runner.invoke(cli, ["run", "wf.yaml", "-i", "n=21", "-i", "tags=[x]"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "cli-demo: completed" in out
    assert "run " in out and "2 steps (2 completed)" in out
    assert "tokens 3 in / 4 out" in out and "cost $0.000011" in out
    assert '"answer": "echo: n is 42"' in out


def test_run_json_gives_the_run_result(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    result = runner.invoke(cli, ["run", "wf.yaml", "-i", "n=1", "--json", "--run-id", "r1"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["run_id"] == "r1" and data["status"] == "completed"
    assert data["outputs"] == {"double": 2, "answer": "echo: n is 2", "tags": []}
    assert data["steps"]["ask"]["input_tokens"] == 3
    assert data["steps"]["double"]["duration_s"] >= 0


def test_failed_run_exits_one_and_invalid_inputs_exit_two(runner: CliRunner,
                                                         tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "name: bad\nsteps:\n  - id: x\n    uses: llm.chat\n"
        "    with: {prompt: hi, model: fake/missing}\n")
    result = runner.invoke(cli, ["run", "bad.yaml"])
    assert result.exit_code == 1
    assert "bad: failed" in result.output and "missing" in result.output
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    result = runner.invoke(cli, ["run", "wf.yaml", "-i", "n=three"])
    assert result.exit_code == 2
    assert "input 'n' must be of type integer" in result.output


def test_validate_reports_locations(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    ok = runner.invoke(cli, ["validate", "wf.yaml"])
    assert ok.exit_code == 0 and "ok: workflow 'cli-demo', 2 step(s)" in ok.output
    assert "required inputs: n" in ok.output
    (tmp_path / "broken.yaml").write_text(WORKFLOW.replace("uses: echo", "uses: ecko"))
    bad = runner.invoke(cli, ["validate", "broken.yaml"])
    assert bad.exit_code == 2
    assert "broken.yaml:7:11: unknown action 'ecko'" in bad.output
    as_json = runner.invoke(cli, ["validate", "broken.yaml", "--json"])
    assert as_json.exit_code == 2
    data = json.loads(as_json.stdout)
    assert data["valid"] is False
    assert data["issues"][0]["line"] == 7 and data["issues"][0]["column"] == 11


def test_run_and_validate_agree_on_an_invalid_workflow(runner: CliRunner,
                                                       tmp_path: Path) -> None:
    """The same invalid file: the same exit status, and JSON with --json from both."""
    (tmp_path / "broken.yaml").write_text(WORKFLOW.replace("uses: echo", "uses: ecko"))
    validated = runner.invoke(cli, ["validate", "broken.yaml", "--json"])
    ran = runner.invoke(cli, ["run", "broken.yaml", "-i", "n=1", "--json"])
    assert validated.exit_code == ran.exit_code == 2
    assert json.loads(ran.stdout) == json.loads(validated.stdout)
    plain = runner.invoke(cli, ["run", "broken.yaml", "-i", "n=1"])
    assert plain.exit_code == 2 and "broken.yaml:7:11: unknown action 'ecko'" in plain.output
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    bad_input = runner.invoke(cli, ["run", "wf.yaml", "-i", "n=three", "--json"])
    assert bad_input.exit_code == 2
    assert json.loads(bad_input.stdout)["valid"] is False


def test_resume_unknown_run_is_an_error(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["resume", "nope"])
    assert result.exit_code == 1
    assert "nope" in result.output


@pytest.mark.anyio
async def test_live_view_tracks_steps_status_and_tokens() -> None:
    from rich.console import Console

    from flowyard.commands.run import _LiveView
    from flowyard.stack import Stack

    stack = Stack()
    workflow = stack.load_workflow(WORKFLOW)
    view = _LiveView(workflow)
    stack.events.subscribe(view)
    async with stack:
        await stack.run(workflow, {"n": 2})
    console = Console(record=True, width=120)
    console.print(view.render())
    text = console.export_text()
    assert "double" in text and "ask" in text and "pending" not in text
    assert text.count("completed") == 2
    assert view.rows["ask"]["tokens"] == 7 and view.tokens == 7
    assert "cost $0.000011" in text


def test_inputs_file_and_flags_combine(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    (tmp_path / "in.yaml").write_text("n: 5\ntags: [from-file]\n")
    result = runner.invoke(cli, ["run", "wf.yaml", "--inputs", "in.yaml", "-i", "n=6",
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["outputs"]["double"] == 12
    assert json.loads(result.stdout)["outputs"]["tags"] == ["from-file"]
    (tmp_path / "list.yaml").write_text("- 1\n")
    bad = runner.invoke(cli, ["run", "wf.yaml", "--inputs", "list.yaml"])
    assert bad.exit_code == 2 and "must hold a mapping" in bad.output


def test_summary_prints_errors_as_text_not_markup(runner: CliRunner, tmp_path: Path) -> None:
    """An error or step id that looks like rich markup is shown as it is."""
    (tmp_path / "bad.yaml").write_text(
        "name: bad\nsteps:\n  - id: x\n    uses: llm.chat\n"
        "    with: {prompt: hi, model: \"fake/[exec] [red]missing\"}\n")
    result = runner.invoke(cli, ["run", "bad.yaml"])
    assert result.exit_code == 1
    assert "[exec] [red]missing" in result.output


FAN_OUT = """\
name: fan-out-demo
steps:
  - id: first
    uses: echo
    with: {value: 1}
  - id: each
    depends_on: [first]
    for_each: "{{ [1, 2, 3] }}"
    max_parallel: 2
    uses: echo
    with: {value: "{{ item }}"}
"""


def test_summary_shows_wall_times_of_steps_items_and_run(runner: CliRunner,
                                                          tmp_path: Path) -> None:
    """Issue 17: each step's wall time, a fan-out's item count and median/max item time, and
    the run's wall time, in the plain summary and in --json."""
    (tmp_path / "fan.yaml").write_text(FAN_OUT)
    plain = runner.invoke(cli, ["run", "fan.yaml", "--no-live"])
    assert plain.exit_code == 0, plain.output
    out = plain.output
    assert "wall time" in out and "items (median/max)" in out
    assert re.search(r"3 \(\d+\.\d\ds/\d+\.\d\ds\)", out), out
    assert re.search(r"wall time \d+\.\d\ds \(\d+\.\d\ds with start-up\)", out), out

    result = runner.invoke(cli, ["run", "fan.yaml", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    each, first = data["steps"]["each"], data["steps"]["first"]
    assert each["items"] == 3
    assert 0 <= each["item_median_s"] <= each["item_max_s"] <= each["duration_s"]
    assert "items" not in first and first["duration_s"] >= 0
    assert 0 <= data["duration_s"] <= data["command_duration_s"]


def test_step_timings_count_retries_in_an_items_time() -> None:
    """An item's time runs from its first try's start to its last try's end."""
    from flowyard.commands.run import step_timings
    from flowyard.models import StepAttempt
    from flowyard.workflow import RunResult, StepResult

    result = RunResult("r", "w", "completed", steps={
        "each": StepResult("each", "completed", started_at=0.0, finished_at=10.0),
        "solo": StepResult("solo", "completed", started_at=10.0, finished_at=11.0)})

    def attempt(key: str, n: int, start: float, end: float | None, step: str = "each"
                ) -> StepAttempt:
        return StepAttempt("r", step, key, n, started_at=start, finished_at=end)

    timings = step_timings(result, [
        attempt("each[0]", 1, 0.0, 2.0), attempt("each[0]", 2, 2.5, 6.0),
        attempt("each[1]", 1, 0.0, 1.0), attempt("each[2]", 1, 1.0, 4.0),
        attempt("each[3]", 1, 4.0, None), attempt("solo", 1, 10.0, 11.0, "solo")])
    assert timings["each"] == {"wall_s": 10.0, "items": 4, "item_median_s": 3.0,
                               "item_max_s": 6.0}
    assert timings["solo"] == {"wall_s": 1.0}


def test_a_run_waiting_for_a_human_exits_three_and_says_how_to_answer(
        runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "wait.yaml").write_text(
        "name: approve-me\n"
        "steps:\n"
        "  - id: ok\n"
        "    uses: human.approve\n"
        "    with: {prompt: 'Publish [red]this[/]?'}\n")
    result = runner.invoke(cli, ["run", "wait.yaml", "--no-live"])
    assert result.exit_code == 3, result.output
    assert "waiting:" in result.output and "flowyard runs answer" in result.output
    assert re.search(r"runs answer [0-9a-f]{32} ok --json VALUE", result.output)
    assert "Publish [red]this[/]?" in result.output  # markup in the prompt shown as text
