"""The API key echoed by a server in the places OpenAIProvider builds messages from (issue 15,
item 5): it shows in no error's ``str``/``repr`` and in no parsed response."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from flowyard.errors import ProviderError
from flowyard.models import ChatRequest, Message

from flowyard_openai.provider import OpenAIProvider

pytestmark = pytest.mark.anyio

CANARY = "sk-canary-5e1f0a3b9c7d42e8b6a1"
ESCAPED = "".join(f"\\u{ord(c):04x}" for c in CANARY)

CASES: dict[str, tuple[bool, str, str]] = {
    "no-choices": (False, "application/json", json.dumps({"detail": f"key {CANARY}"})),
    "no-choices-escaped": (False, "application/json", '{"detail": "' + ESCAPED + '"}'),
    "html-page": (False, "text/html", f"<html>bad key {CANARY}</html>"),
    "tool-arguments": (False, "application/json", json.dumps({"choices": [{"message": {
        "role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
        "function": {"name": "f", "arguments": "x" * 190 + CANARY}}]}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1}})),
    "error-field": (False, "application/json",
                    json.dumps({"error": {"message": CANARY, "type": CANARY}})),
    "stream-error-event": (True, "text/event-stream",
                           f'data: {{"error": {{"message": "key {CANARY}"}}}}\n\n'),
    "stream-not-json": (True, "text/event-stream", f"data: {CANARY}\n\n"),
}


def provider(content_type: str, body: str) -> OpenAIProvider:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": content_type},
                              content=body.encode())

    return OpenAIProvider(api_key=CANARY, base_url="http://127.0.0.1:9/v1", transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("name", sorted(CASES))
async def test_an_echoed_key_is_in_no_error(name: str) -> None:
    stream, content_type, body = CASES[name]
    request = ChatRequest(model="m", messages=[Message.user("hi")])
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
    body = json.dumps({"choices": [{"message": {"role": "assistant",
                                         "content": f"your key is {CANARY}"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    request = ChatRequest(model="m", messages=[Message.user("hi")])
    async with provider("application/json", body) as p:
        response = await p.chat(request)
    assert CANARY not in json.dumps(response.message.text)
    assert "***" in response.message.text
