"""``flowyard runs``: query stored runs (list, show, logs, cost), answer human steps (answer) and
replay a run from a step as a new run (replay).

Works with any storage backend through :class:`flowyard.interfaces.StorageBackend` (the
default stack's storage, or ``--storage URL``). Times are shown in local time; ``--since`` and
``--until`` take an ISO 8601 date/time, UNIX seconds, or an age such as ``30m``, ``2h``,
``7d`` (minutes, hours, days, weeks ago). Money is US dollars; a cost is shown as
``unknown`` when a call's price was unknown (never as 0).

A run stored as ``running`` that no live process holds (its process died: its lease expired,
or its owner pid on this machine is gone) is shown as ``abandoned``, a derived state (see
:mod:`flowyard.engine.lease`); the stored status is left as it is until ``flowyard resume``
takes the run over.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import click

from flowyard.errors import FlowyardError, RunNotFoundError, StorageError

T = TypeVar("T")

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_STATUSES = ("pending", "running", "waiting", "completed", "failed", "cancelled", "partial")
#: --status choices: the stored statuses and the derived ``abandoned``.
_STATES = (*_STATUSES, "abandoned")
_STATE_STYLE = {"completed": "green", "failed": "red", "running": "yellow",
                "partial": "yellow", "cancelled": "magenta", "abandoned": "bold red",
                "waiting": "blue"}
_GROUPS = ("provider", "model", "step", "agent", "workflow", "run")


def parse_time(value: str, *, now: float | None = None) -> float:
    """Return UNIX seconds for ``value``: ISO 8601 (local time when no zone is given), UNIX
    seconds, or an age ``<number><s|m|h|d|w>`` before ``now``.

    Raises:
        ValueError: the value is none of these (the message shows the accepted forms).
    """
    match = _AGE.match(value)
    if match:
        reference = time.time() if now is None else now
        return reference - float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.strip()).timestamp()
    except ValueError:
        raise ValueError(
            f"{value!r} is not a time: use ISO 8601 (2026-01-31 or 2026-01-31T14:00), UNIX "
            "seconds, or an age such as 30m, 2h, 7d") from None


class _TimeParam(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2
    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_time(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


TIME = _TimeParam()


def _fmt_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _fmt_duration(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return "-"
    seconds = end - start
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)}m{sec:02.0f}s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)}h{int(minutes):02d}m"


def _fmt_cost(cost: float | None) -> str:
    return "unknown" if cost is None else f"${cost:.6f}"


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False,
                                                          default=str)
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _with_storage(storage_url: str | None, body: Callable[[Any], Awaitable[T]]) -> T:
    """Open the stack's storage (or ``storage_url``), run ``body(storage)``, close it.

    Storage errors become click errors (exit status 1) with the backend's message.
    """
    import anyio

    from flowyard.stack import Stack  # lazy: the runtime, not for --help

    overrides = {"storage": {"url": storage_url}} if storage_url else None

    async def main() -> T:
        stack = Stack.default(config=overrides)
        async with stack:
            return await body(stack.storage)

    try:
        return anyio.run(main)
    except FlowyardError as exc:
        raise click.ClickException(str(exc)) from None


async def resolve_run_id(storage: Any, given: str) -> str:
    """Return the id of the stored run that ``given`` names: the exact id, or else the one
    run whose id starts with ``given`` (like git's abbreviated commit ids).

    The prefix search pages through every stored run (1,000 per query), newest first.

    Raises:
        RunNotFoundError: no run has that id or an id starting with it.
        StorageError: the prefix matches several runs (the message lists up to five).
    """
    from flowyard.interfaces import RunQuery  # lazy: the runtime, not for --help

    try:
        await storage.get_run(given)
        return given
    except RunNotFoundError:
        if not given:
            raise
    matches: list[str] = []
    offset = 0
    while True:
        page = await storage.list_runs(RunQuery(limit=1000, offset=offset))
        matches.extend(r.id for r in page if r.id.startswith(given))
        if len(page) < 1000:
            break
        offset += len(page)
    if not matches:
        raise RunNotFoundError(f"no run with id {given!r} or an id starting with it")
    if len(matches) > 1:
        shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise StorageError(f"{given!r} is the start of {len(matches)} run ids ({shown}); "
                           "give more characters")
    return matches[0]


def _console() -> Any:
    from rich.console import Console

    return Console()


#: Subcommands of ``flowyard runs`` kept in their own modules, imported when invoked:
#: name -> ``module:attribute``.
RUNS_SUBCOMMANDS: dict[str, str] = {
    "answer": "flowyard.commands.answer:answer",
    "replay": "flowyard.commands.replay:replay",
}


class _RunsGroup(click.Group):
    """``flowyard runs``: the subcommands defined here plus :data:`RUNS_SUBCOMMANDS`."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *RUNS_SUBCOMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is not None or cmd_name not in RUNS_SUBCOMMANDS:
            return found
        import importlib  # lazy: only the invoked subcommand's module is imported

        module, _, attribute = RUNS_SUBCOMMANDS[cmd_name].partition(":")
        command = getattr(importlib.import_module(module), attribute)
        self.add_command(command, cmd_name)
        return command


@click.group(cls=_RunsGroup)
@click.option("--storage", "storage_url", metavar="URL", envvar="FLOWYARD_STORAGE_URL",
              help="Storage URL (default: storage.url, else the default stack's database).")
@click.pass_context
def runs(ctx: click.Context, storage_url: str | None) -> None:
    """Query stored runs: list, show, logs, cost; answer human steps; replay a run."""
    ctx.obj = {"storage_url": storage_url}


async def _running_with_leases(storage: Any, query: Any) -> list[tuple[Any, Any, str]]:
    """Return (run, lease or None, state) of every stored ``running`` run matching the
    filters of ``query`` (paging ignored), in ``query.order``.
    """
    from flowyard.engine.lease import run_state  # lazy: the runtime, not for --help
    from flowyard.interfaces import RunQuery  # lazy: the runtime, not for --help

    found: list[Any] = []
    while True:
        page = await storage.list_runs(RunQuery(
            status="running", workflow_name=query.workflow_name,
            created_after=query.created_after, created_before=query.created_before,
            limit=1000, offset=len(found), order=query.order))
        found.extend(page)
        if len(page) < 1000:
            break
    leases = await storage.get_leases([r.id for r in found])
    now = time.time()
    return [(r, leases.get(r.id), run_state(r, leases.get(r.id), now=now)) for r in found]


async def _with_states(storage: Any, found: list[Any]) -> list[tuple[Any, Any, str]]:
    """Return (run, lease or None, state) for ``found`` (leases are read for running runs)."""
    from flowyard.engine.lease import run_state  # lazy: the runtime, not for --help

    leases = await storage.get_leases([r.id for r in found if r.status == "running"])
    now = time.time()
    return [(r, leases.get(r.id), run_state(r, leases.get(r.id), now=now)) for r in found]


def _lease_json(lease: Any, now: float) -> dict[str, Any] | None:
    if lease is None:
        return None
    from flowyard.serialization import unstructure  # lazy: the runtime, not for --help

    data: dict[str, Any] = unstructure(lease)
    data["heartbeat_age_s"] = round(max(0.0, now - lease.heartbeat_at), 3)
    return data


@runs.command("list")
@click.option("--status", type=click.Choice(_STATES),
              help="Only runs in this state (abandoned: stored as running, but no live process "
                   "holds them; running: only the live ones).")
@click.option("--workflow", "workflow_name", metavar="NAME", help="Only runs of this workflow.")
@click.option("--since", type=TIME, help="Only runs created at or after this time.")
@click.option("--until", type=TIME, help="Only runs created before this time.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="Runs per page.")
@click.option("--page", type=click.IntRange(1), default=1, show_default=True,
              help="Page number (1 is the newest runs, or the oldest with --oldest-first).")
@click.option("--oldest-first", is_flag=True, help="Oldest runs first.")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON (one array of runs, each with its derived 'state' and 'lease').")
@click.pass_obj
def list_runs(obj: dict[str, Any], status: str | None, workflow_name: str | None,
              since: float | None, until: float | None, limit: int, page: int,
              oldest_first: bool, as_json: bool) -> None:
    """List runs, newest first, filtered by state, workflow and creation time.

    A run stored as running whose process died is shown as abandoned (resume it with
    'flowyard resume RUN_ID').
    """
    from flowyard.interfaces import RunQuery  # lazy: the runtime, not for --help
    from flowyard.serialization import unstructure  # lazy: the runtime, not for --help

    offset = (page - 1) * limit
    order = "created_at" if oldest_first else "-created_at"
    derived = status in ("running", "abandoned")
    query = RunQuery(status=None if derived else status, workflow_name=workflow_name,
                     created_after=since, created_before=until, limit=limit,
                     offset=0 if derived else offset, order=order)

    async def body(storage: Any) -> list[tuple[Any, Any, str]]:
        if derived:  # the state depends on leases: filter every running run, then page
            rows = await _running_with_leases(storage, query)
            return [row for row in rows if row[2] == status][offset:offset + limit]
        return await _with_states(storage, list(await storage.list_runs(query)))

    found = _with_storage(obj["storage_url"], body)
    now = time.time()
    if as_json:
        out = []
        for run, lease, state in found:
            row = unstructure(run)
            row.pop("workflow", None)
            row["state"] = state
            row["lease"] = _lease_json(lease, now)
            out.append(row)
        click.echo(json.dumps(out, indent=2, ensure_ascii=False))
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table("run", "workflow", "status", "created", "duration", "tokens", "cost",
                  "resumes")
    # run ids are copied into other commands: never cut them (the other columns give way)
    table.columns[0].no_wrap = True
    table.columns[0].min_width = max((len(run.id) for run, _l, _s in found), default=3)
    for run, _lease, state in found:
        style = _STATE_STYLE.get(state, "")
        table.add_row(escape(run.id), escape(run.workflow_name), f"[{style}]{state}[/]" if style else state,
                      _fmt_time(run.created_at),
                      _fmt_duration(run.started_at, run.finished_at),
                      str(run.input_tokens + run.output_tokens), _fmt_cost(run.cost_usd),
                      str(run.resume_count))
    console = _console()
    if not found:
        console.print("no runs match" + (f" (page {page})" if page > 1 else ""))
        return
    console.print(table)
    if any(state == "abandoned" for _r, _l, state in found):
        console.print("abandoned: stored as running, but its process is gone; continue it with "
                      "'flowyard resume RUN_ID'")
    if len(found) == limit:
        console.print(f"page {page}; more may follow: --page {page + 1}")


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: run, attempts, checkpoints, logs, costs.")
@click.pass_obj
def show(obj: dict[str, Any], run_id: str, as_json: bool) -> None:
    """Show a run: status, inputs, outputs, error, its steps, logs and cost lines."""
    from flowyard.engine.lease import run_state  # lazy: the runtime, not for --help
    from flowyard.serialization import unstructure  # lazy: the runtime, not for --help

    async def body(storage: Any) -> dict[str, Any]:
        full_id = await resolve_run_id(storage, run_id)
        run = await storage.get_run(full_id)
        lease = (await storage.get_leases([full_id])).get(full_id)
        return {
            "run": run,
            "state": run_state(run, lease),
            "lease": lease,
            "attempts": await storage.list_attempts(full_id),
            "checkpoints": await storage.load_checkpoints(full_id),
            "logs": await storage.list_logs(full_id),
            "costs": await storage.list_costs(full_id),
        }

    data = _with_storage(obj["storage_url"], body)
    now = time.time()
    if as_json:
        lease = data.pop("lease")
        out = unstructure(data)
        out["lease"] = _lease_json(lease, now)
        click.echo(json.dumps(out, indent=2, ensure_ascii=False, default=str))
        return
    from rich.markup import escape
    from rich.table import Table

    from flowyard.engine.lease import describe_lease  # lazy: the runtime, not for --help

    run, lease, state = data["run"], data["lease"], data["state"]
    console = _console()
    style = _STATE_STYLE.get(state, "")
    console.print(f"[bold]run {run.id}[/]  workflow {escape(run.workflow_name)}  status "
                  + (f"[{style}]{state}[/]" if style else state))
    if state == "abandoned":
        owner = (f"its last owner ({escape(describe_lease(lease, now))}) is gone"
                 if lease is not None else "no process holds it")
        console.print(f"[bold red]abandoned:[/] stored as running, but {owner}; continue it "
                      f"with: flowyard resume {run.id}")
    elif lease is not None and state == "running":
        console.print(f"executed by {escape(describe_lease(lease, now))}")
    console.print(f"created {_fmt_time(run.created_at)}  started {_fmt_time(run.started_at)}  "
                  f"finished {_fmt_time(run.finished_at)}  duration "
                  f"{_fmt_duration(run.started_at, run.finished_at)}")
    console.print(f"tokens in {run.input_tokens} out {run.output_tokens}  cost "
                  f"{_fmt_cost(run.cost_usd)}  resumes {run.resume_count}  workflow hash "
                  f"{run.workflow_hash[:12] or '-'}")
    console.print(f"inputs: {_short(run.inputs, 200)}", markup=False)
    console.print(f"outputs: {_short(run.outputs, 200)}", markup=False)
    if run.error:
        console.print(f"[red]error:[/] {run.error}")

    steps = Table("step", "attempt", "status", "duration", "tokens", "cost", "output / error",
                  title="steps")
    for a in data["attempts"]:
        detail = a.error if a.error else _short(a.output)
        if a.error_type:
            detail = f"{a.error_type}: {detail}"
        steps.add_row(a.step_key, str(a.attempt), a.status,
                      _fmt_duration(a.started_at, a.finished_at),
                      str(a.input_tokens + a.output_tokens), _fmt_cost(a.cost_usd), detail)
    console.print(steps if data["attempts"] else "no step attempts recorded")
    done = data["checkpoints"]
    console.print(f"{len(done)} step key(s) completed (checkpointed)")
    if data["logs"]:
        console.print(f"{len(data['logs'])} log line(s): flowyard runs logs {run.id}")
    if data["costs"]:
        _print_cost_table(console, data["costs"], "step")


@runs.command("logs")
@click.argument("run_id")
@click.option("--level", type=click.Choice(["debug", "info", "warning", "error"]),
              help="Only lines at this level or above.")
@click.option("--step", "step_id", metavar="STEP", help="Only lines of this step.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@click.pass_obj
def logs(obj: dict[str, Any], run_id: str, level: str | None, step_id: str | None,
         as_json: bool) -> None:
    """Print a run's log lines in order."""
    from flowyard.serialization import unstructure  # lazy: the runtime, not for --help

    order = ["debug", "info", "warning", "error"]

    async def body(storage: Any) -> list[Any]:
        return list(await storage.list_logs(await resolve_run_id(storage, run_id)))

    lines = _with_storage(obj["storage_url"], body)
    if level is not None:
        floor = order.index(level)
        lines = [r for r in lines if r.level not in order or order.index(r.level) >= floor]
    if step_id is not None:
        lines = [r for r in lines if r.step_id == step_id]
    for record in lines:
        if as_json:
            click.echo(json.dumps(unstructure(record), ensure_ascii=False))
        else:
            where = f" [{record.step_id}]" if record.step_id else ""
            click.echo(f"{_fmt_time(record.time)} {record.level.upper():7}{where} "
                       f"{record.message}")


def _group_costs(lines: list[Any], by: str) -> list[dict[str, Any]]:
    key_of: dict[str, Callable[[Any], str]] = {
        "provider": lambda c: c.provider,
        "model": lambda c: f"{c.provider}/{c.model}",
        "step": lambda c: c.step_id or "-",
        "agent": lambda c: c.agent or "-",
        "workflow": lambda c: c.workflow_name or "-",
        "run": lambda c: c.run_id,
    }
    groups: dict[str, dict[str, Any]] = {}
    for line in lines:
        key = key_of[by](line)
        g = groups.setdefault(key, {by: key, "calls": 0, "input_tokens": 0, "output_tokens": 0,
                                    "cost_usd": 0.0, "unpriced_calls": 0,
                                    "estimated_calls": 0, "overshoot_usd": 0.0})
        g["calls"] += 1
        # tokens counted locally (a stream without usage or cut short), and cost past the
        # budget reservation (a server ignoring max_tokens)
        g["estimated_calls"] += int(line.estimated)
        g["overshoot_usd"] += line.overshoot_usd
        g["input_tokens"] += line.input_tokens
        g["output_tokens"] += line.output_tokens
        if line.cost_usd is None:
            g["unpriced_calls"] += 1
        else:
            g["cost_usd"] += line.cost_usd
    rows = sorted(groups.values(), key=lambda g: -g["cost_usd"])
    for g in rows:
        g["cost_known"] = g["unpriced_calls"] == 0
    return rows


def _print_cost_table(console: Any, lines: list[Any], by: str) -> None:
    from rich.table import Table

    rows = _group_costs(lines, by)
    table = Table(by, "calls", "input tokens", "output tokens", "cost (USD)", title="cost")
    for g in rows:
        if g["unpriced_calls"] == g["calls"]:
            cost = "unknown"
        else:
            cost = f"${g['cost_usd']:.6f}"
            if g["unpriced_calls"]:
                cost += f" + {g['unpriced_calls']} unpriced call(s)"
        if g["estimated_calls"]:
            cost += f" (estimated: {g['estimated_calls']} call(s))"
        if g["overshoot_usd"]:
            cost += f" (over reservation: ${g['overshoot_usd']:.6f})"
        table.add_row(g[by], str(g["calls"]), str(g["input_tokens"]), str(g["output_tokens"]),
                      cost)
    known = sum(g["cost_usd"] for g in rows)
    unpriced = sum(g["unpriced_calls"] for g in rows)
    estimated = sum(g["estimated_calls"] for g in rows)
    console.print(table)
    console.print(f"total ${known:.6f}" + (f" (+ {unpriced} call(s) of unknown price)"
                                          if unpriced else "")
                  + (f" ({estimated} call(s) estimated from locally counted tokens)"
                     if estimated else ""))


@runs.command("cost")
@click.argument("run_id", required=False)
@click.option("--by", type=click.Choice(_GROUPS), default="model", show_default=True,
              help="Group cost lines by this field.")
@click.option("--since", type=TIME, help="Only calls at or after this time.")
@click.option("--until", type=TIME, help="Only calls before this time.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def cost(obj: dict[str, Any], run_id: str | None, by: str, since: float | None,
         until: float | None, as_json: bool) -> None:
    """Sum LLM cost lines (tokens and US dollars) of one run, or of all runs."""

    async def body(storage: Any) -> list[Any]:
        full_id = None if run_id is None else await resolve_run_id(storage, run_id)
        return list(await storage.list_costs(full_id))

    lines = _with_storage(obj["storage_url"], body)
    lines = [c for c in lines if (since is None or c.time >= since)
             and (until is None or c.time < until)]
    if as_json:
        rows = _group_costs(lines, by)
        total = sum(g["cost_usd"] for g in rows)
        unpriced = sum(g["unpriced_calls"] for g in rows)
        click.echo(json.dumps({"by": by, "groups": rows, "total_usd": total,
                               "unpriced_calls": unpriced, "cost_known": unpriced == 0},
                              indent=2))
        return
    console = _console()
    if not lines:
        console.print("no cost lines")
        return
    _print_cost_table(console, lines, by)
