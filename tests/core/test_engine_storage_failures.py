"""Storage failures during a run, input validation before anything is stored, and submission
idempotency keys, on the in-memory backend (the SQLite versions, with a real lock held by
another connection and several processes, are in plugins/sql/tests/test_sql_run_failures.py).
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flowyard
from flowyard.builtin.memory_storage import MemoryStorage
from flowyard.engine import IdempotencyKeyReusedError, RunStorageError
from flowyard.errors import StorageError, WorkflowValidationError
from flowyard.interfaces import RunQuery
from flowyard.stack import Stack
from flowyard.tools import BaseTool

FAST_RETRIES = {"engine": {"storage_write_attempts": 4, "storage_retry_wait": 0.01}}


class Counter(BaseTool):
    """Counts its calls and returns its ``value`` argument, after ``delay`` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.name = "count"
        self.description = "counts calls"
        self.parameters = {"type": "object"}
        self.idempotent = True
        self.side_effects = ()
        self.calls = 0
        self.delay = delay

    async def run(self, arguments: dict[str, Any], context: Any) -> Any:
        self.calls += 1
        if self.delay:
            await anyio.sleep(self.delay)
        return {"value": arguments.get("value"), "call": self.calls}


class Flaky(MemoryStorage):
    """Memory storage whose checkpoint writes fail ``failures`` times."""

    failures = 0
    retriable = True
    tries = 0

    def _fail(self) -> None:
        self.tries += 1
        if self.failures > 0:
            self.failures -= 1
            raise StorageError("database is locked (test)", retriable=self.retriable)

    async def save_checkpoint(self, run_id: str, step_key: str, output: Any) -> None:
        self._fail()
        await super().save_checkpoint(run_id, step_key, output)

    async def commit_step(self, run_id: str, **records: Any) -> None:
        """The engine's one-transaction write: fails (writing nothing) when it holds a
        checkpoint, like save_checkpoint.
        """
        if records.get("checkpoint") is not None:
            self._fail()
        await super().commit_step(run_id, **records)


def make_stack(tool: Any, storage: type = MemoryStorage, config: Any = None) -> Stack:
    class Plug:
        @flowyard.hookimpl
        def register_tools(self, register: Any, config: Any) -> None:
            register(tool.name, tool)

        @flowyard.hookimpl
        def register_storage(self, register: Any, config: Any) -> None:
            register("flaky", lambda url, cfg: storage(url, cfg), default_priority=100,
                     default_url=lambda c: "flaky://")

    return Stack([Plug()], config=config or FAST_RETRIES)


WF = {"name": "wf", "inputs": {"topic": {"type": "any", "default": None}},
      "steps": [{"id": "a", "uses": "count", "with": {"value": "${inputs.topic}"}},
                {"id": "b", "uses": "count", "with": {"value": "${a.value}"}}],
      "outputs": {"b": "${b.value}"}}


# ---------------------------------------------------------------------- item 2: engine


@pytest.mark.anyio
async def test_a_retriable_checkpoint_failure_is_retried_then_the_run_completes() -> None:
    tool = Counter()
    stack = make_stack(tool, Flaky)
    async with stack:
        stack.storage.failures = 3  # type: ignore[attr-defined]
        result = await stack.run(WF, {"topic": "t"})
    assert result.status == "completed" and result.outputs == {"b": "t"}
    assert tool.calls == 2  # the step was not run again: only its write was retried


@pytest.mark.anyio
async def test_a_lasting_checkpoint_failure_stops_the_run_as_a_plain_storage_error() -> None:
    tool = Counter()
    stack = make_stack(tool, Flaky)
    async with stack:
        stack.storage.failures = 4  # type: ignore[attr-defined]  # = the attempts allowed
        with pytest.raises(StorageError) as info:
            await stack.run(WF, {"topic": "t"}, run_id="r1")
        record = await stack.storage.get_run("r1")
        assert stack.storage.tries == 4  # type: ignore[attr-defined]
        error = info.value
        assert isinstance(error, RunStorageError) and not isinstance(error, BaseExceptionGroup)
        assert error.run_id == "r1" and error.step_key == "a" and error.retriable
        assert "run r1, step 'a'" in str(error) and "tried 4 times" in str(error)
        assert error.state == "failed" and "marked failed" in str(error)
        assert record.status == "failed" and "database is locked" in record.error
        resumed = await stack.resume("r1")
    assert resumed.status == "completed" and resumed.outputs == {"b": "t"}
    assert tool.calls == 3  # a ran again on resume (its checkpoint was never written), b once


@pytest.mark.anyio
async def test_a_non_retriable_failure_is_not_retried() -> None:
    stack = make_stack(Counter(), Flaky)
    async with stack:
        stack.storage.failures, stack.storage.retriable = 1, False  # type: ignore[attr-defined]
        with pytest.raises(RunStorageError) as info:
            await stack.run(WF, {"topic": "t"}, run_id="r2")
        assert stack.storage.tries == 1  # type: ignore[attr-defined]
    assert not info.value.retriable and "tried" not in str(info.value)


@pytest.mark.anyio
async def test_a_storage_failure_in_a_fan_out_names_the_item() -> None:
    tool = Counter()
    stack = make_stack(tool, Flaky)
    wf = {"name": "fan", "steps": [{"id": "f", "uses": "count", "for_each": [1, 2, 3],
                                    "max_parallel": 1, "with": {"value": "{{ item }}"}}]}
    async with stack:
        stack.storage.failures = 10  # type: ignore[attr-defined]
        with pytest.raises(RunStorageError) as info:
            await stack.run(wf, run_id="r3")
        record = await stack.storage.get_run("r3")
    key = info.value.step_key
    assert key in ("f[0]", "f[1]", "f[2]") and f"step {key!r}" in str(info.value)
    assert record.status == "failed"


