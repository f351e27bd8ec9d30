"""Human steps (human.approve, human.input) on memory storage: the run ends ``waiting`` with
the prompt and schema stored, other branches finish, answering resumes it where it stopped
(completed steps not run again), hostile answers store nothing, timeouts take the default,
who answered is in the output, the event and the audit log."""

from __future__ import annotations

from typing import Any

import anyio
import flowyard
import pytest
from flowyard.engine.human import HumanAnswerError, pending_steps
from flowyard.engine.lease import RunInUseError
from flowyard.stack import Stack
from flowyard.tools import BaseTool


class Count(BaseTool):
    """Returns ``value``; records every call (what a resume must not repeat)."""

    def __init__(self) -> None:
        self.name = "count"
        self.description = "returns value, counts calls"
        self.parameters = {"type": "object"}
        self.idempotent = False
        self.side_effects = ("test",)
        self.calls: list[Any] = []

    async def run(self, arguments: dict[str, Any], context: Any) -> Any:
        self.calls.append(arguments.get("value"))
        return arguments.get("value")


class Plugin:
    def __init__(self, tool: Count) -> None:
        self.tool = tool

    @flowyard.hookimpl
    def register_tools(self, register: Any, config: Any) -> None:
        register("count", self.tool)


APPROVAL = {
    "name": "approval",
    "steps": [
        {"id": "draft", "uses": "count", "with": {"value": "the draft"}},
        {"id": "side", "uses": "count", "with": {"value": "side"}},
        {"id": "review", "uses": "human.approve",
         "with": {"prompt": "Publish {{ steps.draft.output }}?"}},
        {"id": "publish", "uses": "count", "depends_on": ["review"],
         "when": "{{ steps.review.output.approved }}",
         "with": {"value": "published by {{ steps.review.output.by }}"}},
    ],
    "outputs": {"approved": "{{ steps.review.output.approved }}"},
}

FORM = {
    "name": "form",
    "steps": [
        {"id": "ask", "uses": "human.input",
         "with": {"prompt": "How many?", "schema": {
             "type": "object", "properties": {"n": {"type": "integer", "minimum": 1}},
             "required": ["n"], "additionalProperties": False}}},
        {"id": "use", "uses": "count", "with": {"value": "{{ steps.ask.output.value.n }}"}},
    ],
    "outputs": {"n": "{{ steps.use.output }}"},
}


@pytest.mark.anyio
async def test_approve_waits_then_resumes_where_it_stopped() -> None:
    tool = Count()
    async with Stack([Plugin(tool)], config={"audit": {"flush_interval": 0}}) as stack:
        first = await stack.run(APPROVAL)
        assert first.status == "waiting" and first.waiting
        assert first.steps["review"].status == "waiting"
        assert first.steps["publish"].status == "pending"
        assert first.steps["side"].status == "completed"  # the sibling branch finished
        assert first.outputs == {}
        record = await stack.storage.get_run(first.run_id)
        assert record.status == "waiting" and record.finished_at is None
        pending = pending_steps(record)
        assert list(pending) == ["review"]
        assert pending["review"]["prompt"] == "Publish the draft?"
        assert pending["review"]["kind"] == "approve"
        assert pending["review"]["schema"]["required"] == ["approved"]
        events = [e.type for e in await stack.storage.list_events(first.run_id)]
        assert "step.waiting" in events and events[-1] == "run.finished"
        attempts = await stack.storage.list_attempts(first.run_id)
        assert [a.status for a in attempts if a.step_id == "review"] == ["waiting"]
        assert sorted(tool.calls) == ["side", "the draft"]

        result = await stack.answer(first.run_id, "review",
                                    {"approved": True, "comment": "ship it"}, actor="user:alice")
        assert result is not None and result.status == "completed"
        assert result.outputs == {"approved": True}
        review = result.steps["review"].output
        assert review["approved"] is True and review["comment"] == "ship it"
        assert review["by"] == "user:alice" and review["expired"] is False
        assert result.steps["draft"].resumed and result.steps["side"].resumed
        assert sorted(tool.calls) == ["published by user:alice", "side", "the draft"]
        record = await stack.storage.get_run(first.run_id)
        assert record.resume_count == 0  # waiting is not a crash recovery
        assert record.metadata["human"]["answers"]["review"]["by"] == "user:alice"
        answered = [e for e in await stack.storage.list_events(first.run_id)
                    if e.type == "human.answered"]
        assert [e.data["by"] for e in answered] == ["user:alice"]
        seqs = [e.seq for e in await stack.storage.list_events(first.run_id)]
        assert seqs == sorted(set(seqs))  # numbering goes on after the answer
        audit = [r for r in await stack.storage.list_audit() if r.action == "human.answered"]
        assert [(r.actor, r.run_id, r.step_id) for r in audit] == [
            ("user:alice", first.run_id, "review")]

        with pytest.raises(HumanAnswerError, match="not waiting"):
            await stack.answer(first.run_id, "review", {"approved": False}, actor="user:bob")


