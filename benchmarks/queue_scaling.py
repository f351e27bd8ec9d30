"""How the durable task queue scales out: tasks/s of no-op workflow tasks drained by 1, 2, 4
and 8 ``flowyard worker`` processes, on PostgreSQL, on Redis and on a SQLite file (the
single-machine baseline), all measured in one run and printed as a table with ratios against
1 worker of the same storage (issue 24, part 5).

For each storage and worker count: a fresh database (PostgreSQL: a new database on one
throwaway server; Redis: a new throwaway ``redis-server``; SQLite: a new file), ``N`` worker
processes started the way users start them (``flowyard worker --concurrency 4``, polling every
0.05 s when idle) and waited for until each has opened its storage; then ``--tasks`` (400)
tasks of a registered one-step workflow (the core's ``echo`` action: no model, no I/O of its
own, so the figure is the queue and the run path: claim, run record, step attempt and
checkpoint, events, finish) are queued straight into the storage's task queue, 8 at a time,
the way ``POST /v1/tasks`` stores them (the HTTP API is not in the figure;
``benchmarks/server_api.py`` measures it). Throughput is ``tasks / (last finished_at - first
started_at)`` from the task records, so worker start-up and the time before the first claim
are not counted.

Also reported per task: the CPU time of the worker processes (``/proc/<pid>/stat`` just before
they stop) and of the database server's processes (PostgreSQL: the postmaster's children;
Redis: redis-server; SQLite has no server, its work is inside the workers), in milliseconds.
They show where the time of a no-op task goes and what a machine needs per task/s.

The machine's core count is printed. With fewer cores than worker processes + database, the
workers share the CPU with each other and with the database, so beyond that point the ratio
shows that the claim protocol holds up under contention (no collapse), not a speed-up; run
it on a machine with more cores (or with the database on another machine) for the scaling
the protocol allows.

Servers are started the way the tests start them (PostgreSQL: ``plugins/sql/tests/conftest.py``,
``fsync=off``; Redis: ``flowyard_redis.testing.RedisServer``, AOF with ``appendfsync
everysec``); a storage whose server or plugin is missing is reported as skipped with the
reason. Everything is on loopback.

Usage: .venv/bin/python benchmarks/queue_scaling.py [--tasks 400] [--workers 1,2,4,8]
       [--concurrency 4] [--storage postgresql,redis,sqlite]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _support() -> Any:
    """tests/e2e/scale_support.py (worker processes, queueing, reading tasks), by path."""
    path = ROOT / "tests" / "e2e" / "scale_support.py"
    spec = importlib.util.spec_from_file_location("flowyard_scale_support", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


scale = _support()
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (0.0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def children_cpu_seconds(parent: int) -> float:
    """CPU seconds of the live children of ``parent`` (a postmaster's backends), summed."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == parent:
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


class Storage:
    """One storage under test: ``fresh()`` gives the URL of an empty store,
    ``server_cpu()`` the CPU seconds its server processes used so far."""

    name = ""

    def fresh(self) -> str:
        """Return the URL of an empty store."""
        raise NotImplementedError

    def server_cpu(self) -> float | None:
        """Return the CPU seconds of the server's processes so far (None: no server)."""
        return None

    def close(self) -> None:
        """Stop the servers started."""


class Postgres(Storage):
    """A throwaway PostgreSQL server; a new database per measurement."""

    name = "postgresql"

    def __init__(self) -> None:
        self.server = scale.postgres_server_class()()
        self.server.start()

    def fresh(self) -> str:
        return str(self.server.url(self.server.create_database()))

    def server_cpu(self) -> float:
        postmaster = int((self.server.data / "postmaster.pid").read_text().split()[0])
        return cpu_seconds(postmaster) + children_cpu_seconds(postmaster)

    def close(self) -> None:
        self.server.stop()


class Redis(Storage):
    """A new throwaway redis-server per measurement."""

    name = "redis"

    def __init__(self) -> None:
        from flowyard_redis.testing import RedisServer

        self.server_class = RedisServer
        self.server: Any = None

    def fresh(self) -> str:
        self.close()
        self.server = self.server_class(appendfsync="everysec")
        self.server.start()
        return str(self.server.url)

    def server_cpu(self) -> float:
        return cpu_seconds(self.server.pid)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


class SQLite(Storage):
    """A new SQLite file per measurement (no server)."""

    name = "sqlite"

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="fy-scale-sqlite-"))
        self.count = 0

    def fresh(self) -> str:
        self.count += 1
        return f"sqlite:///{self.root / f'queue-{self.count}.db'}"

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


