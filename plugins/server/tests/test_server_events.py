"""Run events over Server-Sent Events: the durable log in seq order, resumable with
Last-Event-ID (nothing missed, nothing twice), heartbeats, token deltas, and finished runs.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from flowyard_client import models as wire


def read_sse(response: httpx.Response, *, stop_after: int | None = None
             ) -> tuple[list[dict[str, Any]], int]:
    """Parse an event stream; return its events (``id`` None for id-less ones) and the count
    of comment lines (heartbeats). Stops after ``stop_after`` events with an id.
    """
    events: list[dict[str, Any]] = []
    comments = 0
    current: dict[str, Any] = {}
    with_id = 0
    for line in response.iter_lines():
        if line.startswith(":"):
            comments += 1
        elif line == "":
            if "data" in current:
                events.append(current)
                if current.get("id") is not None:
                    with_id += 1
                    if stop_after is not None and with_id >= stop_after:
                        return events, comments
            current = {}
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                current["data"] = json.loads(value)
            elif field in ("id", "event"):
                current[field] = value
    return events, comments


def _events_url(run_id: str) -> str:
    return f"/v1/runs/{run_id}/events"


def test_events_of_a_run_and_a_reconnect(server: Any, registered: dict[str, str]) -> None:
    with server.client("a") as client:
        task = wire.Task.model_validate(client.post("/v1/tasks", json={
            "target": "hello", "inputs": {"who": "Eve"}}).json())
        # connect at once: the stream follows the run live while the worker runs it
        with client.stream("GET", _events_url(task.run_id)) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            head, _ = read_sse(response, stop_after=3)
        last = [e for e in head if e.get("id")][-1]["id"]
        with client.stream("GET", _events_url(task.run_id),
                           headers={"Last-Event-ID": last}) as response:
            tail, _ = read_sse(response)  # ends by itself after run.finished
        with client.stream("GET", _events_url(task.run_id)) as response:
            full, _ = read_sse(response)  # the finished run, from the start
    stored = [e for e in full if e.get("id")]
    seqs = [int(e["id"]) for e in stored]
    assert seqs == list(range(1, len(seqs) + 1))
    assert stored[-1]["event"] == "run.finished"
    resumed = [e for e in head + tail if e.get("id")]
    assert [e["id"] for e in resumed] == [e["id"] for e in stored]  # nothing missed or twice
    assert [e["data"] for e in resumed] == [e["data"] for e in stored]
    for item in stored:
        event = wire.RunEvent.model_validate(item["data"])
        assert event.run_id == task.run_id and str(event.seq) == item["id"]
        assert event.type == item["event"]
    # after the last event of a finished run: an empty stream that ends
    with server.client("a") as client, client.stream(
            "GET", _events_url(task.run_id), headers={"Last-Event-ID": stored[-1]["id"]}
    ) as response:
        assert read_sse(response)[0] == []


def test_token_deltas_and_heartbeats(server: Any, registered: dict[str, str],
                                     waiter: Any) -> None:
    source = """\
name: chatty
steps:
  - id: nap
    uses: sleep
    with: {seconds: 1.2}
  - id: ask
    uses: llm.chat
    depends_on: [nap]
    with:
      model: fake/echo
      prompt: "a long enough prompt to stream in pieces"
"""
    with server.client("a") as client:
        assert client.post("/v1/workflows", json={"source": source}).status_code == 201
        task = client.post("/v1/tasks", json={"target": "chatty"}).json()
        with client.stream("GET", _events_url(task["run_id"])) as response:
            events, comments = read_sse(response)
    assert comments >= 1  # sse_ping is 0.5 s in the tests; the run sleeps 1.2 s
    deltas = [e for e in events if e.get("event") == "step.delta"]
    assert deltas and all(e.get("id") is None for e in deltas)
    assert all(e["data"]["seq"] == 0 and e["data"]["step_id"] == "ask" for e in deltas)
    assert events[-1]["event"] == "run.finished"


def test_events_of_a_queued_task_wait_for_the_run(server: Any,
                                                 registered: dict[str, str]) -> None:
    with server.client("a") as client:
        task = client.post("/v1/tasks", json={"target": "slow", "inputs": {"seconds": 0.3},
                                              "priority": -5}).json()
        started = time.monotonic()
        with client.stream("GET", _events_url(task["run_id"])) as response:
            events, _ = read_sse(response)
    assert events[0]["event"] == "run.started" and events[-1]["event"] == "run.finished"
    assert time.monotonic() - started < 15


def test_bad_last_event_id(server: Any, registered: dict[str, str]) -> None:
    with server.client("a") as client:
        task = client.post("/v1/tasks", json={"target": "hello"}).json()
        response = client.get(_events_url(task["run_id"]), headers={"Last-Event-ID": "x1"})
    assert response.status_code == 422


def test_token_deltas_of_a_sub_workflow_reach_the_parent_run_stream(
        server: Any, registered: dict[str, str]) -> None:
    source = """\