@pytest.mark.anyio
async def test_reject_skips_the_dependent_and_many_waits_do_not_hit_the_resume_limit() -> None:
    tool = Count()
    steps = [{"id": f"ok{i}", "uses": "human.approve", "with": {"prompt": f"step {i}?"},
              **({"depends_on": [f"ok{i - 1}"]} if i else {})} for i in range(5)]
    wf = {"name": "chain", "steps": steps}
    async with Stack([Plugin(tool)]) as stack:
        result = await stack.run(wf)
        for i in range(5):
            assert result.status == "waiting"
            result = await stack.answer(result.run_id, f"ok{i}", {"approved": i != 4})
        assert result.status == "completed"
        assert result.steps["ok4"].output["approved"] is False
        assert result.steps["ok0"].output["by"].startswith("user:")


@pytest.mark.anyio
async def test_hostile_answers_are_refused_and_store_nothing() -> None:
    tool = Count()
    async with Stack([Plugin(tool)], config={"human": {"max_answer_bytes": 1000}}) as stack:
        first = await stack.run(FORM)
        run_id = first.run_id
        before = await stack.storage.get_run(run_id)
        cases = [
            ({"n": 0}, "does not match its schema at n"),
            ({"n": "3"}, "does not match its schema at n"),
            ({"n": 2, "extra": 1}, "does not match its schema"),
            ({"n": 2, "pad": "x" * 5000}, "more than human.max_answer_bytes"),
            ({"n": float("nan")}, "not JSON-ready"),
            ({"n": "\ud800"}, "not valid Unicode"),
        ]
        for value, message in cases:
            with pytest.raises(HumanAnswerError, match=message):
                await stack.answer(run_id, "ask", value, actor="user:mallory")
        with pytest.raises(HumanAnswerError, match="not waiting for an answer"):
            await stack.answer(run_id, "use", {"n": 2}, actor="user:mallory")
        with pytest.raises(HumanAnswerError, match="actor must be a non-empty string"):
            await stack.answer(run_id, "ask", {"n": 2}, actor="")
        with pytest.raises(flowyard.RunNotFoundError):
            await stack.answer("no-such-run", "ask", {"n": 2}, actor="user:mallory")
        after = await stack.storage.get_run(run_id)
        assert after.status == "waiting" and after.metadata == before.metadata
        assert tool.calls == []
        assert not [e for e in await stack.storage.list_events(run_id)
                    if e.type == "human.answered"]

        stored = await stack.answer(run_id, "ask", {"n": 3}, actor="user:ann", resume=False)
        assert stored is None
        assert (await stack.storage.get_run(run_id)).status == "waiting"
        with pytest.raises(HumanAnswerError, match="already answered by 'user:ann'"):
            await stack.answer(run_id, "ask", {"n": 4}, actor="user:mallory")
        result = await stack.resume(run_id)
        assert result.status == "completed" and result.outputs == {"n": 3}


