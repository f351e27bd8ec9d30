"""The pure ASGI middleware in front of the API: authentication, then body limits.

It decides before any byte of the body is read or parsed:

1. authentication -- the key comes from ``Authorization: Bearer <key>`` or ``X-API-Key``;
   a missing, malformed, unknown or revoked key is ``401`` (the same answer for each, and the
   key is never echoed). The tenant found is put in ``scope["state"]["tenant"]``. When no key
   is stored at all, requests from a loopback client act as tenant ``default`` (the
   ``flowyard serve`` command refuses to bind anything but loopback in that case).
2. body size -- a ``Content-Length`` above the limit is ``413`` at once; a body sent without
   one is counted while it arrives and refused when it passes the limit.
3. JSON depth -- a JSON body nested deeper than the limit is ``422`` before any parser sees it
   (Python's parser recurses), so a hostile body cannot exhaust the stack or the CPU.

The dashboard's pages (``/ui/...``) authenticate with a browser session cookie instead of a
key (:mod:`flowyard_server.ui.session`), decided here the same way before any body is read:
``/ui/login`` and ``/ui/static/...`` are public, any other ``/ui`` page without a valid session
redirects a ``GET`` to the login page and answers anything else ``401``.

Given a :class:`~flowyard_server.metrics.Metrics`, the same middleware also counts every
response (its own 401/413/422 included) by method and status code: one ASGI layer instead of
two on each request.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from flowyard_server.keys import KeyStore, key_id_of
from flowyard_server.metrics import Metrics, request_counter
from flowyard_server.ui.session import SESSION_COOKIE, Sessions

__all__ = ["SecurityMiddleware", "json_depth_exceeds", "PUBLIC_PATHS"]

log = logging.getLogger("flowyard_server.security")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Paths answered without a key: liveness/readiness probes and the API documentation.
PUBLIC_PATHS = frozenset({"/v1/health/live", "/v1/health/ready", "/docs", "/redoc",
                          "/openapi.json", "/docs/oauth2-redirect"})
_LOOPBACK_CLIENTS = frozenset({"127.0.0.1", "::1", "localhost"})
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """True when the JSON text ``body`` nests arrays/objects deeper than ``limit`` levels.

    Brackets inside strings are ignored; the text need not be valid JSON (the parser reports
    that afterwards). Linear in ``len(body)``.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _STRINGS.sub(b"", body).translate(None, _NOT_BRACKETS)
    depth = 0
    for byte in brackets:
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


async def _error(send: Send, status: int, code: str, message: str,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"code": code, "message": message, "details": None}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def _cookie(headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    """The value of cookie ``name`` in the request's ``Cookie`` headers, or None."""
    prefix = name + "="
    for header, value in headers:
        if header == b"cookie":
            for part in value.decode("latin-1").split(";"):
                part = part.strip()
                if part.startswith(prefix):
                    return part[len(prefix):]
    return None


def _api_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    return None


class SecurityMiddleware:
    """Authenticate, then limit the body, of every HTTP request (see the module docstring).

    Args:
        app: the ASGI application behind it.
        keys: where keys are verified.
        max_body_bytes: largest body accepted, in bytes (413 beyond).
        max_json_depth: deepest JSON nesting accepted (422 beyond).
        metrics: when given, every HTTP response is counted there
            (``flowyard_server_http_requests_total`` by method and code), as
            :class:`~flowyard_server.metrics.MetricsMiddleware` would outside this one.
        sessions: the dashboard's browser sessions (None: ``/ui`` is not served).
    """

    def __init__(self, app: ASGIApp, *, keys: KeyStore, max_body_bytes: int,
                 max_json_depth: int, metrics: Metrics | None = None,
                 sessions: Sessions | None = None) -> None:
        self.app = app
        self.keys = keys
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        self.metrics = metrics
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection (lifespan and websockets pass through)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.metrics is not None:
            send = request_counter(self.metrics, scope, send)
        path = scope.get("path", "")
        if self.sessions is not None and (path == "/ui" or path.startswith("/ui/")):
            if path != "/ui/login" and not path.startswith("/ui/static/"):
                send = await self._session(scope, send)
                if send is None:
                    return
        elif path not in PUBLIC_PATHS:
            tenant = await self._tenant(scope)
            if tenant is None:
                await _error(send, 401, "authentication_error",
                             "a valid API key is required (Authorization: Bearer <key>)",
                             [(b"www-authenticate", b"Bearer")])
                return
            scope.setdefault("state", {})["tenant"] = tenant
        if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        await self._with_body(scope, receive, send)

    async def _session(self, scope: Scope, send: Send) -> Send | None:
        """Put the browser session in ``scope["state"]`` and return the ``send`` to use, or
        answer the request (login redirect / 401) and return None.
        """
        assert self.sessions is not None
        cookie = _cookie(scope.get("headers") or [], SESSION_COOKIE)
        session = await self.sessions.check(cookie)
        if session is None and await self.sessions.keyless_allowed(scope.get("client")):
            value, session = await self.sessions.issue("default", "")
            header = self.sessions.cookie_header(
                value, secure=scope.get("scheme") == "https").encode("latin-1")
            inner = send

            async def send_with_cookie(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (b"set-cookie", header)]}
                await inner(message)

            send = send_with_cookie
        if session is None:
            if scope.get("method") in ("GET", "HEAD"):
                await send({"type": "http.response.start", "status": 303,
                            "headers": [(b"location", b"/ui/login"),
                                        (b"content-length", b"0")]})
                await send({"type": "http.response.body", "body": b""})
            else:
                await _error(send, 401, "authentication_error",
                             "log in at /ui/login first (the session is missing or ended)")
            return None
        state = scope.setdefault("state", {})
        state["tenant"] = session.tenant
        state["api_key_id"] = session.key_id
        state["session"] = session
        return send

    async def _tenant(self, scope: Scope) -> str | None:
        key = _api_key(scope.get("headers") or [])
        if key is not None:
            tenant = await self.keys.verify(key)
            if tenant is not None:  # who submits: the task's actor (see Service.submit)
                scope.setdefault("state", {})["api_key_id"] = key_id_of(key)
            return tenant
        if await self.keys.any_keys():
            return None
        client = scope.get("client")
        if client and client[0] in _LOOPBACK_CLIENTS:
            return "default"
        return None

    async def _with_body(self, scope: Scope, receive: Receive, send: Send) -> None:
        for name, value in scope.get("headers") or []:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _error(send, 400, "bad_request", "Content-Length is not a number")
                    return
                if declared > self.max_body_bytes:
                    await _error(send, 413, "payload_too_large",
                                 f"the body is larger than {self.max_body_bytes} bytes")
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _error(send, 413, "payload_too_large",
                             f"the body is larger than {self.max_body_bytes} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if json_depth_exceeds(body, self.max_json_depth):
            await _error(send, 422, "validation_error",
                         f"the JSON body is nested deeper than {self.max_json_depth} levels")
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
