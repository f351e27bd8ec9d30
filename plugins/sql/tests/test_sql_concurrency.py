"""Eight processes write to one SQLite file at once: nothing is lost, nothing is 'locked'."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import anyio
from flowyard_sql.storage import SQLStorage

WRITERS = 8
BATCHES = 40
SIZE = 10


def _start_writers(url: str, tmp_path: Path) -> list[subprocess.Popen[str]]:
    script = Path(__file__).with_name("sql_writer_process.py")
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, str(script), url, str(i), str(BATCHES), str(SIZE),
                               str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for i in range(WRITERS)]
    time.sleep(1.0)  # let every interpreter start and wait at the gate
    go.touch()
    return procs


async def _check(url: str, procs: list[subprocess.Popen[str]]) -> None:
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert "locked" not in err.lower(), err
        assert proc.returncode == 0, err
    storage = SQLStorage(url)
    await storage.open()
    try:
        shared = await storage.list_events("shared", limit=100_000)
        assert len(shared) == WRITERS * BATCHES * SIZE
        for writer in range(WRITERS):
            run_id = f"writer-{writer}"
            events = await storage.list_events(run_id, limit=100_000)
            assert [e.seq for e in events] == list(range(1, BATCHES * SIZE + 1))
            assert sorted(e.seq for e in shared if e.data["w"] == writer) == [
                writer * 1_000_000 + s for s in range(1, BATCHES * SIZE + 1)]
            checkpoints = await storage.load_checkpoints(run_id)
            assert checkpoints == {f"step[{b}]": {"batch": b} for b in range(BATCHES)}
            assert len(await storage.list_logs(run_id)) == BATCHES
            assert len(await storage.list_costs(run_id)) == BATCHES
        assert len(await storage.list_costs()) == WRITERS * BATCHES
    finally:
        await storage.close()


def test_eight_sqlite_writer_processes_lose_nothing(tmp_path: Path) -> None:
    """The writers also race to create the schema of the new file."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    anyio.run(_check, url, _start_writers(url, tmp_path))


def test_eight_postgres_writer_processes_lose_nothing(tmp_path: Path, postgres_url: str) -> None:
    """The writers also race to migrate the new database (advisory lock)."""
    anyio.run(_check, postgres_url, _start_writers(postgres_url, tmp_path))
