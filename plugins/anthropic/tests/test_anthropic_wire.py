"""The Anthropic plugin against recorded request/response fixtures (respx routes): request
shapes, responses, every error shape, and cut streams."""

from __future__ import annotations

import email.utils
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from flowyard.errors import (
    AuthenticationError,
    BadRequestError,
    MalformedResponseError,
    RateLimitedError,
    ServerError,
)
from flowyard.models import ChatRequest, ImagePart, Message, ToolCall, ToolSpec
from flowyard_anthropic.provider import RESPONSE_TOOL, AnthropicProvider

pytestmark = pytest.mark.anyio

RECORDED = Path(__file__).parent / "recorded"
BASE = "https://api.anthropic.com"
KEY = "sk-ant-api03-SECRETxyz0123456789"
WEATHER = ToolSpec(name="get_weather", description="Weather of a city.",
                   parameters={"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]})
MODEL = "claude-sonnet-4-20250514"


def recorded(name: str) -> Any:
    text = (RECORDED / name).read_text()
    return json.loads(text) if name.endswith(".json") else text


def err(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


@pytest.fixture
def router() -> respx.MockRouter:
    return respx.MockRouter(base_url=BASE, assert_all_called=False)


@pytest.fixture
async def provider(router: respx.MockRouter) -> AsyncIterator[AnthropicProvider]:
    provider = AnthropicProvider(api_key=KEY, transport=httpx.MockTransport(router.async_handler))
    yield provider
    await provider.aclose()


def req(**kwargs: Any) -> ChatRequest:
    kwargs.setdefault("messages", [Message.user("Weather in San Francisco?")])
    return ChatRequest(model=MODEL, **kwargs)


def sse(body: str) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"},
                          content=body.encode())


async def test_request_shape(router: respx.MockRouter, provider: AnthropicProvider) -> None:
    route = router.post("/v1/messages").respond(json=recorded("message_tool_use.json"))
    messages = [
        Message.system("Be brief."),
        Message.system("Answer in English."),
        Message.user("Look", images=[ImagePart(data_base64="iVBORw0KGgo=",
                                               media_type="image/png"),
                                     ImagePart(url="data:image/jpeg;base64,/9j/4AAQ"),
                                     ImagePart(url="https://example.org/cat.jpg")]),
        Message.assistant("Checking.", tool_calls=[ToolCall("toolu_1", "get_weather",
                                                            {"city": "Rome"}),
                                                   ToolCall("toolu_2", "get_weather",
                                                            {"city": "Oslo"})]),
        Message.tool("toolu_1", "sunny"),
        Message.tool("toolu_2", "snow"),
        Message.user("And tomorrow?"),
    ]
    await provider.chat(req(messages=messages, tools=[WEATHER], tool_choice="required",
                            temperature=0.1, stop=["END"]))
    sent = route.calls.last.request
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "idempotency-key" not in sent.headers  # the Messages API has no such header
    body = json.loads(sent.content)
    assert body["system"] == "Be brief.\n\nAnswer in English."
    assert body["max_tokens"] == 64000  # claude-sonnet-4's output cap from the table
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "Look"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                     "data": "/9j/4AAQ"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.org/cat.jpg"}},
    ]
    assert body["messages"][1]["content"][1] == {"type": "tool_use", "id": "toolu_1",
                                                 "name": "get_weather",
                                                 "input": {"city": "Rome"}}
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "snow"},
        {"type": "text", "text": "And tomorrow?"},
    ]
    assert body["tools"] == [{"name": "get_weather", "description": "Weather of a city.",
                              "input_schema": WEATHER.parameters}]
    assert body["tool_choice"] == {"type": "any"}
    assert (body["temperature"], body["stop_sequences"]) == (0.1, ["END"])


@pytest.mark.parametrize(("choice", "wire"), [
    ("auto", {"type": "auto"}), ("none", {"type": "none"}),
    ("get_weather", {"type": "tool", "name": "get_weather"}),
])
async def test_tool_choice_mapping(router: respx.MockRouter, provider: AnthropicProvider,
                                   choice: str, wire: dict[str, str]) -> None:
    route = router.post("/v1/messages").respond(json=recorded("message_tool_use.json"))
    await provider.chat(req(tools=[WEATHER], tool_choice=choice, max_tokens=10))
    body = json.loads(route.calls.last.request.content)
    assert body["tool_choice"] == wire and body["max_tokens"] == 10


async def test_tool_choice_of_an_unknown_tool_is_refused(provider: AnthropicProvider) -> None:
    with pytest.raises(BadRequestError, match="not among the offered tools"):
        await provider.chat(req(tools=[WEATHER], tool_choice="get_time"))


async def test_response_with_tool_use_and_cost(router: respx.MockRouter,
                                               provider: AnthropicProvider) -> None:
    router.post("/v1/messages").respond(json=recorded("message_tool_use.json"))
    response = await provider.chat(req(tools=[WEATHER]))
    assert response.text == "I'll check the weather."
    assert response.message.tool_calls == [ToolCall("toolu_01A09q90qw90lq917835lq9",
                                                    "get_weather", {"city": "San Francisco"})]
    assert response.finish_reason == "tool_calls"
    assert response.cost_usd == pytest.approx(3.0 + 15.0)  # 1M in at $3, 1M out at $15


