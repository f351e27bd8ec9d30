"""One base class for model providers that speak JSON over HTTP.

:class:`HTTPProvider` holds what every HTTP provider does the same way: it checks its name
and transport backend, keeps the API key in a :class:`~flowyard_http.Secret` (never shown in
a repr, a message or a log), refuses calls without a key when the service needs one, looks up
prices, owns one pooled client per instance (closed by :meth:`HTTPProvider.aclose`), maps
every failure to the core's typed errors, and reads streamed responses (server-sent events or
NDJSON) up to their end marker. A subclass keeps only its wire format: how a request becomes
a body, how a response or a stream event becomes flowyard's models, and which event ends a
stream.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from flowyard import (
    AuthenticationError,
    ConfigError,
    MalformedResponseError,
    ModelPrice,
    Usage,
    outgoing_headers,
)

from flowyard_http._util import (
    DEFAULT_MAX_RETRY_AFTER,
    PooledClient,
    PriceTable,
    ProviderURL,
    Secret,
    deadline_error,
    error_for_exception,
    error_from_payload,
    open_stream,
    parse_json_body,
    redact,
    request_json,
    secret_headers,
    stream_errors,
)

if TYPE_CHECKING:
    import httpx
    from flowyard import ProviderError

__all__ = ["HTTPProvider", "StreamEvent"]

_P = TypeVar("_P", bound="HTTPProvider")
_T = TypeVar("_T")

#: Marks the end of an event iterator in :meth:`HTTPProvider.stream_events`.
_END: Any = object()

#: One event of a streamed response: ``(name, data)``. ``name`` is the SSE ``event`` field
#: (``"message"`` when the server sends none; ``""`` for NDJSON lines); ``data`` is the event's
#: JSON object.
StreamEvent = tuple[str, Mapping[str, Any]]


async def _sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """Yield ``(event name, data text)`` of each server-sent event with data."""
    from httpx_sse import EventSource

    async for sse in EventSource(response).aiter_sse():
        if sse.data:
            yield sse.event, sse.data


async def _ndjson_lines(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """Yield ``("", line)`` of each non-blank line of an NDJSON body."""
    async for line in response.aiter_lines():
        if line.strip():
            yield "", line


class HTTPProvider:
    """Base of the providers that call a model service over HTTP (OpenAI, Anthropic, Ollama).

    Subclasses set the class attributes below, call ``super().__init__`` with the resolved
    base URL and API key, and implement the ``ModelProvider`` methods (``chat``, ``stream``,
    ``embed``, ``list_models``) with :meth:`request_json` and :meth:`stream_events`.

    Args:
        name: provider name, the prefix of model references (``"openai"``); non-empty,
            without ``/``.
        base_url: the service root; a trailing ``/`` and :attr:`base_url_suffix` are removed.
            Its userinfo (``user:password@``, sent as ``Authorization: Basic``) and every
            query value (``?key=...``, sent at the end of every request's URL:
            ``/v1/chat/completions?key=...``) are secrets, like the API key (see
            :class:`~flowyard_http.ProviderURL`).
        api_key: the API key; ``None`` reads the environment variable ``api_key_env`` (when
            given); empty means no key (no auth header is sent). A reference
            ``"keystore:<name>"`` or ``"env:<VAR>"`` is resolved by
            :func:`flowyard.resolve_secret` (the key store of ``Config.load()``; the provider
            plugins resolve it with their stack's configuration before this).
        api_key_env: the environment variable read when ``api_key`` is None, also named in the
            error of a missing key.
        key_required: calls fail with :class:`~flowyard.errors.AuthenticationError` before
            any request when there is no key (the official services); self-hosted servers
            usually need none.
        headers: extra headers sent with every request (after the subclass's
            :attr:`fixed_headers`, before the auth header). Every value is a secret, like
            the API key, except those of :data:`~flowyard_http.NON_SECRET_HEADERS`
            (``Accept``, ``Content-Type``, ``User-Agent``, ``OpenAI-Organization``,
            ``OpenAI-Project``, ``anthropic-version``, ``anthropic-beta``).
        timeout: seconds per phase of a request (connect, each read, each write, waiting for
            a pooled connection).
        deadline: seconds a whole call may take (None: ``timeout``). A plain request must be
            answered in full within it; a stream must deliver its first event within it and
            each further event within it of the one before (an idle limit per event, not per
            byte: a server trickling bytes cannot keep a stream open; a stream that keeps
            sending events has no overall limit). Passing it raises a retriable
            :class:`~flowyard.errors.ProviderTimeoutError`.
        max_retry_after: the longest ``Retry-After`` of a 429 honoured, in seconds (``[limits]
            max_retry_after``, default 60): a longer one makes the
            :class:`~flowyard.errors.RateLimitedError` non-retriable, its message stating the
            delay.
        backend: HTTP transport: ``"auto"`` (aiohttp-backed on asyncio, httpx's own on trio),
            ``"httpx"`` or ``"aiohttp"`` (see :class:`~flowyard_http.PooledClient`).
        transport: an explicit ``httpx.AsyncBaseTransport`` (tests); overrides ``backend``.
        max_connections: connection pool size.
        prices: the model table (prices in US dollars per million tokens, context windows);
            an empty table when None.
        free: every model without a known price costs 0 (a local server); otherwise unknown
            (None, never 0). Subclasses narrow this with :meth:`free_price`.

    Raises:
        ConfigError: an invalid name or backend, a ``deadline`` that is not a number > 0, a
            ``max_retry_after`` that is not a number >= 0, a ``base_url`` that is not absolute
            or has a fragment, a header that is not a string, or a ``base_url`` userinfo
            together with an API key sent in the ``Authorization`` header (both would set it).
        KeyStoreError: a ``keystore:``/``env:`` ``api_key`` that cannot be resolved.
    """

    #: Path suffix stripped from ``base_url`` (Anthropic's ``/v1``: the paths carry it).
    base_url_suffix: ClassVar[str] = ""
    #: Header that carries the key, and the prefix before the key in its value.
    auth_header: ClassVar[str] = "Authorization"
    auth_prefix: ClassVar[str] = "Bearer "
    #: Headers every request of this service carries (an API version).
    fixed_headers: ClassVar[Mapping[str, str]] = {}
    #: How streamed responses are framed: ``"sse"`` (server-sent events) or ``"ndjson"``.
    stream_format: ClassVar[str] = "sse"
    #: SSE ``data`` text that ends a stream without being JSON (OpenAI's ``[DONE]``).
    end_data: ClassVar[str | None] = None
    #: The end marker as named in the error raised when a stream stops before it.
    end_marker: ClassVar[str] = "end marker"

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str | Secret | None = None,
        api_key_env: str | None = None,
        key_required: bool = False,
        headers: Mapping[str, str] | None = None,
        timeout: float = 600.0,
        deadline: float | None = None,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        backend: str = "auto",
        transport: Any = None,
        max_connections: int = 100,
        prices: PriceTable | None = None,
        free: bool = False,
    ) -> None:
        if not name or "/" in name:
            raise ConfigError(f"provider name must be non-empty without '/', got {name!r}")
        if backend not in PooledClient.BACKENDS:
            raise ConfigError(f"[{name}] backend must be one of "
                              f"{', '.join(PooledClient.BACKENDS)}, got {backend!r}")
        self.name = name
        if deadline is None and isinstance(timeout, (int, float)):
            deadline = float(timeout)
        if deadline is not None and (isinstance(deadline, bool)
                                     or not isinstance(deadline, (int, float))
                                     or not 0 < deadline < math.inf):
            raise ConfigError(f"[{name}] deadline must be a number of seconds > 0, "
                              f"got {deadline!r}")
        if (isinstance(max_retry_after, bool) or not isinstance(max_retry_after, (int, float))
                or not 0 <= max_retry_after < math.inf):
            raise ConfigError(f"limits.max_retry_after must be a number of seconds >= 0, got "
                              f"{max_retry_after!r} (provider {name!r})")
        #: Seconds a whole call may take (see the class docstring); None: no overall limit.
        self.deadline: float | None = float(deadline) if deadline is not None else None
        #: The longest ``Retry-After`` honoured, in seconds.
        self.max_retry_after = float(max_retry_after)
        url = ProviderURL(base_url)
        base_url = url.base
        if self.base_url_suffix and base_url.endswith(self.base_url_suffix):
            base_url = base_url[: -len(self.base_url_suffix)]
        #: The service root requests are joined to: scheme, host, port and path, without the
        #: userinfo and query (kept in :attr:`url`).
        self.base_url = base_url
        url.base = base_url
        #: The base URL with its secrets; ``str(url)`` shows them as ``***``.
        self.url = url
        self._configured_headers = secret_headers(headers, where=f"[{name}] headers")
        if api_key is None and api_key_env:
            import os

            api_key = os.environ.get(api_key_env)
        if isinstance(api_key, str) and api_key.startswith(("keystore:", "env:")):
            from flowyard import resolve_secret

            api_key = resolve_secret(api_key, where=f"[{name}] api_key")
        self._api_key = api_key if isinstance(api_key, Secret) else Secret(api_key or "")
        self.api_key_env = api_key_env
        self.key_required = key_required
        self.prices = prices if prices is not None else PriceTable(
            {"source": "", "as_of": "", "models": {}})
        self.free = free
        wire_headers: dict[str, str] = {"Accept": "application/json", **self.fixed_headers}
        wire_headers.update({k: v.get() if isinstance(v, Secret) else v
                             for k, v in self._configured_headers.items()})
        basic = url.basic_auth
        if basic:
            if self._api_key and self.auth_header.lower() == "authorization":
                raise ConfigError(f"[{name}] base_url has a user name or password and an API "
                                  "key is set too: both would be sent in the Authorization "
                                  "header; give one of them")
            wire_headers["Authorization"] = basic.get()
        if self._api_key:
            wire_headers[self.auth_header] = f"{self.auth_prefix}{self._api_key.get()}"
        self._client = PooledClient(base_url=self.base_url, headers=wire_headers,
                                    timeout=timeout, backend=backend, transport=transport,
                                    max_connections=max_connections, params=url.query())

    def __repr__(self) -> str:
        extra = ""
        if self._configured_headers:
            shown = {k: "***" if isinstance(v, Secret) else v
                     for k, v in self._configured_headers.items()}
            extra = f", headers={shown!r}"
        return (f"{type(self).__name__}(name={self.name!r}, base_url={str(self.url)!r}, "
                f"api_key={self._api_key!r}{extra})")

    # ------------------------------------------------------------------ keys and errors

    @property
    def _secrets(self) -> list[Secret]:
        """The values redacted from every error message, event and stored text: the API key,
        every configured header value outside the allow-list, and the base URL's query
        values and userinfo (and its Basic token).
        """
        headers = self._configured_headers.values()
        return [self._api_key, *(v for v in headers if isinstance(v, Secret)),
                *self.url.secrets]

    def check_key(self, model: str | None = None) -> None:
        """Refuse a call when this service needs a key and none is configured.

        Raises:
            AuthenticationError: ``key_required`` and no key (the message says where to set
                one: ``api_key_env`` or ``api_key`` in the ``[<name>]`` section).
        """
        if self.key_required and not self._api_key:
            where = f"{self.api_key_env} or " if self.api_key_env else ""
            raise AuthenticationError(
                f"{self.name}: no API key: set {where}api_key in the [{self.name}] section of "
                "flowyard.toml", provider=self.name, model=model)

    def malformed(self, message: str, model: str | None = None) -> MalformedResponseError:
        """Return (for the caller to raise) a :class:`MalformedResponseError` saying
        ``"<name>: <message>"``, secrets redacted (the message often quotes the response).
        """
        return MalformedResponseError(redact(f"{self.name}: {message}", self._secrets),
                                      provider=self.name, model=model)

    async def within_deadline(self, call: Awaitable[_T], model: str | None = None, *,
                              what: str = "complete response") -> _T:
        """Await ``call`` within :attr:`deadline` seconds (for requests a subclass sends
        itself, like fetching an image).

        Raises:
            ProviderTimeoutError: the deadline passed (``call`` is cancelled).
        """
        import anyio

        done, result = False, None
        limit = self.deadline if self.deadline is not None else math.inf
        with anyio.move_on_after(limit):
            result = await call
            done = True
        if not done:
            raise deadline_error(limit, provider=self.name, model=model, what=what)
        return result  # type: ignore[return-value]

    def payload_error(self, payload: Any, model: str | None = None) -> ProviderError:
        """Return the typed error for an error object received after HTTP 200 (an error
        stream event, a JSON body with ``error``), typed by its ``type``/``code``; secrets
        redacted. See :func:`flowyard_http.error_from_payload`.
        """
        return error_from_payload(payload, provider=self.name, model=model,
                                  secrets=self._secrets)

    def transport_error(self, exc: BaseException, model: str | None = None) -> ProviderError:
        """Return the typed error for an httpx/aiohttp transport exception (the caller raises
        it ``from None``). See :func:`flowyard_http.error_for_exception`.
        """
        return error_for_exception(exc, provider=self.name, model=model, secrets=self._secrets)

    def is_error_event(self, name: str, data: Mapping[str, Any]) -> bool:
        """True when a stream event carries an error (``event: error`` or an ``error`` key);
        subclasses add their own shapes.
        """
        return name == "error" or bool(data.get("error"))

    def is_end_event(self, name: str, data: Mapping[str, Any]) -> bool:
        """True for the event that ends a stream (it is yielded, then the stream stops)."""
        return False

    # ------------------------------------------------------------------ prices

    def free_price(self, model: str) -> ModelPrice | None:
        """The price of a model missing from the table: 0 when the provider is ``free``,
        else None (unknown). Subclasses narrow what counts as free.
        """
        if self.free:
            return ModelPrice(0.0, 0.0, source=f"{self.name}: configured free (local server)")
        return None

    def price(self, model: str) -> ModelPrice | None:
        """Return the price of ``model`` (US dollars per million tokens): the table's
        (configured prices first), else :meth:`free_price`; None when unknown (never 0).
        """
        price: ModelPrice | None = self.prices.price(model)
        return price if price is not None else self.free_price(model)

    def cost(self, model: str, usage: Usage) -> float | None:
        """Return the cost of ``usage`` on ``model`` in US dollars, None when the price is
        unknown.
        """
        price = self.price(model)
        return price.cost(usage) if price is not None else None

    # ------------------------------------------------------------------ requests

    def client(self) -> httpx.AsyncClient:
        """Return the pooled client of the running event loop (created on first use)."""
        return self._client.get()

    async def request_json(self, method: str, path: str, *, model: str | None = None,
                           json_body: Any = None, headers: Mapping[str, str] | None = None,
                           params: Mapping[str, Any] | None = None) -> Any:
        """Check the key, send one request to ``base_url + path`` and return its parsed JSON.

        The request goes through :meth:`client`; with the base class's, on asyncio and the
        aiohttp backend, straight to its aiohttp session (see :func:`~flowyard_http.request_json`).

        Raises:
            AuthenticationError: no key where one is required (before any request).
            ProviderError: a typed subclass for a failed status (``RateLimitedError`` with
                ``retry_after`` in seconds, ``ServerError``, ``BadRequestError``...), a
                transport failure, or a body that is not JSON (``MalformedResponseError``).
        """
        self.check_key(model)
        # the PooledClient itself (its direct aiohttp path on asyncio), unless a subclass
        # supplies its own client()
        client: Any = self._client if type(self).client is HTTPProvider.client else self.client()
        return await request_json(client, method, path, provider=self.name,
                                  model=model, secrets=self._secrets, json_body=json_body,
                                  headers=outgoing_headers(headers), params=params,
                                  deadline=self.deadline, max_retry_after=self.max_retry_after)

    async def stream_events(self, path: str, *, model: str, json_body: Any,
                            headers: Mapping[str, str] | None = None
                            ) -> AsyncIterator[StreamEvent]:
        """``POST`` to ``path`` and yield the streamed response's events (``(name, data)``,
        see :data:`StreamEvent`) up to and including the end event; empty events are skipped.

        SSE streams (:attr:`stream_format` ``"sse"``) must have the content type
        ``text/event-stream``; a JSON body instead is read as an error (a typed error when it
        carries one). The response is closed when the iteration ends or is abandoned (the
        generator is closed).

        Raises:
            AuthenticationError: no key where one is required (before any request).
            ProviderError: a typed subclass for a failed status or a transport failure, and
                the typed error of an error event (:meth:`is_error_event`).
            ProviderTimeoutError: the stream stalled past a per-read timeout, or an event came
                too late: the first one more than :attr:`deadline` seconds after the call
                began, a later one more than :attr:`deadline` seconds after the one before.
            MalformedResponseError: the stream ended (or was cut) before its end marker
                (:meth:`is_end_event`, :attr:`end_data`), an event is not a JSON object, or an
                SSE response has another content type.
        """
        self.check_key(model)
        import anyio

        limit = self.deadline if self.deadline is not None else math.inf
        first_by = anyio.current_time() + limit
        opener = open_stream(self.client(), "POST", path, provider=self.name, model=model,
                             secrets=self._secrets, json_body=json_body,
                             headers=outgoing_headers(headers),
                             max_retry_after=self.max_retry_after)
        try:
            response: httpx.Response | None = None
            with anyio.CancelScope(deadline=first_by):
                opened = await opener.__aenter__()
                if self.stream_format == "sse":
                    await self._expect_event_stream(opened, model)
                response = opened
            if response is None:
                raise deadline_error(limit, provider=self.name, model=model,
                                     what="stream response")
            if self.stream_format == "sse":
                raw_events: AsyncIterator[tuple[str, str]] = _sse_events(response)
                what = "stream event"
            else:
                raw_events, what = _ndjson_lines(response), "stream line"
            first = True
            with stream_errors(provider=self.name, model=model, secrets=self._secrets):
                async with aclosing(raw_events) as events:
                    while True:
                        item: Any = None
                        wait_until = first_by if first else anyio.current_time() + limit
                        with anyio.CancelScope(deadline=wait_until):
                            item = await anext(events, _END)
                        if item is None:
                            raise deadline_error(
                                limit, provider=self.name, model=model,
                                what=f"first {what}" if first else
                                f"{what} after the previous one (the stream went idle)")
                        if item is _END:
                            break
                        first = False
                        name, text = item
                        if self.end_data is not None and text == self.end_data:
                            return
                        data = parse_json_body(text, provider=self.name, model=model,
                                               what=what, secrets=self._secrets)
                        if not isinstance(data, Mapping):
                            raise self.malformed(f"{what} is not a JSON object", model)
                        if self.is_error_event(name, data):
                            raise self.payload_error(data, model)
                        yield name, data
                        if self.is_end_event(name, data):
                            return
        finally:
            await opener.__aexit__(None, None, None)
        raise self.malformed(f"stream ended before its end marker ({self.end_marker})", model)

    async def _expect_event_stream(self, response: httpx.Response, model: str) -> None:
        ctype = response.headers.get("content-type", "")
        if "text/event-stream" in ctype:
            return
        with stream_errors(provider=self.name, model=model, secrets=self._secrets):
            raw = await response.aread()
        data = parse_json_body(raw, provider=self.name, model=model, secrets=self._secrets)
        if isinstance(data, Mapping) and self.is_error_event("", data):
            raise self.payload_error(data, model)
        raise self.malformed(f"expected an event stream, got content-type {ctype!r}", model)

    # ------------------------------------------------------------------ lifecycle

    async def aclose(self) -> None:
        """Close the connection pool. Safe to call twice."""
        await self._client.aclose()

    async def __aenter__(self: _P) -> _P:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()
