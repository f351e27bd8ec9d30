"""The data of the dashboard's costs page (``/ui/costs?days=7``).

Cost lines come from the storage (:meth:`~flowyard.StorageBackend.list_costs`: one line per
LLM call). Only the lines of the tenant's runs are kept:

- a tenant's runs are the keys of its run index, the key-value namespace
  ``RUNS_NAMESPACE + tenant`` (written when a task is submitted);
- a sub-workflow's run is not in that index: its record's ``metadata["parent_run_id"]``
  names its parent, and the chain is walked up to the root run, which must be in the index.

A line whose run cannot be traced to one of the tenant's runs is left out (fail closed):
nothing of another tenant shows. The window is the last ``days`` UTC calendar days, today
included (``days == 1``: the last 24 hours, hour by hour, the current hour included).
Amounts are US dollars; a line whose price was unknown (``cost_usd`` None) counts in the
calls and tokens, and in a separate count of calls of unknown price, never as 0 dollars.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from typing import Any

from flowyard import CostLine

from flowyard_server.ui.charts import format_usd, stacked_bar_chart

__all__ = ["costs_context", "tenant_run_ids", "DAY_CHOICES", "MAX_DAYS"]

#: The windows the page offers, in days.
DAY_CHOICES = (1, 7, 30, 90, 366)
#: The longest window, in days.
MAX_DAYS = 366
#: The most parent links followed from a run to its root (guards against a cycle).
_MAX_DEPTH = 64
_PAGE = 500


async def tenant_run_ids(storage: Any, tenant: str) -> set[str]:
    """Return the ids of the runs of ``tenant``'s index (its submitted runs, not sub-runs).

    Args:
        storage: the stack's storage (a :class:`~flowyard.SupportsKeyValueListing`).
        tenant: the tenant.

    Returns:
        The run ids (empty when the storage cannot list its key-value area).
    """
    # (imported here: flowyard_server.app may import the dashboard's pages, which import this)
    from flowyard_server.app import RUNS_NAMESPACE

    kv_list = getattr(storage, "kv_list", None)
    if kv_list is None:
        return set()
    ids: set[str] = set()
    after = ""
    while True:
        page = await kv_list(RUNS_NAMESPACE + tenant, after=after, limit=_PAGE)
        ids.update(key for key, _ in page)
        if len(page) < _PAGE:
            return ids
        after = page[-1][0]


class _Owners:
    """Tells whether a run belongs to the tenant, walking parent links (cached)."""

    def __init__(self, storage: Any, roots: set[str]) -> None:
        self.storage = storage
        self.roots = roots
        self._known: dict[str, bool] = {}

    async def _parent(self, run_id: str) -> str | None:
        try:
            record = await self.storage.get_run(run_id)
        except LookupError:  # RunNotFoundError included
            return None
        parent = (record.metadata or {}).get("parent_run_id")
        return parent if isinstance(parent, str) and parent else None

    async def owns(self, run_id: str) -> bool:
        """True when ``run_id`` is a root run of the tenant or descends from one."""
        chain: list[str] = []
        current: str | None = run_id
        verdict = False
        while current is not None and len(chain) <= _MAX_DEPTH:
            if current in self._known:
                verdict = self._known[current]
                break
            if current in self.roots:
                verdict = True
                break
            if current in chain:  # a cycle: nobody's
                break
            chain.append(current)
            current = await self._parent(current)
        for seen in chain:
            self._known[seen] = verdict
        return verdict


def _window(days: int, now: float) -> tuple[float, list[tuple[float, str, str]]]:
    """The window's start (UNIX seconds) and its buckets: (start, axis label, full name)."""
    current = dt.datetime.fromtimestamp(now, dt.timezone.utc)
    if days == 1:
        hour = current.replace(minute=0, second=0, microsecond=0)
        starts = [hour - dt.timedelta(hours=23 - i) for i in range(24)]
        buckets = [(s.timestamp(), s.strftime("%H:00"), s.strftime("%Y-%m-%d %H:00 UTC"))
                   for s in starts]
    else:
        day = current.replace(hour=0, minute=0, second=0, microsecond=0)
        starts = [day - dt.timedelta(days=days - 1 - i) for i in range(days)]
        buckets = [(s.timestamp(), s.strftime("%m-%d"), s.strftime("%Y-%m-%d UTC"))
                   for s in starts]
    return buckets[0][0], buckets


