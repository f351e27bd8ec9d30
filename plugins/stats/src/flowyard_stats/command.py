"""``flowyard stats``: run metrics from storage.

The logic lives in plain functions (:func:`parse_since`, :func:`gather_stats`) so it can be
used from Python as well as from the command line.
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from flowyard import Stack

    from flowyard_stats.metrics import Metrics

__all__ = ["stats", "parse_since", "gather_stats", "count_abandoned", "format_stats"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}



def parse_since(text: str | None, *, now: float | None = None) -> float | None:
    """Turn ``"30m"``, ``"24h"``, ``"7d"``, ``"2w"``, a number of seconds or an ISO 8601 date
    into a UNIX time (seconds); None stays None.

    Raises:
        click.BadParameter: anything else (the message shows the accepted forms).
    """
    if text is None or text == "":
        return None
    now = time.time() if now is None else now
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2) or "s"]
    from datetime import datetime, timezone

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: use a duration such as 30m, 24h, 7d, 2w, or an ISO date "
            "(2026-11-01 or 2026-11-01T12:00)", param_hint="--since") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


async def gather_stats(stack: Stack, *, since: float | None = None,
                       workflow: str | None = None, max_runs: int = 1000,
                       events: bool = True) -> Metrics:
    """Open the stack's storage and return :func:`flowyard_stats.metrics.collect_metrics`, with
    ``runs_by_status`` counting the runs stored as running that no live process holds under
    ``"abandoned"`` instead of ``"running"`` (see :mod:`flowyard.engine.lease`).

    Raises:
        StorageError: the backend failed.
    """
    from flowyard_stats.metrics import collect_metrics

    await stack.open()
    metrics = await collect_metrics(stack.storage, since=since, workflow=workflow,
                                    max_runs=max_runs, events=events)
    if metrics.runs_by_status.get("running"):
        abandoned = await count_abandoned(stack.storage, since=since, workflow=workflow,
                                          max_runs=max_runs)
        if abandoned:
            counts = metrics.runs_by_status
            counts["running"] -= abandoned
            if not counts["running"]:
                del counts["running"]
            counts["abandoned"] = abandoned
    return metrics


async def count_abandoned(storage: Any, *, since: float | None = None,
                          workflow: str | None = None, max_runs: int = 1000) -> int:
    """Count the abandoned runs among the newest ``max_runs`` runs created since ``since``
    (UNIX seconds) of ``workflow`` -- the runs :func:`flowyard_stats.metrics.collect_metrics`
    considers with the same arguments.

    Raises:
        StorageError: the backend failed.
    """
    from flowyard import RunQuery, run_state

    # the oldest run considered, in list order (created_at, then id, both descending)
    oldest = await storage.list_runs(RunQuery(workflow_name=workflow, created_after=since,
                                              limit=1, offset=max_runs - 1))
    cutoff = (oldest[0].created_at, oldest[0].id) if oldest else None
    running: list[Any] = []
    offset = 0
    while True:
        page = await storage.list_runs(RunQuery(status="running", workflow_name=workflow,
                                                created_after=since, limit=1000,
                                                offset=offset))
        running.extend(r for r in page if cutoff is None or (r.created_at, r.id) >= cutoff)
        if len(page) < 1000:
            break
        offset += len(page)
    leases = await storage.get_leases([r.id for r in running])
    now = time.time()
    return sum(run_state(r, leases.get(r.id), now=now) == "abandoned" for r in running)


def _money(value: float | None, unknown_calls: int = 0) -> str:
    if value is None:
        return f"unknown ({unknown_calls} unpriced)" if unknown_calls else "unknown"
    return f"${value:.6f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def format_stats(m: Metrics) -> list[tuple[str, list[tuple[str, str]]]]:
    """Return the metrics as titled sections of (label, value) rows, for display."""
    def latency(stats: Any) -> str:
        if not stats.count:
            return "-"
        return (f"p50 {_secs(stats.p50_s)}  p90 {_secs(stats.p90_s)}  p95 {_secs(stats.p95_s)}"
                f"  p99 {_secs(stats.p99_s)}  max {_secs(stats.max_s)}  (n={stats.count})")

    cost = m.cost
    sections = [
        ("Runs", [("runs", str(m.runs)),
                  *[(f"  {k}", str(v)) for k, v in sorted(m.runs_by_status.items())],
                  ("success rate", _pct(m.run_success_rate)),
                  ("duration", latency(m.run_latency))]),
        ("Steps", [*[(f"  {k}", str(v)) for k, v in sorted(m.steps_by_status.items())],
                   ("success rate", _pct(m.step_success_rate)),
                   ("attempts / retries", f"{m.step_attempts} / {m.step_retries}"),
                   ("duration", latency(m.step_latency))]),
        ("LLM", [("calls", str(m.llm_calls)), ("errors", str(m.llm_errors)),
                 *[(f"  {k}", str(v)) for k, v in sorted(m.llm_errors_by_type.items())],
                 ("latency", latency(m.llm_latency)),
                 ("tokens in / out", f"{cost.input_tokens} / {cost.output_tokens}"),
                 ("cost", _money(cost.cost_usd, cost.unknown_cost_calls)
                  if cost.cost_known or cost.known_cost_usd == 0
                  else f"${cost.known_cost_usd:.6f} + unknown "
                       f"({cost.unknown_cost_calls} unpriced)"),
                 ("rate-limit waits", f"{m.ratelimit_waits} calls, {m.ratelimit_wait_s:.3f}s"),
                 ("budget refusals", str(m.budget_refusals))]),
        ("Cost by model", [(ref, f"{_money(row['cost_usd'], row['unknown_cost_calls'])}  "
                                 f"{row['calls']} calls  {row['input_tokens']} in / "
                                 f"{row['output_tokens']} out")
                           for ref, row in sorted(m.cost_by_model.items())]),
    ]
    if m.router_choices:
        sections.append(("Router choices", [(ref, str(n)) for ref, n in
                                            sorted(m.router_choices.items())]))
    return sections


@click.command()
@click.option("--since", default=None, help="Only runs created since: 30m, 24h, 7d, 2w or an "
                                            "ISO date.")
@click.option("--workflow", default=None, help="Only runs of this workflow.")
@click.option("--runs", "max_runs", default=1000, show_default=True, type=click.IntRange(1),
              help="Consider at most this many of the newest runs.")
@click.option("--no-events", is_flag=True, help="Skip reading events (faster; no LLM latency, "
                                                "errors or rate-limit figures).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(since: str | None, workflow: str | None, max_runs: int, no_events: bool,
          as_json: bool) -> None:
    """Run metrics: runs and steps by status, success rate, latency percentiles, tokens, cost
    (unknown prices shown as unknown) and rate-limit waiting time.

    Runs stored as running whose process died are counted as abandoned.
    """
    import anyio
    from flowyard import Stack

    start = parse_since(since)
    stack = Stack.default()

    async def main() -> Metrics:
        try:
            return await gather_stats(stack, since=start, workflow=workflow,
                                      max_runs=max_runs, events=not no_events)
        finally:
            await stack.aclose()

    metrics = anyio.run(main)
    if as_json:
        click.echo(json.dumps(metrics.to_dict(), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for title, rows in format_stats(metrics):
        table = Table(title=title, show_header=False, title_justify="left")
        table.add_column("", style="bold")
        table.add_column("")
        for label, value in rows or [("-", "")]:
            table.add_row(label, value)
        console.print(table)
