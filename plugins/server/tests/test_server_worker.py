"""The worker alone, in-process on asyncio and trio: priorities, concurrency, a task whose
worker vanished is taken over after its lease expired (the run resumes), a lost lease stops
the run without recording anything, cancellation, and failures recorded with their reason.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from flowyard import Stack, TaskRecord, new_id

FAST = dict(concurrency=1, task_lease_timeout=1.0, task_renew_interval=0.1, poll_interval=0.05)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The worker runs on both anyio backends."""
    return str(request.param)


async def _stack_with(definitions: dict[str, dict[str, Any]]) -> Stack:
    stack = Stack(config={"storage": {"url": "memory://"}, "models": {"default": "fake/echo"},
                          "runs": {"heartbeat_interval": 0.2, "lease_timeout": 1}})
    await stack.open()
    for name, definition in definitions.items():
        await stack.storage.kv_set("server.workflows.t", name, {
            "definition": definition, "content_hash": "x", "registered_at": 0.0})
    return stack


def _echo(name: str) -> dict[str, Any]:
    return {"name": name, "inputs": {"v": {"type": "string", "default": "x"}},
            "steps": [{"id": "a", "uses": "echo", "with": {"value": "${inputs.v}"}}],
            "outputs": {"v": "${a}"}}


def _sleepy(seconds: float) -> dict[str, Any]:
    return {"name": "sleepy", "steps": [
        {"id": "first", "uses": "echo", "with": {"value": 1}},
        {"id": "nap", "uses": "sleep", "depends_on": ["first"], "with": {"seconds": seconds}}]}


async def _submit(stack: Stack, target: str, **fields: Any) -> TaskRecord:
    task, created = await stack.storage.submit_task(  # type: ignore[attr-defined]
        TaskRecord(id=new_id(), tenant="t", kind="workflow", target=target, **fields))
    assert created
    return task


async def _wait(stack: Stack, task_id: str, *statuses: str, timeout: float = 10) -> TaskRecord:
    statuses = statuses or ("completed", "failed", "cancelled")
    with anyio.fail_after(timeout):
        while True:
            task = await stack.storage.get_task(task_id)  # type: ignore[attr-defined]
            if task.status in statuses:
                return task
            await anyio.sleep(0.02)


@pytest.mark.anyio
async def test_priorities_and_outputs() -> None:
    from flowyard_server.settings import ServerSettings
    from flowyard_server.worker import Worker

    stack = await _stack_with({"echo": _echo("echo")})
    low = await _submit(stack, "echo", inputs={"v": "low"}, priority=-1)
    high = await _submit(stack, "echo", inputs={"v": "high"}, priority=7)
    worker = Worker(stack, ServerSettings(**FAST), name="w")
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        done_low = await _wait(stack, low.id)
        done_high = await _wait(stack, high.id)
        tg.cancel_scope.cancel()
    assert done_high.outputs == {"v": "high"} and done_low.outputs == {"v": "low"}
    assert done_high.started_at <= done_low.started_at
    assert worker.finished["completed"] == 2
    await stack.aclose()


@pytest.mark.anyio
async def test_concurrency_runs_tasks_side_by_side() -> None:
    from flowyard_server.settings import ServerSettings
    from flowyard_server.worker import Worker

    stack = await _stack_with({"sleepy": _sleepy(1.0)})
    tasks = [await _submit(stack, "sleepy") for _ in range(3)]
    worker = Worker(stack, ServerSettings(**{**FAST, "concurrency": 3}), name="w")
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        for task in tasks:
            assert (await _wait(stack, task.id)).status == "completed"
        tg.cancel_scope.cancel()
    assert time.monotonic() - started < 2.5  # three 1 s naps at once, not in a row (3 s)
    await stack.aclose()


@pytest.mark.anyio
async def test_an_abandoned_task_is_taken_over_and_its_run_resumed() -> None:
    from flowyard_server.settings import ServerSettings
    from flowyard_server.worker import Worker

    stack = await _stack_with({"sleepy": _sleepy(0.5)})
    task = await _submit(stack, "sleepy")
    queue: Any = stack.storage
    # a worker that claims the task, starts its run, then vanishes (no renewals)
    claimed = await queue.claim_task("ghost", now=time.time(), lease_timeout=0.5)
    assert claimed.id == task.id
    with anyio.move_on_after(0.2):  # the run gets as far as its first step, then "dies"
        await stack.run(_sleepy(0.5), run_id=task.run_id)
    worker = Worker(stack, ServerSettings(**FAST), name="heir")
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        done = await _wait(stack, task.id)
        tg.cancel_scope.cancel()
    assert done.status == "completed", done.error
    assert done.attempts == 2
    attempts = await stack.storage.list_attempts(task.run_id)
    assert [a.status for a in attempts if a.step_id == "first"] == ["completed"]
    await stack.aclose()


