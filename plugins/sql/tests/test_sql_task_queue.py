"""The durable task queue of flowyard-sql (issue 18 item 2) beyond the core's contract: worker
processes claiming from one SQLite file and one PostgreSQL database, a worker killed with
SIGKILL while it holds a task, tasks surviving a reopen, idempotent submission from two
processes at once, migration 0007 of a database at 0006, and damaged or unstorable values.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
import sqlalchemy as sa
from flowyard import StorageError, TaskNotFoundError, TaskQuery, TaskRecord, new_id
from flowyard_sql import migrate
from flowyard_sql.queue import _statements
from flowyard_sql.schema import tasks
from flowyard_sql.storage import SQLStorage

pytestmark = pytest.mark.anyio

WORKER = Path(__file__).with_name("sql_queue_worker.py")
DATABASES = ["sqlite", "postgresql"]


@pytest.fixture(params=DATABASES)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new SQLite file or PostgreSQL database (not opened yet)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'queue.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def storage(url: str) -> AsyncIterator[SQLStorage]:
    backend = SQLStorage(url)
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


def _task(**kwargs: Any) -> TaskRecord:
    kwargs.setdefault("id", new_id())
    kwargs.setdefault("tenant", "t")
    kwargs.setdefault("kind", "workflow")
    kwargs.setdefault("target", "wf")
    return TaskRecord(**kwargs)


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(WORKER), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen[str], timeout: float = 300) -> Any:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    assert "locked" not in err.lower(), err
    return json.loads(out)


def _go(procs: list[subprocess.Popen[str]], go: Path) -> None:
    """Wait until every process opened its storage (GO.PID.ready), then release them
    together."""
    deadline = time.monotonic() + 120
    while len(list(go.parent.glob(f"{go.name}.*.ready"))) < len(procs):
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        assert time.monotonic() < deadline, "the worker processes never got ready"
        time.sleep(0.05)
    go.touch()


# ----------------------------------------------------------------------------- the schema


def test_fy_tasks_has_a_column_for_every_task_field() -> None:
    assert [c.name for c in tasks.c] == [f.name for f in attrs.fields(TaskRecord)]


async def test_claims_read_the_claim_index_without_sorting(sqlite_storage: SQLStorage,
                                                           sqlite_url: str) -> None:
    """On SQLite the text columns are read as ``CAST(... AS BLOB) AS name``; ORDER BY must
    still name the table's columns (else it sorts every queued row by the computed alias)."""
    path = sqlite_url.removeprefix("sqlite:///")
    sql = _statements("sqlite")
    with sqlite3.connect(path) as conn:
        for stmt in (sql.next_queued, sql.next_expired):
            plan = " | ".join(str(row[3]) for row in conn.execute(
                f"EXPLAIN QUERY PLAN {stmt}", {"b_now": 1.0}))
            assert "ix_fy_tasks_claim" in plan and "TEMP B-TREE" not in plan, plan


# ----------------------------------------------------------------------------- processes


