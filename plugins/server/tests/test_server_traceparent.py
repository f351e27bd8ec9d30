"""A task submitted with a W3C ``traceparent`` header keeps it in its metadata and its run
gets it in the run's metadata (flowyard-otel continues that trace); a malformed header, and a
``traceparent`` the client puts in the metadata itself, are dropped."""

from __future__ import annotations

from typing import Any

import anyio

WORKFLOW = "name: traced\nsteps:\n  - id: hi\n    uses: echo\n    with: {value: 1}\n"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _run_metadata(server: Any, run_id: str) -> dict[str, Any]:
    record = anyio.run(lambda: server.stack.storage.get_run(run_id))  # type: ignore
    return dict(record.metadata)


def test_the_traceparent_header_reaches_the_run(server: Any, waiter: Any) -> None:
    with server.client("a") as client:
        assert client.post("/v1/workflows", json={"source": WORKFLOW}).status_code in (200, 201)
        task = client.post("/v1/tasks", json={"target": "traced"},
                           headers={"traceparent": TRACEPARENT})
        assert task.status_code == 201, task.text
        assert task.json()["metadata"]["traceparent"] == TRACEPARENT
        done = waiter(client, task.json()["id"])
        assert done["status"] == "completed", done
    assert _run_metadata(server, done["run_id"])["traceparent"] == TRACEPARENT


def test_malformed_or_client_supplied_traceparents_are_dropped(server: Any,
                                                               waiter: Any) -> None:
    with server.client("a") as client:
        assert client.post("/v1/workflows", json={"source": WORKFLOW}).status_code in (200, 201)
        for headers, metadata in (({"traceparent": "00-not-a-trace-01"}, {}),
                                  ({}, {"traceparent": TRACEPARENT})):
            task = client.post("/v1/tasks", json={"target": "traced", "metadata": metadata},
                               headers=headers)
            assert task.status_code == 201, task.text
            assert "traceparent" not in task.json()["metadata"]
            done = waiter(client, task.json()["id"])
            assert done["status"] == "completed", done
            assert "traceparent" not in _run_metadata(server, done["run_id"])
