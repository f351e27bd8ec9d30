"""Throughput of flowyard-server's durable task queue: 4 ``flowyard worker`` processes against
1, on SQLite and on PostgreSQL, printed as ratios.

For each storage, ``--tasks`` (400) no-op workflow tasks (one ``echo`` step) of one tenant are
queued while ``N`` idle ``flowyard worker`` processes (``--concurrency`` 4 each, polling every
0.05 s) wait for them; the clock runs from the first submission to the moment every task is
``completed`` (polled every 0.05 s). Tasks are submitted straight into the storage's queue, the
way ``POST /v1/tasks`` does (the run -> task index, ``submit_task``), so the HTTP API is not in
the figure (``benchmarks/server_api.py`` measures it). Reported: tasks/s with 1 worker and with
4 workers, and the ratio 4 / 1 (the baseline is the 1-worker figure of the same storage in the
same run). A ratio above 1 means more processes drain the queue faster; on a machine with
fewer cores than workers, the processes share the cores, so the ratio shows what the claim
protocol costs under contention rather than a speed-up.

SQLite is a file in a temporary directory (WAL, ``synchronous=FULL``); PostgreSQL is a
throwaway server started for the run the way ``plugins/sql/tests/conftest.py`` does (initdb and
pg_ctl of Debian's ``postgresql`` package, as user ``postgres`` when run as root; ``fsync=off``),
skipped with a message when it is not installed. Everything is on loopback.

Usage: .venv/bin/python benchmarks/server_queue.py [--tasks 400] [--workers 4]
       [--storage sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
TENANT = "bench"
NOOP = {"name": "noop", "inputs": {"i": {"type": "integer", "default": 0}},
        "steps": [{"id": "s", "uses": "echo", "with": {"value": "${inputs.i}"}}]}


def postgres_server_class() -> Any:
    """The ``PostgresServer`` helper of ``plugins/sql/tests/conftest.py`` (imported by path)."""
    path = ROOT / "plugins" / "sql" / "tests" / "conftest.py"
    spec = importlib.util.spec_from_file_location("flowyard_sql_test_conftest", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PostgresServer


def _env(url: str, tmp: Path) -> dict[str, str]:
    (tmp / "flowyard.toml").write_text("")
    return {**os.environ, "FLOWYARD_CONFIG": str(tmp / "flowyard.toml"),
            "XDG_CONFIG_HOME": str(tmp / "config"), "FLOWYARD_DATA_DIR": str(tmp / "data"),
            "FLOWYARD_STORAGE_URL": url, "FLOWYARD_PLUGINS": "builtin,server,sql",
            "FLOWYARD_SERVER__POLL_INTERVAL": "0.05", "FLOWYARD_DEFAULT_MODEL": "fake/echo"}


async def _prepare(url: str) -> None:
    """Create the schema and register the no-op workflow for the tenant."""
    from flowyard import Stack, SupportsTaskQueue
    from flowyard_server.worker import WORKFLOWS_NAMESPACE

    stack = Stack.default(config={"storage": {"url": url}})
    if not isinstance(stack.storage, SupportsTaskQueue):
        raise SystemExit(f"{type(stack.storage).__name__} has no task queue (SupportsTaskQueue)"
                         "; this flowyard-sql is older than its task queue")
    async with stack:
        workflow = stack.load_workflow(NOOP)
        await stack.storage.kv_set(WORKFLOWS_NAMESPACE + TENANT, "noop", {
            "definition": workflow.to_dict(), "content_hash": workflow.content_hash(),
            "registered_at": time.time()})


async def _submit_and_wait(url: str, tasks: int, timeout: float) -> float:
    """Queue ``tasks`` tasks; return the seconds until all are completed."""
    from flowyard import Stack, TaskQuery, TaskRecord, new_id
    from flowyard_server.app import RUNS_NAMESPACE

    stack = Stack.default(config={"storage": {"url": url}})
    async with stack:
        storage: Any = stack.storage
        started = time.perf_counter()
        for i in range(tasks):
            record = TaskRecord(id=new_id(), tenant=TENANT, kind="workflow", target="noop",
                                inputs={"i": i})
            await storage.kv_set(RUNS_NAMESPACE + TENANT, record.run_id, record.id)
            await storage.submit_task(record)
        deadline = time.monotonic() + timeout
        while True:
            done = 0
            offset = 0
            while True:
                page = await storage.list_tasks(TaskQuery(tenant=TENANT, status="completed",
                                                          limit=200, offset=offset))
                done += len(page)
                offset += 200
                if len(page) < 200:
                    break
            if done >= tasks:
                return time.perf_counter() - started
            failed = await storage.list_tasks(TaskQuery(tenant=TENANT, status="failed",
                                                        limit=1))
            if failed:
                raise RuntimeError(f"a task failed: {failed[0].error}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {done} of {tasks} tasks completed in {timeout} s")
            await anyio.sleep(0.05)


def measure(url: str, workers: int, tasks: int, concurrency: int) -> float:
    """Tasks per second of ``workers`` worker processes draining ``tasks`` queued tasks."""
    tmp = Path(tempfile.mkdtemp(prefix="fy-queue-"))
    env = _env(url, tmp)
    anyio.run(_prepare, url)
    processes = []
    try:
        for i in range(workers):
            log = open(tmp / f"worker-{i}.log", "wb")
            processes.append(subprocess.Popen(
                [sys.executable, "-c", "from flowyard.cli import main; main()", "worker",
                 "--concurrency", str(concurrency), "--name", f"bench-{i}"],
                env=env, stdout=subprocess.DEVNULL, stderr=log))
            log.close()
        deadline = time.monotonic() + 60
        for i, process in enumerate(processes):  # each announces itself once its stack is open
            while "flowyard worker bench-" not in (tmp / f"worker-{i}.log").read_text(
                    errors="replace"):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker {i} did not start: "
                                       + (tmp / f"worker-{i}.log").read_text()[-2000:])
                time.sleep(0.05)
        seconds = anyio.run(_submit_and_wait, url, tasks, 300.0)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
    return tasks / seconds


def main() -> None:
    """Parse the options; measure 1 and N workers per storage; print tasks/s and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--storage", default="sqlite,postgresql")
    args = parser.parse_args()
    print(f"server_queue: {args.tasks} no-op workflow tasks, workers of concurrency "
          f"{args.concurrency}, {os.cpu_count()} cores, loopback")
    for storage in args.storage.split(","):
        server = None
        try:
            if storage == "sqlite":
                urls = [f"sqlite:///{tempfile.mkdtemp(prefix='fy-queue-db-')}/q.db"
                        for _ in range(2)]
            elif storage == "postgresql":
                try:
                    server = postgres_server_class()()
                    server.start()
                except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
                    print(f"  postgresql: skipped ({exc})")
                    continue
                urls = [server.url(server.create_database()) for _ in range(2)]
            else:
                raise SystemExit(f"unknown storage {storage!r}")
            one = measure(urls[0], 1, args.tasks, args.concurrency)
            many = measure(urls[1], args.workers, args.tasks, args.concurrency)
            print(f"  {storage:10}  1 worker {one:7.1f} tasks/s   {args.workers} workers "
                  f"{many:7.1f} tasks/s   ratio {many / one:.2f}x")
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