def _utc(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _bucket_of(when: float, starts: list[float], size: float) -> int:
    index = int((when - starts[0]) // size)
    return min(max(index, 0), len(starts) - 1)


class _Tally:
    """Sums of one group (a model or a workflow)."""

    __slots__ = ("calls", "input_tokens", "output_tokens", "cost_usd", "unknown_price_calls",
                 "per_bucket")

    def __init__(self, buckets: int) -> None:
        self.calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost_usd = 0.0
        self.unknown_price_calls = 0
        self.per_bucket = [0.0] * buckets

    def add(self, line: CostLine, bucket: int) -> None:
        self.calls += 1
        self.input_tokens += int(line.input_tokens or 0)
        self.output_tokens += int(line.output_tokens or 0)
        if line.cost_usd is None:
            self.unknown_price_calls += 1
        else:
            self.cost_usd += float(line.cost_usd)
            self.per_bucket[bucket] += float(line.cost_usd)

    def row(self, name: str) -> dict[str, Any]:
        return {"name": name, "calls": self.calls, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens,
                "tokens": self.input_tokens + self.output_tokens,
                "cost_usd": self.cost_usd, "cost": format_usd(self.cost_usd),
                "unknown_price_calls": self.unknown_price_calls}


def _rows(groups: dict[str, _Tally]) -> list[dict[str, Any]]:
    rows = [tally.row(name) for name, tally in groups.items()]
    rows.sort(key=lambda r: (-r["cost_usd"], -r["tokens"], r["name"]))
    return rows


async def costs_context(svc: Any, tenant: str, *, days: int) -> dict[str, Any]:
    """Data of the costs page for `tenant` over the last `days` days (1..366).

    Args:
        svc: the server's :class:`~flowyard_server.app.Service`.
        tenant: the tenant whose costs are shown (only its runs and their sub-runs).
        days: the window in days, clamped to 1..366: the last ``days`` UTC calendar days,
            today included; 1 means the last 24 hours, hour by hour.

    Returns:
        The template context: ``days``, ``day_choices``, ``granularity`` (``"hour"`` or
        ``"day"``), ``window_start`` and ``window_end`` (``YYYY-MM-DD HH:MM UTC``),
        ``totals`` (``calls``, ``input_tokens``, ``output_tokens``, ``tokens``, ``cost_usd``
        in US dollars, ``cost`` formatted, ``unknown_price_calls``, ``runs``), ``by_model``
        and ``by_workflow`` (rows with ``name``, ``calls``, token counts, ``cost_usd``,
        ``cost``, ``unknown_price_calls``; most expensive first), ``has_costs``, and the charts
        ``chart_by_model`` and ``chart_by_workflow`` (escaped SVG markup, None without costs).

    Raises:
        StorageError: the storage failed.
    """
    days = min(max(int(days), 1), MAX_DAYS)
    storage = svc.stack.storage
    now = time.time()
    start, buckets = _window(days, now)
    starts = [b[0] for b in buckets]
    size = 3600.0 if days == 1 else 86400.0
    lines = [line for line in await storage.list_costs(None) if start <= line.time <= now + 60]
    owners = _Owners(storage, await tenant_run_ids(storage, tenant) if lines else set())
    by_model: dict[str, _Tally] = {}
    by_workflow: dict[str, _Tally] = {}
    total = _Tally(len(buckets))
    runs: set[str] = set()
    for line in lines:
        if not await owners.owns(line.run_id):
            continue
        bucket = _bucket_of(line.time, starts, size)
        model = f"{line.provider}/{line.model}"
        workflow = line.workflow_name or "(unnamed)"
        for groups, key in ((by_model, model), (by_workflow, workflow)):
            tally = groups.get(key)
            if tally is None:
                tally = groups[key] = _Tally(len(buckets))
            tally.add(line, bucket)
        total.add(line, bucket)
        runs.add(line.run_id)
    totals = total.row("total")
    totals["runs"] = len(runs)
    has_costs = total.calls > 0
    labels = [b[1] for b in buckets]
    names = [b[2] for b in buckets]
    unit = "hour" if days == 1 else "day"
    charts: dict[str, Any] = {"chart_by_model": None, "chart_by_workflow": None}
    if has_costs:
        for key, svg_id, groups, what in (
                ("chart_by_model", "cost-by-model", by_model, "model"),
                ("chart_by_workflow", "cost-by-workflow", by_workflow, "workflow")):
            series: dict[str, list[float]] = defaultdict(list)
            for name, tally in groups.items():
                if any(tally.per_bucket):
                    series[name] = tally.per_bucket
            charts[key] = stacked_bar_chart(
                svg_id, f"Cost per {unit} by {what}, US dollars", labels, series,
                bucket_names=names)
    return {
        "days": days,
        "day_choices": DAY_CHOICES,
        "granularity": unit,
        "window_start": _utc(start),
        "window_end": _utc(now),
        "totals": totals,
        "by_model": _rows(by_model),
        "by_workflow": _rows(by_workflow),
        "has_costs": has_costs,
        **charts,
    }
