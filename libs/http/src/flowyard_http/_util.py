"""HTTP helpers shared by the provider plugins (vendor-neutral).

What lives here is what every HTTP provider needs and no vendor owns:

* :func:`parse_retry_after` reads ``retry-after-ms``, ``retry-after`` in seconds or an HTTP
  date (RFC 9110 section 10.2.3) into seconds to wait;
* :func:`error_for_status` maps an HTTP status plus response body to the core's typed
  :mod:`flowyard.errors` (with ``retriable`` set);
* :func:`error_for_exception` maps transport exceptions (httpx, and aiohttp's through the
  ``httpx-aiohttp`` transport) to typed errors;
* :class:`Secret` and :func:`redact` keep API keys out of reprs, messages and logs, and
  :func:`redact_value` out of every value parsed from a response (a server may echo the key,
  plain, URL-encoded, JSON-escaped or as HTML character references);
* :func:`request_json` bounds a whole request by an overall ``deadline``, so that a server
  trickling bytes cannot keep a call open past it;
* :class:`PooledClient` holds one pooled ``httpx.AsyncClient`` per provider instance, created
  lazily in the running event loop (aiohttp-backed on asyncio when ``httpx-aiohttp`` is
  installed, httpx's own transport on trio) and closed by ``aclose``.

httpx, httpx-aiohttp and aiohttp are dependencies of this distribution, but they are imported
only inside the functions that need them, so that importing :mod:`flowyard_http` (and a
provider plugin's module) stays cheap until a request is made.
"""

from __future__ import annotations

import email.utils
import functools
import json
import logging
import math
import re
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from flowyard import (
    AuthenticationError,
    BadRequestError,
    ConfigError,
    MalformedResponseError,
    ProviderError,
    ProviderTimeoutError,
    RateLimitedError,
    ServerError,
)

if TYPE_CHECKING:
    import httpx
    from flowyard import ModelInfo

__all__ = [
    "Secret",
    "redact",
    "redact_value",
    "parse_retry_after",
    "error_message_from_body",
    "error_for_status",
    "error_for_exception",
    "parse_json_body",
    "status_for_error_type",
    "error_from_payload",
    "request_json",
    "open_stream",
    "stream_errors",
    "PooledClient",
    "PriceTable",
    "sharded_transport",
    "current_loop_token",
    "REDACTED",
    "NON_SECRET_HEADERS",
    "ProviderURL",
    "secret_headers",
    "DEFAULT_MAX_RETRY_AFTER",
    "deadline_error",
]

logger = logging.getLogger("flowyard_http")

#: What a secret is replaced with in messages.
REDACTED = "***"

#: Longest error body excerpt kept in an exception message, in characters.
MAX_BODY_EXCERPT = 500

#: The longest ``Retry-After`` honoured by default, in seconds (``limits.max_retry_after``):
#: a 429 asking for a longer wait is not retriable.
DEFAULT_MAX_RETRY_AFTER = 60.0


# ----------------------------------------------------------------------------- secrets


class Secret:
    """A secret string (an API key) that never shows itself.

    ``repr()`` and ``str()`` print ``***``; call :meth:`get` for the value. Two secrets are
    equal when their values are.

    Args:
        value: the secret; an empty string stands for "no secret".
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"Secret value must be a string, got {type(value).__name__}")
        self._value = value

    def get(self) -> str:
        """Return the secret value."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("Secret values cannot be pickled")


#: Configured headers whose values are not secret (compared case-insensitively): every other
#: configured header value is a :class:`Secret`, redacted like the API key.
NON_SECRET_HEADERS: frozenset[str] = frozenset({
    "accept", "content-type", "user-agent", "openai-organization", "openai-project",
    "anthropic-version", "anthropic-beta",
})


class ProviderURL:
    """A provider's base URL split into the part shown and joined and the secrets it carries.

    Every query value and the userinfo (``user:password@``) of a base URL are secret (gateways
    put keys there: ``https://host/v1?key=...``). :attr:`base` keeps scheme, host, port and
    path only; :attr:`params` are sent as the query of every request, after the request's own
    path (``https://host/v1/chat/completions?key=...``); the userinfo is sent as an
    ``Authorization: Basic`` header (:attr:`basic_auth`).

    Args:
        url: the configured base URL (absolute, ``http`` or ``https``).

    Raises:
        ConfigError: ``url`` has no scheme or host, or has a fragment (``#...``, never sent).
    """

    __slots__ = ("base", "params", "username", "password")

    def __init__(self, url: str) -> None:
        from urllib.parse import parse_qsl, unquote, urlsplit

        parts = urlsplit(url)
        if not parts.scheme or not parts.netloc:
            raise ConfigError(f"base_url must be an absolute URL (scheme://host/path), got "
                              f"{_shown_url(url)!r}")
        if parts.fragment:
            raise ConfigError(f"base_url must not have a fragment (#...), got "
                              f"{_shown_url(url)!r}")
        userinfo, at, host = parts.netloc.rpartition("@")
        #: ``scheme://host[:port]/path`` without userinfo, query or a trailing ``/``.
        self.base: str = f"{parts.scheme}://{host}{parts.path}".rstrip("/")
        #: The query's ``(name, value)`` pairs in order, values as :class:`Secret`.
        self.params: list[tuple[str, Secret]] = [
            (name, Secret(value))
            for name, value in parse_qsl(parts.query, keep_blank_values=True)]
        user, _, password = userinfo.partition(":")
        #: The userinfo's user name and password, percent-decoded (empty without userinfo).
        self.username = Secret(unquote(user) if at else "")
        self.password = Secret(unquote(password) if at else "")

    @property
    def basic_auth(self) -> Secret:
        """The ``Authorization`` value of the userinfo (``Basic <base64>``; empty without)."""
        if not (self.username or self.password):
            return Secret("")
        import base64

        raw = f"{self.username.get()}:{self.password.get()}".encode()
        return Secret("Basic " + base64.b64encode(raw).decode("ascii"))

    @property
    def secrets(self) -> list[Secret]:
        """Every secret of the URL: query values, user name, password, the Basic token."""
        basic = self.basic_auth
        token = Secret(basic.get().removeprefix("Basic ")) if basic else basic
        return [value for _, value in self.params] + [self.username, self.password, token]

    def query(self) -> list[tuple[str, str]]:
        """The query pairs with their values in clear (for the HTTP client only)."""
        return [(name, value.get()) for name, value in self.params]

    def __str__(self) -> str:
        """The URL as shown: userinfo and every query value as ``***``."""
        if not (self.params or self.username or self.password):
            return self.base
        scheme, _, rest = self.base.partition("://")
        shown = f"{scheme}://{REDACTED}@{rest}" if (self.username or self.password) else self.base
        if self.params:
            shown += "?" + "&".join(f"{name}={REDACTED}" for name, _ in self.params)
        return shown

    def __repr__(self) -> str:
        return f"ProviderURL({str(self)!r})"


