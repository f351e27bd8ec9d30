"""Process metrics of the server in the Prometheus text exposition format (version 0.0.4).

Written here because ``prometheus-client`` is not among the repository's pinned dependencies
and the handful of counters below need no more than a few lines.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["Metrics", "MetricsMiddleware", "CONTENT_TYPE"]

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


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
#: Methods counted by name; any other (clients choose them) is counted as ``other``, so a
#: client cannot grow the label set without bound.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


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

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                method = str(scope.get("method", ""))
                self.metrics.inc("flowyard_server_http_requests_total",
                                 "HTTP responses by method and status code",
                                 method=method if method in _METHODS else "other",
                                 code=str(message["status"]))
            await send(message)

        await self.app(scope, receive, counting_send)
