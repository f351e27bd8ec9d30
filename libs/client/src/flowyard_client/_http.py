"""The HTTP layer under :class:`~flowyard_client.AsyncClient`: one pooled httpx client, the
API key, typed errors, retries (tenacity) and request metrics. Private: use the client.
"""

from __future__ import annotations

import builtins
import email.utils
import json
import logging
import random
import time
import urllib.parse
from collections.abc import AsyncIterator, Collection, Mapping
from typing import Any, TypeVar

import anyio
import httpx
import pydantic
from httpx_sse import SSEError, aconnect_sse
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from .errors import (
    ConnectionError,
    FlowyardAPIError,
    RateLimitError,
    TimeoutError,
    error_for_status,
)
from .models import ErrorBody, RunEvent

__all__ = ["HTTPCore", "MAX_RETRY_AFTER", "IDEMPOTENT_METHODS"]

logger = logging.getLogger("flowyard_client")

T = TypeVar("T")

#: Methods retried without being told they are idempotent.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "PUT"})
#: A 429 asking to wait longer than this (seconds) fails at once instead of parking the call.
MAX_RETRY_AFTER = 60.0
#: The longest wait between two attempts (seconds), whatever the backoff.
MAX_BACKOFF = 30.0
#: How much of a non-JSON error body goes into the message (characters).
BODY_EXCERPT = 200

_adapters: dict[Any, pydantic.TypeAdapter[Any]] = {}


def _adapter(kind: Any) -> pydantic.TypeAdapter[Any]:
    adapter = _adapters.get(kind)
    if adapter is None:
        adapter = _adapters[kind] = pydantic.TypeAdapter(kind)
    return adapter


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


class BearerAuth(httpx.Auth):
    """``Authorization: Bearer <key>`` on every request; the key is ``***`` in ``repr``.

    Given to httpx as the client's ``auth``, so it also wins over userinfo in the base URL.
    """

    def __init__(self, key: str) -> None:
        self._key = key

    def auth_flow(self, request: httpx.Request) -> Any:
        """Set the header on ``request`` and send it (httpx's auth flow protocol)."""
        request.headers["Authorization"] = f"Bearer {self._key}"
        yield request

    def __repr__(self) -> str:
        return "BearerAuth('***')"


