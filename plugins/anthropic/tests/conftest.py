"""A fake Anthropic Messages API as an httpx transport handler, for the flowyard-anthropic
tests (the contract suite runs against it). It follows the documented wire shapes:
https://docs.anthropic.com/en/api/messages and .../messages-streaming."""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

import httpx
import pytest

# Real models are loaded from installed packages only; never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once on asyncio and once on trio."""
    return str(request.param)


API_KEY = "sk-ant-api03-FAKEkey0123456789"
MODELS = ["claude-3-5-haiku-20241022", "claude-sonnet-4-20250514"]


def example(schema: dict[str, Any]) -> Any:
    """A minimal value satisfying a simple JSON Schema."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {k: example(v) for k, v in schema.get("properties", {}).items()}
    return {"string": "Paris", "integer": 1, "number": 1.0, "boolean": True,
            "array": []}.get(kind)


def _error(status: int, kind: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"type": "error",
                                        "error": {"type": kind, "message": message}})


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(b.get("text", "") for b in content if b.get("type") == "text")


class FakeAnthropic:
    """The fake API; ``requests`` keeps every request body received."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("x-api-key") != API_KEY:
            return _error(401, "authentication_error", "invalid x-api-key")
        if request.headers.get("anthropic-version") != "2023-06-01":
            return _error(400, "invalid_request_error", "anthropic-version header is required")
        if request.method == "GET" and request.url.path == "/v1/models":
            after = request.url.params.get("after_id")
            index = MODELS.index(after) + 1 if after else 0
            page = MODELS[index:index + 1]
            return httpx.Response(200, json={
                "data": [{"type": "model", "id": m, "display_name": m.title(),
                          "created_at": "2025-05-14T00:00:00Z"} for m in page],
                "has_more": index + 1 < len(MODELS), "first_id": page[0], "last_id": page[-1]})
        if request.method != "POST" or request.url.path != "/v1/messages":
            return _error(404, "not_found_error", f"no route {request.url.path}")
        body = json.loads(request.content)
        self.requests.append(body)
        if body.get("model") not in MODELS:
            return _error(404, "not_found_error", f"model: {body.get('model')}")
        if "max_tokens" not in body:
            return _error(400, "invalid_request_error", "max_tokens: Field required")
        roles = [m["role"] for m in body["messages"]]
        if any(a == b for a, b in itertools.pairwise(roles)) or roles[:1] != ["user"]:
            return _error(400, "invalid_request_error", "roles must alternate, user first")
        input_tokens = sum(len(_text_of(m["content"]).split()) for m in body["messages"]) + 3
        choice = body.get("tool_choice") or {"type": "auto"}
        tools = body.get("tools") or []
        if tools and choice["type"] in ("any", "tool"):
            tool = next((t for t in tools if t["name"] == choice.get("name")), tools[0])
            blocks = [{"type": "tool_use", "id": "toolu_01Fake", "name": tool["name"],
                       "input": example(tool["input_schema"])}]
            stop = "tool_use"
        else:
            last = _text_of(body["messages"][-1]["content"])
            words = f"echo: {last}".split()
            stop = "end_turn"
            if len(words) > body["max_tokens"]:
                words, stop = words[: body["max_tokens"]], "max_tokens"
            blocks = [{"type": "text", "text": " ".join(words)}]
        output_tokens = sum(len(b.get("text", "").split()) or 5 for b in blocks)
        if not body.get("stream"):
            return httpx.Response(200, json={
                "id": "msg_01Fake", "type": "message", "role": "assistant",
                "model": body["model"], "content": blocks, "stop_reason": stop,
                "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}})
        events: list[tuple[str, dict[str, Any]]] = [("message_start", {
            "type": "message_start", "message": {
                "id": "msg_01Fake", "type": "message", "role": "assistant", "content": [],
                "model": body["model"], "stop_reason": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": 1}}})]
        events.append(("ping", {"type": "ping"}))
        for i, block in enumerate(blocks):
            if block["type"] == "text":
                events.append(("content_block_start", {"type": "content_block_start",
                                                       "index": i, "content_block": {
                                                           "type": "text", "text": ""}}))
                for j, word in enumerate(block["text"].split(" ")):
                    events.append(("content_block_delta", {
                        "type": "content_block_delta", "index": i,
                        "delta": {"type": "text_delta", "text": word if j == 0 else " " + word}}))
            else:
                events.append(("content_block_start", {
                    "type": "content_block_start", "index": i, "content_block": {
                        "type": "tool_use", "id": block["id"], "name": block["name"],
                        "input": {}}}))
                text = json.dumps(block["input"])
                for piece in (text[: len(text) // 2], text[len(text) // 2:]):
                    events.append(("content_block_delta", {
                        "type": "content_block_delta", "index": i,
                        "delta": {"type": "input_json_delta", "partial_json": piece}}))
            events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
        events.append(("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens":
                                                                   output_tokens}}))
        events.append(("message_stop", {"type": "message_stop"}))
        payload = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=payload.encode())


@pytest.fixture
def fake_anthropic() -> FakeAnthropic:
    return FakeAnthropic()
