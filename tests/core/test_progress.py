"""Progress and streamed text: the throttled transient events of the event bus, the
``ToolContext`` API, their use by the engine's fan-out and by ``llm.chat``, and that they are
never stored."""

from __future__ import annotations

import math
from typing import Any

import pytest

import flowyard
from flowyard.context import ToolContext
from flowyard.events import DELTA_EVENT, PROGRESS_EVENT, EventBus
from flowyard.models import Event
from flowyard.stack import Stack


class Clock:
    """A manual monotonic clock (seconds)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _bus(clock: Clock) -> tuple[EventBus, list[Event], list[Event]]:
    bus = EventBus()
    bus.clock = clock
    transient: list[Event] = []
    plain: list[Event] = []
    bus.subscribe(transient.append, name="display", transient=True)
    bus.subscribe(plain.append, name="storage-like")
    return bus, transient, plain


def test_ten_thousand_reports_in_a_second_emit_a_handful_of_events() -> None:
    clock = Clock()
    bus, transient, plain = _bus(clock)
    for done in range(1, 10_001):
        clock.now = done / 10_000  # 10,000 items in one second
        bus.progress("r1", "index", "index", done, 10_000, unit="chunks",
                     description="embedding")
    # the first report, one per 0.2 s, and reaching the total
    assert 5 <= len(transient) <= 7
    assert transient[0].data["done"] == 1
    last = transient[-1]
    assert last.type == PROGRESS_EVENT and last.run_id == "r1" and last.step_id == "index"
    assert last.data == {"step_key": "index", "attempt": 1, "done": 10_000, "total": 10_000,
                         "unit": "chunks", "description": "embedding"}
    assert all(e.seq == 0 for e in transient)  # not numbered: never part of the stored run
    assert plain == []  # ordinary listeners (storage, metrics) never see them
    # reporting the total again emits nothing
    clock.now = 5.0
    assert bus.progress("r1", "index", "index", 10_000, 10_000, unit="chunks",
                        description="embedding") is None


def test_a_new_phase_or_attempt_is_reported_at_once() -> None:
    clock = Clock()
    bus, transient, _ = _bus(clock)
    bus.progress("r", "s", "s", 0, 3, unit="documents", description="chunking")
    assert bus.progress("r", "s", "s", 1, 3, unit="documents", description="chunking") is None
    event = bus.progress("r", "s", "s", 0, 40, unit="chunks", description="embedding")
    assert event is not None and event.data["total"] == 40
    assert bus.progress("r", "s", "s", 0, 40, unit="chunks", description="embedding",
                        attempt=2) is not None
    # an unknown total is fine; time lets the next one through
    assert bus.progress("r", "s", "s[0]", 5, None) is not None
    assert bus.progress("r", "s", "s[0]", 6, None) is None
    clock.now = 0.25
    assert bus.progress("r", "s", "s[0]", 7, None).data["done"] == 7  # type: ignore[union-attr]
    assert [e.data["step_key"] for e in transient] == ["s", "s", "s", "s[0]", "s[0]"]


def test_nothing_is_emitted_without_a_transient_listener_but_arguments_are_checked() -> None:
    bus = EventBus()
    seen: list[Event] = []
    bus.subscribe(seen.append)
    assert not bus.wants_transient()
    assert bus.progress("r", "s", "s", 1, 2) is None
    assert bus.text("r", "s", "s", "hello", final=True) is None
    assert seen == []
    for bad in (-1, True, math.nan, "3"):
        with pytest.raises(ValueError, match="done must be a number >= 0"):
            bus.progress("r", "s", "s", bad)
    with pytest.raises(ValueError, match="total must be a number >= 0 or None"):
        bus.progress("r", "s", "s", 1, -5)
    with pytest.raises(TypeError, match="must be a string"):
        bus.text("r", "s", "s", 42)  # type: ignore[arg-type]
    unsubscribe = bus.subscribe(seen.append, transient=True)
    assert bus.wants_transient()
    unsubscribe()
    assert not bus.wants_transient()


def test_text_deltas_are_buffered_and_concatenate_to_everything_given() -> None:
    clock = Clock()
    bus, transient, plain = _bus(clock)
    pieces = [f"word{i} " for i in range(100)]
    for i, piece in enumerate(pieces):
        clock.now = i * 0.03
        bus.text("r", "ask", "ask", piece)
    bus.text("r", "ask", "ask", "", final=True)
    assert plain == []
    assert 10 <= len(transient) <= 20  # ~3 s of text at most every 0.2 s, plus the final one
    assert "".join(e.data["text"] for e in transient) == "".join(pieces)
    offsets = [e.data["offset"] for e in transient]
    assert offsets == [sum(len(e.data["text"]) for e in transient[:i])
                       for i in range(len(transient))]
    assert [e.data["final"] for e in transient] == [False] * (len(transient) - 1) + [True]
    # the buffer is freed: a new text of the same key starts at offset 0
    assert bus.text("r", "ask", "ask", "again").data["offset"] == 0  # type: ignore[union-attr]
    bus.forget("r")
    assert bus._gates == {}


async def _run(stack: Stack, source: Any, inputs: dict[str, Any] | None = None) -> Any:
    async with stack:
        return await stack.run(stack.load_workflow(source), inputs or {})


@flowyard.tool(name="test.crunch")
async def crunch(context: ToolContext, n: int) -> int:
    """Count to n, reporting progress for every item.

    Args:
        n: how many items.
    """
    for i in range(1, n + 1):
        context.progress(i, n, unit="items", description="crunching")
    return n


class _ToolPlugin:
    @flowyard.hookimpl
    def register_tools(self, register: Any) -> None:
        register("test.crunch", crunch)


@pytest.mark.anyio
async def test_a_tool_reports_progress_through_its_context_and_nothing_is_stored(
        flowyard_home: Any) -> None:
    stack = Stack([("crunch", _ToolPlugin())], config={"storage": {"url": "memory://"}})
    seen: list[Event] = []
    stack.events.subscribe(seen.append, transient=True)
    source = """
