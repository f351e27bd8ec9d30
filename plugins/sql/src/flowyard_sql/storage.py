"""The SQL storage backend: SQLite (the default stack's storage) and PostgreSQL.

SQLAlchemy 2 runs synchronously in worker threads (``anyio.to_thread.run_sync``), so the
backend works the same on asyncio and trio. Each call is one short transaction, committed
before the awaited call returns; a call that is cancelled while its thread runs still
finishes its transaction (the thread is not abandoned), so a commit is never half done.

SQLite is set up for several processes sharing one file: WAL journal, a busy timeout, and
``BEGIN IMMEDIATE`` for every write transaction (a writer waits for the write lock up front
instead of failing when it upgrades a read lock). Within a process, writes are
group-committed on one dedicated writer connection, with the SQL of each write statement
compiled once (see :class:`_GroupCommit` and :class:`_RawSQLite`); reads use SQLAlchemy's
connection pool. PostgreSQL uses psycopg 3 through SQLAlchemy for everything.

An event is stored once per ``(run_id, seq)`` (the unique index of migration 0006): events are
inserted with ``ON CONFLICT (run_id, seq) DO NOTHING``, so a retried write never duplicates
one. :meth:`SQLStorage.commit_step` writes a step key's attempt, checkpoint, events and log
lines in one transaction (one group commit on SQLite).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio
import anyio.to_thread
import attrs
import sniffio
import sqlalchemy as sa
from flowyard import (
    Config,
    CostLine,
    Event,
    LogRecord,
    RunLease,
    RunNotFoundError,
    RunQuery,
    RunRecord,
    StepAttempt,
    StorageError,
    json_default,
)

from flowyard_sql.audit import AuditLogMixin
from flowyard_sql.limits import SharedLimitsMixin
from flowyard_sql.queue import TaskQueueMixin
from flowyard_sql.schema import attempts, checkpoints, costs, events, kv, leases, logs, runs

__all__ = ["SQLStorage", "RUN_FILTERS", "SQLITE_HEADER", "normalize_url"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The first 16 bytes of every SQLite 3 database file.
SQLITE_HEADER = b"SQLite format 3\x00"
#: ``check_on_open = "auto"`` runs the full ``integrity_check`` below this size in bytes and
#: the cheaper ``quick_check`` (page structure only, not index contents) above it.
FULL_CHECK_MAX_BYTES = 256 * 1024 * 1024
_CHECK_MODES = ("auto", "full", "quick", "off")

#: The run fields :meth:`SQLStorage.list_runs` may filter on, and the condition each builds.
#: Values are always bound parameters; any other field name is refused.
RUN_FILTERS: dict[str, Callable[[Any], sa.ColumnElement[bool]]] = {
    "status": lambda v: runs.c.status == v,
    "workflow_name": lambda v: runs.c.workflow_name == v,
    "created_after": lambda v: runs.c.created_at >= v,
    "created_before": lambda v: runs.c.created_at < v,
}

_RUN_JSON = ("inputs", "outputs", "workflow", "metadata")
_RUN_FIELDS = tuple(f.name for f in attrs.fields(RunRecord))
_RUN_COLUMNS = frozenset(c.name for c in runs.c) - {"extra", "idempotency_key"}
_ATTEMPT_JSON = ("output",)
_ATTEMPT_FIELDS = tuple(f.name for f in attrs.fields(StepAttempt))
_ATTEMPT_COLUMNS = frozenset(c.name for c in attempts.c) - {"extra"}
#: StepAttempt fields stored as they are, and those kept in the ``extra`` JSON column.
_ATTEMPT_PLAIN = tuple(n for n in _ATTEMPT_FIELDS
                       if n in _ATTEMPT_COLUMNS and n not in _ATTEMPT_JSON)
_ATTEMPT_EXTRA = tuple(n for n in _ATTEMPT_FIELDS if n not in _ATTEMPT_COLUMNS)
_PG_DRIVERS = {"postgresql", "postgresql+psycopg", "postgres"}


def normalize_url(url: str) -> sa.URL:
    """Parse a storage URL into a SQLAlchemy URL with the driver flowyard-sql ships.

    ``sqlite:///relative.db`` is made absolute (against the current directory) so that
    subprocesses agree on the file; ``postgresql://`` and ``postgres://`` become
    ``postgresql+psycopg://``.

    Raises:
        StorageError: the URL cannot be parsed or names an unsupported scheme or driver.
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise StorageError(f"invalid storage URL {url!r}: {exc}") from None
    name = parsed.drivername
    if name in ("sqlite", "sqlite+pysqlite"):
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            database = str(Path(database).expanduser().absolute())
        return parsed.set(drivername="sqlite+pysqlite", database=database)
    if name in _PG_DRIVERS:
        return parsed.set(drivername="postgresql+psycopg")
    raise StorageError(
        f"unsupported storage URL scheme {name!r} in "
        f"{parsed.render_as_string(hide_password=True)!r}: flowyard-sql serves sqlite:///PATH "
        "and postgresql+psycopg://USER@HOST/DB"
    )


# Write statements, built once; values are bound parameters named after the columns (the
# columns given decide the column list) or ``b_*`` for WHERE clauses.
_RUN_EXISTS = sa.select(runs.c.id).where(runs.c.id == sa.bindparam("b_id"))
_RUN_INSERT = runs.insert()
_RUN_BY_KEY = sa.select(runs.c.id).where(runs.c.idempotency_key == sa.bindparam("b_key"))
_RUN_UPDATE = runs.update().where(runs.c.id == sa.bindparam("b_id"))
_LOG_INSERT = logs.insert()
_COST_INSERT = costs.insert()
_LEASE_FIELDS = tuple(c.name for c in leases.c)
_LEASE_SELECT = sa.select(leases).where(leases.c.run_id == sa.bindparam("b_run_id"))
_LEASE_RENEW = leases.update().where(leases.c.run_id == sa.bindparam("b_run_id"),
                                     leases.c.owner == sa.bindparam("b_owner"))
_LEASE_DELETE = leases.delete().where(leases.c.run_id == sa.bindparam("b_run_id"),
                                      leases.c.owner == sa.bindparam("b_owner"))
#: How many run ids one get_leases query binds (SQLite's default limit is 32766 parameters,
#: older builds 999).
_IN_CHUNK = 500
_KV_DELETE = kv.delete().where(kv.c.namespace == sa.bindparam("b_namespace"),
                               kv.c.key == sa.bindparam("b_key"))


