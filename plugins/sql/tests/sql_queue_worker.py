"""A task-queue process for the queue tests (run as a script, not collected by pytest).

Usage:
    python sql_queue_worker.py claim URL WORKER GO_FILE
        create GO_FILE.PID.ready once the storage is open, wait until GO_FILE exists, then
        claim tasks (lease 60 s) and finish each ``completed``
        until nothing is left; print the claimed tasks in claim order as one JSON list of
        ``{"id", "priority", "created_at", "attempts"}``.
    python sql_queue_worker.py hold URL WORKER READY_FILE LEASE_SECONDS
        claim one task with a lease of LEASE_SECONDS, write its id to READY_FILE, then renew
        the lease every LEASE_SECONDS / 4 forever (the test kills this process with SIGKILL).
    python sql_queue_worker.py take URL WORKER TIMEOUT_SECONDS
        poll for a task every 50 ms until one is claimed (lease 60 s) or TIMEOUT_SECONDS
        passed; finish it ``completed``; print ``{"task": {...fields...} or null, "polls": N}``.
    python sql_queue_worker.py submit URL KEYS GO_FILE
        create GO_FILE.PID.ready once the storage is open, wait until GO_FILE exists, then
        submit one task per comma-separated idempotency key of
        KEYS (tenant ``t``, a new task id each); print a JSON list of ``{"key", "id",
        "created"}``.

Exits 0 on success; any error is printed (traceback) and exits 1.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import attrs
from flowyard import TaskRecord, new_id
from flowyard_sql.storage import SQLStorage


def _wait_for(go_file: str) -> None:
    while not os.path.exists(go_file):
        time.sleep(0.005)


async def claim(storage: SQLStorage, worker: str, go_file: str) -> list[dict[str, Any]]:
    _wait_for(go_file)
    claimed = []
    while True:
        task = await storage.claim_task(worker, now=time.time(), lease_timeout=60.0)
        if task is None:
            return claimed
        claimed.append({"id": task.id, "priority": task.priority,
                        "created_at": task.created_at, "attempts": task.attempts})
        assert await storage.finish_task(task.id, worker, status="completed",
                                         outputs={"by": worker}, now=time.time())


async def hold(storage: SQLStorage, worker: str, ready_file: str, lease: float) -> None:
    task = await storage.claim_task(worker, now=time.time(), lease_timeout=lease)
    assert task is not None, "nothing to claim"
    tmp = Path(f"{ready_file}.tmp")
    tmp.write_text(task.id)
    tmp.rename(ready_file)
    while True:
        await anyio.sleep(lease / 4)
        assert await storage.renew_task(task.id, worker, now=time.time(),
                                        lease_timeout=lease) is not None


async def take(storage: SQLStorage, worker: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    polls = 0
    while time.monotonic() < deadline:
        polls += 1
        now = time.time()
        task = await storage.claim_task(worker, now=now, lease_timeout=60.0)
        if task is not None:
            assert await storage.finish_task(task.id, worker, status="completed",
                                             now=time.time())
            return {"task": attrs.asdict(task), "claimed_at": now, "polls": polls}
        await anyio.sleep(0.05)
    return {"task": None, "polls": polls}


async def submit(storage: SQLStorage, keys: str, go_file: str) -> list[dict[str, Any]]:
    _wait_for(go_file)
    results = []
    for key in keys.split(","):
        task = TaskRecord(id=new_id(), tenant="t", kind="workflow", target="wf",
                          idempotency_key=key, request_hash=f"pid {os.getpid()}")
        stored, created = await storage.submit_task(task)
        results.append({"key": key, "id": stored.id, "created": created})
    return results


async def main(mode: str, url: str, *args: str) -> None:
    storage = SQLStorage(url)
    await storage.open()
    if mode in ("claim", "submit"):  # tell the test this process is ready for GO_FILE
        Path(f"{args[-1]}.{os.getpid()}.ready").touch()
    try:
        if mode == "claim":
            result: Any = await claim(storage, args[0], args[1])
        elif mode == "hold":
            result = await hold(storage, args[0], args[1], float(args[2]))
        elif mode == "take":
            result = await take(storage, args[0], float(args[1]))
        elif mode == "submit":
            result = await submit(storage, args[0], args[1])
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    finally:
        await storage.close()
    print(json.dumps(result))


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:])
