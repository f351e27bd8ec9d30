"""flowyard-http: what flowyard's HTTP model providers share.

A library distribution, not a plugin (no entry point): the provider plugins that call a model
service over HTTP (``flowyard-openai``, ``flowyard-anthropic``, ``flowyard-ollama``) depend on
it. It holds

* :class:`HTTPProvider`, the base class of those providers: constructor checks, the API key
  as a :class:`Secret`, repr, key check, price lookup, one pooled client per instance and its
  ``aclose``, typed error mapping, and streamed responses (SSE or NDJSON) read up to their end
  marker; a subclass keeps only its wire format;
* the helpers underneath it: :class:`PooledClient`, :func:`sharded_transport`,
  :func:`request_json`, :class:`open_stream`, :func:`stream_errors`,
  :func:`error_for_status`, :func:`error_for_exception`, :func:`error_from_payload`,
  :func:`parse_retry_after`, :func:`redact`, :func:`redact_value`, :class:`PriceTable`;
* the secrets of a provider's configuration: :class:`ProviderURL` (a base URL's query values
  and userinfo) and :func:`secret_headers` (every configured header value outside
  :data:`NON_SECRET_HEADERS`), redacted like the API key.

Errors are the core's typed :mod:`flowyard.errors` (``retriable`` and ``retry_after`` set).
"""

from __future__ import annotations

from flowyard_http._provider import HTTPProvider, StreamEvent
from flowyard_http._util import (
    DEFAULT_MAX_RETRY_AFTER,
    NON_SECRET_HEADERS,
    REDACTED,
    PooledClient,
    PriceTable,
    ProviderURL,
    Secret,
    current_loop_token,
    deadline_error,
    error_for_exception,
    error_for_status,
    error_from_payload,
    error_message_from_body,
    open_stream,
    parse_json_body,
    parse_retry_after,
    redact,
    redact_value,
    request_json,
    secret_headers,
    sharded_transport,
    status_for_error_type,
    stream_errors,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_RETRY_AFTER",
    "HTTPProvider",
    "NON_SECRET_HEADERS",
    "PooledClient",
    "PriceTable",
    "ProviderURL",
    "REDACTED",
    "Secret",
    "StreamEvent",
    "__version__",
    "current_loop_token",
    "deadline_error",
    "error_for_exception",
    "error_for_status",
    "error_from_payload",
    "error_message_from_body",
    "open_stream",
    "parse_json_body",
    "parse_retry_after",
    "redact",
    "redact_value",
    "request_json",
    "secret_headers",
    "sharded_transport",
    "status_for_error_type",
    "stream_errors",
]
