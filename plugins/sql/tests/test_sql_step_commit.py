"""commit_step and unique event numbers beyond the contract (issue 17): group commit of step
commits, a database failure inside a grouped step commit, migration 0006 of databases holding
duplicate events, PostgreSQL refusing a value mid-transaction.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from flowyard.errors import StorageError
from flowyard.interfaces import SupportsStepCommit
from flowyard.models import Event, LogRecord, RunRecord, StepAttempt
from flowyard_sql import migrate
from flowyard_sql.storage import SQLStorage

pytestmark = pytest.mark.anyio


def _step(run_id: str, i: int, *, message: str = "done") -> dict[str, Any]:
    """The keyword arguments of the commit_step ending step key ``s[i]``."""
    return {
        "attempt": StepAttempt(run_id=run_id, step_id="s", step_key=f"s[{i}]", attempt=1,
                               status="completed", started_at=float(i),
                               finished_at=float(i) + 0.5, output={"i": i}),
        "checkpoint": (f"s[{i}]", {"i": i}),
        "events": [Event(type="step.completed", run_id=run_id, step_id="s", data={"i": i},
                         time=float(i), seq=3 * i + n) for n in (1, 2, 3)],
        "logs": [LogRecord(run_id=run_id, message=f"{message} {i}", step_id="s",
                           time=float(i))],
    }


def _hold_first_batch(storage: SQLStorage, queued: int) -> list[int]:
    """Make the group commit's first transaction wait (up to 10 s) until ``queued`` more writes
    are queued behind it, and record the size of every transaction; return that record.
    """
    group = storage._group
    assert group is not None
    sizes: list[int] = []
    run_batch = group._run_batch

    def held(batch: list[Any]) -> None:
        if not sizes:
            deadline = time.monotonic() + 10
            while len(group._queue) < queued and time.monotonic() < deadline:
                time.sleep(0.002)
        sizes.append(len(batch))
        run_batch(batch)

    group._run_batch = held  # type: ignore[method-assign]
    return sizes


def test_sql_storage_implements_step_commit() -> None:
    assert isinstance(SQLStorage("sqlite://"), SupportsStepCommit)


async def test_parallel_step_commits_share_sqlite_commits(sqlite_storage: SQLStorage) -> None:
    calls = 20
    await sqlite_storage.create_run(RunRecord(id="r", workflow_name="wf"))
    sizes = _hold_first_batch(sqlite_storage, calls - 1)
    async with anyio.create_task_group() as tg:
        for i in range(calls):
            tg.start_soon(lambda i=i: sqlite_storage.commit_step("r", **_step("r", i)))
    assert sum(sizes) == calls and len(sizes) <= 2, sizes  # 20 step commits, 2 SQLite commits
    assert len(await sqlite_storage.list_attempts("r")) == calls
    assert await sqlite_storage.load_checkpoints("r") == {f"s[{i}]": {"i": i}
                                                          for i in range(calls)}
    events = await sqlite_storage.list_events("r")
    assert [e.seq for e in events] == list(range(1, 3 * calls + 1))
    assert len(await sqlite_storage.list_logs("r")) == calls


async def test_a_step_commit_failing_in_the_database_stores_nothing_of_its_own(
        sqlite_storage: SQLStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its log line is refused after its attempt, checkpoint and events were written in the
    shared transaction: they are rolled back, the other step commits of the batch are kept.
    """
    raw = sqlite_storage._raw
    assert raw is not None
    execute = raw.execute

    def failing(stmt: Any, params: Any) -> int:
        if isinstance(params, list) and any(p.get("message") == "boom 3" for p in params):
            raise sqlite3.IntegrityError("injected failure")
        return execute(stmt, params)

    monkeypatch.setattr(raw, "execute", failing)
    sizes = _hold_first_batch(sqlite_storage, 5)
    errors: dict[int, StorageError] = {}

    async def commit(i: int) -> None:
        try:
            await sqlite_storage.commit_step("r", **_step("r", i, message="boom"))
        except StorageError as exc:
            errors[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(commit, i)
    assert sum(sizes) == 6 and len(sizes) <= 2, sizes
    assert list(errors) == [3] and "injected failure" in str(errors[3])
    kept = [0, 1, 2, 4, 5]
    assert [a.step_key for a in await sqlite_storage.list_attempts("r")] == [
        f"s[{i}]" for i in kept]
    assert set(await sqlite_storage.load_checkpoints("r")) == {f"s[{i}]" for i in kept}
    assert {e.data["i"] for e in await sqlite_storage.list_events("r")} == set(kept)
    assert sorted(r.message for r in await sqlite_storage.list_logs("r")) == [
        f"boom {i}" for i in kept]


@pytest.mark.parametrize("database", ["sqlite", "sqlite-memory", "postgresql"])
async def test_step_commit_refuses_bad_records_before_writing(
        database: str, sqlite_url: str, request: pytest.FixtureRequest) -> None:
    url = {"sqlite": sqlite_url, "sqlite-memory": "sqlite://"}.get(database) or (
        request.getfixturevalue("postgres_url"))
    storage = SQLStorage(url)
    await storage.open()
    try:
        step = _step("r", 0)
        step["events"][1] = Event(type="odd", run_id="r", data={"v": object()}, seq=2)
        with pytest.raises(StorageError, match=r"data of event 2 \(odd\) of run r is not "
                                               r"JSON-ready"):
            await storage.commit_step("r", **step)
        step = _step("r", 0)
        step["logs"].append(LogRecord(run_id="elsewhere", message="x"))
        with pytest.raises(StorageError, match="commit_step of run r: log line 'x' belongs to "
                                               "another run; nothing was stored"):
            await storage.commit_step("r", **step)
        step = _step("r", 0)
        step["attempt"].output = "\ud800"
        with pytest.raises(StorageError, match="output of attempt 1 of step 's\\[0\\]' of run "
                                               "r holds text that is not valid Unicode"):
            await storage.commit_step("r", **step)
        assert await storage.list_attempts("r") == []
        assert await storage.load_checkpoints("r") == {}
        assert await storage.list_events("r") == []
        assert await storage.list_logs("r") == []
    finally:
        await storage.close()


async def test_postgres_refusing_a_log_line_rolls_back_the_whole_step_commit(
        postgres_storage: SQLStorage) -> None:
    """PostgreSQL refuses text holding NUL only when the log line is sent, after the attempt,
    checkpoint and events of the same transaction.
    """
    await postgres_storage.commit_step("r", **_step("r", 0))
    step = _step("r", 1)
    step["logs"] = [LogRecord(run_id="r", message="nul \x00 byte")]
    with pytest.raises(StorageError) as info:
        await postgres_storage.commit_step("r", **step)
    assert "PostgreSQL database" in str(info.value)
    assert [a.step_key for a in await postgres_storage.list_attempts("r")] == ["s[0]"]
    assert await postgres_storage.load_checkpoints("r") == {"s[0]": {"i": 0}}
    assert [e.seq for e in await postgres_storage.list_events("r")] == [1, 2, 3]
    assert [r.message for r in await postgres_storage.list_logs("r")] == ["done 0"]


# ----------------------------------------------------------------------------- migration 0006


def _create_at_0005_with_duplicate_events(url: str) -> None:
    engine = sa.create_engine(SQLStorage(url)._url)
    try:
        with engine.begin() as conn:
            migrate.upgrade(conn, "0005")
            assert migrate.current_revision(conn) == "0005"
            conn.execute(sa.text(
                "INSERT INTO fy_runs (id, workflow_name, status, inputs, outputs, error, "
                "workflow_hash, workflow, created_at, started_at, finished_at, input_tokens, "
                "output_tokens, cost_usd, resume_count, metadata, extra) VALUES ('old', 'wf', "
                "'completed', '{\"q\": 1}', '{\"a\": 2}', NULL, 'h', '{}', 5.0, 5.0, 6.0, 1, 2, "
                "0.5, 0, '{}', '{}')"))
            conn.execute(sa.text(
                "INSERT INTO fy_attempts (run_id, step_key, attempt, step_id, status, "
                "idempotency_key, output, error, error_type, started_at, finished_at, "
                "input_tokens, output_tokens, cost_usd, extra) VALUES ('old', 's', 1, 's', "
                "'completed', 'k', '[1, 2]', NULL, NULL, 5.0, 5.5, 1, 2, 0.5, '{}')"))
            conn.execute(sa.text(
                "INSERT INTO fy_checkpoints (run_id, step_key, output, saved_at) "
                "VALUES ('old', 's', '[1, 2]', 5.5)"))
            insert_event = sa.text(
                "INSERT INTO fy_events (run_id, seq, type, step_id, time, data) "
                "VALUES (:run_id, :seq, :type, NULL, :time, :data)")
            # a batch stored twice (a retried write), then one more event; another run's
            # event with the same seq is not a duplicate
            for copy in ("first", "retried"):
                for seq in (1, 2):
                    conn.execute(insert_event, {"run_id": "old", "seq": seq, "type": copy,
                                                "time": 5.0 + seq, "data": f'{{"seq": {seq}}}'})
            conn.execute(insert_event, {"run_id": "old", "seq": 2, "type": "third copy",
                                        "time": 9.0, "data": "{}"})
            conn.execute(insert_event, {"run_id": "old", "seq": 3, "type": "first",
                                        "time": 8.0, "data": "{}"})
            conn.execute(insert_event, {"run_id": "other", "seq": 1, "type": "first",
                                        "time": 1.0, "data": "{}"})
            for _ in range(2):  # identical log lines are two lines, never merged
                conn.execute(sa.text(
                    "INSERT INTO fy_logs (run_id, step_id, level, message, time) "
                    "VALUES ('old', 's', 'info', 'same line', 5.0)"))
            conn.execute(sa.text(
                "INSERT INTO fy_costs (run_id, provider, model, input_tokens, output_tokens, "
                "cost_usd, step_id, agent, workflow_name, time) VALUES ('old', 'p', 'm', 1, 2, "
                "0.5, 's', NULL, 'wf', 5.0)"))
            conn.execute(sa.text(
                "INSERT INTO fy_kv (namespace, key, value, updated_at) "
                "VALUES ('plugin', 'k', '\"v\"', 5.0)"))
    finally:
        engine.dispose()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_a_database_at_revision_0005_loses_its_duplicate_events_and_nothing_else(
        database: str, tmp_path: Path, request: pytest.FixtureRequest,
        caplog: pytest.LogCaptureFixture) -> None:
    url = (f"sqlite:///{tmp_path / 'old.db'}" if database == "sqlite"
           else request.getfixturevalue("postgres_url"))
    _create_at_0005_with_duplicate_events(url)
    storage = SQLStorage(url)
    with caplog.at_level(logging.WARNING, logger="flowyard_sql.migrate"):
        await storage.open()  # upgrades to the head revision
    try:
        assert "deleted 3 duplicate event rows" in caplog.text
        engine = storage._engine
        assert engine is not None
        with engine.connect() as conn:
            assert migrate.current_revision(conn) == migrate.head_revision()
            assert conn.execute(sa.text("SELECT count(*) FROM fy_events")).scalar_one() == 4
        indexes = {i["name"]: i for i in sa.inspect(engine).get_indexes("fy_events")}
        assert "ix_fy_events_run_seq" not in indexes
        assert indexes["ux_fy_events_run_seq"]["unique"]
        assert indexes["ux_fy_events_run_seq"]["column_names"] == ["run_id", "seq"]
        # the first stored copy of each event is the one kept
        assert [(e.seq, e.type, e.data) for e in await storage.list_events("old")] == [
            (1, "first", {"seq": 1}), (2, "first", {"seq": 2}), (3, "first", {})]
        assert [e.seq for e in await storage.list_events("other")] == [1]
        run = await storage.get_run("old")
        assert (run.status, run.inputs, run.outputs, run.cost_usd) == (
            "completed", {"q": 1}, {"a": 2}, 0.5)
        (attempt,) = await storage.list_attempts("old")
        assert (attempt.step_key, attempt.status, attempt.output) == ("s", "completed", [1, 2])
        assert await storage.load_checkpoints("old") == {"s": [1, 2]}
        assert [r.message for r in await storage.list_logs("old")] == ["same line"] * 2
        (cost,) = await storage.list_costs("old")
        assert (cost.cost_usd, cost.estimated, cost.overshoot_usd) == (0.5, False, 0.0)
        assert await storage.kv_get("plugin", "k") == "v"
        # from now on the database itself refuses a duplicate
        await storage.append_events([Event(type="again", run_id="old", seq=3),
                                     Event(type="new", run_id="old", seq=4)])
        assert [(e.seq, e.type) for e in await storage.list_events("old")][2:] == [
            (3, "first"), (4, "new")]
        with engine.begin() as conn, pytest.raises(sa.exc.IntegrityError):
            conn.execute(sa.text("INSERT INTO fy_events (run_id, seq, type, time, data) "
                                 "VALUES ('old', 1, 'x', 1.0, '{}')"))
    finally:
        await storage.close()


async def test_a_database_at_revision_0005_without_duplicates_upgrades_silently(
        sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    engine = sa.create_engine(SQLStorage(sqlite_url)._url)
    try:
        with engine.begin() as conn:
            migrate.upgrade(conn, "0005")
    finally:
        engine.dispose()
    storage = SQLStorage(sqlite_url)
    with caplog.at_level(logging.WARNING, logger="flowyard_sql.migrate"):
        await storage.open()
    await storage.close()
    assert "duplicate" not in caplog.text

