"""The OpenAI Chat Completions / Embeddings provider, for OpenAI and compatible servers.

The HTTP side (secrets, pooled client, typed errors, the SSE stream up to ``data: [DONE]``)
is :class:`flowyard_http.HTTPProvider`'s; this module is the wire format only. API reference: https://platform.openai.com/docs/api-reference/chat
(request and stream shapes as documented there in 2025).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from typing import Any, ClassVar

from flowyard import (
    BadRequestError,
    ChatChunk,
    ChatRequest,
    ChatResponse,
    ConfigError,
    ImagePart,
    Message,
    ModelInfo,
    TextPart,
    ToolCall,
    Usage,
    new_id,
)
from flowyard_http import DEFAULT_MAX_RETRY_AFTER, HTTPProvider, PriceTable, Secret

__all__ = ["OpenAIProvider", "OPENAI_BASE_URL", "load_price_table"]

logger = logging.getLogger("flowyard_openai")

#: The official API's base URL.
OPENAI_BASE_URL = "https://api.openai.com/v1"

_STRUCTURED_MODES = ("json_schema", "json_object")
#: Model ids of OpenAI's that do not serve Chat Completions (images, audio, moderation,
#: legacy completions): listed without capabilities.
_NOT_CHAT = re.compile(r"^(dall-e|whisper|tts|gpt-image|omni-moderation|text-moderation|"
                       r"babbage|davinci|sora|gpt-4o(-mini)?-(transcribe|tts|realtime))")
_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls",
           "function_call": "tool_calls", "content_filter": "content_filter"}


def load_price_table(overrides: Mapping[str, Any] | None = None) -> PriceTable:
    """Return OpenAI's price table shipped in this package (``prices.json``), with
    ``overrides`` (``{model: {"input": x, "output": y}}``, US dollars per million tokens).
    """
    return PriceTable.from_package("flowyard_openai", overrides=overrides)


def _image_url(part: ImagePart) -> str:
    if part.url is not None:
        return part.url
    return f"data:{part.media_type};base64,{part.data_base64}"


def _message_to_wire(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role}
    if isinstance(message.content, str):
        out["content"] = message.content
    else:
        parts: list[dict[str, Any]] = []
        for part in message.content:
            if isinstance(part, TextPart):
                parts.append({"type": "text", "text": part.text})
            else:
                parts.append({"type": "image_url", "image_url": {"url": _image_url(part)}})
        out["content"] = parts
    if message.role == "assistant" and message.tool_calls:
        out["tool_calls"] = [
            {"id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": json.dumps(call.arguments)}}
            for call in message.tool_calls
        ]
        if out["content"] == "":
            out["content"] = None
    if message.role == "tool":
        if not message.tool_call_id:
            raise BadRequestError("a tool message needs tool_call_id (the call it answers)")
        out["tool_call_id"] = message.tool_call_id
    elif message.name:
        out["name"] = message.name
    return out


class OpenAIProvider(HTTPProvider):
    """Chat, streaming, tool calls, structured output, embeddings and model listing over the
    OpenAI HTTP API, for OpenAI itself or any OpenAI-compatible server.

    Args:
        name: provider name, the prefix of model references (``"openai"``, ``"vllm"``).
        api_key: the API key (sent as ``Authorization: Bearer``); None reads
            ``OPENAI_API_KEY`` when ``base_url`` is OpenAI's, else no key is sent.
        base_url: the API root including ``/v1`` (``http://127.0.0.1:8000/v1``).
        organization, project: OpenAI organization and project headers, when set.
        headers: extra headers sent with every request.
        timeout: seconds per phase of a request (connect, read, write, pool).
        deadline: seconds a whole call may take (default ``timeout``): a plain response in
            full, a stream's first event, then each event after the one before
            (see :class:`~flowyard_http.HTTPProvider`).
        max_retry_after: the longest ``Retry-After`` honoured, in seconds (``[limits]
            max_retry_after``, default 60); a 429 asking for more fails at once, not retriable.
        backend, transport, max_connections: see :class:`flowyard_http.HTTPProvider`.
        prices: ``{model: {"input": x, "output": y}}`` in US dollars per million tokens; wins
            over the shipped table.
        price_table: use the shipped OpenAI table (default: only when ``base_url`` is
            OpenAI's: other servers' names may collide with OpenAI's at different prices).
        free: every model of this endpoint costs 0 (a local server); unknown otherwise.
        structured_output: how ``response_schema`` is sent: ``"json_schema"`` (OpenAI, vLLM,
            llama.cpp's C++ server) or ``"json_object"`` (``{"type": "json_object",
            "schema": ...}``, llama-cpp-python's server).
        max_tokens_field: request field for the output cap: ``"max_completion_tokens"``
            (default for OpenAI) or ``"max_tokens"`` (default for other servers).
        stream_usage: ask for usage in streams (``stream_options.include_usage``).

    Raises:
        ConfigError: an invalid option value.
    """

    end_data: ClassVar[str | None] = "[DONE]"
    end_marker: ClassVar[str] = "data: [DONE]"

    def __init__(
        self,
        name: str = "openai",
        *,
        api_key: str | Secret | None = None,
        base_url: str | None = None,
        organization: str | None = None,
        project: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 600.0,
        deadline: float | None = None,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        backend: str = "auto",
        transport: Any = None,
        prices: Mapping[str, Any] | None = None,
        price_table: bool | None = None,
        free: bool = False,
        structured_output: str = "json_schema",
        max_tokens_field: str | None = None,
        stream_usage: bool = True,
        max_connections: int = 100,
    ) -> None:
        base_url = (base_url or OPENAI_BASE_URL).rstrip("/")
        self.is_openai = base_url == OPENAI_BASE_URL
        if structured_output not in _STRUCTURED_MODES:
            raise ConfigError(f"[{name}] structured_output must be one of "
                              f"{', '.join(_STRUCTURED_MODES)}, got {structured_output!r}")
        if max_tokens_field is None:
            max_tokens_field = "max_completion_tokens" if self.is_openai else "max_tokens"
        if max_tokens_field not in ("max_tokens", "max_completion_tokens"):
            raise ConfigError(f"[{name}] max_tokens_field must be max_tokens or "
                              f"max_completion_tokens, got {max_tokens_field!r}")
        self.structured_output = structured_output
        self.max_tokens_field = max_tokens_field
        self.stream_usage = stream_usage
        use_table = self.is_openai if price_table is None else price_table
        org_headers = {"OpenAI-Organization": organization, "OpenAI-Project": project}
        super().__init__(
            name, base_url=base_url, api_key=api_key,
            api_key_env="OPENAI_API_KEY" if self.is_openai else None,
            key_required=self.is_openai,
            headers={**dict(headers or {}), **{k: v for k, v in org_headers.items() if v}},
            timeout=timeout, deadline=deadline,
            max_retry_after=max_retry_after, backend=backend, transport=transport,
            max_connections=max_connections, free=free,
            prices=load_price_table(prices) if use_table else PriceTable(
                {"source": "", "as_of": "", "models": {}}, overrides=prices))

    # ------------------------------------------------------------------ requests

    def build_body(self, request: ChatRequest, *, stream: bool = False) -> dict[str, Any]:
        """Return the JSON body of a ``POST /chat/completions`` for ``request``.

        Raises:
            BadRequestError: a message cannot be expressed (a tool message without its id).
        """
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [_message_to_wire(m) for m in request.messages],
        }
        if request.tools:
            body["tools"] = [
                {"type": "function", "function": {"name": t.name, "description": t.description,
                                                  "parameters": t.parameters}}
                for t in request.tools
            ]
            choice = request.tool_choice
            if choice in ("auto", "none", "required"):
                body["tool_choice"] = choice
            else:
                body["tool_choice"] = {"type": "function", "function": {"name": choice}}
        if request.response_schema is not None:
            if self.structured_output == "json_schema":
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "response", "schema": request.response_schema},
                }
            else:
                body["response_format"] = {"type": "json_object",
                                           "schema": request.response_schema}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.max_tokens is not None:
            body[self.max_tokens_field] = request.max_tokens
        if request.stop:
            body["stop"] = list(request.stop)
        if request.seed is not None:
            body["seed"] = request.seed
        if stream:
            body["stream"] = True
            if self.stream_usage:
                body["stream_options"] = {"include_usage": True}
        return body

    def _headers(self, request: ChatRequest) -> dict[str, str] | None:
        if request.idempotency_key:
            return {"Idempotency-Key": request.idempotency_key}
        return None

    def _tool_call(self, raw: Mapping[str, Any], model: str) -> ToolCall:
        function = raw.get("function") or {}
        name = function.get("name")
        if not name:
            raise self.malformed("tool call without a function name", model)
        arguments_text = function.get("arguments") or "{}"
        if isinstance(arguments_text, Mapping):
            arguments = dict(arguments_text)
        else:
            try:
                arguments = json.loads(arguments_text)
            except ValueError:
                raise self.malformed(f"tool call {name!r} has arguments that are not JSON: "
                                     f"{str(arguments_text)[:200]!r}", model) from None
        if not isinstance(arguments, dict):
            raise self.malformed(f"tool call {name!r} arguments are not a JSON object", model)
        call_id = raw.get("id") or f"call_{new_id()[:24]}"
        return ToolCall(id=str(call_id), name=str(name), arguments=arguments)

    @staticmethod
    def _usage(raw: Any) -> Usage | None:
        if not isinstance(raw, Mapping):
            return None
        return Usage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0))

    def parse_response(self, data: Any, model: str) -> ChatResponse:
        """Turn a chat completion JSON object into a :class:`ChatResponse`.

        Raises:
            ProviderError: the body carries an ``error`` object (typed by its type/code).
            MalformedResponseError: required fields are missing.
        """
        if not isinstance(data, Mapping):
            raise self.malformed("chat completion is not a JSON object", model)
        if data.get("error"):
            raise self.payload_error(data, model)
        try:
            choice = data["choices"][0]
            raw_message = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise self.malformed("chat completion has no choices[0].message: "
                                 f"{json.dumps(data)[:300]}", model) from None
        content = raw_message.get("content") or ""
        if not isinstance(content, str):
            content = "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
        calls = [self._tool_call(c, model) for c in raw_message.get("tool_calls") or []]
        usage = self._usage(data.get("usage"))
        if usage is None:
            raise self.malformed("chat completion has no usage", model)
        finish = choice.get("finish_reason") or "stop"
        answered_model = str(data.get("model") or model)
        return ChatResponse(
            message=Message.assistant(content, tool_calls=calls), usage=usage,
            model=answered_model, provider=self.name, finish_reason=_FINISH.get(finish, finish),
            cost_usd=self.cost(model, usage),
            raw={"id": data.get("id"), "system_fingerprint": data.get("system_fingerprint")},
        )

    async def chat(self, request: ChatRequest) -> ChatResponse:
        """Return one completion (``POST /chat/completions``).

        ``cost_usd`` comes from the price table (None when the model has no known price).

        Raises:
            AuthenticationError, RateLimitedError (``retry_after`` in seconds),
            ProviderTimeoutError, ServerError, BadRequestError, MalformedResponseError.
        """
        data = await self.request_json("POST", "/chat/completions", model=request.model,
                                       json_body=self.build_body(request),
                                       headers=self._headers(request))
        return self.parse_response(data, request.model)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Yield text deltas as they arrive, then one ``done=True`` chunk with usage (None when
        the server does not report it in streams), finish reason and complete tool calls.

        Raises:
            MalformedResponseError: the stream ended before ``data: [DONE]``, or an event is
                not JSON; the typed error of an error event sent after HTTP 200; and the
                errors of :meth:`chat` for a failed status.
        """
        model = request.model
        usage: Usage | None = None
        finish: str | None = None
        calls: dict[int, dict[str, Any]] = {}
        events = self.stream_events("/chat/completions", model=model,
                                    json_body=self.build_body(request, stream=True),
                                    headers=self._headers(request))
        async with aclosing(events):
            async for _name, event in events:
                if event.get("usage"):
                    usage = self._usage(event["usage"])
                for choice in event.get("choices") or []:
                    delta = choice.get("delta") or {}
                    text = delta.get("content")
                    if text:
                        yield ChatChunk(delta=text)
                    for fragment in delta.get("tool_calls") or []:
                        slot = calls.setdefault(int(fragment.get("index", len(calls))),
                                                {"id": None, "name": "", "arguments": ""})
                        if fragment.get("id"):
                            slot["id"] = fragment["id"]
                        function = fragment.get("function") or {}
                        if function.get("name"):
                            slot["name"] += function["name"]
                        if function.get("arguments"):
                            slot["arguments"] += function["arguments"]
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
        tool_calls = [
            self._tool_call({"id": slot["id"], "function": {"name": slot["name"],
                                                            "arguments": slot["arguments"]}},
                            model)
            for _, slot in sorted(calls.items())
        ]
        finish = finish or ("tool_calls" if tool_calls else "stop")
        yield ChatChunk(done=True, usage=usage, finish_reason=_FINISH.get(finish, finish),
                        tool_calls=tool_calls)

    async def embed(self, texts: Sequence[str], *, model: str) -> list[list[float]]:
        """Return one vector per text (``POST /embeddings``), in order.

        Raises:
            BadRequestError: the model does not embed (as the server says); the other typed
            errors of :meth:`chat`; MalformedResponseError when the count of vectors differs.
        """
        if not texts:
            return []
        data = await self.request_json(
            "POST", "/embeddings", model=model,
            json_body={"model": model, "input": list(texts), "encoding_format": "float"})
        try:
            items = sorted(data["data"], key=lambda item: int(item.get("index", 0)))
            raw_vectors = [item["embedding"] for item in items]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise self.malformed("embeddings response lacks data[].embedding", model) from None
        vectors: list[list[float]] = []
        for raw in raw_vectors:
            if not isinstance(raw, list) or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) for x in raw):
                hint = (" (a list of per-token vectors: the server's model has no pooling)"
                        if isinstance(raw, list) and raw and isinstance(raw[0], list) else "")
                raise self.malformed(f"embedding is not a flat list of numbers{hint}", model)
            vectors.append([float(x) for x in raw])
        if len(vectors) != len(texts):
            raise self.malformed(f"asked for {len(texts)} embeddings, got {len(vectors)}",
                                 model)
        return vectors

    async def list_models(self) -> list[ModelInfo]:
        """Return the served models (``GET /models``) with the price table's metadata.

        Models missing from the table have no price (unknown) and capabilities guessed from
        the name (``embed`` in the id: embeddings; image, audio, moderation and legacy
        completion models: none; otherwise chat, streaming, tools and json). Server
        metadata (``owned_by``, ``created``, llama.cpp's ``meta``) is kept in ``metadata``.
        """
        data = await self.request_json("GET", "/models")
        if not isinstance(data, Mapping) or not isinstance(data.get("data"), list):
            raise self.malformed("model list lacks data[]")
        out: list[ModelInfo] = []
        for item in data["data"]:
            model_id = str(item.get("id", ""))
            if not model_id:
                continue
            meta = {k: item[k] for k in ("owned_by", "created") if k in item}
            server_meta = item.get("meta") if isinstance(item.get("meta"), Mapping) else {}
            if server_meta:
                meta["server"] = dict(server_meta)
            default_caps: set[str] = {"chat", "streaming", "tools", "json"}
            if "embed" in model_id:
                default_caps = {"embeddings"}
            elif _NOT_CHAT.match(model_id):
                default_caps = set()
            info = self.prices.info(self.name, model_id, default_capabilities=default_caps,
                                    metadata=meta)
            if info.price is None and self.free:
                from attrs import evolve

                info = evolve(info, price=self.price(model_id))
            if info.context_window is None and server_meta.get("n_ctx_train"):
                from attrs import evolve

                info = evolve(info, context_window=int(server_meta["n_ctx_train"]))
            out.append(info)
        return out
