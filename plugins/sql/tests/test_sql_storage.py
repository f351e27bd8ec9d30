"""flowyard-sql beyond the contract: default stack, URLs, corrupted files, migrations, limits."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flowyard.errors import StorageError
from flowyard.interfaces import RunQuery
from flowyard.models import RunRecord, StepAttempt
from flowyard.stack import Stack
from flowyard_sql import migrate
from flowyard_sql.storage import SQLStorage, normalize_url

pytestmark = pytest.mark.anyio


# ----------------------------------------------------------------------------- default stack


async def test_default_stack_persists_to_sqlite_in_the_data_dir(flowyard_home: Path) -> None:
    data_dir = flowyard_home / "flowyard-data"
    stack = Stack.default()
    assert stack.storage_url() == f"sqlite:///{data_dir / 'flowyard.db'}"
    assert isinstance(stack.storage, SQLStorage)
    async with stack:
        await stack.storage.create_run(RunRecord(id="persisted", workflow_name="wf",
                                                 outputs={"answer": 42}))
    assert (data_dir / "flowyard.db").is_file()

    async with Stack.default() as again:
        run = await again.storage.get_run("persisted")
    assert run.outputs == {"answer": 42}


async def test_storage_url_from_config_overrides_the_default(tmp_path: Path,
                                                             flowyard_home: Path) -> None:
    target = tmp_path / "elsewhere" / "runs.db"
    stack = Stack.default(config={"storage": {"url": f"sqlite:///{target}"}})
    async with stack:
        await stack.storage.kv_set("test", "k", 1)
    assert target.is_file()
    assert not (flowyard_home / "flowyard-data" / "flowyard.db").exists()


def test_urls_are_normalised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert normalize_url("sqlite:///rel/runs.db").database == str(tmp_path / "rel" / "runs.db")
    assert normalize_url("postgres://u:secret@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    storage = SQLStorage("postgresql://user:secret@127.0.0.1:1/db")
    assert "secret" not in storage.location and "127.0.0.1" in storage.location
    with pytest.raises(StorageError, match="unsupported storage URL scheme 'mysql'"):
        SQLStorage("mysql://u@h/db")
    with pytest.raises(StorageError, match="invalid storage URL"):
        SQLStorage("not a url")


def test_bad_sqlite_settings_are_refused(sqlite_url: str) -> None:
    from flowyard.config import Config

    with pytest.raises(StorageError, match="synchronous"):
        SQLStorage(sqlite_url, Config({"storage": {"sqlite": {"synchronous": "OFF"}}}))
    with pytest.raises(StorageError, match="busy_timeout"):
        SQLStorage(sqlite_url, Config({"storage": {"sqlite": {"busy_timeout": -1}}}))


# ----------------------------------------------------------------------------- SQLite set-up


async def test_sqlite_uses_wal_and_a_busy_timeout(sqlite_storage: SQLStorage) -> None:
    assert sqlite_storage.path is not None
    with sqlite3.connect(sqlite_storage.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    engine = sqlite_storage._engine
    assert engine is not None
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


async def test_a_file_that_is_not_a_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    content = b"these are someone's notes, not a database\n" * 100
    path.write_bytes(content)
    storage = SQLStorage(f"sqlite:///{path}")
    with pytest.raises(StorageError) as info:
        await storage.open()
    assert str(path) in str(info.value) and "not an SQLite database" in str(info.value)
    assert path.read_bytes() == content


async def test_a_corrupted_database_gives_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    storage = SQLStorage(f"sqlite:///{path}")
    await storage.open()
    for i in range(50):
        await storage.create_run(RunRecord(id=f"r{i}", workflow_name="wf",
                                           inputs={"pad": "x" * 500}))
    await storage.close()
    raw = bytearray(path.read_bytes())
    page_size = int.from_bytes(raw[16:18], "big")
    # Keep the header, smash the schema table and everything after the first page.
    raw[100:] = b"\xa5" * (len(raw) - 100)
    path.write_bytes(bytes(raw))
    assert page_size > 0
    broken = SQLStorage(f"sqlite:///{path}")
    with pytest.raises(StorageError) as info:
        await broken.open()
    assert str(path) in str(info.value)
    assert "malformed" in str(info.value) or "not a database" in str(info.value)
    assert path.read_bytes() == bytes(raw)


async def test_a_directory_in_place_of_the_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "runs.db").mkdir()
    with pytest.raises(StorageError, match="is a directory"):
        await SQLStorage(f"sqlite:///{tmp_path / 'runs.db'}").open()


async def test_missing_parent_directories_are_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "runs.db"
    storage = SQLStorage(f"sqlite:///{path}")
    await storage.open()
    await storage.close()
    await storage.close()
    assert path.is_file()


async def test_calls_before_open_raise(sqlite_url: str) -> None:
    with pytest.raises(StorageError, match="not open"):
        await SQLStorage(sqlite_url).get_run("x")


async def test_reopen_after_close_keeps_the_data(sqlite_storage: SQLStorage) -> None:
    await sqlite_storage.save_checkpoint("r", "a", {"v": 1})
    await sqlite_storage.close()
    await sqlite_storage.open()
    assert await sqlite_storage.load_checkpoints("r") == {"a": {"v": 1}}


# ----------------------------------------------------------------------------- input checks


async def test_values_that_are_not_json_ready_are_refused(sqlite_storage: SQLStorage) -> None:
    with pytest.raises(StorageError, match="output of step 'a' of run r is not JSON-ready"):
        await sqlite_storage.save_checkpoint("r", "a", {"handle": object()})
    assert await sqlite_storage.load_checkpoints("r") == {}
    attempt = StepAttempt(run_id="r", step_id="a", step_key="a", attempt=1, output={1, 2})
    await sqlite_storage.save_attempt(attempt)  # sets are JSON-ready as sorted lists
    assert (await sqlite_storage.list_attempts("r"))[0].output == [1, 2]


async def test_duplicate_run_ids_are_refused(sqlite_storage: SQLStorage) -> None:
    run = RunRecord(id="dup", workflow_name="wf")
    await sqlite_storage.create_run(run)
    with pytest.raises(StorageError, match="run dup already exists"):
        await sqlite_storage.create_run(run)


def test_run_filters_are_allow_listed() -> None:
    with pytest.raises(StorageError, match="cannot filter runs on 'id; DROP TABLE fy_runs'"):
        SQLStorage.run_conditions({"id; DROP TABLE fy_runs": 1})
    (condition,) = SQLStorage.run_conditions({"status": "x' OR '1'='1", "workflow_name": None})
    compiled = condition.compile()
    assert "x' OR" not in str(compiled)
    assert list(compiled.params.values()) == ["x' OR '1'='1"]


async def test_count_runs_counts_the_filtered_set(sqlite_storage: SQLStorage) -> None:
    for i in range(7):
        await sqlite_storage.create_run(RunRecord(id=f"r{i}", workflow_name="wf",
                                                  status="failed" if i < 3 else "completed"))
    assert await sqlite_storage.count_runs(RunQuery(status="failed", limit=1)) == 3
    assert await sqlite_storage.count_runs(RunQuery()) == 7


async def test_fields_without_a_column_round_trip_through_extra(
        sqlite_storage: SQLStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    # A RunRecord field added after the schema (no column of its own) is kept in 'extra'.
    import flowyard_sql.storage as module

    monkeypatch.setattr(module, "_RUN_COLUMNS", module._RUN_COLUMNS - {"error"})
    row = SQLStorage._run_row(RunRecord(id="e", workflow_name="wf", error="kept"))
    assert "error" not in row and '"error": "kept"' in row["extra"]
    await sqlite_storage.create_run(RunRecord(id="e", workflow_name="wf", error="kept"))
    assert (await sqlite_storage.get_run("e")).error == "kept"


# ----------------------------------------------------------------------------- migrations


def _create_at_first_revision(url: str) -> None:
    engine = sa.create_engine(SQLStorage(url)._url)
    try:
        with engine.begin() as conn:
            migrate.upgrade(conn, "0001")
            assert migrate.current_revision(conn) == "0001"
            conn.execute(sa.text(
                "INSERT INTO fy_runs (id, workflow_name, status, inputs, outputs, error, "
                "workflow_hash, workflow, created_at, started_at, finished_at, input_tokens, "
                "output_tokens, cost_usd, resume_count, metadata, extra) VALUES ('old', 'wf', "
                "'completed', '{\"q\": 1}', '{\"a\": 2}', NULL, 'h', '{}', 5.0, 5.0, 6.0, 1, 2, "
                "0.5, 0, '{}', '{}')"))
            conn.execute(sa.text(
                "INSERT INTO fy_checkpoints (run_id, step_key, output, saved_at) "
                "VALUES ('old', 's', '[1, 2]', 5.5)"))
        inspector = sa.inspect(engine)
        assert "fy_kv" not in inspector.get_table_names()
    finally:
        engine.dispose()


async def _check_upgraded(url: str) -> None:
    storage = SQLStorage(url)
    await storage.open()
    try:
        run = await storage.get_run("old")
        assert (run.status, run.inputs, run.outputs, run.cost_usd) == (
            "completed", {"q": 1}, {"a": 2}, 0.5)
        assert await storage.load_checkpoints("old") == {"s": [1, 2]}
        await storage.kv_set("plugin", "k", "v")
        assert await storage.kv_get("plugin", "k") == "v"
        assert storage._engine is not None
        with storage._engine.connect() as conn:
            assert migrate.current_revision(conn) == migrate.head_revision()
        indexes = {i["name"] for i in sa.inspect(storage._engine).get_indexes("fy_runs")}
        assert "ix_fy_runs_status_created" in indexes
    finally:
        await storage.close()


async def test_an_older_sqlite_database_is_upgraded_on_open(sqlite_url: str) -> None:
    assert migrate.head_revision() != "0001"
    _create_at_first_revision(sqlite_url)
    await _check_upgraded(sqlite_url)


async def test_an_older_postgres_database_is_upgraded_on_open(postgres_url: str) -> None:
    _create_at_first_revision(postgres_url)
    await _check_upgraded(postgres_url)


async def test_a_database_from_a_newer_version_is_refused(sqlite_storage: SQLStorage,
                                                          sqlite_url: str) -> None:
    await sqlite_storage.create_run(RunRecord(id="kept", workflow_name="wf"))
    await sqlite_storage.close()
    path = sqlite_storage.path
    assert path is not None
    with sqlite3.connect(path) as conn:
        conn.execute(f"UPDATE {migrate.VERSION_TABLE} SET version_num = '9999'")
    with pytest.raises(StorageError) as info:
        await SQLStorage(sqlite_url).open()
    assert str(path) in str(info.value) and "'9999'" in str(info.value)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT id FROM fy_runs").fetchall() == [("kept",)]


async def test_unreachable_postgres_names_the_url_without_password() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    storage = SQLStorage(f"postgresql+psycopg://u:hunter2@127.0.0.1:{port}/db")
    with pytest.raises(StorageError) as info:
        await storage.open()
    message = str(info.value)
    assert f"127.0.0.1:{port}/db" in message and "hunter2" not in message


def test_plugin_registers_sqlite_as_the_default_and_postgresql(tmp_path: Path) -> None:
    stack = Stack(discover=True, config={"paths": {"data_dir": str(tmp_path)}})
    meta: dict[str, Any] = stack.storage_schemes.metadata_of("sqlite")
    assert meta["default_priority"] == 10
    assert {"sqlite", "postgresql", "postgres"} <= set(stack.storage_schemes.names())


# ----------------------------------------------------------------------------- group commit


async def test_a_failing_write_in_a_group_commit_fails_alone(sqlite_storage: SQLStorage) -> None:
    from flowyard_sql.storage import _Request

    await sqlite_storage.create_run(RunRecord(id="taken", workflow_name="wf"))
    rows = [SQLStorage._run_row(RunRecord(id=i, workflow_name="wf"))
            for i in ("a", "taken", "b")]

    def insert(row: dict[str, Any]) -> Any:
        from flowyard_sql.schema import runs

        return lambda ex: ex.execute(runs.insert(), row)

    batch = [_Request(insert(row)) for row in rows]
    sqlite_storage._write_batch(batch)
    assert [r.result for r in batch] == [1, None, 1]
    assert batch[0].error is None and batch[2].error is None
    assert isinstance(batch[1].error, sqlite3.IntegrityError)
    stored = await sqlite_storage.list_runs(RunQuery(order="created_at"))
    assert sorted(r.id for r in stored) == ["a", "b", "taken"]


async def test_concurrent_writers_share_commits_and_keep_their_errors(
        sqlite_storage: SQLStorage) -> None:
    import anyio

    await sqlite_storage.create_run(RunRecord(id="r-7", workflow_name="wf"))
    errors: dict[str, Exception] = {}

    async def create(i: int) -> None:
        try:
            await sqlite_storage.create_run(RunRecord(id=f"r-{i}", workflow_name="wf"))
        except StorageError as exc:
            errors[f"r-{i}"] = exc

    async def checkpoint(i: int) -> None:
        await sqlite_storage.save_checkpoint("run", f"k{i}", i)

    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(create, i)
            tg.start_soon(checkpoint, i)
    assert list(errors) == ["r-7"] and "already exists" in str(errors["r-7"])
    assert await sqlite_storage.count_runs(RunQuery()) == 40
    assert await sqlite_storage.load_checkpoints("run") == {f"k{i}": i for i in range(40)}
