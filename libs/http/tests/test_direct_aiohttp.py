"""The direct aiohttp path of ``request_json`` (issue 17, item 5).

On asyncio with the aiohttp backend, :func:`flowyard_http.request_json` given a
:class:`~flowyard_http.PooledClient` sends plain requests straight to the aiohttp session under
the httpx client instead of through httpx's ``Request``/``Response`` objects. These tests hold
it to what the httpx route sends and raises, on real sockets:

* the same request on the wire (method, path and query, body bytes, every header but
  ``Accept-Encoding``), for bodies, per-request headers overriding defaults in any case,
  per-request query parameters, and a base URL carrying a secret query and a path;
* the same parsed answers and typed errors (status errors with ``Retry-After``, refused
  connections, read timeouts, deadlines, unparseable responses, gzip bodies, JSON bodies that
  cannot be encoded);
* the direct path is used on asyncio only: trio, the ``httpx`` backend and explicit
  transports go through httpx as before.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flowyard.errors import (
    BadRequestError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
    ServerError,
)
from flowyard_http import PooledClient, error_for_exception, request_json

pytestmark = pytest.mark.anyio

#: What a recorded request is: ``(request line, [(header name, value)], body)``.
Recorded = tuple[str, list[tuple[str, str]], bytes]


class Recorder:
    """An HTTP/1.1 server on 127.0.0.1 that records each request's raw head and body and
    answers with ``reply(request_line)`` (bytes of a whole response; the connection is then
    closed, or kept open and silent when the reply is empty)."""

    def __init__(self, reply: Callable[[str], bytes]) -> None:
        self.reply = reply
        self.requests: list[Recorded] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.base_url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._open.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        line, *lines = head.decode("latin-1").split("\r\n")
        headers = [(k.strip(), v.strip()) for k, _, v in (x.partition(":") for x in lines)]
        length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
        while len(body) < length:
            body += conn.recv(65536)
        self.requests.append((line, headers, body))
        answer = self.reply(line)
        if answer:
            conn.sendall(answer)
            conn.close()

    def close(self) -> None:
        self._sock.close()
        for conn in self._open:
            conn.close()


def response(status: str, body: bytes, *, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


OK = response("200 OK", b'{"ok": true}')


@pytest.fixture
def recorder() -> Iterator[Callable[[Callable[[str], bytes]], Recorder]]:
    servers: list[Recorder] = []

    def start(reply: Callable[[str], bytes] = lambda line: OK) -> Recorder:
        servers.append(Recorder(reply))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def comparable(recorded: Recorded) -> tuple[str, dict[str, str], bytes]:
    """A recorded request without ``Accept-Encoding`` (aiohttp's own on the direct path),
    header names lowercased (HTTP header names are case-insensitive)."""
    line, headers, body = recorded
    return line, {k.lower(): v for k, v in headers if k.lower() != "accept-encoding"}, body


def pooled(base_url: str, **options: Any) -> PooledClient:
    return PooledClient(base_url=base_url, timeout=5.0, backend="auto",
                        headers={"Accept": "application/json", "Authorization": "Bearer sk-k",
                                 "X-Trace": "a"}, **options)


CASES: list[dict[str, Any]] = [
    {"method": "POST", "url": "/v1/chat/completions",
     "json_body": {"model": "m", "messages": [{"role": "user", "content": "héllo ✓"}],
                   "n": 1.5, "stop": None}},
    {"method": "POST", "url": "/v1/chat/completions", "json_body": {},
     "headers": {"Idempotency-Key": "abc", "x-trace": "b", "content-type": "text/x-json"}},
    {"method": "GET", "url": "/v1/models", "params": {"limit": 5, "after": "a b/c"}},
    {"method": "GET", "url": "/v1/models"},
]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("case", CASES, ids=["body", "headers", "params", "get"])
@pytest.mark.parametrize("base", ["", "/api?key=s3cret-query&v=1"],
                         ids=["plain", "path+query"])
async def test_the_direct_path_sends_what_httpx_sends(recorder: Any, case: dict[str, Any],
                                                     base: str) -> None:
    server = recorder()
    path, _, query = base.partition("?")
    params = [tuple(p.split("=", 1)) for p in query.split("&")] if query else None
    client = pooled(server.base_url + path, params=params)
    try:
        httpx_client, direct = client.current()
        assert direct is not None and client.active_backend == "aiohttp"
        for target in (client, httpx_client):  # direct, then httpx over the same session
            assert await request_json(target, provider="p", **case) == {"ok": True}
    finally:
        await client.aclose()
    via_direct, via_httpx = (comparable(r) for r in server.requests)
    assert via_direct == via_httpx
    line = via_direct[0]
    if query:
        assert "key=s3cret-query&v=1" in line  # the base URL's query ends every request's


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_the_direct_path_is_for_asyncio_and_the_aiohttp_backend_only(
        recorder: Any, anyio_backend: str) -> None:
    import httpx

    server = recorder()
    cases = [({}, anyio_backend == "asyncio"), ({"backend": "httpx"}, False),
             ({"transport": httpx.AsyncHTTPTransport()}, False)]
    for options, expected in cases:
        client = PooledClient(base_url=server.base_url, **options)
        try:
            assert (client.current()[1] is not None) is expected
            assert await request_json(client, "GET", "/x", provider="p") == {"ok": True}
        finally:
            await client.aclose()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_direct_path_reads_status_errors_and_gzip_like_httpx(recorder: Any) -> None:
    packed = gzip.compress(b'{"answer": 42}')
    replies = {
        "/limited": response("429 Too Many Requests",
                             b'{"error": {"message": "slow down", "type": "rate_limit"}}',
                             extra="Retry-After: 3\r\n"),
        "/gzip": response("200 OK", packed, extra="Content-Encoding: gzip\r\n"),
        "/broken": b"HTTP/1.1 2OO NOT A STATUS\r\n\r\n",
    }
    server = recorder(lambda line: replies[line.split(" ")[1]])
    client = pooled(server.base_url)
    try:
        for target in (client, client.get()):
            with pytest.raises(RateLimitedError) as caught:
                await request_json(target, "POST", "/limited", provider="p", model="m",
                                   json_body={})
            assert caught.value.retry_after == 3.0 and caught.value.retriable
            assert "slow down" in str(caught.value)
            assert await request_json(target, "GET", "/gzip", provider="p") == {"answer": 42}
        # a response aiohttp cannot parse: a typed, retriable ServerError (httpx's
        # RemoteProtocolError on trio and the httpx backend)
        with pytest.raises(ServerError, match="connection failed") as broken:
            await request_json(client, "GET", "/broken", provider="p")
        assert broken.value.retriable
        with pytest.raises(ValueError, match="JSON compliant"):
            await request_json(client, "POST", "/gzip", provider="p",
                               json_body={"x": float("nan")})
    finally:
        await client.aclose()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_direct_path_types_transport_failures_like_httpx(recorder: Any) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        refused_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    silent = recorder(lambda line: b"")
    errors: list[list[ProviderError]] = []
    for target_of in (lambda c: c, lambda c: c.get()):
        seen: list[ProviderError] = []
        refused = PooledClient(base_url=refused_url, timeout=5.0)
        slow = PooledClient(base_url=silent.base_url, timeout=0.3)
        try:
            with pytest.raises(ServerError) as caught:
                await request_json(target_of(refused), "GET", "/x", provider="p", model="m")
            seen.append(caught.value)
            with pytest.raises(ProviderTimeoutError) as timed_out:
                await request_json(target_of(slow), "GET", "/x", provider="p", model="m")
            seen.append(timed_out.value)
            with pytest.raises(ProviderTimeoutError, match=r"0\.2 s deadline"):
                await request_json(target_of(slow), "GET", "/x", provider="p", deadline=0.2)
        finally:
            await refused.aclose()
            await slow.aclose()
        errors.append(seen)
    direct, via_httpx = errors
    assert [str(e) for e in direct] == [str(e) for e in via_httpx]
    assert all(e.retriable for e in direct)


def test_aiohttp_exceptions_map_alike_raised_directly_or_through_httpx() -> None:
    import aiohttp
    import httpx
    from yarl import URL

    cases: list[tuple[BaseException, type[ProviderError]]] = [
        (aiohttp.ServerTimeoutError("Timeout on reading data from socket"),
         ProviderTimeoutError),
        (aiohttp.ServerDisconnectedError(), ServerError),
        (aiohttp.ClientPayloadError("Response payload is not completed"), ServerError),
        (aiohttp.InvalidURL("http://[bad"), BadRequestError),
        (aiohttp.NonHttpUrlClientError(URL("ftp://x/")), BadRequestError),
    ]
    for exc, kind in cases:
        direct = error_for_exception(exc, provider="p", model="m", secrets=["sk-secret"])
        wrapped = httpx.ConnectTimeout(str(exc))
        wrapped.__cause__ = exc
        via_httpx = error_for_exception(wrapped, provider="p", model="m")
        assert type(direct) is kind and type(via_httpx) is kind, exc
        assert str(direct) == str(via_httpx)
    plain = error_for_exception(aiohttp.ClientError("odd"), provider="p")
    assert type(plain) is ProviderError and not plain.retriable
    assert "HTTP error (ClientError: odd)" in str(plain)
    assert isinstance(error_for_exception(TimeoutError(), provider="p"), ProviderTimeoutError)


def test_the_request_body_is_encoded_as_httpx_encodes_json() -> None:
    import httpx

    body = {"text": "héllo ✓ \u2028", "n": [1, 2.5, None, True]}
    sent = httpx.Request("POST", "http://x/", json=body).content
    assert sent == json.dumps(body, ensure_ascii=False, separators=(",", ":"),
                              allow_nan=False).encode()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_subclass_client_is_still_used_by_request_json(recorder: Any) -> None:
    import httpx
    from flowyard_http import HTTPProvider

    server = recorder()
    seen: list[str] = []

    class Own(HTTPProvider):
        def client(self) -> httpx.AsyncClient:
            seen.append("own client")
            return super().client()

    for cls, expected in ((HTTPProvider, []), (Own, ["own client"])):
        seen.clear()
        provider = cls("toy", base_url=server.base_url)
        try:
            assert await provider.request_json("GET", "/x") == {"ok": True}
        finally:
            await provider.aclose()
        assert seen == expected
