"""The OpenAI plugin against recorded request/response fixtures (respx routes): the request
it sends, the responses it understands, every error shape, and cut streams."""

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
    ProviderTimeoutError,
    RateLimitedError,
    ServerError,
)
from flowyard.models import ChatRequest, ImagePart, Message, ToolCall, ToolSpec
from flowyard_openai.provider import OpenAIProvider

pytestmark = pytest.mark.anyio

RECORDED = Path(__file__).parent / "recorded"
BASE = "https://api.openai.com/v1"
KEY = "sk-proj-SECRETabcdef0123456789"
WEATHER = ToolSpec(name="get_weather", description="Weather of a city.",
                   parameters={"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]})


def recorded(name: str) -> Any:
    text = (RECORDED / name).read_text()
    return json.loads(text) if name.endswith(".json") else text


@pytest.fixture
def router() -> respx.MockRouter:
    return respx.MockRouter(base_url=BASE, assert_all_called=False)


@pytest.fixture
async def provider(router: respx.MockRouter) -> AsyncIterator[OpenAIProvider]:
    provider = OpenAIProvider(api_key=KEY, transport=httpx.MockTransport(router.async_handler))
    yield provider
    await provider.aclose()


def req(**kwargs: Any) -> ChatRequest:
    kwargs.setdefault("messages", [Message.user("Weather in Paris?")])
    return ChatRequest(model="gpt-4o-mini", **kwargs)


def sse(body: str, status: int = 200) -> httpx.Response:
    return httpx.Response(status, headers={"content-type": "text/event-stream"},
                          content=body.encode())


# ----------------------------------------------------------------------------- requests


async def test_request_body_and_headers(router: respx.MockRouter,
                                        provider: OpenAIProvider) -> None:
    route = router.post("/chat/completions").respond(json=recorded("chat_tool_call.json"))
    messages = [
        Message.system("Be brief."),
        Message.user("Look at this", images=[ImagePart(data_base64="iVBORw0KGgo=",
                                                       media_type="image/png"),
                                             ImagePart(url="https://example.org/cat.jpg")]),
        Message.assistant("", tool_calls=[ToolCall("call_1", "get_weather", {"city": "Rome"})]),
        Message.tool("call_1", "sunny"),
    ]
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    await provider.chat(req(messages=messages, tools=[WEATHER], tool_choice="get_weather",
                            response_schema=schema, temperature=0.2, max_tokens=50,
                            stop=["\n"], seed=3, idempotency_key="run1:step1:0"))
    sent = route.calls.last.request
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["idempotency-key"] == "run1:step1:0"
    body = json.loads(sent.content)
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][1]["content"] == [
        {"type": "text", "text": "Look at this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.org/cat.jpg"}},
    ]
    assert body["messages"][2] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]}
    assert body["messages"][3] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    assert body["tools"][0]["function"]["name"] == "get_weather"
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "response", "schema": schema}}
    assert body["max_completion_tokens"] == 50  # OpenAI's own field for its API
    assert (body["temperature"], body["stop"], body["seed"]) == (0.2, ["\n"], 3)
    assert "stream" not in body


async def test_compatible_server_uses_max_tokens_and_json_object_mode() -> None:
    router = respx.MockRouter(base_url="http://127.0.0.1:9/v1")
    route = router.post("/chat/completions").respond(json=recorded("chat_text.json"))
    provider = OpenAIProvider("vllm", base_url="http://127.0.0.1:9/v1",
                              structured_output="json_object",
                              transport=httpx.MockTransport(router.async_handler))
    await provider.chat(req(max_tokens=5, response_schema={"type": "object"}))
    body = json.loads(route.calls.last.request.content)
    assert body["max_tokens"] == 5 and "max_completion_tokens" not in body
    assert body["response_format"] == {"type": "json_object", "schema": {"type": "object"}}
    assert "authorization" not in route.calls.last.request.headers  # no key configured
    await provider.aclose()


# ----------------------------------------------------------------------------- responses


async def test_tool_call_response_and_cost(router: respx.MockRouter,
                                           provider: OpenAIProvider) -> None:
    router.post("/chat/completions").respond(json=recorded("chat_tool_call.json"))
    response = await provider.chat(req(tools=[WEATHER]))
    assert response.message.tool_calls == [ToolCall("call_Xy12", "get_weather",
                                                    {"city": "Paris"})]
    assert response.finish_reason == "tool_calls"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (82, 17)
    assert response.model == "gpt-4o-mini-2024-07-18"
    # gpt-4o-mini: 0.15 / 0.60 US dollars per million tokens (the shipped table)
    assert response.cost_usd == pytest.approx((82 * 0.15 + 17 * 0.60) / 1e6)