@pytest.mark.anyio
async def test_a_lost_lease_stops_the_run_and_records_nothing() -> None:
    from flowyard_server.settings import ServerSettings
    from flowyard_server.worker import Worker

    stack = await _stack_with({"sleepy": _sleepy(30)})
    task = await _submit(stack, "sleepy")
    queue: Any = stack.storage
    claimed = await queue.claim_task("w", now=time.time(), lease_timeout=5)
    worker = Worker(stack, ServerSettings(**FAST), name="w")
    async with anyio.create_task_group() as tg:
        async def thief() -> None:
            await anyio.sleep(0.3)
            queue._tasks[task.id].worker = "thief"  # another worker took the task over

        tg.start_soon(thief)
        with anyio.fail_after(10):
            assert await worker.execute(claimed) is None
    record = await queue.get_task(task.id)
    assert record.status == "running" and record.worker == "thief"
    await stack.aclose()


@pytest.mark.anyio
async def test_cancel_and_failure() -> None:
    from flowyard_server.settings import ServerSettings
    from flowyard_server.worker import Worker

    stack = await _stack_with({"sleepy": _sleepy(30), "echo": _echo("echo")})
    slow = await _submit(stack, "sleepy")
    bad = await _submit(stack, "echo", inputs={"v": 5})  # not a string: the run fails
    gone = TaskRecord(id=new_id(), tenant="t", kind="workflow", target="unregistered")
    await stack.storage.submit_task(gone)  # type: ignore[attr-defined]
    worker = Worker(stack, ServerSettings(**{**FAST, "concurrency": 3}), name="w")
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await _wait(stack, slow.id, "running")
        await anyio.sleep(0.2)
        await stack.storage.cancel_task(slow.id, now=time.time())  # type: ignore[attr-defined]
        cancelled = await _wait(stack, slow.id)
        failed = await _wait(stack, bad.id)
        missing = await _wait(stack, gone.id)
        tg.cancel_scope.cancel()
    assert cancelled.status == "cancelled"
    assert (await stack.storage.get_run(slow.run_id)).status == "cancelled"
    assert failed.status == "failed" and failed.error
    assert missing.status == "failed" and "not registered" in (missing.error or "")
    await stack.aclose()


def test_relative_sub_workflow_paths_resolve_against_workflows_dir(
        server: Any, waiter: Any, tmp_path: Any) -> None:
    """A registered workflow calling ``uses: workflow`` with a relative path: registration
    checks the file in ``[server] workflows_dir``, the registration keeps that directory (its
    ``source``), and the worker runs the sub-workflow from there whatever its own directory.
    """
    import attrs

    (tmp_path / "sub.yaml").write_text(
        "name: sub\ninputs:\n  who: {type: string}\nsteps:\n  - id: hi\n    uses: echo\n"
        "    with: {value: \"hi {{ inputs.who }}\"}\noutputs:\n  said: \"${hi}\"\n")
    parent = ("name: parent-rel\nsteps:\n  - id: call\n    uses: workflow\n    with:\n"
              "      workflow: sub.yaml\n      inputs: {who: Ada}\n"
              "outputs:\n  said: \"${call.said}\"\n")
    svc = server.service
    before = svc.settings
    with server.client("a") as client:
        missing = client.post("/v1/workflows", json={"source": parent})
        assert missing.status_code == 422  # not in the server's working directory
        svc.settings = attrs.evolve(before, workflows_dir=str(tmp_path))
        try:
            registered = client.post("/v1/workflows", json={"source": parent})
        finally:
            svc.settings = before
        assert registered.status_code == 201, registered.text
        stored = anyio.run(server.stack.storage.kv_get, "server.workflows.a", "parent-rel")
        assert stored["source"].startswith(str(tmp_path))
        task = client.post("/v1/tasks", json={"target": "parent-rel"})
        assert task.status_code == 201, task.text
        done = waiter(client, task.json()["id"])
        assert done["status"] == "completed", done
        assert done["outputs"] == {"said": "hi Ada"}
