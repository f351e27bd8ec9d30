"""Scale-out simulation (issue 24, part 4): 8 ``flowyard worker`` OS processes against one
PostgreSQL database drain 2,000 queued no-op tasks while a seeded killer SIGKILLs a random
worker 24 times, at random points of the drain, and starts a replacement each time, so that
8 keep running.

What is checked is exactly-once *completion* under at-least-once *execution*:

- every task ends ``completed`` exactly once: the database's own history (test-only triggers
  on ``fy_tasks`` and ``fy_runs``, see ``scale_support.HISTORY_SQL``) shows one
  ``running -> completed`` change per task, none to ``failed`` or ``cancelled`` and no write
  to the task after it; that change was written by the process holding the task's last
  claim (each worker's connections carry its name as ``application_name``), before it was
  killed, and its log shows it ran the task;
- every task's run is one stored run (no second run for a task), completed exactly once,
  with its step completed once (``fy_attempts``); a run is ``cancelled`` on the way only
  after its task was taken over (a live worker that lost its lease stops its run);
- no task is left ``queued`` or ``running``, and none lost its lease for good;
- executions of the step (one line per call in a side-effect file, written by the test-only
  tool ``scale.noop``): at least one per task, exactly one for a task claimed once, and never
  more than the task's claims: a task whose worker was killed is taken over by another
  worker (after its 3 s lease expired) and its step may run again (at-least-once execution
  is expected), but its completion is recorded once.

The seed is printed (``-s``); set ``FLOWYARD_SCALE_SEED`` to replay a schedule of kills.
``FLOWYARD_SCALE_TASKS`` changes the number of tasks (default 2,000, the issue's figure).
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import flowyard_server  # noqa: F401 - installed in .venv with every distribution
import flowyard_sql  # noqa: F401
import pytest

pytestmark = [pytest.mark.slow]


def _support() -> Any:
    """tests/e2e/scale_support.py, loaded by path (test modules are imported with
    ``--import-mode=importlib``, so a sibling module is not importable by name)."""
    name = "flowyard_e2e_scale_support"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().with_name("scale_support.py")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


scale = _support()

TASKS = int(os.environ.get("FLOWYARD_SCALE_TASKS", "2000"))
WORKERS = 8
CONCURRENCY = 4  # tasks each worker runs at once (the default of [server] concurrency)
LEASE = 3.0  # seconds: task lease and run lease
RENEW = 0.5  # seconds between two renewals (heartbeats)
KILLS = 24  # SIGKILLs, at random points of the drain (one per ~83 tasks completed)
DRAIN_TIMEOUT = 400.0  # seconds; the drain takes about 60 on 2 quiet cores


def test_exactly_once_completion_with_workers_killed(postgres_server: Any,
                                                     tmp_path: Path) -> None:
    seed = int(os.environ.get("FLOWYARD_SCALE_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\nscale-out simulation: seed {seed} (FLOWYARD_SCALE_SEED={seed} replays it), "
          f"{TASKS} tasks, {WORKERS} workers x {CONCURRENCY}, lease {LEASE} s")
    rng = random.Random(seed)
    database = postgres_server.create_database()
    url = postgres_server.url(database)
    executions_file = tmp_path / "executions.txt"
    site = tmp_path / "site"
    site.mkdir()
    env = scale.worker_env(
        url, tmp_path, plugins=f"builtin,server,sql,{scale.NOOP_PLUGIN}",
        lease_timeout=LEASE, renew_interval=RENEW, poll_interval=0.1,
        pythonpath=scale.install_noop_plugin(site),
        extra={"FLOWYARD_SCALE_EXECUTIONS_FILE": str(executions_file)})
    scale.register_workflow(env, scale.noop_workflow("scale.noop"))
    conn = scale.pg_connect(postgres_server, database)
    conn.execute(scale.HISTORY_SQL)

    started = time.monotonic()
    submitted = scale.submit_tasks(env, "noop", TASKS)
    submit_seconds = time.monotonic() - started
    assert scale.pg_status_counts(conn) == {"queued": TASKS}

    logs = tmp_path / "logs"
    logs.mkdir()
    pool = scale.WorkerPool(env, logs, concurrency=CONCURRENCY)
    killed_at: dict[str, float] = {}  # worker name -> time.time() once it was dead
    started = time.monotonic()
    try:
        for slot in range(WORKERS):
            pool.start(slot)
        deadline = started + DRAIN_TIMEOUT
        # the kills come when the count of completed tasks passes random points, so their
        # number does not depend on the machine's speed; each hits a random ready worker
        kill_points = sorted(rng.sample(range(TASKS // 50, TASKS - TASKS // 50), KILLS))
        while True:
            counts = scale.pg_status_counts(conn)
            completed = counts.get("completed", 0)
            if completed == TASKS:
                break
            assert not set(counts) - {"queued", "running", "completed"}, (seed, counts)
            assert time.monotonic() < deadline, (
                f"seed {seed}: not drained in {DRAIN_TIMEOUT} s: {counts}, "
                f"{pool.kills} kills")
            if kill_points and completed >= kill_points[0]:
                ready = sorted(slot for slot in pool.processes if pool.ready(slot))
                if ready:  # else: once a replacement is ready
                    kill_points.pop(0)
                    slot = rng.choice(ready)
                    killed_at[pool.kill(slot)] = time.time()
                    pool.start(slot)
            time.sleep(0.05)
        drain_seconds = time.monotonic() - started
    finally:
        pool.stop()

    # -- the tasks: all completed, nothing held
    rows = conn.execute(
        "SELECT id, run_id, status, worker, lease_expires_at, attempts, finished_at, error, "
        "outputs FROM fy_tasks").fetchall()
    assert len(rows) == TASKS
    tasks = {row[0]: row for row in rows}
    assert set(tasks) == {task_id for task_id, _run, _i in submitted}
    number = {task_id: i for task_id, _run, i in submitted}
    for task_id, _run_id, status, worker, lease, attempts, finished, error, outputs in rows:
        assert (status, worker, lease, error) == ("completed", None, None, None), task_id
        assert finished is not None and attempts >= 1, task_id
        assert json.loads(outputs) == {"i": number[task_id]}, (task_id, outputs)

    # -- the history of state changes, in commit order of each row
    history: dict[str, list[tuple[Any, ...]]] = collections.defaultdict(list)
    for row in conn.execute(
            "SELECT task_id, old_status, new_status, old_worker, new_worker, writer, at, "
            "old_lease_expires_at FROM scale_task_history ORDER BY seq").fetchall():
        history[row[0]].append(row[1:])
    claims_total = takeovers = 0
    for task_id, changes in history.items():
        assert task_id in tasks, task_id
        # (old status, new status, old worker, new worker, writing process, time, old lease)
        claims = [c for c in changes if c[1] == "running" and c[3] is not None]
        ends = [c for c in changes if c[1] in ("completed", "failed", "cancelled")]
        assert [c[1] for c in ends] == ["completed"], (seed, task_id, changes)
        assert changes[-1] == ends[0], (seed, task_id, changes)  # no write after the end
        assert len(claims) == tasks[task_id][5], (seed, task_id, changes)  # = attempts
        assert len(claims) + 1 == len(changes), (seed, task_id, changes)
        assert all(c[4] == c[3] for c in claims), (seed, task_id, changes)  # claimed itself
        claims_total += len(claims)
        taken_over = [c for c in claims if c[0] == "running"]
        # a running task is taken over only once its holder's lease expired
        assert all(c[5] > c[6] for c in taken_over), (seed, task_id, changes)
        takeovers += len(taken_over)
        # the end was written by the process holding the task's last claim, before it was
        # killed, and that worker logged that it ran the task
        holder = claims[-1][3]
        _old, _new, old_worker, _none, writer, at, _lease = ends[0]
        assert writer == holder == old_worker, (seed, task_id, changes)
        assert holder not in killed_at or at < killed_at[holder], (seed, task_id, changes)
        assert f"worker {holder} runs task {task_id}" in pool.log(holder), (task_id, holder)
    assert set(history) == set(tasks)
    assert pool.kills == KILLS, (seed, pool.kills)
    assert takeovers >= 1, f"seed {seed}: no task was taken over; the kills tested nothing"

    # -- the runs: one per task, completed once, its step completed once
    runs = dict(conn.execute("SELECT id, status FROM fy_runs").fetchall())
    assert runs == {run_id: "completed" for _task, run_id, _i in submitted}
    run_ends = collections.Counter(
        run_id for (run_id,) in conn.execute(
            "SELECT run_id FROM scale_run_history WHERE new_status = 'completed'").fetchall())
    assert run_ends == {run_id: 1 for run_id in runs}, seed
    failed = conn.execute("SELECT run_id FROM scale_run_history "
                          "WHERE new_status NOT IN ('running', 'completed', 'cancelled')"
                          ).fetchall()
    assert failed == [], (seed, failed[:5])
    # a live worker that lost its lease (starved of CPU past the lease) cancels its run
    # before the worker that took the task over resumes it: only after a takeover
    claims_of_run = {row[1]: row[5] for row in tasks.values()}
    for (run_id,) in conn.execute("SELECT run_id FROM scale_run_history "
                                  "WHERE new_status = 'cancelled'").fetchall():
        assert claims_of_run[run_id] >= 2, (seed, run_id)
    step_done = collections.Counter(
        run_id for (run_id,) in conn.execute(
            "SELECT run_id FROM fy_attempts WHERE step_id = 'noop' AND status = 'completed'"
        ).fetchall())
    assert step_done == {run_id: 1 for run_id in runs}, seed

    # -- executions of the step: at least once, exactly once unless taken over
    executions = collections.Counter(
        int(line.split()[0]) for line in executions_file.read_text().splitlines())
    assert set(executions) == set(range(TASKS)), seed
    for task_id, row in tasks.items():
        count = executions[number[task_id]]
        attempts = row[5]
        assert 1 <= count <= attempts, (seed, task_id, count, attempts)
    conn.close()

    # no worker met a storage error or crashed on its own (those are logged as ERROR with a
    # traceback); a lost lease (WARNING) is allowed: a starved worker may lose one
    warnings = 0
    for name in pool.names:
        log = pool.log(name)
        assert "Traceback" not in log and " ERROR " not in log, (seed, name, log[-3000:])
        warnings += log.count(" WARNING ")

    rerun = sum(executions.values()) - TASKS
    print(f"drained {TASKS} tasks in {drain_seconds:.1f} s ({TASKS / drain_seconds:.0f} "
          f"tasks/s; queued in {submit_seconds:.1f} s): {pool.kills} workers killed, "
          f"{len(pool.names)} started, {claims_total} claims, {takeovers} takeovers after "
          f"an expired lease, {rerun} steps run again, {TASKS} completions, {warnings} warnings "
          "in the workers' logs")
