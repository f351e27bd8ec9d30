"""The live view of ``flowyard run``: progress (done/total, rate, ETA) and streamed answers
rendered through rich, sub-workflow runs under their parent step, and a clean ``--json`` /
pipe output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from flowyard.cli import cli
from flowyard.commands.run import _LiveView, _Tail
from flowyard.events import EventBus
from flowyard.models import Event
from flowyard.stack import Stack

PARENT = """\
name: docs-qa
inputs:
  questions: {type: array, default: [alpha, beta]}
steps:
  - id: index
    uses: echo
    with: {value: indexed}
  - id: answers
    depends_on: [index]
    for_each: "{{ inputs.questions }}"
    max_parallel: 1
    uses: workflow
    with:
      workflow: child.yaml
      inputs: {question: "{{ item }}"}
outputs:
  answers: "${answers}"
"""

CHILD = """\
name: answer-one
inputs:
  question: {type: string}
steps:
  - id: answer
    uses: llm.chat
    with: {prompt: "{{ inputs.question }}", model: fake/echo}
outputs:
  answer: "${answer}"
"""


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _text(renderable: Any, width: int = 160) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(renderable)
    return console.export_text()


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "qa.yaml").write_text(PARENT)
    (tmp_path / "child.yaml").write_text(CHILD)
    return tmp_path


def test_progress_shows_done_total_rate_and_eta_then_the_answer_tail(files: Path) -> None:
    clock = Clock()
    view = _LiveView(Stack().load_workflow(files / "qa.yaml"), clock=clock)
    bus = EventBus()
    bus.clock = clock
    bus.subscribe(view, transient=True)
    bus.make("run.started", "main", workflow="docs-qa")
    bus.make("step.started", "main", "index")
    for now, done in ((0.0, 0), (1.0, 60), (2.0, 120)):
        clock.now = now
        bus.progress("main", "index", "index", done, 500, unit="chunks",
                     description="embedding")
    text = _text(view.render())
    assert "embedding" in text and "120/500" in text and "chunks" in text
    assert "60.0 chunks/s" in text  # 60 chunks in the last second
    assert "ETA 0:00:07" in text  # 380 left at 60/s
    clock.now = 3.0
    bus.make("step.completed", "main", "index")
    text = _text(view.render())
    assert "120/500" not in text and "completed" in text

    # a sub-workflow run of answers[1] streams its answer: shown under "answers"
    bus.make("step.started", "main", "answers")
    bus.progress("main", "answers", "answers", 1, 2)
    bus.make("run.started", "child-1", parent_run_id="main", parent_step="answers[1]")
    bus.make("step.started", "child-1", "answer")
    clock.now = 4.0
    bus.text("child-1", "answer", "answer", "The global statement declares ")
    clock.now = 5.0
    bus.text("child-1", "answer", "answer", "names [bold]module-level[/].")
    bus.make("llm.call", "child-1", "answer", input_tokens=10, output_tokens=7, cost_usd=0.0)
    text = _text(view.render())
    assert "1/2 items" in text
    assert "answers[1] › answer" in text
    assert "The global statement declares names [bold]module-level[/]." in text  # no markup
    assert view.rows["answers"]["tokens"] == 17 and view.tokens == 17
    # a narrow terminal keeps the end of the answer
    tail = _text(_Tail("The global statement declares names module-level."), width=20)
    assert tail.strip() == "…names module-level."
    bus.make("step.completed", "child-1", "answer")
    assert "answers[1] › answer" not in _text(view.render())


def test_sparse_reports_still_show_a_rate_and_eta(files: Path) -> None:
    clock = Clock()
    view = _LiveView(Stack().load_workflow(files / "qa.yaml"), clock=clock)
    bus = EventBus()
    bus.clock = clock
    bus.subscribe(view, transient=True)
    bus.make("run.started", "main")
    bus.make("step.started", "main", "index")
    bus.progress("main", "index", "index", 64, 821, unit="chunks", description="embedding")
    assert "chunks/s" not in _text(view.render())  # nothing done in this phase yet
    for now, done in ((100.0, 128), (200.0, 192)):  # further apart than rich's window
        clock.now = now
        bus.progress("main", "index", "index", done, 821, unit="chunks",
                     description="embedding")
    text = _text(view.render())
    # the average since the phase began: 128 chunks in 200 s; 629 left at that rate
    assert "192/821" in text and "0.64 chunks/s" in text and "ETA 0:16:23" in text


def test_a_new_attempt_starts_the_streamed_text_afresh(files: Path) -> None:
    view = _LiveView(Stack().load_workflow(files / "qa.yaml"))
    bus = EventBus()
    bus.subscribe(view, transient=True)
    bus.make("run.started", "main")
    bus.text("main", "index", "index", "first try", final=True)
    assert view.lines[("main", "index")].text == "first try"
    bus.text("main", "index", "index", "second", final=True, attempt=2)
    assert view.lines[("main", "index")].text == "second"


@pytest.mark.anyio
async def test_a_real_run_shows_each_answer_growing_under_its_parent_step(
        flowyard_home: Path, files: Path) -> None:
    stack = Stack(config={"storage": {"url": "memory://"}})
    answer = " ".join(f"word{i}" for i in range(40))
    stack.providers.get("fake").add(answer, answer)
    workflow = stack.load_workflow(files / "qa.yaml")
    view = _LiveView(workflow)
    stack.events.subscribe(view, transient=True)
    snapshots: list[str] = []

    def snapshot(event: Event) -> None:  # runs after the view took the same event
        if event.type == "step.delta":
            snapshots.append(_text(view.render(), width=200))

    stack.events.subscribe(snapshot, transient=True)
    async with stack:
        result = await stack.run(workflow, {})
    assert result.ok
    assert [a["answer"] for a in result.outputs["answers"]] == [answer, answer]
    assert any("answers[0] › answer" in s and "word39" in s for s in snapshots)
    assert any("answers[1] › answer" in s for s in snapshots)
    assert any("0/2 items" in s or "1/2 items" in s for s in snapshots)
    final = _text(view.render())
    assert "›" not in final and final.count("completed") == 2
    assert view.rows["answers"]["tokens"] == view.tokens > 0


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("FLOWYARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FLOWYARD_STORAGE_URL", "memory://")
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def test_json_and_piped_output_carry_no_progress(runner: CliRunner, files: Path) -> None:
    result = runner.invoke(cli, ["run", str(files / "qa.yaml"), "--json", "--run-id", "r1"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # one JSON document, nothing else on stdout
    assert data["run_id"] == "r1" and data["status"] == "completed"
    assert data["outputs"] == {"answers": [{"answer": "echo: alpha"},
                                           {"answer": "echo: beta"}]}
    assert set(data["steps"]) == {"index", "answers"}
    for noise in ("step.progress", "step.delta", "items/s", "ETA", "›"):
        assert noise not in result.output
    piped = runner.invoke(cli, ["run", str(files / "qa.yaml")])
    assert piped.exit_code == 0, piped.output
    assert "docs-qa: completed" in piped.output
    for noise in ("items/s", "ETA", "›", "/2 items"):
        assert noise not in piped.output