def _shown_url(url: str) -> str:
    """``url`` with its userinfo and query cut to ``***`` (for an error about the URL)."""
    head, _, _query = url.partition("?")
    head = head.partition("#")[0]
    scheme, sep, rest = head.partition("://")
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    return f"{scheme}{sep}{netloc}{slash}{path}" + (f"?{REDACTED}" if "?" in url else "")


def secret_headers(headers: Mapping[str, Any] | None, *, where: str = "headers"
                   ) -> dict[str, str | Secret]:
    """Return configured headers with every value not in :data:`NON_SECRET_HEADERS` wrapped
    in a :class:`Secret`.

    Args:
        headers: ``{name: value}`` as configured (``headers = { X-Api-Key = "..." }``); None:
            none.
        where: the configuration place named in an error (``"[openai] headers"``).

    Raises:
        ConfigError: a header name or value is not a string.
    """
    out: dict[str, str | Secret] = {}
    for name, value in dict(headers or {}).items():
        if not isinstance(name, str) or not isinstance(value, (str, Secret)):
            raise ConfigError(f"{where}: header names and values must be strings, got "
                              f"{type(name).__name__} {name!r}: {type(value).__name__}")
        if isinstance(value, Secret) or name.lower() in NON_SECRET_HEADERS:
            out[name] = value
        else:
            out[name] = Secret(value)
    return out


def _hex(value: int, width: int) -> str:
    """A regex matching ``value`` in hexadecimal with ``width`` digits, either case."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c
                   for c in format(value, f"0{width}x"))


@functools.lru_cache(maxsize=64)
def _secret_pattern(value: str) -> re.Pattern[str]:
    r"""A regex matching ``value`` with each character written plainly or encoded.

    Each character may independently appear as itself, a JSON escape (``\u0073``, ``\/``),
    URL percent-encoding of its UTF-8 bytes (``%73``, either hex case) or an HTML character
    reference (``&#115;``, ``&#x73;``).
    """
    parts = []
    for char in value:
        code = ord(char)
        forms = [re.escape(char)]
        if code <= 0xFFFF:
            forms.append(r"\\u" + _hex(code, 4))
        if char == "/":
            forms.append(r"\\/")
        forms.append("".join("%" + _hex(b, 2) for b in char.encode("utf-8")))
        forms.append(f"&#0*{code};")
        forms.append("&#[xX]0*" + _hex(code, 1) + ";")
        parts.append("(?:" + "|".join(forms) + ")")
    return re.compile("".join(parts))


def _values(secrets: Iterable[str | Secret | None]) -> list[str]:
    """The secret values long enough to redact (4 characters or more), longest first."""
    out = []
    for secret in secrets:
        value = secret.get() if isinstance(secret, Secret) else secret
        if value and len(value) >= 4:
            out.append(value)
    return sorted(set(out), key=len, reverse=True)


def _redact_secrets(text: str, values: list[str]) -> str:
    for value in values:
        if value in text:
            text = text.replace(value, REDACTED)
        if any(mark in text for mark in ("\\", "%", "&#")):
            text = _secret_pattern(value).sub(REDACTED, text)
    return text


def redact(text: str, secrets: Iterable[str | Secret | None]) -> str:
    r"""Return ``text`` with every secret value (and any ``Bearer <token>``) replaced by ``***``.

    Used on request data and on every text taken from a response (error messages, body
    excerpts, stream error events). A secret is found written plainly and also with any of
    its characters encoded: JSON ``\uXXXX`` escapes (and ``\/``), URL percent-encoding
    (``%XX`` of the UTF-8 bytes, either hex case) and HTML character references
    (``&#115;``, ``&#x73;``). Other encodings (base64, named HTML entities) are not
    recognised. Redact a whole text before cutting an excerpt from it, so that no piece of a
    secret survives at the cut.

    Args:
        text: any message.
        secrets: the values to hide; empty and None entries are ignored. Values shorter than
            4 characters are ignored too (replacing them would mangle ordinary words).
    """
    text = _redact_secrets(text, _values(secrets))
    return re.sub(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}", r"\1 " + REDACTED, text)


def redact_value(value: Any, secrets: Iterable[str | Secret | None]) -> Any:
    """Return a parsed JSON value with every secret (plain or encoded, see :func:`redact`)
    replaced by ``***`` in its strings, object keys included.

    Unlike :func:`redact` it leaves ``Bearer <word>`` alone, since a model's own text may say
    that. Values without a secret are returned as they are (the same object).

    Args:
        value: a parsed JSON value (dicts, lists, strings, numbers, booleans, None).
        secrets: as for :func:`redact`.
    """
    values = _values(secrets)
    if not values:
        return value
    return _walk(value, values)


def _walk(value: Any, values: list[str]) -> Any:
    if isinstance(value, str):
        return _redact_secrets(value, values)
    if isinstance(value, Mapping):
        return {_redact_secrets(str(k), values): _walk(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, values) for v in value]
    return value


def _contains_secret(text: str, values: list[str]) -> bool:
    return any(value in text or _secret_pattern(value).search(text) for value in values)


# ----------------------------------------------------------------------------- retry-after


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Return the seconds to wait that a response asks for, or None when it does not say.

    Reads, in order: ``retry-after-ms`` (milliseconds, as sent by OpenAI), ``retry-after`` as
    a number of seconds, ``retry-after`` as an HTTP date (RFC 9110 section 10.2.3). A date in
    the past gives 0. Unparseable values are ignored (None), as RFC 9110 asks of recipients.

    Args:
        headers: response headers (case-insensitive mapping such as ``httpx.Headers``, or a
            dict with lowercase keys).
        now: the current UNIX time in seconds, for dates (``time.time()`` by default).
    """
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms.strip())
        except ValueError:
            value = -1.0
        if value >= 0 and value == value and value != float("inf"):
            return value / 1000.0
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        seconds = None
    if seconds is not None:
        if seconds >= 0 and seconds == seconds and seconds != float("inf"):
            return seconds
        return None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


# ----------------------------------------------------------------------------- errors


def error_message_from_body(body: Any) -> tuple[str, str | None]:
    """Return ``(message, error_type)`` from a parsed error body of any common shape.

    Understands ``{"error": {"message": ..., "type"/"code": ...}}`` (OpenAI, Anthropic),
    ``{"error": "text"}`` (Ollama), ``{"message": ...}`` and ``{"detail": ...}`` (FastAPI).
    For anything else the message is the JSON text of ``body`` (cut to 500 characters).
    """
    if isinstance(body, Mapping):
        err = body.get("error")
        if isinstance(err, Mapping):
            message = err.get("message") or err.get("msg") or json.dumps(err)[:MAX_BODY_EXCERPT]
            kind = err.get("type") or err.get("code")
            return str(message), (str(kind) if kind is not None else None)
        if isinstance(err, str):
            return err, None
        for key in ("message", "detail"):
            if key in body:
                value = body[key]
                text = value if isinstance(value, str) else json.dumps(value)
                return text[:MAX_BODY_EXCERPT], (str(body["type"]) if "type" in body else None)
    if isinstance(body, str):
        return body[:MAX_BODY_EXCERPT], None
    return json.dumps(body)[:MAX_BODY_EXCERPT], None


def _body_message(body: bytes | str | Any) -> tuple[str, str | None]:
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str):
        stripped = body.strip()
        if not stripped:
            return "(empty body)", None
        try:
            parsed = json.loads(stripped)
        except ValueError:
            return stripped[:MAX_BODY_EXCERPT], None
        return error_message_from_body(parsed)
    return error_message_from_body(body)