async def test_unknown_model_cost_is_none_not_zero(router: respx.MockRouter,
                                                   provider: OpenAIProvider) -> None:
    router.post("/chat/completions").respond(json=recorded("chat_text.json"))
    response = await provider.chat(ChatRequest(model="ft:my-own-model",
                                               messages=[Message.user("x")]))
    assert response.usage.input_tokens == 1_000_000
    assert response.cost_usd is None


async def test_price_override_from_configuration(router: respx.MockRouter) -> None:
    router.post("/chat/completions").respond(json=recorded("chat_text.json"))
    provider = OpenAIProvider(api_key=KEY, prices={"gpt-4o-mini": {"input": 1, "output": 3}},
                              transport=httpx.MockTransport(router.async_handler))
    response = await provider.chat(req())
    assert response.cost_usd == pytest.approx(4.0)  # 1M tokens in at $1 + 1M out at $3
    assert provider.price("gpt-4o-mini").source == "flowyard.toml"
    await provider.aclose()


async def test_stream_with_tool_calls_and_usage(router: respx.MockRouter,
                                                provider: OpenAIProvider) -> None:
    route = router.post("/chat/completions").mock(
        return_value=sse(recorded("stream_tool_call.sse")))
    chunks = [c async for c in provider.stream(req(tools=[WEATHER]))]
    body = json.loads(route.calls.last.request.content)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert [c.delta for c in chunks[:-1]] == ["Let me check. "]
    final = chunks[-1]
    assert final.done and final.finish_reason == "tool_calls"
    assert final.tool_calls == [ToolCall("call_A", "get_weather", {"city": "Paris"}),
                                ToolCall("call_B", "get_time", {})]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (90, 30)


async def test_embeddings_are_returned_in_index_order(router: respx.MockRouter,
                                                      provider: OpenAIProvider) -> None:
    route = router.post("/embeddings").respond(json={"object": "list", "data": [
        {"object": "embedding", "index": 1, "embedding": [0.0, 1.0]},
        {"object": "embedding", "index": 0, "embedding": [1.0, 0.0]}],
        "model": "text-embedding-3-small", "usage": {"prompt_tokens": 4, "total_tokens": 4}})
    vectors = await provider.embed(["first", "second"], model="text-embedding-3-small")
    assert vectors == [[1.0, 0.0], [0.0, 1.0]]
    assert json.loads(route.calls.last.request.content)["input"] == ["first", "second"]
    assert await provider.embed([], model="text-embedding-3-small") == []
    assert route.call_count == 1


async def test_list_models_merges_the_price_table(router: respx.MockRouter,
                                                  provider: OpenAIProvider) -> None:
    router.get("/models").respond(json={"object": "list", "data": [
        {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"},
        {"id": "text-embedding-3-large", "object": "model", "created": 1705953180,
         "owned_by": "system"},
        {"id": "ft:gpt-4o-mini:acme::abc", "object": "model", "created": 1, "owned_by": "acme"},
        {"id": "whisper-1", "object": "model", "created": 1, "owned_by": "openai-internal"},
        {"id": "dall-e-3", "object": "model", "created": 1, "owned_by": "system"},
    ]})
    models = {m.model: m for m in await provider.list_models()}
    assert models["gpt-4o"].price.input_per_mtok == 2.5
    assert models["gpt-4o"].price.source.startswith("https://openai.com/api/pricing")
    assert models["gpt-4o"].price.as_of == "2025-08"
    assert models["gpt-4o"].context_window == 128000
    assert "vision" in models["gpt-4o"].capabilities
    assert models["text-embedding-3-large"].capabilities == {"embeddings"}
    assert models["ft:gpt-4o-mini:acme::abc"].price is None
    assert models["ft:gpt-4o-mini:acme::abc"].metadata["owned_by"] == "acme"
    assert "tools" in models["ft:gpt-4o-mini:acme::abc"].capabilities
    assert models["whisper-1"].capabilities == set() == models["dall-e-3"].capabilities


# ----------------------------------------------------------------------------- errors


OPENAI_401 = {"error": {"message": f"Incorrect API key provided: {KEY}. You can find your API "
                        "key at https://platform.openai.com/account/api-keys.",
                        "type": "invalid_request_error", "param": None,
                        "code": "invalid_api_key"}}
OPENAI_429 = {"error": {"message": "Rate limit reached for gpt-4o-mini on tokens per min (TPM)",
                        "type": "tokens", "param": None, "code": "rate_limit_exceeded"}}


async def test_401_is_authentication_error_without_the_key(
        router: respx.MockRouter, provider: OpenAIProvider,
        caplog: pytest.LogCaptureFixture) -> None:
    router.post("/chat/completions").respond(401, json=OPENAI_401)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AuthenticationError) as info:
        await provider.chat(req())
    err = info.value
    assert err.retriable is False and err.status_code == 401 and err.provider == "openai"
    assert "Incorrect API key provided: ***" in str(err)
    for text in (str(err), repr(err), repr(provider), repr(vars(err)), caplog.text):
        assert KEY not in text
        assert "SECRETabcdef" not in text


