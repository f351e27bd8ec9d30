"""A stream that reports no usage is charged for locally counted tokens, marked estimated,
never a cost of 0 tokens (free models cost 0.0, unpriced ones stay unknown)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

import flowyard
from flowyard.builtin.fake import FakeProvider
from flowyard.models import ChatChunk, ChatRequest, Event
from flowyard.stack import Stack


class SilentUsageProvider(FakeProvider):
    """Streams text but never reports token usage (like some OpenAI-compatible servers)."""

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        yield ChatChunk(delta="some text")
        yield ChatChunk(done=True, finish_reason="stop")


class Setup:
    @flowyard.hookimpl
    def register_providers(self, register: Any) -> None:
        register("silent", SilentUsageProvider(name="silent"))


@pytest.mark.anyio
@pytest.mark.parametrize(("model", "expected_cost"), [
    # prompt "hi": 8 tokens estimated at $1/Mtok; "some text": 9 ASCII chars = 3 tokens at $2
    ("priced", (8 * 1.0 + 3 * 2.0) / 1e6), ("echo", 0.0), ("unpriced", None)])
async def test_stream_without_usage_is_charged_an_estimate(
        flowyard_home: Any, model: str, expected_cost: float | None) -> None:
    stack = Stack([("setup", Setup())], config={"storage": {"url": "memory://"}})
    events: list[Event] = []
    stack.events.subscribe(events.append)
    async with stack:
        text = "".join([c.delta async for c in stack.llm.stream("hi", model=f"silent/{model}")])
    assert text == "some text"
    [call] = [e for e in events if e.type == "llm.call"]
    assert call.data["usage_reported"] is False
    assert call.data["estimated"] is True
    assert call.data["output_tokens"] == 3
    if expected_cost is None:
        assert call.data["cost_usd"] is None
    else:
        assert call.data["cost_usd"] == pytest.approx(expected_cost)
