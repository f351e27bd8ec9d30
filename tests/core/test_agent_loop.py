"""Agent steps: native tool calling and ReAct with the scripted fake provider, turn and
budget limits, memory, and the transcript as events."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

import flowyard
from flowyard.agent import Agent, AgentTurnLimitError, parse_react
from flowyard.builtin.fake import FakeProvider
from flowyard.errors import BudgetExceeded
from flowyard.models import Event, MemoryEntry, MemoryHit, ToolCall
from flowyard.stack import Stack


@flowyard.tool(name="math.add", idempotent=True)
def add(a: int, b: int = 0) -> int:
    """Add two integers.

    Args:
        a: the first number.
        b: the second number.
    """
    return a + b


class WordMemory:
    """A small real MemoryStore: ranks entries by shared words (Jaccard similarity)."""

    def __init__(self) -> None:
        self.entries: list[MemoryEntry] = []

    async def add(self, entries: Sequence[MemoryEntry]) -> list[str]:
        self.entries.extend(entries)
        return [e.id for e in entries]

    async def search(self, query: str, *, namespace: str = "default", top_k: int = 5,
                     filters: Mapping[str, Any] | None = None,
                     min_score: float | None = None) -> list[MemoryHit]:
        words = set(query.lower().split())
        hits = []
        for e in self.entries:
            if e.namespace != namespace:
                continue
            other = set(e.text.lower().split())
            score = len(words & other) / max(1, len(words | other))
            if score > 0:
                hits.append(MemoryHit(e, score))
        return sorted(hits, key=lambda h: -h.score)[:top_k]

    async def delete(self, ids: Sequence[str], *, namespace: str = "default") -> int:
        return 0

    async def cleanup(self, *, older_than_days: float, namespace: str = "default") -> int:
        return 0

    async def consolidate(self, *, namespace: str = "default", threshold: float = 0.95) -> int:
        return 0


class Plugin:
    def __init__(self, provider: FakeProvider, memory: WordMemory | None = None) -> None:
        self.provider = provider
        self.memory = memory

    @flowyard.hookimpl
    def register_tools(self, register: Any, config: Any) -> None:
        register("math.add", add)

    @flowyard.hookimpl
    def register_providers(self, register: Any, config: Any) -> None:
        register(self.provider.name, self.provider)

    @flowyard.hookimpl
    def register_memory_stores(self, register: Any, config: Any) -> None:
        if self.memory is not None:
            register("words", self.memory)


def scripted(*items: Any) -> FakeProvider:
    return FakeProvider(name="scripted", script=list(items))


def agent_step(**with_: Any) -> dict[str, Any]:
    return {"name": "agentic", "steps": [{"id": "helper", "uses": "agent", "with": {
        "model": "scripted/echo", "prompt": "What is 2 + 3?", "tools": ["math.add"],
        **with_}}], "outputs": {"answer": "{{ steps.helper.output.answer }}"}}


@pytest.mark.anyio
async def test_native_tool_loop_until_final_answer() -> None:
    provider = scripted(ToolCall(id="c1", name="math.add", arguments={"a": 2, "b": 3}),
                        "The answer is 5.")
    stack = Stack([Plugin(provider)])
    seen: list[Event] = []
    stack.events.subscribe(seen.append)
    async with stack:
        result = await stack.run(agent_step(instructions="Be exact."))
    assert result.ok, result.error
    assert result.outputs == {"answer": "The answer is 5."}
    assert result.steps["helper"].output == {"answer": "The answer is 5.", "turns": 2,
                                             "tool_calls": 1, "stop_reason": "final_answer"}
    first, second = provider.requests
    assert first.messages[0].role == "system" and first.messages[0].text == "Be exact."
    assert [t.name for t in first.tools] == ["math.add"]
    assert second.messages[-1].role == "tool" and second.messages[-1].text == "5"
    assert second.messages[-1].tool_call_id == "c1"
    (started,) = [e.data for e in seen if e.type == "agent.started"]
    assert started["system"] == "Be exact." and started["prompt"] == "What is 2 + 3?"
    assert started["tools"] == ["math.add"] and started["mode"] == "native"
    turns = [e for e in seen if e.type == "agent.turn"]
    assert [t.data["turn"] for t in turns] == [1, 2]
    assert turns[0].data["tool_calls"][0]["arguments"] == {"a": 2, "b": 3}
    assert turns[0].data["tool_results"][0] == {"id": "c1", "tool": "math.add", "ok": True,
                                                "result": "5"}
    assert turns[1].data["final"] is True
    calls = [e for e in seen if e.type == "tool.call" and e.data["tool"] != "agent"]
    assert len(calls) == 1 and calls[0].data["agent"] == "helper"
    llm = [e for e in seen if e.type == "llm.call"]
    assert len(llm) == 2 and all(e.data["agent"] == "helper" for e in llm)
    assert result.steps["helper"].input_tokens == sum(e.data["input_tokens"] for e in llm)


@pytest.mark.anyio
async def test_tool_errors_are_shown_to_the_model() -> None:
    provider = scripted(ToolCall(id="c1", name="math.add", arguments={"a": "two"}),
                        ToolCall(id="c2", name="math.mul", arguments={}),
                        "gave up politely")
    stack = Stack([Plugin(provider)])
    async with stack:
        result = await stack.run(agent_step())
    assert result.ok
    tool_msgs = [m for m in provider.requests[-1].messages if m.role == "tool"]
    assert tool_msgs[0].text.startswith("error: invalid arguments for tool 'math.add'")
    assert "unknown tool 'math.mul'" in tool_msgs[1].text


@pytest.mark.anyio
async def test_turn_limit_fails_the_step() -> None:
    loop = [ToolCall(id=f"c{i}", name="math.add", arguments={"a": i}) for i in range(5)]
    stack = Stack([Plugin(scripted(*loop))])
    async with stack:
        result = await stack.run(agent_step(max_turns=3))
    step = result.steps["helper"]
    assert step.status == "failed" and step.error_type == "AgentTurnLimitError"
    assert "max_turns=3" in step.error and "3 tool call(s)" in step.error


@pytest.mark.anyio
async def test_agent_budget_stops_the_loop() -> None:
    loop = [ToolCall(id=f"c{i}", name="math.add", arguments={"a": i}) for i in range(60)]
    stack = Stack([Plugin(scripted(*loop))])
    wf = agent_step(model="scripted/priced", budget_usd=0.001, max_tokens=8, max_turns=60)
    async with stack:
        result = await stack.run(wf)
    step = result.steps["helper"]
    assert step.status == "budget_exceeded", step.error
    assert "agent" in step.error and "helper" in step.error
    assert step.cost_usd is not None and 0 < step.cost_usd <= 0.001  # never overspent
    assert step.output_tokens > 0
    assert result.status == "failed"


@pytest.mark.anyio
async def test_react_mode_parses_actions_and_final_answer() -> None:
    provider = scripted(
        "Thought: I should add.\nAction: math.add\nAction Input: {\"a\": 2, \"b\": 3}",
        "I am confused",
        "Thought: I know it.\nFinal Answer: 5",
    )
    stack = Stack([Plugin(provider)])
    seen: list[Event] = []
    stack.events.subscribe(seen.append)
    async with stack:
        result = await stack.run(agent_step(mode="react"))
    assert result.ok and result.outputs == {"answer": "5"}
    first = provider.requests[0]
    assert first.tools == [] and "Final Answer:" in first.messages[0].text
    assert "math.add" in first.messages[0].text and first.stop == ["\nObservation:"]
    second = provider.requests[1]
    assert second.messages[-1].text == "Observation: 5"
    third = provider.requests[2]
    assert "could not be parsed" in third.messages[-1].text
    turns = [e.data for e in seen if e.type == "agent.turn"]
    assert [t.get("parse_error") is not None for t in turns] == [False, True, False]


def test_parse_react_variants() -> None:
    assert parse_react("Final Answer: yes\nmore") == ("final", "yes\nmore")
    assert parse_react("Action: `math.add`\nAction Input: ```json\n{\"a\": 1}\n```") == (
        "action", ("math.add", {"a": 1}))
    assert parse_react("Action: t\nAction Input: {\"a\": 1}\nObservation: fake") == (
        "action", ("t", {"a": 1}))
    assert parse_react("Action: t\nAction Input: [1]")[0] == "invalid"
    assert parse_react("just talk")[0] == "invalid"


@pytest.mark.anyio
async def test_memory_is_searched_before_and_stored_after() -> None:
    memory = WordMemory()
    await memory.add([MemoryEntry(text="the user prefers answers in French", namespace="help"),
                      MemoryEntry(text="unrelated cooking note", namespace="other")])
    provider = scripted("cinq")
    stack = Stack([Plugin(provider, memory)])
    wf = agent_step(memory={"namespace": "help", "top_k": 3, "store_answer": True},
                    prompt="What answers does the user prefers?")
    async with stack:
        result = await stack.run(wf)
    assert result.ok
    system = provider.requests[0].messages[0].text
    assert "Relevant memories:" in system and "prefers answers in French" in system
    assert "cooking" not in system
    stored = memory.entries[-1]
    assert stored.namespace == "help" and "A: cinq" in stored.text
    assert stored.source_run == result.run_id and stored.source_step == "helper"


@pytest.mark.anyio
async def test_agent_in_python() -> None:
    provider = scripted(ToolCall(id="c1", name="math.add", arguments={"a": 20, "b": 22}), "42")
    stack = Stack([Plugin(provider)])
    async with stack:
        result = await Agent(model="scripted/echo", tools=["math.add"]).run(stack, "sum?")
    assert (result.answer, result.turns, result.tool_calls) == ("42", 2, 1)
    with pytest.raises(AgentTurnLimitError):
        async with stack:
            provider.add(ToolCall(id="x", name="math.add", arguments={"a": 1}))
            await Agent(model="scripted/echo", tools=["math.add"], max_turns=1).run(stack, "?")


@pytest.mark.anyio
async def test_budget_exceeded_from_the_gateway_propagates() -> None:
    provider = scripted(BudgetExceeded("run budget spent", scope="run"))
    stack = Stack([Plugin(provider)])
    async with stack:
        result = await stack.run(agent_step())
    assert result.steps["helper"].status == "budget_exceeded"
