"""The Ollama plugin against recorded request/response fixtures (respx routes): request
shapes, images, generate, model listing, every error shape and cut NDJSON streams."""

from __future__ import annotations

import base64
import json
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
from flowyard_ollama.provider import OllamaProvider, base_url_from_env

pytestmark = pytest.mark.anyio

RECORDED = Path(__file__).parent / "recorded"
BASE = "http://127.0.0.1:11434"
WEATHER = ToolSpec(name="get_current_weather", description="Weather.",
                   parameters={"type": "object", "properties": {"location": {"type": "string"}}})
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


def recorded(name: str) -> Any:
    text = (RECORDED / name).read_text()
    return json.loads(text) if name.endswith(".json") else text


@pytest.fixture
def router() -> respx.MockRouter:
    return respx.MockRouter(base_url=BASE, assert_all_called=False)


@pytest.fixture
async def provider(router: respx.MockRouter) -> AsyncIterator[OllamaProvider]:
    provider = OllamaProvider(base_url=BASE, keep_alive="10m", options={"num_ctx": 8192},
                              transport=httpx.MockTransport(router.async_handler))
    yield provider
    await provider.aclose()


def req(**kwargs: Any) -> ChatRequest:
    kwargs.setdefault("messages", [Message.user("Why is the sky blue?")])
    return ChatRequest(model="llama3.2", **kwargs)


def ndjson(body: str) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "application/x-ndjson"},
                          content=body.encode())


async def test_request_shape_with_images_tools_and_options(router: respx.MockRouter,
                                                           provider: OllamaProvider) -> None:
    route = router.post("/api/chat").respond(json=recorded("chat_tool_call.json"))
    router.post("/api/show").respond(json={"capabilities": ["completion", "vision"]})
    router.get("https://example.org/cat.png").respond(content=b"catbytes")
    messages = [
        Message.system("Be brief."),
        Message.user("What is this?", images=[ImagePart(data_base64=PNG),
                                              ImagePart(url=f"data:image/png;base64,{PNG}"),
                                              ImagePart(url="https://example.org/cat.png")]),
        Message.assistant("", tool_calls=[ToolCall("c1", "get_current_weather",
                                                   {"location": "Rome"})]),
        Message.tool("c1", "22 degrees"),
    ]
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    await provider.chat(req(messages=messages, tools=[WEATHER], response_schema=schema,
                            temperature=0.0, max_tokens=40, stop=["###"], seed=42,
                            idempotency_key="ignored-by-ollama"))
    body = json.loads(route.calls.last.request.content)
    assert body["stream"] is False and body["keep_alive"] == "10m"
    assert body["messages"][1]["images"] == [PNG, PNG, base64.b64encode(b"catbytes").decode()]
    assert body["messages"][2]["tool_calls"] == [{"function": {
        "name": "get_current_weather", "arguments": {"location": "Rome"}}}]
    assert body["messages"][3] == {"role": "tool", "content": "22 degrees",
                                   "tool_name": "get_current_weather"}
    assert body["tools"][0]["function"]["name"] == "get_current_weather"
    assert body["format"] == schema
    assert body["options"] == {"num_ctx": 8192, "temperature": 0.0, "num_predict": 40,
                               "stop": ["###"], "seed": 42}


async def test_tool_choice_none_leaves_tools_out(router: respx.MockRouter,
                                                 provider: OllamaProvider) -> None:
    route = router.post("/api/chat").respond(json=recorded("chat_tool_call.json"))
    await provider.chat(req(tools=[WEATHER], tool_choice="none"))
    assert "tools" not in json.loads(route.calls.last.request.content)


async def test_tool_call_response(router: respx.MockRouter, provider: OllamaProvider) -> None:
    router.post("/api/chat").respond(json=recorded("chat_tool_call.json"))
    response = await provider.chat(req(tools=[WEATHER]))
    (call,) = response.message.tool_calls
    assert call.name == "get_current_weather" and call.id.startswith("call_")
    assert call.arguments == {"format": "celsius", "location": "Paris, FR"}
    assert response.finish_reason == "tool_calls"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (122, 33)
    assert response.cost_usd == 0.0  # a local model: no per-token charge
    assert response.raw["durations_ns"]["total_duration"] == 885095291


async def test_cloud_models_have_unknown_cost(router: respx.MockRouter,
                                              provider: OllamaProvider) -> None:
    data = recorded("chat_tool_call.json")
    router.post("/api/chat").respond(json=data)
    response = await provider.chat(ChatRequest(model="gpt-oss:120b-cloud",
                                               messages=[Message.user("x")]))
    assert response.cost_usd is None
    assert provider.price("deepseek-v3.1:671b-cloud") is None
    assert provider.price("llama3.2").input_per_mtok == 0.0


