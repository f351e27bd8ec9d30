"""A deterministic fake provider for tests and demos (provider name ``fake``).

Replies come from a script, in order; when the script is used up (or empty) the provider
echoes the last user message, followed by ``[N images]`` when the request carried images
(``[1 image]``), so tests can see end to end that images arrived. Every request is kept in
``FakeProvider.requests`` (its messages' ``images`` hold the image parts received). Token
usage counts whitespace-separated words. Embeddings are deterministic unit vectors derived
from a hash of the words.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, Union

import anyio

from flowyard.errors import BadRequestError, ProviderError
from flowyard.models import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    Message,
    ModelInfo,
    ModelPrice,
    ToolCall,
    Usage,
)

__all__ = ["FakeProvider", "ScriptItem", "count_tokens", "image_count"]

#: A script entry: a text reply, a tool call, a full message or response, an exception to
#: raise, or a function of the request.
ScriptItem = Union[str, ToolCall, Message, ChatResponse, BaseException,
                   Callable[[ChatRequest], Any]]

EMBEDDING_DIMENSIONS = 64


def count_tokens(text: str) -> int:
    """The fake tokenizer: the number of whitespace-separated words."""
    return len(text.split())


def image_count(request: ChatRequest) -> int:
    """Return the number of image parts in all messages of ``request``."""
    return sum(len(m.images) for m in request.messages)


def _prompt_tokens(request: ChatRequest) -> int:
    return sum(count_tokens(m.text) for m in request.messages) + sum(
        count_tokens(json.dumps(t.parameters)) for t in request.tools)


class FakeProvider:
    """Scripted chat, streaming and embeddings.

    Args:
        name: provider name (``"fake"``).
        script: replies to give, in order (see :data:`ScriptItem`).
        models: model ids served (``["echo", "priced"]``); ``priced`` costs 1 US dollar per
            million input tokens and 2 per million output tokens, the others are free.
        delay: seconds to sleep per call (per chunk when streaming), to exercise concurrency.
    """

    def __init__(self, name: str = "fake", script: Iterable[ScriptItem] = (), *,
                 models: Sequence[str] = ("echo", "priced", "unpriced"), delay: float = 0.0
                 ) -> None:
        self.name = name
        self.script: list[ScriptItem] = list(script)
        self.models = list(models)
        self.delay = delay
        self.requests: list[ChatRequest] = []
        self.closed = False

    def add(self, *items: ScriptItem) -> FakeProvider:
        """Append replies to the script; return self."""
        self.script.extend(items)
        return self

    def _info(self, model: str) -> ModelInfo:
        price: ModelPrice | None = ModelPrice(0.0, 0.0, source="fake provider", as_of="")
        if model == "priced":
            price = ModelPrice(1.0, 2.0, source="fake provider", as_of="")
        elif model == "unpriced":
            price = None
        return ModelInfo(provider=self.name, model=model, context_window=4096,
                         max_output_tokens=1024,
                         capabilities={"chat", "tools", "json", "embeddings", "streaming",
                                       "vision"},
                         price=price)

    def _reply(self, request: ChatRequest) -> ChatResponse:
        if request.model not in self.models:
            raise BadRequestError(f"fake provider has no model {request.model!r}",
                                  provider=self.name, model=request.model, status_code=404)
        self.requests.append(request)
        item: Any = self.script.pop(0) if self.script else None
        if callable(item) and not isinstance(item, (ToolCall, Message, ChatResponse)):
            item = item(request)
        if isinstance(item, BaseException):
            raise item
        if item is None:
            item = self._default_reply(request)
        if isinstance(item, ChatResponse):
            return item
        if isinstance(item, ToolCall):
            message = Message.assistant("", tool_calls=[item])
        elif isinstance(item, Message):
            message = item
        else:
            message = Message.assistant(str(item))
        output_tokens = count_tokens(message.text) + sum(
            count_tokens(json.dumps(c.arguments)) + 1 for c in message.tool_calls)
        if request.max_tokens is not None and output_tokens > request.max_tokens:
            words = message.text.split()[: request.max_tokens]
            message = Message.assistant(" ".join(words), tool_calls=message.tool_calls)
            output_tokens = request.max_tokens
        usage = Usage(_prompt_tokens(request), output_tokens)
        info = self._info(request.model)
        return ChatResponse(
            message=message, usage=usage, model=request.model, provider=self.name,
            finish_reason="tool_calls" if message.tool_calls else "stop",
            cost_usd=info.price.cost(usage) if info.price else None,
        )

    @staticmethod
    def _default_reply(request: ChatRequest) -> str | ToolCall:
        """The unscripted answer: a forced tool call, a schema example, or an echo."""
        forced = request.tool_choice not in ("auto", "none")
        if request.tools and forced:
            names = {t.name: t for t in request.tools}
            spec = names.get(request.tool_choice, request.tools[0])
            return ToolCall(id=f"call_{len(request.messages)}", name=spec.name,
                            arguments=_example_for(spec.parameters))
        if request.response_schema is not None:
            return json.dumps(_example_for(request.response_schema))
        last_user = next((m.text for m in reversed(request.messages) if m.role == "user"), "")
        images = image_count(request)
        if images:
            return f"echo: {last_user} [{images} image{'s' if images != 1 else ''}]"
        return f"echo: {last_user}"

    async def chat(self, request: ChatRequest) -> ChatResponse:
        """Return the next scripted reply (or an echo)."""
        if self.delay:
            await anyio.sleep(self.delay)
        return self._reply(request)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Yield the reply word by word, then a final chunk with usage and tool calls."""
        response = self._reply(request)
        words = response.message.text.split(" ")
        for i, word in enumerate(words):
            if self.delay:
                await anyio.sleep(self.delay)
            yield ChatChunk(delta=word if i == 0 else " " + word)
        yield ChatChunk(done=True, usage=response.usage, finish_reason=response.finish_reason,
                        tool_calls=list(response.message.tool_calls))

    async def embed(self, texts: Sequence[str], *, model: str) -> list[list[float]]:
        """Return deterministic 64-dimensional unit vectors (bag of hashed words)."""
        vectors = []
        for text in texts:
            vec = [0.0] * EMBEDDING_DIMENSIONS
            for word in text.lower().split():
                digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
                vec[int.from_bytes(digest, "big") % EMBEDDING_DIMENSIONS] += 1.0
            norm = math.sqrt(sum(v * v for v in vec)) or 1.0
            vectors.append([v / norm for v in vec])
        return vectors

    async def list_models(self) -> list[ModelInfo]:
        """Return the fake models."""
        return [self._info(m) for m in self.models]

    async def aclose(self) -> None:
        """Mark the provider closed."""
        self.closed = True


def _example_for(schema: dict[str, Any]) -> Any:
    """Build a minimal value satisfying a simple JSON Schema (for structured-output echoes)."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object":
        props = schema.get("properties", {})
        return {k: _example_for(v) for k, v in props.items()}
    if kind == "array":
        return []
    if kind == "string":
        return ""
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    raise ProviderError(f"fake provider cannot satisfy schema {schema!r}")
