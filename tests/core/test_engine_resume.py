"""Crash-safe runs: resume never re-runs a completed step key, in-flight keys keep their
idempotency key, workflow changes are refused without force, resumes are bounded."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import anyio
import pytest

import flowyard
from flowyard.engine import ResumeLimitError
from flowyard.errors import RunNotFoundError, WorkflowChangedError
from flowyard.stack import Stack
from flowyard.tools import BaseTool


class Gate(BaseTool):
    """Counts calls per key; blocks while ``blocked`` holds the value being processed."""

    def __init__(self) -> None:
        self.name = "gate"
        self.description = "blocks chosen values"
        self.parameters = {"type": "object"}
        self.idempotent = False
        self.side_effects = ("test",)
        self.blocked: set[Any] = set()
        self.calls: list[tuple[Any, str]] = []
        self.entered = anyio.Event()

    async def run(self, arguments: dict[str, Any], context: Any) -> Any:
        value = arguments.get("value")
        self.calls.append((value, context.idempotency_key))
        if value in self.blocked:
            self.entered.set()
            await anyio.sleep_forever()
        return value


class Plugin:
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    @flowyard.hookimpl
    def register_tools(self, register: Any, config: Any) -> None:
        register("gate", self.gate)


WF = {
    "name": "resumable",
    "steps": [
        {"id": "a", "uses": "gate", "with": {"value": "a"}},
        {"id": "b", "uses": "gate", "with": {"value": "b-{{ steps.a.output }}"}},
        {"id": "c", "uses": "gate", "with": {"value": "c"}, "depends_on": ["b"]},
    ],
    "outputs": {"c": "${c}", "b": "${b}"},
}


async def interrupted_run(stack: Stack, gate: Gate, workflow: Any, run_id: str, *,
                          resume: bool = False, while_blocked: Any = None) -> None:
    """Run (or resume) until a blocked value is reached, then cancel: a crash of the process.

    ``while_blocked`` is awaited before the cancellation."""
    gate.entered = anyio.Event()
    async with anyio.create_task_group() as tg:
        async def go() -> None:
            if resume:
                await stack.resume(run_id)
            else:
                await stack.run(workflow, run_id=run_id)

        tg.start_soon(go)
        with anyio.fail_after(30):
            await gate.entered.wait()
        await anyio.sleep(0.05)  # let unblocked siblings finish, as a real crash would find
        if while_blocked is not None:
            await while_blocked()
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_resume_skips_completed_and_reuses_idempotency_key() -> None:
    gate = Gate()
    gate.blocked = {"b-a"}
    stack = Stack([Plugin(gate)])
    async with stack:
        await interrupted_run(stack, gate, WF, "run-1")
        assert (await stack.storage.get_run("run-1")).status == "cancelled"
        # emulate a hard crash: the in-flight attempt was never marked finished
        attempts = await stack.storage.list_attempts("run-1")
        inflight = next(a for a in attempts if a.step_key == "b")
        inflight.status = "running"
        await stack.storage.save_attempt(inflight)
        events_before = await stack.storage.list_events("run-1")

        gate.blocked = set()
        result = await stack.resume("run-1")
        attempts = await stack.storage.list_attempts("run-1")
        events = await stack.storage.list_events("run-1")
        record = await stack.storage.get_run("run-1")
    assert result.status == "completed"
    assert result.outputs == {"c": "c", "b": "b-a"}
    assert [v for v, _ in gate.calls].count("a") == 1  # never re-run
    keys = [k for v, k in gate.calls if v == "b-a"]
    assert len(keys) == 2 and keys[0] == keys[1] == hashlib.sha256(b"run-1:b").hexdigest()
    assert result.steps["a"].resumed and not result.steps["b"].resumed
    b_attempts = sorted((a for a in attempts if a.step_key == "b"), key=lambda a: a.attempt)
    assert [(a.attempt, a.status) for a in b_attempts] == [(1, "cancelled"), (2, "completed")]
    assert "interrupted" in b_attempts[0].error
    assert record.resume_count == 1 and result.resume_count == 1
    # event numbering continues after the first run's events
    assert events[len(events_before)].seq == events_before[-1].seq + 1
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


@pytest.mark.anyio
async def test_resume_fan_out_runs_only_unfinished_items() -> None:
    gate = Gate()
    gate.blocked = {2}
    stack = Stack([Plugin(gate)])
    wf = {"name": "fan", "steps": [
        {"id": "each", "uses": "gate", "for_each": [0, 1, 2, 3], "with": {"value": "{{ item }}"}}
    ], "outputs": {"all": "${each}"}}
    async with stack:
        await interrupted_run(stack, gate, wf, "run-fan")
        gate.blocked = set()
        gate.calls.clear()
        result = await stack.resume("run-fan")
    assert result.outputs == {"all": [0, 1, 2, 3]}
    assert [v for v, _ in gate.calls] == [2]
    assert gate.calls[0][1] == hashlib.sha256(b"run-fan:each[2]").hexdigest()


@pytest.mark.anyio
async def test_changed_workflow_file_is_refused_unless_forced(tmp_path: Path) -> None:
    gate = Gate()
    gate.blocked = {"b"}
    path = tmp_path / "wf.yaml"
    path.write_text("name: edit\nsteps:\n  - id: a\n    uses: gate\n    with: {value: a}\n"
                    "  - id: b\n    uses: gate\n    with: {value: b}\n    depends_on: [a]\n")
    stack = Stack([Plugin(gate)])
    async with stack:
        await interrupted_run(stack, gate, path, "run-edit")
        path.write_text(path.read_text().replace("value: b}", "value: b2}"))
        gate.blocked = set()
        with pytest.raises(WorkflowChangedError, match="changed since run run-edit started"):
            await stack.resume("run-edit")
        result = await stack.resume("run-edit", force=True)
        record = await stack.storage.get_run("run-edit")
    assert result.ok and result.steps["b"].output == "b2"
    assert record.workflow["steps"][1]["with"] == {"value": "b2"}
    assert [v for v, _ in gate.calls].count("a") == 1


@pytest.mark.anyio
async def test_stored_definition_is_enough_to_resume() -> None:
    gate = Gate()
    gate.blocked = {"b-a"}
    stack = Stack([Plugin(gate)])
    async with stack:
        await interrupted_run(stack, gate, WF, "run-def")
        gate.blocked = set()
        result = await stack.resume("run-def")
        with pytest.raises(WorkflowChangedError):
            changed = {**WF, "steps": [*WF["steps"][:2],
                                       {"id": "c", "uses": "gate", "with": {"value": "C"}}]}
            await stack.resume("run-def", workflow=changed)
    assert result.ok


@pytest.mark.anyio
async def test_resume_limit_marks_the_run_failed() -> None:
    gate = Gate()
    gate.blocked = {"b-a"}
    stack = Stack([Plugin(gate)], config={"runs": {"max_resume_attempts": 1}})
    async with stack:
        await interrupted_run(stack, gate, WF, "run-lim")
        await interrupted_run(stack, gate, WF, "run-lim", resume=True)  # interrupted again
        with pytest.raises(ResumeLimitError, match="max_resume_attempts"):
            await stack.resume("run-lim")
        record = await stack.storage.get_run("run-lim")
        with pytest.raises(RunNotFoundError):
            await stack.resume("no-such-run")
    assert record.status == "failed" and "max_resume_attempts" in record.error


@pytest.mark.anyio
async def test_stored_status_is_running_while_a_run_or_resume_is_in_flight() -> None:
    gate = Gate()
    gate.blocked = {"b-a"}
    stack = Stack([Plugin(gate)])
    seen: list[str] = []

    async def spy() -> None:
        seen.append((await stack.storage.get_run("run-live")).status)

    async with stack:
        await interrupted_run(stack, gate, WF, "run-live", while_blocked=spy)
        await interrupted_run(stack, gate, WF, "run-live", resume=True, while_blocked=spy)
        final = await stack.storage.get_run("run-live")
    assert seen == ["running", "running"]
    assert final.status == "cancelled" and final.resume_count == 1