#: Error types whose 429 means "out of money", which waiting does not fix.
_QUOTA_TYPES = {"insufficient_quota", "billing_hard_limit_reached"}


def error_for_status(
    status: int,
    body: bytes | str | Any,
    headers: Mapping[str, str] | None = None,
    *,
    provider: str,
    model: str | None = None,
    secrets: Iterable[str | Secret | None] = (),
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
) -> ProviderError:
    """Return the typed error for a failed HTTP response (the caller raises it).

    Mapping (``retriable`` in brackets):

    ========================  ===========================================
    401, 403                  AuthenticationError [no]
    408                       ProviderTimeoutError [yes]
    429                       RateLimitedError [yes; no for an exhausted quota,
                              ``insufficient_quota``, and no when the server asks to
                              wait longer than ``max_retry_after``], with
                              ``retry_after`` in seconds
    400, 404, 409, 413, 422   BadRequestError [no] (409 ``conflict``: [yes], ServerError)
    other 4xx                 BadRequestError [no]
    5xx, 529 (overloaded)     ServerError [yes]
    ========================  ===========================================

    Args:
        status: the HTTP status code.
        body: the raw body (bytes/str, parsed as JSON when it is) or an already parsed value.
        headers: the response headers (for ``retry-after``).
        provider: the provider name (``"openai"``), put at the start of the message and on
            the error.
        model: the model id the request was for, named in the message and set on the error
            (None: not known, e.g. a model listing).
        secrets: values redacted from the message (API keys), from the whole body before any
            excerpt is cut (see :func:`redact`).
        max_retry_after: the longest retry-after honoured, in seconds; a 429 asking for a
            longer wait is not retriable and its message states the delay (the call fails at
            once instead of waiting).

    Returns:
        A :class:`~flowyard.errors.ProviderError` subclass instance; its message names the
        provider, the status and the server's own message, never a secret.
    """
    secrets = list(secrets)
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    body = redact(body, secrets) if isinstance(body, str) else redact_value(body, secrets)
    message, kind = _body_message(body)
    where = f"{provider}" + (f" model {model!r}" if model else "")
    text = redact(f"{where}: HTTP {status}" + (f" {kind}" if kind else "") + f": {message}",
                  secrets)
    kwargs: dict[str, Any] = {"provider": provider, "model": model, "status_code": status}
    if status in (401, 403):
        return AuthenticationError(text, **kwargs)
    if status == 408:
        return ProviderTimeoutError(text, **kwargs)
    if status == 429:
        delay = parse_retry_after(headers or {})
        too_long = delay is not None and delay > max_retry_after
        if too_long:
            text += (f" (the server asks to wait {delay:g} s, more than the {max_retry_after:g}"
                     " s allowed by limits.max_retry_after: not retried)")
        err = RateLimitedError(text, retry_after=delay, **kwargs)
        if kind in _QUOTA_TYPES or too_long:
            err.retriable = False
        return err
    if status == 409:
        return ServerError(text, **kwargs)
    if 400 <= status < 500:
        return BadRequestError(text, **kwargs)
    if status >= 500:
        return ServerError(text, **kwargs)
    return MalformedResponseError(redact(f"{where}: unexpected HTTP status {status}: {message}",
                                         secrets), **kwargs)