class _Exec(Protocol):
    """What write functions run statements through: a SQLAlchemy connection (PostgreSQL,
    in-memory SQLite) or the raw writer connection of a SQLite file (see _RawSQLite).
    """

    def execute(self, stmt: Any, params: Any) -> int:
        """Run ``stmt`` with a dict of parameters (or a list: executemany); return rowcount."""
        ...

    def first(self, stmt: Any, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """Run a SELECT and return its first row, or None."""
        ...


class _SAExec:
    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn

    def execute(self, stmt: Any, params: Any) -> int:
        return int(self.conn.execute(stmt, params).rowcount)

    def first(self, stmt: Any, params: dict[str, Any]) -> tuple[Any, ...] | None:
        row = self.conn.execute(stmt, params).first()
        return None if row is None else tuple(row)


class _RawSQLite:
    """Runs write statements on one sqlite3 connection, compiled once to SQL text.

    SQLAlchemy's per-statement execution costs several times SQLite's own work for these
    small writes, so the writer of a SQLite file sends the compiled SQL to the driver
    directly. Only the group-commit leader uses it, one thread at a time.
    """

    _dialect: Any = None

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
        self._sql: dict[tuple[int, tuple[str, ...]], str] = {}
        if _RawSQLite._dialect is None:
            from sqlalchemy.dialects.sqlite import pysqlite

            _RawSQLite._dialect = pysqlite.dialect(paramstyle="named")

    def _compile(self, stmt: Any, params: dict[str, Any]) -> str:
        keys = tuple(params)
        cache_key = (id(stmt), keys)
        sql = self._sql.get(cache_key)
        if sql is None:
            columns = [k for k in keys if not k.startswith("b_")]
            sql = self._sql[cache_key] = str(stmt.compile(dialect=self._dialect,
                                                          column_keys=columns))
        return sql

    def execute(self, stmt: Any, params: Any) -> int:
        if isinstance(params, list):
            if not params:
                return 0
            return self.connection.executemany(self._compile(stmt, params[0]), params).rowcount
        return self.connection.execute(self._compile(stmt, params), params).rowcount

    def first(self, stmt: Any, params: dict[str, Any]) -> tuple[Any, ...] | None:
        row = self.connection.execute(self._compile(stmt, params), params).fetchone()
        return None if row is None else tuple(row)


class _Request:
    """One write of the group commit: ``fn`` runs on the writer thread, which then stores its
    ``result`` or ``error`` and wakes the caller (``waker``: an asyncio loop, a trio token, or
    None for a blocking caller in a plain thread, which waits on ``event``).
    """

    __slots__ = ("fn", "result", "error", "done", "sent", "waker", "trio", "future", "task",
                 "event")

    def __init__(self, fn: Callable[[_Exec], Any]) -> None:
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False
        self.sent = False  # handed to its waker by the writer thread
        self.waker: Any = None
        self.trio = False
        self.future: Any = None
        self.task: Any = None
        self.event: threading.Event | None = None


def _resolve_asyncio(requests: list[_Request]) -> None:
    """On the event loop's thread: mark ``requests`` done and wake their callers."""
    for request in requests:
        request.done = True
        future = request.future
        if not future.done():
            future.set_result(None)


def _resolve_trio(requests: list[_Request]) -> None:
    """On trio's thread: mark ``requests`` done and reschedule their tasks."""
    import trio

    for request in requests:
        request.done = True
        trio.lowlevel.reschedule(request.task)


def _abort_failed(_raise_cancel: Any) -> Any:
    """A trio abort function refusing cancellation: the write runs to its end first."""
    import trio

    return trio.lowlevel.Abort.FAILED


_STOP: Any = object()


class _GroupCommit:
    """Group commit of the writes of one process to one SQLite file, on one writer thread.

    Callers queue requests; a single long-lived thread takes *every* queued request, runs them
    in one transaction (``run_batch``) and commits, then wakes their callers: one
    ``call_soon_threadsafe`` (asyncio) or ``run_sync_soon`` (trio) per event loop and batch.
    Requests queued while a transaction commits (its fsync) form the next batch, so concurrent
    writers share commits without a worker-thread hop each. A caller returns only after the
    transaction holding its write has committed (or with that write's own error), so each write
    is durable when the awaited call returns. A failing batch (``run_batch`` raising) hands its
    error to every request of the batch without one; the thread goes on with the next batch.
    """

    def __init__(self, run_batch: Callable[[list[_Request]], None], name: str = "") -> None:
        self._run_batch = run_batch
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[_Request] = collections.deque()
        self._thread: threading.Thread | None = None
        self._accepting = False
        self._pid = os.getpid()

    # -- lifecycle (called from worker threads by SQLStorage.open/close)

    def start(self) -> None:
        """Start the writer thread (idempotent)."""
        with self._cond:
            if self._thread is not None:
                return
            self._accepting = True
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name=f"flowyard-sql writer {self._name}")
            self._thread.start()

    def stop(self) -> None:
        """Refuse new writes, let the writer thread finish every queued one, and join it."""
        with self._cond:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._accepting = False
            self._queue.append(_STOP)
            self._cond.notify()
        thread.join()
        with self._cond:  # what a writer thread that ended unexpectedly left behind
            self._queue.clear()

    # -- submitting

    def put(self, request: _Request) -> bool:
        """Queue ``request``; False (nothing queued) when the writer is not running (stopped,
        ended by an unexpected error, or this is a forked child of the process that started
        it).
        """
        with self._cond:
            if not self._accepting or self._pid != os.getpid():
                return False
            self._queue.append(request)
            self._cond.notify()
        return True

    def submit(self, fn: Callable[[_Exec], Any]) -> Any:
        """Run ``fn`` in the next group commit and block until it committed (a plain thread).

        Raises:
            the error of ``fn`` or of its transaction; RuntimeError when the writer is stopped.
        """
        request = _Request(fn)
        request.event = threading.Event()
        if not self.put(request):
            raise RuntimeError("the writer thread is not running")
        request.event.wait()
        if request.error is not None:
            raise request.error
        return request.result

    # -- the writer thread

    def _loop(self) -> None:
        cond, queue = self._cond, self._queue
        batch: list[_Request] = []
        try:
            while True:
                with cond:
                    while not queue:
                        cond.wait()
                    batch = list(queue)
                    queue.clear()
                stop = batch[-1] is _STOP
                if stop:
                    batch.pop()
                if batch:
                    self._run(batch)
                batch = []
                if stop:
                    return
        except BaseException as exc:  # a bug here: fail the waiting writes, refuse new ones
            log.exception("flowyard-sql writer thread %s ended unexpectedly", self._name)
            with cond:
                self._accepting = False
                left = [r for r in (*batch, *queue) if r is not _STOP and not r.sent]
                queue.clear()
            for request in left:
                if request.error is None:
                    request.error, request.result = StorageError(
                        f"the flowyard-sql writer thread of {self._name} ended unexpectedly: "
                        f"{exc!r}; nothing more is written (reopen the storage)"), None
            with contextlib.suppress(BaseException):
                self._wake(left)

    def _run(self, batch: list[_Request]) -> None:
        try:
            self._run_batch(batch)
        except BaseException as exc:  # noqa: BLE001 - handed to the batch's callers
            for request in batch:
                if request.error is None:
                    request.error, request.result = exc, None
        self._wake(batch)

    @staticmethod
    def _wake(batch: list[_Request]) -> None:
        by_waker: dict[int, list[_Request]] = {}
        for request in batch:
            request.sent = True
            waker = request.waker
            if waker is None:
                request.done = True
                assert request.event is not None
                request.event.set()
                continue
            group = by_waker.get(id(waker))
            if group is None:
                by_waker[id(waker)] = [request]
            else:
                group.append(request)
        for requests in by_waker.values():
            first = requests[0]
            try:
                if first.trio:
                    first.waker.run_sync_soon(_resolve_trio, requests)
                else:
                    first.waker.call_soon_threadsafe(_resolve_asyncio, requests)
            except Exception:  # noqa: BLE001 - the loop is gone: nobody waits any more
                log.debug("flowyard-sql writer: an event loop ended before its writes "
                          "were acknowledged", exc_info=True)