@pytest.mark.anyio
async def test_fan_out_items_wait_with_their_own_keys() -> None:
    wf = {"name": "fan", "steps": [
        {"id": "each", "uses": "human.input", "for_each": [1, 2],
         "with": {"prompt": "value for {{ item }}?", "schema": {"type": "integer"}}}],
        "outputs": {"sum": "{{ steps.each.output | map(attribute='value') | sum }}"}}
    async with Stack([Plugin(Count())]) as stack:
        first = await stack.run(wf)
        record = await stack.storage.get_run(first.run_id)
        assert sorted(pending_steps(record)) == ["each[0]", "each[1]"]
        with pytest.raises(HumanAnswerError, match="several keys"):
            await stack.answer(first.run_id, "each", 1)
        assert (await stack.answer(first.run_id, "each[0]", 10)).status == "waiting"
        result = await stack.answer(first.run_id, "each[1]", 20)
        assert result.status == "completed" and result.outputs == {"sum": 30}


@pytest.mark.anyio
async def test_timeout_takes_the_default_or_fails_without_one() -> None:
    wf = {"name": "timed", "steps": [
        {"id": "ok", "uses": "human.approve",
         "with": {"prompt": "go?", "timeout_s": 60, "default": False}},
        {"id": "ask", "uses": "human.input", "with": {"prompt": "name?", "timeout_s": 60}}],
        "on_failure": "continue"}
    async with Stack([Plugin(Count())]) as stack:
        first = await stack.run(wf)
        record = await stack.storage.get_run(first.run_id)
        deadline = pending_steps(record)["ok"]["deadline"]
        assert deadline is not None
        assert await stack.expire_waiting(now=deadline - 1) == []
        expired = await stack.expire_waiting(now=deadline + 1)
        assert sorted(expired) == [(first.run_id, "ask"), (first.run_id, "ok")]
        record = await stack.storage.get_run(first.run_id)
        assert record.status == "partial"
        steps = {a.step_id: a for a in await stack.storage.list_attempts(first.run_id)
                 if a.status != "waiting"}
        assert "no answer before the deadline" in (steps["ask"].error or "")
        checkpoints = await stack.storage.load_checkpoints(first.run_id)
        assert checkpoints["ok"]["approved"] is False
        assert checkpoints["ok"]["by"] == "flowyard:timeout" and checkpoints["ok"]["expired"]


@pytest.mark.anyio
async def test_a_bad_default_or_schema_fails_the_step() -> None:
    wf = {"name": "bad", "on_failure": "continue", "steps": [
        {"id": "a", "uses": "human.input",
         "with": {"prompt": "n?", "schema": {"type": "integer"}, "default": "x"}},
        {"id": "b", "uses": "human.input", "with": {"prompt": "n?", "schema": {"type": 3}}}]}
    async with Stack([Plugin(Count())]) as stack:
        result = await stack.run(wf)
    assert result.status == "failed"
    assert "does not match the answer's schema" in (result.steps["a"].error or "")
    assert "not a valid JSON Schema" in (result.steps["b"].error or "")


@pytest.mark.anyio
async def test_two_answers_at_once_resume_the_run_once() -> None:
    tool = Count()
    async with Stack([Plugin(tool)]) as stack:
        first = await stack.run(APPROVAL)
        outcomes: list[Any] = []

        async def answer(who: str) -> None:
            try:
                outcomes.append(await stack.answer(first.run_id, "review", {"approved": True},
                                                   actor=who))
            except (HumanAnswerError, RunInUseError) as exc:
                outcomes.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(answer, "user:ann")
            tg.start_soon(answer, "user:bob")
        results = [o for o in outcomes if not isinstance(o, Exception)]
        assert len(results) == 1 and results[0].status == "completed"
        assert len(outcomes) == 2 and isinstance(
            next(o for o in outcomes if isinstance(o, Exception)),
            (HumanAnswerError, RunInUseError))
        assert tool.calls.count(f"published by {results[0].steps['review'].output['by']}") == 1