def error_for_exception(
    exc: BaseException,
    *,
    provider: str,
    model: str | None = None,
    secrets: Iterable[str | Secret | None] = (),
) -> ProviderError:
    """Return the typed error for a transport exception raised by httpx or aiohttp (the
    caller raises it ``from None``).

    Timeouts become :class:`ProviderTimeoutError`; connection failures, cut connections and
    protocol errors :class:`ServerError` (both retriable); an invalid URL or unsupported scheme
    :class:`BadRequestError`. Other exceptions become a plain, non-retriable
    :class:`ProviderError`. The message never contains a secret.

    An aiohttp exception is classified by itself, whether raised directly (the direct path of
    :func:`request_json`) or as the ``__cause__`` of the httpx exception that
    ``httpx-aiohttp``'s transport raises instead (it maps every aiohttp connection error,
    refused included, to ``ConnectTimeout``): both give the same error and message.
    """
    detail = redact(str(exc) or type(exc).__name__, secrets)
    where = f"{provider}" + (f" model {model!r}" if model else "")
    kwargs: dict[str, Any] = {"provider": provider, "model": model}
    cause = exc if type(exc).__module__.startswith("aiohttp") else exc.__cause__
    if cause is not None and type(cause).__module__.startswith("aiohttp"):
        import aiohttp

        if isinstance(cause, aiohttp.ServerTimeoutError):
            return ProviderTimeoutError(f"{where}: request timed out ({detail})", **kwargs)
        if isinstance(cause, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError,
                              aiohttp.ClientResponseError)):
            # ClientResponseError: a response aiohttp cannot parse (httpx's
            # RemoteProtocolError)
            return ServerError(f"{where}: connection failed ({type(cause).__name__}: {detail})",
                               **kwargs)
        if isinstance(cause, (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
            return BadRequestError(f"{where}: invalid URL: {detail}", **kwargs)
        if cause is exc:
            return ProviderError(f"{where}: HTTP error ({type(exc).__name__}: {detail})",
                                 **kwargs)
    import asyncio

    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return ProviderTimeoutError(f"{where}: request timed out ({type(exc).__name__}: "
                                    f"{detail})", **kwargs)
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return ProviderTimeoutError(f"{where}: request timed out ({type(exc).__name__}: {detail})",
                                    **kwargs)
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
        return BadRequestError(f"{where}: invalid URL: {detail}", **kwargs)
    if isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError)):
        return ServerError(f"{where}: connection failed ({type(exc).__name__}: {detail})",
                           **kwargs)
    if isinstance(exc, httpx.HTTPError):
        return ProviderError(f"{where}: HTTP error ({type(exc).__name__}: {detail})", **kwargs)
    return ProviderError(f"{where}: {type(exc).__name__}: {detail}", **kwargs)


def parse_json_body(content: bytes | str, *, provider: str, model: str | None = None,
                    what: str = "response", secrets: Iterable[str | Secret | None] = ()) -> Any:
    """Parse a JSON body, with every secret in it redacted.

    Args:
        content: the body (UTF-8 bytes or text).
        provider: the provider name, named in the error message and set on the error.
        model: the model id the body answers for, set on the error (None: not known).
        what: what the body is, as the error message words it (``"response"``,
            ``"stream event"``).
        secrets: values replaced by ``***`` in every string of the parsed value and in the
            excerpt of an invalid body (the API key, should a server echo it).

    Returns:
        The parsed value, strings redacted with :func:`redact_value`.

    Raises:
        MalformedResponseError: the body is not JSON; the message quotes the first 200
            characters of the redacted body.
    """
    values = _values(secrets)
    try:
        parsed = json.loads(content)
    except ValueError as exc:
        text = content if isinstance(content, str) else content.decode("utf-8",
                                                                        errors="replace")
        excerpt = redact(text, values)[:200]
        raise MalformedResponseError(
            redact(f"{provider}: {what} is not valid JSON ({exc}); body starts {excerpt!r}",
                   values), provider=provider, model=model) from None
    if values:
        text = content if isinstance(content, str) else content.decode("utf-8",
                                                                       errors="replace")
        if _contains_secret(text, values):
            return _walk(parsed, values)
    return parsed


#: HTTP status implied by an error ``type`` carried in a body (errors sent after HTTP 200,
#: inside a stream or a JSON body). Names used by OpenAI-compatible servers and Anthropic.
ERROR_TYPE_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "invalid_request": 400,
    "bad_request": 400,
    "authentication_error": 401,
    "invalid_api_key": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "model_not_found": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "timeout_error": 408,
    "api_error": 500,
    "server_error": 500,
    "internal_server_error": 500,
    "service_unavailable": 503,
    "overloaded_error": 529,
}


def status_for_error_type(kind: Any, default: int = 500) -> int:
    """Return the HTTP status implied by an error ``type``/``code`` value (``default`` when
    unknown; an integer ``code`` in 400..599 is taken as the status itself).
    """
    if isinstance(kind, int) and 400 <= kind <= 599:
        return kind
    if isinstance(kind, str):
        if kind.isdigit() and 400 <= int(kind) <= 599:
            return int(kind)
        return ERROR_TYPE_STATUS.get(kind.lower(), default)
    return default


def error_from_payload(payload: Any, *, provider: str, model: str | None = None,
                       secrets: Iterable[str | Secret | None] = (),
                       default_status: int = 500) -> ProviderError:
    """Return the typed error for an error object received after HTTP 200 (a stream's error
    event or a JSON body with an ``error`` key). The status is inferred from the error's
    ``type`` or ``code`` with :func:`status_for_error_type`; unknown types are server errors.
    """
    _message, kind = error_message_from_body(payload)
    code = None
    if isinstance(payload, Mapping) and isinstance(payload.get("error"), Mapping):
        code = payload["error"].get("code")
    status = status_for_error_type(kind, default=0) or status_for_error_type(
        code, default=default_status)
    return error_for_status(status, payload, {}, provider=provider, model=model,
                            secrets=secrets)


