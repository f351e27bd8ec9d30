"""The blocking Client: the same surface as AsyncClient, run in a helper thread's event loop
(asyncio or trio), against the conftest server.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import threading
from typing import Any

import pytest
from flowyard_client import (
    AsyncClient,
    Client,
    NotFoundError,
    ServerError,
    TaskSubmit,
    TimeoutError,
    ValidationError,
)

API_KEY = "sk-canary-7f3a9c2e5b1d4806a9e2"


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_the_surface_matches_the_async_client() -> None:
    for name in ("agents", "tasks", "runs", "workflows"):
        sync_ns = type((Client.__init__ and Client.__dict__.get(name)) or None)
        del sync_ns
    client = AsyncClient("http://127.0.0.1:1")
    sync = Client("http://127.0.0.1:1")
    try:
        for name in ("agents", "tasks", "runs", "workflows"):
            async_ns, sync_ns = getattr(client, name), getattr(sync, name)
            public = {m for m in dir(async_ns) if not m.startswith("_")}
            assert public == {m for m in dir(sync_ns) if not m.startswith("_")}
            for method in public:
                a, s = getattr(async_ns, method), getattr(sync_ns, method)
                assert (inspect.signature(a).parameters
                        == inspect.signature(s).parameters), (name, method)
                assert s.__doc__
        for method in ("health", "get_metrics", "providers", "models", "tools"):
            assert callable(getattr(sync, method))
        assert repr(sync).startswith("Client(")
    finally:
        sync.close()
        sync.close()  # idempotent


def test_round_trip(server: Any, backend: str) -> None:
    token = threading.get_ident()
    with Client(server.base_url, API_KEY, backoff=0.01, backend=backend) as client:
        assert API_KEY not in repr(client)
        assert client.health().status == "UP"
        assert "flowyard_tasks_total" in client.get_metrics()
        assert client.models()[0].ref == "mock:m"
        agent = client.agents.create(name=f"sync-{backend}", capabilities=["x"])
        assert client.agents.has_capability(agent.id, "x")
        task = client.tasks.submit(TaskSubmit(target="wf", inputs={"polls": 2}))
        done = client.tasks.wait_for_completion(task, timeout=5, poll_interval=0.01)
        assert done.status == "completed"
        assert client.tasks.get(f"flaky-{backend}-{token}").id == f"flaky-{backend}-{token}"
        assert client.metrics.retries == 2
        events = list(client.runs.events(f"drop-sync-{backend}-{token}"))
        assert [e.seq for e in events if e.seq] == list(range(1, 10))
        stream = client.runs.events(f"plain-sync-{backend}-{token}")
        assert next(stream).seq == 1
        stream.close()  # type: ignore[attr-defined]
        with pytest.raises(NotFoundError):
            client.agents.get("nope")
        with pytest.raises(ValidationError):
            client.tasks.submit()
        with pytest.raises(ServerError):
            client.tasks.submit(target="flaky", name=f"sync-nokey-{backend}-{token}")
        with pytest.raises(TimeoutError):
            client.tasks.wait_for_completion(client.tasks.submit(target="never"),
                                             timeout=0.2, poll_interval=0.05)
    with pytest.raises(RuntimeError):
        client.health()


def test_a_client_never_closed_does_not_keep_the_interpreter_alive() -> None:
    script = ("from flowyard_client import Client\n"
              "client = Client('http://127.0.0.1:1', backend='trio')\n"
              "other = Client('http://127.0.0.1:1')\n"
              "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_an_unknown_backend_is_refused() -> None:
    with pytest.raises(LookupError):
        Client("http://127.0.0.1:1", backend="curio")
