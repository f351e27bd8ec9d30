"""Helpers of the scale-out simulation (``test_scale_out_simulation.py``) and of
``benchmarks/queue_scaling.py``: ``flowyard worker`` processes as users run them, tasks queued
straight into the storage's task queue, and reading the queue's state back.

Not collected by pytest (no ``test_`` prefix). Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[2]
E2E = Path(__file__).resolve().parent
#: ``flowyard`` as users run it (the console script's entry point, in this interpreter).
CLI = [sys.executable, "-c", "from flowyard.cli import main; main()"]
#: The tenant every task of the simulation and the benchmark belongs to.
TENANT = "scale"
#: The entry-point name of :mod:`scale_noop_plugin` (see :func:`install_noop_plugin`).
NOOP_PLUGIN = "scalenoop"


def noop_workflow(uses: str) -> dict[str, Any]:
    """The no-op workflow one task runs: one step ``noop`` of action ``uses`` with
    ``i`` = the task's input ``i``.

    Args:
        uses: ``"scale.noop"`` (the test plugin's tool, which records each execution) or
            ``"echo"`` (the core's built-in no-op action).

    Returns:
        a workflow definition named ``noop`` with the input ``i`` (integer) and output ``i``.
    """
    key = "i" if uses == "scale.noop" else "value"
    return {"name": "noop", "inputs": {"i": {"type": "integer", "default": 0}},
            "steps": [{"id": "noop", "uses": uses, "with": {key: "${inputs.i}"}}],
            "outputs": {"i": "${noop}"}}


def postgres_server_class() -> Any:
    """``PostgresServer`` of ``plugins/sql/tests/conftest.py`` (a throwaway server: initdb
    and pg_ctl of Debian's ``postgresql`` package, as user ``postgres`` when run as root),
    imported by path.

    Raises:
        RuntimeError: on ``PostgresServer()``, when PostgreSQL is not installed (the message
            names scripts/system-deps.sh).
    """
    path = ROOT / "plugins" / "sql" / "tests" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_flowyard_sql_conftest_scale", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PostgresServer


def install_noop_plugin(site: Path) -> list[str]:
    """Make :mod:`scale_noop_plugin` discoverable as the ``flowyard`` plugin
    :data:`NOOP_PLUGIN`: write a minimal ``.dist-info`` (METADATA, entry_points.txt) into
    ``site``, as an installer would.

    Args:
        site: an empty directory.

    Returns:
        the directories to put on ``PYTHONPATH`` of the worker processes (``site`` and this
        directory, which holds the plugin module).
    """
    info = site / "flowyard_scale_noop-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: flowyard-scale-noop\nVersion: 0.0.1\n"
        "Requires-Dist: flowyard\n")
    (info / "entry_points.txt").write_text(f"[flowyard]\n{NOOP_PLUGIN} = scale_noop_plugin\n")
    return [str(site), str(E2E)]


def worker_env(url: str, tmp: Path, *, plugins: str = "builtin,server,sql",
               lease_timeout: float = 30.0, renew_interval: float = 5.0,
               poll_interval: float = 0.1, pythonpath: list[str] | None = None,
               extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of ``flowyard worker`` processes on storage ``url``: an empty
    ``flowyard.toml`` and data directory in ``tmp``, only ``plugins`` loaded, the task lease
    settings given (seconds), the run lease as long as the task lease.

    Args:
        url: the storage URL shared by every process.
        tmp: a directory for the configuration file and data directory.
        plugins: the ``FLOWYARD_PLUGINS`` list.
        lease_timeout: ``[server] task_lease_timeout`` and ``[runs] lease_timeout``, seconds.
        renew_interval: ``[server] task_renew_interval`` and ``[runs] heartbeat_interval``,
            seconds (< ``lease_timeout``).
        poll_interval: ``[server] poll_interval``, seconds an idle worker waits.
        pythonpath: directories put first on ``PYTHONPATH``.
        extra: more variables.

    Returns:
        a copy of ``os.environ`` with these settings.
    """
    (tmp / "flowyard.toml").write_text("")
    env = {**os.environ,
           "FLOWYARD_CONFIG": str(tmp / "flowyard.toml"),
           "XDG_CONFIG_HOME": str(tmp / "config"),
           "FLOWYARD_DATA_DIR": str(tmp / "data"),
           "FLOWYARD_STORAGE_URL": url,
           "FLOWYARD_PLUGINS": plugins,
           "FLOWYARD_DEFAULT_MODEL": "fake/echo",
           "FLOWYARD_SERVER__TASK_LEASE_TIMEOUT": repr(lease_timeout),
           "FLOWYARD_SERVER__TASK_RENEW_INTERVAL": repr(renew_interval),
           "FLOWYARD_SERVER__POLL_INTERVAL": repr(poll_interval),
           "FLOWYARD_RUNS__LEASE_TIMEOUT": repr(lease_timeout),
           "FLOWYARD_RUNS__HEARTBEAT_INTERVAL": repr(renew_interval),
           **(extra or {})}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(
            [*pythonpath, *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _stack(env: dict[str, str]) -> Any:
    """A default stack as a worker in ``env`` builds it (storage URL and plugin list)."""
    from flowyard import Stack

    return Stack.default(config={"storage": {"url": env["FLOWYARD_STORAGE_URL"]},
                                 "plugins": {"enabled": env["FLOWYARD_PLUGINS"].split(",")}})


async def _register(env: dict[str, str], workflow: dict[str, Any]) -> None:
    from flowyard import SupportsTaskQueue, parse_workflow
    from flowyard_server.worker import WORKFLOWS_NAMESPACE

    stack = _stack(env)
    if not isinstance(stack.storage, SupportsTaskQueue):
        raise RuntimeError(f"{type(stack.storage).__name__} has no task queue "
                           "(SupportsTaskQueue)")
    async with stack:
        parsed = parse_workflow(workflow)  # the workers validate it (the tool is theirs)
        await stack.storage.kv_set(WORKFLOWS_NAMESPACE + TENANT, parsed.name, {
            "definition": parsed.to_dict(), "content_hash": parsed.content_hash(),
            "registered_at": time.time()})


def register_workflow(env: dict[str, str], workflow: dict[str, Any]) -> None:
    """Create the storage's schema and register ``workflow`` for :data:`TENANT`, as
    ``PUT /v1/workflows/{name}`` stores it.

    Raises:
        RuntimeError: the storage has no task queue.
    """
    anyio.run(_register, env, workflow)


async def _submit(env: dict[str, str], name: str, count: int, parallel: int
                  ) -> list[tuple[str, str, int]]:
    from flowyard import TaskRecord, new_id
    from flowyard_server.app import RUNS_NAMESPACE

    stack = _stack(env)
    submitted: list[tuple[str, str, int]] = []
    async with stack:
        storage: Any = stack.storage
        limiter = anyio.Semaphore(parallel)

        async def one(i: int) -> None:
            async with limiter:
                record = TaskRecord(id=new_id(), tenant=TENANT, kind="workflow", target=name,
                                    inputs={"i": i})
                await storage.kv_set(RUNS_NAMESPACE + TENANT, record.run_id, record.id)
                stored, created = await storage.submit_task(record)
                assert created, stored
                submitted.append((record.id, record.run_id, i))

        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(one, i)
    return submitted


def submit_tasks(env: dict[str, str], name: str, count: int, *, parallel: int = 8
                 ) -> list[tuple[str, str, int]]:
    """Queue ``count`` tasks of the registered workflow ``name`` with inputs ``{"i": i}``,
    the way ``POST /v1/tasks`` does (the run -> task index entry, then ``submit_task``),
    ``parallel`` submissions at a time.

    Returns:
        ``(task id, run id, i)`` of each task, in the order they were stored.
    """
    return anyio.run(_submit, env, name, count, parallel)


async def _tasks(env: dict[str, str], status: str | None) -> list[Any]:
    from flowyard import TaskQuery

    stack = _stack(env)
    found: list[Any] = []
    async with stack:
        storage: Any = stack.storage
        offset = 0
        while True:
            page = await storage.list_tasks(TaskQuery(tenant=TENANT, status=status,
                                                      limit=1000, offset=offset))
            found.extend(page)
            offset += len(page)
            if len(page) < 1000:
                return found


def list_tasks(env: dict[str, str], status: str | None = None) -> list[Any]:
    """Every task of :data:`TENANT` (``status``: only those with it), read through the
    storage's :class:`~flowyard.SupportsTaskQueue` (a snapshot only while nothing changes).

    Returns:
        the :class:`~flowyard.TaskRecord` list, newest first.
    """
    return anyio.run(_tasks, env, status)


class WorkerPool:
    """``flowyard worker`` OS processes in numbered slots, each logging to
    ``<logs>/<name>.log`` and naming its PostgreSQL connections after itself (``PGAPPNAME``,
    libpq's ``application_name``); a slot's process can be killed with SIGKILL and replaced.

    Args:
        env: the processes' environment (see :func:`worker_env`).
        logs: the directory of the log files.
        concurrency: ``--concurrency`` of each worker (tasks it runs at once).

    Attributes:
        processes: slot -> (worker name, process) of the current process of each slot.
        names: every worker name started, in start order.
        kills: how many processes were killed with SIGKILL.
    """

    def __init__(self, env: dict[str, str], logs: Path, *, concurrency: int = 4) -> None:
        self.env = env
        self.logs = logs
        self.concurrency = concurrency
        self.processes: dict[int, tuple[str, subprocess.Popen[bytes]]] = {}
        self.names: list[str] = []
        self.kills = 0

    def start(self, slot: int) -> str:
        """Start a worker process in ``slot`` (replacing nothing: the slot must be free).

        Returns:
            its worker name, ``w<slot>-<n>`` (n counts the processes started so far).
        """
        assert slot not in self.processes, f"slot {slot} is taken"
        name = f"w{slot}-{len(self.names)}"
        with open(self.logs / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                [*CLI, "worker", "--concurrency", str(self.concurrency), "--name", name],
                env={**self.env, "PGAPPNAME": name}, stdout=log, stderr=subprocess.STDOUT)
        self.processes[slot] = (name, process)
        self.names.append(name)
        return name

    def log(self, name: str) -> str:
        """The output of worker ``name`` so far."""
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def ready(self, slot: int) -> bool:
        """True once the slot's worker has opened its stack and is claiming tasks.

        Raises:
            RuntimeError: the process exited (its log's tail is in the message).
        """
        name, process = self.processes[slot]
        if process.poll() is not None:
            raise RuntimeError(f"worker {name} exited with {process.returncode}:\n"
                               + self.log(name)[-3000:])
        return f"flowyard worker {name}:" in self.log(name)

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Wait until every slot's worker is ready (polling its log every 20 ms).

        Returns:
            the seconds waited.

        Raises:
            RuntimeError: a worker exited, or not all were ready within ``timeout`` seconds.
        """
        started = time.monotonic()
        waiting = set(self.processes)
        while waiting:
            waiting = {slot for slot in waiting if not self.ready(slot)}
            if waiting and time.monotonic() - started > timeout:
                names = [self.processes[slot][0] for slot in sorted(waiting)]
                raise RuntimeError(f"workers {names} not ready after {timeout} s")
            if waiting:
                time.sleep(0.02)
        return time.monotonic() - started

    def kill(self, slot: int) -> str:
        """SIGKILL the slot's process, reap it and free the slot.

        Returns:
            the killed worker's name.
        """
        name, process = self.processes.pop(slot)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        self.kills += 1
        return name

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every process: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        for _name, process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for _name, process in self.processes.values():
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


#: Test-only history of the queue's state changes on PostgreSQL: triggers record every change
#: of a task's status or worker and any write to an ended task (renewals, which change only
#: the lease, are left out), with the ``application_name`` of the writing connection (each
#: :class:`WorkerPool` process connects as its worker name, through ``PGAPPNAME``), and every
#: change of a run's status; times from the database's clock (UNIX seconds).
HISTORY_SQL = """
CREATE TABLE scale_task_history (
    seq bigserial PRIMARY KEY, task_id text NOT NULL, old_status text NOT NULL,
    new_status text NOT NULL, old_worker text, new_worker text, attempts integer NOT NULL,
    old_lease_expires_at double precision, writer text NOT NULL,
    at double precision NOT NULL DEFAULT extract(epoch FROM clock_timestamp()));
CREATE FUNCTION scale_task_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO scale_task_history (task_id, old_status, new_status, old_worker, new_worker,
                                    attempts, old_lease_expires_at, writer)
    VALUES (NEW.id, OLD.status, NEW.status, OLD.worker, NEW.worker, NEW.attempts,
            OLD.lease_expires_at, current_setting('application_name'));
    RETURN NULL;
END $$;
CREATE TRIGGER scale_task_changed AFTER UPDATE ON fy_tasks FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.worker IS DISTINCT FROM NEW.worker
          OR OLD.status IN ('completed', 'failed', 'cancelled'))
    EXECUTE FUNCTION scale_task_changed();
CREATE TABLE scale_run_history (
    seq bigserial PRIMARY KEY, run_id text NOT NULL, old_status text, new_status text NOT NULL,
    at double precision NOT NULL DEFAULT extract(epoch FROM clock_timestamp()));
CREATE FUNCTION scale_run_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO scale_run_history (run_id, old_status, new_status)
        VALUES (NEW.id, NULL, NEW.status);
    ELSIF OLD.status IS DISTINCT FROM NEW.status THEN
        INSERT INTO scale_run_history (run_id, old_status, new_status)
        VALUES (NEW.id, OLD.status, NEW.status);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER scale_run_changed AFTER INSERT OR UPDATE ON fy_runs FOR EACH ROW
    EXECUTE FUNCTION scale_run_changed();
"""


def pg_connect(server: Any, database: str) -> Any:
    """An autocommit psycopg connection to ``database`` of a ``PostgresServer``."""
    import psycopg

    return psycopg.connect(host="127.0.0.1", port=server.port, user="postgres",
                           dbname=database, autocommit=True)


def pg_status_counts(conn: Any) -> dict[str, int]:
    """Tasks of :data:`TENANT` by status (one ``GROUP BY`` query)."""
    rows = conn.execute("SELECT status, count(*) FROM fy_tasks WHERE tenant = %s "
                        "GROUP BY status", (TENANT,)).fetchall()
    return {str(status): int(count) for status, count in rows}