async def test_structured_output_through_a_forced_tool(router: respx.MockRouter,
                                                       provider: AnthropicProvider) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    route = router.post("/v1/messages").respond(json={
        "id": "msg_1", "type": "message", "role": "assistant", "model": MODEL,
        "content": [{"type": "tool_use", "id": "toolu_9", "name": RESPONSE_TOOL,
                     "input": {"city": "Paris"}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 10, "output_tokens": 5}})
    response = await provider.chat(req(response_schema=schema))
    body = json.loads(route.calls.last.request.content)
    assert body["tool_choice"] == {"type": "tool", "name": RESPONSE_TOOL}
    assert body["tools"][0]["input_schema"] == schema
    assert json.loads(response.text) == {"city": "Paris"}
    assert response.message.tool_calls == [] and response.finish_reason == "stop"


async def test_unknown_model_cost_is_unknown(router: respx.MockRouter,
                                             provider: AnthropicProvider) -> None:
    data = recorded("message_tool_use.json")
    router.post("/v1/messages").respond(json=data)
    response = await provider.chat(ChatRequest(model="claude-next-preview",
                                               messages=[Message.user("x")]))
    assert response.cost_usd is None
    body = json.loads(router.routes[0].calls.last.request.content)
    assert body["max_tokens"] == 4096  # unknown cap: the default


async def test_cache_tokens_count_as_input(router: respx.MockRouter,
                                           provider: AnthropicProvider) -> None:
    data = recorded("message_tool_use.json")
    data["usage"] = {"input_tokens": 10, "output_tokens": 2, "cache_creation_input_tokens": 5,
                     "cache_read_input_tokens": 100}
    router.post("/v1/messages").respond(json=data)
    response = await provider.chat(req())
    assert (response.usage.input_tokens, response.usage.output_tokens) == (115, 2)
    assert response.raw["usage"]["cache_read_input_tokens"] == 100


async def test_list_models_pages_and_prices(router: respx.MockRouter,
                                            provider: AnthropicProvider) -> None:
    route = router.get("/v1/models")
    route.side_effect = [
        httpx.Response(200, json={"data": [{"type": "model", "id": "claude-opus-4-1-20250805",
                                            "display_name": "Claude Opus 4.1",
                                            "created_at": "2025-08-05T00:00:00Z"}],
                                  "has_more": True, "first_id": "claude-opus-4-1-20250805",
                                  "last_id": "claude-opus-4-1-20250805"}),
        httpx.Response(200, json={"data": [{"type": "model", "id": "claude-future-9",
                                            "display_name": "Future"}],
                                  "has_more": False, "first_id": "claude-future-9",
                                  "last_id": "claude-future-9"}),
    ]
    models = await provider.list_models()
    assert [m.model for m in models] == ["claude-opus-4-1-20250805", "claude-future-9"]
    assert route.calls[1].request.url.params["after_id"] == "claude-opus-4-1-20250805"
    opus = models[0]
    assert (opus.price.input_per_mtok, opus.price.output_per_mtok) == (15.0, 75.0)
    assert opus.price.as_of == "2025-10" and "anthropic.com" in opus.price.source
    assert opus.context_window == 200000 and opus.metadata["display_name"] == "Claude Opus 4.1"
    assert models[1].price is None


async def test_embeddings_are_refused(provider: AnthropicProvider) -> None:
    with pytest.raises(BadRequestError, match="no embeddings"):
        await provider.embed(["x"], model=MODEL)


async def test_missing_key(router: respx.MockRouter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    provider = AnthropicProvider(transport=httpx.MockTransport(router.async_handler))
    with pytest.raises(AuthenticationError, match="ANTHROPIC_API_KEY"):
        await provider.chat(req())


async def test_key_from_environment(router: respx.MockRouter,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-env-0123456789")
    route = router.post("/v1/messages").respond(json=recorded("message_tool_use.json"))
    provider = AnthropicProvider(transport=httpx.MockTransport(router.async_handler))
    await provider.chat(req())
    assert route.calls.last.request.headers["x-api-key"] == "sk-ant-env-0123456789"
    assert "sk-ant-env" not in repr(provider)


# ----------------------------------------------------------------------------- errors


async def test_401_never_shows_the_key(router: respx.MockRouter, provider: AnthropicProvider,
                                       caplog: pytest.LogCaptureFixture) -> None:
    router.post("/v1/messages").respond(401, json=err("authentication_error",
                                                      f"invalid x-api-key {KEY}"))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AuthenticationError) as info:
        await provider.chat(req())
    assert info.value.retriable is False
    for text in (str(info.value), repr(info.value), repr(provider), caplog.text):
        assert KEY not in text and "SECRETxyz" not in text


@pytest.mark.parametrize(("headers", "expected"), [
    ({"retry-after-ms": "800"}, 0.8),
    ({"retry-after": "20"}, 20.0),
    ({"retry-after": "date"}, 45.0),
])
async def test_429_retry_after(router: respx.MockRouter, provider: AnthropicProvider,
                               headers: dict[str, str], expected: float) -> None:
    if headers.get("retry-after") == "date":
        headers = {"retry-after": email.utils.formatdate(time.time() + 45, usegmt=True)}
    router.post("/v1/messages").respond(429, json=err("rate_limit_error",
                                                      "Number of request tokens has exceeded "
                                                      "your per-minute rate limit"),
                                        headers=headers)
    with pytest.raises(RateLimitedError) as info:
        await provider.chat(req())
    assert info.value.retriable and info.value.retry_after == pytest.approx(expected, abs=1.5)


@pytest.mark.parametrize(("status", "kind", "error", "retriable"), [
    (529, "overloaded_error", ServerError, True),
    (500, "api_error", ServerError, True),
    (400, "invalid_request_error", BadRequestError, False),
    (404, "not_found_error", BadRequestError, False),
    (413, "request_too_large", BadRequestError, False),
    (403, "permission_error", AuthenticationError, False),
])
async def test_status_errors(router: respx.MockRouter, provider: AnthropicProvider,
                             status: int, kind: str, error: type, retriable: bool) -> None:
    router.post("/v1/messages").respond(status, json=err(kind, f"{kind} happened"))
    with pytest.raises(error) as info:
        await provider.chat(req())
    assert info.value.retriable is retriable and info.value.status_code == status
    assert f"{kind} happened" in str(info.value)


async def test_malformed_json(router: respx.MockRouter, provider: AnthropicProvider) -> None:
    router.post("/v1/messages").respond(200, text='{"id": "msg_1", "content": [')
    with pytest.raises(MalformedResponseError, match="not valid JSON"):
        await provider.chat(req())


async def test_message_without_usage_is_malformed(router: respx.MockRouter,
                                                  provider: AnthropicProvider) -> None:
    router.post("/v1/messages").respond(200, json={"id": "m", "type": "message", "content": []})
    with pytest.raises(MalformedResponseError, match="usage"):
        await provider.chat(req())


# ----------------------------------------------------------------------------- streams


async def test_recorded_stream(router: respx.MockRouter, provider: AnthropicProvider) -> None:
    route = router.post("/v1/messages").mock(return_value=sse(recorded("stream_tool_use.sse")))
    chunks = [c async for c in provider.stream(req(tools=[WEATHER]))]
    assert json.loads(route.calls.last.request.content)["stream"] is True
    assert [c.delta for c in chunks[:-1]] == ["Okay", ", let's check the weather."]
    final = chunks[-1]
    assert final.done and final.finish_reason == "tool_calls"
    assert final.tool_calls == [ToolCall("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather",
                                         {"city": "San Francisco"})]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (572, 89)


async def test_stream_cut_before_message_stop(router: respx.MockRouter,
                                              provider: AnthropicProvider) -> None:
    full = recorded("stream_tool_use.sse")
    router.post("/v1/messages").mock(return_value=sse(full[: full.index("event: message_delta")]))
    with pytest.raises(MalformedResponseError, match="message_stop"):
        [c async for c in provider.stream(req())]


async def test_stream_error_event_after_200(router: respx.MockRouter,
                                            provider: AnthropicProvider) -> None:
    full = recorded("stream_tool_use.sse")
    body = full[: full.index("event: content_block_stop")] + (
        'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", '
        '"message": "Overloaded"}}\n\n')
    router.post("/v1/messages").mock(return_value=sse(body))
    with pytest.raises(ServerError, match="Overloaded") as info:
        [c async for c in provider.stream(req())]
    assert info.value.retriable is True


async def test_stream_connection_cut(router: respx.MockRouter,
                                     provider: AnthropicProvider) -> None:
    head = recorded("stream_tool_use.sse")[:400].encode()

    class Cut(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield head
            raise httpx.ReadError("connection reset by peer")

    router.post("/v1/messages").mock(return_value=httpx.Response(
        200, headers={"content-type": "text/event-stream"}, stream=Cut()))
    with pytest.raises(MalformedResponseError, match="cut"):
        [c async for c in provider.stream(req())]


async def test_stream_http_error(router: respx.MockRouter, provider: AnthropicProvider) -> None:
    router.post("/v1/messages").respond(529, json=err("overloaded_error", "Overloaded"))
    with pytest.raises(ServerError) as info:
        [c async for c in provider.stream(req())]
    assert info.value.status_code == 529


async def test_stream_structured_output(fake_anthropic: Any) -> None:
    provider = AnthropicProvider(api_key="sk-ant-api03-FAKEkey0123456789",
                                 transport=httpx.MockTransport(fake_anthropic))
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"]}
    chunks = [c async for c in provider.stream(ChatRequest(
        model="claude-3-5-haiku-20241022", messages=[Message.user("Capital of France?")],
        response_schema=schema))]
    assert json.loads("".join(c.delta for c in chunks)) == {"city": "Paris"}
    assert chunks[-1].done and chunks[-1].tool_calls == []
    await provider.aclose()
