"""Client-side request metrics: counts and latency percentiles per route."""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field

__all__ = ["ClientMetrics", "RouteMetrics"]

#: Latency samples kept per route for the percentiles (the most recent ones).
SAMPLES_PER_ROUTE = 1000


@dataclass(frozen=True)
class RouteMetrics:
    """What the client saw of one route (``"GET /v1/tasks/{task_id}"``).

    Attributes:
        route: The method and path template.
        requests: HTTP attempts sent (a retried call counts each attempt).
        failures: Attempts that ended in an error (an error status, a timeout, a broken
            connection).
        retries: Attempts that were retries of an earlier failed attempt.
        p50: Median attempt latency in seconds (``None`` before the first attempt).
        p90: 90th percentile latency in seconds.
        p99: 99th percentile latency in seconds.
        mean: Mean latency in seconds.
        max: Longest latency in seconds.
    """

    route: str
    requests: int = 0
    failures: int = 0
    retries: int = 0
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    mean: float | None = None
    max: float | None = None


def _percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of a sorted, non-empty list."""
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass
class _Route:
    requests: int = 0
    failures: int = 0
    retries: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES_PER_ROUTE))


class ClientMetrics:
    """Request counts and latencies of one client, per route; thread-safe.

    ``requests``, ``failures`` and ``retries`` are totals over every route; :meth:`route`
    and :meth:`snapshot` give each route's counts and latency percentiles (seconds, over the
    last 1000 attempts of the route).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._routes: dict[str, _Route] = {}

    def record(self, route: str, latency: float, *, failed: bool, retry: bool) -> None:
        """Record one HTTP attempt.

        Args:
            route: The method and path template (``"GET /v1/tasks/{task_id}"``).
            latency: Seconds from sending the request to the end of the answer (or the error).
            failed: True when the attempt ended in an error.
            retry: True when the attempt retried an earlier one.
        """
        with self._lock:
            entry = self._routes.setdefault(route, _Route())
            entry.requests += 1
            entry.failures += failed
            entry.retries += retry
            entry.latencies.append(latency)

    @property
    def requests(self) -> int:
        """HTTP attempts sent, over every route."""
        with self._lock:
            return sum(r.requests for r in self._routes.values())

    @property
    def failures(self) -> int:
        """Attempts that ended in an error, over every route."""
        with self._lock:
            return sum(r.failures for r in self._routes.values())

    @property
    def retries(self) -> int:
        """Attempts that were retries, over every route."""
        with self._lock:
            return sum(r.retries for r in self._routes.values())

    def route(self, route: str) -> RouteMetrics:
        """Return the metrics of one route (zeros when it was never called).

        Args:
            route: The method and path template, e.g. ``"POST /v1/tasks"``.

        Returns:
            A :class:`RouteMetrics` snapshot.
        """
        with self._lock:
            entry = self._routes.get(route)
            if entry is None:
                return RouteMetrics(route=route)
            ordered = sorted(entry.latencies)
            counts = (entry.requests, entry.failures, entry.retries)
        if not ordered:
            return RouteMetrics(route, *counts)
        return RouteMetrics(
            route, *counts,
            p50=_percentile(ordered, 0.50), p90=_percentile(ordered, 0.90),
            p99=_percentile(ordered, 0.99), mean=sum(ordered) / len(ordered), max=ordered[-1])

    def snapshot(self) -> dict[str, RouteMetrics]:
        """Return every route's metrics, keyed by route (``"GET /v1/health/ready"``...)."""
        with self._lock:
            names = sorted(self._routes)
        return {name: self.route(name) for name in names}

    def reset(self) -> None:
        """Forget everything recorded so far."""
        with self._lock:
            self._routes.clear()

    def __repr__(self) -> str:
        return (f"ClientMetrics(requests={self.requests}, failures={self.failures}, "
                f"retries={self.retries})")