PLUGINS = {"postgresql": "builtin,server,sql", "sqlite": "builtin,server,sql",
           "redis": "builtin,server,redis"}


def measure(storage: Storage, workers: int, tasks: int, concurrency: int
            ) -> dict[str, float]:
    """Drain ``tasks`` no-op tasks with ``workers`` worker processes on a fresh store.

    Returns:
        ``rate`` (tasks/s), ``worker_ms`` and ``server_ms`` (CPU milliseconds per task;
        ``server_ms`` is NaN without a server process), ``start`` (seconds until every
        worker was ready).

    Raises:
        RuntimeError: a worker did not start, a task failed, or the queue did not drain
            within 600 s.
    """
    tmp = Path(tempfile.mkdtemp(prefix="fy-scale-"))
    url = storage.fresh()
    env = scale.worker_env(url, tmp, plugins=PLUGINS[storage.name], poll_interval=0.05)
    scale.register_workflow(env, scale.noop_workflow("echo"))
    logs = tmp / "logs"
    logs.mkdir()
    pool = scale.WorkerPool(env, logs, concurrency=concurrency)
    try:
        for slot in range(workers):
            pool.start(slot)
        start = pool.wait_ready()
        server_before = storage.server_cpu()
        workers_before = sum(cpu_seconds(p.pid) for _n, p in pool.processes.values())
        scale.submit_tasks(env, "noop", tasks)
        deadline = time.monotonic() + 600
        while True:
            done = scale.list_tasks(env, "completed")
            if len(done) == tasks:
                break
            if scale.list_tasks(env, "failed"):
                raise RuntimeError(f"a task failed on {storage.name}: "
                                   f"{scale.list_tasks(env, 'failed')[0].error}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{storage.name}: {len(done)} of {tasks} done in 600 s")
            time.sleep(0.1)
        worker_cpu = sum(cpu_seconds(p.pid) for _n, p in pool.processes.values())
        server_after = storage.server_cpu()
    finally:
        pool.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    span = max(t.finished_at for t in done) - min(t.started_at for t in done)
    return {"rate": tasks / span, "start": start,
            "worker_ms": 1000 * (worker_cpu - workers_before) / tasks,
            "server_ms": (float("nan") if server_before is None or server_after is None
                          else 1000 * (server_after - server_before) / tasks)}


def open_storage(name: str) -> Storage:
    """Start the server of storage ``name``.

    Raises:
        SystemExit: an unknown name.
        RuntimeError, OSError, ImportError, CalledProcessError: the server or its plugin is
            missing (the caller reports the storage as skipped).
    """
    if name == "postgresql":
        return Postgres()
    if name == "redis":
        return Redis()
    if name == "sqlite":
        return SQLite()
    raise SystemExit(f"unknown storage {name!r} (postgresql, redis, sqlite)")


def main() -> None:
    """Parse the options, measure every storage and worker count, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--storage", default="postgresql,redis,sqlite")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    cores = os.cpu_count() or 1
    print(f"queue_scaling: {args.tasks} no-op workflow tasks (one echo step), worker "
          f"processes of concurrency {args.concurrency}, {cores} cores, loopback")
    if cores < max(counts) + 1:
        print(f"note: only {cores} cores for up to {max(counts)} worker processes and the "
              f"database: beyond {cores} workers throughput is bounded by this machine's CPU, "
              "not by the queue; ratios there show contention, not the protocol's limit")
    print(f"{'storage':11} {'workers':>7} {'tasks/s':>8} {'vs 1':>6} {'worker CPU':>11} "
          f"{'db CPU':>8} {'start':>6}")
    print(f"{'':11} {'':>7} {'':>8} {'':>6} {'ms/task':>11} {'ms/task':>8} {'s':>6}")
    for name in args.storage.split(","):
        try:
            storage = open_storage(name)
        except (RuntimeError, OSError, ImportError, subprocess.CalledProcessError) as exc:
            print(f"{name:11} skipped: {type(exc).__name__}: {exc}")
            continue
        try:
            base = None
            for workers in counts:
                got = measure(storage, workers, args.tasks, args.concurrency)
                base = base or got["rate"]
                server_ms = ("-" if math.isnan(got["server_ms"])
                             else f"{got['server_ms']:.1f}")
                print(f"{name:11} {workers:7d} {got['rate']:8.1f} "
                      f"{got['rate'] / base:5.2f}x {got['worker_ms']:11.1f} "
                      f"{server_ms:>8} {got['start']:6.1f}", flush=True)
        finally:
            storage.close()


if __name__ == "__main__":
    main()
