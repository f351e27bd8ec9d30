"""Run leases with real ``flowyard`` processes on SQLite (and PostgreSQL).

- a ``flowyard run`` killed with SIGKILL shows as ``abandoned`` in ``runs list`` and ``runs
  show`` (``flowyard stats`` is flowyard-stats', tested there), and ``flowyard resume`` takes it
  over at once (its owner pid is gone);
- ``flowyard resume`` of a run that a live process is executing is refused with one line
  naming the run, the owner's host and pid and the seconds since its heartbeat, and no step
  runs twice;
- of two ``flowyard resume`` of one abandoned run, the second is refused while the first runs;
- with a short lease, a frozen (SIGSTOP) owner's run becomes abandoned and is resumed; when
  the frozen process wakes up it finds its lease lost, stops, and writes nothing;
- claims racing from several processes have exactly one winner.

The scenario (workflow, crash-test plugin, isolated flowyard home) is the one of
``test_sql_crash_resume.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def _load(name: str) -> Any:
    path = Path(__file__).with_name(name)
    spec = importlib.util.spec_from_file_location(f"lease_helpers_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_crash = _load("test_sql_crash_resume.py")
Scenario = _crash.Scenario
ALL_KEYS: set[str] = _crash.ALL_KEYS
idempotency_key: Callable[[str, str], str] = _crash._idempotency_key  # noqa: SLF001


def _wait(condition: Callable[[], bool], what: str, proc: subprocess.Popen[str] | None = None,
          timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None:
            assert proc.poll() is None, f"the process ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"not {what} within {timeout} s"
        time.sleep(0.02)


def _checkpoints(scenario: Any) -> int:
    if not scenario.db.exists():
        return 0
    try:
        return int(scenario.query("SELECT count(*) FROM fy_checkpoints")[0][0])
    except sqlite3.OperationalError:  # the schema is not created yet
        return 0


def _runs(scenario: Any, *args: str) -> list[dict[str, Any]]:
    done = scenario.flowyard("runs", "list", "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, done.stdout + done.stderr
    return lines[0]


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


@pytest.fixture
def scenario(tmp_path: Path) -> Any:
    made = Scenario(tmp_path)
    made.env["COLUMNS"] = "250"  # rich tables: no wrapped or elided cells
    return made


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    """Outputs (run outputs, step outputs) of an uninterrupted run."""
    made = Scenario(tmp_path_factory.mktemp("lease-reference"))
    done = made.flowyard("run", str(made.workflow))
    assert done.returncode == 0, done.stderr
    return made.outputs(made.run_id())  # type: ignore[no-any-return]


def test_a_killed_run_shows_as_abandoned_and_resumes(
        scenario: Any, reference: tuple[dict[str, Any], dict[str, Any]]) -> None:
    proc = scenario.start_run()
    try:
        _wait(lambda: _checkpoints(scenario) >= 2, "two checkpoints", proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        _stop(proc)
    run_id = scenario.run_id()

    (row,) = _runs(scenario)
    assert (row["id"], row["status"], row["state"]) == (run_id, "running", "abandoned")
    assert (row["lease"]["host"], row["lease"]["pid"]) == (socket.gethostname(), proc.pid)
    assert [r["id"] for r in _runs(scenario, "--status", "abandoned")] == [run_id]
    assert _runs(scenario, "--status", "running") == []
    table = scenario.flowyard("runs", "list")
    assert table.returncode == 0 and "abandoned" in table.stdout and "flowyard resume" in \
        table.stdout
    shown = scenario.flowyard("runs", "show", run_id)
    assert shown.returncode == 0, shown.stderr
    assert "status abandoned" in shown.stdout and f"pid {proc.pid}" in shown.stdout
    assert f"flowyard resume {run_id}" in shown.stdout
    shown_json = json.loads(scenario.flowyard("runs", "show", run_id, "--json").stdout)
    assert shown_json["state"] == "abandoned" and shown_json["run"]["status"] == "running"
    # reading never rewrites the stored status
    assert scenario.query("SELECT status FROM fy_runs")[0][0] == "running"

    resumed = scenario.flowyard("resume", run_id)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    (row,) = _runs(scenario)
    assert (row["status"], row["state"], row["lease"], row["resume_count"]) == (
        "completed", "completed", None, 1)
    assert scenario.query("SELECT count(*) FROM fy_run_leases")[0][0] == 0
    assert scenario.outputs(run_id) == reference


def _slow(scenario: Any) -> None:
    """Make the fan-out items take 3 s each (outputs do not depend on the sleeps), so the run
    is still going while other ``flowyard`` commands start and answer."""
    scenario.workflow.write_text(_crash.WORKFLOW.replace("sleep: 0.5", "sleep: 3"))


def test_resuming_a_live_run_is_refused_and_no_step_runs_twice(
        scenario: Any, reference: tuple[dict[str, Any], dict[str, Any]]) -> None:
    _slow(scenario)
    proc = scenario.start_run()
    try:
        _wait(lambda: _checkpoints(scenario) >= 1, "a checkpoint", proc)
        run_id = scenario.run_id()
        (row,) = _runs(scenario)
        assert (row["state"], row["lease"]["pid"]) == ("running", proc.pid)
        assert row["lease"]["heartbeat_age_s"] < 30

        refused = scenario.flowyard("resume", run_id)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        line = _error_line(refused)
        assert f"run {run_id} is being executed by a live process" in line
        assert f"host {socket.gethostname()}, pid {proc.pid}, last heartbeat" in line
        assert "s ago" in line
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
    finally:
        _stop(proc)

    status, resume_count = scenario.query("SELECT status, resume_count FROM fy_runs")[0]
    assert (status, resume_count) == ("completed", 0)
    effects = scenario.effects_of()
    assert effects == {key: [idempotency_key(run_id, key)] for key in ALL_KEYS}
    assert scenario.outputs(run_id) == reference


def test_a_second_resume_is_refused_while_the_first_runs(
        scenario: Any, reference: tuple[dict[str, Any], dict[str, Any]]) -> None:
    _slow(scenario)
    run_id = scenario.kill_after_checkpoints(1)
    completed_before = {k for (k,) in scenario.query("SELECT step_key FROM fy_checkpoints")}
    effects_before = scenario.effects_of()

    first = subprocess.Popen([_crash._flowyard(), "resume", run_id],  # noqa: SLF001
                             cwd=scenario.root, env=scenario.env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait(lambda: scenario.query("SELECT pid FROM fy_run_leases") == [(first.pid,)],
              "the first resume holds the lease", first)
        second = scenario.flowyard("resume", run_id)
        assert second.returncode == 1, second.stdout + second.stderr
        assert f"pid {first.pid}," in _error_line(second)
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0, out + err
    finally:
        _stop(first)

    status, resume_count = scenario.query("SELECT status, resume_count FROM fy_runs")[0]
    assert (status, resume_count) == ("completed", 1)
    effects = scenario.effects_of()
    assert set(effects) == ALL_KEYS
    for key, lines in effects.items():
        assert set(lines) == {idempotency_key(run_id, key)}, key
        if key in completed_before:
            assert len(lines) == 1, f"completed step {key} ran again"
        else:  # in flight at the kill: once more; never started: once
            assert len(lines) == len(effects_before.get(key, [])) + 1, (key, lines)
    assert scenario.outputs(run_id) == reference


def _write_lock_free(db: Path) -> bool:
    """True when no process holds the SQLite write lock (a frozen one must not)."""
    try:
        with sqlite3.connect(db, timeout=0.05, isolation_level=None) as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False


def test_a_frozen_owner_loses_its_expired_lease_and_writes_nothing(
        scenario: Any, reference: tuple[dict[str, Any], dict[str, Any]]) -> None:
    scenario.env["FLOWYARD_RUNS__HEARTBEAT_INTERVAL"] = "0.2"
    scenario.env["FLOWYARD_RUNS__LEASE_TIMEOUT"] = "1.5"
    proc = scenario.start_run()
    try:
        _wait(lambda: _checkpoints(scenario) >= 2, "two checkpoints", proc)
        for _ in range(50):  # freeze it outside of a write transaction
            os.kill(proc.pid, signal.SIGSTOP)
            if _write_lock_free(scenario.db):
                break
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.01)
        else:
            raise AssertionError("the run process always held the write lock")
        frozen_checkpoints = {k for (k,) in scenario.query(
            "SELECT step_key FROM fy_checkpoints")}
        run_id = scenario.run_id()

        _wait(lambda: _runs(scenario)[0]["state"] == "abandoned",
              "abandoned after the lease timeout")
        (row,) = _runs(scenario)
        assert row["lease"]["pid"] == proc.pid  # the owner still exists, but is frozen
        resumed = scenario.flowyard("resume", run_id)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        done_by_resume = scenario.query("SELECT * FROM fy_runs")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        _stop(proc)
    assert proc.returncode == 1, out + err
    assert "lost the run's lease" in _error_line(
        subprocess.CompletedProcess(proc.args, proc.returncode, out, err))

    # the woken process did not write its end over the resumed run's
    assert scenario.query("SELECT * FROM fy_runs") == done_by_resume
    status, resume_count = scenario.query("SELECT status, resume_count FROM fy_runs")[0]
    assert (status, resume_count) == ("completed", 1)
    assert scenario.query("SELECT count(*) FROM fy_run_leases")[0][0] == 0
    effects = scenario.effects_of()
    for key in frozen_checkpoints:
        assert len(effects[key]) == 1, f"completed step {key} ran again"
    assert scenario.outputs(run_id) == reference


_CLAIM = """\
import sys, time
import anyio
from flowyard.interfaces import RunLease
from flowyard_sql.storage import SQLStorage