name: nested-chat
steps:
  - id: nap
    uses: sleep
    with: {seconds: 0.5}
  - id: inner
    uses: workflow
    depends_on: [nap]
    with:
      workflow:
        name: inner-chat
        steps:
          - id: ask
            uses: llm.chat
            with: {model: fake/echo, prompt: "stream these words back in pieces"}
"""
    with server.client("a") as client:
        assert client.post("/v1/workflows", json={"source": source}).status_code == 201
        task = client.post("/v1/tasks", json={"target": "nested-chat"}).json()
        with client.stream("GET", _events_url(task["run_id"])) as response:
            events, _ = read_sse(response)
    deltas = [e for e in events if e.get("event") == "step.delta"]
    assert deltas, [e.get("event") for e in events]
    child_runs = {e["data"]["run_id"] for e in deltas}
    assert len(child_runs) == 1 and task["run_id"] not in child_runs  # the sub-run's own id
    assert all(e["data"]["step_id"] == "ask" for e in deltas)
    text = "".join(e["data"]["data"]["text"] for e in deltas)
    assert "stream these words back in pieces" in text
    assert events[-1]["event"] == "run.finished"


async def _relay_pair(storage_stack: Any) -> tuple[Any, Any]:
    from flowyard_server.live import DeltaRelay, RelayReader

    relay = DeltaRelay(storage_stack.storage, writer="worker-x", interval=0.01, keep=5)
    reader = RelayReader(storage_stack, local_writer="server-worker", max_age=0.0)
    return relay, reader


def _delta(run_id: str, text: str, step: str = "ask") -> Any:
    from flowyard import Event

    return Event("step.delta", run_id, step, {"text": text, "offset": 0, "final": False})


@pytest.mark.anyio
async def test_relay_hands_deltas_of_another_process_to_readers() -> None:
    from flowyard import Event, Stack
    from flowyard_server.live import RELAY_NAMESPACE, RelayReader

    async with Stack(config={"storage": {"url": "memory://"}}) as stack:
        relay, reader = await _relay_pair(stack)
        newest, items = await reader.since("root", -1)
        assert (newest, items) == (0, [])  # nothing relayed yet: start at the beginning
        relay(Event("run.started", "child", None, {"parent_run_id": "root"}))
        relay(Event("step.completed", "root", "x", {}))  # stored events are not relayed
        for i in range(7):
            relay(_delta("child", f"w{i} "))
        await relay.flush()
        newest, items = await reader.since("root", 0)
        assert newest == 7
        # only the last `keep` (5) are kept; each keeps the sub-run's own id
        assert [i["data"]["text"] for i in items] == [f"w{i} " for i in range(2, 7)]
        assert {i["run_id"] for i in items} == {"child"}
        assert (await reader.since("root", 6))[1] == [items[-1]]
        assert await reader.since("child", 0) == (0, [])  # keyed by the root run
        # a stream opened now starts after the newest event
        assert await reader.since("root", -1) == (7, [])
        # the server's own worker's entries are skipped (its hub delivers them)
        own = RelayReader(stack, local_writer="worker-x", max_age=0.0)
        assert await own.since("root", 0) == (0, [])
        # stale entries are swept; fresh ones stay
        relay(_delta("other-root", "x"))
        await relay.flush()
        entry = await stack.storage.kv_get(RELAY_NAMESPACE, "root")
        assert await relay.sweep(now=entry["updated"] + relay.ttl / 2) == 0
        assert await relay.sweep(now=entry["updated"] + relay.ttl + 1) == 2
        assert await stack.storage.kv_list(RELAY_NAMESPACE) == []


@pytest.mark.anyio
async def test_relay_keeps_events_when_the_storage_fails() -> None:
    from flowyard import Stack, StorageError

    async with Stack(config={"storage": {"url": "memory://"}}) as stack:
        relay, reader = await _relay_pair(stack)
        relay(_delta("r", "one"))
        real = stack.storage.kv_set

        async def broken(*args: Any) -> None:
            raise StorageError("disk full")

        stack.storage.kv_set = broken  # type: ignore[method-assign]
        with pytest.raises(StorageError):
            await relay.flush()
        stack.storage.kv_set = real  # type: ignore[method-assign]
        relay(_delta("r", "two"))
        await relay.flush()
        assert [i["data"]["text"] for i in (await reader.since("r", 0))[1]] == ["one", "two"]
