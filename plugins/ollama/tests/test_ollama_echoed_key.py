"""The API key echoed by a server in the places OllamaProvider builds messages from (issue 15,
item 5): it shows in no error's ``str``/``repr`` and in no parsed response."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from flowyard.errors import ProviderError
from flowyard.models import ChatRequest, Message

from flowyard_ollama.provider import OllamaProvider

pytestmark = pytest.mark.anyio

CANARY = "sk-canary-5e1f0a3b9c7d42e8b6a1"
ESCAPED = "".join(f"\\u{ord(c):04x}" for c in CANARY)

CASES: dict[str, tuple[bool, str, str]] = {
    "not-done": (False, "application/json", json.dumps({"detail": f"key {CANARY}"})),
    "escaped": (False, "application/json", '{"detail": "' + ESCAPED + '"}'),
    "html-page": (False, "text/html", f"<html>bad key {CANARY}</html>"),
    "error-field": (False, "application/json", json.dumps({"error": f"bad key {CANARY}"})),
    "broken-tool-call": (False, "application/json", json.dumps({"done": True, "message": {
        "role": "assistant", "content": "", "tool_calls": [{"function": {"x": CANARY}}]}})),
    "stream-error-line": (True, "application/x-ndjson",
                          json.dumps({"error": f"key {CANARY}"}) + "\n"),
    "stream-not-json": (True, "application/x-ndjson", f"{CANARY}\n"),
}


def provider(content_type: str, body: str) -> OllamaProvider:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": content_type},
                              content=body.encode())

    return OllamaProvider(api_key=CANARY, base_url="http://127.0.0.1:9", transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("name", sorted(CASES))
async def test_an_echoed_key_is_in_no_error(name: str) -> None:
    stream, content_type, body = CASES[name]
    request = ChatRequest(model="llama3.2", messages=[Message.user("hi")])
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
    body = json.dumps({"done": True, "message": {"role": "assistant",
                                          "content": f"your key is {CANARY}"},
                "prompt_eval_count": 1, "eval_count": 1})
    request = ChatRequest(model="llama3.2", messages=[Message.user("hi")])
    async with provider("application/json", body) as p:
        response = await p.chat(request)
    assert CANARY not in json.dumps(response.message.text)
    assert "***" in response.message.text