name: crunching
steps:
  - id: crunch
    uses: test.crunch
    with: {n: 10000}
  - id: each
    for_each: [1, 2, 3]
    uses: echo
    with: {value: "{{ item }}"}
"""
    async with stack:
        result = await stack.run(stack.load_workflow(source), {})
        stored = await stack.storage.list_events(result.run_id, limit=1000)
    assert result.ok and result.steps["crunch"].output == 10_000
    progress = [e for e in seen if e.type == PROGRESS_EVENT]
    crunching = [e for e in progress if e.step_id == "crunch"]
    assert 1 < len(crunching) < 50  # throttled: not 10,000
    assert crunching[-1].data["done"] == 10_000 and crunching[-1].data["total"] == 10_000
    assert crunching[-1].run_id == result.run_id
    # the engine reports a fan-out's items done of the total
    items = [e.data for e in progress if e.step_id == "each"]
    assert items[0]["done"] == 0 and items[-1]["done"] == items[-1]["total"] == 3
    assert items[-1]["unit"] == "items"
    # never stored, and the stored events are numbered without gaps
    assert not [e for e in stored if e.type in (PROGRESS_EVENT, DELTA_EVENT)]
    assert [e.seq for e in stored] == list(range(1, len(stored) + 1))


LONG_ANSWER = " ".join(f"token{i}" for i in range(60))

CHAT = """
name: chatting
steps:
  - id: ask
    uses: llm.chat
    with: {prompt: "say a lot", model: fake/echo}
outputs:
  answer: "${ask}"