@pytest.mark.parametrize(("headers", "expected"), [
    ({"retry-after-ms": "1500"}, 1.5),
    ({"retry-after": "7"}, 7.0),
    ({"retry-after": "http-date"}, 30.0),
    ({}, None),
])
async def test_429_parses_each_retry_after_form(router: respx.MockRouter,
                                                provider: OpenAIProvider,
                                                headers: dict[str, str],
                                                expected: float | None) -> None:
    if headers.get("retry-after") == "http-date":
        headers = {"retry-after": email.utils.formatdate(time.time() + 30, usegmt=True)}
    router.post("/chat/completions").respond(429, json=OPENAI_429, headers=headers)
    with pytest.raises(RateLimitedError) as info:
        await provider.chat(req())
    assert info.value.retriable is True
    if expected is None:
        assert info.value.retry_after is None
    else:
        assert info.value.retry_after == pytest.approx(expected, abs=1.5)


async def test_429_insufficient_quota_is_not_retriable(router: respx.MockRouter,
                                                       provider: OpenAIProvider) -> None:
    router.post("/chat/completions").respond(429, json={"error": {
        "message": "You exceeded your current quota.", "type": "insufficient_quota",
        "param": None, "code": "insufficient_quota"}})
    with pytest.raises(RateLimitedError) as info:
        await provider.chat(req())
    assert info.value.retriable is False


@pytest.mark.parametrize(("status", "body", "error", "retriable"), [
    (500, {"error": {"message": "The server had an error", "type": "server_error"}},
     ServerError, True),
    (503, "upstream connect error", ServerError, True),
    (400, {"error": {"message": "Invalid 'messages[0].role'", "type": "invalid_request_error",
                     "param": "messages[0].role", "code": None}}, BadRequestError, False),
    (404, {"error": {"message": "The model `gpt-9` does not exist", "type":
                     "invalid_request_error", "code": "model_not_found"}},
     BadRequestError, False),
    (403, {"error": {"message": "Project does not have access", "type":
                     "invalid_request_error"}}, AuthenticationError, False),
    (408, {"error": {"message": "Request timed out"}}, ProviderTimeoutError, True),
])
async def test_status_errors(router: respx.MockRouter, provider: OpenAIProvider, status: int,
                             body: Any, error: type, retriable: bool) -> None:
    kwargs = {"json": body} if isinstance(body, dict) else {"text": body}
    router.post("/chat/completions").respond(status, **kwargs)
    with pytest.raises(error) as info:
        await provider.chat(req())
    assert info.value.retriable is retriable
    assert info.value.status_code == status
    message = body["error"]["message"] if isinstance(body, dict) else body
    assert message in str(info.value)


async def test_malformed_json_body(router: respx.MockRouter, provider: OpenAIProvider) -> None:
    router.post("/chat/completions").respond(200, text='{"id": "chatcmpl-1", "choices": [')
    with pytest.raises(MalformedResponseError, match="not valid JSON") as info:
        await provider.chat(req())
    assert info.value.retriable is True


async def test_json_without_choices_is_malformed(router: respx.MockRouter,
                                                 provider: OpenAIProvider) -> None:
    router.post("/chat/completions").respond(200, json={"id": "x", "object": "chat.completion"})
    with pytest.raises(MalformedResponseError, match="choices"):
        await provider.chat(req())


async def test_error_object_after_http_200(router: respx.MockRouter,
                                           provider: OpenAIProvider) -> None:
    router.post("/chat/completions").respond(200, json={"error": {
        "message": "Rate limit reached", "type": "rate_limit_error"}})
    with pytest.raises(RateLimitedError):
        await provider.chat(req())