@pytest.mark.parametrize("database", DATABASES)
def test_four_processes_claim_200_tasks_each_once_in_priority_order(
        database: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = (f"sqlite:///{tmp_path / 'queue.db'}" if database == "sqlite"
           else request.getfixturevalue("postgres_url"))
    base = time.time() - 1000
    submitted = {}

    async def fill() -> None:
        storage = SQLStorage(url)
        await storage.open()
        try:
            for i in range(200):
                task = _task(priority=(i * 7) % 5, created_at=base + i)
                await storage.submit_task(task)
                submitted[task.id] = task
        finally:
            await storage.close()

    anyio.run(fill)
    go = tmp_path / "go"
    procs = [_start("claim", url, f"w{i}", str(go)) for i in range(4)]
    _go(procs, go)
    claimed = {f"w{i}": _result(p) for i, p in enumerate(procs)}
    ids = [c["id"] for per_worker in claimed.values() for c in per_worker]
    assert len(ids) == 200 and set(ids) == set(submitted)  # each task claimed exactly once
    assert sum(1 for per_worker in claimed.values() if per_worker) >= 2  # they did compete
    for worker, per_worker in claimed.items():
        # every task a worker claims was the best claimable one at that moment, and all were
        # queued before the workers started: a worker's claims go down in priority order
        keys = [(-c["priority"], c["created_at"], c["id"]) for c in per_worker]
        assert keys == sorted(keys), worker
        assert all(c["attempts"] == 1 for c in per_worker)

    async def check() -> None:
        storage = SQLStorage(url)
        await storage.open()
        try:
            done = await storage.list_tasks(TaskQuery(tenant="t", status="completed",
                                                      limit=1000))
            assert len(done) == 200
            assert all(t.worker is None and t.outputs["by"] in claimed for t in done)
        finally:
            await storage.close()

    anyio.run(check)


@pytest.mark.parametrize("database", DATABASES)
def test_a_worker_killed_with_sigkill_loses_nothing(database: str, tmp_path: Path,
                                                    request: pytest.FixtureRequest) -> None:
    """The killed worker's task is claimed by another process once its lease expired (not
    before), with attempts 2 and the same run id, so the run is resumed."""
    url = (f"sqlite:///{tmp_path / 'queue.db'}" if database == "sqlite"
           else request.getfixturevalue("postgres_url"))
    task = _task(priority=1)

    async def submit() -> None:
        storage = SQLStorage(url)
        await storage.open()
        try:
            await storage.submit_task(task)
        finally:
            await storage.close()

    async def get() -> TaskRecord:
        storage = SQLStorage(url)
        await storage.open()
        try:
            return await storage.get_task(task.id)
        finally:
            await storage.close()

    anyio.run(submit)
    ready = tmp_path / "ready"
    lease = 3.0
    holder = _start("hold", url, "doomed", str(ready), str(lease))
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert holder.poll() is None, holder.communicate()
        assert time.monotonic() < deadline, "the holding worker never claimed the task"
        time.sleep(0.05)
    assert ready.read_text() == task.id
    time.sleep(lease)  # it renews its lease meanwhile
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert holder.returncode == -signal.SIGKILL

    async def claim_early() -> tuple[TaskRecord, TaskRecord | None]:
        storage = SQLStorage(url)
        await storage.open()
        try:
            held = await storage.get_task(task.id)
            return held, await storage.claim_task("early", now=time.time(), lease_timeout=5.0)
        finally:
            await storage.close()

    held, early = anyio.run(claim_early)
    assert held.status == "running" and held.worker == "doomed" and held.attempts == 1
    assert held.lease_expires_at is not None and held.lease_expires_at > time.time()
    assert early is None  # the lease has not expired yet: nobody may take the task
    rescued = _result(_start("take", url, "rescuer", "60"))
    taken = rescued["task"]
    assert taken is not None, "nobody took the task over"
    assert rescued["claimed_at"] > held.lease_expires_at  # not before the lease expired
    assert (taken["id"], taken["attempts"], taken["run_id"], taken["worker"]) == (
        task.id, 2, task.run_id, "rescuer")
    assert taken["started_at"] == held.started_at  # set by the first claim only
    final = anyio.run(get)
    assert final.status == "completed" and final.worker is None and final.attempts == 2


@pytest.mark.parametrize("database", DATABASES)
def test_idempotent_submission_from_two_processes_at_once_gives_one_task(
        database: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = (f"sqlite:///{tmp_path / 'queue.db'}" if database == "sqlite"
           else request.getfixturevalue("postgres_url"))
    keys = [f"key-{i}" for i in range(20)]
    go = tmp_path / "go"
    procs = [_start("submit", url, ",".join(keys), str(go)) for _ in range(2)]
    _go(procs, go)
    first, second = (_result(p) for p in procs)
    for a, b in zip(first, second, strict=True):
        assert a["key"] == b["key"]
        assert a["id"] == b["id"]  # both callers get the same task
        assert a["created"] != b["created"]  # exactly one of them created it

    async def check() -> None:
        storage = SQLStorage(url)
        await storage.open()
        try:
            stored = await storage.list_tasks(TaskQuery(tenant="t", limit=1000))
            assert sorted(t.idempotency_key or "" for t in stored) == sorted(keys)
            assert {t.id for t in stored} == {r["id"] for r in first}
        finally:
            await storage.close()

    anyio.run(check)


# ----------------------------------------------------------------------------- durability


async def test_tasks_survive_closing_and_reopening_the_storage(url: str) -> None:
    now = time.time()
    high, low, done = _task(priority=9, inputs={"q": "x"}), _task(priority=1), _task()
    storage = SQLStorage(url)
    await storage.open()
    for task in (high, low, done):
        await storage.submit_task(task)
    claimed = await storage.claim_task("w1", now=now, lease_timeout=30.0)
    assert claimed is not None and claimed.id == high.id
    await storage.cancel_task(done.id, now=now)
    before = await storage.list_tasks(TaskQuery(tenant="t"))
    await storage.close()

    reopened = SQLStorage(url)
    await reopened.open()
    try:
        assert await reopened.list_tasks(TaskQuery(tenant="t")) == before
        assert await reopened.get_task(high.id) == claimed
        assert await reopened.renew_task(high.id, "w1", now=now + 1, lease_timeout=30.0)
        assert await reopened.finish_task(high.id, "w1", status="completed",
                                          outputs={"answer": 42}, now=now + 2)
        nxt = await reopened.claim_task("w2", now=now + 3, lease_timeout=30.0)
        assert nxt is not None and nxt.id == low.id
        assert await reopened.claim_task("w3", now=now + 4, lease_timeout=30.0) is None
        assert (await reopened.get_task(high.id)).outputs == {"answer": 42}
        assert (await reopened.get_task(done.id)).status == "cancelled"
    finally:
        await reopened.close()


# ----------------------------------------------------------------------------- migration 0007


def _create_at_0006_with_data(url: str) -> None:
    engine = sa.create_engine(SQLStorage(url)._url)
    try:
        with engine.begin() as conn:
            migrate.upgrade(conn, "0006")
            assert migrate.current_revision(conn) == "0006"
            conn.execute(sa.text(
                "INSERT INTO fy_runs (id, workflow_name, status, inputs, outputs, error, "
                "workflow_hash, workflow, created_at, started_at, finished_at, input_tokens, "
                "output_tokens, cost_usd, resume_count, metadata, extra, idempotency_key) "
                "VALUES ('old', 'wf', 'completed', '{\"q\": 1}', '{\"a\": 2}', NULL, 'h', "
                "'{}', 5.0, 5.0, 6.0, 1, 2, 0.5, 0, '{}', '{}', 'run-key')"))
            conn.execute(sa.text(
                "INSERT INTO fy_checkpoints (run_id, step_key, output, saved_at) "
                "VALUES ('old', 's', '[1, 2]', 5.5)"))
            conn.execute(sa.text(
                "INSERT INTO fy_events (run_id, seq, type, step_id, time, data) "
                "VALUES ('old', 1, 'run.started', NULL, 5.0, '{\"n\": 1}')"))
            for key in ("b", "a"):
                conn.execute(sa.text(
                    "INSERT INTO fy_kv (namespace, key, value, updated_at) "
                    "VALUES ('plugin', :key, '\"v\"', 5.0)"), {"key": key})
    finally:
        engine.dispose()


async def test_a_database_at_revision_0006_gains_the_task_queue_and_keeps_its_data(
        url: str) -> None:
    _create_at_0006_with_data(url)
    storage = SQLStorage(url)
    await storage.open()  # upgrades to the head revision
    try:
        engine = storage._engine
        assert engine is not None
        with engine.connect() as conn:
            assert migrate.current_revision(conn) == migrate.head_revision()
        indexes = {i["name"]: i for i in sa.inspect(engine).get_indexes("fy_tasks")}
        assert indexes["ux_fy_tasks_idempotency_key"]["unique"]
        assert indexes["ux_fy_tasks_idempotency_key"]["column_names"] == [
            "tenant", "idempotency_key"]
        assert indexes["ix_fy_tasks_tenant_created"]["column_names"] == ["tenant",
                                                                         "created_at"]
        assert indexes["ix_fy_tasks_claim"]["column_names"][:3] == ["status", "priority",
                                                                     "created_at"]
        run = await storage.get_run("old")
        assert (run.status, run.inputs, run.outputs, run.cost_usd) == (
            "completed", {"q": 1}, {"a": 2}, 0.5)
        again, created = await storage.create_run_once(attrs.evolve(run, id="new"), "run-key")
        assert not created and again.id == "old"
        assert await storage.load_checkpoints("old") == {"s": [1, 2]}
        assert [(e.seq, e.data) for e in await storage.list_events("old")] == [(1, {"n": 1})]
        assert await storage.kv_list("plugin") == [("a", "v"), ("b", "v")]
        task = _task()
        assert (await storage.submit_task(task))[1]
        assert (await storage.claim_task("w", now=time.time(), lease_timeout=5.0)).id == task.id
    finally:
        await storage.close()


async def test_revision_0007_downgrades_to_0006(url: str) -> None:
    from alembic import command

    storage = SQLStorage(url)
    await storage.open()
    await storage.submit_task(_task())
    await storage.close()
    engine = sa.create_engine(storage._url)
    try:
        with engine.begin() as conn:
            command.downgrade(migrate._alembic_config(conn), "0006")
        with engine.connect() as conn:
            assert migrate.current_revision(conn) == "0006"
        assert "fy_tasks" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()


# ----------------------------------------------------------------------------- values


async def test_values_that_are_not_json_ready_name_the_task_and_nothing_is_written(
        storage: SQLStorage) -> None:
    task = _task(inputs={"when": object()})
    with pytest.raises(StorageError, match=f"field 'inputs' of task {task.id} is not "
                                           "JSON-ready"):
        await storage.submit_task(task)
    with pytest.raises(TaskNotFoundError):
        await storage.get_task(task.id)
    with pytest.raises(StorageError, match="lone surrogate"):
        await storage.submit_task(_task(metadata={"t": "\ud800"}))
    ok = _task()
    await storage.submit_task(ok)
    claimed = await storage.claim_task("w", now=time.time(), lease_timeout=30.0)
    assert claimed is not None
    with pytest.raises(StorageError, match=f"field 'outputs' of task {ok.id} is not JSON-ready"):
        await storage.finish_task(ok.id, "w", status="completed", outputs={"x": object()},
                                  now=time.time())
    assert (await storage.get_task(ok.id)).status == "running"
    with pytest.raises(ValueError, match="not 'done'"):
        await storage.finish_task(ok.id, "w", status="done", now=time.time())
    with pytest.raises(ValueError, match="lease_timeout"):
        await storage.claim_task("w", now=time.time(), lease_timeout=0)


async def test_a_task_id_is_stored_once(storage: SQLStorage) -> None:
    task = _task()
    await storage.submit_task(task)
    with pytest.raises(StorageError, match=f"task {task.id} already exists"):
        await storage.submit_task(attrs.evolve(task, target="other"))
    with pytest.raises(StorageError, match="already exists"):  # with a key as well
        await storage.submit_task(attrs.evolve(task, idempotency_key="k"))
    assert (await storage.get_task(task.id)).target == "wf"


async def test_one_task_submitted_twice_at_once_is_created_once(storage: SQLStorage) -> None:
    """A client retrying the same submission (same task id and key) concurrently: one call
    creates the task, the other gets it back with ``created`` False."""
    for i in range(20):
        task = _task(idempotency_key=f"retry-{i}")
        results: list[tuple[TaskRecord, bool]] = []

        async def submit(task: TaskRecord = task, results: list[Any] = results) -> None:
            results.append(await storage.submit_task(task))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(submit)
        assert sorted(created for _, created in results) == [False, False, True]
        assert all(stored.id == task.id for stored, _ in results)


async def test_unknown_tasks_raise_task_not_found(storage: SQLStorage) -> None:
    for call in (storage.get_task("nope"), storage.cancel_task("nope", now=1.0),
                 storage.retry_task("nope"),
                 storage.renew_task("nope", "w", now=1.0, lease_timeout=1.0),
                 storage.finish_task("nope", "w", status="failed", now=1.0)):
        with pytest.raises(TaskNotFoundError, match="no task 'nope'"):
            await call


async def _damage(url: str, sql: str, params: dict[str, Any]) -> None:
    engine = sa.create_engine(SQLStorage(url)._url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(sql), params)
    finally:
        engine.dispose()


@pytest.mark.parametrize(("column", "value", "problem"), [
    ("inputs", '{"q": ', "JSONDecodeError"),
    ("metadata", "[1, 2]", "a JSON object was expected, found list"),
    ("outputs", "null", "a JSON object was expected, found NoneType"),
    ("status", "paused", "unknown status 'paused'"),
])
async def test_damaged_values_name_the_task_and_field(storage: SQLStorage, url: str,
                                                      column: str, value: str,
                                                      problem: str) -> None:
    task = _task(priority=5)
    await storage.submit_task(task)
    await _damage(url, f"UPDATE fy_tasks SET {column} = :v WHERE id = :id",
                  {"v": value, "id": task.id})
    for call in (storage.get_task(task.id), storage.list_tasks(TaskQuery(tenant="t"))):
        with pytest.raises(StorageError) as info:
            await call
        assert f"field {column!r} of task {task.id}" in str(info.value), info.value
        assert problem in str(info.value)
    if column != "status":  # a damaged best task is not claimed: nothing changes
        with pytest.raises(StorageError, match=f"field {column!r} of task {task.id}"):
            await storage.claim_task("w", now=time.time(), lease_timeout=5.0)
        await _damage(url, f"UPDATE fy_tasks SET {column} = '{{}}' WHERE id = :id",
                      {"id": task.id})
        restored = await storage.get_task(task.id)
        assert restored.status == "queued" and restored.attempts == 0


async def test_damaged_sqlite_text_names_the_task_and_field(sqlite_storage: SQLStorage,
                                                            sqlite_url: str) -> None:
    """Bytes that are not UTF-8 (SQLite stores whatever it is given), or a number where a
    number belongs that is text: a StorageError naming task and field, not a driver error."""
    task = _task()
    await sqlite_storage.submit_task(task)
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE fy_tasks SET outputs = CAST(x'fffe7b7d' AS TEXT), "
                     "error = CAST(x'ff' AS TEXT) WHERE id = ?", (task.id,))
    with pytest.raises(StorageError, match=f"field 'outputs' of task {task.id} is damaged"):
        await sqlite_storage.get_task(task.id)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE fy_tasks SET outputs = '{}' WHERE id = ?", (task.id,))
    with pytest.raises(StorageError, match=f"field 'error' of task {task.id} .*not UTF-8"):
        await sqlite_storage.get_task(task.id)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE fy_tasks SET error = NULL, priority = 'high' WHERE id = ?",
                     (task.id,))
    with pytest.raises(StorageError, match=f"field 'priority' of task {task.id} .*integer"):
        await sqlite_storage.get_task(task.id)


# ----------------------------------------------------------------------------- kv_list


async def test_kv_list_orders_keys_by_code_point_on_every_database(storage: SQLStorage
                                                                   ) -> None:
    keys = ["b", "B", "a", "Z", "é", "a-1", "a_1", "10", "9"]
    for key in keys:
        await storage.kv_set("ns", key, {"k": key})
    assert [k for k, _ in await storage.kv_list("ns", limit=100)] == sorted(keys)
    pages, after = [], ""
    while page := await storage.kv_list("ns", after=after, limit=2):
        pages.append(page)
        after = page[-1][0]
    assert [k for page in pages for k, _ in page] == sorted(keys)
    assert all(v == {"k": k} for page in pages for k, v in page)
    assert await storage.kv_list("ns", limit=0) == []
    with pytest.raises(ValueError):
        await storage.kv_list("ns", limit=-1)
