"""Storage failures in the middle of a run on a real SQLite file, and idempotent submissions
from several processes.

The lock tests hold the file's write lock from another connection (``BEGIN IMMEDIATE`` in a
thread) longer than a short busy timeout while a run is in progress: the run's writes fail
with a retriable StorageError, are retried, and the run stops with a plain ``StorageError``
naming the run and step. Either the storage accepts the run's end afterwards (the run is
``failed``) or it does not (the run is left ``running`` with its lease released or expiring,
i.e. abandoned); in both cases ``resume`` completes it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import flowyard_sql.plugin
import pytest
from flowyard.engine import RunStorageError
from flowyard.engine.lease import run_state
from flowyard.errors import StorageError
from flowyard.hookspecs import hookimpl
from flowyard.stack import Stack
from flowyard.tools import tool

HERE = Path(__file__).parent
FLOWYARD = str(Path(sys.executable).parent / "flowyard")


class Locker:
    """Holds the write lock of a SQLite file from its own connection in a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.held = threading.Event()
        self.release = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        def hold() -> None:
            connection = sqlite3.connect(str(self.path), isolation_level=None, timeout=10)
            try:
                connection.execute("BEGIN IMMEDIATE")
                self.held.set()
                self.release.wait(60)
                connection.execute("COMMIT")
            finally:
                connection.close()

        self.thread = threading.Thread(target=hold, daemon=True)
        self.thread.start()
        self.held.wait(10)

    def stop(self) -> None:
        self.release.set()
        if self.thread is not None:
            self.thread.join(10)


def _stack(db: Path, locker: Locker, calls: list[str]) -> Stack:
    @tool(name="lock.grab")
    async def grab(label: str) -> dict[str, Any]:
        """Take the database's write lock from another connection (first call only).

        Args:
            label: returned as given.
        """
        calls.append(label)
        if len(calls) == 1:
            await anyio.to_thread.run_sync(locker.start)
        return {"label": label}

    class Plugin:
        @hookimpl
        def register_tools(self, register: Any, config: Any) -> None:
            register("lock.grab", grab)

    return Stack([("locking", Plugin()), ("sql", flowyard_sql.plugin)], config={
        "storage": {"url": f"sqlite:///{db}", "sqlite": {"busy_timeout": 0.1}},
        "engine": {"storage_write_attempts": 3, "storage_retry_wait": 0.05},
        "runs": {"heartbeat_interval": 0.3, "lease_timeout": 1.0}})


WF = {"name": "locked", "steps": [
    {"id": "grab", "uses": "lock.grab", "with": {"label": "first"}},
    {"id": "after", "uses": "echo", "with": {"value": "${grab.label}"}}],
    "outputs": {"label": "${after}"}}


@pytest.mark.anyio
async def test_a_lock_held_past_the_busy_timeout_fails_the_run_then_resume_completes_it(
        tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    locker = Locker(db)
    calls: list[str] = []
    stack = _stack(db, locker, calls)
    async with stack:
        storage = stack.storage
        original = storage.update_run

        async def update_run(run: Any) -> None:  # the lock is let go when the end is written
            if run.status == "failed":
                await anyio.to_thread.run_sync(locker.stop)
            await original(run)

        storage.update_run = update_run  # type: ignore[method-assign]
        with pytest.raises(StorageError) as info:
            await stack.run(WF, run_id="locked-1")
        error = info.value
        assert isinstance(error, RunStorageError) and error.retriable
        assert error.run_id == "locked-1" and error.step_key == "grab"
        assert "run locked-1, step 'grab'" in str(error) and "database is locked" in str(error)
        assert str(db) in str(error) and "tried 3 times" in str(error)
        assert error.state == "failed"
        record = await storage.get_run("locked-1")
        assert record.status == "failed" and "database is locked" in record.error
        assert await storage.get_leases(["locked-1"]) == {}  # released
        storage.update_run = original  # type: ignore[method-assign]
        result = await stack.resume("locked-1")
    locker.stop()
    assert result.status == "completed" and result.outputs == {"label": "first"}
    assert calls == ["first", "first"]  # grab's checkpoint was never written: it ran again


@pytest.mark.anyio
async def test_a_lock_held_through_the_end_leaves_the_run_abandoned_and_resumable(
        tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    locker = Locker(db)
    calls: list[str] = []
    stack = _stack(db, locker, calls)
    async with stack:
        storage = stack.storage
        try:
            with pytest.raises(StorageError) as info:
                await stack.run(WF, run_id="locked-2")
        finally:
            locker.stop()
        error = info.value
        assert isinstance(error, RunStorageError) and error.state == "abandoned"
        assert "run locked-2, step 'grab'" in str(error) and "abandoned" in str(error)
        record = await storage.get_run("locked-2")
        assert record.status == "running"  # the end could not be written
        deadline = time.time() + 5
        while True:  # its lease was not released (locked too): it expires after 1 s
            lease = (await storage.get_leases(["locked-2"])).get("locked-2")
            if run_state(record, lease) == "abandoned" or time.time() > deadline:
                break
            await anyio.sleep(0.1)
        assert run_state(record, lease) == "abandoned"
        result = await stack.resume("locked-2")
    assert result.status == "completed" and result.outputs == {"label": "first"}
    assert result.resume_count == 1


def test_the_cli_prints_one_storage_error_line_not_a_traceback(tmp_path: Path) -> None:
    """`flowyard run` on a database locked by another connection: exit 1, one error line."""
    db = tmp_path / "runs.db"
    workflow = tmp_path / "wf.yaml"
    workflow.write_text("name: cli\nsteps:\n  - id: a\n    uses: echo\n    with: {value: 1}\n")
    env = {**os.environ, "FLOWYARD_STORAGE_URL": f"sqlite:///{db}",
           "FLOWYARD_STORAGE__SQLITE__BUSY_TIMEOUT": "0.1",
           "FLOWYARD_ENGINE__STORAGE_WRITE_ATTEMPTS": "2",
           "FLOWYARD_ENGINE__STORAGE_RETRY_WAIT": "0.05"}
    first = subprocess.run([FLOWYARD, "run", str(workflow), "--no-live",
                            "--run-id", "cli-0"], env=env, capture_output=True, text=True,
                           timeout=120)
    assert first.returncode == 0, first.stderr
    locker = Locker(db)
    locker.start()
    try:
        proc = subprocess.run([FLOWYARD, "run", str(workflow),
                               "--no-live", "--run-id", "cli-1"], env=env,
                              capture_output=True, text=True, timeout=120)
    finally:
        locker.stop()
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "ExceptionGroup" not in proc.stderr
    assert "error:" in proc.stderr and "database is locked" in proc.stderr


def test_four_processes_submitting_one_key_run_the_body_once(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    effects = tmp_path / "effects.txt"
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, str(HERE / "sql_idempotent_submit.py"), str(db),
                               str(effects), "submission-42", str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    time.sleep(2.0)  # every process opened the storage (or is about to) and waits for go
    go.write_text("go")
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    lines = effects.read_text().splitlines()
    assert len(lines) == 1, lines  # the body ran once
    assert {r["run_id"] for r in results} == {results[0]["run_id"]}
    assert all(r["status"] == "completed" and r["outputs"] == {"text": "once"}
               for r in results)
    with sqlite3.connect(str(db)) as connection:
        rows = connection.execute("SELECT id, idempotency_key FROM fy_runs").fetchall()
    assert rows == [(results[0]["run_id"], "submission-42")]
