"""flowyard-server on Redis storage, as a user runs it: `flowyard serve --no-worker` and
`flowyard worker` processes with ``storage.url = "redis://..."`` (a throwaway redis-server,
:class:`flowyard_redis.testing.RedisServer`), driven with flowyard_client.AsyncClient.

- API keys, registered workflows, tasks, runs, events (SSE) and the queue all live in Redis:
  a workflow task runs to completion through a worker process; an idempotent submission
  runs once; another tenant sees nothing;
- two workers share the queue: six tasks are each run exactly once;
- a worker killed with SIGKILL mid-run loses nothing: once its task lease expires another
  worker takes the task over and resumes the run; the completed step is not run again.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import flowyard_client  # noqa: F401 - installed in .venv with every distribution
import flowyard_redis  # noqa: F401
import flowyard_server  # noqa: F401
import pytest
from flowyard_redis.testing import RedisServer

pytestmark = [pytest.mark.slow]

CLI = [sys.executable, "-c", "from flowyard.cli import main; main()"]
HELLO = """\
name: hello
inputs:
  who: {type: string, default: world}
steps:
  - id: greet
    uses: echo
    with:
      value: "Hello, {{ inputs.who }}!"
outputs:
  greeting: "${greet}"
"""
TWO_STEPS = """\
name: two-steps
inputs:
  nap: {type: number, default: 3}
steps:
  - id: first
    uses: echo
    with: {value: done once}
  - id: second
    uses: sleep
    depends_on: [first]
    with:
      seconds: "${inputs.nap}"
