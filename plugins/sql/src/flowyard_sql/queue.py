"""The durable task queue and key-value listing of :class:`flowyard_sql.SQLStorage`.

:class:`TaskQueueMixin` implements the core's :class:`~flowyard.interfaces.SupportsTaskQueue`
and :class:`~flowyard.interfaces.SupportsKeyValueListing` on the table ``fy_tasks`` (migration
0007) and ``fy_kv``. It runs on the storage's own plumbing: every write is one transaction
through ``SQLStorage._write`` (on a SQLite file: a request of the group commit, run by the one
writer thread of the process inside ``BEGIN IMMEDIATE``), every read one ``SQLStorage._call``.

Claiming is atomic across processes:

* PostgreSQL: ``SELECT ... ORDER BY priority DESC, created_at, id LIMIT 1 FOR UPDATE SKIP
  LOCKED`` (the best ``queued`` task, and the best ``running`` one whose lease expired), then
  ``UPDATE`` of the chosen row, in one transaction: concurrent workers skip each other's rows
  instead of waiting or taking the same one.
* SQLite: the select and the update run inside one ``BEGIN IMMEDIATE`` transaction, which
  holds the database's write lock from its start, so no other process (and, through the group
  commit, no other write of this process) runs between them.

The other state changes are conditional ``UPDATE`` statements (``WHERE id = ... AND worker =
... AND status = 'running'``): the database decides against the row's current state, so a
worker that lost its lease cannot renew or finish the task, and a cancel racing a claim
either cancels a ``queued`` task or flags the ``running`` one, never overwrites it.

Values: ``inputs``, ``outputs`` and ``metadata`` are stored as JSON text (a value that is not
JSON-ready raises :class:`~flowyard.StorageError` naming the task and field, and nothing is
written). Every value read back is checked: damaged JSON, text that is not UTF-8 (SQLite
columns are read as bytes and decoded here) or a value of the wrong type raises StorageError
naming the task and the field.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import sqlalchemy as sa
from flowyard import StorageError, TaskNotFoundError, TaskQuery, TaskRecord

from flowyard_sql.schema import kv, tasks

if TYPE_CHECKING:
    from flowyard_sql.storage import _Exec

__all__ = ["TaskQueueMixin", "TASK_STATUSES", "END_STATUSES"]

T = TypeVar("T")

#: Every status a task can have, and those that end it.
TASK_STATUSES = frozenset({"queued", "running", "completed", "failed", "cancelled"})
END_STATUSES = frozenset({"completed", "failed", "cancelled"})

_COLUMNS = tuple(c.name for c in tasks.c)
_JSON = ("inputs", "outputs", "metadata")
_TEXT = frozenset(c.name for c in tasks.c if isinstance(c.type, sa.String))  # Text included
_INT = frozenset(c.name for c in tasks.c if isinstance(c.type, sa.Integer))
_FLOAT = frozenset(c.name for c in tasks.c if isinstance(c.type, sa.Float))
_BOOL = frozenset(c.name for c in tasks.c if isinstance(c.type, sa.Boolean))
_NULLABLE = frozenset(c.name for c in tasks.c if c.nullable)

# Qualified: on SQLite the select list aliases ``CAST(id AS BLOB) AS id``, and an unqualified
# name in ORDER BY would mean that alias (sorting by a computed value, not the index).
_ORDER = "fy_tasks.priority DESC, fy_tasks.created_at, fy_tasks.id"


def _select_list(dialect: str) -> str:
    """The column list of a task row in :data:`_COLUMNS` order. On SQLite, text columns are
    read as bytes (``CAST(... AS BLOB)``) so that text that is not UTF-8 reaches
    :func:`_task_from_row`, which names the task and field, instead of failing in the driver.
    """
    if dialect != "sqlite":
        return ", ".join(_COLUMNS)
    return ", ".join(f"CAST({n} AS BLOB) AS {n}" if n in _TEXT else n for n in _COLUMNS)


def _columns(dialect: str) -> list[Any]:
    """:func:`_select_list` as SQLAlchemy column expressions."""
    if dialect != "sqlite":
        return list(tasks.c)
    return [sa.cast(c, sa.LargeBinary).label(c.name) if c.name in _TEXT else c for c in tasks.c]


class _Statements:
    """The statements of one dialect, built once: the raw SQLite writer caches each compiled
    statement by its ``id()``, so a statement must live as long as the process. Values are
    bound parameters (``b_*`` in WHERE clauses, column names in SET/VALUES lists).
    """

    def __init__(self, dialect: str) -> None:
        lock = " FOR UPDATE SKIP LOCKED" if dialect == "postgresql" else ""
        select = f"SELECT {_select_list(dialect)} FROM fy_tasks"
        #: the best queued task / the best running one whose lease expired before b_now
        self.next_queued = sa.text(
            f"{select} WHERE fy_tasks.status = 'queued' ORDER BY {_ORDER} LIMIT 1{lock}")
        self.next_expired = sa.text(
            f"{select} WHERE fy_tasks.status = 'running' "
            f"AND fy_tasks.lease_expires_at < :b_now "
            f"ORDER BY {_ORDER} LIMIT 1{lock}")
        by_id = tasks.c.id == sa.bindparam("b_id")
        running = tasks.c.status == sa.bindparam("b_running")
        held = sa.and_(by_id, running, tasks.c.worker == sa.bindparam("b_worker"))
        self.get = sa.select(*_columns(dialect)).where(by_id)
        self.exists = sa.select(tasks.c.id).where(by_id)
        self.by_key = sa.select(tasks.c.id).where(
            tasks.c.tenant == sa.bindparam("b_tenant"),
            tasks.c.idempotency_key == sa.bindparam("b_key"))
        self.insert = tasks.insert()
        #: PostgreSQL: insert unless another transaction stored this id or this tenant's key
        #: first (any unique index; the two may commit at the same moment); ``RETURNING id``
        #: tells whether this statement inserted (psycopg reports no rowcount for it through
        #: SQLAlchemy). SQLite needs no such statement: nothing runs between the checks and
        #: the insert of a write transaction.
        self.insert_once: Any = None
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            self.insert_once = pg_insert(tasks).on_conflict_do_nothing().returning(tasks.c.id)
        self.update_by_id = tasks.update().where(by_id)
        self.update_held = tasks.update().where(held)
        self.cancel_queued = tasks.update().where(
            by_id, tasks.c.status == sa.bindparam("b_queued"))
        self.flag_running = tasks.update().where(by_id, running)
        self.retry = tasks.update().where(
            by_id, sa.or_(tasks.c.status == sa.bindparam("b_failed"),
                          tasks.c.status == sa.bindparam("b_cancelled")))
        self.read_columns = _columns(dialect)


_STATEMENTS: dict[str, _Statements] = {}


def _statements(dialect: str) -> _Statements:
    found = _STATEMENTS.get(dialect)
    if found is None:
        found = _STATEMENTS[dialect] = _Statements(dialect)
    return found


def _damaged(task_id: str, name: str, problem: str) -> StorageError:
    return StorageError(f"field {name!r} of task {task_id} is damaged in the database and "
                        f"cannot be read: {problem}")


def _task_from_row(row: Sequence[Any]) -> TaskRecord:
    """Build a TaskRecord from a row in :data:`_COLUMNS` order (text possibly as bytes).

    Raises:
        StorageError: a value is damaged (not UTF-8, not JSON, a JSON value that is not an
            object, a NULL where none is allowed, a value of the wrong type, an unknown
            status); the message names the task and the field.
    """
    from flowyard_sql.storage import _loads

    values = dict(zip(_COLUMNS, row, strict=True))
    raw_id = values["id"]
    task_id = (bytes(raw_id).decode("utf-8", "backslashreplace")
               if isinstance(raw_id, (bytes, memoryview)) else str(raw_id))
    for name, value in values.items():
        if value is None:
            if name not in _NULLABLE:
                raise _damaged(task_id, name, "NULL")
            continue
        if name in _JSON:
            loaded = _loads(bytes(value) if isinstance(value, memoryview) else value,
                            f"field {name!r} of task {task_id}")
            if not isinstance(loaded, dict):
                raise _damaged(task_id, name,
                               f"a JSON object was expected, found {type(loaded).__name__}")
            values[name] = loaded
        elif name in _TEXT:
            if isinstance(value, (bytes, memoryview)):
                try:
                    value = values[name] = bytes(value).decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise _damaged(task_id, name, f"text that is not UTF-8 ({exc})") from None
            if not isinstance(value, str):
                raise _damaged(task_id, name, f"text was expected, found {value!r}")
        elif name in _BOOL:
            if value not in (0, 1):  # SQLite stores booleans as 0/1; True == 1
                raise _damaged(task_id, name, f"a boolean was expected, found {value!r}")
            values[name] = bool(value)
        elif name in _INT:
            if isinstance(value, bool) or not isinstance(value, int):
                raise _damaged(task_id, name, f"an integer was expected, found {value!r}")
        elif name in _FLOAT:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _damaged(task_id, name, f"a number was expected, found {value!r}")
            values[name] = float(value)
    if values["status"] not in TASK_STATUSES:
        raise _damaged(task_id, "status", f"unknown status {values['status']!r}")
    return TaskRecord(**values)


def _task_row(task: TaskRecord) -> dict[str, Any]:
    """The fy_tasks row of ``task`` (JSON fields serialised), every column given.

    Raises:
        StorageError: inputs, outputs or metadata is not JSON-ready or holds text that is not
            valid Unicode; the message names the task and the field.
    """
    from flowyard_sql.storage import _dumps

    row = {name: getattr(task, name) for name in _COLUMNS}
    for name in _JSON:
        row[name] = _dumps(row[name], f"field {name!r} of task {task.id}")
    return row


class TaskQueueMixin:
    """The task queue and key-value listing of :class:`flowyard_sql.SQLStorage`.

    A mixin of SQLStorage only: it uses the storage's ``dialect``, ``location``, ``_write``
    (one write transaction), ``_call`` (a read in a worker thread) and ``_read`` (a pooled
    connection). Times are UNIX seconds; every method raises :class:`~flowyard.StorageError`
    naming the database when it is not open or fails (``retriable`` for a lock held past the
    busy timeout or a dropped connection).
    """

    if TYPE_CHECKING:
        dialect: str
        location: str

        async def _write(self, fn: Callable[[_Exec], T]) -> T: ...

        async def _call(self, fn: Callable[..., T], *args: Any) -> T: ...

        def _read(self) -> AbstractContextManager[sa.Connection]: ...

    def _task_statements(self) -> _Statements:
        return _statements(self.dialect)

    def _task_not_found(self, task_id: str) -> TaskNotFoundError:
        return TaskNotFoundError(f"no task {task_id!r} in {self.location}")

    def _read_task(self, ex: _Exec, sql: _Statements, task_id: str) -> TaskRecord:
        """Inside a write: the task's current row. Raises TaskNotFoundError."""
        row = ex.first(sql.get, {"b_id": task_id})
        if row is None:
            raise self._task_not_found(task_id)
        return _task_from_row(row)

    # ------------------------------------------------------------------ submit / read

    async def submit_task(self, task: TaskRecord) -> tuple[TaskRecord, bool]:
        """Insert ``task`` as ``queued``, unless ``task.idempotency_key`` names a task of the
        same tenant already (:class:`~flowyard.interfaces.SupportsTaskQueue`).

        One write transaction: a lookup by (tenant, key) and by id, then the insert. Of
        processes submitting one key (or one task id) at once exactly one inserts: SQLite
        serialises them with ``BEGIN IMMEDIATE``; on PostgreSQL the insert is ``INSERT ... ON
        CONFLICT DO NOTHING RETURNING id`` (the unique index of migration 0007 and the primary
        key): the losing insert waits for the winner's commit, does nothing, and the task the
        winner stored under the key is returned.

        Args:
            task: the task; its ``status`` is stored as ``queued`` whatever it says.

        Returns:
            ``(task as stored, True)`` when inserted, ``(existing task, False)`` when the key
            names one (its current record: the caller compares ``request_hash``).

        Raises:
            StorageError: a task with ``task.id`` exists, a value is not JSON-ready (the
                message names the task and field; nothing was written), or the database
                failed.
        """
        stored = attrs.evolve(task, status="queued", inputs=copy.deepcopy(task.inputs),
                              outputs=copy.deepcopy(task.outputs),
                              metadata=copy.deepcopy(task.metadata))
        row = _task_row(stored)
        sql = self._task_statements()
        key = task.idempotency_key
        location = self.location

        def insert(ex: _Exec) -> TaskRecord | None:
            found_params = {"b_tenant": task.tenant, "b_key": key}
            if key is not None:
                found = ex.first(sql.by_key, found_params)
                if found is not None:
                    return self._read_task(ex, sql, str(found[0]))
            if sql.insert_once is None:  # SQLite: the write lock is held since BEGIN
                if ex.first(sql.exists, {"b_id": task.id}) is not None:
                    raise StorageError(f"task {task.id} already exists in {location}")
                ex.execute(sql.insert, row)
                return None
            if ex.first(sql.insert_once, row) is not None:
                return None
            # PostgreSQL: this id or key was stored before, or by a concurrent submission
            # that committed since the lookup above (the same task sent twice at once)
            if key is not None:
                found = ex.first(sql.by_key, found_params)
                if found is not None:
                    return self._read_task(ex, sql, str(found[0]))
            raise StorageError(f"task {task.id} already exists in {location}")

        existing = await self._write(insert)
        if existing is None:
            return stored, True
        return existing, False

    async def get_task(self, task_id: str) -> TaskRecord:
        """Return one task.

        Raises:
            TaskNotFoundError: no task has this id.
            StorageError: a stored value is damaged (naming the task and field), or the
                database failed.
        """
        stmt = self._task_statements().get

        def get() -> TaskRecord:
            with self._read() as conn:
                row = conn.execute(stmt, {"b_id": task_id}).first()
            if row is None:
                raise self._task_not_found(task_id)
            return _task_from_row(tuple(row))

        return await self._call(get)

    async def list_tasks(self, query: TaskQuery) -> list[TaskRecord]:
        """Return one page of the tenant's tasks matching ``query``, newest first (ties by id,
        descending), read through the index ``(tenant, created_at)``.

        Raises:
            StorageError: a stored value is damaged (naming the task and field), or the
                database failed.
        """
        conditions = [tasks.c.tenant == query.tenant]
        for name in ("status", "kind", "target"):
            value = getattr(query, name)
            if value is not None:
                conditions.append(tasks.c[name] == value)
        stmt = (sa.select(*self._task_statements().read_columns).where(*conditions)
                .order_by(tasks.c.created_at.desc(), tasks.c.id.desc())
                .limit(query.limit).offset(query.offset))

        def select() -> list[TaskRecord]:
            with self._read() as conn:
                rows = conn.execute(stmt).all()
            return [_task_from_row(tuple(r)) for r in rows]

        return await self._call(select)

    # ------------------------------------------------------------------ workers

    async def claim_task(self, worker: str, *, now: float, lease_timeout: float
                         ) -> TaskRecord | None:
        """Atomically take the next task for ``worker``: the ``queued`` one with the highest
        priority (oldest first among equals, then by id), or a ``running`` one whose lease
        expired before ``now`` (its worker died), whichever comes first in that order.

        The task becomes ``running`` with ``worker``, a lease until ``now + lease_timeout``,
        ``attempts`` + 1 and ``started_at`` set on its first claim; its ``run_id`` is kept, so
        the new worker resumes the run of the old one. See the module docstring for how the
        claim is atomic across processes.

        Args:
            worker: the claiming worker's id.
            now: the current time, UNIX seconds.
            lease_timeout: seconds the lease lasts unless renewed (> 0).

        Returns:
            the claimed task, or None when nothing is claimable (on PostgreSQL also when every
            claimable row is being claimed by another transaction at this moment).

        Raises:
            ValueError: ``lease_timeout`` is not positive.
            StorageError: a stored value of the chosen task is damaged (nothing is claimed),
                or the database failed.
        """
        if not lease_timeout > 0:
            raise ValueError(f"lease_timeout must be > 0 seconds, got {lease_timeout!r}")
        sql = self._task_statements()
        expires = now + lease_timeout

        def claim(ex: _Exec) -> TaskRecord | None:
            candidates = [row for row in (ex.first(sql.next_expired, {"b_now": now}),
                                          ex.first(sql.next_queued, {})) if row is not None]
            if not candidates:
                return None
            chosen = min((_task_from_row(row) for row in candidates),
                         key=lambda t: (-t.priority, t.created_at, t.id))
            started = chosen.started_at if chosen.started_at is not None else now
            ex.execute(sql.update_by_id, {
                "status": "running", "worker": worker, "lease_expires_at": expires,
                "attempts": chosen.attempts + 1, "started_at": started, "b_id": chosen.id})
            return attrs.evolve(chosen, status="running", worker=worker,
                                lease_expires_at=expires, attempts=chosen.attempts + 1,
                                started_at=started)

        return await self._write(claim)

    async def renew_task(self, task_id: str, worker: str, *, now: float,
                         lease_timeout: float) -> TaskRecord | None:
        """Extend ``worker``'s lease of a ``running`` task to ``now + lease_timeout``.

        Args:
            task_id: the task.
            worker: the worker that claimed it.
            now: the current time, UNIX seconds.
            lease_timeout: seconds the renewed lease lasts.

        Returns:
            the task (its ``cancel_requested`` tells the worker to stop), or None when
            ``worker`` does not hold it any more (another worker claimed it after the lease
            expired, or it ended): the worker must stop.

        Raises:
            TaskNotFoundError: no task has this id.
            StorageError: the database failed.
        """
        sql = self._task_statements()
        params = {"lease_expires_at": now + lease_timeout, "b_id": task_id,
                  "b_worker": worker, "b_running": "running"}

        def renew(ex: _Exec) -> TaskRecord | None:
            renewed = ex.execute(sql.update_held, params)
            task = self._read_task(ex, sql, task_id)
            return task if renewed else None

        return await self._write(renew)

    async def finish_task(self, task_id: str, worker: str, *, status: str,
                          outputs: dict[str, Any] | None = None, error: str | None = None,
                          now: float) -> bool:
        """Record the end of a task ``worker`` holds and release its lease (``worker`` and
        ``lease_expires_at`` become NULL, ``finished_at`` is ``now``).

        Args:
            task_id: the task.
            worker: the worker that claimed it.
            status: ``completed``, ``failed`` or ``cancelled``.
            outputs: the run's outputs (JSON-ready; None: ``{}``).
            error: why it failed or stopped.
            now: the current time, UNIX seconds.

        Returns:
            True when recorded; False (nothing written) when ``worker`` does not hold the task.

        Raises:
            ValueError: ``status`` is not an end status.
            TaskNotFoundError: no task has this id.
            StorageError: ``outputs`` is not JSON-ready (naming the task; nothing written), or
                the database failed.
        """
        from flowyard_sql.storage import _dumps

        if status not in END_STATUSES:
            raise ValueError(f"a task ends completed, failed or cancelled, not {status!r}")
        sql = self._task_statements()
        params = {"status": status,
                  "outputs": _dumps(outputs or {}, f"field 'outputs' of task {task_id}"),
                  "error": error, "finished_at": now, "worker": None, "lease_expires_at": None,
                  "b_id": task_id, "b_worker": worker, "b_running": "running"}

        def finish(ex: _Exec) -> bool:
            if ex.execute(sql.update_held, params):
                return True
            if ex.first(sql.exists, {"b_id": task_id}) is None:
                raise self._task_not_found(task_id)
            return False

        return await self._write(finish)

    async def cancel_task(self, task_id: str, *, now: float) -> TaskRecord:
        """Cancel a task: a ``queued`` one becomes ``cancelled`` at once (``finished_at`` =
        ``now``); a ``running`` one gets ``cancel_requested`` (its worker sees it when it
        renews, stops the run and records ``cancelled``); an ended one is unchanged.

        Returns:
            the task after the change.

        Raises:
            TaskNotFoundError: no task has this id.
            StorageError: the database failed.
        """
        sql = self._task_statements()

        def cancel(ex: _Exec) -> TaskRecord:
            if not ex.execute(sql.cancel_queued, {
                    "status": "cancelled", "finished_at": now,
                    "error": "cancelled before it started", "b_id": task_id,
                    "b_queued": "queued"}):
                ex.execute(sql.flag_running, {"cancel_requested": True, "b_id": task_id,
                                              "b_running": "running"})
            return self._read_task(ex, sql, task_id)

        return await self._write(cancel)

    async def retry_task(self, task_id: str) -> TaskRecord:
        """Queue an ended ``failed`` or ``cancelled`` task again, keeping its ``run_id`` (the
        run is resumed: completed steps are not run again) and ``attempts``; ``error``,
        ``finished_at`` and ``cancel_requested`` are cleared. Other tasks are unchanged.

        Returns:
            the task after the change.

        Raises:
            TaskNotFoundError: no task has this id.
            StorageError: the database failed.
        """
        sql = self._task_statements()
        params = {"status": "queued", "error": None, "finished_at": None,
                  "cancel_requested": False, "b_id": task_id, "b_failed": "failed",
                  "b_cancelled": "cancelled"}

        def retry(ex: _Exec) -> TaskRecord:
            ex.execute(sql.retry, params)
            return self._read_task(ex, sql, task_id)

        return await self._write(retry)

    # ------------------------------------------------------------------ key-value listing

    async def kv_list(self, namespace: str, *, after: str = "", limit: int = 100
                      ) -> list[tuple[str, Any]]:
        """Return up to ``limit`` ``(key, value)`` pairs of ``namespace`` with keys greater
        than ``after``, in key order (:class:`~flowyard.interfaces.SupportsKeyValueListing`;
        pass the last key to get the next page).

        Keys compare by code point on both databases (SQLite's BINARY collation; ``COLLATE
        "C"`` on PostgreSQL, whatever the database's locale), as in the memory backend.

        Raises:
            ValueError: ``limit`` is negative.
            StorageError: a stored value is damaged (naming namespace and key), or the
                database failed.
        """
        from flowyard_sql.storage import _loads

        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        key: Any = kv.c.key.collate("C") if self.dialect == "postgresql" else kv.c.key
        stmt = (sa.select(kv.c.key, kv.c.value)
                .where(kv.c.namespace == namespace, key > after)
                .order_by(key).limit(limit))

        def select() -> list[tuple[str, Any]]:
            with self._read() as conn:
                rows = conn.execute(stmt).all()
            return [(k, _loads(v, f"value of {namespace}/{k}")) for k, v in rows]

        return await self._call(select)
