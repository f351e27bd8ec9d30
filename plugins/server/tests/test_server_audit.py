"""The audit log of flowyard-server: a task's run is recorded as done by the API key that
submitted it (and its tenant, whatever the client claims in its metadata); key creation is
recorded; a key's use is recorded at most once a minute; the key itself never is."""

from __future__ import annotations

import time
from itertools import pairwise
from typing import Any

import anyio
from flowyard import verify_audit

WORKFLOW = "name: audited\nsteps:\n  - id: hi\n    uses: echo\n    with: {value: 1}\n"


def _records(server: Any) -> list[Any]:
    return anyio.run(lambda: server.stack.storage.list_audit(limit=100_000))  # type: ignore


def test_a_run_is_recorded_as_the_submitting_key_and_tenant(server: Any, waiter: Any) -> None:
    key = server.keys["a"]
    key_id = key.split("_")[1]
    with server.client("a") as client:
        assert client.post("/v1/workflows", json={"source": WORKFLOW}).status_code in (200, 201)
        task = client.post("/v1/tasks", json={
            "target": "audited", "metadata": {"actor": {"actor": "user:root", "tenant": "b"},
                                              "note": "kept"}})
        assert task.status_code == 201, task.text
        assert task.json()["metadata"]["note"] == "kept"
        done = waiter(client, task.json()["id"])
        assert done["status"] == "completed", done
        for _ in range(3):
            assert client.get(f"/v1/tasks/{done['id']}").status_code == 200
    deadline = time.monotonic() + 10
    while True:
        records = _records(server)
        mine = [r for r in records if r.run_id == done["run_id"]]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [(r.action, r.resource, r.actor, r.tenant) for r in mine] == [
        ("tool.call", "echo", f"api_key:{key_id}", "a")]
    created = [r for r in records if r.action == "api_key.created"]
    assert {(r.resource, r.tenant) for r in created} >= {(f"api_key:{key_id}", "a")}
    used = [r for r in records if r.action == "api_key.used" and r.actor == f"api_key:{key_id}"]
    assert used and all(r.tenant == "a" for r in used)
    # many requests (other tests of the session use the key too): one record a minute
    assert all(b.time - a.time >= 59.0 for a, b in pairwise(used))
    assert len(used) <= 1 + (used[-1].time - used[0].time) / 60
    everything = repr(records)
    for secret in server.keys.values():
        assert secret not in everything and secret.split("_", 2)[2] not in everything
    assert anyio.run(verify_audit, server.stack.storage).ok
