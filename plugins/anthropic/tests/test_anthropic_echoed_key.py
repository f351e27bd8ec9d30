"""The API key echoed by a server in the places AnthropicProvider builds messages from (issue 15,
item 5): it shows in no error's ``str``/``repr`` and in no parsed response."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from flowyard.errors import ProviderError
from flowyard.models import ChatRequest, Message

from flowyard_anthropic.provider import AnthropicProvider

pytestmark = pytest.mark.anyio

CANARY = "sk-canary-5e1f0a3b9c7d42e8b6a1"
ESCAPED = "".join(f"\\u{ord(c):04x}" for c in CANARY)

CASES: dict[str, tuple[bool, str, str]] = {
    "no-content": (False, "application/json", json.dumps({"detail": f"key {CANARY}"})),
    "no-content-escaped": (False, "application/json", '{"detail": "' + ESCAPED + '"}'),
    "html-page": (False, "text/html", f"<html>bad key {CANARY}</html>"),
    "error-object": (False, "application/json", json.dumps(
        {"type": "error", "error": {"type": "authentication_error", "message": CANARY}})),
    "stream-error-event": (True, "text/event-stream", "event: error\ndata: " + json.dumps(
        {"type": "error", "error": {"type": "overloaded_error", "message": CANARY}}) + "\n\n"),
    "stream-tool-input": (True, "text/event-stream", "".join(
        f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in [
            {"type": "message_start", "message": {"usage": {"input_tokens": 1,
                                                            "output_tokens": 0}}},
            {"type": "content_block_start", "index": 0,
             "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}},
            {"type": "content_block_delta", "index": 0,
             "delta": {"type": "input_json_delta", "partial_json": "x" * 190 + CANARY}},
            {"type": "content_block_stop", "index": 0}])),
}


def provider(content_type: str, body: str) -> AnthropicProvider:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": content_type},
                              content=body.encode())

    return AnthropicProvider(api_key=CANARY, transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("name", sorted(CASES))
async def test_an_echoed_key_is_in_no_error(name: str) -> None:
    stream, content_type, body = CASES[name]
    request = ChatRequest(model="claude-haiku-4-5", messages=[Message.user("hi")])
    async with provider(content_type, body) as p:
        with pytest.raises(ProviderError) as info:
            if stream:
                async for _chunk in p.stream(request):
                    pass
            else:
                await p.chat(request)
    for text in (str(info.value), repr(info.value)):
        assert CANARY not in text and CANARY[:12] not in text, text


async def test_an_echoed_key_in_a_reply_is_redacted() -> None:
    body = json.dumps({"content": [{"type": "text", "text": f"your key is {CANARY}"}],
                "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1}})
    request = ChatRequest(model="claude-haiku-4-5", messages=[Message.user("hi")])
    async with provider("application/json", body) as p:
        response = await p.chat(request)
    assert CANARY not in json.dumps(response.message.text)
    assert "***" in response.message.text
