"""HTTPProvider, the base of the HTTP model providers, with a toy provider on httpx's
MockTransport: constructor checks, secrets, key check, prices, errors, SSE/NDJSON streams."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import httpx
import pytest
from flowyard.errors import (
    AuthenticationError,
    ConfigError,
    MalformedResponseError,
    RateLimitedError,
    ServerError,
)
from flowyard.models import Usage
from flowyard_http import HTTPProvider, PriceTable, Secret

KEY = "sk-toy-0123456789abcdef"
TABLE = {"source": "https://toy.example/pricing", "as_of": "2025-08",
         "models": {"toy-1": {"input": 1.0, "output": 2.0}}}


class ToyProvider(HTTPProvider):
    """SSE streams ending with ``data: [DONE]``; the key in ``x-toy-key``."""

    base_url_suffix: ClassVar[str] = "/v1"
    auth_header: ClassVar[str] = "x-toy-key"
    auth_prefix: ClassVar[str] = ""
    fixed_headers: ClassVar[Mapping[str, str]] = {"toy-version": "7"}
    end_data: ClassVar[str | None] = "[DONE]"
    end_marker: ClassVar[str] = "data: [DONE]"


class NDToyProvider(HTTPProvider):
    """NDJSON streams ending with the line ``"done": true``."""

    stream_format: ClassVar[str] = "ndjson"
    end_marker: ClassVar[str] = "done: true"

    def is_end_event(self, name: str, data: Mapping[str, Any]) -> bool:
        return bool(data.get("done"))


def toy(handler: Callable[[httpx.Request], httpx.Response], cls: type[HTTPProvider] = ToyProvider,
        **kwargs: Any) -> Any:
    options: dict[str, Any] = {"base_url": "https://toy.example/v1/", "api_key": KEY,
                               "api_key_env": "TOY_API_KEY", "key_required": True,
                               "transport": httpx.MockTransport(handler)}
    options.update(kwargs)
    return cls("toy", **options)


def sse(*events: str, status: int = 200) -> httpx.Response:
    return httpx.Response(status, headers={"content-type": "text/event-stream"},
                          content="".join(events).encode())


def never(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"no request expected, got {request.method} {request.url}")


# ----------------------------------------------------------------------------- construction


def test_constructor_checks_name_and_backend() -> None:
    for bad in ("", "a/b"):
        with pytest.raises(ConfigError, match="provider name"):
            ToyProvider(bad, base_url="https://toy.example")
    with pytest.raises(ConfigError, match=r"\[toy\] backend must be one of auto, httpx"):
        ToyProvider("toy", base_url="https://toy.example", backend="curl")


def test_base_url_is_normalised_and_the_key_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = toy(never)
    assert provider.base_url == "https://toy.example"
    assert KEY not in repr(provider) and "Secret('***')" in repr(provider)
    assert repr(provider).startswith("ToyProvider(name='toy', base_url='https://toy.example'")
    monkeypatch.setenv("TOY_API_KEY", "sk-from-env-0123456789")
    assert toy(never, api_key=None)._api_key == Secret("sk-from-env-0123456789")
    assert not toy(never, api_key=None, api_key_env=None)._api_key


@pytest.mark.anyio
async def test_headers_carry_the_key_the_fixed_and_the_extra_ones() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    async with toy(handler, headers={"x-extra": "1"}) as provider:
        assert await provider.request_json("GET", "/v1/ping") == {"ok": True}
    headers = seen[0].headers
    assert headers["x-toy-key"] == KEY and headers["toy-version"] == "7"
    assert headers["x-extra"] == "1" and headers["accept"] == "application/json"
    assert "authorization" not in headers
    assert str(seen[0].url) == "https://toy.example/v1/ping"


@pytest.mark.anyio
async def test_a_missing_key_is_refused_before_any_request(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.delenv("TOY_API_KEY", raising=False)
    provider = toy(never, api_key=None)
    with pytest.raises(AuthenticationError, match=r"toy: no API key: set TOY_API_KEY or "
                                                  r"api_key in the \[toy\] section"):
        await provider.request_json("GET", "/v1/models")
    with pytest.raises(AuthenticationError):
        async for _ in provider.stream_events("/v1/chat", model="toy-1", json_body={}):
            pass
    keyless = toy(lambda r: httpx.Response(200, json=[]), api_key="", key_required=False)
    assert await keyless.request_json("GET", "/v1/models") == []
    await provider.aclose()
    await provider.aclose()  # twice is fine
    await keyless.aclose()


# ----------------------------------------------------------------------------- prices


def test_prices_free_and_unknown() -> None:
    provider = toy(never, prices=PriceTable(TABLE))
    assert provider.price("toy-1").input_per_mtok == 1.0
    assert provider.cost("toy-1", Usage(1_000_000, 500_000)) == pytest.approx(2.0)
    assert provider.price("other") is None and provider.cost("other", Usage(1, 1)) is None
    free = toy(never, prices=PriceTable(TABLE), free=True)
    assert free.price("toy-1").input_per_mtok == 1.0  # the table wins over free
    assert free.cost("other", Usage(10, 10)) == 0.0
    assert "configured free" in free.price("other").source
    assert toy(never).price("toy-1") is None  # no table: unknown, never 0


# ----------------------------------------------------------------------------- errors


@pytest.mark.anyio
async def test_failed_status_is_typed_and_redacted() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"retry-after": "3"},
                              json={"error": {"type": "rate_limit_error",
                                              "message": f"slow down, {KEY}"}})

    async with toy(handler) as provider:
        with pytest.raises(RateLimitedError) as info:
            await provider.request_json("POST", "/v1/chat", model="toy-1", json_body={})
    assert info.value.retry_after == 3.0 and info.value.retriable
    assert KEY not in str(info.value) and "toy model 'toy-1': HTTP 429" in str(info.value)


@pytest.mark.anyio
async def test_transport_failures_are_typed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with toy(handler) as provider:
        with pytest.raises(ServerError, match="connection failed"):
            await provider.request_json("GET", "/v1/models")


# ----------------------------------------------------------------------------- streams


async def collect(provider: HTTPProvider) -> list[tuple[str, Any]]:
    return [event async for event in provider.stream_events("/v1/chat", model="toy-1",
                                                            json_body={"stream": True})]


@pytest.mark.anyio
async def test_sse_events_up_to_the_end_marker() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content) == {"stream": True}
        return sse('data: {"n": 1}\n\n', ": comment\n\n", 'event: delta\ndata: {"n": 2}\n\n',
                   "data: [DONE]\n\n", 'data: {"n": 3}\n\n')

    async with toy(handler) as provider:
        assert await collect(provider) == [("message", {"n": 1}), ("delta", {"n": 2})]


@pytest.mark.anyio
@pytest.mark.parametrize(("response", "error", "match"), [
    (sse('data: {"n": 1}\n\n'), MalformedResponseError,
     r"stream ended before its end marker \(data: \[DONE\]\)"),
    (sse("data: [1, 2]\n\n"), MalformedResponseError, "stream event is not a JSON object"),
    (sse("data: {oops\n\n"), MalformedResponseError, "stream event is not valid JSON"),
    (sse('event: error\ndata: {"error": {"type": "overloaded_error", "message": "busy"}}\n\n'),
     ServerError, "busy"),
    (httpx.Response(200, json={"error": {"type": "rate_limit_error", "message": "wait"}}),
     RateLimitedError, "wait"),
    (httpx.Response(200, json={"choices": []}), MalformedResponseError,
     "expected an event stream, got content-type 'application/json'"),
    (httpx.Response(401, json={"error": {"message": "bad key"}}), AuthenticationError,
     "bad key"),
])
async def test_sse_stream_failures(response: httpx.Response, error: type[Exception],
                                   match: str) -> None:
    async with toy(lambda request: response) as provider:
        with pytest.raises(error, match=match):
            await collect(provider)


@pytest.mark.anyio
async def test_ndjson_lines_include_the_end_line() -> None:
    lines = ['{"t": "a"}', "", '{"t": "b", "done": true}', '{"t": "after"}']

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content="\n".join(lines).encode())

    async with toy(handler, cls=NDToyProvider) as provider:
        assert await collect(provider) == [("", {"t": "a"}), ("", {"t": "b", "done": True})]


@pytest.mark.anyio
async def test_ndjson_without_its_end_line_or_with_an_error_line() -> None:
    async with toy(lambda r: httpx.Response(200, content=b'{"t": "a"}\n'),
                   cls=NDToyProvider) as provider:
        with pytest.raises(MalformedResponseError, match=r"end marker \(done: true\)"):
            await collect(provider)
    async with toy(lambda r: httpx.Response(200, content=b'{"error": "model gone"}\n'),
                   cls=NDToyProvider) as provider:
        with pytest.raises(ServerError, match="model gone"):
            await collect(provider)
    async with toy(lambda r: httpx.Response(200, content=b"[1]\n"),
                   cls=NDToyProvider) as provider:
        with pytest.raises(MalformedResponseError, match="stream line is not a JSON object"):
            await collect(provider)
