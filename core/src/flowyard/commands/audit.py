"""``flowyard audit``: read, verify and export the tamper-evident audit log.

Works with any storage backend that keeps an audit log
(:class:`flowyard.interfaces.SupportsAuditLog`: the memory and SQL backends), the default
stack's storage or ``--storage URL``. See docs/audit.md.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import click

from flowyard.commands.runs import _with_storage
from flowyard.errors import StorageError

_PAGE = 1000


def _audit_log(storage: Any) -> Any:
    """Return ``storage`` as a :class:`~flowyard.interfaces.SupportsAuditLog`.

    Raises:
        StorageError: the backend keeps no audit log.
    """
    from flowyard.interfaces import SupportsAuditLog  # lazy: the runtime, not for --help

    if not isinstance(storage, SupportsAuditLog):
        raise StorageError(f"the storage backend {type(storage).__name__} keeps no audit log")
    return storage


async def _records(log: Any, after: int) -> list[Any]:
    found: list[Any] = []
    while True:
        page = await log.list_audit(after_seq=after, limit=_PAGE)
        found.extend(page)
        if len(page) < _PAGE:
            return found
        after = max(r.seq for r in page)


@click.group()
@click.option("--storage", "storage_url", metavar="URL", envvar="FLOWYARD_STORAGE_URL",
              help="Storage URL (default: storage.url, else the default stack's database).")
@click.pass_context
def audit(ctx: click.Context, storage_url: str | None) -> None:
    """The audit log: list, show, verify, export."""
    ctx.obj = {"storage_url": storage_url}


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


@audit.command("list")
@click.option("--action", help="Only records of this action (file.write, command.run...).")
@click.option("--actor", help="Only records of this actor (user:NAME, api_key:ID).")
@click.option("--tenant", help="Only records of this tenant.")
@click.option("--run", "run_id", metavar="RUN_ID", help="Only records of this run.")
@click.option("--outcome", type=click.Choice(["ok", "error", "denied"]),
              help="Only records with this outcome.")
@click.option("--after", type=click.IntRange(0), default=0, show_default=True,
              help="Only records after this sequence number.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True,
              help="Show at most this many (the newest matching ones).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@click.pass_obj
def list_records(obj: dict[str, Any], action: str | None, actor: str | None,
                 tenant: str | None, run_id: str | None, outcome: str | None, after: int,
                 limit: int, as_json: bool) -> None:
    """List audit records, oldest first (the newest LIMIT that match)."""
    from flowyard.audit import audit_to_json  # lazy: not for --help

    async def body(storage: Any) -> list[Any]:
        return await _records(_audit_log(storage), after)

    wanted = {"action": action, "actor": actor, "tenant": tenant, "run_id": run_id,
              "outcome": outcome}
    found = [r for r in _with_storage(obj["storage_url"], body)
             if all(v is None or getattr(r, k) == v for k, v in wanted.items())][-limit:]
    if as_json:
        for record in found:
            click.echo(audit_to_json(record))
        return
    if not found:
        click.echo("no audit records")
        return
    for r in found:
        who = r.actor + (f"@{r.tenant}" if r.tenant else "")
        click.echo(f"{r.seq:>7}  {_when(r.time)}  {who:<24} {r.action:<16} {r.outcome:<7} "
                   f"{r.resource}")


@audit.command("show")
@click.argument("seq", type=click.IntRange(1))
@click.pass_obj
def show(obj: dict[str, Any], seq: int) -> None:
    """Show one audit record (every field, as JSON)."""
    from flowyard.audit import audit_to_json  # lazy: not for --help

    async def body(storage: Any) -> Any:
        return await _audit_log(storage).get_audit(seq)

    record = _with_storage(obj["storage_url"], body)
    if record is None:
        raise click.ClickException(f"no audit record {seq}")
    click.echo(json.dumps(json.loads(audit_to_json(record)), indent=2, ensure_ascii=False))


def _file_records(path: str) -> Iterator[Any]:
    from flowyard.audit import audit_from_json  # lazy: not for --help

    with open(path, encoding="utf-8") as stream:
        for number, line in enumerate(stream, 1):
            if line.strip():
                try:
                    yield audit_from_json(line)
                except ValueError as exc:
                    raise click.ClickException(f"{path}:{number}: {exc}") from None


@audit.command("verify")
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False),
              help="Verify an exported JSON-lines file instead of the storage.")
@click.option("--expect-head", metavar="SEQ:HASH",
              help="Also require this head (as printed by an earlier verify): detects "
                   "records removed from the end.")
@click.pass_obj
def verify(obj: dict[str, Any], path: str | None, expect_head: str | None) -> None:
    """Check the hash chain from the genesis. Exit status 1 names the first bad record."""
    from flowyard.audit import verify_audit, verify_audit_records  # lazy: not for --help

    if path is not None:
        result = verify_audit_records(_file_records(path))
    else:
        async def body(storage: Any) -> Any:
            return await verify_audit(_audit_log(storage))

        result = _with_storage(obj["storage_url"], body)
    if not result.ok:
        click.echo(f"FAILED at record {result.bad_seq}: {result.reason} "
                   f"({result.head_seq} record(s) before it are intact)", err=True)
        sys.exit(1)
    if expect_head is not None:
        seq_text, _, wanted_hash = expect_head.partition(":")
        if not seq_text.isdigit() or not wanted_hash:
            raise click.BadParameter("use SEQ:HASH", param_hint="--expect-head")
        wanted_seq = int(seq_text)
        if wanted_seq > result.head_seq:
            click.echo(f"FAILED at record {result.head_seq + 1}: the log ends at record "
                       f"{result.head_seq}, the expected head is record {wanted_seq} "
                       "(records were removed from the end)", err=True)
            sys.exit(1)
        if wanted_seq == result.head_seq and wanted_hash != result.head_hash:
            click.echo(f"FAILED at record {wanted_seq}: its hash is not the expected head's",
                       err=True)
            sys.exit(1)
    click.echo(f"ok: {result.checked} record(s) intact; head {result.head_seq}:"
               f"{result.head_hash}")


@audit.command("export")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
              help="Write to this file (default: standard output).")
@click.option("--after", type=click.IntRange(0), default=0, show_default=True,
              help="Only records after this sequence number.")
@click.pass_obj
def export(obj: dict[str, Any], output: str | None, after: int) -> None:
    """Export the audit records as JSON lines (one record per line, every field), in order."""
    from flowyard.audit import audit_to_json  # lazy: not for --help

    async def body(storage: Any) -> list[Any]:
        return await _records(_audit_log(storage), after)

    lines = [audit_to_json(r) + "\n" for r in _with_storage(obj["storage_url"], body)]
    if output is None:
        click.echo("".join(lines), nl=False)
        return
    with open(output, "w", encoding="utf-8") as stream:
        stream.writelines(lines)
    click.echo(f"{len(lines)} record(s) written to {output}", err=True)
