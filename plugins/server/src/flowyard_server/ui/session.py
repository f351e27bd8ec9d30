"""Browser sessions of the dashboard: a login with an API key, then a signed session cookie.

A person logs in at ``/ui/login`` with an API key. The key is verified like the API's
(:meth:`~flowyard_server.keys.KeyStore.identify`), and the browser gets the cookie
``fy_session``: ``<payload>.<signature>``, where the payload is the base64url JSON
``{"k": key id, "t": tenant, "e": expiry (UNIX seconds), "n": random nonce}`` and the
signature its HMAC-SHA256 under the server's session secret. The cookie never holds the key.

- **Cookie flags.** ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's
  page sends it), ``Path=/ui``, ``Secure`` when the request came over HTTPS, and a lifetime of
  :data:`SESSION_SECONDS`.
- **Each request** checks the signature (constant time), the expiry, and that the key still
  exists: revoking the key (``flowyard api-keys revoke``) ends its sessions at once.
- **CSRF.** Every form and htmx request that changes something carries the session's CSRF
  token (HMAC of the nonce under the secret) in a ``csrf`` field or an ``X-CSRF-Token``
  header; it is compared in constant time. The login form uses a double-submit token (the
  cookie ``fy_login`` and a hidden field) so another site cannot log a browser in.
- **No keys stored.** Like the API, a server without any key serves loopback clients as the
  tenant ``default``: they get a session (key id ``""``) without logging in.
- **The secret** is 32 random bytes kept in the storage's key-value area (namespace
  ``server.ui``), so every server process on one storage accepts the same cookies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

import attrs

from flowyard_server.keys import KeyStore

__all__ = ["Session", "Sessions", "SESSION_COOKIE", "LOGIN_COOKIE", "SESSION_SECONDS",
           "UI_NAMESPACE"]

#: The session cookie's name.
SESSION_COOKIE = "fy_session"
#: The login form's double-submit CSRF cookie.
LOGIN_COOKIE = "fy_login"
#: Seconds a session lasts (8 hours).
SESSION_SECONDS = 8 * 3600
#: Key-value namespace of the dashboard's secret.
UI_NAMESPACE = "server.ui"
_LOOPBACK_CLIENTS = frozenset({"127.0.0.1", "::1", "localhost"})


@attrs.frozen
class Session:
    """A verified browser session.

    Attributes:
        tenant: the tenant whose data the pages show.
        key_id: the id of the API key it logged in with (``""``: no keys are stored and the
            client is on loopback).
        expires: UNIX seconds.
        csrf: the token forms and htmx requests must send back.
    """

    tenant: str
    key_id: str
    expires: float
    csrf: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Issues and checks session cookies (see the module docstring).

    Args:
        keys: the API key store.
        storage: the stack's storage (its key-value area holds the secret).
    """

    def __init__(self, keys: KeyStore, storage: Any) -> None:
        self.keys = keys
        self.storage = storage
        self._secret: bytes | None = None

    async def secret(self) -> bytes:
        """Return the session secret, creating and storing it on first use.

        Raises:
            StorageError: the storage failed.
        """
        if self._secret is None:
            stored = await self.storage.kv_get(UI_NAMESPACE, "session_secret")
            if not isinstance(stored, str):
                await self.storage.kv_set(UI_NAMESPACE, "session_secret",
                                          secrets.token_hex(32))
                # another process may have written its own at the same moment: the stored
                # one wins for everybody
                stored = await self.storage.kv_get(UI_NAMESPACE, "session_secret")
            self._secret = bytes.fromhex(str(stored))
        return self._secret

    async def issue(self, tenant: str, key_id: str) -> tuple[str, Session]:
        """Return a new session cookie value and its session."""
        secret = await self.secret()
        nonce = secrets.token_urlsafe(16)
        expires = time.time() + SESSION_SECONDS
        payload = _b64(json.dumps({"k": key_id, "t": tenant, "e": expires, "n": nonce},
                                  separators=(",", ":")).encode())
        signature = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())
        return f"{payload}.{signature}", Session(tenant, key_id, expires,
                                                 self._csrf(secret, nonce))

    @staticmethod
    def _csrf(secret: bytes, nonce: str) -> str:
        return _b64(hmac.new(secret, b"csrf:" + nonce.encode(), hashlib.sha256).digest())

    async def check(self, cookie: str | None) -> Session | None:
        """Return the session of a cookie value, or None when it is missing, malformed,
        forged, expired, or its key was revoked.

        Raises:
            StorageError: the storage failed.
        """
        if not cookie or len(cookie) > 1024 or cookie.count(".") != 1:
            return None
        payload, signature = cookie.split(".")
        secret = await self.secret()
        expected = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(expected.encode(), signature.encode("ascii", "replace")):
            return None
        try:
            data = json.loads(_unb64(payload))
            key_id, tenant, expires, nonce = (str(data["k"]), str(data["t"]),
                                              float(data["e"]), str(data["n"]))
        except (ValueError, KeyError, TypeError):
            return None
        if expires < time.time():
            return None
        if key_id:
            if await self.keys.tenant_of_id(key_id) != tenant:
                return None  # revoked
        elif await self.keys.any_keys():
            return None  # a keyless session ends once keys exist
        return Session(tenant, key_id, expires, self._csrf(secret, nonce))

    async def keyless_allowed(self, client: tuple[str, int] | None) -> bool:
        """True when no key is stored and the client is on loopback (tenant ``default``)."""
        if not client or client[0] not in _LOOPBACK_CLIENTS:
            return False
        return not await self.keys.any_keys()

    @staticmethod
    def csrf_ok(session: Session, token: str | None) -> bool:
        """True when ``token`` is the session's CSRF token (constant-time comparison)."""
        if not token:
            return False
        return hmac.compare_digest(session.csrf.encode(), token.encode("utf-8", "replace"))

    @staticmethod
    def cookie_header(value: str, *, secure: bool, max_age: int = SESSION_SECONDS,
                      name: str = SESSION_COOKIE) -> str:
        """The ``Set-Cookie`` value of a session (or login CSRF) cookie."""
        flags = f"{name}={value}; Path=/ui; Max-Age={max_age}; HttpOnly; SameSite=Strict"
        return flags + ("; Secure" if secure else "")