async def test_recorded_stream(router: respx.MockRouter, provider: OllamaProvider) -> None:
    route = router.post("/api/chat").mock(return_value=ndjson(recorded("chat_stream.ndjson")))
    chunks = [c async for c in provider.stream(req())]
    assert json.loads(route.calls.last.request.content)["stream"] is True
    assert [c.delta for c in chunks[:-1]] == ["The", " sky", " is blue."]
    assert chunks[-1].done and chunks[-1].finish_reason == "stop"
    assert (chunks[-1].usage.input_tokens, chunks[-1].usage.output_tokens) == (26, 282)


async def test_stream_without_done_line_is_malformed(router: respx.MockRouter,
                                                     provider: OllamaProvider) -> None:
    lines = recorded("chat_stream.ndjson").splitlines(keepends=True)
    router.post("/api/chat").mock(return_value=ndjson("".join(lines[:-1])))
    chunks = []
    with pytest.raises(MalformedResponseError, match="done: true"):
        async for chunk in provider.stream(req()):
            chunks.append(chunk)
    assert "".join(c.delta for c in chunks) == "The sky is blue."


async def test_stream_error_line_after_200(router: respx.MockRouter,
                                           provider: OllamaProvider) -> None:
    lines = recorded("chat_stream.ndjson").splitlines(keepends=True)
    body = "".join(lines[:2]) + '{"error":"an error was encountered while running the model: ' \
                                'unexpected EOF"}\n'
    router.post("/api/chat").mock(return_value=ndjson(body))
    with pytest.raises(ServerError, match="unexpected EOF") as info:
        [c async for c in provider.stream(req())]
    assert info.value.retriable is True


async def test_stream_line_that_is_not_json(router: respx.MockRouter,
                                            provider: OllamaProvider) -> None:
    router.post("/api/chat").mock(return_value=ndjson('{"model": "llama3.2", "mess\n'))
    with pytest.raises(MalformedResponseError, match="stream line"):
        [c async for c in provider.stream(req())]


