"""Real HTTP servers on 127.0.0.1 that misbehave on purpose (issue 15, items 3, 4 and 5).

* a 429 with ``Retry-After: 86400`` fails at once (not retriable, the delay in the message);
  ``Retry-After: 2`` stays retriable;
* a server trickling one byte a second cannot keep a call open past its deadline, for a plain
  request and for a stream (the first event, and an idle stream after it);
* a server echoing the API key (an HTML page, a JSON field, an SSE error event, an error
  body, JSON-escaped, URL-encoded or as HTML references) never gets it into an error's
  ``str``/``repr`` or a parsed value; a hypothesis property covers arbitrary bodies.

Every server is a raw socket served by threads, so the bytes and their timing are exactly
what the test scripts, whatever the HTTP transport (aiohttp-backed on asyncio, httpx on trio).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import pytest
from flowyard.errors import (
    BadRequestError,
    MalformedResponseError,
    ProviderTimeoutError,
    RateLimitedError,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowyard_http import HTTPProvider, error_for_status, parse_json_body, redact, redact_value

pytestmark = pytest.mark.anyio

CANARY = "sk-canary-7f3a9c2e5b1d4806a9e2"

#: One step of a scripted answer: bytes are sent, a float is a pause in seconds.
Script = list[bytes | float]


class HostileServer:
    """An HTTP/1.1 server on 127.0.0.1 whose answers are scripted.

    ``answer(n, path, body)`` is called for the ``n``-th request (1-based) and returns the
    steps to play on the socket; the connection is closed after the last step. Requests
    seen are kept in :attr:`requests` as ``(path, headers, body)``.
    """

    def __init__(self, answer: Callable[[int, str, bytes], Script]) -> None:
        self.answer = answer
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.base_url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            headers = {k.strip().lower(): v.strip()
                       for k, _, v in (line.partition(":") for line in lines[1:])}
            length = int(headers.get("content-length", "0"))
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                body += chunk
            with self._lock:
                self.requests.append((path, headers, body))
                n = len(self.requests)
            for step in self.answer(n, path, body):
                if self._closed:
                    return
                if isinstance(step, float):
                    time.sleep(step)
                    continue
                try:
                    conn.sendall(step)
                except OSError:
                    return  # the client gave up: that is what the test wants

    def close(self) -> None:
        self._closed = True
        self._sock.close()


def head(status: str, content_type: str, *, length: int | None = None,
         extra: Mapping[str, str] | None = None) -> bytes:
    """The status line and headers of a response (``Connection: close``)."""
    lines = [f"HTTP/1.1 {status}", f"Content-Type: {content_type}", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def whole(status: str, content_type: str, body: bytes | str,
          extra: Mapping[str, str] | None = None) -> Script:
    raw = body.encode() if isinstance(body, str) else body
    return [head(status, content_type, length=len(raw), extra=extra) + raw]


def trickle(data: bytes, every: float = 1.0) -> Script:
    """``data`` one byte at a time, ``every`` seconds apart."""
    steps: Script = []
    for i in range(len(data)):
        steps += [data[i:i + 1], every]
    return steps


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[int, str, bytes], Script]], HostileServer]]:
    servers: list[HostileServer] = []

    def start(answer: Callable[[int, str, bytes], Script]) -> HostileServer:
        server = HostileServer(answer)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


class Toy(HTTPProvider):
    """SSE streams ending with ``data: [DONE]``, the key as a bearer token."""

    end_data: ClassVar[str | None] = "[DONE]"
    end_marker: ClassVar[str] = "data: [DONE]"


def toy(server: HostileServer, **options: Any) -> Toy:
    return Toy("toy", base_url=server.base_url, api_key=CANARY, backend="auto", **options)


def assert_clean(*texts: Any) -> None:
    """The canary (and its first 12 characters) appear in none of ``texts``."""
    for text in texts:
        assert CANARY not in text, text
        assert CANARY[:12] not in text, text


async def stream_all(provider: Toy, model: str = "m") -> list[tuple[str, Any]]:
    out = []
    async for item in provider.stream_events("/chat", model=model, json_body={"x": 1}):
        out.append(item)
    return out


# ----------------------------------------------------------------------------- item 3


async def test_retry_after_of_a_day_fails_at_once_with_the_delay(serve: Any) -> None:
    body = json.dumps({"error": {"message": "slow down", "type": "rate_limit_exceeded"}})
    server = serve(lambda n, path, req: whole("429 Too Many Requests", "application/json",
                                              body, {"Retry-After": "86400"}))
    async with toy(server) as provider:
        started = time.monotonic()
        with pytest.raises(RateLimitedError) as info:
            await provider.request_json("POST", "/chat", model="m", json_body={})
        elapsed = time.monotonic() - started
    assert elapsed < 2.0
    err = info.value
    assert err.retriable is False
    assert err.retry_after == 86400
    assert "86400 s" in str(err) and "limits.max_retry_after" in str(err)
    assert "60 s" in str(err)


async def test_retry_after_within_the_cap_stays_retriable(serve: Any) -> None:
    server = serve(lambda n, path, req: whole("429 Too Many Requests", "application/json",
                                              '{"error": "busy"}', {"Retry-After": "2"}))
    async with toy(server) as provider:
        with pytest.raises(RateLimitedError) as info:
            await provider.request_json("POST", "/chat", model="m", json_body={})
    assert info.value.retriable is True
    assert info.value.retry_after == 2
    assert "not retried" not in str(info.value)


async def test_max_retry_after_is_configurable(serve: Any) -> None:
    server = serve(lambda n, path, req: whole("429 Too Many Requests", "application/json",
                                              '{"error": "busy"}', {"Retry-After": "2"}))
    async with toy(server, max_retry_after=1) as provider:
        with pytest.raises(RateLimitedError) as info:
            await provider.stream_events("/chat", model="m", json_body={}).__anext__()
    assert info.value.retriable is False
    assert "asks to wait 2 s, more than the 1 s allowed" in str(info.value)


# ----------------------------------------------------------------------------- item 4


async def test_a_trickled_plain_response_stops_at_the_deadline(serve: Any) -> None:
    payload = json.dumps({"ok": True, "pad": "x" * 40}).encode()
    server = serve(lambda n, path, req: [head("200 OK", "application/json",
                                              length=len(payload))] + trickle(payload))
    async with toy(server, timeout=2.0) as provider:  # deadline defaults to timeout
        assert provider.deadline == 2.0
        started = time.monotonic()
        with pytest.raises(ProviderTimeoutError) as info:
            await provider.request_json("POST", "/chat", model="m", json_body={})
        elapsed = time.monotonic() - started
    assert 1.5 < elapsed < 4.0
    assert info.value.retriable is True
    assert "no complete response within the 2 s deadline" in str(info.value)
    assert_clean(str(info.value), repr(info.value))


async def test_a_stream_trickling_its_first_event_stops_at_the_deadline(serve: Any) -> None:
    event = b'data: {"delta": "' + b"y" * 40 + b'"}\n\n'
    server = serve(lambda n, path, req: [head("200 OK", "text/event-stream")] + trickle(event))
    async with toy(server, timeout=30.0, deadline=2.0) as provider:
        started = time.monotonic()
        with pytest.raises(ProviderTimeoutError) as info:
            await stream_all(provider)
        elapsed = time.monotonic() - started
    assert 1.5 < elapsed < 4.0
    assert "first stream event within the 2 s deadline" in str(info.value)


async def test_a_stream_going_idle_stops_at_the_deadline(serve: Any) -> None:
    events = [b'data: {"delta": "a"}\n\n', 0.8, b'data: {"delta": "b"}\n\n']
    rest = trickle(b'data: {"delta": "' + b"z" * 40 + b'"}\n\n')
    server = serve(lambda n, path, req: [head("200 OK", "text/event-stream")] + events + rest)
    got: list[Any] = []
    async with toy(server, deadline=2.0) as provider:
        started = time.monotonic()
        with pytest.raises(ProviderTimeoutError) as info:
            async for item in provider.stream_events("/chat", model="m", json_body={}):
                got.append(item)
        elapsed = time.monotonic() - started
    assert [data["delta"] for _, data in got] == ["a", "b"]
    assert 2.5 < elapsed < 5.0  # 0.8 s of events, then 2 s idle
    assert "the stream went idle" in str(info.value)


async def test_a_stream_that_keeps_sending_events_is_not_cut(serve: Any) -> None:
    steps: Script = [head("200 OK", "text/event-stream")]
    for i in range(5):
        steps += [f'data: {{"delta": "{i}"}}\n\n'.encode(), 0.6]
    steps.append(b"data: [DONE]\n\n")
    server = serve(lambda n, path, req: steps)
    async with toy(server, deadline=1.5) as provider:  # 3 s in all, under 1.5 s apart
        got = await stream_all(provider)
    assert [data["delta"] for _, data in got] == ["0", "1", "2", "3", "4"]


# ----------------------------------------------------------------------------- item 5


HTML_ECHO = (f"<html><body><h1>Invalid key</h1><p>The key {CANARY} was refused.</p>"
             "</body></html>")


@pytest.mark.parametrize("content_type, body", [
    pytest.param("text/html", HTML_ECHO, id="html-200"),
    pytest.param("text/html", "x" * (190 - HTML_ECHO.index(CANARY)) + HTML_ECHO,
                 id="html-200-key-across-the-excerpt-cut"),
    pytest.param("application/json", '{"echo": "' + "".join(f"\\u{ord(c):04x}" for c in CANARY)
                 + '"', id="broken-json-escaped"),
])
async def test_an_echoed_key_in_a_200_body_is_not_in_the_error(serve: Any, content_type: str,
                                                                 body: str) -> None:
    server = serve(lambda n, path, req: whole("200 OK", content_type, body))
    async with toy(server) as provider:
        with pytest.raises(MalformedResponseError) as info:
            await provider.request_json("POST", "/chat", model="m", json_body={})
    assert server.requests[0][1]["authorization"] == f"Bearer {CANARY}"  # it was sent
    assert "***" in str(info.value)
    assert_clean(str(info.value), repr(info.value), repr(info.value.args))


@pytest.mark.parametrize("encode", [
    pytest.param(lambda k: k, id="plain"),
    pytest.param(lambda k: json.dumps(k, ensure_ascii=True)[1:-1].replace("-", "\\u002d"),
                 id="json-escaped"),
    pytest.param(lambda k: urllib.parse.quote(k, safe="").replace("-", "%2D"), id="url"),
    pytest.param(lambda k: "".join(f"&#{ord(c)};" for c in k), id="html-refs"),
])
async def test_an_echoed_key_in_a_json_field_is_redacted_from_the_value(
        serve: Any, encode: Callable[[str], str]) -> None:
    body = json.dumps({"object": "echo", "seen": {"key": f"got {encode(CANARY)}!"},
                       encode(CANARY): ["x", CANARY]})
    server = serve(lambda n, path, req: whole("200 OK", "application/json", body))
    async with toy(server) as provider:
        data = await provider.request_json("POST", "/chat", model="m", json_body={})
    assert_clean(json.dumps(data))
    assert data["seen"]["key"] == "got ***!"


@pytest.mark.parametrize("status", ["401 Unauthorized", "400 Bad Request", "503 Unavailable"])
async def test_an_echoed_key_in_an_error_body_is_not_in_the_error(serve: Any,
                                                                   status: str) -> None:
    body = json.dumps({"error": {"message": f"bad key {CANARY}", "type": CANARY,
                                 "param": urllib.parse.quote(CANARY)}})
    server = serve(lambda n, path, req: whole(status, "application/json", body))
    async with toy(server) as provider:
        with pytest.raises(Exception) as info:
            await provider.request_json("POST", "/chat", model="m", json_body={})
    assert_clean(str(info.value), repr(info.value))


@pytest.mark.parametrize("event", [
    pytest.param(f'event: error\ndata: {{"error": {{"message": "key {CANARY}", '
                 f'"type": "{CANARY}"}}}}\n\n', id="error-event"),
    pytest.param('data: {"error": {"message": "' + urllib.parse.quote(CANARY) + '", '
                 '"type": "invalid_request_error"}}\n\n', id="error-key-url-encoded"),
    pytest.param(f"data: <html>{CANARY}</html>\n\n", id="event-not-json"),
])
async def test_an_echoed_key_in_a_stream_is_not_in_the_error(serve: Any, event: str) -> None:
    server = serve(lambda n, path, req: [head("200 OK", "text/event-stream"),
                                         b'data: {"delta": "hi"}\n\n', event.encode()])
    async with toy(server) as provider:
        with pytest.raises(Exception) as info:
            await stream_all(provider)
    assert_clean(str(info.value), repr(info.value))


async def test_an_echoed_key_in_stream_deltas_is_redacted(serve: Any) -> None:
    server = serve(lambda n, path, req: [head("200 OK", "text/event-stream"),
                                         f'data: {{"delta": "key={CANARY}"}}\n\n'.encode(),
                                         b"data: [DONE]\n\n"])
    async with toy(server) as provider:
        got = await stream_all(provider)
    assert got == [("message", {"delta": "key=***"})]


async def test_a_json_error_body_instead_of_a_stream_is_redacted(serve: Any) -> None:
    body = json.dumps({"error": {"message": f"bad {CANARY}", "type": "invalid_request_error"}})
    server = serve(lambda n, path, req: whole("200 OK", "application/json", body))
    async with toy(server) as provider:
        with pytest.raises(BadRequestError) as info:
            await stream_all(provider)
    assert_clean(str(info.value), repr(info.value))


# ----------------------------------------------------------------------------- property


def _encode_char(c: str, how: int) -> str:
    if how == 1:
        return f"\\u{ord(c):04x}"
    if how == 2:
        return f"\\u{ord(c):04X}"
    if how == 3:
        return "".join(f"%{b:02X}" for b in c.encode())
    if how == 4:
        return "".join(f"%{b:02x}" for b in c.encode())
    if how == 5:
        return f"&#{ord(c)};"
    if how == 6:
        return f"&#x{ord(c):x};"
    return c


#: Characters of real API keys, and a few more that have JSON and URL escapes of their own.
keys = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                               "-_.~+/="), min_size=8, max_size=48)
texts = st.text(max_size=300)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=keys, before=texts, after=texts, data=st.data())
def test_a_key_anywhere_in_a_body_in_any_encoding_is_redacted(key: str, before: str,
                                                               after: str, data: Any) -> None:
    """The key, each of its characters plain or encoded (JSON ``\\uXXXX`` either case, URL
    ``%XX`` either case, HTML ``&#d;``/``&#xh;``), placed anywhere in arbitrary text: gone
    from :func:`redact`, from an error built from the body (even when the excerpt cut falls
    inside it) and from a parsed JSON value."""
    hows = data.draw(st.lists(st.integers(0, 6), min_size=len(key), max_size=len(key)))
    encoded = "".join(_encode_char(c, h) for c, h in zip(key, hows))
    body = before + encoded + after
    for text in (redact(body, [key]), redact_value(body, [key])):
        assert encoded not in text
        assert key not in text
    err = error_for_status(400, body.encode(), {}, provider="p", model="m", secrets=[key])
    assert encoded not in str(err) and key not in str(err)
    pad = "x" * data.draw(st.integers(0, 520))
    err = error_for_status(500, (pad + body).encode(), {}, provider="p", secrets=[key])
    assert encoded not in str(err) and key not in str(err)
    as_json = json.dumps({"text": before + key + after, "n": [1, encoded]})
    parsed = parse_json_body(as_json, provider="p", secrets=[key])
    assert key not in json.dumps(parsed, ensure_ascii=False)
    assert encoded not in json.dumps(parsed, ensure_ascii=False)


@settings(max_examples=200, deadline=None)
@given(value=st.recursive(st.none() | st.booleans() | st.integers() | texts,
                          lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(texts, inner, max_size=4), max_leaves=12))
def test_values_without_the_key_are_left_alone(value: Any) -> None:
    key = "sk-" + "Q" * 20 + "-never-in-random-text"
    assert redact_value(value, [key]) == value
