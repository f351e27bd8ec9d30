"""Secrets outside ``api_key`` (issue 16, item 1): configured header values, a base URL's query
values and its userinfo are secrets like the API key.

A real HTTP server on 127.0.0.1 records each request line and its headers and answers with a
scripted status and a body echoing what it received (so every secret comes back in the
answer). The tests check that each secret arrives where it belongs (the query after the
request's own path, the header, Basic auth) and appears nowhere else: not in ``repr`` of the
provider, nor in ``str``/``repr`` of the errors raised for 401, 500, 404 and a JSON body that
is not valid, nor in a stream's error event.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import quote

import pytest
from flowyard.errors import ConfigError, ProviderError
from flowyard.models import ChatRequest, Message
from flowyard_http import (
    NON_SECRET_HEADERS,
    HTTPProvider,
    PooledClient,
    ProviderURL,
    Secret,
    secret_headers,
)

pytestmark = pytest.mark.anyio

HEADER_CANARY = "hdr-canary-5f1c9a7e2b3d4c60"
QUERY_CANARY = "qry-canary/9d8e7f6a+5b4c=3d2e"  # '/', '+' and '=' are sent percent-encoded
USER_CANARY = "usr-canary-41aa"
PASSWORD_CANARY = "pwd-canary-77e0c2d19b"
CANARIES = (HEADER_CANARY, QUERY_CANARY, USER_CANARY, PASSWORD_CANARY)

#: ``answer(path) -> (status, content type, body)``; the body may contain ``{echo}``.
Answer = Callable[[str], tuple[int, str, str]]


class RecordingServer:
    """An HTTP server on a free 127.0.0.1 port recording request lines and headers."""

    def __init__(self, answer: Answer) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.requests.append((self.requestline, headers))
                status, ctype, text = answer(self.path)
                # echo everything received, plainly and percent-decoded
                echo = json.dumps({"line": self.requestline, "headers": headers,
                                   "decoded": [quote(v, safe="") for v in headers.values()]})
                raw = text.replace("{echo}", echo.replace('"', "'")).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = _serve

            def log_message(self, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.root = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], RecordingServer]]:
    servers: list[RecordingServer] = []

    def start(answer: Answer) -> RecordingServer:
        servers.append(RecordingServer(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def assert_clean(*texts: str) -> None:
    """No canary (nor a 12-character piece of one, plain or percent-encoded) in ``texts``."""
    for text in texts:
        for canary in CANARIES:
            for form in (canary, quote(canary, safe=""), canary[:12]):
                assert form not in text, (form, text)


def providers(root: str, *, userinfo: bool = False) -> list[HTTPProvider]:
    """The three real HTTP providers, each with a header canary and a query canary."""
    # the three providers are other distributions: this file lives in tests/ (cross-
    # distribution), where every distribution is installed
    from flowyard_anthropic import AnthropicProvider
    from flowyard_ollama import OllamaProvider
    from flowyard_openai import OpenAIProvider

    auth = f"{USER_CANARY}:{PASSWORD_CANARY}@" if userinfo else ""
    query = f"?key={quote(QUERY_CANARY, safe='')}&tier=gold"
    headers = {"X-Gateway-Key": HEADER_CANARY, "User-Agent": "flowyard-test"}
    key = None if userinfo else "sk-real-key-0123456789"
    return [
        OpenAIProvider("gw", base_url=f"http://{auth}{root}/v1{query}", headers=headers,
                       api_key=key, backend="httpx", timeout=5, organization="org-1"),
        AnthropicProvider("ant", base_url=f"http://{auth}{root}/v1{query}", headers=headers,
                          api_key="sk-ant-real-0123456789", backend="httpx", timeout=5)
        if not userinfo else None,
        OllamaProvider("oll", base_url=f"http://{auth}{root}{query}", headers=headers,
                       backend="httpx", timeout=5),
    ]


def chat_request(provider: HTTPProvider) -> ChatRequest:
    return ChatRequest(model="m", messages=[Message(role="user", content="hi")],
                       max_tokens=5)


PATHS = {"gw": "/v1/chat/completions", "ant": "/v1/messages", "oll": "/api/chat"}
LIST_PATHS = {"gw": "/v1/models", "ant": "/v1/models", "oll": "/api/tags"}


@pytest.mark.parametrize("status", [401, 403, 404, 500])
async def test_secrets_go_where_they_belong_and_no_error_shows_them(
        status: int, serve: Callable[[Answer], RecordingServer]) -> None:
    server = serve(lambda path: (status, "application/json",
                                 '{"error": {"message": "refused {echo}", "type": "{echo}"}}'))
    for provider in filter(None, providers(server.root)):
        assert_clean(repr(provider), str(provider.url), repr(provider.url))
        assert "***" in repr(provider)
        for call in (lambda p=provider: p.chat(chat_request(p)),
                     lambda p=provider: p.list_models()):
            server.requests.clear()
            with pytest.raises(ProviderError) as info:
                await call()
            line, headers = server.requests[-1]
            assert_clean(str(info.value), repr(info.value), repr(info.value.args))
            assert f"HTTP {status}" in str(info.value)
            assert "***" in str(info.value)  # the echo was there and redacted: not vacuous
            # the query follows the request's own path, whole
            _method, target, _ = line.split(" ")
            path, _, query = target.partition("?")
            assert path in (PATHS[provider.name], LIST_PATHS[provider.name]), line
            assert query.startswith(f"key={quote(QUERY_CANARY, safe='')}&tier=gold"), line
            assert headers["x-gateway-key"] == HEADER_CANARY
            assert headers["user-agent"] == "flowyard-test"
        await provider.aclose()


async def test_streams_carry_the_query_and_redact_an_echoing_error_event(
        serve: Callable[[Answer], RecordingServer]) -> None:
    server = serve(lambda path: (
        200, "text/event-stream" if "/api/" not in path else "application/x-ndjson",
        'data: {"error": {"message": "{echo}"}}\n\n' if "/api/" not in path
        else '{"error": "{echo}"}\n'))
    for provider in filter(None, providers(server.root)):
        server.requests.clear()
        with pytest.raises(ProviderError) as info:
            async for _chunk in provider.stream(chat_request(provider)):
                pass
        line, headers = server.requests[-1]
        assert f"{PATHS[provider.name]}?key=" in line, line
        assert headers["x-gateway-key"] == HEADER_CANARY
        assert_clean(str(info.value), repr(info.value))
        await provider.aclose()


async def test_userinfo_is_sent_as_basic_auth_and_redacted(
        serve: Callable[[Answer], RecordingServer]) -> None:
    server = serve(lambda path: (500, "text/plain", "boom {echo}"))
    for provider in filter(None, providers(server.root, userinfo=True)):
        assert_clean(repr(provider))
        with pytest.raises(ProviderError) as info:
            await provider.list_models()
        line, headers = server.requests[-1]
        token = base64.b64encode(f"{USER_CANARY}:{PASSWORD_CANARY}".encode()).decode()
        assert headers["authorization"] == f"Basic {token}"
        assert "@" not in line
        assert_clean(str(info.value), repr(info.value))
        assert token not in str(info.value)
        await provider.aclose()


def test_provider_url_splits_and_shows_the_secrets_as_stars() -> None:
    url = ProviderURL("https://u:p%40ss@gw.example:8443/v1/?key=abc%2Fdef&key=2&x=")
    assert url.base == "https://gw.example:8443/v1"
    assert url.query() == [("key", "abc/def"), ("key", "2"), ("x", "")]
    assert url.username.get() == "u" and url.password.get() == "p@ss"
    assert str(url) == "https://***@gw.example:8443/v1?key=***&key=***&x=***"
    assert "abc" not in repr(url)
    assert ProviderURL("http://h/v1").secrets == [Secret(""), Secret(""), Secret("")]
    for bad in ("gw.example/v1?key=abcdef", "https://h/v1#frag?key=abcdef"):
        with pytest.raises(ConfigError) as info:
            ProviderURL(bad)
        assert "abcdef" not in str(info.value)


def test_header_values_are_secret_unless_allow_listed() -> None:
    out = secret_headers({"X-Api-Key": "k1k1k1", "Authorization": "Basic zz",
                          "user-agent": "ua", "OpenAI-Project": "p", "anthropic-beta": "b"})
    assert out["X-Api-Key"] == Secret("k1k1k1") and out["Authorization"] == Secret("Basic zz")
    assert out["user-agent"] == "ua" and out["OpenAI-Project"] == "p"
    assert out["anthropic-beta"] == "b"
    assert {"accept", "content-type", "user-agent", "openai-organization", "openai-project",
            "anthropic-version", "anthropic-beta"} == set(NON_SECRET_HEADERS)
    with pytest.raises(ConfigError, match="must be strings"):
        secret_headers({"X-Num": 5}, where="[gw] headers")


class _Toy(HTTPProvider):
    auth_header: ClassVar[str] = "Authorization"


def test_userinfo_and_an_authorization_key_conflict() -> None:
    with pytest.raises(ConfigError, match="Authorization header") as info:
        _Toy("toy", base_url=f"http://{USER_CANARY}:{PASSWORD_CANARY}@h/v1", api_key="sk-123456")
    assert_clean(str(info.value))


def test_pooled_client_refuses_a_base_url_with_a_query() -> None:
    with pytest.raises(ValueError, match="no query"):
        PooledClient(base_url="http://h/v1?key=abc")


def test_secrets_include_every_configured_secret() -> None:
    provider: Any = _Toy("toy", base_url=f"http://h/v1?key={quote(QUERY_CANARY, safe='')}",
                         headers={"X-Api-Key": HEADER_CANARY, "Accept": "text/plain"})
    values = {s.get() for s in provider._secrets if s}
    assert {HEADER_CANARY, QUERY_CANARY} <= values
    assert "text/plain" not in values
    assert provider.base_url == "http://h/v1"
    assert_clean(repr(provider))


async def test_an_image_fetched_by_ollama_gets_no_gateway_secret(
        serve: Callable[[Answer], RecordingServer]) -> None:
    """Ollama fetches image URLs itself: the image host sees neither the query key nor the
    configured header, while the model server gets both."""
    from flowyard.models import ImagePart

    image_host = serve(lambda path: (200, "image/png", "PNGDATA"))
    model_server = serve(lambda path: (200, "application/json", json.dumps({
        "model": "m", "response": "ok", "done": True, "done_reason": "stop",
        "prompt_eval_count": 1, "eval_count": 1})))
    ollama = providers(model_server.root)[2]
    assert ollama is not None
    await ollama.generate("describe", model="m",
                          images=[ImagePart(url=f"http://{image_host.root}/cat.png")])
    (line, headers), = image_host.requests
    assert line.startswith("GET /cat.png ")
    assert_clean(line, json.dumps(headers))
    (line, headers), = model_server.requests
    assert line.startswith("POST /api/generate?key=") and headers["x-gateway-key"]
    await ollama.aclose()