async def test_stream_connection_cut(router: respx.MockRouter, provider: OllamaProvider) -> None:
    first = recorded("chat_stream.ndjson").splitlines(keepends=True)[0].encode()

    class Cut(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield first
            raise httpx.RemoteProtocolError("peer closed connection")

    router.post("/api/chat").mock(return_value=httpx.Response(200, stream=Cut()))
    with pytest.raises(MalformedResponseError, match="cut"):
        [c async for c in provider.stream(req())]


@pytest.mark.parametrize(("status", "body", "error", "retriable"), [
    (404, {"error": "model \"llama9\" not found, try pulling it first"}, BadRequestError, False),
    (400, {"error": "invalid options: num_ctx"}, BadRequestError, False),
    (401, {"error": "unauthorized"}, AuthenticationError, False),
    (429, {"error": "too many requests"}, RateLimitedError, True),
    (500, {"error": "llama runner process has terminated: signal: killed"}, ServerError, True),
    (503, {"error": "server busy, please try again.  maximum pending requests exceeded"},
     ServerError, True),
])
async def test_status_errors(router: respx.MockRouter, provider: OllamaProvider, status: int,
                             body: dict[str, str], error: type, retriable: bool) -> None:
    router.post("/api/chat").respond(status, json=body)
    with pytest.raises(error) as info:
        await provider.chat(req())
    assert info.value.retriable is retriable and body["error"] in str(info.value)


async def test_429_retry_after(router: respx.MockRouter, provider: OllamaProvider) -> None:
    router.post("/api/chat").respond(429, json={"error": "slow down"},
                                     headers={"retry-after": "3"})
    with pytest.raises(RateLimitedError) as info:
        await provider.chat(req())
    assert info.value.retry_after == 3.0


async def test_malformed_json(router: respx.MockRouter, provider: OllamaProvider) -> None:
    router.post("/api/chat").respond(200, text='{"model": "llama3.2", "message": {')
    with pytest.raises(MalformedResponseError, match="not valid JSON"):
        await provider.chat(req())


async def test_connection_refused_is_retriable(router: respx.MockRouter,
                                               provider: OllamaProvider) -> None:
    router.post("/api/chat").mock(side_effect=httpx.ConnectError("connection refused"))
    with pytest.raises(ServerError, match="connection failed") as info:
        await provider.chat(req())
    assert info.value.retriable is True


async def test_generate_and_stream_generate(fake_ollama: Any) -> None:
    provider = OllamaProvider(base_url=BASE, transport=httpx.MockTransport(fake_ollama))
    response = await provider.generate("describe the picture", model="llava",
                                       system="You see images.",
                                       images=[ImagePart(data_base64=PNG)], max_tokens=2)
    assert response.text == "echo: describe" and response.finish_reason == "length"
    sent = fake_ollama.requests[-1]
    assert sent["images"] == [PNG] and sent["system"] == "You see images."
    assert sent["options"] == {"num_predict": 2}
    chunks = [c async for c in provider.stream_generate("a b c", model="llava")]
    assert "".join(c.delta for c in chunks) == "echo: a b c" and chunks[-1].done
    await provider.aclose()


async def test_embed_with_a_chat_model_is_a_bad_request(fake_ollama: Any) -> None:
    provider = OllamaProvider(base_url=BASE, transport=httpx.MockTransport(fake_ollama))
    with pytest.raises(BadRequestError, match="does not support embeddings"):
        await provider.embed(["x"], model="llama3.2")
    assert await provider.embed([], model="llama3.2") == []


async def test_list_models_metadata(fake_ollama: Any) -> None:
    provider = OllamaProvider(base_url=BASE, transport=httpx.MockTransport(fake_ollama))
    models = {m.model: m for m in await provider.list_models()}
    assert set(models) == {"llama3.2:latest", "llava:latest", "nomic-embed-text:latest"}
    llama = models["llama3.2:latest"]
    assert llama.context_window == 131072
    assert llama.capabilities == {"chat", "streaming", "json", "tools"}
    assert models["llava:latest"].capabilities >= {"vision"}
    assert models["nomic-embed-text:latest"].capabilities == {"embeddings"}
    assert llama.metadata["details"]["quantization_level"] == "Q4_K_M"
    assert llama.price.input_per_mtok == 0.0


def test_ollama_host_forms() -> None:
    assert base_url_from_env("0.0.0.0") == "http://127.0.0.1:11434"
    assert base_url_from_env("127.0.0.1:9999") == "http://127.0.0.1:9999"
    assert base_url_from_env("https://ollama.example.org") == "https://ollama.example.org:443"
    assert base_url_from_env("") is None


async def test_api_key_for_ollama_com_is_hidden(router: respx.MockRouter) -> None:
    r = respx.MockRouter(base_url="https://ollama.com")
    route = r.post("/api/chat").respond(401, json={"error": "unauthorized key ollama-abc12345"})
    provider = OllamaProvider(base_url="https://ollama.com", api_key="ollama-abc12345",
                              transport=httpx.MockTransport(r.async_handler))
    assert provider.free is False  # remote: cost unknown unless priced
    with pytest.raises(AuthenticationError) as info:
        await provider.chat(req())
    assert route.calls.last.request.headers["authorization"] == "Bearer ollama-abc12345"
    assert "ollama-abc12345" not in str(info.value) and "ollama-abc" not in repr(provider)


async def test_image_urls_are_fetched_without_the_api_key() -> None:
    r = respx.MockRouter(assert_all_called=False)
    chat = r.post("https://ollama.com/api/chat").respond(json=recorded("chat_tool_call.json"))
    r.post("https://ollama.com/api/show").respond(json={"capabilities": ["completion",
                                                                         "vision"]})
    image = r.get("https://images.example/cat.png").respond(content=b"catbytes")
    provider = OllamaProvider(base_url="https://ollama.com", api_key="ollama-abc12345",
                              transport=httpx.MockTransport(r.async_handler))
    async with provider:
        await provider.chat(req(messages=[Message.user("What is this?", images=[
            ImagePart(url="https://images.example/cat.png")])]))
    assert chat.calls.last.request.headers["authorization"] == "Bearer ollama-abc12345"
    assert "authorization" not in image.calls.last.request.headers
    sent = json.loads(chat.calls.last.request.content)
    assert sent["messages"][0]["images"] == [base64.b64encode(b"catbytes").decode()]


async def test_images_for_a_model_without_vision_are_refused_before_the_chat(
        router: respx.MockRouter, provider: OllamaProvider) -> None:
    """Ollama's older runners ignore images sent to a text model: the provider asks
    ``/api/show`` once per model and refuses instead of letting them be dropped."""
    chat = router.post("/api/chat").respond(json=recorded("chat_tool_call.json"))
    show = router.post("/api/show").respond(json={"capabilities": ["completion", "tools"]})
    request = req(messages=[Message.user("What is this?", images=[ImagePart(data_base64=PNG)])])
    for _ in range(2):
        with pytest.raises(BadRequestError, match=r"llama3\.2 cannot take images: /api/show "
                                                  "lists its capabilities as completion, "
                                                  "tools, without 'vision'"):
            await provider.chat(request)
    assert show.call_count == 1 and json.loads(show.calls.last.request.content) == {
        "model": "llama3.2"}
    assert chat.call_count == 0
    await provider.chat(req())  # no images: no capability check
    assert chat.call_count == 1 and show.call_count == 1
