"""The DAG engine: dependencies, fan-out, loops, retries, timeouts, error policies, priority,
cancellation, events, storage records, streaming, tokens and cost."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

import flowyard
from flowyard.context import ToolContext
from flowyard.errors import BudgetExceeded, ToolError, WorkflowValidationError
from flowyard.models import Event
from flowyard.stack import Stack
from flowyard.tools import BaseTool


class Plugin:
    """Registers the given tools and providers."""

    def __init__(self, tools: list[Any] = (), providers: list[Any] = ()) -> None:  # type: ignore[assignment]
        self.tools = list(tools)
        self.providers = list(providers)

    @flowyard.hookimpl
    def register_tools(self, register: Any, config: Any) -> None:
        for t in self.tools:
            register(t.name, t)

    @flowyard.hookimpl
    def register_providers(self, register: Any, config: Any) -> None:
        for p in self.providers:
            register(p.name, p)


class Recorder(BaseTool):
    """Records calls; can fail the first ``fail_times`` calls or sleep."""

    def __init__(self, name: str, *, fail_times: int = 0, error: Exception | None = None,
                 delay: float = 0.0) -> None:
        self.name = name
        self.description = "records calls"
        self.parameters = {"type": "object"}
        self.idempotent = True
        self.side_effects = ()
        self.calls: list[dict[str, Any]] = []
        self.contexts: list[Any] = []
        self.fail_times = fail_times
        self.error = error or ToolError("boom", tool=name, retriable=True)
        self.delay = delay
        self.active = 0
        self.max_active = 0
        self.order: list[Any] = []

    async def run(self, arguments: dict[str, Any], context: Any) -> Any:
        self.calls.append(arguments)
        self.contexts.append(context)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.delay:
                await anyio.sleep(self.delay)
            if len(self.calls) <= self.fail_times:
                raise self.error
            self.order.append(arguments.get("tag"))
            return arguments.get("value", len(self.calls))
        finally:
            self.active -= 1


@flowyard.tool(name="math.add", idempotent=True)
def add(a: int, b: int = 0) -> int:
    """Add two integers.

    Args:
        a: the first number.
        b: the second number.
    """
    return a + b


def make_stack(*tools: Any, providers: list[Any] = (), **config: Any) -> Stack:  # type: ignore[assignment]
    return Stack([Plugin([add, *tools], list(providers))], config=config or None)


def events_of(stack: Stack) -> list[Event]:
    seen: list[Event] = []
    stack.events.subscribe(seen.append)
    return seen


@pytest.mark.anyio
async def test_dependencies_inferred_and_explicit_run_in_order() -> None:
    rec = Recorder("rec")
    stack = make_stack(rec)
    wf = {
        "name": "chain",
        "inputs": {"x": {"type": "integer"}},
        "steps": [
            {"id": "c", "uses": "rec", "depends_on": ["b"], "with": {"tag": "c"}},
            {"id": "b", "uses": "math.add", "with": {"a": "${a}", "b": 1}},
            {"id": "a", "uses": "math.add", "with": {"a": "{{ inputs.x }}", "b": 1}},
        ],
        "outputs": {"b": "{{ steps.b.output }}", "text": "b={{ steps.b.output }}"},
    }
    async with stack:
        result = await stack.run(wf, {"x": 40})
    assert result.status == "completed", result.error
    assert result.outputs == {"b": 42, "text": "b=42"}
    assert result.steps["a"].finished_at <= result.steps["b"].started_at
    assert result.steps["b"].finished_at <= result.steps["c"].started_at
    assert rec.order == ["c"]


@pytest.mark.anyio
async def test_storage_records_run_attempts_checkpoints_and_events() -> None:
    stack = make_stack()
    wf = {"name": "store", "steps": [
        {"id": "a", "uses": "math.add", "with": {"a": 1, "b": 2}},
        {"id": "b", "uses": "echo", "for_each": ["x", "y"], "with": {"value": "{{ item }}"}},
    ], "outputs": {"a": "${a}"}}
    async with stack:
        result = await stack.run(wf)
        run = await stack.storage.get_run(result.run_id)
        attempts = await stack.storage.list_attempts(result.run_id)
        checkpoints = await stack.storage.load_checkpoints(result.run_id)
        events = await stack.storage.list_events(result.run_id)
    assert run.status == "completed"
    assert run.outputs == {"a": 3}
    assert run.workflow["name"] == "store" and len(run.workflow_hash) == 64
    assert sorted(a.step_key for a in attempts) == ["a", "b[0]", "b[1]"]
    assert all(a.status == "completed" and len(a.idempotency_key) == 64 for a in attempts)
    assert checkpoints == {"a": 3, "b[0]": "x", "b[1]": "y", "b": ["x", "y"]}
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    types = [e.type for e in events]
    assert types[0] == "run.started" and types[-1] == "run.finished"
    assert types.count("tool.call") == 3
    finished = events[-1].data
    assert finished["status"] == "completed"
    assert finished["steps"] == {"completed": 2}


@pytest.mark.anyio
async def test_for_each_collects_in_input_order_with_max_parallel() -> None:
    rec = Recorder("rec", delay=0.01)
    stack = make_stack(rec)
    wf = {"name": "fan", "inputs": {"items": {"type": "array"}}, "steps": [
        {"id": "each", "uses": "rec", "for_each": "{{ inputs.items }}", "max_parallel": 2,
         "with": {"value": "{{ item }}-{{ index }}"}},
    ], "outputs": {"all": "${each}"}}
    async with stack:
        result = await stack.run(wf, {"items": ["a", "b", "c", "d", "e"]})
    assert result.outputs["all"] == ["a-0", "b-1", "c-2", "d-3", "e-4"]
    assert rec.max_active == 2


@pytest.mark.anyio
async def test_global_concurrency_limit_and_priority() -> None:
    rec = Recorder("rec", delay=0.01)
    stack = make_stack(rec)
    steps = [{"id": f"s{i}", "uses": "rec", "priority": i, "with": {"tag": i}}
             for i in range(6)]
    async with stack:
        result = await stack.run({"name": "prio", "steps": steps}, max_concurrency=1)
    assert result.ok
    assert rec.max_active == 1
    # the first one to grab the free slot runs first; the rest go by descending priority
    assert rec.order[1:] == sorted(rec.order[1:], reverse=True)


@pytest.mark.anyio
async def test_when_skips_and_dependents_still_run() -> None:
    stack = make_stack()
    wf = {"name": "cond", "inputs": {"go": {"type": "boolean", "default": False}}, "steps": [
        {"id": "maybe", "uses": "echo", "when": "inputs.go", "with": {"value": 1}},
        {"id": "after", "uses": "echo", "with": {"value": "{{ steps.maybe.status }}"}},
    ], "outputs": {"after": "${after}", "maybe": "${maybe}"}}
    async with stack:
        off = await stack.run(wf)
        on = await stack.run(wf, {"go": True})
    assert off.steps["maybe"].status == "skipped" and off.steps["maybe"].reason
    assert off.outputs == {"after": "skipped", "maybe": None}
    assert on.outputs == {"after": "completed", "maybe": 1}


@pytest.mark.anyio
async def test_until_loop_sees_previous_and_stops() -> None:
    stack = make_stack()
    wf = {"name": "loop", "steps": [
        {"id": "count", "uses": "math.add",
         "with": {"a": "{{ previous if previous is not none else 0 }}", "b": 1},
         "until": "output >= 3", "max_iterations": 10},
    ], "outputs": {"n": "${count}"}}
    async with stack:
        result = await stack.run(wf)
        checkpoints = await stack.storage.load_checkpoints(result.run_id)
    assert result.outputs == {"n": 3}
    assert result.steps["count"].iterations == 3
    assert {k: v for k, v in checkpoints.items() if "#" in k} == {
        "count#1": 1, "count#2": 2, "count#3": 3}


@pytest.mark.anyio
async def test_until_bounded_by_max_iterations_logs_a_warning() -> None:
    stack = make_stack()
    seen = events_of(stack)
    wf = {"name": "loop", "steps": [
        {"id": "x", "uses": "echo", "with": {"value": 1}, "until": "false",
         "max_iterations": 4}]}
    async with stack:
        result = await stack.run(wf)
    assert result.ok and result.steps["x"].iterations == 4
    assert any(e.type == "log" and "still false" in e.data["message"] for e in seen)


@pytest.mark.anyio
async def test_retry_with_backoff_then_success() -> None:
    rec = Recorder("rec", fail_times=2)
    stack = make_stack(rec)
    seen = events_of(stack)
    wf = {"name": "retry", "steps": [
        {"id": "r", "uses": "rec", "with": {"value": "ok"},
         "retry": {"attempts": 3, "backoff": 0.01, "jitter": 0.01, "max_backoff": 0.05}}]}
    async with stack:
        result = await stack.run(wf)
        attempts = await stack.storage.list_attempts(result.run_id)
    assert result.ok and result.steps["r"].output == "ok"
    assert result.steps["r"].attempts == 3
    assert [a.status for a in sorted(attempts, key=lambda a: a.attempt)] == [
        "failed", "failed", "completed"]
    assert len({a.idempotency_key for a in attempts}) == 1
    retries = [e for e in seen if e.type == "step.retrying"]
    assert [e.data["attempt"] for e in retries] == [1, 2]
    assert all(0.01 <= e.data["wait_s"] <= 0.06 for e in retries)


@pytest.mark.anyio
async def test_retry_only_on_listed_errors() -> None:
    rec = Recorder("rec", fail_times=5, error=ToolError("permanent", retriable=False))
    stack = make_stack(rec)
    wf = {"name": "retry", "steps": [
        {"id": "r", "uses": "rec", "retry": {"attempts": 4, "backoff": 0.001, "jitter": 0}}]}
    async with stack:
        result = await stack.run(wf)
    assert result.status == "failed"
    assert result.steps["r"].attempts == 1  # not retriable, not retried
    rec2 = Recorder("rec2", fail_times=1, error=ValueError("odd"))
    stack2 = make_stack(rec2)
    wf2 = {"name": "retry", "steps": [
        {"id": "r", "uses": "rec2", "retry": {"attempts": 2, "backoff": 0.001, "jitter": 0,
                                              "on": ["ValueError"]}}]}
    async with stack2:
        result2 = await stack2.run(wf2)
    assert result2.ok and result2.steps["r"].attempts == 2


@pytest.mark.anyio
async def test_timeout_fails_step_and_is_retried() -> None:
    stack = make_stack()
    wf = {"name": "slow", "steps": [
        {"id": "s", "uses": "sleep", "with": {"seconds": 5}, "timeout": 0.05,
         "retry": {"attempts": 2, "backoff": 0.001, "jitter": 0}}]}
    started = time.monotonic()
    async with stack:
        result = await stack.run(wf)
    assert time.monotonic() - started < 2
    step = result.steps["s"]
    assert step.status == "failed" and step.error_type == "StepTimeoutError"
    assert "timed out after 0.05 s" in step.error
    assert step.attempts == 2


@pytest.mark.anyio
async def test_on_error_continue_and_fallback() -> None:
    bad = Recorder("bad", fail_times=99, error=ToolError("nope"))
    stack = make_stack(bad)
    wf = {"name": "errs", "steps": [
        {"id": "c", "uses": "bad", "on_error": "continue"},
        {"id": "f", "uses": "bad", "on_error": {"fallback": {"v": 0}}},
        {"id": "after", "uses": "echo",
         "with": {"value": ["{{ steps.c.output }}", "{{ steps.f.output.v }}"]}},
    ], "outputs": {"after": "${after}"}}
    async with stack:
        result = await stack.run(wf)
    assert result.status == "completed"
    assert result.steps["c"].status == "failed" and result.steps["c"].error == "nope"
    assert result.steps["f"].status == "completed" and result.steps["f"].output == {"v": 0}
    assert result.steps["f"].error == "nope"
    assert result.outputs == {"after": [None, 0]}


@pytest.mark.anyio
async def test_fail_fast_cancels_in_flight_and_skips_the_rest() -> None:
    bad = Recorder("bad", fail_times=99, error=ToolError("broken"), delay=0.1)
    stack = make_stack(bad)
    wf = {"name": "ff", "steps": [
        {"id": "slow", "uses": "sleep", "with": {"seconds": 10}},
        {"id": "bad", "uses": "bad"},
        {"id": "after", "uses": "echo", "depends_on": ["bad"]},
    ]}
    started = time.monotonic()
    async with stack:
        result = await stack.run(wf)
        attempts = await stack.storage.list_attempts(result.run_id)
    assert time.monotonic() - started < 5
    assert result.status == "failed"
    assert "broken" in result.error
    assert result.steps["slow"].status == "cancelled"
    assert result.steps["after"].status == "skipped"
    assert {a.step_key: a.status for a in attempts} == {"slow": "cancelled", "bad": "failed"}


@pytest.mark.anyio
async def test_partial_completion_runs_independent_branches() -> None:
    bad = Recorder("bad", fail_times=99, error=ToolError("broken"))
    stack = make_stack(bad)
    wf = {"name": "partial", "on_failure": "continue", "steps": [
        {"id": "bad", "uses": "bad"},
        {"id": "child", "uses": "echo", "depends_on": ["bad"]},
        {"id": "grandchild", "uses": "echo", "depends_on": ["child"]},
        {"id": "other", "uses": "sleep", "with": {"seconds": 0.02}},
    ], "outputs": {"other": "${other}", "child": "${child}"}}
    async with stack:
        result = await stack.run(wf)
    assert result.status == "partial"
    assert result.steps["other"].status == "completed"
    assert result.steps["child"].status == "skipped"
    assert result.steps["grandchild"].status == "skipped"
    assert result.outputs == {"other": 0.02, "child": None}


@pytest.mark.anyio
async def test_cancelling_the_caller_cancels_the_run_cleanly() -> None:
    stack = make_stack()
    wf = {"name": "cancel", "steps": [
        {"id": "a", "uses": "sleep", "with": {"seconds": 10}},
        {"id": "b", "uses": "sleep", "with": {"seconds": 10}},
        {"id": "c", "uses": "echo", "depends_on": ["a"]}]}
    started: list[str] = []
    both = anyio.Event()

    def watch(event: Event) -> None:
        if event.type == "tool.call" or event.type == "step.started":
            started.append(event.step_id or "")
            if {"a", "b"} <= set(started):
                both.set()

    stack.events.subscribe(watch)
    async with stack:
        async with anyio.create_task_group() as tg:
            async def go() -> None:
                await stack.run(wf, run_id="r-cancel")

            tg.start_soon(go)
            with anyio.fail_after(30):
                await both.wait()
            await anyio.sleep(0.05)  # both attempts are inside the sleep action
            tg.cancel_scope.cancel()
        run = await stack.storage.get_run("r-cancel")
        attempts = await stack.storage.list_attempts("r-cancel")
        events = await stack.storage.list_events("r-cancel")
    assert run.status == "cancelled"
    assert {a.status for a in attempts} == {"cancelled"}
    assert events[-1].type == "run.finished" and events[-1].data["status"] == "cancelled"


@pytest.mark.anyio
async def test_workflow_timeout_fails_the_run() -> None:
    stack = make_stack()
    async with stack:
        result = await stack.run({"name": "t", "timeout": 0.05, "steps": [
            {"id": "a", "uses": "sleep", "with": {"seconds": 10}}]})
    assert result.status == "failed" and "timed out" in result.error
    assert result.steps["a"].status == "cancelled"


@pytest.mark.anyio
async def test_tokens_and_cost_from_llm_calls_unknown_stays_none() -> None:
    stack = make_stack()
    async with stack:
        priced = await stack.run({"name": "p", "steps": [
            {"id": "a", "uses": "llm.chat", "with": {"prompt": "one two three",
                                                      "model": "fake/priced"}},
            {"id": "b", "uses": "llm.chat", "with": {"prompt": "four", "model": "fake/priced"}},
        ]})
        unknown = await stack.run({"name": "u", "steps": [
            {"id": "a", "uses": "llm.chat", "with": {"prompt": "x", "model": "fake/priced"}},
            {"id": "b", "uses": "llm.chat", "with": {"prompt": "y", "model": "fake/unpriced"}},
        ]})
        stored = await stack.storage.get_run(unknown.run_id)
        attempts = {a.step_key: a for a in await stack.storage.list_attempts(priced.run_id)}
    a = priced.steps["a"]
    # the fake tokenizer counts words: 3 in; "echo: one two three" = 4 out
    assert (a.input_tokens, a.output_tokens) == (3, 4)
    assert a.cost_usd == pytest.approx((3 * 1 + 4 * 2) / 1e6)
    assert priced.input_tokens == 3 + 1 and priced.output_tokens == 4 + 2
    assert priced.cost_usd == pytest.approx((4 * 1 + 6 * 2) / 1e6)
    assert unknown.steps["a"].cost_usd is not None
    assert unknown.steps["b"].cost_usd is None
    assert unknown.cost_usd is None and stored.cost_usd is None
    assert (attempts["a"].input_tokens, attempts["a"].output_tokens) == (3, 4)
    assert attempts["a"].cost_usd == pytest.approx(a.cost_usd)
    assert attempts["b"].input_tokens == 1


@pytest.mark.anyio
async def test_log_action_is_stored_as_log_record_and_listeners_see_events() -> None:
    seen: list[Event] = []

    class Listener:
        @flowyard.hookimpl
        def register_event_listeners(self, register: Any, config: Any) -> None:
            register("collect", seen.append)

    stack = Stack([Listener()])
    async with stack:
        result = await stack.run({"name": "logs", "steps": [
            {"id": "say", "uses": "log", "with": {"message": "hello", "level": "warning"}}]})
        logs = await stack.storage.list_logs(result.run_id)
    assert [(r.message, r.level, r.step_id) for r in logs] == [("hello", "warning", "say")]
    types = [e.type for e in seen if e.run_id == result.run_id]
    assert types[0] == "run.started" and "log" in types and types[-1] == "run.finished"


@pytest.mark.anyio
async def test_tool_context_carries_run_step_and_idempotency_key() -> None:
    rec = Recorder("rec")
    stack = make_stack(rec)
    async with stack:
        result = await stack.run({"name": "ctx", "budget_usd": 1.0, "steps": [
            {"id": "s", "uses": "rec", "budget_usd": 0.5}]}, run_id="run-ctx")
    ctx = rec.contexts[0]
    assert (ctx.run_id, ctx.step_id, ctx.step_key, ctx.attempt) == ("run-ctx", "s", "s", 1)
    import hashlib

    assert ctx.idempotency_key == hashlib.sha256(b"run-ctx:s").hexdigest()
    assert [(b.scope, b.limit_usd) for b in ctx.budget] == [("run", 1.0), ("step", 0.5)]
    assert result.ok


@pytest.mark.anyio
async def test_budget_exceeded_gives_its_own_status() -> None:
    over = Recorder("over", fail_times=1, error=BudgetExceeded("step budget of $0.01 spent",
                                                               scope="step"))
    stack = make_stack(over)
    async with stack:
        result = await stack.run({"name": "b", "steps": [{"id": "s", "uses": "over"}]})
    assert result.steps["s"].status == "budget_exceeded"
    assert result.status == "failed"


@pytest.mark.anyio
async def test_tool_call_events_describe_each_call() -> None:
    bad = Recorder("bad", fail_times=99, error=ToolError("nope"))
    stack = make_stack(bad)
    seen = events_of(stack)
    async with stack:
        await stack.run({"name": "ev", "steps": [
            {"id": "ok", "uses": "math.add", "with": {"a": 1}},
            {"id": "ko", "uses": "bad", "on_error": "continue"}]})
    calls = {e.step_id: e.data for e in seen if e.type == "tool.call"}
    assert calls["ok"]["tool"] == "math.add" and calls["ok"]["ok"] is True
    assert calls["ok"]["idempotent"] is True and calls["ok"]["side_effects"] == []
    assert calls["ok"]["duration_s"] >= 0 and calls["ok"]["error"] is None
    assert calls["ko"]["ok"] is False and "nope" in calls["ko"]["error"]


@pytest.mark.anyio
async def test_stream_yields_live_events_ending_with_run_finished() -> None:
    stack = make_stack()
    wf = {"name": "s", "steps": [{"id": "a", "uses": "echo", "with": {"value": 1}},
                                 {"id": "b", "uses": "echo", "with": {"value": "${a}"}}]}
    async with stack:
        events = [e async for e in stack.stream(wf)]
    types = [e.type for e in events]
    assert types[0] == "run.started" and types[-1] == "run.finished"
    assert types.count("step.completed") == 2
    assert events[-1].data["status"] == "completed"


@pytest.mark.anyio
async def test_invalid_inputs_are_rejected_before_anything_is_stored() -> None:
    stack = make_stack()
    wf = {"name": "in", "inputs": {"n": {"type": "integer"}},
          "steps": [{"id": "a", "uses": "echo"}]}
    async with stack:
        with pytest.raises(WorkflowValidationError) as info:
            await stack.run(wf, {"n": "three", "extra": 1})
        from flowyard.interfaces import RunQuery

        assert await stack.storage.list_runs(RunQuery()) == []
    messages = [i.message for i in info.value.issues]
    assert any("must be of type integer" in m for m in messages)
    assert any("unknown input 'extra'" in m for m in messages)
    with pytest.raises(WorkflowValidationError, match="missing required input 'n'"):
        async with stack:
            await stack.run(wf, {})


@pytest.mark.anyio
async def test_run_time_template_errors_name_step_and_field() -> None:
    stack = make_stack()
    wf = {"name": "t", "steps": [
        {"id": "a", "uses": "echo", "with": {"value": {"x": 1}}},
        {"id": "b", "uses": "echo", "with": {"value": "{{ steps.a.output.missing }}"}}]}
    async with stack:
        result = await stack.run(wf)
    err = result.steps["b"].error
    assert result.steps["b"].status == "failed"
    assert "step 'b'" in err and "with" in err and "missing" in err


@pytest.mark.anyio
async def test_sub_workflow_runs_as_its_own_run(tmp_path: Any) -> None:
    (tmp_path / "child.yaml").write_text(
        "name: child\ninputs:\n  n: {type: integer}\nsteps:\n"
        "  - id: double\n    uses: math.add\n    with: {a: '{{ inputs.n }}', b: '{{ inputs.n }}'}\n"
        "outputs:\n  doubled: '${double}'\n")
    (tmp_path / "parent.yaml").write_text(
        "name: parent\nsteps:\n  - id: sub\n    uses: workflow\n"
        "    with: {workflow: child.yaml, inputs: {n: 21}}\n"
        "outputs:\n  answer: '{{ steps.sub.output.doubled }}'\n")
    rec = Recorder("rec")
    (tmp_path / "budgeted.yaml").write_text(
        "name: budgeted\nbudget_usd: 2.0\nsteps:\n  - id: sub\n    uses: workflow\n"
        "    budget_usd: 1.0\n    with:\n      workflow:\n        name: inner\n"
        "        budget_usd: 0.5\n        steps: [{id: r, uses: rec}]\n")
    stack = make_stack(rec)
    async with stack:
        budgeted = await stack.run(tmp_path / "budgeted.yaml")
        result = await stack.run(tmp_path / "parent.yaml")
        from flowyard.interfaces import RunQuery

        runs = await stack.storage.list_runs(RunQuery())
    assert result.outputs == {"answer": 42}
    child = next(r for r in runs if r.workflow_name == "child")
    assert child.metadata["parent_run_id"] == result.run_id
    assert budgeted.ok
    # the child's calls stay within the parent's run and step budgets too
    assert [(b.scope, b.limit_usd) for b in rec.contexts[0].budget] == [
        ("run", 2.0), ("step", 1.0), ("run", 0.5)]


def test_run_sync_opens_and_closes_the_stack() -> None:
    stack = make_stack()
    result = stack.run_sync({"name": "sync", "steps": [
        {"id": "a", "uses": "math.add", "with": {"a": 2, "b": 2}}],
        "outputs": {"four": "${a}"}})
    assert result.outputs == {"four": 4}
    assert not stack.storage_is_open


@pytest.mark.anyio
async def test_closing_the_stream_early_cancels_the_run() -> None:
    from contextlib import aclosing

    stack = make_stack()
    wf = {"name": "early", "steps": [{"id": "a", "uses": "sleep", "with": {"seconds": 10}}]}
    started = time.monotonic()
    async with stack:
        async with aclosing(stack.stream(wf, run_id="r-early")) as events:
            async for event in events:
                if event.type == "step.started":
                    break
        run = await stack.storage.get_run("r-early")
    assert time.monotonic() - started < 5
    assert run.status == "cancelled"


@pytest.mark.anyio
@pytest.mark.parametrize("step_commit", [True, False], ids=["commit_step", "separate-writes"])
async def test_storage_failures_fail_the_step_or_the_run_and_are_recorded(step_commit: bool
                                                                          ) -> None:
    from flowyard.builtin.memory_storage import MemoryStorage
    from flowyard.errors import StorageError
    from flowyard.interfaces import SupportsStepCommit

    class Flaky(MemoryStorage):
        broken = ""

        async def save_checkpoint(self, run_id: str, step_key: str, output: Any) -> None:
            if self.broken == "checkpoint":
                raise StorageError("disk full")
            await super().save_checkpoint(run_id, step_key, output)

        async def append_events(self, events: Any) -> None:
            if self.broken == "events":
                raise StorageError("events table locked")
            await super().append_events(events)

        async def commit_step(self, run_id: str, **records: Any) -> None:
            if self.broken == "checkpoint" and records.get("checkpoint") is not None:
                raise StorageError("disk full")
            if self.broken == "events" and records.get("events"):
                raise StorageError("events table locked")
            await super().commit_step(run_id, **records)

    class SeparateWrites:
        """The same backend without the optional one-transaction commit_step."""

        def __init__(self, inner: Flaky) -> None:
            self.__dict__["inner"] = inner

        def __getattr__(self, name: str) -> Any:
            if name == "commit_step":
                raise AttributeError(name)
            return getattr(self.inner, name)

        def __setattr__(self, name: str, value: Any) -> None:
            setattr(self.inner, name, value)

    def make(url: str, config: Any) -> Any:
        storage = Flaky(url, config)
        return storage if step_commit else SeparateWrites(storage)

    class Plug:
        @flowyard.hookimpl
        def register_storage(self, register: Any, config: Any) -> None:
            register("flaky", make, default_priority=100, default_url=lambda c: "flaky://")

    stack = Stack([Plug()])
    wf = {"name": "x", "steps": [{"id": "a", "uses": "echo"}]}
    async with stack:
        storage = stack.storage
        assert isinstance(storage, SupportsStepCommit) == step_commit
        storage.broken = "checkpoint"
        # the commit point failed: not a step failure but the run's, raised as a plain
        # StorageError naming the run and step; the run is recorded failed with it as reason
        with pytest.raises(StorageError) as checkpoint_info:
            await stack.run(wf, run_id="r-checkpoint")
        checkpoint_run = await stack.storage.get_run("r-checkpoint")
        storage.broken = "events"
        with pytest.raises(StorageError) as info:
            await stack.run(wf, run_id="r-flaky")
        storage.broken = ""
        run = await stack.storage.get_run("r-flaky")
    message = str(checkpoint_info.value)
    assert "run r-checkpoint, step 'a'" in message and "disk full" in message
    assert checkpoint_info.value.state == "failed" and not checkpoint_info.value.retriable
    assert checkpoint_run.status == "failed" and "disk full" in checkpoint_run.error
    assert "events table locked" in str(info.value) and info.value.state == "failed"
    assert run.status == "failed" and "events table locked" in run.error


@pytest.mark.anyio
async def test_step_budget_is_shared_by_items_and_attempts() -> None:
    rec = Recorder("rec")
    stack = make_stack(rec)
    async with stack:
        await stack.run({"name": "shared", "steps": [
            {"id": "s", "uses": "rec", "for_each": [1, 2, 3], "budget_usd": 0.5}]})
    chains = {id(ctx.budget) for ctx in rec.contexts}
    budgets = {id(b) for ctx in rec.contexts for b in ctx.budget}
    assert len(rec.contexts) == 3 and len(chains) == 1 and len(budgets) == 1


@pytest.mark.anyio
async def test_outputs_are_made_json_ready_or_rejected() -> None:
    from pathlib import PurePosixPath

    from flowyard.models import Usage

    @flowyard.tool(name="odd.values")
    def odd_values() -> Any:
        """Return values that are not plain JSON."""
        return {"usage": Usage(1, 2), "tags": ("a", "b"), "path": PurePosixPath("/x")}

    @flowyard.tool(name="odd.object")
    def odd_object() -> Any:
        """Return an object JSON cannot represent."""
        return object()

    stack = make_stack(odd_values, odd_object)
    async with stack:
        result = await stack.run({"name": "odd", "on_failure": "continue", "steps": [
            {"id": "v", "uses": "odd.values"}, {"id": "o", "uses": "odd.object"}]})
    assert result.steps["v"].output == {"usage": {"input_tokens": 1, "output_tokens": 2},
                                        "tags": ["a", "b"], "path": "/x"}
    assert result.steps["o"].status == "failed"
    assert "not JSON-ready" in result.steps["o"].error


@pytest.mark.anyio
async def test_failing_item_cancels_siblings_waiting_in_retry_backoff() -> None:
    class Picky(BaseTool):
        name = "picky"
        description = "fails item 0 for good, others retriably"
        parameters = {"type": "object"}
        idempotent = True
        side_effects = ()

        async def run(self, arguments: dict[str, Any], context: Any) -> Any:
            if arguments["i"] == 0:
                await anyio.sleep(0.1)
                raise ToolError("item 0 is broken", retriable=False)
            raise ToolError("try later", retriable=True)

    stack = make_stack(Picky())
    started = time.monotonic()
    async with stack:
        result = await stack.run({"name": "fan", "steps": [
            {"id": "f", "uses": "picky", "for_each": [0, 1, 2], "with": {"i": "{{ item }}"},
             "retry": {"attempts": 5, "backoff": 10, "jitter": 0}}]})
        attempts = await stack.storage.list_attempts(result.run_id)
    assert time.monotonic() - started < 5  # the 10 s backoffs were cancelled
    assert result.steps["f"].status == "failed"
    assert result.steps["f"].error == "item 0 is broken"
    assert {a.step_key for a in attempts} == {"f[0]", "f[1]", "f[2]"}


@pytest.mark.anyio
async def test_events_from_sync_tools_in_worker_threads_reach_stream_and_storage() -> None:
    @flowyard.tool(name="threaded.log")
    def threaded_log(text: str, context: ToolContext) -> str:
        """Log from a worker thread.

        Args:
            text: what to log.
        """
        context.log(f"from thread: {text}")
        return text

    stack = make_stack(threaded_log)
    async with stack:
        events = [e async for e in stack.stream({"name": "t", "steps": [
            {"id": "a", "uses": "threaded.log", "with": {"text": "hi"}}]}, run_id="r-thr")]
        logs = await stack.storage.list_logs("r-thr")
        stored = await stack.storage.list_events("r-thr")
    assert any(e.type == "log" and e.data["message"] == "from thread: hi" for e in events)
    assert [r.message for r in logs] == ["from thread: hi"]
    assert [e.seq for e in stored] == list(range(1, len(stored) + 1))


@pytest.mark.anyio
async def test_arguments_of_protocol_only_tools_are_validated_at_call_time() -> None:
    class Bare:
        """A Tool by the protocol alone (no BaseTool), which does not validate."""

        name = "bare"
        description = "needs an integer n"
        parameters = {"type": "object", "properties": {"n": {"type": "integer"}},
                      "required": ["n"]}
        idempotent = True
        side_effects = ()
        calls = 0

        async def invoke(self, arguments: Any, context: Any) -> Any:
            Bare.calls += 1
            return arguments["n"]

    stack = make_stack(Bare())
    async with stack:
        result = await stack.run({"name": "bare", "inputs": {"n": {"default": "x"}},
                                  "steps": [{"id": "b", "uses": "bare",
                                             "with": {"n": "{{ inputs.n }}"}}]})
    assert result.steps["b"].status == "failed"
    assert result.steps["b"].error_type == "ToolInputError" and "n: 'x'" in result.steps["b"].error
    assert Bare.calls == 0
