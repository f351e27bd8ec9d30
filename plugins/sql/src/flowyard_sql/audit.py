"""The hash-chained audit log of :class:`flowyard_sql.SQLStorage` (table ``fy_audit``,
migration 0008).

:class:`AuditLogMixin` implements the core's :class:`~flowyard.SupportsAuditLog`. An append
is one write transaction (``SQLStorage._write``) that reads the chain's head (the row with
the highest ``seq``), chains the new records after it with :func:`flowyard.chain_audit` and
inserts them. Appends are serialised across processes, so the chain never forks:

* SQLite: the write runs inside ``BEGIN IMMEDIATE`` (on a file: in the group commit of the
  process's writer thread), which holds the database's write lock from its start: no other
  process reads the head until this transaction committed.
* PostgreSQL: the transaction first takes the transaction-scoped advisory lock
  :data:`AUDIT_LOCK_KEY` (``pg_advisory_xact_lock``); the head is read after it (READ
  COMMITTED: a fresh snapshot per statement), so it is the head the previous holder
  committed.

``seq`` is the primary key besides: two inserts of one ``seq`` cannot both commit.

Rows are read back as stored: ``details`` that is not valid JSON is returned as its raw text
(the record's hash then does not match, and ``flowyard audit verify`` reports it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from flowyard import AuditRecord, chain_audit

from flowyard_sql.schema import audit

if TYPE_CHECKING:
    from flowyard_sql.storage import _Exec

__all__ = ["AuditLogMixin", "AUDIT_LOCK_KEY"]

#: The PostgreSQL advisory lock key that serialises audit appends ("fyaudit" as a number).
AUDIT_LOCK_KEY = 0x6679_6175_6469_74

_COLUMNS = tuple(c.name for c in audit.c)


class _Statements:
    """Built once per process (the raw SQLite writer caches compiled statements by ``id()``)."""

    def __init__(self) -> None:
        # literal LIMIT: the raw SQLite writer binds only the parameters it is given
        self.head = sa.text("SELECT seq, hash FROM fy_audit ORDER BY seq DESC LIMIT 1")
        self.insert = audit.insert()
        self.lock = sa.text("SELECT pg_advisory_xact_lock(:b_key)")


_STATEMENTS = _Statements()


def _row(record: AuditRecord) -> dict[str, Any]:
    row = {name: getattr(record, name) for name in _COLUMNS}
    row["details"] = json.dumps(record.details, sort_keys=True, ensure_ascii=False)
    return row


def _record(row: Sequence[Any]) -> AuditRecord:
    values = dict(zip(_COLUMNS, row, strict=True))
    text = values["details"]
    try:
        values["details"] = json.loads(text)
    except json.JSONDecodeError:
        values["details"] = text  # damaged: returned as stored, verification reports it
    return AuditRecord(**values)


class AuditLogMixin:
    """:class:`~flowyard.SupportsAuditLog` on ``fy_audit`` (see the module docstring)."""

    if TYPE_CHECKING:
        dialect: str

        async def _write(self, fn: Any) -> Any: ...
        async def _call(self, fn: Any, *args: Any) -> Any: ...
        def _read(self) -> Any: ...

    async def append_audit(self, records: Sequence[AuditRecord]) -> list[AuditRecord]:
        """Append ``records`` after the chain's head, in one transaction serialised against
        every other appender (of any process).

        Args:
            records: the records (``seq``, ``prev_hash`` and ``hash`` are ignored).

        Returns:
            the records as stored, chained.

        Raises:
            StorageError: a record is not JSON-ready (nothing written), or the database
                failed.
        """
        if not records:
            return []
        sql = _STATEMENTS
        postgres = self.dialect == "postgresql"

        def append(ex: _Exec) -> list[AuditRecord]:
            if postgres:
                ex.first(sql.lock, {"b_key": AUDIT_LOCK_KEY})
            found = ex.first(sql.head, {})
            head = None if found is None else AuditRecord(action="", actor="",
                                                          seq=int(found[0]),
                                                          hash=_text(found[1]))
            chained = chain_audit(records, head)
            ex.execute(sql.insert, [_row(r) for r in chained])
            return chained

        return await self._write(append)  # type: ignore[no-any-return]

    async def list_audit(self, *, after_seq: int = 0, limit: int = 1000) -> list[AuditRecord]:
        """Return up to ``limit`` records with ``seq > after_seq``, in ``seq`` order.

        Raises:
            ValueError: ``limit`` is not positive.
            StorageError: the database failed.
        """
        if limit < 1:
            raise ValueError(f"limit must be positive, got {limit}")
        stmt = (sa.select(audit).where(audit.c.seq > after_seq).order_by(audit.c.seq)
                .limit(limit))
        return await self._select(stmt)  # type: ignore[no-any-return]

    async def get_audit(self, seq: int) -> AuditRecord | None:
        """Return the record ``seq``, or None. Raises StorageError when the database failed."""
        found = await self._select(sa.select(audit).where(audit.c.seq == seq))
        return found[0] if found else None

    async def audit_head(self) -> AuditRecord | None:
        """Return the last record, or None when the log is empty."""
        found = await self._select(sa.select(audit).order_by(audit.c.seq.desc()).limit(1))
        return found[0] if found else None

    async def _select(self, stmt: Any) -> list[AuditRecord]:
        def select() -> list[AuditRecord]:
            with self._read() as conn:
                rows = conn.execute(stmt).all()
            return [_record(tuple(r)) for r in rows]

        return await self._call(select)  # type: ignore[no-any-return]


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
