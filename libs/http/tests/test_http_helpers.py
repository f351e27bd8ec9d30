"""flowyard_http: the vendor-neutral helpers the provider plugins share."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from flowyard.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigError,
    ProviderTimeoutError,
    RateLimitedError,
    ServerError,
)
from flowyard.models import Usage
from flowyard_http import (
    PriceTable,
    Secret,
    error_for_status,
    error_from_payload,
    parse_retry_after,
    redact,
)

NOW = 1_700_000_000.0


@pytest.mark.parametrize(("headers", "expected"), [
    ({"retry-after-ms": "250"}, 0.25),
    ({"Retry-After-Ms": "250", "Retry-After": "9"}, 0.25),  # ms wins
    ({"retry-after-ms": "soon", "retry-after": "3"}, 3.0),  # bad ms: fall back to seconds
    ({"retry-after": "12"}, 12.0),
    ({"retry-after": "1.5"}, 1.5),
    ({"retry-after": "Tue, 14 Nov 2023 22:13:27 GMT"}, 7.0),  # NOW (22:13:20) + 7 s, an HTTP date
    ({"retry-after": "Tue, 14 Nov 2023 22:13:00 GMT"}, 0.0),  # in the past
    ({"retry-after": "-5"}, None),
    ({"retry-after": "tomorrow"}, None),
    ({}, None),
])
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, now=NOW) == expected


def test_secret_hides_its_value() -> None:
    secret = Secret("sk-abcdef123456")
    assert "abcdef" not in repr(secret) and "abcdef" not in str(secret)
    assert "abcdef" not in f"{secret}" and secret.get() == "sk-abcdef123456"
    assert secret == Secret("sk-abcdef123456") and bool(Secret("")) is False
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_redact() -> None:
    text = "key sk-abcdef123456 and header Authorization: Bearer tok_0123456789abcdef"
    out = redact(text, [Secret("sk-abcdef123456"), None, ""])
    assert "sk-abcdef123456" not in out and "tok_0123456789abcdef" not in out
    assert out.startswith("key *** and")


@pytest.mark.parametrize(("status", "kind", "error", "retriable"), [
    (401, None, AuthenticationError, False),
    (403, None, AuthenticationError, False),
    (408, None, ProviderTimeoutError, True),
    (429, None, RateLimitedError, True),
    (429, "insufficient_quota", RateLimitedError, False),
    (400, None, BadRequestError, False),
    (422, None, BadRequestError, False),
    (409, None, ServerError, True),
    (500, None, ServerError, True),
    (529, "overloaded_error", ServerError, True),
])
def test_error_for_status(status: int, kind: str | None, error: type, retriable: bool) -> None:
    body = {"error": {"message": "boom sk-abcdef123456", "type": kind}}
    err = error_for_status(status, body, {"retry-after": "2"}, provider="p", model="m",
                           secrets=["sk-abcdef123456"])
    assert type(err) is error and err.retriable is retriable and err.status_code == status
    assert "boom ***" in str(err) and "sk-abcdef" not in str(err)
    if isinstance(err, RateLimitedError):
        assert err.retry_after == 2.0


def test_error_bodies_of_every_shape() -> None:
    assert "model not found" in str(error_for_status(404, b'{"error": "model not found"}',
                                                     provider="ollama"))
    assert "Bad Gateway" in str(error_for_status(502, b"<html>Bad Gateway</html>",
                                                 provider="p"))
    assert "(empty body)" in str(error_for_status(500, b"", provider="p"))
    assert "field required" in str(error_for_status(
        422, b'{"detail": [{"msg": "field required"}]}', provider="p"))


def test_error_from_payload_uses_type_or_code() -> None:
    assert isinstance(error_from_payload({"error": {"type": "overloaded_error", "message": "x"}},
                                         provider="p"), ServerError)
    assert isinstance(error_from_payload({"error": {"code": 429, "message": "x"}},
                                         provider="p"), RateLimitedError)
    assert isinstance(error_from_payload({"error": "something odd"}, provider="p"), ServerError)


def test_price_table_lookup_and_overrides() -> None:
    table = PriceTable({"source": "https://example.org/prices", "as_of": "2025-08", "models": {
        "m": {"input": 1.0, "output": 2.0, "context_window": 1000}}},
        overrides={"local": {"input": 0, "output": 0}})
    assert table.price("m").cost(Usage(1_000_000, 500_000)) == 2.0
    assert table.price("m-2024-07-18") == table.price("m")
    assert table.price("m-20241022") == table.price("m")
    assert table.price("m-latest") == table.price("m")
    assert table.price("other") is None
    assert table.price("local").cost(Usage(10, 10)) == 0.0
    info = table.info("prov", "m")
    assert info.context_window == 1000 and info.price.as_of == "2025-08"
    assert table.info("prov", "other").price is None
    with pytest.raises(ConfigError, match="numeric"):
        PriceTable({"models": {"x": {"input": "cheap"}}})
    with pytest.raises(ConfigError, match="negative"):
        PriceTable({"models": {}}, overrides={"x": {"input": -1, "output": 0}})


# ----------------------------------------------------------------------------- clients


@pytest.mark.anyio
async def test_sharded_transport_spreads_and_releases(json_server: Any,
                                                      anyio_backend: str) -> None:
    import anyio
    import httpx
    from flowyard_http import sharded_transport

    transport = sharded_transport(max_connections=6, shard_size=2)
    assert len(transport.pools) == 3
    async with httpx.AsyncClient(transport=transport, base_url=json_server.base_url) as client:
        async with client.stream("GET", "/models") as first:
            assert first.status_code == 200
            assert sorted(transport.inflight) == [0, 0, 1]  # held until the body is closed
            async with client.stream("GET", "/models"):
                assert sorted(transport.inflight) == [0, 1, 1]  # the least busy shard
        assert transport.inflight == [0, 0, 0]

        async def get() -> None:
            response = await client.get("/models")
            assert response.json()["data"][0]["id"] == "mock-model"

        async with anyio.create_task_group() as tg:
            for _ in range(12):
                tg.start_soon(get)
        assert transport.inflight == [0, 0, 0]


@pytest.mark.anyio
async def test_pooled_client_backend_per_event_loop(anyio_backend: str) -> None:
    from flowyard_http import PooledClient

    pooled = PooledClient(base_url="http://127.0.0.1:9")
    client = pooled.get()
    assert pooled.get() is client  # one pooled client per instance and loop
    assert pooled.active_backend == ("aiohttp" if anyio_backend == "asyncio" else "httpx")
    await pooled.aclose()
    await pooled.aclose()
    assert client.is_closed
    if anyio_backend == "trio":
        with pytest.raises(RuntimeError, match="cannot run on trio"):
            PooledClient(base_url="http://127.0.0.1:9", backend="aiohttp").get()


def test_pooled_client_is_rebuilt_in_a_new_event_loop() -> None:
    import anyio
    from flowyard_http import PooledClient

    pooled = PooledClient(base_url="http://127.0.0.1:9", backend="httpx")

    async def grab() -> object:
        return pooled.get()

    first = anyio.run(grab)
    second = anyio.run(grab)
    assert first is not second
    with pytest.raises(ValueError, match="backend"):
        PooledClient(base_url="http://x", backend="curl")
