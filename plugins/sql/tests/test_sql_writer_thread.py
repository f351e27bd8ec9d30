"""The SQLite writer thread of the group commit (issue 17): writes run on one long-lived
thread fed by a queue, and the event loop awaits the commit without a worker-thread hop.

Checked on asyncio and trio: a write from a cancelled task or cancelled while queued is still
committed before the cancellation propagates, closing the storage commits the queued writes
first and refuses later ones, the thread survives a failing batch (its callers get typed
StorageErrors), and a blocking caller in a plain thread still works.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from flowyard import Config
from flowyard.errors import StorageError
from flowyard.models import Event, LogRecord, RunRecord, StepAttempt
from flowyard_sql.storage import SQLStorage

pytestmark = pytest.mark.anyio


def _step(run_id: str, i: int) -> dict[str, Any]:
    """The keyword arguments of a commit_step ending step key ``s[i]``."""
    return {
        "attempt": StepAttempt(run_id=run_id, step_id="s", step_key=f"s[{i}]", attempt=1,
                               status="completed", started_at=float(i),
                               finished_at=float(i) + 0.5, output={"i": i}),
        "checkpoint": (f"s[{i}]", {"i": i}),
        "events": [Event(type="step.completed", run_id=run_id, step_id="s", data={"i": i},
                         time=float(i), seq=i + 1)],
        "logs": [LogRecord(run_id=run_id, message=f"done {i}", step_id="s", time=float(i))],
    }


class _Gate:
    """Holds the writer thread at the start of its next batch until :meth:`open` is called;
    :attr:`held` is set once the thread is waiting.
    """

    def __init__(self, storage: SQLStorage) -> None:
        group = storage._group
        assert group is not None
        self.group = group
        self.held = threading.Event()
        self.release = threading.Event()
        self.sizes: list[int] = []
        run_batch = group._run_batch

        def gated(batch: list[Any]) -> None:
            if not self.sizes:
                self.held.set()
                self.release.wait(10)
            self.sizes.append(len(batch))
            run_batch(batch)

        group._run_batch = gated  # type: ignore[method-assign]

    def queued(self) -> int:
        return len(self.group._queue)

    def open(self) -> None:
        self.release.set()


async def _wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await anyio.sleep(0.002)


async def test_writes_run_on_the_writer_thread_without_a_worker_thread(
        sqlite_storage: SQLStorage) -> None:
    from flowyard_sql.schema import kv

    stmt = sqlite_storage._upsert_stmt(kv, ("namespace", "key"))
    threads: set[str] = set()
    limiter = anyio.to_thread.current_default_thread_limiter()
    borrowed: list[float] = []

    async def write(i: int) -> None:
        def fn(ex: Any) -> None:
            threads.add(threading.current_thread().name)
            ex.execute(stmt, {"namespace": "t", "key": str(i), "value": "1", "updated_at": 0.0})

        borrowed.append(limiter.borrowed_tokens)
        await sqlite_storage._write(fn)
        borrowed.append(limiter.borrowed_tokens)

    async with anyio.create_task_group() as tg:
        for i in range(100):
            tg.start_soon(write, i)
    assert len(threads) == 1 and next(iter(threads)).startswith("flowyard-sql writer")
    assert max(borrowed) == 0  # no worker thread taken by any write
    assert await sqlite_storage.kv_get("t", "99") == 1


async def test_a_write_from_a_cancelled_task_is_committed_then_cancelled(
        sqlite_storage: SQLStorage) -> None:
    await sqlite_storage.create_run(RunRecord(id="r", workflow_name="wf"))
    reached_after = False
    with anyio.CancelScope() as scope:
        scope.cancel()
        await sqlite_storage.commit_step("r", **_step("r", 0))
        await anyio.sleep(0)  # the cancellation is raised here at the latest (trio)
        reached_after = True
    assert scope.cancelled_caught and not reached_after
    assert await sqlite_storage.load_checkpoints("r") == {"s[0]": {"i": 0}}
    assert [e.seq for e in await sqlite_storage.list_events("r")] == [1]


async def test_a_write_cancelled_while_queued_waits_for_its_commit(
        sqlite_storage: SQLStorage) -> None:
    await sqlite_storage.create_run(RunRecord(id="r", workflow_name="wf"))
    gate = _Gate(sqlite_storage)
    finished: list[float] = []
    opened_at: list[float] = []

    async def cancelled_writer(scope: anyio.CancelScope) -> None:
        with scope:
            await sqlite_storage.commit_step("r", **_step("r", 1))
            await anyio.sleep(0)
        finished.append(time.monotonic())

    async with anyio.create_task_group() as tg:
        tg.start_soon(sqlite_storage.save_checkpoint, "r", "first", 0)
        await _wait_for(gate.held.is_set)
        scope = anyio.CancelScope()
        tg.start_soon(cancelled_writer, scope)
        await _wait_for(lambda: gate.queued() == 1)
        scope.cancel()
        await anyio.sleep(0.05)
        assert not finished  # still waiting for its write, though cancelled
        opened_at.append(time.monotonic())
        gate.open()
    assert finished and finished[0] >= opened_at[0]
    assert await sqlite_storage.load_checkpoints("r") == {"first": 0, "s[1]": {"i": 1}}


async def test_close_commits_the_queued_writes_and_refuses_later_ones(sqlite_url: str) -> None:
    storage = SQLStorage(sqlite_url)
    await storage.open()
    await storage.create_run(RunRecord(id="r", workflow_name="wf"))
    gate = _Gate(storage)
    done: list[int] = []

    async def commit(i: int) -> None:
        await storage.commit_step("r", **_step("r", i))
        done.append(i)

    async with anyio.create_task_group() as tg:
        tg.start_soon(commit, 0)
        await _wait_for(gate.held.is_set)
        for i in range(1, 10):
            tg.start_soon(commit, i)
        await _wait_for(lambda: gate.queued() == 9)

        async def close() -> None:
            await storage.close()

        tg.start_soon(close)
        await anyio.sleep(0.05)
        with pytest.raises(StorageError, match="is not open"):
            await storage.commit_step("r", **_step("r", 10))
        gate.open()
    assert sorted(done) == list(range(10)) and gate.sizes == [1, 9]
    with pytest.raises(StorageError, match="is not open"):
        await storage.save_checkpoint("r", "late", 1)
    await storage.open()  # a new writer thread
    try:
        assert set(await storage.load_checkpoints("r")) == {f"s[{i}]" for i in range(10)}
        await storage.save_checkpoint("r", "late", 1)
        assert (await storage.load_checkpoints("r"))["late"] == 1
    finally:
        await storage.close()
    await storage.close()  # twice is fine


async def test_the_writer_thread_survives_a_failing_batch(tmp_path: Path) -> None:
    """Another process holds the write lock past the busy timeout: BEGIN IMMEDIATE fails for
    the whole batch, every caller gets a retriable StorageError, and the next writes work.
    """
    path = tmp_path / "runs.db"
    storage = SQLStorage(f"sqlite:///{path}",
                         Config({"storage": {"sqlite": {"busy_timeout": 0.2}}}))
    await storage.open()
    try:
        await storage.create_run(RunRecord(id="r", workflow_name="wf"))
        locker = sqlite3.connect(str(path), isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        errors: list[StorageError] = []

        async def commit(i: int) -> None:
            try:
                await storage.commit_step("r", **_step("r", i))
            except StorageError as exc:
                errors.append(exc)

        try:
            async with anyio.create_task_group() as tg:
                for i in range(5):
                    tg.start_soon(commit, i)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert len(errors) == 5
        assert all(e.retriable and "locked" in str(e) and str(path) in str(e) for e in errors)
        await storage.commit_step("r", **_step("r", 7))
        assert await storage.load_checkpoints("r") == {"s[7]": {"i": 7}}
    finally:
        await storage.close()


async def test_a_batch_raising_hands_its_error_to_every_caller(
        sqlite_storage: SQLStorage) -> None:
    group = sqlite_storage._group
    assert group is not None
    run_batch = group._run_batch
    calls = [0]

    def failing_once(batch: list[Any]) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise sqlite3.OperationalError("disk I/O error")
        run_batch(batch)

    group._run_batch = failing_once  # type: ignore[method-assign]
    with pytest.raises(StorageError, match="disk I/O error") as info:
        await sqlite_storage.save_checkpoint("r", "a", 1)
    assert not info.value.retriable
    await sqlite_storage.save_checkpoint("r", "b", 2)
    assert await sqlite_storage.load_checkpoints("r") == {"b": 2}


async def test_a_blocking_caller_in_a_plain_thread_is_group_committed(
        sqlite_storage: SQLStorage) -> None:
    from flowyard_sql.schema import kv

    stmt = sqlite_storage._upsert_stmt(kv, ("namespace", "key"))

    def write() -> int:
        return sqlite_storage._write_tx(lambda ex: ex.execute(
            stmt, {"namespace": "t", "key": "k", "value": "3", "updated_at": 0.0}))

    assert await anyio.to_thread.run_sync(write) == 1
    assert await sqlite_storage.kv_get("t", "k") == 3


async def test_an_unexpected_writer_thread_error_fails_its_writes_and_refuses_more(
        sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    storage = SQLStorage(sqlite_url)
    await storage.open()
    group = storage._group
    assert group is not None

    def broken(batch: list[Any]) -> None:
        raise RuntimeError("a bug in the writer loop")

    group._run = broken  # type: ignore[method-assign]
    try:
        with pytest.raises(StorageError, match="writer thread of .* ended unexpectedly"):
            await storage.save_checkpoint("r", "a", 1)
        with pytest.raises(StorageError, match="is not open"):
            await storage.save_checkpoint("r", "b", 2)
    finally:
        await storage.close()
    assert "ended unexpectedly" in caplog.text
    await storage.open()  # a new writer thread
    try:
        del group._run
        await storage.save_checkpoint("r", "c", 3)
        assert await storage.load_checkpoints("r") == {"c": 3}
    finally:
        await storage.close()
