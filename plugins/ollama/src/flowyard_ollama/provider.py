"""The Ollama native API provider: ``/api/chat``, ``/api/generate``, ``/api/embed``,
``/api/tags`` and ``/api/show``, with NDJSON streaming and image inputs.

The HTTP side (secrets, pooled client, typed errors, NDJSON streams read line by line up to
the line with ``"done": true``) is :class:`flowyard_http.HTTPProvider`'s; this module is the
wire format only.
API reference: https://github.com/ollama/ollama/blob/main/docs/api.md (as documented in 2025).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from typing import Any, ClassVar
from urllib.parse import urlsplit

from flowyard import (
    BadRequestError,
    ChatChunk,
    ChatRequest,
    ChatResponse,
    ImagePart,
    Message,
    ModelInfo,
    ModelPrice,
    ToolCall,
    Usage,
    new_id,
)
from flowyard_http import DEFAULT_MAX_RETRY_AFTER, HTTPProvider, PriceTable, Secret

__all__ = ["OllamaProvider", "DEFAULT_BASE_URL", "base_url_from_env", "load_price_table"]

#: Where a local Ollama listens by default.
DEFAULT_BASE_URL = "http://127.0.0.1:11434"
#: Largest image fetched from an http(s) URL to inline it (Ollama takes base64 only), bytes.
MAX_IMAGE_BYTES = 20 * 1024 * 1024

_FINISH = {"stop": "stop", "length": "length", "load": "stop", "unload": "stop"}
_CAPABILITIES = {"completion": ("chat", "streaming", "json"), "tools": ("tools",),
                 "vision": ("vision",), "embedding": ("embeddings",), "thinking": ("thinking",)}


def load_price_table(overrides: Mapping[str, Any] | None = None) -> PriceTable:
    """Return the (empty) Ollama price table shipped in this package with ``overrides``."""
    return PriceTable.from_package("flowyard_ollama", overrides=overrides)


def base_url_from_env(value: str | None) -> str | None:
    """Turn ``OLLAMA_HOST`` (``host``, ``host:port`` or a URL; ``0.0.0.0`` means this machine)
    into a base URL, or None when unset.
    """
    if not value:
        return None
    value = value.strip()
    if "://" not in value:
        value = "http://" + value
    parts = urlsplit(value)
    host = parts.hostname or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 11434)
    return f"{parts.scheme}://{host}:{port}{parts.path.rstrip('/')}"


def is_cloud_model(model: str) -> bool:
    """True for models that ollama.com serves remotely (``-cloud`` suffix or ``:cloud`` tag)."""
    name, _, tag = model.partition(":")
    return name.endswith("-cloud") or tag == "cloud" or tag.endswith("-cloud")


class OllamaProvider(HTTPProvider):
    """Chat, streaming, tool calls, structured output (``format``), images, embeddings,
    raw generation and model listing over Ollama's native API.

    Args:
        name: provider name (``"ollama"``).
        base_url: server root (``http://127.0.0.1:11434``); None reads ``OLLAMA_HOST``.
        api_key: sent as a bearer token when set (ollama.com); None reads ``OLLAMA_API_KEY``.
        headers: extra headers.
        timeout: seconds per phase of a request (model loading can take a while: default 600).
        deadline: seconds a whole call may take (default ``timeout``): a plain response in
            full, a stream's first event, then each event after the one before
            (see :class:`~flowyard_http.HTTPProvider`).
        max_retry_after: the longest ``Retry-After`` honoured, in seconds (``[limits]
            max_retry_after``, default 60); a 429 asking for more fails at once, not retriable.
        keep_alive: how long the server keeps the model loaded after a call (``"5m"``,
            seconds as a number, ``-1`` forever); None leaves the server's default.
        options: extra model options sent with every call (``{"num_ctx": 8192}``).
        free: local models cost 0 (default: True unless the base URL is ollama.com); cloud
            models' cost stays unknown unless priced.
        prices: ``{model: {"input": x, "output": y}}`` (US dollars per million tokens).
        backend, transport, max_connections: see :class:`flowyard_http.HTTPProvider`.

    Raises:
        ConfigError: an invalid name or backend.
    """

    base_url_suffix: ClassVar[str] = "/api"
    stream_format: ClassVar[str] = "ndjson"
    end_marker: ClassVar[str] = "done: true"

    def __init__(
        self,
        name: str = "ollama",
        *,
        base_url: str | None = None,
        api_key: str | Secret | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 600.0,
        deadline: float | None = None,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        keep_alive: str | float | None = None,
        options: Mapping[str, Any] | None = None,
        free: bool | None = None,
        prices: Mapping[str, Any] | None = None,
        backend: str = "auto",
        transport: Any = None,
        max_connections: int = 100,
    ) -> None:
        base_url = (base_url or base_url_from_env(os.environ.get("OLLAMA_HOST"))
                    or DEFAULT_BASE_URL)
        if free is None:
            free = (urlsplit(base_url).hostname or "") != "ollama.com"
        self.keep_alive = keep_alive
        self.options = dict(options or {})
        #: model -> the capabilities ``/api/show`` lists for it (asked once per model, when
        #: a chat request first carries images)
        self._show_capabilities: dict[str, tuple[str, ...]] = {}
        super().__init__(name, base_url=base_url, api_key=api_key, api_key_env="OLLAMA_API_KEY",
                         headers=headers, timeout=timeout, deadline=deadline,
            max_retry_after=max_retry_after, backend=backend,
                         transport=transport, max_connections=max_connections,
                         prices=load_price_table(prices), free=bool(free))

    def free_price(self, model: str) -> ModelPrice | None:
        """0 for a local model when the provider is free; None (unknown) for cloud models
        (:func:`is_cloud_model`) unless priced.
        """
        if self.free and not is_cloud_model(model):
            return ModelPrice(0.0, 0.0, source=f"{self.name}: local model, no per-token charge")
        return None

    def is_end_event(self, name: str, data: Mapping[str, Any]) -> bool:
        """The line with ``"done": true``."""
        return bool(data.get("done"))

    # ------------------------------------------------------------------ requests

    async def _image_b64(self, part: ImagePart) -> str:
        if part.data_base64 is not None:
            return part.data_base64
        url = part.url or ""
        if url.startswith("data:"):
            header, _, data = url.partition(",")
            if ";base64" not in header:
                raise BadRequestError(f"{self.name}: data URL images must be base64-encoded",
                                      provider=self.name)
            return data
        if not url.startswith(("http://", "https://")):
            raise BadRequestError(f"{self.name}: unsupported image URL {url[:80]!r}",
                                  provider=self.name)
        import httpx

        client = self.client()
        # built apart from the client so that its default headers (the API key) stay home
        request = httpx.Request("GET", url, extensions={"timeout": client.timeout.as_dict()})
        try:
            response = await self.within_deadline(client.send(request),
                                                  what=f"image from {url}")
        except httpx.HTTPError as exc:
            raise self.transport_error(exc) from None
        if response.status_code != 200:
            raise BadRequestError(f"{self.name}: fetching image {url} gave HTTP "
                                  f"{response.status_code}", provider=self.name,
                                  status_code=response.status_code)
        if len(response.content) > MAX_IMAGE_BYTES:
            raise BadRequestError(f"{self.name}: image {url} is larger than "
                                  f"{MAX_IMAGE_BYTES} bytes", provider=self.name)
        return base64.b64encode(response.content).decode("ascii")

    async def _wire_messages(self, messages: Sequence[Message]) -> list[dict[str, Any]]:
        names: dict[str, str] = {}
        out: list[dict[str, Any]] = []
        for message in messages:
            item: dict[str, Any] = {"role": message.role, "content": message.text}
            images = [await self._image_b64(p) for p in message.images]
            if images:
                item["images"] = images
            if message.tool_calls:
                item["tool_calls"] = [{"function": {"name": c.name, "arguments": c.arguments}}
                                      for c in message.tool_calls]
                names.update({c.id: c.name for c in message.tool_calls})
            if message.role == "tool":
                name = message.name or names.get(message.tool_call_id or "")
                if name:
                    item["tool_name"] = name
            out.append(item)
        return out

    def _options(self, request: ChatRequest) -> dict[str, Any]:
        options = dict(self.options)
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.top_p is not None:
            options["top_p"] = request.top_p
        if request.max_tokens is not None:
            options["num_predict"] = request.max_tokens
        if request.stop:
            options["stop"] = list(request.stop)
        if request.seed is not None:
            options["seed"] = request.seed
        return options

    async def check_vision(self, model: str) -> None:
        """Refuse images for a model whose ``/api/show`` capabilities lack ``vision`` (asked
        once per model). Ollama's older runners ignore images sent to a text model instead of
        failing, so the check is made here rather than left to the server; it also covers a
        model named without its tag (``llama3.2`` for ``llama3.2:latest``), which the model
        registry does not match.

        Args:
            model: the model id as the request names it.

        Raises:
            BadRequestError: the model lists capabilities and ``vision`` is not among them.
            ProviderError: ``/api/show`` failed (unknown model, server down).
        """
        capabilities = self._show_capabilities.get(model)
        if capabilities is None:
            show = await self.show(model)
            listed = show.get("capabilities")
            capabilities = tuple(str(c) for c in listed) if isinstance(listed, list) else ()
            self._show_capabilities[model] = capabilities
        if capabilities and "vision" not in capabilities:
            raise BadRequestError(
                f"{self.name}/{model} cannot take images: /api/show lists its capabilities as "
                f"{', '.join(capabilities)}, without 'vision'; use a vision model (llava, "
                "llama3.2-vision, gemma3, ...)", provider=self.name, model=model)

    async def build_body(self, request: ChatRequest, *, stream: bool = False) -> dict[str, Any]:
        """Return the JSON body of ``POST /api/chat`` for ``request``.

        ``response_schema`` becomes ``format`` (Ollama's structured outputs); images are sent
        base64-encoded (http(s) URLs are fetched first), after :meth:`check_vision`.
        ``tool_choice`` other than ``auto`` has no Ollama equivalent: ``none`` leaves the tools
        out; ``required`` and a tool name add a system instruction to call it.
        """
        if any(m.images for m in request.messages):
            await self.check_vision(request.model)
        messages = await self._wire_messages(request.messages)
        body: dict[str, Any] = {"model": request.model, "messages": messages, "stream": stream}
        if request.tools and request.tool_choice != "none":
            body["tools"] = [{"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.parameters}}
                for t in request.tools]
            if request.tool_choice == "required":
                messages.insert(0, {"role": "system", "content":
                                    "You must answer by calling one of the tools."})
            elif request.tool_choice != "auto":
                messages.insert(0, {"role": "system", "content":
                                    f"You must answer by calling the tool "
                                    f"{request.tool_choice!r}."})
        if request.response_schema is not None:
            body["format"] = request.response_schema
        options = self._options(request)
        if options:
            body["options"] = options
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        return body

    def _tool_calls(self, raw: Any, model: str) -> list[ToolCall]:
        calls: list[ToolCall] = []
        for item in raw or []:
            function = item.get("function") or {}
            name = function.get("name")
            arguments = function.get("arguments", {})
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments or "{}")
                except ValueError:
                    arguments = None
            if not name or not isinstance(arguments, dict):
                raise self.malformed(f"broken tool call {item!r}"[:300], model)
            call_id = item.get("id") or f"call_{new_id()[:24]}"
            calls.append(ToolCall(id=str(call_id), name=str(name), arguments=arguments))
        return calls

    @staticmethod
    def _usage(data: Mapping[str, Any]) -> Usage:
        return Usage(int(data.get("prompt_eval_count") or 0), int(data.get("eval_count") or 0))

    def _response(self, data: Any, model: str, text_key: str = "message") -> ChatResponse:
        if not isinstance(data, Mapping):
            raise self.malformed("response is not a JSON object", model)
        if data.get("error"):
            raise self.payload_error(data, model)
        if not data.get("done"):
            raise self.malformed("response is not done (no done: true)", model)
        if text_key == "message":
            raw = data.get("message")
            if not isinstance(raw, Mapping):
                raise self.malformed("response lacks message", model)
            text = str(raw.get("content") or "")
            calls = self._tool_calls(raw.get("tool_calls"), model)
        else:
            text, calls = str(data.get("response") or ""), []
        usage = self._usage(data)
        reason = str(data.get("done_reason") or "stop")
        finish = "tool_calls" if calls else _FINISH.get(reason, reason)
        timings = {k: data[k] for k in ("total_duration", "load_duration",
                                        "prompt_eval_duration", "eval_duration") if k in data}
        return ChatResponse(message=Message.assistant(text, tool_calls=calls), usage=usage,
                            model=str(data.get("model") or model), provider=self.name,
                            finish_reason=finish, cost_usd=self.cost(model, usage),
                            raw={"durations_ns": timings})

    async def chat(self, request: ChatRequest) -> ChatResponse:
        """Return one completion (``POST /api/chat`` with ``stream: false``).

        Raises:
            BadRequestError (unknown model: HTTP 404 "model not found, try pulling it"),
            AuthenticationError, RateLimitedError, ProviderTimeoutError, ServerError (also
            when the server cannot be reached), MalformedResponseError.
        """
        data = await self.request_json("POST", "/api/chat", model=request.model,
                                       json_body=await self.build_body(request))
        return self._response(data, request.model)

    async def _ndjson(self, path: str, body: dict[str, Any], model: str,
                      text_key: str) -> AsyncIterator[ChatChunk]:
        calls: list[ToolCall] = []
        final: Mapping[str, Any] = {}
        events = self.stream_events(path, model=model, json_body=body)
        async with aclosing(events):
            async for _name, event in events:
                if text_key == "message":
                    message = event.get("message") or {}
                    text = message.get("content")
                    calls.extend(self._tool_calls(message.get("tool_calls"), model))
                else:
                    text = event.get("response")
                if text:
                    yield ChatChunk(delta=str(text))
                final = event
        reason = str(final.get("done_reason") or "stop")
        yield ChatChunk(done=True, usage=self._usage(final), tool_calls=calls,
                        finish_reason="tool_calls" if calls else _FINISH.get(reason, reason))

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Yield text deltas from the NDJSON stream of ``/api/chat``, then one ``done=True``
        chunk with usage, finish reason and tool calls.

        Raises:
            MalformedResponseError: the stream ended before a line with ``done: true``, or a
                line is not JSON; the typed error of an ``error`` line sent after HTTP 200;
                the errors of :meth:`chat`.
        """
        body = await self.build_body(request, stream=True)
        async for chunk in self._ndjson("/api/chat", body, request.model, "message"):
            yield chunk

    async def _generate_body(self, prompt: str, model: str, system: str | None,
                             images: Sequence[ImagePart], stream: bool,
                             params: Mapping[str, Any]) -> dict[str, Any]:
        request = ChatRequest(model=model, messages=[Message.user(prompt)], **params)
        body: dict[str, Any] = {"model": model, "prompt": prompt, "stream": stream}
        if system:
            body["system"] = system
        if images:
            body["images"] = [await self._image_b64(p) for p in images]
        if request.response_schema is not None:
            body["format"] = request.response_schema
        options = self._options(request)
        if options:
            body["options"] = options
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        return body

    async def generate(self, prompt: str, *, model: str, system: str | None = None,
                       images: Sequence[ImagePart] = (), **params: Any) -> ChatResponse:
        """Raw completion of ``prompt`` (``POST /api/generate``), e.g. for vision prompts.

        Args:
            prompt: the prompt text, sent as is (no chat template applied by flowyard).
            model: the Ollama model name (``"llava:7b"``); it must be pulled on the server.
            system: a system prompt sent alongside ``prompt`` (None or empty: none, the
                model's default applies).
            images: images for a vision model, in order; URLs are downloaded and sent
                base64-encoded with the prompt.
            **params: ``temperature``, ``top_p``, ``max_tokens``, ``stop``, ``seed``,
                ``response_schema`` as in :class:`ChatRequest`.

        Raises:
            the errors of :meth:`chat`.
        """
        body = await self._generate_body(prompt, model, system, images, False, params)
        data = await self.request_json("POST", "/api/generate", model=model, json_body=body)
        return self._response(data, model, text_key="response")

    async def stream_generate(self, prompt: str, *, model: str, system: str | None = None,
                              images: Sequence[ImagePart] = (), **params: Any
                              ) -> AsyncIterator[ChatChunk]:
        """Stream :meth:`generate` (NDJSON); the same end-marker rules as :meth:`stream`."""
        body = await self._generate_body(prompt, model, system, images, True, params)
        async for chunk in self._ndjson("/api/generate", body, model, "response"):
            yield chunk

    async def embed(self, texts: Sequence[str], *, model: str) -> list[list[float]]:
        """Return one vector per text (``POST /api/embed``), in order.

        Raises:
            BadRequestError: the model does not embed (as the server says); other typed errors
            as :meth:`chat`; MalformedResponseError when the count of vectors differs.
        """
        if not texts:
            return []
        body: dict[str, Any] = {"model": model, "input": list(texts)}
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        data = await self.request_json("POST", "/api/embed", model=model, json_body=body)
        vectors = data.get("embeddings") if isinstance(data, Mapping) else None
        if not isinstance(vectors, list) or len(vectors) != len(texts):
            got = len(vectors) if isinstance(vectors, list) else "none"
            raise self.malformed(f"asked for {len(texts)} embeddings, got {got}", model)
        try:
            return [[float(x) for x in vector] for vector in vectors]
        except (TypeError, ValueError):
            raise self.malformed("embeddings are not lists of numbers", model) from None

    async def show(self, model: str) -> dict[str, Any]:
        """Return ``POST /api/show`` for ``model`` (details, model_info, capabilities)."""
        data = await self.request_json("POST", "/api/show", model=model,
                                       json_body={"model": model})
        if not isinstance(data, Mapping):
            raise self.malformed("/api/show answer is not an object", model)
        return dict(data)

    async def list_models(self) -> list[ModelInfo]:
        """Return the local models (``GET /api/tags``), each completed by ``/api/show``:
        context window (``<architecture>.context_length``), capabilities (completion: chat,
        streaming, json; tools; vision; embedding: embeddings) and details (family,
        parameter size, quantization, size in bytes) in ``metadata``.
        """
        import anyio

        data = await self.request_json("GET", "/api/tags")
        if not isinstance(data, Mapping) or not isinstance(data.get("models"), list):
            raise self.malformed("/api/tags lacks models[]")
        tags = [m for m in data["models"] if isinstance(m, Mapping) and (m.get("model")
                                                                         or m.get("name"))]
        shows: dict[int, dict[str, Any]] = {}
        limiter = anyio.CapacityLimiter(8)

        async def fetch(index: int, model: str) -> None:
            async with limiter:
                shows[index] = await self.show(model)

        async with anyio.create_task_group() as tg:
            for index, tag in enumerate(tags):
                tg.start_soon(fetch, index, str(tag.get("model") or tag.get("name")))
        out: list[ModelInfo] = []
        for index, tag in enumerate(tags):
            model = str(tag.get("model") or tag.get("name"))
            show = shows[index]
            model_info = show.get("model_info") or {}
            context = next((int(v) for k, v in model_info.items()
                            if k.endswith(".context_length") and isinstance(v, int)), None)
            caps: set[str] = set()
            for cap in show.get("capabilities") or ["completion"]:
                caps.update(_CAPABILITIES.get(cap, (cap,)))
            details = dict(tag.get("details") or show.get("details") or {})
            meta = {"details": details, "size": tag.get("size"), "digest": tag.get("digest"),
                    "modified_at": tag.get("modified_at")}
            out.append(ModelInfo(provider=self.name, model=model, context_window=context,
                                 capabilities=frozenset(caps), price=self.price(model),
                                 metadata={k: v for k, v in meta.items() if v is not None}))
        return out
