"""The Anthropic Messages API provider.

The HTTP side (secrets, pooled client, typed errors, the SSE stream up to ``message_stop``)
is :class:`flowyard_http.HTTPProvider`'s; this module is the wire format only. API reference:
https://docs.anthropic.com/en/api/messages and .../messages-streaming (version
``2023-06-01``; shapes as documented in 2025).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from typing import Any, ClassVar

from flowyard import (
    BadRequestError,
    ChatChunk,
    ChatRequest,
    ChatResponse,
    ImagePart,
    Message,
    ModelInfo,
    TextPart,
    ToolCall,
    ToolSpec,
    Usage,
)
from flowyard_http import DEFAULT_MAX_RETRY_AFTER, HTTPProvider, PriceTable, Secret

__all__ = ["AnthropicProvider", "ANTHROPIC_BASE_URL", "API_VERSION", "RESPONSE_TOOL",
           "load_price_table"]

#: The official API's base URL (without ``/v1``).
ANTHROPIC_BASE_URL = "https://api.anthropic.com"
#: The ``anthropic-version`` header sent.
API_VERSION = "2023-06-01"
#: Name of the tool through which structured output is requested (forced tool use).
RESPONSE_TOOL = "structured_response"
#: ``max_tokens`` is required by the API; used when the request has none and the model's
#: own cap is unknown.
DEFAULT_MAX_TOKENS = 4096

_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
           "tool_use": "tool_calls", "pause_turn": "pause_turn", "refusal": "refusal"}


def load_price_table(overrides: Mapping[str, Any] | None = None) -> PriceTable:
    """Return Anthropic's price table shipped in this package (``prices.json``) with
    ``overrides`` (``{model: {"input": x, "output": y}}``, US dollars per million tokens).
    """
    return PriceTable.from_package("flowyard_anthropic", overrides=overrides)


def _image_block(part: ImagePart) -> dict[str, Any]:
    if part.data_base64 is not None:
        return {"type": "image", "source": {"type": "base64", "media_type": part.media_type,
                                            "data": part.data_base64}}
    url = part.url or ""
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";")[0] or part.media_type
        return {"type": "image", "source": {"type": "base64", "media_type": media_type,
                                            "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _content_blocks(message: Message) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"type": "text", "text": message.content}] if message.content else []
    blocks: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, TextPart):
            if part.text:
                blocks.append({"type": "text", "text": part.text})
        else:
            blocks.append(_image_block(part))
    return blocks


def to_wire_messages(messages: Sequence[Message]) -> tuple[str | None, list[dict[str, Any]]]:
    """Return ``(system, messages)`` in the Messages API's shape.

    System messages are joined into the top-level ``system`` text; tool results become
    ``tool_result`` blocks of a user turn; consecutive turns of one role are merged (the API
    requires alternating roles).

    Raises:
        BadRequestError: a tool message without ``tool_call_id``.
    """
    system_parts: list[str] = []
    wire: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            system_parts.append(message.text)
            continue
        if message.role == "tool":
            if not message.tool_call_id:
                raise BadRequestError("a tool message needs tool_call_id (the call it answers)")
            role = "user"
            blocks: list[dict[str, Any]] = [{"type": "tool_result",
                                             "tool_use_id": message.tool_call_id,
                                             "content": message.text}]
        else:
            role = message.role
            blocks = _content_blocks(message)
            if message.role == "assistant":
                blocks += [{"type": "tool_use", "id": c.id, "name": c.name,
                            "input": c.arguments} for c in message.tool_calls]
        if wire and wire[-1]["role"] == role:
            wire[-1]["content"].extend(blocks)
        else:
            wire.append({"role": role, "content": blocks})
    system = "\n\n".join(p for p in system_parts if p) or None
    return system, wire


class AnthropicProvider(HTTPProvider):
    """Chat, streaming, tool use, structured output (through a forced tool), images and
    model listing over Anthropic's Messages API. Anthropic has no embeddings API.

    Args:
        name: provider name (``"anthropic"``).
        api_key: sent as ``x-api-key``; None reads ``ANTHROPIC_API_KEY``.
        base_url: API root without ``/v1`` (``https://api.anthropic.com``).
        headers: extra headers (e.g. ``anthropic-beta``).
        timeout: seconds per phase of a request.
        deadline: seconds a whole call may take (default ``timeout``): a plain response in
            full, a stream's first event, then each event after the one before
            (see :class:`~flowyard_http.HTTPProvider`).
        max_retry_after: the longest ``Retry-After`` honoured, in seconds (``[limits]
            max_retry_after``, default 60); a 429 asking for more fails at once, not retriable.
        backend, transport, max_connections: see :class:`flowyard_http.HTTPProvider`.
        prices: ``{model: {"input": x, "output": y}}`` overrides (US dollars per million
            tokens).
        default_max_tokens: ``max_tokens`` sent when the request has none and the price table
            does not know the model's output cap.

    Raises:
        ConfigError: an invalid name or backend.
    """

    base_url_suffix: ClassVar[str] = "/v1"
    auth_header: ClassVar[str] = "x-api-key"
    auth_prefix: ClassVar[str] = ""
    fixed_headers: ClassVar[Mapping[str, str]] = {"anthropic-version": API_VERSION}
    end_marker: ClassVar[str] = "message_stop"

    def __init__(
        self,
        name: str = "anthropic",
        *,
        api_key: str | Secret | None = None,
        base_url: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 600.0,
        deadline: float | None = None,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        backend: str = "auto",
        transport: Any = None,
        prices: Mapping[str, Any] | None = None,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        max_connections: int = 100,
    ) -> None:
        self.default_max_tokens = int(default_max_tokens)
        super().__init__(name, base_url=base_url or ANTHROPIC_BASE_URL, api_key=api_key,
                         api_key_env="ANTHROPIC_API_KEY", key_required=True, headers=headers,
                         timeout=timeout, deadline=deadline,
            max_retry_after=max_retry_after, backend=backend, transport=transport,
                         max_connections=max_connections, prices=load_price_table(prices))

    def is_error_event(self, name: str, data: Mapping[str, Any]) -> bool:
        """An ``error`` event, or an object of ``"type": "error"``."""
        return super().is_error_event(name, data) or data.get("type") == "error"

    def is_end_event(self, name: str, data: Mapping[str, Any]) -> bool:
        """The ``message_stop`` event."""
        return data.get("type", name) == "message_stop"

    # ------------------------------------------------------------------ requests

    def build_body(self, request: ChatRequest, *, stream: bool = False) -> dict[str, Any]:
        """Return the JSON body of ``POST /v1/messages`` for ``request``.

        ``response_schema`` is sent as a tool named :data:`RESPONSE_TOOL` whose input schema
        is the schema; without other tools the model is forced to call it, and its input
        becomes the JSON text of the answer.

        Raises:
            BadRequestError: a message cannot be expressed, or ``tool_choice`` names a tool
                that was not offered.
        """
        system, messages = to_wire_messages(request.messages)
        max_tokens = request.max_tokens or self.prices.entry(request.model).get(
            "max_output_tokens") or self.default_max_tokens
        body: dict[str, Any] = {"model": request.model, "messages": messages,
                                "max_tokens": int(max_tokens)}
        if system:
            body["system"] = system
        tools: list[ToolSpec] = list(request.tools)
        if request.response_schema is not None:
            tools.append(ToolSpec(name=RESPONSE_TOOL,
                                  description="Give the final answer in this structure.",
                                  parameters=request.response_schema))
        if tools:
            body["tools"] = [{"name": t.name, "description": t.description,
                              "input_schema": t.parameters} for t in tools]
            choice = request.tool_choice
            if request.response_schema is not None and not request.tools:
                body["tool_choice"] = {"type": "tool", "name": RESPONSE_TOOL}
            elif choice == "auto":
                body["tool_choice"] = {"type": "auto"}
            elif choice == "required":
                body["tool_choice"] = {"type": "any"}
            elif choice == "none":
                body["tool_choice"] = {"type": "none"}
            elif any(t.name == choice for t in tools):
                body["tool_choice"] = {"type": "tool", "name": choice}
            else:
                raise BadRequestError(f"{self.name}: tool_choice names {choice!r}, which is not "
                                      "among the offered tools", provider=self.name,
                                      model=request.model)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        if stream:
            body["stream"] = True
        return body

    @staticmethod
    def _usage(raw: Any) -> Usage:
        if not isinstance(raw, Mapping):
            return Usage()
        inp = sum(int(raw.get(k) or 0) for k in ("input_tokens", "cache_creation_input_tokens",
                                                  "cache_read_input_tokens"))
        return Usage(inp, int(raw.get("output_tokens") or 0))

    def _finish(self, blocks_text: str, calls: list[ToolCall], stop_reason: str | None,
                request: ChatRequest) -> tuple[str, list[ToolCall], str]:
        finish = _FINISH.get(stop_reason or "end_turn", stop_reason or "stop")
        if request.response_schema is not None:
            answer = [c for c in calls if c.name == RESPONSE_TOOL]
            if answer:
                calls = [c for c in calls if c.name != RESPONSE_TOOL]
                return json.dumps(answer[0].arguments), calls, "stop"
        return blocks_text, calls, finish

    def parse_response(self, data: Any, request: ChatRequest) -> ChatResponse:
        """Turn a Messages API response into a :class:`ChatResponse`.

        Raises:
            ProviderError: the body is an error object (typed by its ``type``).
            MalformedResponseError: the body lacks ``content``/``usage`` or a block is broken.
        """
        model = request.model
        if not isinstance(data, Mapping):
            raise self.malformed("message is not a JSON object", model)
        if self.is_error_event("", data):
            raise self.payload_error(data, model)
        content = data.get("content")
        if not isinstance(content, list) or "usage" not in data:
            raise self.malformed(f"message lacks content[] or usage: {json.dumps(data)[:300]}",
                                 model)
        texts: list[str] = []
        calls: list[ToolCall] = []
        for block in content:
            kind = block.get("type")
            if kind == "text":
                texts.append(str(block.get("text", "")))
            elif kind == "tool_use":
                if not block.get("name") or not isinstance(block.get("input"), Mapping):
                    raise self.malformed("broken tool_use block", model)
                calls.append(ToolCall(id=str(block.get("id") or ""), name=str(block["name"]),
                                      arguments=dict(block["input"])))
        text, calls, finish = self._finish("".join(texts), calls, data.get("stop_reason"),
                                           request)
        usage = self._usage(data["usage"])
        return ChatResponse(
            message=Message.assistant(text, tool_calls=calls), usage=usage,
            model=str(data.get("model") or model), provider=self.name, finish_reason=finish,
            cost_usd=self.cost(model, usage),
            raw={"id": data.get("id"), "usage": dict(data["usage"])},
        )

    async def chat(self, request: ChatRequest) -> ChatResponse:
        """Return one completion (``POST /v1/messages``).

        Raises:
            AuthenticationError (also when no key is configured), RateLimitedError
            (``retry_after`` in seconds), ProviderTimeoutError, ServerError (5xx, 529
            overloaded), BadRequestError, MalformedResponseError.
        """
        data = await self.request_json("POST", "/v1/messages", model=request.model,
                                       json_body=self.build_body(request))
        return self.parse_response(data, request)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Yield text deltas from the SSE event stream, then one ``done=True`` chunk with the
        usage, finish reason and complete tool calls.

        With ``response_schema`` the JSON answer (the forced tool's input) arrives as one
        text delta just before the final chunk.

        Raises:
            MalformedResponseError: the stream ended before ``message_stop``; the typed error
                of an ``error`` event sent after HTTP 200; the errors of :meth:`chat`.
        """
        model = request.model
        usage_in: Mapping[str, Any] = {}
        output_tokens = 0
        stop_reason: str | None = None
        blocks: dict[int, dict[str, Any]] = {}
        events = self.stream_events("/v1/messages", model=model,
                                    json_body=self.build_body(request, stream=True))
        async with aclosing(events):
            async for name, event in events:
                kind = event.get("type", name)
                if kind == "message_start":
                    usage_in = (event.get("message") or {}).get("usage") or {}
                    output_tokens = int(usage_in.get("output_tokens") or 0)
                elif kind == "content_block_start":
                    block = dict(event.get("content_block") or {})
                    block["_json"] = ""
                    blocks[int(event.get("index", len(blocks)))] = block
                    if block.get("type") == "text" and block.get("text"):
                        yield ChatChunk(delta=str(block["text"]))
                elif kind == "content_block_delta":
                    delta = event.get("delta") or {}
                    block = blocks.setdefault(int(event.get("index", 0)),
                                              {"type": "text", "_json": ""})
                    if delta.get("type") == "text_delta" and delta.get("text"):
                        yield ChatChunk(delta=str(delta["text"]))
                    elif delta.get("type") == "input_json_delta":
                        block["_json"] += str(delta.get("partial_json") or "")
                elif kind == "message_delta":
                    stop_reason = (event.get("delta") or {}).get("stop_reason") or stop_reason
                    output_tokens = int((event.get("usage") or {}).get(
                        "output_tokens", output_tokens) or 0)
        calls: list[ToolCall] = []
        for _, block in sorted(blocks.items()):
            if block.get("type") != "tool_use":
                continue
            text = block["_json"] or "{}"
            try:
                arguments = json.loads(text)
            except ValueError:
                raise self.malformed(f"tool_use {block.get('name')!r} input is not JSON: "
                                     f"{text[:200]!r}", model) from None
            calls.append(ToolCall(id=str(block.get("id") or ""), name=str(block.get("name")),
                                  arguments=arguments))
        answer, calls, finish = self._finish("", calls, stop_reason, request)
        if answer:
            yield ChatChunk(delta=answer)
        usage = self._usage({**usage_in, "output_tokens": output_tokens})
        yield ChatChunk(done=True, usage=usage, finish_reason=finish, tool_calls=calls)

    async def embed(self, texts: Sequence[str], *, model: str) -> list[list[float]]:
        """Anthropic has no embeddings API.

        Raises:
            BadRequestError: always (use another provider's embedding model).
        """
        raise BadRequestError(f"{self.name}: Anthropic has no embeddings API; use another "
                              "provider for embeddings", provider=self.name, model=model)

    async def list_models(self) -> list[ModelInfo]:
        """Return the models of ``GET /v1/models`` (every page) with the price table's
        context windows, output caps and prices; ``display_name`` and ``created_at`` go to
        ``metadata``. A model missing from the table has no price (unknown).
        """
        out: list[ModelInfo] = []
        params: dict[str, Any] = {"limit": 100}
        while True:
            data = await self.request_json("GET", "/v1/models", params=params)
            if not isinstance(data, Mapping) or not isinstance(data.get("data"), list):
                raise self.malformed("model list lacks data[]")
            for item in data["data"]:
                model_id = str(item.get("id", ""))
                if not model_id:
                    continue
                meta = {k: item[k] for k in ("display_name", "created_at") if k in item}
                out.append(self.prices.info(
                    self.name, model_id, metadata=meta,
                    default_capabilities={"chat", "streaming", "tools", "json", "vision"}))
            if not data.get("has_more") or not data.get("last_id"):
                break
            params = {"limit": 100, "after_id": data["last_id"]}
        return out
