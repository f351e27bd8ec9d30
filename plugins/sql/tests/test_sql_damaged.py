"""Damaged databases on disk and damaged values inside them: always a StorageError naming the
file (and the run/step), never a reset, never a write to a refused file, never a raw decoder
error."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from flowyard.errors import StorageError
from flowyard.interfaces import RunQuery
from flowyard.models import Event, RunRecord
from flowyard_sql.storage import SQLStorage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.anyio


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def make_database(path: Path, runs: int = 40) -> None:
    storage = SQLStorage(f"sqlite:///{path}")
    await storage.open()
    for i in range(runs):
        await storage.create_run(RunRecord(id=f"r{i:03d}", workflow_name="wf",
                                           inputs={"text": f"input {i} " * 30}))
        await storage.save_checkpoint(f"r{i:03d}", "step", {"answer": i})
    await storage.close()
    # fold the WAL into the main file so that damage to the file is damage to the data
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def test_an_empty_file_is_refused_not_reinitialised(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(b"")
    with pytest.raises(StorageError) as info:
        await SQLStorage(f"sqlite:///{path}").open()
    assert str(path) in str(info.value) and "empty (0 bytes)" in str(info.value)
    assert path.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.db"]


async def test_a_truncated_runs_database_fails_the_cli_with_the_file_named(
        tmp_path: Path, flowyard_home: Path) -> None:
    path = tmp_path / "runs.db"
    await make_database(path, runs=3)
    path.write_bytes(b"")  # what `: > runs.db` or a bad copy leaves
    env = {**os.environ, "FLOWYARD_STORAGE__URL": f"sqlite:///{path}"}
    done = subprocess.run([str(Path(sys.executable).parent / "flowyard"), "runs", "list"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "no runs match" not in done.stdout
    assert str(path) in done.stdout + done.stderr and "empty" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert path.stat().st_size == 0


async def test_damaged_pages_are_found_on_open_and_the_file_is_left_alone(tmp_path: Path
                                                                          ) -> None:
    path = tmp_path / "runs.db"
    await make_database(path)
    raw = bytearray(path.read_bytes())
    page_size = int.from_bytes(raw[16:18], "big")
    # garble the b-tree header and cell pointers of the third page (a table or index page)
    for offset in range(2 * page_size, 2 * page_size + 64):
        raw[offset] ^= 0x5A
    path.write_bytes(bytes(raw))
    before = digest(path)
    with pytest.raises(StorageError) as info:
        await SQLStorage(f"sqlite:///{path}").open()
    message = str(info.value)
    assert str(path) in message and "damaged" in message and ".recover" in message
    assert digest(path) == before


async def test_the_check_can_be_switched_off_for_huge_files(tmp_path: Path) -> None:
    from flowyard.config import Config

    path = tmp_path / "runs.db"
    await make_database(path, runs=2)
    storage = SQLStorage(f"sqlite:///{path}",
                         Config({"storage": {"sqlite": {"check_on_open": "off"}}}))
    await storage.open()
    assert (await storage.get_run("r001")).workflow_name == "wf"
    await storage.close()
    with pytest.raises(StorageError, match="check_on_open must be one of"):
        SQLStorage(f"sqlite:///{path}", Config({"storage": {"sqlite": {"check_on_open": "x"}}}))


async def test_another_programs_database_is_refused_unless_adopted(tmp_path: Path) -> None:
    from flowyard.config import Config

    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('Ada')")
    before = digest(path)
    with pytest.raises(StorageError, match="tables customers; no flowyard_alembic_version"):
        await SQLStorage(f"sqlite:///{path}").open()
    assert digest(path) == before
    adopted = SQLStorage(f"sqlite:///{path}",
                         Config({"storage": {"sqlite": {"adopt_existing": True}}}))
    await adopted.open()
    await adopted.create_run(RunRecord(id="r", workflow_name="wf"))
    await adopted.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT name FROM customers").fetchall() == [("Ada",)]


async def test_a_new_file_is_created_whole_with_no_temporary_files_left(tmp_path: Path
                                                                        ) -> None:
    path = tmp_path / "new" / "runs.db"
    storage = SQLStorage(f"sqlite:///{path}")
    await storage.open()
    await storage.close()
    assert path.read_bytes()[:16] == b"SQLite format 3\x00"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".new")]
    again = SQLStorage(f"sqlite:///{path}")  # a second open passes the checks
    await again.open()
    await again.close()


async def test_damaged_values_name_the_run_and_step(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    await make_database(path, runs=2)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE fy_checkpoints SET output = '{\"answer\": ' WHERE run_id = 'r001'")
        conn.execute("UPDATE fy_checkpoints SET output = CAST(x'fffe7b' AS TEXT) "
                     "WHERE run_id = 'r000'")
    storage = SQLStorage(f"sqlite:///{path}")
    await storage.open()
    try:
        with pytest.raises(StorageError) as info:
            await storage.load_checkpoints("r001")
        assert "checkpoint of step 'step' of run r001" in str(info.value)
        assert "JSONDecodeError" in str(info.value)
        with pytest.raises(StorageError) as info:
            await storage.load_checkpoints("r000")
        assert str(path) in str(info.value) or "r000" in str(info.value)
    finally:
        await storage.close()


async def test_a_lone_surrogate_is_refused_before_anything_is_stored(tmp_path: Path) -> None:
    storage = SQLStorage(f"sqlite:///{tmp_path / 'runs.db'}")
    await storage.open()
    try:
        with pytest.raises(StorageError) as info:
            await storage.create_run(RunRecord(id="bad", workflow_name="wf",
                                               inputs={"text": "ok \ud800 no"}))
        assert "run bad" in str(info.value) and "lone surrogate" in str(info.value)
        assert await storage.count_runs(RunQuery()) == 0
        with pytest.raises(StorageError, match="lone surrogate"):
            await storage.append_events([Event(type="x", run_id="r", data={"t": "\udfff"})])
    finally:
        await storage.close()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=st.lists(st.tuples(st.integers(min_value=100, max_value=200_000),
                                 st.binary(min_size=1, max_size=64)), min_size=1, max_size=4))
def test_random_damage_is_a_storage_error_or_a_clean_open(tmp_path_factory: pytest.TempPathFactory,
                                                           damage: list[tuple[int, bytes]]
                                                           ) -> None:
    """Whatever bytes are overwritten, opening and reading either works or raises a
    StorageError naming the file; a refused file is never changed."""
    import anyio

    folder = tmp_path_factory.mktemp("fuzz")
    template = folder / "template.db"
    anyio.run(make_database, template, 20)
    raw = bytearray(template.read_bytes())
    for offset, data in damage:
        start = offset % len(raw)
        raw[start:start + len(data)] = data[:len(raw) - start]
    path = folder / "runs.db"
    path.write_bytes(bytes(raw))
    before = digest(path)

    async def open_and_read() -> None:
        storage = SQLStorage(f"sqlite:///{path}")
        await storage.open()
        try:
            for run in ("r000", "r010", "r019"):
                await storage.get_run(run)
                await storage.load_checkpoints(run)
        finally:
            await storage.close()

    try:
        anyio.run(open_and_read)
    except StorageError as exc:
        assert str(path) in str(exc) or "run r0" in str(exc) or "of run" in str(exc), exc
        if "damaged (SQLite" in str(exc) or "not an SQLite" in str(exc):
            assert digest(path) == before


async def test_a_lock_held_past_the_busy_timeout_is_a_retriable_storage_error(
        tmp_path: Path) -> None:
    from flowyard.config import Config

    path = tmp_path / "runs.db"
    await make_database(path, runs=1)
    storage = SQLStorage(f"sqlite:///{path}",
                         Config({"storage": {"sqlite": {"busy_timeout": 0.2}}}))
    await storage.open()
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process's long write transaction
        with pytest.raises(StorageError) as info:
            await storage.create_run(RunRecord(id="late", workflow_name="wf"))
        assert info.value.retriable is True
        assert str(path) in str(info.value) and "locked" in str(info.value)
        assert "busy timeout of 0.2s" in str(info.value)
        holder.execute("ROLLBACK")
        await storage.create_run(RunRecord(id="late", workflow_name="wf"))  # now it works
        assert (await storage.get_run("late")).workflow_name == "wf"
    finally:
        holder.close()
        await storage.close()


async def test_damage_is_not_retriable(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(b"")
    with pytest.raises(StorageError) as info:
        await SQLStorage(f"sqlite:///{path}").open()
    assert info.value.retriable is False