class HTTPCore:
    """Send requests to one flowyard service: auth, typed errors, retries, metrics.

    Args:
        base_url: The service's root URL (``http://127.0.0.1:8080``), without ``/v1``.
        api_key: The API key sent as ``Authorization: Bearer <key>``, or ``None`` (then a
            user and password in ``base_url`` are sent as Basic auth, as httpx does).
        timeout: Seconds one attempt may take in all (connect, send, the whole answer);
            ``None`` for no limit.
        max_retries: Extra attempts for a retriable failure of an idempotent request.
        backoff: First wait between attempts in seconds; doubles each attempt, plus up to
            ``backoff`` seconds of jitter, at most 30 s.
        http2: Use HTTP/2 (needs the ``h2`` package).
        transport: An httpx transport to use instead of the network (tests).
        metrics: Where to record each attempt.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float | None,
        max_retries: int,
        backoff: float,
        http2: bool,
        transport: httpx.AsyncBaseTransport | None,
        metrics: Any,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if backoff < 0:
            raise ValueError("backoff must be >= 0 seconds")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be > 0 seconds (or None)")
        self.base_url = base_url.rstrip("/")
        self._key = api_key or None
        password = httpx.URL(self.base_url).password
        #: Texts redacted from everything taken from a response: the key, a URL password.
        self._secrets = [s for s in (self._key, password) if s]
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.metrics = metrics
        from . import __version__

        self._headers = {"User-Agent": f"flowyard-client/{__version__}"}
        try:
            self._http = httpx.AsyncClient(
                base_url=self.base_url, timeout=httpx.Timeout(timeout), http2=http2,
                transport=transport, follow_redirects=False,
                auth=BearerAuth(self._key) if self._key else None)
        except ImportError as exc:  # http2=True without h2
            raise ImportError("http2=True needs the h2 package: pip install 'httpx[http2]'"
                              ) from exc

    @property
    def has_key(self) -> bool:
        """True when an API key is configured."""
        return self._key is not None

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._http.aclose()

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` ran."""
        return self._http.is_closed

    # -- redaction ---------------------------------------------------------------------------

    def redact(self, text: str) -> str:
        """Return ``text`` with the API key and the base URL's password (plain, URL-encoded
        or JSON-escaped) as ``***``.
        """
        if not text:
            return text
        for secret in self._secrets:
            for form in {secret, urllib.parse.quote(secret, safe=""),
                         urllib.parse.quote_plus(secret), json.dumps(secret)[1:-1]}:
                if form:
                    text = text.replace(form, "***")
        return text

    def redact_value(self, value: Any) -> Any:
        """Return ``value`` (JSON-like) with the API key redacted from every string in it."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {self.redact(str(k)): self.redact_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.redact_value(v) for v in value]
        return value

    # -- requests ----------------------------------------------------------------------------

    def _headers_for(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = dict(self._headers)
        if extra:
            headers.update(extra)
        return headers

    @staticmethod
    def url_for(route: str, path_params: Mapping[str, Any] | None) -> str:
        """Fill a path template (``/v1/tasks/{task_id}``), each value percent-encoded."""
        if not path_params:
            return route
        return route.format(**{k: urllib.parse.quote(str(v), safe="")
                               for k, v in path_params.items()})

    def error_from_response(self, response: httpx.Response) -> FlowyardAPIError:
        """The typed error for an error response (its body already read), redacted."""
        code = message = None
        details: Any = None
        try:
            body = ErrorBody.model_validate_json(response.content)
            code, message, details = body.code, body.message, body.details
        except pydantic.ValidationError:
            excerpt = response.text.strip()[:BODY_EXCERPT] if response.content else ""
            message = f"HTTP {response.status_code}" + (f": {excerpt}" if excerpt else "")
        return error_for_status(
            response.status_code, code=code, message=self.redact(message or ""),
            details=self.redact_value(details), headers=response.headers,
            retry_after=parse_retry_after(response.headers.get("retry-after")))

    def _malformed(self, response: httpx.Response, what: str) -> FlowyardAPIError:
        return FlowyardAPIError(
            self.redact(f"the server's answer is not {what}"), status=response.status_code,
            code="malformed_response", request_id=response.headers.get("x-request-id"))

    def parse(self, response: httpx.Response, kind: Any) -> Any:
        """Parse a JSON response as ``kind`` (a model class or ``list[Model]``...).

        Raises:
            FlowyardAPIError: ``code="malformed_response"`` when the body does not fit.
        """
        try:
            return _adapter(kind).validate_json(response.content)
        except pydantic.ValidationError:
            name = getattr(kind, "__name__", str(kind))
            raise self._malformed(response, f"a valid {name}") from None

    @staticmethod
    def retriable(exc: BaseException) -> bool:
        """True when ``exc`` is worth another attempt of an idempotent request."""
        if not isinstance(exc, FlowyardAPIError) or not exc.retriable:
            return False
        if isinstance(exc, RateLimitError) and exc.retry_after is not None:
            return exc.retry_after <= MAX_RETRY_AFTER
        return True

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, RateLimitError) and exc.retry_after is not None:
            return exc.retry_after
        return self.backoff_delay(state.attempt_number)

    def backoff_delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failed attempts in a row: ``backoff`` doubled
        each time, at most 30 s, plus up to ``backoff`` seconds of random jitter.
        """
        if self.backoff == 0:
            return 0.0
        base = min(MAX_BACKOFF, self.backoff * 2 ** max(0, failures - 1))
        return base + random.uniform(0, self.backoff)

    def _log_retry(self, label: str) -> Any:
        def log(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            logger.info("%s failed (%s), attempt %d of %d, retrying in %.2f s", label,
                        getattr(exc, "code", type(exc).__name__), state.attempt_number,
                        self.max_retries + 1, wait)
        return log

    async def request(
        self,
        method: str,
        route: str,
        *,
        path_params: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        idempotent: bool | None = None,
        allow_status: Collection[int] = (),
    ) -> httpx.Response:
        """Send one request, retrying retriable failures when it is idempotent.

        Args:
            method: The HTTP method.
            route: The path template (``/v1/tasks/{task_id}``), also the metrics label.
            path_params: Values for the template's fields.
            params: Query parameters; ``None`` values are left out.
            json: A JSON body, or ``None`` for none.
            idempotent: Whether the request may be sent twice; default True for GET, HEAD,
                OPTIONS, PUT and DELETE.
            allow_status: Error statuses returned as responses instead of raised.

        Returns:
            The response, its body read.

        Raises:
            FlowyardAPIError: The typed error of the last attempt.
        """
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        url = self.url_for(route, path_params)
        query = {k: v for k, v in (params or {}).items() if v is not None}
        label = f"{method} {route}"
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1 if idempotent else 1),
            retry=retry_if_exception(self.retriable),
            wait=self._wait,
            sleep=anyio.sleep,
            before_sleep=self._log_retry(label),
            reraise=True,
        )
        response: httpx.Response | None = None
        async for attempt in retrying:
            with attempt:
                response = await self._send_once(
                    method, url, label, query, json, allow_status,
                    retry=attempt.retry_state.attempt_number > 1)
        assert response is not None
        return response

    async def _send_once(self, method: str, url: str, label: str, query: Mapping[str, Any],
                         body: Any, allow_status: Collection[int], *, retry: bool
                         ) -> httpx.Response:
        start = time.perf_counter()
        failed = True
        try:
            try:
                with anyio.fail_after(self.timeout):
                    response = await self._http.request(
                        method, url, params=query or None, json=body,
                        headers=self._headers_for({"Accept": "application/json"}))
            except builtins.TimeoutError:  # anyio's overall deadline
                raise self._timeout(label) from None
            except httpx.TimeoutException:
                raise self._timeout(label) from None
            except httpx.TransportError as exc:
                raise self._connection_error(label, exc) from None
            if response.status_code >= 400 and response.status_code not in allow_status:
                raise self.error_from_response(response)
            failed = False
            return response
        finally:
            self.metrics.record(label, time.perf_counter() - start, failed=failed, retry=retry)

    def _timeout(self, label: str) -> TimeoutError:
        return TimeoutError(f"{label} got no complete answer within {self.timeout} s",
                            timeout=self.timeout)

    def _connection_error(self, label: str, exc: BaseException) -> ConnectionError:
        detail = self.redact(str(exc)) or type(exc).__name__
        return ConnectionError(f"{label} failed: {type(exc).__name__}: {detail}")

    # -- server-sent events ------------------------------------------------------------------

    async def events(self, route: str, path_params: Mapping[str, Any], after_seq: int,
                     end_type: str) -> AsyncIterator[RunEvent]:
        """Yield the events of an SSE stream of :class:`RunEvent`, reconnecting as needed.

        A dropped connection, a stream that ends early or a silent stream (no bytes for
        ``timeout`` seconds) is reconnected with ``Last-Event-ID`` set to the last ``seq``
        seen; events with a ``seq`` already seen are skipped, so none is missed or seen twice.
        Failures in a row without a new event are retried ``max_retries`` times with
        backoff. Ends after the event of type ``end_type``.

        Raises:
            FlowyardAPIError: an error status (404...), or the last failure once the
                reconnects are used up.
        """
        url = self.url_for(route, path_params)
        label = f"GET {route}"
        last = after_seq
        failures = 0
        while True:
            headers = self._headers_for({"Last-Event-ID": str(last)} if last else None)
            start = time.perf_counter()
            recorded = False
            progressed = False
            try:
                async with aconnect_sse(self._http, "GET", url, headers=headers) as source:
                    response = source.response
                    if response.status_code >= 400:
                        await response.aread()
                        raise self.error_from_response(response)
                    self.metrics.record(label, time.perf_counter() - start, failed=False,
                                        retry=failures > 0)
                    recorded = True
                    async for sse in source.aiter_sse():
                        if not sse.data:
                            continue  # a keep-alive
                        event = self._event(response, sse.data, sse.event, sse.id)
                        if event.seq:
                            if event.seq <= last:
                                continue  # replayed after a reconnect: seen already
                            last = event.seq
                        progressed = True
                        failures = 0
                        yield event
                        if event.type == end_type:
                            return
                # The stream ended without the final event: reconnect at once.
                continue
            except FlowyardAPIError as exc:
                error: FlowyardAPIError = exc
            except httpx.ReadTimeout:
                error = self._timeout(label)
                if recorded:
                    continue  # connected, then silent: reconnect without counting a failure
            except httpx.TimeoutException:
                error = self._timeout(label)
            except httpx.TransportError as exc:
                error = self._connection_error(label, exc)
                if recorded and progressed:
                    continue  # dropped after progress: reconnect at once
            except SSEError as exc:  # not an event stream (another content type)
                error = FlowyardAPIError(self.redact(f"{label}: {exc}"),
                                         code="malformed_response")
            if not recorded:
                self.metrics.record(label, time.perf_counter() - start, failed=True,
                                    retry=failures > 0)
            if not self.retriable(error) or failures >= self.max_retries:
                raise error
            failures += 1
            delay = (error.retry_after if isinstance(error, RateLimitError)
                     and error.retry_after is not None else self.backoff_delay(failures))
            logger.info("%s failed (%s), reconnecting in %.2f s after seq %d", label,
                        error.code, delay, last)
            await anyio.sleep(delay)

    def _event(self, response: httpx.Response, data: str, kind: str, sse_id: str) -> RunEvent:
        try:
            value = json.loads(data)
        except ValueError:
            raise self._malformed(response, "a JSON event") from None
        if isinstance(value, dict):
            if "type" not in value and kind and kind != "message":
                value["type"] = kind
            if "seq" not in value:
                value["seq"] = int(sse_id) if sse_id.isdigit() else 0
        try:
            return RunEvent.model_validate(value)
        except pydantic.ValidationError:
            raise self._malformed(response, "a valid RunEvent") from None
