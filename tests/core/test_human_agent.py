"""An agent calls human.input / human.approve as a tool: the run waits with the agent's
conversation stored, and after the answer the agent goes on from that tool call (the model is
not asked again for the turn that called it); native and ReAct modes, two waits in a row."""

from __future__ import annotations

from typing import Any

import flowyard
import pytest
from flowyard.builtin.fake import FakeProvider
from flowyard.engine.human import pending_steps
from flowyard.models import Message, ToolCall
from flowyard.stack import Stack


class Plugin:
    def __init__(self, provider: FakeProvider) -> None:
        self.provider = provider

    @flowyard.hookimpl
    def register_providers(self, register: Any, config: Any) -> None:
        register(self.provider.name, self.provider)


def workflow(mode: str) -> dict[str, Any]:
    return {"name": "ask-agent", "steps": [
        {"id": "echoed", "uses": "echo", "with": {"value": "before"}},
        {"id": "helper", "uses": "agent", "depends_on": ["echoed"], "with": {
            "model": "scripted/echo", "prompt": "Plan the trip.", "mode": mode,
            "tools": ["human.input", "human.approve"], "max_turns": 6}}],
        "outputs": {"answer": "{{ steps.helper.output.answer }}",
                    "calls": "{{ steps.helper.output.tool_calls }}"}}


@pytest.mark.anyio
async def test_native_agent_waits_twice_and_keeps_its_conversation() -> None:
    provider = FakeProvider(name="scripted", script=[
        Message.assistant("Let me ask.", tool_calls=[ToolCall(
            id="c1", name="human.input",
            arguments={"prompt": "Which city?", "schema": {"type": "string"}})]),
        ToolCall(id="c1", name="human.approve", arguments={"prompt": "Book Paris?"}),
        "Booked Paris.",
    ])
    async with Stack([Plugin(provider)]) as stack:
        first = await stack.run(workflow("native"))
        assert first.status == "waiting"
        record = await stack.storage.get_run(first.run_id)
        (key, request), = pending_steps(record).items()
        assert key == "helper/1:c1" and request["prompt"] == "Which city?"
        assert request["step_id"] == "helper" and request["state"]["turn"] == 1
        assert len(provider.requests) == 1

        second = await stack.answer(first.run_id, "helper", "Paris", actor="user:ann")
        assert second.status == "waiting"
        assert len(provider.requests) == 2  # turn 1 was not asked again
        tool_message = provider.requests[1].messages[-1]
        assert tool_message.role == "tool" and '"value": "Paris"' in tool_message.text
        assert '"by": "user:ann"' in tool_message.text
        record = await stack.storage.get_run(first.run_id)
        assert list(pending_steps(record)) == ["helper/2:c1"]  # same id, another turn

        done = await stack.answer(first.run_id, "helper/2:c1", {"approved": True},
                                  actor="user:bob")
        assert done.status == "completed"
        assert done.outputs == {"answer": "Booked Paris.", "calls": 2}
        assert len(provider.requests) == 3
        roles = [m.role for m in provider.requests[2].messages]
        assert roles == ["system", "user", "assistant", "tool", "assistant", "tool"]
        assert done.steps["echoed"].resumed


@pytest.mark.anyio
async def test_react_agent_continues_after_the_answer() -> None:
    provider = FakeProvider(name="scripted", script=[
        'Thought: ask\nAction: human.input\nAction Input: {"prompt": "Budget in USD?"}',
        "Thought: I know the answer\nFinal Answer: 300 USD it is.",
    ])
    async with Stack([Plugin(provider)]) as stack:
        first = await stack.run(workflow("react"))
        assert first.status == "waiting"
        result = await stack.resume(first.run_id)  # no answer yet: waits again, no model call
        assert result.status == "waiting" and len(provider.requests) == 1
        done = await stack.answer(first.run_id, "helper", 300, actor="user:ann")
        assert done.status == "completed" and done.outputs["answer"] == "300 USD it is."
        last = provider.requests[-1].messages[-1]
        assert last.role == "user" and last.text.startswith("Observation: ")
        assert '"value": 300' in last.text
