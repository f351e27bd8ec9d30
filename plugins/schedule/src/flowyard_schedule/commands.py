"""``flowyard schedule``: add, list, remove, pause and resume schedules; run the scheduler.

The storage is the stack's (``[storage] url`` / ``FLOWYARD_STORAGE__URL``), shared by every
scheduler and by ``flowyard runs``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import click
from flowyard import FlowyardError, Stack, check_inputs, parse_yaml

from flowyard_schedule.scheduler import LEASE_RUN_ID, Scheduler, ScheduleStore
from flowyard_schedule.spec import Schedule, ScheduleError, check_name, iso_utc, parse_every

__all__ = ["schedule", "parse_input_pairs", "parse_time"]


def parse_input_pairs(pairs: tuple[str, ...]) -> dict[str, Any]:
    """Parse ``-i key=value`` pairs (values are YAML scalars or JSON, as ``flowyard run -i``).

    Raises:
        click.BadParameter: a pair without ``=`` or with an empty key.
        WorkflowValidationError: a value that does not parse.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            shown = pair if len(pair) <= 80 else pair[:80] + "..."
            raise click.BadParameter(f"{shown!r} is not key=value", param_hint="-i/--input")
        out[key.strip()] = parse_yaml(raw, path=f"-i {key.strip()}")[0] if raw.strip() else ""
    return out


def parse_time(text: str, tz: str) -> float:
    """Parse an ISO 8601 time (``2026-12-24T08:00``); without an offset it is read in ``tz``.

    Returns:
        UNIX seconds.

    Raises:
        click.BadParameter: not an ISO time.
    """
    from zoneinfo import ZoneInfo

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO time such as 2026-12-24T08:00",
                                 param_hint="--start-at") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(tz))
    return moment.timestamp()


def _run_async(fn: Any) -> Any:
    stack = Stack.default()

    async def main() -> Any:
        try:
            await stack.open()
            return await fn(stack)
        finally:
            await stack.aclose()

    try:
        return anyio.run(main)
    except (ScheduleError, FlowyardError) as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
def schedule() -> None:
    """Run workflows on cron expressions or intervals (schedules live in the storage)."""


@schedule.command("add")
@click.argument("name")
@click.argument("workflow_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--cron", default=None, help='A cron expression, e.g. "*/5 * * * *" (5 fields; '
              "a 6th field is seconds).")
@click.option("--every", default=None, help="An interval: 30s, 10m, 2h, 1d, 1w.")
@click.option("--tz", default="UTC", show_default=True,
              help="IANA time zone of the cron expression (Europe/Berlin).")
@click.option("--catch-up", type=click.Choice(["skip", "once", "all"]), default="skip",
              show_default=True, help="Missed fires after downtime: skip them, fire the latest "
              "once, or fire all (at most --max-catch-up).")
@click.option("-i", "--input", "pairs", multiple=True, metavar="KEY=VALUE",
              help="A workflow input (repeatable).")
@click.option("--inputs", "inputs_json", default=None, metavar="JSON",
              help="Workflow inputs as a JSON object (-i values override).")
@click.option("--start-at", default=None, help="ISO time of the first possible fire (and the "
              "interval's anchor: the first fire of --every is at it); without an offset it is "
              "in --tz. Default: now (rounded up to a whole second), plus the interval for "
              "--every.")
@click.option("--max-catch-up", default=100, show_default=True, type=click.IntRange(1),
              help="Most missed fires --catch-up all fires at once.")
