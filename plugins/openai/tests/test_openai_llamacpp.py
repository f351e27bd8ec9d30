"""End to end: the OpenAI plugin against a real OpenAI-compatible server on 127.0.0.1, the
server of llama-cpp-python serving SmolLM2-135M (started once per session by the
``llama_server`` fixture)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from flowyard.errors import MalformedResponseError, ServerError
from flowyard.models import ChatChunk, ChatRequest, Message
from flowyard_openai.provider import OpenAIProvider

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
async def provider(llama_server: str) -> AsyncIterator[OpenAIProvider]:
    provider = OpenAIProvider("llamacpp-server", base_url=llama_server,
                              structured_output="json_object")
    yield provider
    await provider.aclose()


def _request(text: str, **kwargs: object) -> ChatRequest:
    kwargs.setdefault("max_tokens", 12)
    kwargs.setdefault("temperature", 0.0)
    kwargs.setdefault("seed", 7)
    return ChatRequest(model="smollm2", messages=[Message.system("You are terse."),
                                                  Message.user(text)], **kwargs)


async def test_chat_returns_text_and_usage(provider: OpenAIProvider) -> None:
    response = await provider.chat(_request("Name a colour."))
    assert response.message.role == "assistant"
    assert response.text.strip()
    assert response.usage.input_tokens > 5  # system + user prompt through the chat template
    assert 0 < response.usage.output_tokens <= 12
    assert response.model == "smollm2"
    assert response.provider == "llamacpp-server"
    assert response.cost_usd is None  # a compatible server's price is unknown unless set


async def test_max_tokens_cuts_the_answer_with_finish_reason_length(
        provider: OpenAIProvider) -> None:
    response = await provider.chat(_request("Write a long story about a dragon.", max_tokens=3))
    assert response.usage.output_tokens == 3
    assert response.finish_reason == "length"


async def test_stream_matches_chat_at_temperature_zero(provider: OpenAIProvider) -> None:
    request = _request("Say hello to Paris.")
    chat = await provider.chat(request)
    chunks: list[ChatChunk] = [c async for c in provider.stream(request)]
    assert chunks[-1].done and not any(c.done for c in chunks[:-1])
    assert len(chunks) > 2, "text must arrive in several pieces"
    assert "".join(c.delta for c in chunks) == chat.text
    assert chunks[-1].finish_reason in ("stop", "length")
    # llama-cpp-python's server sends no usage in streams: reported as unknown, not as 0
    assert chunks[-1].usage is None


async def test_structured_output_in_json_object_mode(provider: OpenAIProvider) -> None:
    schema = {"type": "object", "properties": {"colour": {"type": "string",
                                                          "enum": ["red", "green", "blue"]}},
              "required": ["colour"]}
    response = await provider.chat(_request("Pick a colour and answer in JSON.",
                                            response_schema=schema, max_tokens=24))
    value = json.loads(response.text)
    assert value["colour"] in ("red", "green", "blue")


async def test_list_models(provider: OpenAIProvider) -> None:
    models = await provider.list_models()
    assert [m.model for m in models] == ["smollm2"]
    assert models[0].provider == "llamacpp-server" and models[0].price is None
    assert {"chat", "streaming"} <= models[0].capabilities


async def test_per_token_embeddings_are_refused_not_pooled(provider: OpenAIProvider) -> None:
    # SmolLM2 has no pooling layer: llama-cpp-python answers one vector per token, which is not
    # the OpenAI shape; the plugin says so instead of guessing a pooling.
    with pytest.raises(MalformedResponseError, match="per-token"):
        await provider.embed(["a red apple", "the blue sea"], model="smollm2")


async def test_through_a_stack_with_configured_endpoint(llama_server: str,
                                                        flowyard_home: object) -> None:
    from flowyard.stack import Stack

    stack = Stack(discover=True, config={
        "storage": {"url": "memory://"},
        "openai": {"endpoints": {"llamasrv": {"base_url": llama_server, "free": True,
                                              "default_model": "smollm2",
                                              "default_priority": 3}}}})
    async with stack:
        assert stack.providers.metadata_of("llamasrv") == {
            "default_model": "llamasrv/smollm2", "default_priority": 3}
        events = []
        stack.events.subscribe(events.append)
        response = await stack.llm.chat("Say hi.", model="llamasrv/smollm2", max_tokens=5,
                                        temperature=0.0)
        assert response.cost_usd == 0.0  # configured free: a local server
        assert response.usage.output_tokens > 0
        assert [e.type for e in events] == ["llm.call"]
        assert events[0].data["input_tokens"] == response.usage.input_tokens
        streamed = [c async for c in stack.llm.stream("Say hi.", model="llamasrv/smollm2",
                                                      max_tokens=5, temperature=0.0)]
        assert "".join(c.delta for c in streamed) == response.text


async def test_connection_refused_is_a_retriable_server_error() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = OpenAIProvider("down", base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(ServerError) as info:
        await provider.chat(_request("hi"))
    assert info.value.retriable is True
    assert not isinstance(info.value, MalformedResponseError)
    await provider.aclose()