outputs:
  first: "${first}"
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """The processes of the service on one Redis server."""

    def __init__(self, tmp: Path, storage_url: str) -> None:
        self.tmp = tmp
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (tmp / "flowyard.toml").write_text("")
        self.env = {
            **os.environ,
            "FLOWYARD_CONFIG": str(tmp / "flowyard.toml"),
            "XDG_CONFIG_HOME": str(tmp / "config"),
            "FLOWYARD_DATA_DIR": str(tmp / "data"),
            "FLOWYARD_STORAGE_URL": storage_url,
            "FLOWYARD_DEFAULT_MODEL": "fake/echo",
            "FLOWYARD_PLUGINS": "builtin,server,redis",
            "FLOWYARD_SERVER__TASK_LEASE_TIMEOUT": "2",
            "FLOWYARD_SERVER__TASK_RENEW_INTERVAL": "0.3",
            "FLOWYARD_SERVER__POLL_INTERVAL": "0.2",
            "FLOWYARD_SERVER__SSE_POLL": "0.05",
            "FLOWYARD_SERVER__KEY_CACHE_SECONDS": "0.5",
            "FLOWYARD_RUNS__HEARTBEAT_INTERVAL": "0.3",
            "FLOWYARD_RUNS__LEASE_TIMEOUT": "2",
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def command(self, *args: str) -> str:
        done = subprocess.run([*CLI, *args], env=self.env, capture_output=True, timeout=60,
                              check=False)
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()

    def start(self, *args: str, name: str) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"{name}.log", "wb") as log:
            process = subprocess.Popen([*CLI, *args], env=self.env, stdout=log,
                                       stderr=subprocess.STDOUT)
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`flowyard serve --no-worker` and two `flowyard worker` processes on one Redis."""
    import httpx
    from flowyard import Stack, SupportsTaskQueue

    redis_server = RedisServer()
    redis_server.start()
    tmp = tmp_path_factory.mktemp("service-redis")
    svc = Service(tmp, f"{redis_server.url}?prefix=e2e:")
    try:
        probe = Stack.default(config={"storage": {"url": svc.env["FLOWYARD_STORAGE_URL"]}})
        assert isinstance(probe.storage, SupportsTaskQueue), "Redis keeps the task queue"
        svc.keys = {t: svc.command("api-keys", "create", "--tenant", t).strip().splitlines()[-1]
                    for t in ("e2e", "other")}
        svc.start("serve", "--port", str(svc.port), "--no-worker", name="serve")
        svc.start("worker", "--concurrency", "2", "--name", "worker-a", name="worker-a")
        svc.start("worker", "--concurrency", "2", "--name", "worker-c", name="worker-c")
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(svc.url + "/v1/health/live", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or svc.processes["serve"].poll() is not None:
                raise RuntimeError("flowyard serve did not start:\n" + svc.log("serve"))
            time.sleep(0.1)  # polling interval of the readiness check
        yield svc
    finally:
        for process in svc.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in svc.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        redis_server.stop()


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_workflow_task_runs_through_a_worker_on_redis(service: Service) -> None:
    from flowyard_client import AsyncClient, NotFoundError

    async with AsyncClient(service.url, service.keys["e2e"]) as fy, \
            AsyncClient(service.url, service.keys["other"]) as other:
        assert (await fy.health()).status == "UP"
        await fy.workflows.register(HELLO)
        task = await fy.tasks.submit(target="hello", inputs={"who": "Ada"},
                                     idempotency_key="e2e-hello")
        again = await fy.tasks.submit(target="hello", inputs={"who": "Ada"},
                                      idempotency_key="e2e-hello")
        assert again.id == task.id
        done = await fy.tasks.wait_for_completion(task, timeout=60)
        assert done.status == "completed", done.error
        assert done.outputs == {"greeting": "Hello, Ada!"}
        events = [e async for e in fy.runs.events(task.run_id)]
        stored = [e.seq for e in events if e.seq]
        assert stored == list(range(1, len(stored) + 1))
        assert events[-1].type == "run.finished"
        run = await fy.runs.get(task.run_id)
        assert run.status == "completed" and run.task_id == task.id
        with pytest.raises(NotFoundError):
            await other.tasks.get(task.id)
        assert (await other.tasks.list()).items == []


@pytest.mark.anyio
async def test_two_workers_run_each_task_once(service: Service) -> None:
    from flowyard_client import AsyncClient

    async with AsyncClient(service.url, service.keys["e2e"]) as fy:
        await fy.workflows.register(HELLO)
        tasks = [await fy.tasks.submit(target="hello", inputs={"who": f"n{i}"})
                 for i in range(6)]
        done = [await fy.tasks.wait_for_completion(t, timeout=60) for t in tasks]
    assert [d.status for d in done] == ["completed"] * 6, [d.error for d in done]
    assert [d.outputs["greeting"] for d in done] == [f"Hello, n{i}!" for i in range(6)]
    assert all(d.attempts == 1 for d in done)


@pytest.mark.anyio
async def test_a_killed_worker_loses_nothing(service: Service) -> None:
    import anyio
    from flowyard_client import AsyncClient

    async with AsyncClient(service.url, service.keys["e2e"]) as fy:
        # only worker-a takes tasks from here on: the other worker stops first
        service.processes["worker-c"].terminate()
        service.processes["worker-c"].wait(timeout=30)
        await fy.workflows.register(TWO_STEPS)
        task = await fy.tasks.submit(target="two-steps", inputs={"nap": 3})
        with anyio.fail_after(30):
            while True:  # wait until the first step completed and the second runs
                steps = {s.step_id: s.status for s in await fy.runs.steps(task.run_id)}
                if steps.get("first") == "completed" and steps.get("second") == "running":
                    break
                await anyio.sleep(0.1)
        worker_a = service.processes["worker-a"]
        os.kill(worker_a.pid, signal.SIGKILL)
        worker_a.wait(timeout=10)
        service.start("worker", "--name", "worker-b", name="worker-b")
        done = await fy.tasks.wait_for_completion(task, timeout=60)
        assert done.status == "completed", (done.error, service.log("worker-b"))
        assert done.attempts == 2  # claimed by worker-a, then taken over by worker-b
        attempts = await fy.runs.steps(task.run_id)
        assert [a.status for a in attempts if a.step_id == "first"] == ["completed"]
        second = [a.status for a in attempts if a.step_id == "second"]
        assert second[-1] == "completed" and len(second) == 2
        assert done.outputs == {"first": "done once"}