#: PostgreSQL SQLSTATE classes and codes that mean "try again": connection exceptions,
#: serialization failures, deadlocks, lock timeouts, admin shutdown.
_PG_TRANSIENT = ("08", "40001", "40P01", "55P03", "57P01", "57P02", "57P03")


def _is_transient(exc: BaseException) -> bool:
    """Whether a database error may go away on retry (locks, dropped connections)."""
    orig = getattr(exc, "orig", exc)
    if isinstance(orig, sqlite3.OperationalError):
        text = str(orig).lower()
        return "locked" in text or "busy" in text
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(code, str) and code.startswith(_PG_TRANSIENT):
        return True
    return isinstance(exc, sa.exc.DBAPIError) and bool(exc.connection_invalidated)


#: ``json.dumps(value, default=json_default, ensure_ascii=False)`` without building a new
#: encoder per call (json.dumps does for any non-default argument).
_ENCODE = json.JSONEncoder(default=json_default, ensure_ascii=False).encode


def _dumps(value: Any, what: str | Callable[[], str]) -> str:
    r"""Serialise ``value`` to JSON text for a TEXT column.

    ``what`` names the value in errors (run, step, field): a string, or a function returning
    one (built only when an error is raised).

    Raises:
        StorageError: the value is not JSON-ready, or holds text that is not
            valid Unicode (a lone surrogate such as ``"\ud800"``, which no UTF-8 database
            can store).
    """
    if value is None:
        return "null"
    try:
        text = _ENCODE(value)
    except (TypeError, ValueError) as exc:
        name = what if isinstance(what, str) else what()
        raise StorageError(f"{name} is not JSON-ready: {exc}") from None
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            name = what if isinstance(what, str) else what()
            raise StorageError(
                f"{name} holds text that is not valid Unicode: "
                f"{exc.object[exc.start:exc.end]!r} at character {exc.start} of its JSON form "
                "(a lone surrogate); nothing was stored") from None
    return text


def _loads(text: Any, what: str = "a stored value") -> Any:
    """Parse JSON text read from a TEXT column.

    Raises:
        StorageError: the stored text is damaged (not JSON, or bytes that are
            not UTF-8); ``what`` names the value (run, step, event).
    """
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
        raise StorageError(f"{what} is damaged in the database and cannot be read: "
                           f"{type(exc).__name__}: {exc}") from None