"""


def _stepping_clock(step: float) -> Any:
    state = {"now": 0.0}

    def clock() -> float:
        state["now"] += step
        return state["now"]

    return clock


@pytest.mark.anyio
async def test_llm_chat_streams_deltas_that_concatenate_to_the_output(
        flowyard_home: Any) -> None:
    stack = Stack(config={"storage": {"url": "memory://"}})
    stack.providers.get("fake").add(LONG_ANSWER)
    stack.events.clock = _stepping_clock(0.05)  # a few pieces per emitted delta
    seen: list[Event] = []
    stack.events.subscribe(seen.append, transient=True)
    result = await _run(stack, CHAT)
    assert result.ok and result.outputs["answer"] == LONG_ANSWER
    deltas = [e for e in seen if e.type == DELTA_EVENT]
    assert len(deltas) > 3 and all(e.step_id == "ask" for e in deltas)
    assert "".join(e.data["text"] for e in deltas) == LONG_ANSWER
    assert deltas[-1].data["final"] is True
    call = next(e for e in seen if e.type == "llm.call")
    assert call.data.get("streamed") is True and call.data["output_tokens"] == 60


@pytest.mark.anyio
async def test_llm_chat_without_a_display_makes_one_chat_call(flowyard_home: Any) -> None:
    stack = Stack(config={"storage": {"url": "memory://"}})
    stack.providers.get("fake").add(LONG_ANSWER, LONG_ANSWER)
    seen: list[Event] = []
    stack.events.subscribe(seen.append)
    async with stack:
        result = await stack.run(stack.load_workflow(CHAT), {})
        assert result.outputs["answer"] == LONG_ANSWER
        call = next(e for e in seen if e.type == "llm.call")
        assert "streamed" not in call.data and call.data["finish_reason"] == "stop"
        # stream: true forces streaming, even with nobody listening (no deltas emitted)
        forced = await stack.run(stack.load_workflow(
            CHAT.replace("model: fake/echo", "model: fake/echo, stream: true")), {})
    assert forced.outputs["answer"] == LONG_ANSWER
    calls = [e for e in seen if e.type == "llm.call"]
    assert calls[-1].data.get("streamed") is True
    assert not [e for e in seen if e.type == DELTA_EVENT]


@pytest.mark.anyio
async def test_llm_chat_with_a_schema_does_not_stream_by_default(flowyard_home: Any) -> None:
    stack = Stack(config={"storage": {"url": "memory://"}})
    seen: list[Event] = []
    stack.events.subscribe(seen.append, transient=True)
    source = """
name: structured
steps:
  - id: ask
    uses: llm.chat
    with:
      prompt: "a number"
      model: fake/echo
      response_schema: {type: object, properties: {n: {type: integer}}, required: [n]}
"""
    result = await _run(stack, source)
    assert result.ok and result.steps["ask"].output == {"n": 0}
    assert not [e for e in seen if e.type == DELTA_EVENT]


@pytest.mark.anyio
async def test_sub_workflow_runs_name_their_parent_in_run_started(flowyard_home: Any,
                                                                  tmp_path: Any) -> None:
    (tmp_path / "child.yaml").write_text(
        "name: child\ninputs:\n  q: {type: string}\nsteps:\n"
        "  - id: answer\n    uses: llm.chat\n    with: {prompt: '{{ inputs.q }}', "
        "model: fake/echo}\noutputs:\n  a: '${answer}'\n")
    (tmp_path / "parent.yaml").write_text(
        "name: parent\nsteps:\n  - id: answers\n    for_each: [x, y]\n    uses: workflow\n"
        "    with: {workflow: child.yaml, inputs: {q: '{{ item }}'}}\n")
    stack = Stack(config={"storage": {"url": "memory://"}})
    seen: list[Event] = []
    stack.events.subscribe(seen.append, transient=True)
    result = await _run(stack, tmp_path / "parent.yaml")
    assert result.ok
    started = [e for e in seen if e.type == "run.started"]
    assert started[0].data["parent_run_id"] is None
    children = {e.data["parent_step"]: e for e in started[1:]}
    assert set(children) == {"answers[0]", "answers[1]"}
    assert all(e.data["parent_run_id"] == result.run_id for e in children.values())
    texts: dict[str, str] = {}
    for e in seen:
        if e.type == DELTA_EVENT:
            texts[e.run_id] = texts.get(e.run_id, "") + e.data["text"]
    assert texts[children["answers[0]"].run_id] == "echo: x"
    assert texts[children["answers[1]"].run_id] == "echo: y"