def deadline_error(deadline: float, *, provider: str, model: str | None = None,
                   what: str = "complete response") -> ProviderTimeoutError:
    """Return the (retriable) :class:`ProviderTimeoutError` of a call that passed its overall
    deadline: ``"<provider> model '<m>': no <what> within the <deadline> s deadline"``.
    """
    where = f"{provider}" + (f" model {model!r}" if model else "")
    return ProviderTimeoutError(
        f"{where}: no {what} within the {deadline:g} s deadline (the server was still "
        "sending or silent; set deadline in the provider's section to change it)",
        provider=provider, model=model)


async def request_json(
    client: httpx.AsyncClient | PooledClient,
    method: str,
    url: str,
    *,
    provider: str,
    model: str | None = None,
    secrets: Iterable[str | Secret | None] = (),
    json_body: Any = None,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    deadline: float | None = None,
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
) -> Any:
    """Send one request and return its parsed JSON body (secrets redacted from it).

    Args:
        client: the shared ``httpx.AsyncClient`` that sends the request (its base URL,
            per-phase timeouts and connection pool apply), or a :class:`PooledClient`: its
            client for the running event loop, and on the aiohttp backend the request goes
            straight to that client's aiohttp session (the same URL, headers, body, timeouts
            and pool as through httpx, without httpx's per-request objects: about half the
            client CPU of a request).
        method: the HTTP method (``"GET"``, ``"POST"``).
        url: the URL, absolute or relative to the client's base URL.
        provider: the provider name, named in every error raised and in the debug log line.
        model: the model id the request is for, set on the errors (None: not model-specific).
        secrets: values (API keys) redacted from error messages and from the returned body;
            empty, None and values shorter than 4 characters are ignored (see :func:`redact`).
        json_body: the value sent as the JSON request body (None: no body).
        headers: extra headers for this request only, merged over the client's default
            headers (which carry the auth header); None: the defaults alone.
        params: query-string parameters added to ``url`` (None: none).
        deadline: seconds the whole call may take, from sending the request to the last byte
            of the body (None: only the client's per-phase timeouts apply, which a server
            trickling bytes can stretch for ever).
        max_retry_after: see :func:`error_for_status`.

    Raises:
        ProviderTimeoutError: the deadline passed (retriable), or a per-phase timeout.
        ProviderError: a typed subclass: the status mapped by :func:`error_for_status`,
            transport failures by :func:`error_for_exception`, a body that is not JSON as
            :class:`MalformedResponseError`.
        ValueError: ``json_body`` cannot be encoded as JSON (NaN or infinity included).
    """
    import anyio

    secrets = secrets if isinstance(secrets, list) else list(secrets)
    direct: _DirectSender | None = None
    if isinstance(client, PooledClient):
        client, direct = client.current()
    started = time.perf_counter()
    answer: tuple[int, Mapping[str, str], bytes, str] | None = None
    with anyio.move_on_after(deadline if deadline is not None else math.inf) as scope:
        if direct is not None:
            answer = await direct.send(method, url, json_body, headers, params,
                                       provider=provider, model=model, secrets=secrets)
        else:
            answer = await _send_httpx(client, method, url, json_body, headers, params,
                                       provider=provider, model=model, secrets=secrets)
    if scope.cancelled_caught or answer is None:
        raise deadline_error(float(deadline or 0.0), provider=provider, model=model)
    status, response_headers, content, path = answer
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s %s %s -> %d in %.3fs", provider, method, path, status,
                     time.perf_counter() - started)
    if status >= 400 or status < 200:
        raise error_for_status(status, content, response_headers, provider=provider,
                               model=model, secrets=secrets, max_retry_after=max_retry_after)
    return parse_json_body(content, provider=provider, model=model, secrets=secrets)


async def _send_httpx(client: httpx.AsyncClient, method: str, url: str, json_body: Any,
                      headers: Mapping[str, str] | None, params: Mapping[str, Any] | None, *,
                      provider: str, model: str | None, secrets: list[Any]
                      ) -> tuple[int, Mapping[str, str], bytes, str]:
    """Send through httpx; return ``(status, headers, body, URL path)``."""
    import httpx

    try:
        response = await client.request(method, url, json=json_body, headers=headers,
                                        params=params)
    except httpx.HTTPError as exc:
        raise error_for_exception(exc, provider=provider, model=model,
                                  secrets=secrets) from None
    return response.status_code, response.headers, response.content, response.url.path