url, run_id, stale_owner, start = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])

async def main():
    storage = SQLStorage(url)
    await storage.open()
    try:
        lease = RunLease(run_id=run_id, owner=f"owner-{sys.argv[5]}", host="h", pid=0,
                         acquired_at=start, heartbeat_at=start, expires_at=start + 60)
        while time.time() < start:
            time.sleep(0.001)
        held = await storage.claim_lease(lease, now=time.time(), replace_owner=stale_owner)
        print(held.owner)
    finally:
        await storage.close()

anyio.run(main)
"""


async def _prepare_race(url: str) -> str:
    from flowyard.interfaces import RunLease
    from flowyard.models import RunRecord
    from flowyard_sql.storage import SQLStorage

    storage = SQLStorage(url)
    await storage.open()
    try:
        await storage.create_run(RunRecord(id="raced", workflow_name="w", status="running"))
        stale = RunLease(run_id="raced", owner="stale", host="h", pid=1, acquired_at=1.0,
                         heartbeat_at=1.0, expires_at=2.0)
        await storage.claim_lease(stale, now=1.0)
    finally:
        await storage.close()
    return "stale"


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_claims_racing_from_several_processes_have_one_winner(
        database: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    import anyio

    url = (f"sqlite:///{tmp_path / 'race.db'}" if database == "sqlite"
           else request.getfixturevalue("postgres_url"))
    stale = anyio.run(_prepare_race, url)
    start = time.time() + 3  # every process is connected and waiting by then
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIM, url, "raced", stale, str(start),
                               str(i)], text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for i in range(6)]
    answers = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        answers.append(out.strip())
    # every process saw the same single winner, which is one of them
    assert len(set(answers)) == 1 and answers[0].startswith("owner-"), answers


def _pg(url: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        return conn.execute(sql).fetchall()


def test_a_killed_run_on_postgresql_shows_as_abandoned_and_resumes(
        scenario: Any, postgres_url: str) -> None:
    scenario.env["FLOWYARD_STORAGE_URL"] = postgres_url

    def checkpoints() -> int:
        import psycopg

        try:
            return int(_pg(postgres_url, "SELECT count(*) FROM fy_checkpoints")[0][0])
        except psycopg.errors.UndefinedTable:  # the schema is not created yet
            return 0

    proc = scenario.start_run()
    try:
        _wait(lambda: checkpoints() >= 2, "two checkpoints", proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        _stop(proc)
    (row,) = _runs(scenario)
    assert (row["status"], row["state"], row["lease"]["pid"]) == ("running", "abandoned",
                                                                  proc.pid)
    resumed = scenario.flowyard("resume", row["id"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    (row,) = _runs(scenario)
    assert (row["state"], row["lease"], row["resume_count"]) == ("completed", None, 1)
    effects = scenario.effects_of()
    assert set(effects) == ALL_KEYS


async def _upgrade_from_0002(url: str) -> None:
    import sqlalchemy as sa
    from flowyard.engine.lease import LeaseKeeper, LeaseSettings, run_state
    from flowyard_sql import migrate
    from flowyard_sql.storage import SQLStorage

    engine = sa.create_engine(SQLStorage(url)._url)  # noqa: SLF001
    try:
        with engine.begin() as conn:
            migrate.upgrade(conn, "0002")
            conn.execute(sa.text(
                "INSERT INTO fy_runs (id, workflow_name, status, inputs, outputs, error, "
                "workflow_hash, workflow, created_at, started_at, finished_at, input_tokens, "
                "output_tokens, cost_usd, resume_count, metadata, extra) VALUES ('old', 'wf', "
                "'running', '{}', '{}', NULL, 'h', '{}', 5.0, 5.0, NULL, 0, 0, 0.0, 0, '{}', "
                "'{}')"))
        assert "fy_run_leases" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
    storage = SQLStorage(url)
    await storage.open()  # upgrades to the head revision
    try:
        assert "fy_run_leases" in sa.inspect(storage._engine).get_table_names()  # noqa: SLF001
        run = await storage.get_run("old")
        assert await storage.get_leases(["old"]) == {}
        assert run_state(run, None) == "abandoned"  # left running by an older version
        keeper = LeaseKeeper(storage, "old", LeaseSettings())
        lease = await keeper.claim()
        assert await storage.get_leases(["old"]) == {"old": lease}
    finally:
        await storage.close()


@pytest.mark.anyio
@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_a_database_at_revision_0002_gains_run_leases(
        database: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = (f"sqlite:///{tmp_path / 'old.db'}" if database == "sqlite"
           else request.getfixturevalue("postgres_url"))
    await _upgrade_from_0002(url)