class SQLStorage(TaskQueueMixin, AuditLogMixin, SharedLimitsMixin):
    """A :class:`~flowyard.interfaces.StorageBackend` on SQLite or PostgreSQL.

    Args:
        url: ``sqlite:///path/runs.db`` (``sqlite://`` for a private in-memory database) or
            ``postgresql+psycopg://user:password@host:port/dbname``.
        config: the stack configuration. Keys read (all optional):
            ``storage.sqlite.busy_timeout`` (seconds a writer waits for the lock, default 30),
            ``storage.sqlite.synchronous`` (``"FULL"`` default: a commit survives power loss;
            ``"NORMAL"`` survives process crashes only but writes faster),
            ``storage.pool_size`` (connections kept per process, default 5),
            ``storage.sqlite.check_on_open`` (``"auto"`` default: SQLite's
            ``integrity_check`` for files up to 256 MiB, ``quick_check`` above; ``"full"``,
            ``"quick"`` or ``"off"``), ``storage.sqlite.adopt_existing`` (false: an existing
            SQLite file with tables but without flowyard's schema is refused).

    Raises:
        StorageError: the URL is invalid (at construction); the database is unreadable,
            corrupted, not a database, or at an unknown newer schema (at :meth:`open`). The
            message names the file (SQLite) or the URL without its password (PostgreSQL).
    """

    def __init__(self, url: str, config: Config | None = None) -> None:
        self.url = url
        self._url = normalize_url(url)
        self.dialect = "sqlite" if self._url.drivername.startswith("sqlite") else "postgresql"
        self.path: Path | None = None
        if self.dialect == "sqlite" and self._url.database not in ("", ":memory:"):
            self.path = Path(str(self._url.database))
        self._in_memory = self.dialect == "sqlite" and self.path is None
        cfg = config.section("storage") if config is not None else {}
        sqlite_cfg = cfg.get("sqlite", {})
        if not isinstance(sqlite_cfg, Mapping):
            raise StorageError(f"configuration storage.sqlite must be a table, got {sqlite_cfg!r}")
        try:
            self.busy_timeout = float(sqlite_cfg.get("busy_timeout", 30.0))
            self.pool_size = int(cfg.get("pool_size", 5))
        except (TypeError, ValueError) as exc:
            raise StorageError(f"invalid storage configuration: {exc}") from None
        self.synchronous = str(sqlite_cfg.get("synchronous", "FULL")).upper()
        if self.synchronous not in ("NORMAL", "FULL", "EXTRA"):
            # OFF is refused: an operating-system crash could then corrupt the database.
            raise StorageError(
                "storage.sqlite.synchronous must be NORMAL, FULL or EXTRA, got "
                f"{self.synchronous!r}")
        self.check_on_open = str(sqlite_cfg.get("check_on_open", "auto")).lower()
        if self.check_on_open not in _CHECK_MODES:
            raise StorageError(f"storage.sqlite.check_on_open must be one of "
                               f"{', '.join(_CHECK_MODES)}, got {self.check_on_open!r}")
        adopt = sqlite_cfg.get("adopt_existing", False)
        if not isinstance(adopt, bool):
            raise StorageError(f"storage.sqlite.adopt_existing must be true or false, got "
                               f"{adopt!r}")
        self.adopt_existing = adopt
        if self.busy_timeout <= 0 or self.pool_size < 1:
            raise StorageError("storage.sqlite.busy_timeout must be > 0 and storage.pool_size "
                               ">= 1")
        self._engine: sa.Engine | None = None
        self._upserts: dict[str, Any] = {}
        self._writer: sqlite3.Connection | None = None
        self._raw: _RawSQLite | None = None
        self._open_lock = threading.Lock()
        # The in-memory SQLite database is one shared connection: serialise its users.
        self._memory_lock = threading.Lock() if self._in_memory else None
        # SQLite has one writer at a time: writes of this process are group-committed (see
        # _GroupCommit) instead of each waiting in SQLite's busy handler, which polls with
        # sleeps of up to 100 ms; the busy timeout still arbitrates between processes.
        self._group = (_GroupCommit(self._write_batch, str(self.path))
                       if self.dialect == "sqlite" and not self._in_memory else None)

    # ------------------------------------------------------------------ naming

    @property
    def location(self) -> str:
        """Where the data lives, for messages: the SQLite file or the URL without password."""
        if self.dialect == "sqlite":
            return f"SQLite database {self.path}" if self.path else "in-memory SQLite database"
        return f"PostgreSQL database {self._url.render_as_string(hide_password=True)}"

    def __repr__(self) -> str:
        return f"SQLStorage({self.location})"

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Connect and create or upgrade the schema to the newest migration. Idempotent.

        Raises:
            StorageError: naming the file or URL when the database cannot be opened, is not a
                database, is corrupted, or was created by a newer flowyard-sql.
        """
        if self._engine is not None:
            return
        await anyio.to_thread.run_sync(self._open_sync)

    def _open_sync(self) -> None:
        with self._open_lock:
            if self._engine is not None:
                return
            if self.path is not None:
                self._check_sqlite_file(self.path)
            engine = self._make_engine()
            try:
                self._guard(self._migrate, engine)
                if self._group is not None:
                    self._writer = self._guard(self._connect_writer)
                    self._raw = _RawSQLite(self._writer)
                    self._group.start()
            except BaseException:
                engine.dispose()
                if self._writer is not None:
                    self._writer.close()
                    self._writer = self._raw = None
                raise
            self._engine = engine

    def _connect_writer(self) -> sqlite3.Connection:
        """The group-commit writer's own connection, set up like the pool's."""
        connection = sqlite3.connect(str(self.path), timeout=self.busy_timeout,
                                     isolation_level=None, check_same_thread=False)
        try:
            connection.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute(f"PRAGMA synchronous = {self.synchronous}")
        except BaseException:
            connection.close()
            raise
        return connection

    def _check_sqlite_file(self, path: Path) -> None:
        """Refuse a file that is not a sound flowyard database, before anything writes to it.

        A missing file is created here, already in WAL mode, under a temporary name that is
        then linked into place, so a file at ``path`` is never one this process half-made: an
        empty (0-byte) file is therefore refused rather than initialised (it is what a
        truncation leaves). An existing file must start with SQLite's header, must not hold
        other tables without flowyard's schema (unless ``adopt_existing``), and must pass
        SQLite's integrity check (``check_on_open``). Every check reads through a read-only
        connection; a refused file is left exactly as it was.

        Raises:
            StorageError: naming the file and what is wrong with it.
        """
        if path.is_dir():
            raise StorageError(f"{self.location}: the path is a directory, not a database file")
        try:
            with open(path, "rb") as fh:
                header = fh.read(len(SQLITE_HEADER))
        except FileNotFoundError:
            self._create_sqlite_file(path)
            return
        except OSError as exc:
            raise StorageError(f"{self.location}: cannot read the file: {exc.strerror}") from None
        if not header:
            raise StorageError(
                f"{self.location}: the file is empty (0 bytes), which is what a truncated "
                "database looks like; flowyard never leaves an empty database file, so it was "
                "left untouched rather than initialised. Restore it from a backup, or delete "
                "it to start a new database.")
        if header != SQLITE_HEADER:
            raise StorageError(
                f"{self.location}: the file is not an SQLite database (unrecognised header); it "
                "was left untouched. Restore it from a backup or point storage.url elsewhere.")
        self._inspect_sqlite_file(path)

    def _create_sqlite_file(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{self.location}: cannot create its directory "
                               f"{path.parent}: {exc.strerror}") from None
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.new")
        try:
            connection = sqlite3.connect(str(tmp), isolation_level=None)
            try:
                connection.execute("PRAGMA journal_mode = WAL")  # writes the header page
            finally:
                connection.close()
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # never replaces a file another process created meanwhile
            except FileExistsError:
                pass
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"{self.location}: cannot create the database file: {exc}"
                               ) from None
        finally:
            for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

    def _inspect_sqlite_file(self, path: Path) -> None:
        from flowyard_sql.migrate import VERSION_TABLE

        try:
            connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                         timeout=self.busy_timeout)
        except sqlite3.Error as exc:
            raise StorageError(f"{self.location}: cannot open the database read-only to check "
                               f"it: {exc}") from None
        try:
            tables = {row[0] for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and VERSION_TABLE not in tables and not self.adopt_existing:
                shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
                raise StorageError(
                    f"{self.location}: the file is an SQLite database of something else (tables "
                    f"{shown}; no {VERSION_TABLE}); it was left untouched. Point storage.url at "
                    "another file, or set storage.sqlite.adopt_existing = true to add "
                    "flowyard's tables to it.")
            mode = self.check_on_open
            if mode == "auto":
                mode = "full" if path.stat().st_size <= FULL_CHECK_MAX_BYTES else "quick"
            if mode != "off":
                pragma = "integrity_check(5)" if mode == "full" else "quick_check(5)"
                problems = [str(row[0]) for row in connection.execute(f"PRAGMA {pragma}")]
                if problems != ["ok"]:
                    raise StorageError(
                        f"{self.location}: the database is damaged (SQLite {pragma.split('(')[0]}: "
                        f"{'; '.join(problems)}); it was left untouched. Restore it from a "
                        f"backup, or salvage what is readable with `sqlite3 {path} .recover`. "
                        "(storage.sqlite.check_on_open = \"off\" skips this check.)")
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            raise StorageError(f"{self.location}: the database is damaged ({exc}); it was left "
                               f"untouched. Restore it from a backup, or salvage what is "
                               f"readable with `sqlite3 {path} .recover`.") from None
        except OSError as exc:
            raise StorageError(f"{self.location}: cannot read the file: {exc.strerror}") from None
        finally:
            connection.close()

    def _make_engine(self) -> sa.Engine:
        if self.dialect == "postgresql":
            return sa.create_engine(
                self._url, pool_size=self.pool_size, max_overflow=self.pool_size,
                pool_pre_ping=True, pool_timeout=60, connect_args={"connect_timeout": 10})
        if self._in_memory:
            engine = sa.create_engine(
                "sqlite+pysqlite://", poolclass=sa.pool.StaticPool,
                connect_args={"check_same_thread": False})
        else:
            engine = sa.create_engine(
                self._url, pool_size=self.pool_size, max_overflow=self.pool_size,
                pool_timeout=max(60.0, self.busy_timeout * 2),
                connect_args={"timeout": self.busy_timeout, "check_same_thread": False})
        busy_ms = int(self.busy_timeout * 1000)
        synchronous = self.synchronous
        location = self.location

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Transactions are begun explicitly below (the pysqlite driver's own implicit
            # BEGIN is deferred and would surface "database is locked" on lock upgrade).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
                mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() not in ("wal", "memory"):
                    log.warning("%s: journal mode is %s, not WAL (is the file on a network "
                                "file system?)", location, mode)
                cursor.execute(f"PRAGMA synchronous = {synchronous}")
            finally:
                cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(connection: sa.Connection) -> None:
            if connection.get_execution_options().get("flowyard_write"):
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                connection.exec_driver_sql("BEGIN")

        return engine

    def _migrate(self, engine: sa.Engine) -> None:
        from flowyard_sql.migrate import SchemaTooNewError, current_revision, head_revision, upgrade

        try:
            with engine.connect() as conn:
                if current_revision(conn) == head_revision():
                    return
            with engine.connect() as conn:
                conn.execution_options(flowyard_write=True)
                with conn.begin():
                    if self.dialect == "postgresql":
                        from flowyard_sql.migrate import _PG_LOCK_KEY

                        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                                     {"key": _PG_LOCK_KEY})
                    if upgrade(conn):
                        log.info("%s: schema upgraded to revision %s", self.location,
                                 head_revision())
        except SchemaTooNewError as exc:
            raise StorageError(f"{self.location}: {exc}") from None

    async def close(self) -> None:
        """Release the connections. Safe to call twice; a later :meth:`open` reconnects.

        On a SQLite file, writes queued before the call are committed first (their callers
        get their results); a write started after it raises StorageError (not open).
        """
        engine, self._engine = self._engine, None
        if self._group is not None:
            with anyio.CancelScope(shield=True):  # the queued writes finish in any case
                await anyio.to_thread.run_sync(self._group.stop)
        writer, self._writer, self._raw = self._writer, None, None
        if engine is not None:
            await anyio.to_thread.run_sync(engine.dispose)
        if writer is not None:
            await anyio.to_thread.run_sync(writer.close)

    # ------------------------------------------------------------------ plumbing

    def _guard(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` translating database errors into StorageError naming the location."""
        lock: AbstractContextManager[Any] = self._memory_lock or nullcontext()
        try:
            with lock:
                return fn(*args)
        except Exception as exc:
            translated = self._storage_error(exc)
            if translated is exc:
                raise
            raise translated from exc

    def _storage_error(self, exc: BaseException) -> BaseException:
        """The error to raise for ``exc``: a StorageError naming the location for database
        failures (``retriable`` for a lock held past the busy timeout or a dropped
        connection), ``exc`` itself for StorageErrors and anything else.
        """
        if isinstance(exc, StorageError):
            return exc
        if isinstance(exc, sa.exc.DBAPIError):
            detail = str(exc.orig).strip() or type(exc.orig).__name__
            if _is_transient(exc):
                return StorageError(
                    f"{self.location}: {detail} (another writer held the database longer than "
                    f"the busy timeout of {self.busy_timeout:g}s, or the connection dropped; "
                    "retriable)", retriable=True)
            return StorageError(f"{self.location}: {detail}")
        if isinstance(exc, sa.exc.SQLAlchemyError):
            return StorageError(f"{self.location}: {exc}")
        if isinstance(exc, sqlite3.Error):
            if _is_transient(exc):
                return StorageError(
                    f"{self.location}: {exc} (another writer held the database longer than the "
                    f"busy timeout of {self.busy_timeout:g}s; retriable)", retriable=True)
            return StorageError(f"{self.location}: {exc}")
        if isinstance(exc, UnicodeError):
            # the driver decodes TEXT columns itself: bytes that are not UTF-8 are damage
            return StorageError(f"{self.location}: stored text is damaged (not UTF-8): {exc}")
        return exc

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in a worker thread (reads; writes without group commit)."""
        if self._engine is None:
            raise StorageError(f"{self.location} is not open: call 'await stack.open()'")
        return await anyio.to_thread.run_sync(self._guard, fn, *args)

    async def _write(self, fn: Callable[[_Exec], T]) -> T:
        """Run the write ``fn`` in one transaction and return its result once committed.

        On a SQLite file, ``fn`` is queued to the group commit's writer thread and the caller
        waits for the commit without a worker-thread hop of its own. A caller cancelled while
        its write is queued or running still waits for that write to end (it is committed or
        fails as a whole), then the cancellation propagates; a write is never half done.

        Raises:
            StorageError: the storage is not open or is closing, or the write failed (a
                database error names the location; ``fn``'s own StorageErrors pass through).
        """
        group = self._group
        if group is None:
            return await self._call(self._write_tx, fn)
        request = _Request(fn)
        if sniffio.current_async_library() == "trio":
            import trio

            request.trio = True
            request.task = trio.lowlevel.current_task()
            request.waker = trio.lowlevel.current_trio_token()
            if self._engine is None or not group.put(request):
                raise StorageError(f"{self.location} is not open: call 'await stack.open()'")
            # Not cancellable until the writer thread reschedules this task: a pending
            # cancellation is raised at the caller's next checkpoint, after the write ended.
            await trio.lowlevel.wait_task_rescheduled(_abort_failed)
        else:
            loop = asyncio.get_running_loop()
            request.waker = loop
            request.future = loop.create_future()
            if self._engine is None or not group.put(request):
                raise StorageError(f"{self.location} is not open: call 'await stack.open()'")
            try:
                await request.future
            except BaseException:
                await self._finish_cancelled(request, loop)
                raise
        error = request.error
        if error is not None:
            translated = self._storage_error(error)
            if translated is error:
                raise error
            raise translated from error
        return request.result  # type: ignore[no-any-return]

    @staticmethod
    async def _finish_cancelled(request: _Request, loop: asyncio.AbstractEventLoop) -> None:
        """Wait (shielded) until the writer thread is done with the request of a cancelled
        asyncio caller; its result or error is dropped (the cancellation propagates).
        """
        while not request.done:
            request.future = loop.create_future()
            try:
                with anyio.CancelScope(shield=True):
                    await request.future
            except asyncio.CancelledError:  # a plain task.cancel() again: keep waiting
                continue

    def _read(self) -> AbstractContextManager[sa.Connection]:
        assert self._engine is not None
        return self._engine.connect()

    def _write_tx(self, fn: Callable[[_Exec], T]) -> T:
        if self._group is not None:
            return self._group.submit(fn)  # type: ignore[no-any-return]
        assert self._engine is not None
        with self._engine.connect() as conn:
            conn.execution_options(flowyard_write=True)
            with conn.begin():
                return fn(_SAExec(conn))

    def _write_batch(self, batch: list[_Request]) -> None:
        """Run the writes of ``batch`` in one transaction on the writer connection and commit.

        When one write fails (a duplicate run id...), the transaction is rolled back and the
        batch is run again with each write in its own savepoint, so that only the failing
        write reports its error. Write functions only touch the database, so running them
        again after a rollback is safe.
        """
        raw = self._raw
        assert raw is not None, "the SQLite writer is not open"
        connection = raw.connection

        def transaction(body: Callable[[], None]) -> None:
            connection.execute("BEGIN IMMEDIATE")
            try:
                body()
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise

        def all_at_once() -> None:
            for request in batch:
                request.result = request.fn(raw)

        if len(batch) == 1:
            transaction(all_at_once)
            return
        try:
            transaction(all_at_once)
            return
        except Exception:  # noqa: BLE001 - retried below, write by write
            for request in batch:
                request.result = None

        def one_by_one() -> None:
            for request in batch:
                connection.execute("SAVEPOINT flowyard_write")
                try:
                    request.result = request.fn(raw)
                except Exception as exc:  # noqa: BLE001 - handed to that write's caller
                    request.error = exc
                    connection.execute("ROLLBACK TO flowyard_write")
                connection.execute("RELEASE flowyard_write")

        transaction(one_by_one)

    def _upsert_stmt(self, table: sa.Table, keys: Sequence[str]) -> Any:
        """INSERT ... ON CONFLICT (keys) DO UPDATE of ``table``, built once per table."""
        stmt = self._upserts.get(table.name)
        if stmt is None:
            base: Any
            if self.dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert as sqlite_insert

                base = sqlite_insert(table)
            else:
                from sqlalchemy.dialects.postgresql import insert as pg_insert

                base = pg_insert(table)
            stmt = base.on_conflict_do_update(
                index_elements=list(keys),
                set_={c.name: base.excluded[c.name] for c in table.c if c.name not in keys})
            self._upserts[table.name] = stmt
        return stmt

    # ------------------------------------------------------------------ runs

    @staticmethod
    def _run_row(run: RunRecord) -> dict[str, Any]:
        data = attrs.asdict(run, recurse=False)
        row: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for name, value in data.items():
            if name in _RUN_JSON:
                row[name] = _dumps(value, f"run {run.id} field {name!r}")
            elif name in _RUN_COLUMNS:
                row[name] = value
            else:
                extra[name] = value
        row["extra"] = _dumps(extra, f"run {run.id}")
        return row

    @staticmethod
    def _run_from_row(row: sa.RowMapping) -> RunRecord:
        what = f"run {row['id']}"
        data = {name: (_loads(row[name], f"field {name!r} of {what}") if name in _RUN_JSON
                       else row[name])
                for name in _RUN_COLUMNS}
        data.update(_loads(row["extra"], f"{what} (extra fields)"))
        return RunRecord(**{k: v for k, v in data.items() if k in _RUN_FIELDS})

    async def create_run(self, run: RunRecord) -> None:
        """Insert a new run.

        Raises:
            StorageError: a run with this id already exists, or the database failed.
        """
        row = self._run_row(run)

        def insert(ex: _Exec) -> None:
            if ex.first(_RUN_EXISTS, {"b_id": run.id}) is not None:
                raise StorageError(f"run {run.id} already exists in {self.location}")
            ex.execute(_RUN_INSERT, row)

        await self._write(insert)

    async def create_run_once(self, run: RunRecord, idempotency_key: str
                              ) -> tuple[RunRecord, bool]:
        """Insert ``run`` with ``idempotency_key`` unless a run holds that key already.

        One write transaction: a lookup by key, then ``INSERT ... ON CONFLICT
        (idempotency_key) DO NOTHING`` against the unique index of migration 0004, then the
        lookup again when the insert was skipped; so of processes submitting one key at once
        exactly one inserts (SQLite serialises them with ``BEGIN IMMEDIATE``; on PostgreSQL
        the losing INSERT waits for the winner's commit and then does nothing).

        Returns:
            ``(run, True)`` when inserted, ``(existing run, False)`` otherwise.

        Raises:
            StorageError: a run with ``run.id`` exists (without this key), or the database
                failed (naming the file or URL).
        """
        row = {**self._run_row(run), "idempotency_key": idempotency_key}
        stmt = self._upserts.get("run-once")
        if stmt is None:
            base: Any
            if self.dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert as sqlite_insert

                base = sqlite_insert(runs)
            else:
                from sqlalchemy.dialects.postgresql import insert as pg_insert

                base = pg_insert(runs)
            stmt = self._upserts["run-once"] = base.on_conflict_do_nothing(
                index_elements=["idempotency_key"])
        key = {"b_key": idempotency_key}

        def insert(ex: _Exec) -> tuple[str, bool]:
            found = ex.first(_RUN_BY_KEY, key)
            if found is not None:
                return str(found[0]), False
            if ex.first(_RUN_EXISTS, {"b_id": run.id}) is not None:
                raise StorageError(f"run {run.id} already exists in {self.location} (without "
                                   f"the idempotency key {idempotency_key!r})")
            ex.execute(stmt, row)  # (rowcount is not reliable here on every driver)
            found = ex.first(_RUN_BY_KEY, key)
            if found is None:
                raise StorageError(f"{self.location}: the run of idempotency key "
                                   f"{idempotency_key!r} vanished while it was being created")
            return str(found[0]), str(found[0]) == run.id

        run_id, created = await self._write(insert)
        if created:
            return run, True
        return await self.get_run(run_id), False

    async def update_run(self, run: RunRecord) -> None:
        """Replace the stored fields of ``run`` (matched by id). Raises RunNotFoundError."""
        row = self._run_row(run)
        row.pop("id")
        row["b_id"] = run.id

        def update(ex: _Exec) -> None:
            if ex.execute(_RUN_UPDATE, row) == 0:
                raise RunNotFoundError(f"no run {run.id!r} in {self.location}")

        await self._write(update)

    async def get_run(self, run_id: str) -> RunRecord:
        """Return one run. Raises RunNotFoundError."""

        def get() -> RunRecord:
            with self._read() as conn:
                row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().first()
            if row is None:
                raise RunNotFoundError(f"no run {run_id!r} in {self.location}")
            return self._run_from_row(row)

        return await self._call(get)

    @staticmethod
    def run_conditions(filters: Mapping[str, Any]) -> list[sa.ColumnElement[bool]]:
        """Return the WHERE conditions for run ``filters`` (``None`` values are ignored).

        Only the fields of :data:`RUN_FILTERS` are accepted; values become bound parameters.

        Raises:
            StorageError: a field is not in the allow-list (the message lists the allowed ones).
        """
        conditions = []
        for name, value in filters.items():
            if name not in RUN_FILTERS:
                raise StorageError(f"cannot filter runs on {name!r}; allowed fields: "
                                   f"{', '.join(sorted(RUN_FILTERS))}")
            if value is not None:
                conditions.append(RUN_FILTERS[name](value))
        return conditions

    async def list_runs(self, query: RunQuery) -> list[RunRecord]:
        """Return runs matching ``query`` in ``query.order`` (ties broken by id), one page."""
        conditions = self.run_conditions({name: getattr(query, name) for name in RUN_FILTERS})
        if query.order.startswith("-"):
            order = (runs.c.created_at.desc(), runs.c.id.desc())
        else:
            order = (runs.c.created_at.asc(), runs.c.id.asc())
        stmt = (sa.select(runs).where(*conditions).order_by(*order)
                .limit(query.limit).offset(query.offset))

        def select() -> list[RunRecord]:
            with self._read() as conn:
                rows = conn.execute(stmt).mappings().all()
            return [self._run_from_row(r) for r in rows]

        return await self._call(select)

    async def count_runs(self, query: RunQuery) -> int:
        """Return how many runs match the filters of ``query`` (paging is ignored)."""
        conditions = self.run_conditions({name: getattr(query, name) for name in RUN_FILTERS})
        stmt = sa.select(sa.func.count()).select_from(runs).where(*conditions)

        def count() -> int:
            with self._read() as conn:
                return int(conn.execute(stmt).scalar_one())

        return await self._call(count)

    # ------------------------------------------------------------------ run leases

    def _lease_claim_stmt(self) -> Any:
        """INSERT the lease, or replace the current one only when the WHERE of the conflict
        clause allows it: same owner, expired, or the owner the caller found dead. One
        statement, so the check and the write are atomic on PostgreSQL too (the conflicting
        row is locked and the condition re-checked against its newest version).
        """
        stmt = self._upserts.get("lease-claim")
        if stmt is None:
            base: Any
            if self.dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert as sqlite_insert

                base = sqlite_insert(leases)
            else:
                from sqlalchemy.dialects.postgresql import insert as pg_insert

                base = pg_insert(leases)
            stmt = base.on_conflict_do_update(
                index_elements=["run_id"],
                set_={c.name: base.excluded[c.name] for c in leases.c if c.name != "run_id"},
                where=sa.or_(leases.c.owner == sa.bindparam("b_owner"),
                             leases.c.expires_at <= sa.bindparam("b_now"),
                             leases.c.owner == sa.bindparam("b_replace")))
            self._upserts["lease-claim"] = stmt
        return stmt

    async def claim_lease(self, lease: RunLease, *, now: float,
                          replace_owner: str | None = None) -> RunLease:
        """Make ``lease`` the run's lease unless another owner holds a live one; atomic across
        processes (one write transaction: ``BEGIN IMMEDIATE`` on SQLite, a conditional upsert
        on PostgreSQL). ``now`` and the lease's times are UNIX seconds.

        Returns:
            the lease in force after the call (``lease`` when claimed, else the holder's).

        Raises:
            RunNotFoundError: no such run.
            StorageError: the database failed.
        """
        row = attrs.asdict(lease)
        params = {**row, "b_owner": lease.owner, "b_now": now, "b_replace": replace_owner}
        stmt = self._lease_claim_stmt()

        def claim(ex: _Exec) -> tuple[Any, ...]:
            if ex.first(_RUN_EXISTS, {"b_id": lease.run_id}) is None:
                raise RunNotFoundError(f"no run {lease.run_id!r} in {self.location}")
            for _ in range(3):
                ex.execute(stmt, params)
                current = ex.first(_LEASE_SELECT, {"b_run_id": lease.run_id})
                if current is not None:
                    return current
                # refused, then the holder released it before the read (PostgreSQL): again
            raise StorageError(f"{self.location}: the lease of run {lease.run_id} kept "
                               "changing while it was being claimed")

        current = await self._write(claim)
        return RunLease(**dict(zip(_LEASE_FIELDS, current, strict=True)))

    async def renew_lease(self, run_id: str, owner: str, *, heartbeat_at: float,
                          expires_at: float) -> bool:
        """Set the heartbeat and expiry (UNIX seconds) of ``owner``'s lease: one UPDATE.

        Returns:
            False when ``owner`` no longer holds the run's lease.
        """
        params = {"heartbeat_at": heartbeat_at, "expires_at": expires_at, "b_run_id": run_id,
                  "b_owner": owner}

        def renew(ex: _Exec) -> int:
            return ex.execute(_LEASE_RENEW, params)

        return bool(await self._write(renew))

    async def release_lease(self, run_id: str, owner: str) -> bool:
        """Delete the run's lease if ``owner`` holds it; True when deleted."""
        params = {"b_run_id": run_id, "b_owner": owner}

        def release(ex: _Exec) -> int:
            return ex.execute(_LEASE_DELETE, params)

        return bool(await self._write(release))

    async def get_leases(self, run_ids: Sequence[str]) -> dict[str, RunLease]:
        """Return ``{run_id: lease}`` of the given runs that have a lease."""
        ids = list(dict.fromkeys(run_ids))

        def select() -> dict[str, RunLease]:
            found: dict[str, RunLease] = {}
            with self._read() as conn:
                for start in range(0, len(ids), _IN_CHUNK):
                    stmt = sa.select(leases).where(
                        leases.c.run_id.in_(ids[start:start + _IN_CHUNK]))
                    for r in conn.execute(stmt).mappings():
                        found[r["run_id"]] = RunLease(**{n: r[n] for n in _LEASE_FIELDS})
            return found

        if not ids:
            return {}
        return await self._call(select)

    # ------------------------------------------------------------------ attempts / checkpoints

    @staticmethod
    def _attempt_row(attempt: StepAttempt) -> dict[str, Any]:
        """The fy_attempts row of ``attempt`` (JSON fields serialised).

        Raises:
            StorageError: the output or an extra field is not JSON-ready (naming the run and
                step key).
        """
        row = {name: getattr(attempt, name) for name in _ATTEMPT_PLAIN}
        row["output"] = _dumps(attempt.output, lambda: (
            f"output of attempt {attempt.attempt} of step {attempt.step_key!r} of run "
            f"{attempt.run_id}"))
        if _ATTEMPT_EXTRA:
            extra = {name: getattr(attempt, name) for name in _ATTEMPT_EXTRA}
            row["extra"] = _dumps(extra, lambda: (
                f"attempt {attempt.attempt} of step {attempt.step_key!r} of run "
                f"{attempt.run_id}"))
        else:
            row["extra"] = "{}"
        return row

    @staticmethod
    def _event_rows(events_: Sequence[Event]) -> list[dict[str, Any]]:
        """The fy_events rows of ``events_`` (data serialised).

        Raises:
            StorageError: an event's data is not JSON-ready (naming the run, seq and type).
        """
        return [{"run_id": e.run_id, "seq": e.seq, "type": e.type, "step_id": e.step_id,
                 "time": e.time,
                 "data": _dumps(e.data, lambda e=e: (  # type: ignore[misc]
                     f"data of event {e.seq} ({e.type}) of run {e.run_id}"))}
                for e in events_]

    def _event_insert_stmt(self) -> Any:
        """INSERT into fy_events ... ON CONFLICT (run_id, seq) DO NOTHING, built once: an
        event already stored (a retried write) is skipped, never stored twice.
        """
        stmt = self._upserts.get("event-insert")
        if stmt is None:
            base: Any
            if self.dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert as sqlite_insert

                base = sqlite_insert(events)
            else:
                from sqlalchemy.dialects.postgresql import insert as pg_insert

                base = pg_insert(events)
            stmt = self._upserts["event-insert"] = base.on_conflict_do_nothing(
                index_elements=["run_id", "seq"])
        return stmt

    async def save_attempt(self, attempt: StepAttempt) -> None:
        """Insert or update the attempt keyed by (run_id, step_key, attempt).

        Raises:
            StorageError: the output is not JSON-ready (nothing stored), or the database
                failed.
        """
        row = self._attempt_row(attempt)
        stmt = self._upsert_stmt(attempts, ("run_id", "step_key", "attempt"))

        def save(ex: _Exec) -> None:
            ex.execute(stmt, row)

        await self._write(save)

    async def list_attempts(self, run_id: str) -> list[StepAttempt]:
        """Return the run's attempts ordered by start time (then step key and attempt)."""
        stmt = (sa.select(attempts).where(attempts.c.run_id == run_id)
                .order_by(attempts.c.started_at, attempts.c.step_key, attempts.c.attempt))

        def select() -> list[StepAttempt]:
            with self._read() as conn:
                rows = conn.execute(stmt).mappings().all()
            result = []
            for r in rows:
                what = f"attempt {r['attempt']} of step {r['step_key']!r} of run {run_id}"
                data = {name: (_loads(r[name], f"field {name!r} of {what}")
                               if name in _ATTEMPT_JSON else r[name])
                        for name in _ATTEMPT_COLUMNS}
                data.update(_loads(r["extra"], f"{what} (extra fields)"))
                result.append(StepAttempt(**{k: v for k, v in data.items()
                                             if k in _ATTEMPT_FIELDS}))
            return result

        return await self._call(select)

    async def save_checkpoint(self, run_id: str, step_key: str, output: Any) -> None:
        """Record the output of a completed step key; committed when this returns."""
        row = {"run_id": run_id, "step_key": step_key,
               "output": _dumps(output, f"output of step {step_key!r} of run {run_id}"),
               "saved_at": time.time()}

        stmt = self._upsert_stmt(checkpoints, ("run_id", "step_key"))

        def save(ex: _Exec) -> None:
            ex.execute(stmt, row)

        await self._write(save)

    async def load_checkpoints(self, run_id: str) -> dict[str, Any]:
        """Return ``{step_key: output}`` of every completed step key of the run."""
        stmt = (sa.select(checkpoints.c.step_key, checkpoints.c.output)
                .where(checkpoints.c.run_id == run_id).order_by(checkpoints.c.saved_at))

        def select() -> dict[str, Any]:
            with self._read() as conn:
                return {key: _loads(out, f"checkpoint of step {key!r} of run {run_id}")
                        for key, out in conn.execute(stmt)}

        return await self._call(select)

    async def commit_step(self, run_id: str, *, attempt: StepAttempt | None = None,
                          checkpoint: tuple[str, Any] | None = None,
                          events: Sequence[Event] = (), logs: Sequence[LogRecord] = ()
                          ) -> None:
        """Write a step key's records in one transaction
        (:class:`~flowyard.interfaces.SupportsStepCommit`): all are committed when this
        returns, none when it raises.

        Every value is serialised to JSON before the transaction starts. On SQLite the
        transaction is one request of the group commit, so the step commits of parallel steps
        share one commit (and one fsync); on PostgreSQL it is one transaction of its own.

        Args:
            run_id: the run every record belongs to.
            attempt: an attempt to upsert by ``(run_id, step_key, attempt)``.
            checkpoint: ``(step_key, output)`` to upsert; ``output`` is JSON-ready.
            events: numbered events; one whose ``(run_id, seq)`` is stored already is
                skipped (the stored one is kept), so a retried call never duplicates one.
            logs: log lines to append (a retried call appends them again).

        Raises:
            StorageError: nothing was written. A value is not JSON-ready or not valid
                Unicode, or a record belongs to another run than ``run_id`` (the message
                names the run and the record); or the database failed (``retriable`` for a
                lock held past the busy timeout or a dropped connection).
        """
        others = ([f"the attempt of step {attempt.step_key!r}"]
                  if attempt is not None and attempt.run_id != run_id else [])
        others += [f"event {e.seq} ({e.type})" for e in events if e.run_id != run_id]
        others += [f"log line {r.message[:40]!r}" for r in logs if r.run_id != run_id]
        if others:
            raise StorageError(f"commit_step of run {run_id}: {', '.join(others[:3])} "
                               f"{'belongs' if len(others) == 1 else 'belong'} to another "
                               "run; nothing was stored")
        attempt_row = None if attempt is None else self._attempt_row(attempt)
        checkpoint_row = None
        if checkpoint is not None:
            step_key, output = checkpoint
            checkpoint_row = {"run_id": run_id, "step_key": step_key,
                              "output": _dumps(output, lambda: (
                                  f"output of step {step_key!r} of run {run_id}")),
                              "saved_at": time.time()}
        event_rows = self._event_rows(events)
        log_rows = [{"run_id": r.run_id, "step_id": r.step_id, "level": r.level,
                     "message": r.message, "time": r.time} for r in logs]
        if attempt_row is None and checkpoint_row is None and not event_rows and not log_rows:
            return
        attempt_stmt = self._upsert_stmt(attempts, ("run_id", "step_key", "attempt"))
        checkpoint_stmt = self._upsert_stmt(checkpoints, ("run_id", "step_key"))
        event_stmt = self._event_insert_stmt()

        def write(ex: _Exec) -> None:
            if attempt_row is not None:
                ex.execute(attempt_stmt, attempt_row)
            if checkpoint_row is not None:
                ex.execute(checkpoint_stmt, checkpoint_row)
            if event_rows:
                ex.execute(event_stmt, event_rows)
            if log_rows:
                ex.execute(_LOG_INSERT, log_rows)

        await self._write(write)

    # ------------------------------------------------------------------ events / logs / costs

    async def append_events(self, events_: Sequence[Event]) -> None:
        """Append events (numbered by ``seq``) in one transaction.

        An event whose ``(run_id, seq)`` is stored already is skipped (the stored one is
        kept), so a retried call never duplicates events.

        Raises:
            StorageError: an event's data is not JSON-ready (nothing stored), or the database
                failed.
        """
        if not events_:
            return
        rows = self._event_rows(events_)
        stmt = self._event_insert_stmt()

        def insert(ex: _Exec) -> None:
            ex.execute(stmt, rows)

        await self._write(insert)

    async def list_events(self, run_id: str, *, after_seq: int = 0, limit: int = 1000
                          ) -> list[Event]:
        """Return events with ``seq > after_seq`` in order, at most ``limit``."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        stmt = (sa.select(events).where(events.c.run_id == run_id, events.c.seq > after_seq)
                .order_by(events.c.seq, events.c.id).limit(limit))

        def select() -> list[Event]:
            with self._read() as conn:
                rows = conn.execute(stmt).mappings().all()
            return [Event(type=r["type"], run_id=r["run_id"], step_id=r["step_id"],
                          data=_loads(r["data"], f"data of event {r['seq']} ({r['type']}) of "
                                            f"run {run_id}"),
                          time=r["time"], seq=r["seq"]) for r in rows]

        return await self._call(select)

    async def append_log(self, record: LogRecord) -> None:
        """Append a log line."""
        row = {"run_id": record.run_id, "step_id": record.step_id, "level": record.level,
               "message": record.message, "time": record.time}

        def insert(ex: _Exec) -> None:
            ex.execute(_LOG_INSERT, row)

        await self._write(insert)

    async def list_logs(self, run_id: str) -> list[LogRecord]:
        """Return the run's log lines in the order they were appended."""
        stmt = sa.select(logs).where(logs.c.run_id == run_id).order_by(logs.c.id)

        def select() -> list[LogRecord]:
            with self._read() as conn:
                rows = conn.execute(stmt).mappings().all()
            return [LogRecord(run_id=r["run_id"], message=r["message"], level=r["level"],
                              step_id=r["step_id"], time=r["time"]) for r in rows]

        return await self._call(select)

    async def add_cost(self, line: CostLine) -> None:
        """Append a cost line (``cost_usd`` None when the price was unknown)."""
        row = attrs.asdict(line, recurse=False)

        def insert(ex: _Exec) -> None:
            ex.execute(_COST_INSERT, row)

        await self._write(insert)

    async def list_costs(self, run_id: str | None = None) -> list[CostLine]:
        """Return cost lines of one run, or of all runs when ``run_id`` is None, in order."""
        stmt = sa.select(costs).order_by(costs.c.id)
        if run_id is not None:
            stmt = stmt.where(costs.c.run_id == run_id)
        names = [f.name for f in attrs.fields(CostLine)]

        def select() -> list[CostLine]:
            with self._read() as conn:
                rows = conn.execute(stmt).mappings().all()
            return [CostLine(**{n: r[n] for n in names}) for r in rows]

        return await self._call(select)

    # ------------------------------------------------------------------ plugin key-value area

    async def kv_get(self, namespace: str, key: str) -> Any | None:
        """Return the value stored under (namespace, key), or None."""
        stmt = sa.select(kv.c.value).where(kv.c.namespace == namespace, kv.c.key == key)

        def get() -> Any:
            with self._read() as conn:
                value = conn.execute(stmt).scalar_one_or_none()
            return None if value is None else _loads(value, f"value of {namespace}/{key}")

        return await self._call(get)

    async def kv_set(self, namespace: str, key: str, value: Any) -> None:
        """Store a JSON-ready value under (namespace, key), replacing any previous one."""
        row = {"namespace": namespace, "key": key,
               "value": _dumps(value, f"value of {namespace}/{key}"), "updated_at": time.time()}

        stmt = self._upsert_stmt(kv, ("namespace", "key"))

        def save(ex: _Exec) -> None:
            ex.execute(stmt, row)

        await self._write(save)

    async def kv_delete(self, namespace: str, key: str) -> None:
        """Delete a value (no error when absent)."""
        params = {"b_namespace": namespace, "b_key": key}

        def delete(ex: _Exec) -> None:
            ex.execute(_KV_DELETE, params)

        await self._write(delete)

