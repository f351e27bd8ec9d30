"""Replay and fork (issue 26, item 4): a new run reuses the original's completed steps before
the chosen step (not executed again), runs that step and its downstream again, is linked to
the original, and is refused for a changed workflow, unknown steps and bad ``set_outputs``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import flowyard
import pytest
from flowyard.engine.replay import ReplayError, downstream_of, step_of_key
from flowyard.errors import RunNotFoundError, WorkflowChangedError
from flowyard.interfaces import RunQuery
from flowyard.stack import Stack
from flowyard.tools import BaseTool


class Count(BaseTool):
    """Returns ``value``; records every call (the side effect a replay must not repeat)."""

    def __init__(self) -> None:
        self.name = "count"
        self.description = "returns value, counts calls"
        self.parameters = {"type": "object"}
        self.idempotent = False
        self.side_effects = ("test",)
        self.calls: list[tuple[str, Any]] = []

    async def run(self, arguments: dict[str, Any], context: Any) -> Any:
        self.calls.append((arguments["tag"], arguments.get("value")))
        return arguments.get("value")


class Plugin:
    def __init__(self, tool: Count) -> None:
        self.tool = tool

    @flowyard.hookimpl
    def register_tools(self, register: Any, config: Any) -> None:
        register("count", self.tool)


#: a -> (b, c) -> d; c reads the input n
DIAMOND = {
    "name": "diamond",
    "inputs": {"n": {"type": "integer", "default": 1}},
    "steps": [
        {"id": "a", "uses": "count", "with": {"tag": "a", "value": "A"}},
        {"id": "b", "uses": "count", "with": {"tag": "b", "value": "B({{ steps.a.output }})"}},
        {"id": "c", "uses": "count",
         "with": {"tag": "c", "value": "C({{ steps.a.output }},{{ inputs.n }})"}},
        {"id": "d", "uses": "count",
         "with": {"tag": "d", "value": "{{ steps.b.output }}+{{ steps.c.output }}"}},
    ],
    "outputs": {"d": "${d}"},
}


def test_downstream_and_keys() -> None:
    stack = Stack([Plugin(Count())])
    wf = stack.load_workflow(DIAMOND)
    assert downstream_of(stack, wf, "a") == {"a", "b", "c", "d"}
    assert downstream_of(stack, wf, "c") == {"c", "d"}
    assert downstream_of(stack, wf, "d") == {"d"}
    with pytest.raises(ReplayError, match="'zz' is not a step"):
        downstream_of(stack, wf, "zz")
    assert [step_of_key(k) for k in ("s", "s[3]", "s#2", "a.b[1]")] == ["s", "s", "s", "a.b"]


@pytest.mark.anyio
async def test_replay_from_the_middle_with_a_changed_output() -> None:
    tool = Count()
    stack = Stack([Plugin(tool)])
    async with stack:
        first = await stack.run(DIAMOND, run_id="orig")
        assert first.outputs == {"d": "B(A)+C(A,1)"}
        original = await stack.storage.get_run("orig")
        tool.calls.clear()
        result = await stack.replay("orig", from_step="c", set_outputs={"b": "B2"},
                                    inputs={"n": 5})
        record = await stack.storage.get_run(result.run_id)
        events = await stack.storage.list_events(result.run_id)
        attempts = await stack.storage.list_attempts(result.run_id)
        checkpoints = await stack.storage.load_checkpoints(result.run_id)
        after = await stack.storage.get_run("orig")
    assert result.status == "completed" and result.run_id != "orig"
    assert sorted(tag for tag, _ in tool.calls) == ["c", "d"]  # a and b not executed again
    assert result.outputs == {"d": "B2+C(A,5)"}
    assert result.steps["a"].resumed and result.steps["b"].resumed
    assert not result.steps["c"].resumed and not result.steps["d"].resumed
    assert sorted(a.step_key for a in attempts) == ["c", "d"]
    assert checkpoints == {"a": "A", "b": "B2", "c": "C(A,5)", "d": "B2+C(A,5)"}
    assert record.metadata["replayed_from"] == "orig"
    assert record.metadata["replay_from_step"] == "c"
    assert record.metadata["replay_reused"] == ["a", "b"]
    assert record.metadata["replay_set"] == ["b"]
    assert record.inputs == {"n": 5} and record.resume_count == 0
    reused = {e.step_id: e.data for e in events if e.type == "step.completed"
              and e.data.get("resumed")}
    assert set(reused) == {"a", "b"}
    assert all(d["replayed_from"] == "orig" for d in reused.values())
    assert reused["b"].get("output_set") is True and "output_set" not in reused["a"]
    started = next(e for e in events if e.type == "run.started")
    assert started.data["replayed_from"] == "orig" and started.data["replay_from_step"] == "c"
    # the original is untouched
    assert (after.status, after.outputs, after.metadata, after.inputs) == (
        original.status, original.outputs, original.metadata, original.inputs)


@pytest.mark.anyio
async def test_replay_refusals_store_nothing(tmp_path: Path) -> None:
    tool = Count()
    stack = Stack([Plugin(tool)])
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(DIAMOND))
    async with stack:
        await stack.run(path, run_id="orig")
        before = await stack.storage.list_runs(RunQuery())
        with pytest.raises(RunNotFoundError):
            await stack.replay("nope", from_step="c")
        with pytest.raises(ReplayError, match="'zz' is not a step"):
            await stack.replay("orig", from_step="zz")
        with pytest.raises(ReplayError, match="step 'd': it runs again"):
            await stack.replay("orig", from_step="c", set_outputs={"d": 1})
        with pytest.raises(ReplayError, match="step 'c': it runs again"):
            await stack.replay("orig", from_step="c", set_outputs={"c": 1})
        with pytest.raises(ReplayError, match="no such step"):
            await stack.replay("orig", from_step="c", set_outputs={"../x": 1})
        for hostile in (float("nan"), object(), "\ud800", {"k": {1, 2}}):
            with pytest.raises(ReplayError, match="cannot be stored as JSON"):
                await stack.replay("orig", from_step="c", set_outputs={"b": hostile})
        with pytest.raises(flowyard.WorkflowValidationError):
            await stack.replay("orig", from_step="c", inputs={"n": "not a number"})
        assert len(await stack.storage.list_runs(RunQuery())) == len(before)
        changed = dict(DIAMOND, steps=[*DIAMOND["steps"][:3], {
            "id": "d", "uses": "count", "with": {"tag": "d", "value": "changed"}}])
        path.write_text(json.dumps(changed))
        with pytest.raises(WorkflowChangedError, match="changed since run orig"):
            await stack.replay("orig", from_step="c")
        assert len(await stack.storage.list_runs(RunQuery())) == len(before)
    assert sorted(tag for tag, _ in tool.calls) == ["a", "b", "c", "d"]


@pytest.mark.anyio
async def test_replay_reuses_fan_out_and_loop_steps_and_chains() -> None:
    tool = Count()
    stack = Stack([Plugin(tool)])
    wf = {"name": "fan", "steps": [
        {"id": "each", "uses": "count", "for_each": [1, 2, 3],
         "with": {"tag": "each", "value": "{{ item }}"}},
        {"id": "loop", "uses": "count", "until": "{{ iteration >= 2 }}", "max_iterations": 5,
         "with": {"tag": "loop", "value": "{{ iteration }}"}},
        {"id": "sum", "uses": "count",
         "with": {"tag": "sum", "value": "{{ steps.each.output | join(',') }}/"
                                         "{{ steps.loop.output }}"}},
    ], "outputs": {"sum": "${sum}"}}
    async with stack:
        first = await stack.run(wf, run_id="orig")
        calls_first = sorted(tag for tag, _ in tool.calls)
        tool.calls.clear()
        second = await stack.replay("orig", from_step="sum", set_outputs={"each": [7]})
        tool.calls.clear()
        third = await stack.replay(second.run_id, from_step="sum")
        record = await stack.storage.get_run(third.run_id)
    assert first.ok and second.ok and third.ok, (first.error, second.error, third.error)
    assert calls_first.count("each") == 3 and "loop" in calls_first
    assert second.outputs["sum"].startswith("7/") and first.outputs["sum"].startswith("1,2,3/")
    assert second.outputs["sum"].split("/")[1] == first.outputs["sum"].split("/")[1]
    assert [tag for tag, _ in tool.calls] == ["sum"]  # the replay of the replay
    assert third.outputs == second.outputs
    assert record.metadata["replayed_from"] == second.run_id