async def test_tool_arguments_that_are_not_json(router: respx.MockRouter,
                                                provider: OpenAIProvider) -> None:
    data = recorded("chat_tool_call.json")
    data["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = '{"city": "Par'
    router.post("/chat/completions").respond(json=data)
    with pytest.raises(MalformedResponseError, match="get_weather"):
        await provider.chat(req(tools=[WEATHER]))


async def test_transport_timeout(router: respx.MockRouter, provider: OpenAIProvider) -> None:
    router.post("/chat/completions").mock(side_effect=httpx.ReadTimeout("read timed out"))
    with pytest.raises(ProviderTimeoutError) as info:
        await provider.chat(req())
    assert info.value.retriable is True


async def test_missing_key_for_openai_is_reported_before_sending(
        router: respx.MockRouter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    route = router.post("/chat/completions").respond(json=recorded("chat_text.json"))
    provider = OpenAIProvider(transport=httpx.MockTransport(router.async_handler))
    with pytest.raises(AuthenticationError, match="OPENAI_API_KEY"):
        await provider.chat(req())
    assert route.call_count == 0


async def test_key_from_environment(router: respx.MockRouter,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env-0123456789")
    route = router.post("/chat/completions").respond(json=recorded("chat_text.json"))
    provider = OpenAIProvider(transport=httpx.MockTransport(router.async_handler))
    await provider.chat(req())
    assert route.calls.last.request.headers["authorization"] == "Bearer sk-from-env-0123456789"
    assert "sk-from-env" not in repr(provider)


# ----------------------------------------------------------------------------- cut streams


HEAD = ('data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,'
        '"delta":{"content":"Hel"},"finish_reason":null}]}\n\n')


async def test_stream_without_done_marker_is_malformed(router: respx.MockRouter,
                                                       provider: OpenAIProvider) -> None:
    router.post("/chat/completions").mock(return_value=sse(HEAD))
    chunks = []
    with pytest.raises(MalformedResponseError, match=r"\[DONE\]"):
        async for chunk in provider.stream(req()):
            chunks.append(chunk)
    assert [c.delta for c in chunks] == ["Hel"]
    assert not any(c.done for c in chunks)


async def test_stream_cut_by_the_connection(router: respx.MockRouter,
                                            provider: OpenAIProvider) -> None:
    class Cut(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield HEAD.encode()
            raise httpx.RemoteProtocolError("peer closed connection without sending complete "
                                            "message body (incomplete chunked read)")

    router.post("/chat/completions").mock(return_value=httpx.Response(
        200, headers={"content-type": "text/event-stream"}, stream=Cut()))
    with pytest.raises(MalformedResponseError, match="cut"):
        [c async for c in provider.stream(req())]


async def test_stream_error_event_after_200(router: respx.MockRouter,
                                            provider: OpenAIProvider) -> None:
    body = HEAD + ('data: {"error": {"message": "The server had an error while processing '
                   'your request.", "type": "server_error"}}\n\n')
    router.post("/chat/completions").mock(return_value=sse(body))
    with pytest.raises(ServerError, match="server had an error"):
        [c async for c in provider.stream(req())]


async def test_stream_event_that_is_not_json(router: respx.MockRouter,
                                             provider: OpenAIProvider) -> None:
    router.post("/chat/completions").mock(return_value=sse(HEAD + "data: {oops\n\n"))
    with pytest.raises(MalformedResponseError, match="stream event"):
        [c async for c in provider.stream(req())]


async def test_stream_http_error_status(router: respx.MockRouter,
                                        provider: OpenAIProvider) -> None:
    router.post("/chat/completions").respond(429, json=OPENAI_429,
                                             headers={"retry-after-ms": "250"})
    with pytest.raises(RateLimitedError) as info:
        [c async for c in provider.stream(req())]
    assert info.value.retry_after == 0.25


async def test_stream_answered_with_json_instead_of_events(router: respx.MockRouter,
                                                           provider: OpenAIProvider) -> None:
    router.post("/chat/completions").respond(200, json=recorded("chat_text.json"))
    with pytest.raises(MalformedResponseError, match="event stream"):
        [c async for c in provider.stream(req())]


async def test_key_never_reaches_stack_events(router: respx.MockRouter,
                                              provider: OpenAIProvider,
                                              flowyard_home: Path) -> None:
    from flowyard.hookspecs import hookimpl
    from flowyard.stack import Stack

    class KeyTestPlugin:
        @hookimpl
        def register_providers(self, register: Any, config: Any) -> None:
            register("openai", provider)

    router.get("/models").respond(401, json=OPENAI_401)
    router.post("/chat/completions").respond(401, json=OPENAI_401)
    stack = Stack([("keytest", KeyTestPlugin())], config={"storage": {"url": "memory://"}})
    events: list[Any] = []
    async with stack:
        stack.events.subscribe(events.append)
        assert [m for m in await stack.llm.list_models() if m.provider == "openai"] == []
        with pytest.raises(AuthenticationError) as info:
            await stack.llm.chat("hi", model="openai/gpt-4o-mini")
    assert any(e.type == "provider.error" for e in events)
    dumped = json.dumps([e.data for e in events], default=str) + str(info.value)
    assert "Incorrect API key provided" in dumped
    assert KEY not in dumped and "SECRETabcdef" not in dumped
