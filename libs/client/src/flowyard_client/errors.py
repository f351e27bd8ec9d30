"""Typed errors of the flowyard client.

Every error the client raises is a :class:`FlowyardAPIError`; the subclass says what went
wrong, the HTTP status (``None`` for errors that happened on the client side) and the
server's error body (``code``, ``message``, ``details``) say the rest, and ``request_id`` is
the server's ``X-Request-ID`` to quote in a bug report. The API key never appears in an
error's ``str``, ``repr``, ``message`` or ``details``: the client replaces it with ``***``
even when a server echoes it back.

=========================  ==========================================================
Class                      When
=========================  ==========================================================
:class:`ValidationError`   400 or 422, or parameters the client rejects before sending
AuthenticationError        401 or 403
NotFoundError              404
ConflictError              409
PayloadTooLargeError       413
RateLimitError             429 (``retry_after``: seconds from ``Retry-After``)
ServerError                5xx
TimeoutError               no answer in time; ``wait_for_completion`` running out
ConnectionError            the server cannot be reached, or the connection broke
=========================  ==========================================================
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any

__all__ = [
    "FlowyardAPIError",
    "ValidationError",
    "AuthenticationError",
    "NotFoundError",
    "ConflictError",
    "PayloadTooLargeError",
    "RateLimitError",
    "ServerError",
    "TimeoutError",
    "ConnectionError",
    "error_for_status",
    "RETRIABLE_STATUSES",
]

#: Statuses a request may be retried after (when it is idempotent).
RETRIABLE_STATUSES = frozenset({429, 502, 503, 504})


class FlowyardAPIError(Exception):
    """A request to the flowyard service failed.

    Args:
        message: What went wrong, for humans (already redacted).
        status: The HTTP status, or ``None`` when the error happened on the client side.
        code: A stable machine-readable code (``not_found``, ``validation_error``,
            ``rate_limited``, ``timeout``, ``connection_error``...).
        details: Extra data from the error body (e.g. the invalid fields), or ``None``.
        request_id: The server's ``X-Request-ID`` of the failed request, or ``None``.

    Attributes:
        retriable: True when trying the same idempotent request again may succeed.
    """

    retriable = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "error",
        details: dict[str, Any] | list[Any] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details = details
        self.request_id = request_id

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else "client"
        text = f"{self.message} ({where}, code={self.code}"
        if self.request_id:
            text += f", request_id={self.request_id}"
        return text + ")"

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
                f"message={self.message!r}, request_id={self.request_id!r})")


class ValidationError(FlowyardAPIError):
    """The request was invalid: a 400 or 422 from the server (``details`` lists the invalid
    fields), or parameters the client rejected before sending (``status`` ``None``,
    ``details`` pydantic's error list).
    """


class AuthenticationError(FlowyardAPIError):
    """The API key is missing or wrong (401), or does not allow this request (403)."""


class NotFoundError(FlowyardAPIError):
    """The agent, task, run or route does not exist (404)."""


class ConflictError(FlowyardAPIError):
    """The request conflicts with the current state (409), e.g. cancelling a finished task."""


class PayloadTooLargeError(FlowyardAPIError):
    """The request body is larger than the server accepts (413)."""


class RateLimitError(FlowyardAPIError):
    """Too many requests (429); retriable.

    Args:
        message: What went wrong, for humans.
        retry_after: Seconds the server asked to wait (``Retry-After``), or ``None``.
        **kwargs: ``status``, ``code``, ``details``, ``request_id`` as for
            :class:`FlowyardAPIError`.
    """

    retriable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(FlowyardAPIError):
    """The server failed (5xx); ``retriable`` for 502, 503 and 504."""

    @property
    def retriable(self) -> bool:  # type: ignore[override]
        """True for 502, 503 and 504 (a proxy or an overloaded server), False for 500."""
        return self.status in RETRIABLE_STATUSES


class TimeoutError(FlowyardAPIError, builtins.TimeoutError):
    """No answer in time: a request past the client's ``timeout``, or ``wait_for_completion``
    / ``wait_for_all`` past theirs. Also a builtin :class:`TimeoutError`; retriable.

    Args:
        message: What went wrong, for humans.
        timeout: The limit that was passed, in seconds (``None`` when unknown).
        **kwargs: ``status``, ``code``, ``details``, ``request_id`` as for
            :class:`FlowyardAPIError`.
    """

    retriable = True

    def __init__(self, message: str, *, timeout: float | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("code", "timeout")
        super().__init__(message, **kwargs)
        self.timeout = timeout


class ConnectionError(FlowyardAPIError, builtins.ConnectionError):
    """The server could not be reached or the connection broke before the answer was
    complete. Also a builtin :class:`ConnectionError`; retriable.
    """

    retriable = True

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("code", "connection_error")
        super().__init__(message, **kwargs)


_BY_STATUS: dict[int, type[FlowyardAPIError]] = {
    400: ValidationError,
    422: ValidationError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    429: RateLimitError,
}

_DEFAULT_CODES = {
    ValidationError: "validation_error",
    AuthenticationError: "authentication_error",
    NotFoundError: "not_found",
    ConflictError: "conflict",
    PayloadTooLargeError: "payload_too_large",
    RateLimitError: "rate_limited",
    ServerError: "server_error",
}


def error_for_status(
    status: int,
    *,
    code: str | None = None,
    message: str | None = None,
    details: dict[str, Any] | list[Any] | None = None,
    headers: Mapping[str, str] | None = None,
    retry_after: float | None = None,
) -> FlowyardAPIError:
    """Build the typed error for an HTTP error status.

    Args:
        status: The HTTP status (400-599).
        code: The error body's ``code`` (a default per status when ``None``).
        message: The error body's ``message`` (``"HTTP <status>"`` when ``None``); the caller
            has redacted it.
        details: The error body's ``details``.
        headers: The response headers; ``X-Request-ID`` becomes ``request_id``.
        retry_after: Seconds from ``Retry-After`` (kept on a :class:`RateLimitError`).

    Returns:
        The :class:`FlowyardAPIError` subclass for ``status`` (not raised).
    """
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else FlowyardAPIError)
    request_id = None
    if headers is not None:
        request_id = headers.get("x-request-id") or headers.get("X-Request-ID")
    kwargs: dict[str, Any] = {
        "status": status,
        "code": code or _DEFAULT_CODES.get(cls, "error"),
        "details": details,
        "request_id": request_id,
    }
    text = message or f"HTTP {status}"
    if cls is RateLimitError:
        return RateLimitError(text, retry_after=retry_after, **kwargs)
    return cls(text, **kwargs)
