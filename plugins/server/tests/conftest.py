"""One real uvicorn server for the whole test session, on a free loopback port, over a
memory-storage stack with the fake model provider; two tenants with one key each.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from flowyard import Stack


class _Collect(logging.Handler):
    """Keeps every formatted log line of the session (to check no key is ever logged)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class Server:
    """The running test server: its base URL, stack, keys and the log lines it wrote."""

    def __init__(self, url: str, stack: Stack, keys: dict[str, str], logs: _Collect,
                 service: Any) -> None:
        self.url = url
        self.stack = stack
        self.keys = keys
        self.logs = logs
        self.service = service

    def client(self, tenant: str | None = "a", **kwargs: Any) -> httpx.Client:
        """An httpx client for ``tenant`` (None: without a key)."""
        headers = {"Authorization": f"Bearer {self.keys[tenant]}"} if tenant else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10.0, **kwargs)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """Start the server once; stop it at the end of the session."""
    import uvicorn
    from flowyard_server.app import create_app
    from flowyard_server.keys import KeyStore
    from flowyard_server.settings import ServerSettings
    from flowyard_server.worker import Worker

    logs = _Collect()
    logs.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(logs)
    # only the server's loggers are turned up (and restored), not the root: other test
    # folders of the same session keep their logging
    loud = [logging.getLogger(n) for n in ("uvicorn.access", "uvicorn.error", "flowyard_server")]
    previous_levels = [logger.level for logger in loud]
    for logger in loud:
        logger.setLevel(logging.INFO)
    stack = Stack(config={"storage": {"url": "memory://"}, "models": {"default": "fake/echo"},
                          "runs": {"heartbeat_interval": 0.5, "lease_timeout": 3}})
    settings = ServerSettings(port=free_port(), concurrency=2, task_lease_timeout=3.0,
                              task_renew_interval=0.3, poll_interval=0.2,
                              max_body_bytes=64 * 1024, max_json_depth=20,
                              sse_ping=0.5, sse_poll=0.05)

    async def setup() -> dict[str, str]:
        await stack.open()
        store = KeyStore(stack.storage)
        return {tenant: (await store.create(tenant, name=f"test {tenant}"))[0]
                for tenant in ("a", "b")}

    keys = anyio.run(setup)
    app = create_app(stack, settings, worker=Worker(stack, settings, name="test-worker"))
    config = uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_config=None,
                            lifespan="on", access_log=True)
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield Server(f"http://127.0.0.1:{settings.port}", stack, keys, logs,
                     app.state.service)
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        root.removeHandler(logs)
        for logger, level in zip(loud, previous_levels, strict=True):
            logger.setLevel(level)
        anyio.run(stack.aclose)


HELLO = """\
name: hello
description: Greet, then ask the fake model.
inputs:
  who: {type: string, default: world}
steps:
  - id: greet
    uses: echo
    with:
      value: "Hello, {{ inputs.who }}!"
  - id: ask
    uses: llm.chat
    with:
      model: fake/echo
      prompt: "Reply to: ${greet}"
outputs:
  greeting: "${greet}"
  reply: "${ask}"
"""

SLOW = """\
name: slow
inputs:
  seconds: {type: number, default: 30}
steps:
  - id: nap
    uses: sleep
    with:
      seconds: "${inputs.seconds}"
"""


def wait_task(client: httpx.Client, task_id: str, *, timeout: float = 20.0,
              until: tuple[str, ...] = ("completed", "failed", "cancelled")) -> dict[str, Any]:
    """Poll a task until its status is in ``until``; return it."""
    deadline = time.monotonic() + timeout
    while True:
        task = client.get(f"/v1/tasks/{task_id}").json()
        if task["status"] in until:
            return task
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} is still {task['status']}: {task}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def registered(server: Server) -> dict[str, str]:
    """Register the ``hello`` and ``slow`` workflows for tenant ``a``; name -> source."""
    with server.client("a") as client:
        for source in (HELLO, SLOW):
            response = client.post("/v1/workflows", json={"source": source})
            assert response.status_code == 201, response.text
    return {"hello": HELLO, "slow": SLOW}


@pytest.fixture(scope="session")
def waiter() -> Any:
    """:func:`wait_task` as a fixture (test modules cannot import conftest)."""
    return wait_task


@pytest.fixture()
def anyio_backend() -> str:
    """The app's in-process tests run on asyncio (uvicorn and FastAPI's own loop)."""
    return "asyncio"
