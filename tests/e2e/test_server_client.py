"""flowyard-server end to end, as a user runs it: `flowyard serve --no-worker` and two
`flowyard worker` processes over one SQLite database, then over one PostgreSQL database (a
throwaway server, as in plugins/sql/tests/conftest.py), driven with
flowyard_client.AsyncClient.

- a workflow task runs to completion through a worker; its events stream over SSE; an
  idempotent submission runs once; another tenant sees nothing (404);
- a worker killed with SIGKILL in the middle of a run loses nothing: once its task lease
  expires another worker takes the task over and resumes the run, and the step that had
  completed is not run again.
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
from typing import Any

import anyio
import pytest

import flowyard_client as client_module
import flowyard_server  # noqa: F401 - installed in .venv with every distribution
import flowyard_sql  # noqa: F401

pytestmark = [pytest.mark.slow]

CLI = [sys.executable, "-c", "from flowyard.cli import main; main()"]
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """The processes of the service and how to reach it."""

    def __init__(self, tmp: Path, storage_url: str | None = None) -> None:
        self.tmp = tmp
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (tmp / "flowyard.toml").write_text("")
        self.env = {
            **os.environ,
            "FLOWYARD_CONFIG": str(tmp / "flowyard.toml"),
            "XDG_CONFIG_HOME": str(tmp / "config"),
            "FLOWYARD_DATA_DIR": str(tmp / "data"),
            "FLOWYARD_STORAGE_URL": storage_url or f"sqlite:///{tmp / 'service.db'}",
            "FLOWYARD_DEFAULT_MODEL": "fake/echo",
            "FLOWYARD_PLUGINS": "builtin,server,sql",
            "FLOWYARD_SERVER__TASK_LEASE_TIMEOUT": "2",
            "FLOWYARD_SERVER__TASK_RENEW_INTERVAL": "0.3",
            "FLOWYARD_SERVER__POLL_INTERVAL": "0.2",
            "FLOWYARD_SERVER__SSE_POLL": "0.05",
            "FLOWYARD_SERVER__KEY_CACHE_SECONDS": "0.5",
            "FLOWYARD_RUNS__HEARTBEAT_INTERVAL": "0.3",
            "FLOWYARD_RUNS__LEASE_TIMEOUT": "2",
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    def command(self, *args: str) -> str:
        done = subprocess.run([*CLI, *args], env=self.env, capture_output=True, timeout=60,
                              check=False)
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()

    def start(self, *args: str, name: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")
        process = subprocess.Popen([*CLI, *args], env=self.env, stdout=log,
                                   stderr=subprocess.STDOUT)
        log.close()
        self.processes.append(process)
        return process

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def service(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The service on a SQLite file, then on a PostgreSQL database (every test runs on
    both)."""
    import httpx
    from flowyard import Stack, SupportsTaskQueue

    tmp = tmp_path_factory.mktemp(f"service-{request.param}")
    url = None
    if request.param == "postgresql":
        pg = request.getfixturevalue("postgres_server")
        url = pg.url(pg.create_database())
    svc = Service(tmp, url)
    probe = Stack.default(config={"storage": {"url": svc.env["FLOWYARD_STORAGE_URL"]}})
    assert isinstance(probe.storage, SupportsTaskQueue), "the SQL storage keeps the task queue"
    svc.keys = {t: svc.command("api-keys", "create", "--tenant", t).strip().splitlines()[-1]
                for t in ("e2e", "other")}
    svc.start("serve", "--port", str(svc.port), "--no-worker", name="serve")
    svc.start("worker", "--concurrency", "2", "--name", "worker-a", name="worker-a")
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(svc.url + "/v1/health/live", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or svc.processes[0].poll() is not None:
            raise RuntimeError("flowyard serve did not start:\n" + svc.log("serve"))
        time.sleep(0.1)
    try:
        yield svc
    finally:
        for process in svc.processes:
            if process.poll() is None:
                process.terminate()
        for process in svc.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for name in ("serve", "worker-a"):
            log = svc.log(name)
            for key in svc.keys.values():
                assert key not in log


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_client_runs_a_workflow_task(service: Any) -> None:
    from flowyard_client import AsyncClient, NotFoundError, ValidationError

    async with AsyncClient(service.url, service.keys["e2e"]) as fy, \
            AsyncClient(service.url, service.keys["other"]) as other:
        assert (await fy.health()).status == "UP"
        info = await fy.workflows.register(HELLO)
        assert info.name == "hello" and info.steps == 1
        task = await fy.tasks.submit(target="hello", inputs={"who": "Ada"},
                                     idempotency_key="e2e-hello")
        again = await fy.tasks.submit(target="hello", inputs={"who": "Ada"},
                                      idempotency_key="e2e-hello")
        assert again.id == task.id
        with pytest.raises(ValidationError) as refused:  # inputs checked at submission
            await fy.tasks.submit(target="hello", inputs={"who": 3, "colour": "red"})
        assert sorted(d["path"] for d in refused.value.details) == ["inputs.colour",
                                                                    "inputs.who"]
        done = await fy.tasks.wait_for_completion(task, timeout=60)
        assert done.status == "completed", done.error
        assert done.outputs == {"greeting": "Hello, Ada!"}
        events = [e async for e in fy.runs.events(task.run_id)]
        stored = [e.seq for e in events if e.seq]
        assert stored == list(range(1, len(stored) + 1))
        assert events[-1].type == "run.finished"
        tail = [e async for e in fy.runs.events(task.run_id, after_seq=stored[-2])]
        assert [e.seq for e in tail if e.seq] == [stored[-1]]
        run = await fy.runs.get(task.run_id)
        assert run.status == "completed" and run.task_id == task.id
        with pytest.raises(NotFoundError):
            await other.tasks.get(task.id)
        with pytest.raises(NotFoundError):
            await other.runs.get(task.run_id)
        assert (await other.tasks.list()).items == []


NESTED_CHAT = """\
name: nested-chat
steps:
  - id: nap
    uses: sleep
    with: {seconds: 1}
  - id: inner
    uses: workflow
    depends_on: [nap]
    with:
      workflow:
        name: inner-chat
        steps:
          - id: ask
            uses: llm.chat
            with: {model: fake/echo, prompt: "relay these words from the worker process"}
"""


@pytest.mark.anyio
async def test_token_deltas_stream_from_a_worker_process(service: Any) -> None:
    """The run executes in `flowyard worker` (serve has no worker): its sub-workflow's token
    deltas reach the client through the storage relay, before run.finished, each once.
    """
    from flowyard_client import AsyncClient

    async with AsyncClient(service.url, service.keys["e2e"]) as fy:
        await fy.workflows.register(NESTED_CHAT)
        task = await fy.tasks.submit(target="nested-chat")
        events = [e async for e in fy.runs.events(task.run_id)]
        done = await fy.tasks.get(task.id)
    assert done.status == "completed", done.error
    assert events[-1].type == "run.finished"
    deltas = [e for e in events if e.type == "step.delta"]
    assert deltas, [e.type for e in events]
    assert all(e.seq == 0 and e.step_id == "ask" and e.run_id != task.run_id for e in deltas)
    offsets = [e.data["offset"] for e in deltas]
    assert offsets == sorted(set(offsets))  # in order, none twice
    assert deltas[-1].data["final"] is True
    text = "".join(e.data["text"] for e in deltas)
    assert text.endswith("relay these words from the worker process")


@pytest.mark.anyio
async def test_a_killed_worker_loses_nothing(service: Any) -> None:
    import anyio
    from flowyard_client import AsyncClient

    async with AsyncClient(service.url, service.keys["e2e"]) as fy:
        await fy.workflows.register(TWO_STEPS)
        task = await fy.tasks.submit(target="two-steps", inputs={"nap": 3})
        with anyio.fail_after(30):
            while True:  # wait until the first step completed and the second runs
                steps = {s.step_id: s.status for s in await fy.runs.steps(task.run_id)}
                if steps.get("first") == "completed" and steps.get("second") == "running":
                    break
                await anyio.sleep(0.1)
        worker_a = service.processes[1]
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


@pytest.mark.anyio
async def test_keys_list_and_revoke(service: Any) -> None:
    from flowyard_client import AsyncClient, AuthenticationError

    listed = service.command("api-keys", "list")
    for tenant, key in service.keys.items():
        key_id = key.split("_")[1]
        assert key_id in listed and tenant in listed
        assert key.split("_", 2)[2] not in listed
    async with AsyncClient(service.url, service.keys["other"]) as other:
        assert (await other.tasks.list()).items == []
        service.command("api-keys", "revoke", service.keys["other"].split("_")[1])
        # the server trusts a verified key for key_cache_seconds (0.5 here) from memory
        deadline = time.monotonic() + 3.0
        while True:
            try:
                await other.tasks.list()
            except AuthenticationError:
                break
            assert time.monotonic() < deadline, "the revoked key is still accepted"
            await anyio.sleep(0.1)
        with pytest.raises(AuthenticationError):
            await other.tasks.list()