@click.option("--misfire-grace", default=60.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Seconds after its time within which a fire is on time, not missed.")
@click.option("--replace", is_flag=True, help="Replace a schedule of the same name.")
def add_cmd(name: str, workflow_file: str, cron: str | None, every: str | None, tz: str,
            catch_up: str, pairs: tuple[str, ...], inputs_json: str | None,
            start_at: str | None, max_catch_up: int, misfire_grace: float,
            replace: bool) -> None:
    """Add schedule NAME running WORKFLOW_FILE (validated now, read again at each fire)."""
    try:
        check_name(name)
        if (cron is None) == (every is None):
            raise click.UsageError("give exactly one of --cron and --every")
        inputs: dict[str, Any] = {}
        if inputs_json is not None:
            try:
                inputs = json.loads(inputs_json)
            except json.JSONDecodeError as exc:
                raise click.BadParameter(f"not JSON: {exc}", param_hint="--inputs") from None
            if not isinstance(inputs, dict):
                raise click.BadParameter("must be a JSON object", param_hint="--inputs")
        inputs.update(parse_input_pairs(pairs))
        now = time.time()
        every_s = parse_every(every) if every is not None else None
        path = Path(workflow_file).resolve()
        spec = Schedule(
            name=name, workflow=str(path),
            workflow_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            cron=cron, every_s=every_s, tz=tz,
            catch_up=catch_up, inputs=inputs,
            start_at=(parse_time(start_at, tz) if start_at
                      else float(math.ceil(now)) + (every_s or 0.0)),
            created_at=now,
            max_catch_up=max_catch_up, misfire_grace_s=misfire_grace)
    except (ScheduleError, FlowyardError) as exc:
        raise click.ClickException(str(exc)) from exc

    async def go(stack: Stack) -> None:
        check_inputs(stack.load_workflow(path), spec.inputs)
        await ScheduleStore(stack.storage).add(spec, replace=replace)

    _run_async(go)
    click.echo(f"schedule {name}: {spec.when}, next {iso_utc(spec.next_after(now))}")


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_cmd(as_json: bool) -> None:
    """List schedules: when, next fire (in its zone), last fire and its run; and which
    scheduler holds the lease (text output).
    """
    from zoneinfo import ZoneInfo

    async def go(stack: Stack) -> tuple[list[dict[str, Any]], Any]:
        store = ScheduleStore(stack.storage)
        leases = await stack.storage.get_leases([LEASE_RUN_ID])
        rows = []
        now = time.time()
        for spec in await store.list():
            state = await store.state(spec.name)
            nxt = None if spec.paused else spec.next_after(max(now, float(
                state.get("cursor", spec.created_at))))
            changed = None
            try:
                digest = hashlib.sha256(Path(spec.workflow).read_bytes()).hexdigest()
                changed = digest != spec.workflow_sha256
            except OSError:
                changed = None
            last = state.get("last_scheduled_for")
            rows.append({
                "name": spec.name, "workflow": spec.workflow, "cron": spec.cron,
                "every_s": spec.every_s, "tz": spec.tz, "catch_up": spec.catch_up,
                "paused": spec.paused, "inputs": spec.inputs,
                "next": (datetime.fromtimestamp(nxt, ZoneInfo(spec.tz)).isoformat()
                         if nxt is not None else None),
                "last_scheduled_for": iso_utc(last) if last is not None else None,
                "last_run_id": state.get("last_run_id"), "last_status": state.get("last_status"),
                "last_error": state.get("last_error"), "fired": state.get("fired", 0),
                "failed": state.get("failed", 0), "skipped": state.get("skipped", 0),
                "workflow_changed": changed,
            })
        return rows, leases.get(LEASE_RUN_ID)

    rows, lease = _run_async(go)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if lease is None or lease.expired(time.time()):
        click.echo("scheduler: none running (start one with `flowyard schedule run`)")
    else:
        click.echo(f"scheduler: {lease.owner} (pid {lease.pid} on {lease.host}), lease until "
                   f"{iso_utc(lease.expires_at)}")
    if not rows:
        click.echo("no schedules")
        return
    for row in rows:
        when = f"cron {row['cron']!r}" if row["cron"] else f"every {row['every_s']:g}s"
        click.echo(f"{row['name']}  {when}  tz={row['tz']}  catch-up={row['catch_up']}"
                   f"{'  PAUSED' if row['paused'] else ''}")
        click.echo(f"  workflow: {row['workflow']}"
                   + ("  (changed since added)" if row["workflow_changed"] else "")
                   + ("  (file missing)" if row["workflow_changed"] is None else ""))
        click.echo(f"  next: {row['next'] or '-'}")
        last = (f"{row['last_scheduled_for']} run {row['last_run_id'] or '-'} "
                f"{row['last_status']}" if row["last_scheduled_for"] else "never")
        click.echo(f"  last: {last}  (fired {row['fired']}, failed {row['failed']}, "
                   f"skipped {row['skipped']})")
        if row["last_error"]:
            click.echo(f"  last error: {row['last_error']}")


@schedule.command("remove")
@click.argument("name")
def remove_cmd(name: str) -> None:
    """Remove schedule NAME (its past runs stay)."""

    async def go(stack: Stack) -> None:
        await ScheduleStore(stack.storage).remove(name)

    _run_async(go)
    click.echo(f"removed schedule {name}")


@schedule.command("pause")
@click.argument("name")
def pause_cmd(name: str) -> None:
    """Pause schedule NAME (fire times while paused are skipped)."""
    _run_async(lambda stack: ScheduleStore(stack.storage).set_paused(name, True))
    click.echo(f"paused schedule {name}")


@schedule.command("resume")
@click.argument("name")
def resume_cmd(name: str) -> None:
    """Resume schedule NAME."""
    _run_async(lambda stack: ScheduleStore(stack.storage).set_paused(name, False))
    click.echo(f"resumed schedule {name}")


@schedule.command("run")
@click.option("--once", is_flag=True, help="Fire what is due, wait for those runs, exit "
              "(for cron jobs and systemd timers).")
@click.option("--poll-s", default=5.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Seconds between lease renewals and schedule checks.")
@click.option("--lease-s", default=30.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Seconds the scheduler lease lasts without renewal (another scheduler "
              "takes over after that); at least 3 x --poll-s.")
@click.option("--max-parallel", default=8, show_default=True, type=click.IntRange(1),
              help="Most fired runs executing at once in this scheduler.")
def run_cmd(once: bool, poll_s: float, lease_s: float, max_parallel: int) -> None:
    """Run the scheduler: fire due schedules until SIGINT/SIGTERM. Any number of schedulers
    may run against one storage; the one holding the lease fires.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("flowyard.schedule")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    async def go(stack: Stack) -> int:
        scheduler = Scheduler(stack, lease_s=lease_s, max_parallel=max_parallel)
        if once:
            outcomes = await scheduler.fire_due()
            lease = scheduler.lease
            if lease is not None and lease.holder is not None and \
                    lease.holder.owner != lease.owner:
                click.echo(f"another scheduler ({lease.holder.owner}) holds the lease until "
                           f"{iso_utc(lease.holder.expires_at)}; nothing fired", err=True)
            elif lease is not None:
                await lease.release()
            for o in outcomes:
                click.echo(f"{o.schedule} {iso_utc(o.scheduled_for)} run {o.run_id or '-'} "
                           f"{o.status}" + (f": {o.error}" if o.error else ""))
            return 0
        stop = anyio.Event()

        async def on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    stop.set()
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(on_signal)
            await scheduler.run(poll_s=poll_s, stop=stop)
            tg.cancel_scope.cancel()
        return 0

    _run_async(go)
