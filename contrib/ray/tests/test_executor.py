"""The ray executor on a real two-node Ray cluster: the executor contract, and workflows
that behave as with the local executor (DAG, data flow, retries, priorities, events,
budgets), resources.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import flowyard
import pytest
from flowyard.testing.contracts import ExecutorContract

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ray_tools
from flowyard_ray import RayExecutor

pytestmark = pytest.mark.anyio


class TestRayExecutorContract(ExecutorContract):
    @pytest.fixture
    def executor(self, ray_config: dict[str, Any]) -> Any:
        return RayExecutor(flowyard.Config(ray_config))


def _stack(config: dict[str, Any], executor: str) -> flowyard.Stack:
    return flowyard.Stack([ray_tools], config={**config, "engine": {"executor": executor}},
                          discover=True)


def _workflow(marks: Path) -> dict[str, Any]:
    m = str(marks)
    return {
        "name": "ray-dag", "max_concurrency": 1,
        "steps": [
            {"id": "a", "uses": "t.add", "with": {"a": 1, "b": 2, "marks": m, "key": "a"}},
            # ready with fan's items and flaky once `a` is done, competing for the one slot
            # (`hold` keeps it 0.5 s when it gets it): waiters get it by priority
            {"id": "hold", "uses": "t.order", "depends_on": ["a"],
             "with": {"marks": m, "name": "hold", "hold_s": 0.5}},
            {"id": "low", "uses": "t.order", "depends_on": ["a"], "priority": 1,
             "with": {"marks": m, "name": "low"}},
            {"id": "high", "uses": "t.order", "depends_on": ["a"], "priority": 9,
             "with": {"marks": m, "name": "high"}},
            {"id": "mid", "uses": "t.order", "depends_on": ["a"], "priority": 5,
             "with": {"marks": m, "name": "mid"}},
            {"id": "fan", "uses": "t.add", "for_each": [10, 20, 30],
             "with": {"a": "${a.sum}", "b": "{{ item }}", "marks": m, "key": "fan"}},
            {"id": "flaky", "uses": "t.flaky", "depends_on": ["a"],
             "retry": {"attempts": 3, "backoff": 0.01, "on": ["retriable"]},
             "with": {"marks": m, "fail_times": 1}},
            {"id": "chat", "uses": "llm.chat", "depends_on": ["high"],
             "with": {"model": "fake/priced", "prompt": "sum is ${a.sum}"}},
        ],
        "outputs": {"total": "{{ steps.fan.output | map(attribute='sum') | sum }}",
                    "reply": "${chat}"},
    }


def _view(result: flowyard.RunResult) -> dict[str, Any]:
    def clean(value: Any) -> Any:  # where a step ran differs between executors
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in ("pid", "node_id")}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return {"status": result.status, "outputs": result.outputs,
            "tokens": (result.input_tokens, result.output_tokens),
            "cost": result.cost_usd,
            "steps": {k: (s.status, s.attempts, clean(s.output)) for k, s in
                      result.steps.items()}}


async def _events(stack: flowyard.Stack, run_id: str) -> list[tuple[str, str | None]]:
    events = await stack.storage.list_events(run_id)
    return [(e.type, e.step_id) for e in events
            if e.type.startswith(("step.", "tool.", "llm.", "run."))
            and e.type not in ("step.retrying",)]


async def test_workflow_behaves_as_with_the_local_executor(ray_config: dict[str, Any],
                                                          tmp_path: Path) -> None:
    views, events, orders, where = {}, {}, {}, {}
    for executor in ("local", "ray"):
        marks = tmp_path / executor
        marks.mkdir()
        stack = _stack(ray_config, executor)
        await stack.open()
        try:
            result = await stack.run(_workflow(marks), {})
            views[executor] = _view(result)
            events[executor] = await _events(stack, result.run_id)
            costs = await stack.storage.list_costs(result.run_id)
            where[executor] = {o["pid"] for o in result.steps["fan"].output}
        finally:
            await stack.aclose()
        orders[executor] = (marks / "order").read_text().split()
        # every step key ran once; the flaky step twice (one retry)
        assert (marks / "a").read_text().count("\n") == 1
        assert (marks / "fan").read_text().count("\n") == 3
        assert (marks / "flaky").read_text().count("\n") == 2
        assert len(costs) == 1 and costs[0].model == "priced" and costs[0].cost_usd > 0
    assert views["ray"] == views["local"]
    assert views["ray"]["status"] == "completed"
    assert views["ray"]["outputs"]["total"] == 3 * 3 + 60
    assert views["ray"]["steps"]["flaky"][:2] == ("completed", 2)
    # whichever step took the free slot first, the ones that waited for it got it by
    # priority, on both executors
    rank = {"high": 9, "mid": 5, "low": 1, "hold": 0}
    for order in orders.values():
        assert sorted(order) == ["high", "hold", "low", "mid"]
        waited = order[1:]
        assert waited == sorted(waited, key=lambda name: -rank[name]), orders
    assert sorted(events["ray"]) == sorted(events["local"])
    assert ("llm.call", "chat") in events["ray"] and ("tool.call", "fan") in events["ray"]
    assert where["local"] == {os.getpid()}  # the local executor runs steps in place
    assert os.getpid() not in where["ray"]  # the ray executor in Ray's workers


async def test_budget_of_a_remote_step_is_enforced_and_charged(ray_config: dict[str, Any]
                                                              ) -> None:
    # fake/priced: 1 $/M input and 2 $/M output tokens; a budget far below one call's
    # reserved maximum refuses the call on the worker, and nothing is spent
    workflow = {"name": "ray-budget", "budget_usd": 1e-9, "steps": [
        {"id": "chat", "uses": "llm.chat", "with": {"model": "fake/priced", "prompt": "hi"}}]}
    stack = _stack(ray_config, "ray")
    await stack.open()
    try:
        result = await stack.run(workflow, {})
        attempts = await stack.storage.list_attempts(result.run_id)
    finally:
        await stack.aclose()
    assert result.status == "failed"
    assert [a.status for a in attempts if a.step_key == "chat"][-1] == "budget_exceeded"
    assert "budget" in (result.error or "").lower()
    assert result.cost_usd == 0


async def test_resources_place_steps_and_impossible_ones_fail_clearly(
        ray_config: dict[str, Any], tmp_path: Path) -> None:
    workflow = {"name": "ray-resources", "steps": [
        {"id": "fits", "uses": "t.add", "resources": {"num_cpus": 1, "memory": "50MB"},
         "with": {"a": 1, "b": 1}},
        {"id": "too_big", "uses": "t.add", "depends_on": ["fits"],
         "resources": {"num_cpus": 2}, "with": {"a": 1, "b": 1}},
    ]}
    stack = _stack(ray_config, "ray")
    await stack.open()
    try:
        started = time.monotonic()
        result = await stack.run(workflow, {})
    finally:
        await stack.aclose()
    assert result.steps["fits"].status == "completed"
    assert result.steps["fits"].output["sum"] == 2
    assert result.steps["too_big"].status == "failed"
    assert "too_big" in (result.error or "") and "no node" in (result.error or "")
    assert "'CPU': 2" in (result.error or "")
    assert time.monotonic() - started < 60  # refused, not waiting for a 2-CPU node


async def test_bad_ray_configuration_is_a_clear_error() -> None:
    from flowyard_ray.executor import settings

    with pytest.raises(flowyard.ConfigError, match=r"\[ray\] unknown key"):
        settings(flowyard.Config({"ray": {"adress": "auto"}}))
    with pytest.raises(flowyard.ConfigError, match=r"\[ray\] actors must be an integer"):
        settings(flowyard.Config({"ray": {"actors": 0}}))


def test_step_resources_are_checked_and_normalized_when_the_workflow_loads() -> None:
    workflow = flowyard.parse_workflow({"name": "r", "steps": [
        {"id": "a", "uses": "t.add", "resources": {"num_cpus": 0.5, "memory": "512MiB",
                                                   "model_slot": 1}}]})
    assert workflow.steps[0].resources == {"num_cpus": 0.5, "memory": 512 * 2**20,
                                           "model_slot": 1}
    with pytest.raises(flowyard.WorkflowValidationError) as info:
        flowyard.parse_workflow({"name": "r", "steps": [
            {"id": "a", "uses": "t.add", "resources": {"num_cpus": -1, "memory": "2XB"}},
            {"id": "b", "uses": "t.add", "resources": [1]}]})
    messages = [(issue.message, issue.path) for issue in info.value.issues]
    assert ("must be >= 0, got -1", "steps[0].resources.num_cpus") in messages
    assert any(path == "steps[0].resources.memory" and "2XB" in message
               for message, path in messages)
    assert any(path == "steps[1].resources" and "must be a mapping" in message
               for message, path in messages)


async def test_a_plugin_the_workers_cannot_import_is_a_clear_error(
        ray_config: dict[str, Any]) -> None:
    config = {**ray_config, "ray": {**ray_config["ray"], "plugins": ["no_such_module:plugin"]}}
    stack = _stack(config, "ray")
    await stack.open()
    try:
        result = await stack.run({"name": "bad-plugin", "steps": [
            {"id": "a", "uses": "t.add", "with": {"a": 1, "b": 1}}]}, {})
    finally:
        await stack.aclose()
    assert result.status == "failed"
    assert "no_such_module" in (result.error or "")
    assert "cannot import" in (result.error or "")


async def test_a_step_timeout_cancels_the_call_on_its_worker(ray_config: dict[str, Any],
                                                             tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    workflow = {"name": "ray-timeout", "steps": [
        {"id": "stuck", "uses": "t.slow", "timeout": 6,
         "with": {"marks": str(marks), "name": "stuck", "release": str(tmp_path / "never")}}]}
    stack = _stack(ray_config, "ray")
    await stack.open()
    try:
        started = time.monotonic()
        result = await stack.run(workflow, {})
    finally:
        await stack.aclose()
    assert result.status == "failed"
    assert "timed out after 6" in (result.error or "")
    assert time.monotonic() - started < 30
    # the call saw its cancellation where it ran, and did not go on
    worker_pid = int((marks / "started-stuck").read_text().split()[0])
    assert worker_pid != os.getpid()
    assert (marks / "cancelled-stuck").read_text().split()[0] == str(worker_pid)
    assert not (marks / "done-stuck").exists()
