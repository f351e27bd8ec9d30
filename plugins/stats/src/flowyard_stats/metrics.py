"""Run metrics and health figures, from storage (durable) and from live events (in-process).

- :func:`collect_metrics` reads stored runs, step attempts, events and cost lines: runs and
  steps by status, success rates, latency percentiles (runs, steps, LLM calls), tokens, cost
  (unknown prices kept apart), LLM errors, and time spent waiting for rate limits.
- :class:`LiveMetrics` is an event listener counting the same LLM figures for the current
  process (the gateway subscribes one: ``stack.llm.live``), including calls outside runs.

``flowyard stats`` prints :func:`collect_metrics` (see :mod:`flowyard_stats.command`).
Times are in seconds, money in US dollars.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from flowyard import Event

from flowyard_stats.ledger import CostTotal, aggregate, total_of

if TYPE_CHECKING:
    from flowyard import StorageBackend

__all__ = ["percentiles", "LatencyStats", "Metrics", "collect_metrics", "LiveMetrics"]

_FINISHED_RUN = {"completed", "failed", "cancelled", "partial"}
_FINISHED_STEP = {"completed", "failed", "cancelled", "budget_exceeded"}


def percentiles(values: Sequence[float], points: Iterable[float] = (50, 90, 95, 99)
                ) -> dict[str, float | None]:
    """Return ``{"p50": ..., ...}`` by linear interpolation between closest ranks (the
    method of numpy's default ``percentile``); None for every point when ``values`` is empty.

    Raises:
        ValueError: a point outside [0, 100].
    """
    ordered = sorted(values)
    out: dict[str, float | None] = {}
    for p in points:
        if not 0 <= p <= 100:
            raise ValueError(f"percentile must be within [0, 100], got {p}")
        name = f"p{p:g}"
        if not ordered:
            out[name] = None
            continue
        rank = (len(ordered) - 1) * p / 100
        low, high = math.floor(rank), math.ceil(rank)
        out[name] = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    return out


@attrs.define
class LatencyStats:
    """Count, mean, max and percentiles of durations in seconds."""

    count: int = 0
    mean_s: float | None = None
    max_s: float | None = None
    p50_s: float | None = None
    p90_s: float | None = None
    p95_s: float | None = None
    p99_s: float | None = None

    @classmethod
    def of(cls, values: Sequence[float]) -> LatencyStats:
        """Summarize durations (seconds)."""
        if not values:
            return cls()
        pct = percentiles(values)
        return cls(count=len(values), mean_s=sum(values) / len(values), max_s=max(values),
                   p50_s=pct["p50"], p90_s=pct["p90"], p95_s=pct["p95"], p99_s=pct["p99"])


def _rate(good: int, total: int) -> float | None:
    return good / total if total else None


@attrs.define
class Metrics:
    """Figures over a set of runs (see :func:`collect_metrics`).

    Attributes:
        runs_by_status, steps_by_status: counts (a step key counts once, by its last attempt).
        run_success_rate, step_success_rate: completed / finished, in [0, 1] (None: none
            finished).
        step_attempts, step_retries: attempts made, and attempts beyond the first.
        run_latency, step_latency, llm_latency: durations in seconds.
        llm_calls, llm_errors, llm_errors_by_type: LLM calls and failed calls.
        cost: tokens and cost (``cost.cost_usd`` None when any price was unknown).
        cost_by_model: per ``provider/model``.
        ratelimit_waits, ratelimit_wait_s: calls that waited for a rate limit, seconds waited.
        budget_refusals: calls not made because of a budget.
        router_choices: ``{"provider/model": times chosen}``.
    """

    runs: int = 0
    runs_by_status: dict[str, int] = attrs.field(factory=dict)
    run_success_rate: float | None = None
    steps_by_status: dict[str, int] = attrs.field(factory=dict)
    step_success_rate: float | None = None
    step_attempts: int = 0
    step_retries: int = 0
    run_latency: LatencyStats = attrs.field(factory=LatencyStats)
    step_latency: LatencyStats = attrs.field(factory=LatencyStats)
    llm_latency: LatencyStats = attrs.field(factory=LatencyStats)
    llm_calls: int = 0
    llm_errors: int = 0
    llm_errors_by_type: dict[str, int] = attrs.field(factory=dict)
    cost: CostTotal = attrs.field(factory=CostTotal)
    cost_by_model: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    ratelimit_waits: int = 0
    ratelimit_wait_s: float = 0.0
    budget_refusals: int = 0
    router_choices: dict[str, int] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        data = attrs.asdict(self, recurse=True)
        data["cost"] = self.cost.to_dict()
        return data


async def _all_runs(storage: StorageBackend, *, since: float | None, workflow: str | None,
                    max_runs: int) -> list[Any]:
    from flowyard import RunQuery

    runs: list[Any] = []
    offset = 0
    while len(runs) < max_runs:
        want = min(1000, max_runs - len(runs))
        page = await storage.list_runs(RunQuery(workflow_name=workflow, created_after=since,
                                                limit=want, offset=offset, order="-created_at"))
        runs.extend(page)
        if len(page) < want:
            break
        offset += len(page)
    return runs


async def _all_events(storage: StorageBackend, run_id: str) -> list[Event]:
    events: list[Event] = []
    after = 0
    while True:
        page = await storage.list_events(run_id, after_seq=after, limit=1000)
        events.extend(page)
        if len(page) < 1000:
            return events
        after = page[-1].seq


async def collect_metrics(storage: StorageBackend, *, since: float | None = None,
                          workflow: str | None = None, max_runs: int = 1000,
                          events: bool = True) -> Metrics:
    """Compute :class:`Metrics` over stored runs.

    Args:
        storage: an opened storage backend.
        since: only runs created at or after this UNIX time (seconds).
        workflow: only runs of this workflow.
        max_runs: the newest runs considered (bounded work on big stores).
        events: also read each run's events (LLM latency and errors, rate-limit waiting,
            router choices, budget refusals); False reads only runs, attempts and costs.

    Raises:
        StorageError: the backend failed.
    """
    if max_runs < 1:
        raise ValueError(f"max_runs must be >= 1, got {max_runs}")
    runs = await _all_runs(storage, since=since, workflow=workflow, max_runs=max_runs)
    m = Metrics(runs=len(runs))
    run_status = Counter(r.status for r in runs)
    m.runs_by_status = dict(run_status)
    finished = sum(n for s, n in run_status.items() if s in _FINISHED_RUN)
    m.run_success_rate = _rate(run_status.get("completed", 0), finished)
    m.run_latency = LatencyStats.of([r.finished_at - r.started_at for r in runs
                                     if r.finished_at is not None and r.started_at is not None])
    step_status: Counter[str] = Counter()
    step_durations: list[float] = []
    llm_latencies: list[float] = []
    errors: Counter[str] = Counter()
    choices: Counter[str] = Counter()
    run_ids = {r.id for r in runs}
    for run in runs:
        attempts = await storage.list_attempts(run.id)
        m.step_attempts += len(attempts)
        last: dict[str, Any] = {}
        for attempt in attempts:
            if attempt.finished_at is not None:
                step_durations.append(attempt.finished_at - attempt.started_at)
            prev = last.get(attempt.step_key)
            if prev is None or attempt.attempt >= prev.attempt:
                last[attempt.step_key] = attempt
        m.step_retries += len(attempts) - len(last)
        step_status.update(a.status for a in last.values())
        if not events:
            continue
        for event in await _all_events(storage, run.id):
            _count_event(event, m, llm_latencies, errors, choices)
    m.steps_by_status = dict(step_status)
    steps_finished = sum(n for s, n in step_status.items() if s in _FINISHED_STEP)
    m.step_success_rate = _rate(step_status.get("completed", 0), steps_finished)
    m.step_latency = LatencyStats.of(step_durations)
    m.llm_latency = LatencyStats.of(llm_latencies)
    m.llm_errors_by_type = dict(errors)
    m.router_choices = dict(choices)
    lines = [c for c in await storage.list_costs(None) if c.run_id in run_ids]
    m.cost = total_of(lines)
    if not events:
        m.llm_calls = m.cost.calls
    m.cost_by_model = {row.key or "?": row.to_dict() for row in aggregate(lines, "model")}
    return m


def _count_event(event: Event, m: Metrics, latencies: list[float], errors: Counter[str],
                 choices: Counter[str]) -> None:
    data = event.data
    if event.type == "llm.call":
        m.llm_calls += 1
        if isinstance(data.get("latency_s"), (int, float)):
            latencies.append(float(data["latency_s"]))
    elif event.type == "llm.error":
        m.llm_errors += 1
        errors[str(data.get("error_type", "?"))] += 1
        if data.get("error_type") == "BudgetExceeded":
            m.budget_refusals += 1
    elif event.type == "ratelimit.wait":
        m.ratelimit_waits += 1
        m.ratelimit_wait_s += float(data.get("waited_s", 0.0))
    elif event.type == "router.choice":
        choices[str(data.get("model"))] += 1


class LiveMetrics:
    """An event listener that keeps LLM figures of this process (thread-safe, O(1) per event;
    latencies are kept for the last ``window`` calls per model).

    Args:
        window: latency samples kept per model.
    """

    def __init__(self, window: int = 10_000) -> None:
        self.window = window
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget everything."""
        with self._lock:
            self._calls: Counter[str] = Counter()
            self._errors: dict[str, Counter[str]] = defaultdict(Counter)
            self._tokens_in: Counter[str] = Counter()
            self._tokens_out: Counter[str] = Counter()
            self._cost: defaultdict[str, float] = defaultdict(float)
            self._unknown_cost: Counter[str] = Counter()
            self._latency: dict[str, list[float]] = defaultdict(list)
            self._waits: Counter[str] = Counter()
            self._wait_s: defaultdict[str, float] = defaultdict(float)
            self._budget_refusals = 0
            self._circuit_opens: Counter[str] = Counter()
            self._choices: Counter[str] = Counter()

    def __call__(self, event: Event) -> None:
        """Count one event (``llm.call``, ``llm.error``, ``ratelimit.wait``,
        ``budget.exceeded``, ``circuit.state``, ``router.choice``); others are ignored.
        """
        data = event.data
        with self._lock:
            if event.type == "llm.call":
                ref = f"{data.get('provider')}/{data.get('model')}"
                self._calls[ref] += 1
                self._tokens_in[ref] += int(data.get("input_tokens") or 0)
                self._tokens_out[ref] += int(data.get("output_tokens") or 0)
                if data.get("cost_usd") is None:
                    self._unknown_cost[ref] += 1
                else:
                    self._cost[ref] += float(data["cost_usd"])
                samples = self._latency[ref]
                samples.append(float(data.get("latency_s") or 0.0))
                if len(samples) > self.window:
                    del samples[: len(samples) - self.window]
            elif event.type == "llm.error":
                ref = f"{data.get('provider')}/{data.get('model')}"
                self._errors[ref][str(data.get("error_type"))] += 1
            elif event.type == "ratelimit.wait":
                key = str(data.get("key"))
                self._waits[key] += 1
                self._wait_s[key] += float(data.get("waited_s") or 0.0)
            elif event.type == "budget.exceeded":
                self._budget_refusals += 1
            elif event.type == "circuit.state" and data.get("new") == "open":
                self._circuit_opens[str(data.get("provider"))] += 1
            elif event.type == "router.choice":
                self._choices[str(data.get("model"))] += 1

    def snapshot(self) -> dict[str, Any]:
        """Return the figures, JSON-ready: per model calls, errors, tokens, cost (None when
        any call was unpriced) and latency; totals; rate-limit waits per limiter key;
        budget refusals; circuit openings per provider; router choices.
        """
        with self._lock:
            refs = sorted(set(self._calls) | set(self._errors))
            models = {}
            for ref in refs:
                calls = self._calls.get(ref, 0)
                errs = sum(self._errors[ref].values()) if ref in self._errors else 0
                models[ref] = {
                    "calls": calls, "errors": errs,
                    "errors_by_type": dict(self._errors.get(ref, {})),
                    "success_rate": _rate(calls, calls + errs),
                    "input_tokens": self._tokens_in.get(ref, 0),
                    "output_tokens": self._tokens_out.get(ref, 0),
                    "cost_usd": None if self._unknown_cost.get(ref) else self._cost.get(ref, 0.0),
                    "known_cost_usd": self._cost.get(ref, 0.0),
                    "unknown_cost_calls": self._unknown_cost.get(ref, 0),
                    "latency": attrs.asdict(LatencyStats.of(self._latency.get(ref, []))),
                }
            calls = sum(self._calls.values())
            errs = sum(sum(c.values()) for c in self._errors.values())
            return {
                "calls": calls, "errors": errs, "success_rate": _rate(calls, calls + errs),
                "input_tokens": sum(self._tokens_in.values()),
                "output_tokens": sum(self._tokens_out.values()),
                "cost_usd": None if sum(self._unknown_cost.values()) else sum(self._cost.values()),
                "known_cost_usd": sum(self._cost.values()),
                "models": models,
                "ratelimit": {key: {"waits": self._waits[key], "wait_s": self._wait_s[key]}
                              for key in sorted(self._waits)},
                "ratelimit_wait_s": sum(self._wait_s.values()),
                "budget_refusals": self._budget_refusals,
                "circuit_opens": dict(self._circuit_opens),
                "router_choices": dict(self._choices),
            }