def test_run_sync_raises_the_plain_storage_error() -> None:
    stack = make_stack(Counter(), Flaky)
    Flaky.failures = 10
    try:
        with pytest.raises(RunStorageError) as info:
            stack.run_sync(WF, {"topic": "t"}, run_id="r4")
    finally:
        Flaky.failures = 0
    assert "run r4, step 'a'" in str(info.value)


# ---------------------------------------------------------------------- item 2: inputs


@pytest.mark.anyio
@pytest.mark.parametrize(("value", "where", "what"), [
    ("\ud800", "inputs.topic", "lone surrogate"),
    ({"deep": ["ok", "x\udfffy"]}, "inputs.topic.deep[1]", "lone surrogate"),
    ({"\udc80": 1}, "inputs.topic (a key)", "lone surrogate"),
    (object(), "inputs.topic", "not JSON-ready"),
    ({"s": [1, object()]}, "inputs.topic", "not JSON-ready"),
])
async def test_inputs_that_cannot_be_stored_are_refused_before_anything_is_stored(
        value: Any, where: str, what: str) -> None:
    tool = Counter()
    stack = make_stack(tool)
    async with stack:
        with pytest.raises(WorkflowValidationError) as info:
            await stack.run(WF, {"topic": value})
        runs = await stack.storage.list_runs(RunQuery())
    assert runs == [] and tool.calls == 0
    (issue,) = info.value.issues
    assert issue.path == "inputs.topic" and "input 'topic'" in issue.message
    assert what in issue.message and where in issue.message


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8))
def test_any_json_input_is_either_stored_intact_or_refused_naming_its_field(value: Any) -> None:
    """Property: whatever text (surrogates included) an input holds, the run either stores
    and returns it unchanged, or is refused with a validation error naming the field."""
    stack = make_stack(Counter())

    async def main() -> Any:
        async with stack:
            return await stack.run({"name": "echoes", "inputs": {"x": {"type": "any"}},
                                    "steps": [{"id": "e", "uses": "count",
                                               "with": {"value": "${inputs.x}"}}],
                                    "outputs": {"x": "${inputs.x}"}}, {"x": value})

    try:
        text = json.dumps(value, ensure_ascii=False)
        text.encode("utf-8")
        valid = True
    except UnicodeEncodeError:
        valid = False
    if valid:
        result = anyio.run(main)
        assert result.status == "completed"
    else:
        with pytest.raises(WorkflowValidationError) as info:
            anyio.run(main)
        assert info.value.issues[0].path == "inputs.x"


# ---------------------------------------------------------------------- item 8


@pytest.mark.anyio
async def test_the_same_idempotency_key_returns_the_first_result_without_running_again(
        ) -> None:
    tool = Counter()
    stack = make_stack(tool)
    async with stack:
        first = await stack.run(WF, {"topic": "t"}, idempotency_key="order-1")
        again = await stack.run(WF, {"topic": "t"}, idempotency_key="order-1",
                                run_id="ignored")
        runs = await stack.storage.list_runs(RunQuery())
    assert tool.calls == 2 and len(runs) == 1
    assert again.run_id == first.run_id and again.status == "completed"
    assert again.outputs == first.outputs == {"b": "t"}
    assert again.steps["a"].output == first.steps["a"].output
    assert runs[0].metadata["idempotency"]["key"] == "order-1"


@pytest.mark.anyio
async def test_the_same_key_with_other_inputs_is_an_error_naming_the_key() -> None:
    tool = Counter()
    stack = make_stack(tool)
    async with stack:
        await stack.run(WF, {"topic": "t"}, idempotency_key="order-2")
        with pytest.raises(IdempotencyKeyReusedError, match="'order-2'"):
            await stack.run(WF, {"topic": "other"}, idempotency_key="order-2")
        other_wf = {**WF, "name": "wf2"}
        with pytest.raises(IdempotencyKeyReusedError, match="'order-2'"):
            await stack.run(other_wf, {"topic": "t"}, idempotency_key="order-2")
    assert tool.calls == 2


@pytest.mark.anyio
async def test_concurrent_submissions_of_one_key_run_the_body_once_and_share_the_result(
        ) -> None:
    tool = Counter(delay=0.3)
    stack = make_stack(tool)
    results: list[Any] = []
    async with stack:
        async def submit() -> None:
            results.append(await stack.run(WF, {"topic": "t"}, idempotency_key="k"))

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(submit)
    assert tool.calls == 2  # steps a and b, once
    assert {r.run_id for r in results} == {results[0].run_id}
    assert all(r.status == "completed" and r.outputs == {"b": "t"} for r in results)


@pytest.mark.anyio
async def test_a_failed_run_is_returned_as_stored_for_its_key() -> None:
    tool = Counter()
    stack = make_stack(tool, Flaky)
    async with stack:
        stack.storage.failures, stack.storage.retriable = 1, False  # type: ignore[attr-defined]
        with pytest.raises(RunStorageError):
            await stack.run(WF, {"topic": "t"}, idempotency_key="k-failed")
        again = await stack.run(WF, {"topic": "t"}, idempotency_key="k-failed")
    assert again.status == "failed" and "database is locked" in (again.error or "")
    assert tool.calls == 1


@pytest.mark.anyio
async def test_an_empty_idempotency_key_is_refused() -> None:
    stack = make_stack(Counter())
    async with stack:
        with pytest.raises(TypeError, match="idempotency_key"):
            await stack.run(WF, {"topic": "t"}, idempotency_key=" ")