class _DirectSender:
    """Sends :func:`request_json`'s plain requests straight to the aiohttp session under an
    aiohttp-backed ``httpx.AsyncClient`` (see :class:`PooledClient`).

    What goes on the wire is what httpx would send through ``httpx-aiohttp``'s transport: the
    URL httpx builds (base URL, path, the client's and the request's query parameters; cached
    per path), the client's default headers with the request's merged over them
    case-insensitively, the body encoded as httpx encodes ``json=`` (compact, UTF-8, no
    NaN), the same per-phase timeouts (connect, read, pool), no redirects followed, the same
    connection pool. Two differences: ``Accept-Encoding`` is aiohttp's (the encodings it
    decodes itself, as the response is not handed to httpx), and httpx's cookie jar is not
    consulted (the aiohttp session keeps its own, which it does in both cases; like every
    aiohttp jar by default it ignores cookies set by a host given as an IP address).
    """

    __slots__ = ("client", "session", "headers", "timeout", "_urls")

    #: Most URLs kept (one per distinct path); the cache is emptied when it is full.
    MAX_URLS = 256

    def __init__(self, client: httpx.AsyncClient, session: Any) -> None:
        import aiohttp

        self.client = client
        self.session = session
        # as httpx-aiohttp's transport passes them: lowercase names, repeated ones joined
        self.headers = {name: value for name, value in client.headers.items()
                        if name != "accept-encoding"}
        timeout = client.timeout
        self.timeout = aiohttp.ClientTimeout(sock_connect=timeout.connect,
                                             sock_read=timeout.read, connect=timeout.pool)
        self._urls: dict[str, str] = {}

    def url(self, method: str, url: str, params: Mapping[str, Any] | None) -> str:
        """The absolute URL httpx would send for ``url`` and ``params``."""
        if params is None:
            cached = self._urls.get(url)
            if cached is not None:
                return cached
        built = str(self.client.build_request(method, url, params=params).url)
        if params is None:
            if len(self._urls) >= self.MAX_URLS:
                self._urls.clear()
            self._urls[url] = built
        return built

    def merged_headers(self, headers: Mapping[str, str] | None, has_body: bool
                       ) -> dict[str, str]:
        """The client's default headers, ``content-type: application/json`` with a body
        (unless set), then ``headers`` replacing same-named ones (any case); names lowercase.
        """
        merged = self.headers.copy()
        if headers:
            for name, value in headers.items():
                merged[name.lower()] = value
        if has_body:
            merged.setdefault("content-type", "application/json")
        return merged

    async def send(self, method: str, url: str, json_body: Any,
                   headers: Mapping[str, str] | None, params: Mapping[str, Any] | None, *,
                   provider: str, model: str | None, secrets: list[Any]
                   ) -> tuple[int, Mapping[str, str], bytes, str]:
        """Send one request and read its whole body; return ``(status, headers, body, URL
        path)``.

        Raises:
            ProviderError: a typed subclass for a transport failure
                (:func:`error_for_exception`).
            ValueError: ``json_body`` cannot be encoded as JSON.
        """
        import asyncio

        import aiohttp

        content = None
        if json_body is not None:
            content = json.dumps(json_body, ensure_ascii=False, separators=(",", ":"),
                                 allow_nan=False).encode("utf-8")
        target = self.url(method, url, params)
        try:
            async with self.session.request(
                    method, target, data=content,
                    headers=self.merged_headers(headers, content is not None),
                    allow_redirects=False, timeout=self.timeout) as response:
                body = await response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise error_for_exception(exc, provider=provider, model=model,
                                      secrets=secrets) from None
        return response.status, response.headers, body, response.url.path


class _StreamErrors:
    """Context manager mapping transport failures while a response body streams in."""

    __slots__ = ("provider", "model", "secrets")

    def __init__(self, provider: str, model: str | None, secrets: list[Any]) -> None:
        self.provider = provider
        self.model = model
        self.secrets = secrets

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None:
            return False
        import httpx

        if isinstance(exc, httpx.TimeoutException):
            raise error_for_exception(exc, provider=self.provider, model=self.model,
                                      secrets=self.secrets) from None
        if isinstance(exc, httpx.HTTPError):
            detail = redact(str(exc) or type(exc).__name__, self.secrets)
            raise MalformedResponseError(
                f"{self.provider}: stream was cut before its end marker "
                f"({type(exc).__name__}: {detail})",
                provider=self.provider, model=self.model) from None
        return False


def stream_errors(*, provider: str, model: str | None = None,
                  secrets: Iterable[str | Secret | None] = ()) -> _StreamErrors:
    """Return a context manager for iterating a streamed body: a timeout becomes
    :class:`ProviderTimeoutError`, any other httpx failure (connection dropped mid-stream) a
    :class:`MalformedResponseError` saying the stream was cut.
    """
    return _StreamErrors(provider, model, list(secrets))


class open_stream:
    """``async with open_stream(client, "POST", url, ...) as response:`` sends a request with a
    streamed response body and checks its status before the body is read.

    Raises (on enter):
        ProviderError: a typed subclass for a failed status (the error body is read for its
            message) or a transport failure.
    """

    def __init__(self, client: httpx.AsyncClient, method: str, url: str, *, provider: str,
                 model: str | None = None, secrets: Iterable[str | Secret | None] = (),
                 json_body: Any = None, headers: Mapping[str, str] | None = None,
                 max_retry_after: float = DEFAULT_MAX_RETRY_AFTER) -> None:
        self.max_retry_after = max_retry_after
        self.client = client
        self.method = method
        self.url = url
        self.provider = provider
        self.model = model
        self.secrets = list(secrets)
        self.json_body = json_body
        self.headers = headers
        self.response: httpx.Response | None = None

    async def __aenter__(self) -> httpx.Response:
        import httpx

        request = self.client.build_request(self.method, self.url, json=self.json_body,
                                            headers=self.headers)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise error_for_exception(exc, provider=self.provider, model=self.model,
                                      secrets=self.secrets) from None
        self.response = response
        if response.status_code >= 400 or response.status_code < 200:
            try:
                with stream_errors(provider=self.provider, model=self.model,
                                   secrets=self.secrets):
                    body = await response.aread()
            finally:
                await response.aclose()
            raise error_for_status(response.status_code, body, response.headers,
                                   provider=self.provider, model=self.model,
                                   secrets=self.secrets, max_retry_after=self.max_retry_after)
        return response

    async def __aexit__(self, *exc_info: Any) -> None:
        if self.response is not None:
            await self.response.aclose()


# ----------------------------------------------------------------------------- clients


def current_loop_token() -> tuple[str, object]:
    """Return ``(library, loop)`` naming the running event loop ("asyncio" or "trio").

    The second item is the loop object itself (the asyncio loop, or trio's run token), to be
    compared with ``==``/``is``: an ``id()`` could be reused by a later loop once the first is
    collected, which would hand that loop a client bound to a dead one.

    Raises:
        RuntimeError: called outside an event loop.
    """
    import sniffio

    library = sniffio.current_async_library()
    if library == "asyncio":
        import asyncio

        return library, asyncio.get_running_loop()
    if library == "trio":
        import trio

        return library, trio.lowlevel.current_trio_token()
    return library, None


