"""Process metrics of the server in the Prometheus text exposition format (version 0.0.4).

The request counters stay a plain dictionary under a lock (counting a request costs one
dictionary update, less than a ``prometheus_client`` labelled child); :class:`Metrics` is also
a ``prometheus_client`` collector, so ``/metrics`` renders them together with the core's
metrics (:func:`flowyard.metrics.render_metrics`) and the task queue gauges
(:func:`queue_collector`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["Metrics", "MetricsMiddleware", "CONTENT_TYPE", "queue_collector", "request_counter"]

#: The media type of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """Counters and gauges of one server process (thread-safe)."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._help: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def inc(self, name: str, help_text: str, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` to counter ``name`` (a ``_total`` name) with ``labels``."""
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._help.setdefault(name, ("counter", help_text))
            self._counters[key] = self._counters.get(key, 0.0) + amount

    def add(self, name: str, help_text: str, labels: tuple[tuple[str, str], ...],
            amount: float = 1.0) -> None:
        """Like :meth:`inc` with ``labels`` given as a tuple of ``(name, value)`` pairs
        already sorted by name (no keyword dict to build and sort on a hot path).
        """
        key = (name, labels)
        with self._lock:
            if name not in self._help:
                self._help[name] = ("counter", help_text)
            self._counters[key] = self._counters.get(key, 0.0) + amount

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """Register gauge ``name`` whose value ``read()`` returns at scrape time."""
        self.gauges[name] = (help_text, read)

    def render(self) -> str:
        """Return every metric in the text exposition format."""
        lines: list[str] = []
        with self._lock:
            counters = dict(self._counters)
            helps = dict(self._help)
        for name in sorted(helps):
            kind, help_text = helps[name]
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for (metric, labels), value in sorted(counters.items()):
                if metric == name:
                    lines.append(f"{name}{_labels(labels)} {value:g}")
        for name, (help_text, read) in sorted(self.gauges.items()):
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name} {float(read()):g}")
        return "\n".join(lines) + "\n"

    def collect(self) -> list[Any]:
        """Return the counters and gauges as ``prometheus_client`` metric families (the
        collector protocol), read now.
        """
        with self._lock:
            counters = dict(self._counters)
            helps = dict(self._help)
        families: list[Any] = []
        for name in sorted(helps):
            _, help_text = helps[name]
            rows = sorted((labels, value) for (metric, labels), value in counters.items()
                          if metric == name)
            family = CounterMetricFamily(name, help_text,
                                         labels=[k for k, _ in rows[0][0]] if rows else None)
            for labels, value in rows:
                family.add_metric([v for _, v in labels], value)
            families.append(family)
        for name, (help_text, read) in sorted(self.gauges.items()):
            families.append(GaugeMetricFamily(name, help_text, value=float(read())))
        return families


class _Families:
    """A collector of metric families computed before the scrape renders."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> list[Any]:
        """Return the families."""
        return self.families


def queue_collector(counts: dict[str, int], oldest_queued_at: float | None,
                    now: float) -> Any:
    """Return a collector of the task queue gauges: ``flowyard_queue_tasks{status}`` (tasks
    by status, ``queued`` and ``running``) and ``flowyard_queue_oldest_age_seconds`` (the age
    of the oldest queued task, seconds; 0 with none queued).

    Args:
        counts: tasks by status.
        oldest_queued_at: the oldest queued task's ``created_at``, UNIX seconds, or None.
        now: the current time, UNIX seconds.

    Returns:
        An object with ``collect()``, for :func:`flowyard.metrics.render_metrics`.
    """
    tasks = GaugeMetricFamily("flowyard_queue_tasks", "tasks in the server's queue by status",
                              labels=["status"])
    for status, count in sorted(counts.items()):
        tasks.add_metric([status], count)
    age = GaugeMetricFamily("flowyard_queue_oldest_age_seconds",
                            "age of the oldest queued task, seconds",
                            value=max(0.0, now - oldest_queued_at)
                            if oldest_queued_at is not None else 0.0)
    return _Families([tasks, age])


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
#: Methods counted by name; any other (clients choose them) is counted as ``other``, so a
#: client cannot grow the label set without bound.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


_REQUESTS = "flowyard_server_http_requests_total"
_REQUESTS_HELP = "HTTP responses by method and status code"


def request_counter(metrics: Metrics, scope: Scope,
                    send: Callable[[Message], Awaitable[None]]
                    ) -> Callable[[Message], Awaitable[None]]:
    """Wrap an HTTP request's ``send`` so its response is counted in ``metrics``
    (``flowyard_server_http_requests_total`` by method and status code).
    """
    method = str(scope.get("method", ""))
    if method not in _METHODS:
        method = "other"

    async def counting_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            metrics.add(_REQUESTS, _REQUESTS_HELP,
                        (("code", str(message["status"])), ("method", method)))
        await send(message)

    return counting_send


class MetricsMiddleware:
    """Counts HTTP responses by method and status code (pure ASGI, outermost).

    Args:
        app: the ASGI application behind it.
        metrics: where the counts go (``flowyard_server_http_requests_total``).
    """

    def __init__(self, app: Callable[..., Awaitable[None]], metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, request_counter(self.metrics, scope, send))