def sharded_transport(*, max_connections: int = 100, shard_size: int = 8, **kwargs: Any) -> Any:
    """Return an ``httpx.AsyncBaseTransport`` spreading requests over several small httpx
    pools (a ``ShardedTransport``).

    httpx 0.28's connection pool (httpcore) does work per request that grows with the number
    of connections and waiting requests in the pool: about 1.3 ms of CPU per request at
    concurrency 8 and 5 ms at 64 on the project's reference machine (measured by
    ``benchmarks/openai_client_cpu.py``). Several pools of at most ``shard_size``
    connections keep each pool small; each request goes to the pool with the fewest requests
    in flight (counted until its response body is closed). Works on asyncio and trio.

    Args:
        max_connections: connections in all shards together.
        shard_size: connections per shard.
        **kwargs: passed to each ``httpx.AsyncHTTPTransport`` (``verify``, ``http2``...).
    """
    return _sharded_class()(max_connections=max_connections, shard_size=shard_size, **kwargs)


_SHARDED: Any = None


def _sharded_class() -> Any:
    global _SHARDED
    if _SHARDED is not None:
        return _SHARDED
    import ssl

    import httpx

    class CountedStream(httpx.AsyncByteStream):
        """A response body that releases its shard's in-flight count once, on close."""

        def __init__(self, stream: Any, inflight: list[int], index: int) -> None:
            self._stream = stream
            self._inflight = inflight
            self._index = index
            self._open = True

        async def __aiter__(self) -> Any:
            async for chunk in self._stream:
                yield chunk

        async def aclose(self) -> None:
            if self._open:
                self._open = False
                self._inflight[self._index] -= 1
            await self._stream.aclose()

    class ShardedTransport(httpx.AsyncBaseTransport):
        """See :func:`sharded_transport`."""

        def __init__(self, *, max_connections: int, shard_size: int, **kwargs: Any) -> None:
            shard_size = max(1, min(shard_size, max_connections))
            count = max(1, -(-max_connections // shard_size))
            limits = httpx.Limits(max_connections=shard_size,
                                  max_keepalive_connections=shard_size)
            verify = kwargs.pop("verify", True)
            if not isinstance(verify, ssl.SSLContext):
                # one context for every shard: loading the CA bundle costs ~60 ms of CPU
                verify = httpx.create_ssl_context(verify=verify, cert=kwargs.pop("cert", None),
                                                  trust_env=kwargs.get("trust_env", True))
            kwargs["verify"] = verify
            self.pools = [httpx.AsyncHTTPTransport(limits=limits, **kwargs)
                          for _ in range(count)]
            self.inflight = [0] * count

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            inflight = self.inflight
            index = inflight.index(min(inflight))
            inflight[index] += 1
            try:
                response = await self.pools[index].handle_async_request(request)
            except BaseException:
                inflight[index] -= 1
                raise
            return httpx.Response(status_code=response.status_code, headers=response.headers,
                                  stream=CountedStream(response.stream, inflight, index),
                                  extensions=response.extensions)

        async def aclose(self) -> None:
            for pool in self.pools:
                await pool.aclose()

    _SHARDED = ShardedTransport
    return _SHARDED


class PooledClient:
    """One lazily created, pooled ``httpx.AsyncClient`` for a provider instance.

    The client is created on first use inside the running event loop. Because connection
    pools belong to one event loop, a call from a *different* loop (a second ``anyio.run``)
    gets a fresh client; the old one is dropped (its sockets close when collected).

    On the aiohttp backend the transport's ``aiohttp.ClientSession`` is created with the
    client, and :meth:`current` also returns a sender that :func:`request_json` uses to send
    plain requests straight to that session (same wire request, pool and errors as through
    httpx, about half the client CPU); streams and :meth:`get`'s client go through httpx.

    Args:
        base_url: prefix of relative request URLs.
        headers: default headers (put secrets here, never in URLs).
        timeout: seconds; a number (all phases) or an ``httpx.Timeout``.
        backend: ``"auto"`` (aiohttp-backed transport from ``httpx-aiohttp`` on asyncio when
            installed, httpx's own on trio), ``"httpx"`` (always httpx's own) or ``"aiohttp"``
            (required; fails on trio). httpx's own transport is used through
            :func:`sharded_transport` (small pools of 8 connections), which costs less CPU per
            request than one large pool.
        transport: an explicit ``httpx.AsyncBaseTransport`` (tests: ``httpx.MockTransport``);
            overrides ``backend``.
        max_connections: pool size.
        params: query pairs added to every request built by the client, after the request's
            own path (a gateway key from the base URL's query); ``base_url`` itself must have
            no query (httpx would join paths after it).

    Raises:
        ValueError: unknown ``backend``, or a ``base_url`` with a query.
    """

    BACKENDS = ("auto", "httpx", "aiohttp")

    def __init__(
        self,
        *,
        base_url: str,
        headers: Mapping[str, str] | None = None,
        timeout: Any = 600.0,
        backend: str = "auto",
        transport: Any = None,
        max_connections: int = 100,
        params: list[tuple[str, str]] | None = None,
    ) -> None:
        if backend not in self.BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(self.BACKENDS)}, got {backend!r}")
        if "?" in base_url:
            raise ValueError("PooledClient base_url must have no query (pass params instead)")
        self.base_url = base_url
        self._params = list(params or [])
        self._headers = dict(headers or {})
        self.timeout = timeout
        self.backend = backend
        self.transport = transport
        self.max_connections = max_connections
        self._client: httpx.AsyncClient | None = None
        self._direct: _DirectSender | None = None
        self._token: tuple[str, object] | None = None
        self.active_backend: str | None = None

    def __repr__(self) -> str:
        return (f"PooledClient(base_url={self.base_url!r}, backend={self.backend!r}, "
                f"active={self.active_backend!r})")

    def _build(self, library: str) -> httpx.AsyncClient:
        import httpx

        limits = httpx.Limits(max_connections=self.max_connections,
                              max_keepalive_connections=self.max_connections)
        timeout = self.timeout if isinstance(self.timeout, httpx.Timeout) else httpx.Timeout(
            self.timeout)
        transport = self.transport
        session: Any = None
        backend = "custom" if transport is not None else "httpx"
        if transport is None and self.backend != "httpx":
            if library == "asyncio":
                try:
                    from httpx_aiohttp import AiohttpTransport
                except ImportError:
                    if self.backend == "aiohttp":
                        raise
                else:
                    transport = AiohttpTransport(limits=limits)
                    # the transport's own session (its connector, TLS context and pool),
                    # created now so that request_json can use it directly
                    session = transport.get_client()
                    transport.client = session
                    backend = "aiohttp"
            elif self.backend == "aiohttp":
                raise RuntimeError(f"the aiohttp backend cannot run on {library}; "
                                   "use backend='auto' or 'httpx'")
        if transport is None:
            transport = sharded_transport(max_connections=self.max_connections)
        self.active_backend = backend
        client = httpx.AsyncClient(base_url=self.base_url, headers=self._headers,
                                   timeout=timeout, limits=limits, transport=transport,
                                   params=self._params or None)
        self._direct = _DirectSender(client, session) if session is not None else None
        return client

    def get(self) -> httpx.AsyncClient:
        """Return the client for the running event loop, creating it when needed."""
        return self.current()[0]

    def current(self) -> tuple[httpx.AsyncClient, _DirectSender | None]:
        """Return the client for the running event loop (created when needed) and, on the
        aiohttp backend, the sender that :func:`request_json` uses to skip httpx's layer
        (None on the other backends).

        Raises:
            RuntimeError: called outside an event loop, or the ``"aiohttp"`` backend on trio.
        """
        token = current_loop_token()
        client = self._client
        if client is None or self._token != token or client.is_closed:
            client = self._client = self._build(token[0])
            self._token = token
        return client, self._direct

    async def aclose(self) -> None:
        """Close the client (when it belongs to the running loop). Safe to call twice."""
        client, self._client = self._client, None
        token, self._token = self._token, None
        self._direct = None
        if client is None or client.is_closed:
            return
        try:
            same_loop = current_loop_token() == token
        except RuntimeError:
            same_loop = False
        if same_loop:
            await client.aclose()


# ----------------------------------------------------------------------------- price tables


class PriceTable:
    """A provider's model table: prices (US dollars per million tokens), context windows,
    output caps and capabilities, read from a JSON data file shipped in the plugin package.

    File shape::

        {"source": "<URL read>", "as_of": "<ISO date read>",
         "models": {"<model id>": {"input": 2.5, "output": 10.0, "context_window": 128000,
                                   "max_output_tokens": 16384, "capabilities": ["chat"]}}}

    Lookup tries the exact id, then the id without a trailing date (``-2024-07-18``,
    ``-20241022``) or ``-latest``. A model that is not in the table has no price (cost
    unknown, never 0).

    Args:
        data: the parsed file.
        overrides: ``{model: {"input": x, "output": y}}`` from configuration; they win.
        override_source: the ``source`` recorded on overridden prices.

    Raises:
        ConfigError: an entry lacks ``input``/``output`` or has a negative price.
    """

    _DATE = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)$")

    def __init__(self, data: Mapping[str, Any], *, overrides: Mapping[str, Any] | None = None,
                 override_source: str = "flowyard.toml") -> None:
        from flowyard import ModelPrice

        self.source = str(data.get("source", ""))
        self.as_of = str(data.get("as_of", ""))
        self.models: dict[str, dict[str, Any]] = {}
        self.prices: dict[str, ModelPrice] = {}
        for model, entry in dict(data.get("models", {})).items():
            self.models[model] = dict(entry)
            self.prices[model] = self._price(model, entry, self.source, self.as_of)
        for model, entry in dict(overrides or {}).items():
            if not isinstance(entry, Mapping):
                raise ConfigError(f"price override for {model!r} must be a table with input "
                                  f"and output, got {entry!r}")
            self.models.setdefault(model, {}).update(entry)
            self.prices[model] = self._price(model, entry, override_source, "")

    @staticmethod
    def _price(model: str, entry: Mapping[str, Any], source: str, as_of: str) -> Any:
        from flowyard import ModelPrice

        try:
            inp, out = float(entry["input"]), float(entry["output"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"price of {model!r} needs numeric 'input' and 'output' "
                              f"(US dollars per million tokens), got {dict(entry)!r}") from None
        if inp < 0 or out < 0:
            raise ConfigError(f"price of {model!r} is negative: {dict(entry)!r}")
        return ModelPrice(inp, out, source=str(entry.get("source", source)),
                          as_of=str(entry.get("as_of", as_of)))

    @classmethod
    def from_package(cls, package: str, resource: str = "prices.json", **kwargs: Any
                     ) -> PriceTable:
        """Load ``resource`` from inside ``package`` (``importlib.resources``)."""
        from importlib.resources import files

        text = (files(package) / resource).read_text(encoding="utf-8")
        return cls(json.loads(text), **kwargs)

    def key(self, model: str) -> str | None:
        """Return the table key for ``model`` (exact, then without a date suffix), or None."""
        if model in self.models:
            return model
        base = self._DATE.sub("", model)
        return base if base in self.models else None

    def price(self, model: str) -> Any:
        """Return the :class:`~flowyard.models.ModelPrice` of ``model``, or None (unknown)."""
        key = self.key(model)
        return self.prices.get(key) if key is not None else None

    def entry(self, model: str) -> dict[str, Any]:
        """Return the table entry of ``model`` (empty when unknown)."""
        key = self.key(model)
        return dict(self.models[key]) if key is not None else {}

    def info(self, provider: str, model: str, *, default_capabilities: Iterable[str] = (),
             metadata: Mapping[str, Any] | None = None) -> ModelInfo:
        """Return a :class:`~flowyard.models.ModelInfo` for ``model`` from the table.

        ``default_capabilities`` apply when the table does not list the model's.
        """
        from flowyard import ModelInfo

        entry = self.entry(model)
        caps = entry.get("capabilities", default_capabilities)
        return ModelInfo(provider=provider, model=model,
                         context_window=entry.get("context_window"),
                         max_output_tokens=entry.get("max_output_tokens"),
                         capabilities=frozenset(caps), price=self.price(model),
                         metadata=dict(metadata or {}))
