"""flowyard-client's whole surface against a real `flowyard serve` on 127.0.0.1 (issue 18),
with the service of test_server_client.py (`flowyard serve --no-worker` and a `flowyard worker`
of concurrency 2 over SQLite, then over a throwaway PostgreSQL):

- agents, tasks, runs, workflows, health, metrics, providers/models/tools through
  AsyncClient, each call checked against what the server really did; a few calls through the
  blocking Client;
- a server stopped (SIGTERM) with tasks still queued and started again on the same database,
  with its in-process worker: every queued task completes once, none is lost or run twice;
- the typed errors of real answers: 404 for another tenant's ids (exactly as for missing
  ones), 401 for a wrong or missing key, 422 for bad inputs, 413 for an oversized body.
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

_path = Path(__file__).with_name("test_server_client.py")
_spec = importlib.util.spec_from_file_location("_flowyard_e2e_server_client", _path)
assert _spec is not None and _spec.loader is not None
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)  # skips this module too without server, SQL or client

# the fixtures of test_server_client.py: a fresh service for this module (on the session's
# PostgreSQL server of tests/conftest.py)
service = _shared.service
anyio_backend = _shared.anyio_backend
Service = _shared.Service
HELLO = _shared.HELLO
TWO_STEPS = _shared.TWO_STEPS
GREETER = HELLO.replace("name: hello\n", "name: greeter\n")  # this test's own tasks

pytestmark = [pytest.mark.slow]

REPORT = """\
name: report
description: logs a line, then asks the priced fake model
inputs:
  who: {type: string}
steps:
  - id: note
    uses: log
    with: {message: "reporting on ${inputs.who}", level: warning}
  - id: ask
    uses: llm.chat
    depends_on: [note]
    with:
      model: fake/priced
      prompt: "tell me about ${inputs.who}"
outputs:
  reply: "${ask}"
"""
BROKEN = """\
name: broken
steps:
  - id: a
    uses: echo
    with: {value: 1}
  - id: b
    uses: no-such-action
    depends_on: [nowhere]
"""
POLL = 0.1


def _counter(metrics: str, name: str, **labels: str) -> float:
    """The value of one counter sample of a Prometheus text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in metrics.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == (f"{name}{{{wanted}}}" if labels else name):
            return float(value)
    return 0.0


async def _until(check: Any, *, timeout: float = 30.0) -> Any:
    """Poll the coroutine function ``check`` until it returns something true."""
    with anyio.fail_after(timeout):
        while True:
            found = await check()
            if found:
                return found
            await anyio.sleep(POLL)


@pytest.mark.anyio
async def test_the_client_surface(service: Any) -> None:
    from flowyard_client import AsyncClient, ConflictError, NotFoundError

    async with AsyncClient(service.url, service.keys["e2e"]) as fy:
        start = await fy.get_metrics()  # (other tests may have used the service before)
        # ---------------------------------------------------------------- the stack
        health = await fy.health()
        assert health.status == "UP" and health.version
        assert {"storage", "queue", "worker"} <= set(health.checks)
        assert health.checks["storage"].status == "UP"
        assert health.checks["worker"].detail == "no in-process worker"  # --no-worker
        assert (await fy.health(ready=False)).status == "UP"
        providers = {p.name: p for p in await fy.providers()}
        assert {"echo", "priced"} <= set(providers["fake"].models)
        models = {m.ref: m for m in await fy.models()}
        priced = models["fake/priced"]
        assert (priced.provider, priced.model) == ("fake", "priced")
        assert (priced.input_usd_per_mtok, priced.output_usd_per_mtok) == (1.0, 2.0)
        tools = {t.name: t for t in await fy.tools()}
        assert {"echo", "log", "sleep"} <= set(tools)
        assert tools["sleep"].parameters["required"] == ["seconds"]
        assert tools["log"].idempotent is True

        # ---------------------------------------------------------------- workflows
        valid = await fy.workflows.validate(HELLO)
        assert valid.valid and valid.name == "hello" and valid.issues == []
        invalid = await fy.workflows.validate(BROKEN)
        assert not invalid.valid
        assert invalid.name is None
        assert sorted((i.path, i.line, i.column) for i in invalid.issues) == [
            ("steps[1].depends_on[0]", 8, 18), ("steps[1].uses", 7, 11)]
        assert any("no-such-action" in i.message for i in invalid.issues)
        defined = await fy.workflows.validate(definition={
            "name": "inline", "steps": [{"id": "s", "uses": "echo", "with": {"value": 1}}]})
        assert defined.valid and defined.name == "inline"
        for text in (GREETER, TWO_STEPS, REPORT):
            await fy.workflows.register(text)
        registered = {w.name: w for w in await fy.workflows.list()}
        assert {"greeter", "two-steps", "report"} <= set(registered)
        assert registered["report"].steps == 2
        assert registered["report"].description == "logs a line, then asks the priced fake model"
        assert set(registered["greeter"].inputs) == {"who"}
        assert registered["greeter"].steps == 1
        assert "broken" not in registered

        # ---------------------------------------------------------------- agents
        created = [await fy.agents.create(name=f"agent-{i}", type="worker",
                                          capabilities=["search", f"skill-{i}"],
                                          model="fake/echo", instructions="be brief",
                                          metadata={"n": i}) for i in range(3)]
        mine = {a.id for a in created}
        seen: list[str] = []
        after = None
        while True:
            page = await fy.agents.list(limit=2, after=after)
            assert len(page.items) <= 2
            seen.extend(a.id for a in page.items)
            if page.next_after is None:
                break
            assert page.next_after == page.items[-1].id
            after = page.next_after
        assert seen == sorted(seen) and mine <= set(seen) and len(seen) == len(set(seen))
        first = created[0]
        got = await fy.agents.get(first.id)
        assert got == first and got.metadata == {"n": 0} and got.model == "fake/echo"
        updated = await fy.agents.update(first, name="renamed", capabilities=["review"],
                                         model=None)
        assert (updated.name, updated.capabilities, updated.model) == ("renamed", ["review"],
                                                                       None)
        assert updated.instructions == "be brief" and updated.created_at == first.created_at
        assert updated.updated_at >= first.updated_at
        assert await fy.agents.get(first.id) == updated
        assert await fy.agents.get_capabilities(first.id) == ["review"]
        assert await fy.agents.has_capability(first, "review")
        assert not await fy.agents.has_capability(first, "search")
        assert await fy.agents.has_capability(created[1], "skill-1")
        await fy.agents.delete(created[2])
        with pytest.raises(NotFoundError):
            await fy.agents.get(created[2].id)
        with pytest.raises(NotFoundError):
            await fy.agents.delete(created[2].id)
        assert created[2].id not in {a.id for a in (await fy.agents.list(limit=100)).items}

        # ------------------------------------------- cancel a running and a queued task
        # two long tasks fill the worker's two slots; a third then stays queued
        slow = await fy.tasks.submit(target="two-steps", inputs={"nap": 3}, name="slow")
        slower = await fy.tasks.submit(target="two-steps", inputs={"nap": 60}, name="slower")

        async def both_sleep() -> bool:
            for task in (slow, slower):
                steps = {s.step_id: s.status for s in await fy.runs.steps(task.run_id)}
                if steps.get("second") != "running":
                    return False
            return True

        await _until(both_sleep)
        queued = await fy.tasks.submit(target="greeter", inputs={"who": "Queued"})
        assert queued.status == "queued" and queued.attempts == 0
        assert (await fy.tasks.get(queued)).status == "queued"
        assert (await fy.runs.get(queued.run_id)).status == "pending"
        cancelled = await fy.tasks.cancel(queued)
        assert cancelled.status == "cancelled" and cancelled.finished_at is not None
        assert (await fy.runs.get(queued.run_id)).status == "cancelled"
        for task in (slow, slower):
            asked = await fy.tasks.cancel(task.id)
            assert asked.status == "running" and asked.cancel_requested
        stopped = await fy.tasks.wait_for_all([slow, slower], timeout=30, poll_interval=POLL)
        assert [t.status for t in stopped] == ["cancelled", "cancelled"], stopped
        assert (await fy.runs.get(slower.run_id)).status == "cancelled"
        # cancelling an ended task changes nothing
        assert (await fy.tasks.cancel(slower)).status == "cancelled"

        # retry the queued one (never started); resume the running one (its first step stays)
        again = await fy.tasks.retry(queued)
        assert (again.id, again.run_id, again.status) == (queued.id, queued.run_id, "queued")
        resumed = await fy.runs.resume(slow.run_id)
        assert (resumed.id, resumed.status) == (slow.id, "queued")

        # ---------------------------------------------------------------- submissions
        batch = await fy.tasks.submit_batch([{"target": "greeter", "inputs": {"who": w}}
                                             for w in ("Ann", "Bob", "Cy")])
        assert [t.inputs["who"] for t in batch] == ["Ann", "Bob", "Cy"]
        assert len({t.id for t in batch}) == 3
        key = f"surface-{service.port}"
        once = await fy.tasks.submit(target="greeter", inputs={"who": "Once"},
                                     idempotency_key=key, priority=5, metadata={"m": 1})
        twice = await fy.tasks.submit(target="greeter", inputs={"who": "Once"},
                                      idempotency_key=key, priority=5, metadata={"m": 1})
        assert twice.id == once.id and twice.run_id == once.run_id
        with pytest.raises(ConflictError) as conflict:
            await fy.tasks.submit(target="greeter", inputs={"who": "Other"},
                                  idempotency_key=key)
        assert conflict.value.status == 409
        agent_task = await fy.tasks.submit(kind="agent", target=created[1].id,
                                           inputs={"input": "ping the agent"})
        report = await fy.tasks.submit(target="report", inputs={"who": "Ada"})

        done = await fy.tasks.wait_for_all([*batch, once, again, agent_task, report],
                                           timeout=60, poll_interval=POLL)
        assert all(t.status == "completed" for t in done), [(t.status, t.error) for t in done]
        assert [t.outputs["greeting"] for t in done[:3]] == ["Hello, Ann!", "Hello, Bob!",
                                                             "Hello, Cy!"]
        assert done[3].outputs == {"greeting": "Hello, Once!"} and done[3].attempts == 1
        assert done[3].priority == 5 and done[3].metadata["m"] == 1
        # the server records who submitted the task (the audit log's actor, docs/audit.md)
        actor = done[3].metadata["actor"]
        assert actor["actor"].startswith("api_key:") and actor["tenant"] == "e2e"
        assert set(done[3].metadata) == {"m", "actor"}
        assert done[3].idempotency_key == key
        assert done[4].outputs == {"greeting": "Hello, Queued!"}
        assert done[5].outputs == {"answer": "echo: ping the agent", "turns": 1}
        assert done[6].outputs == {"reply": "echo: tell me about Ada"}  # the fake echoes
        single = await fy.tasks.wait_for_completion(batch[0].id, timeout=5, poll_interval=POLL)
        assert single.status == "completed" and single.started_at and single.finished_at
        assert single.created_at <= single.started_at <= single.finished_at

        # ---------------------------------------------------------------- task queries
        async def ids(**query: Any) -> list[str]:
            return [t.id for t in (await fy.tasks.list(**query)).items]

        hellos = await ids(target="greeter")
        assert set(hellos) == {queued.id, *(t.id for t in batch), once.id}
        assert hellos.index(once.id) < hellos.index(batch[0].id)  # newest first
        assert await ids(target="greeter", limit=2, offset=1) == hellos[1:3]
        assert await ids(kind="agent") == [agent_task.id]
        assert await ids(status="cancelled") == [slower.id]
        assert set(await ids(status="completed", kind="workflow", target="greeter")) == set(
            hellos)
        page = await fy.tasks.list(limit=3, offset=2)
        assert (page.limit, page.offset, len(page.items)) == (3, 2, 3)

        # ---------------------------------------------------------------- runs
        run = await fy.runs.get(report.run_id)
        assert (run.workflow_name, run.status, run.task_id) == ("report", "completed",
                                                                report.id)
        assert run.inputs == {"who": "Ada"} and run.outputs == done[6].outputs
        steps = await fy.runs.steps(report.run_id)
        assert [(s.step_id, s.attempt, s.status) for s in steps] == [
            ("note", 1, "completed"), ("ask", 1, "completed")]
        logs = await fy.runs.logs(report.run_id)
        assert [(g.level, g.message, g.step_id) for g in logs] == [
            ("warning", "reporting on Ada", "note")]
        cost = await fy.runs.cost(report.run_id)
        assert [(c.provider, c.model, c.step_id) for c in cost] == [("fake", "priced", "ask")]
        line = cost[0]
        assert (line.input_tokens, line.output_tokens) == (4, 5)  # words in, words out
        assert line.cost_usd == pytest.approx((line.input_tokens + 2 * line.output_tokens)
                                              / 1e6)
        assert run.input_tokens == line.input_tokens
        assert run.cost_usd == pytest.approx(line.cost_usd)
        events = [e async for e in fy.runs.events(report.run_id)]
        durable = [e for e in events if e.seq]
        assert [e.seq for e in durable] == list(range(1, len(durable) + 1))
        assert events[-1].type == "run.finished"
        assert {e.step_id for e in durable if e.type.startswith("step.")} == {"note", "ask"}
        assert all(e.run_id == report.run_id for e in events)
        with pytest.raises(ConflictError):  # a completed run is not resumed
            await fy.runs.resume(report.run_id)
        listed = {r.id: r for r in (await fy.runs.list(limit=200)).items}
        assert {report.run_id, slow.run_id, slower.run_id} <= set(listed)
        assert listed[report.run_id].task_id == report.id
        assert {r.id for r in (await fy.runs.list(status="cancelled")).items} == {
            slower.run_id}

        # the resumed run: its first step was not run again, its second ran twice
        resumed_done = await fy.tasks.wait_for_completion(slow, timeout=30,
                                                          poll_interval=POLL)
        assert resumed_done.status == "completed" and resumed_done.outputs == {
            "first": "done once"}
        attempts = await fy.runs.steps(slow.run_id)
        assert [a.status for a in attempts if a.step_id == "first"] == ["completed"]
        assert [a.status for a in attempts if a.step_id == "second"][-1] == "completed"
        assert (await fy.runs.get(slow.run_id)).resume_count == 1
        # retrying a completed task changes nothing
        assert (await fy.tasks.retry(slow)).status == "completed"

        # ---------------------------------------------------------------- metrics
        before = await fy.get_metrics()
        for _ in range(3):
            await fy.health()
        with pytest.raises(NotFoundError):
            await fy.tasks.get("0" * 32)
        after_text = await fy.get_metrics()
        name = "flowyard_server_http_requests_total"
        assert "# TYPE flowyard_server_http_requests_total counter" in after_text
        # 3 health checks and the first scrape (a scrape counts once it has answered)
        assert (_counter(after_text, name, method="GET", code="200")
                - _counter(before, name, method="GET", code="200")) == 4
        assert (_counter(after_text, name, method="GET", code="404")
                - _counter(before, name, method="GET", code="404")) == 1
        assert (_counter(after_text, name, method="POST", code="201")  # tasks, agents...
                - _counter(start, name, method="POST", code="201")) == 12
        assert (_counter(after_text, name, method="POST", code="409")
                - _counter(start, name, method="POST", code="409")) == 2
        submitted = "flowyard_server_tasks_submitted_total"
        assert (_counter(after_text, submitted, kind="workflow")
                - _counter(start, submitted, kind="workflow")) == 8  # not the repeated one
        assert (_counter(after_text, submitted, kind="agent")
                - _counter(start, submitted, kind="agent")) == 1
        assert _counter(after_text, "flowyard_server_uptime_seconds") > 0


def test_the_blocking_client(service: Any) -> None:
    from flowyard_client import Client, NotFoundError

    with Client(service.url, service.keys["e2e"]) as fy:
        assert fy.health().status == "UP"
        assert "fake" in {p.name for p in fy.providers()}
        fy.workflows.register(HELLO)
        agent = fy.agents.create(name="blocking", capabilities=["sync"])
        assert fy.agents.has_capability(agent.id, "sync")
        task = fy.tasks.submit(target="hello", inputs={"who": "Sync"})
        done = fy.tasks.wait_for_completion(task.id, timeout=30, poll_interval=POLL)
        assert done.status == "completed" and done.outputs == {"greeting": "Hello, Sync!"}
        events = list(fy.runs.events(task.run_id))
        assert events[-1].type == "run.finished"
        assert [s.step_id for s in fy.runs.steps(task.run_id)] == ["greet"]
        assert "flowyard_server_http_requests_total" in fy.get_metrics()
        fy.agents.delete(agent.id)
        with pytest.raises(NotFoundError):
            fy.agents.get(agent.id)


@pytest.mark.anyio
async def test_typed_errors_of_the_real_server(service: Any) -> None:
    from flowyard_client import (
        AsyncClient,
        AuthenticationError,
        NotFoundError,
        PayloadTooLargeError,
        ValidationError,
    )

    mine_key = service.keys["e2e"]
    async with AsyncClient(service.url, mine_key) as fy, \
            AsyncClient(service.url, service.keys["other"]) as other:
        await fy.workflows.register(HELLO)
        task = await fy.tasks.submit(target="hello", inputs={"who": "Mine"})
        agent = await fy.agents.create(name="private", capabilities=["secret"])
        assert (await fy.tasks.wait_for_completion(task, timeout=30, poll_interval=POLL)
                ).status == "completed"

        # ------------------------------------ another tenant's ids: 404, as missing ones
        async def events(client: Any, run_id: str) -> None:
            async for _ in client.runs.events(run_id):
                pass

        missing = "f" * 32
        calls = {
            "tasks.get": (lambda c, i: c.tasks.get(i), task.id),
            "tasks.cancel": (lambda c, i: c.tasks.cancel(i), task.id),
            "tasks.retry": (lambda c, i: c.tasks.retry(i), task.id),
            "tasks.wait_for_completion": (
                lambda c, i: c.tasks.wait_for_completion(i, timeout=5), task.id),
            "runs.get": (lambda c, i: c.runs.get(i), task.run_id),
            "runs.steps": (lambda c, i: c.runs.steps(i), task.run_id),
            "runs.logs": (lambda c, i: c.runs.logs(i), task.run_id),
            "runs.cost": (lambda c, i: c.runs.cost(i), task.run_id),
            "runs.resume": (lambda c, i: c.runs.resume(i), task.run_id),
            "runs.events": (events, task.run_id),
            "agents.get": (lambda c, i: c.agents.get(i), agent.id),
            "agents.update": (lambda c, i: c.agents.update(i, name="stolen"), agent.id),
            "agents.get_capabilities": (lambda c, i: c.agents.get_capabilities(i), agent.id),
            "agents.has_capability": (lambda c, i: c.agents.has_capability(i, "secret"),
                                      agent.id),
            "agents.delete": (lambda c, i: c.agents.delete(i), agent.id),
        }
        for what, (call, ident) in calls.items():
            with pytest.raises(NotFoundError) as theirs:
                await call(other, ident)
            with pytest.raises(NotFoundError) as absent:
                await call(other, missing)
            assert (theirs.value.status, theirs.value.code) == (404, "not_found"), what
            assert theirs.value.message.replace(ident, "ID") == absent.value.message.replace(
                missing, "ID"), what
        # a workflow or agent of another tenant cannot be run either
        with pytest.raises(NotFoundError):
            await other.tasks.submit(target="hello", inputs={"who": "Thief"})
        with pytest.raises(NotFoundError):
            await other.tasks.submit(kind="agent", target=agent.id, inputs={"input": "hi"})
        assert "hello" not in {w.name for w in await other.workflows.list()}
        assert agent.id not in {a.id for a in (await other.agents.list(limit=100)).items}
        # and nothing of the owner's changed
        after = await fy.tasks.get(task)
        assert (after.status, after.cancel_requested, after.attempts) == ("completed", False, 1)
        assert await fy.agents.get(agent) == agent

        # ------------------------------------------------ 401: a wrong or missing key
        wrong = mine_key[:-4] + ("0000" if not mine_key.endswith("0000") else "1111")
        for key in (wrong, "fy_000000000000_" + "0" * 32, "not-a-key", None):
            async with AsyncClient(service.url, key) as intruder:
                for call in (intruder.tasks.list(), intruder.get_metrics(),
                             intruder.workflows.register(HELLO),
                             intruder.tasks.get(task.id)):
                    with pytest.raises(AuthenticationError) as refused:
                        await call
                    assert (refused.value.status, refused.value.code) == (
                        401, "authentication_error")
                    assert mine_key[3:] not in str(refused.value)
                assert (await intruder.health()).status == "UP"  # health needs no key

        # ------------------------------------------------------- 422: bad inputs
        before = len((await fy.tasks.list(limit=200)).items)

        async def invalid(call: Any) -> Any:
            with pytest.raises(ValidationError) as refused:
                await call
            assert refused.value.status == 422, refused.value
            assert refused.value.code == "validation_error"
            return refused.value.details

        details = await invalid(fy.tasks.submit(target="hello", inputs={"who": 3, "x": 1}))
        assert sorted(d["path"] for d in details) == ["inputs.who", "inputs.x"]
        details = await invalid(fy.tasks.submit_batch([
            {"target": "hello", "inputs": {"who": "fine"}},
            {"target": "hello", "inputs": {"whom": "typo"}}]))
        assert [d["path"] for d in details] == ["tasks[1].inputs.whom"]
        details = await invalid(fy.workflows.register(BROKEN))
        assert sorted((d["path"], d["line"]) for d in details) == [
            ("steps[1].depends_on[0]", 8), ("steps[1].uses", 7)]
        details = await invalid(fy.agents.create(name="tooled", tools=["no-such-tool"]))
        assert details == {"unknown_tools": ["no-such-tool"]}
        details = await invalid(fy.agents.get("not-an-id"))
        assert details[0]["loc"] == ["path", "agent_id"]
        details = await invalid(fy.tasks.list(limit=1000))
        assert details[0]["loc"] == ["query", "limit"]
        await invalid(fy.tasks.list(status="sleeping"))
        deep: Any = "bottom"
        for _ in range(40):
            deep = {"d": deep}
        await invalid(fy.tasks.submit(target="hello", inputs={"who": "x", "deep": deep}))
        # what the client itself rejects is never sent (no status)
        with pytest.raises(ValidationError) as local:
            await fy.tasks.submit(target="hello", priority=5000)
        assert local.value.status is None
        assert len((await fy.tasks.list(limit=200)).items) == before  # nothing was queued

        # ------------------------------------------------- 413: an oversized body
        with pytest.raises(PayloadTooLargeError) as too_large:
            await fy.tasks.submit(target="hello", inputs={"who": "x" * (1024 * 1024 + 1)})
        assert (too_large.value.status, too_large.value.code) == (413, "payload_too_large")
        with pytest.raises(PayloadTooLargeError):
            await fy.workflows.validate(definition={"name": "big", "description": "y" * 2**21,
                                                    "steps": []})
        assert len((await fy.tasks.list(limit=200)).items) == before
        assert (await fy.health()).status == "UP"  # and the server serves on


def _serve(svc: Any, name: str, *args: str) -> subprocess.Popen[bytes]:
    """Start `flowyard serve` on ``svc``'s port and wait until it answers."""
    import httpx

    process = svc.start("serve", "--port", str(svc.port), *args, name=name)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(svc.url + "/v1/health/live", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"flowyard serve did not start:\n{svc.log(name)}")
        time.sleep(0.1)


@pytest.fixture()
def idle_service(tmp_path: Path) -> Iterator[Any]:
    """A service on its own SQLite file with one key (tenant ``restart``), and no process
    yet; every process started is stopped at the end. (SQLite only: two more server starts
    on PostgreSQL would cost 6 s for little.)"""
    svc = Service(tmp_path)
    svc.keys = {"restart": svc.command("api-keys", "create", "--tenant", "restart"
                                       ).strip().splitlines()[-1]}
    try:
        yield svc
    finally:
        for process in svc.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


@pytest.mark.anyio
async def test_a_restarted_server_runs_the_queued_tasks(idle_service: Any) -> None:
    from flowyard_client import AsyncClient

    svc = idle_service
    first = _serve(svc, "serve-1", "--no-worker")
    async with AsyncClient(svc.url, svc.keys["restart"]) as fy:
        await fy.workflows.register(HELLO)
        names = [f"n{i}" for i in range(6)]
        tasks = [await fy.tasks.submit(target="hello", inputs={"who": n},
                                       idempotency_key=f"restart-{n}") for n in names[:3]]
        tasks += await fy.tasks.submit_batch([{"target": "hello", "inputs": {"who": n}}
                                              for n in names[3:]])
        await anyio.sleep(0.3)  # nothing runs them: the server has no worker
        assert {t.status for t in (await fy.tasks.list()).items} == {"queued"}

        first.send_signal(signal.SIGTERM)
        # a clean shutdown (uvicorn re-raises the signal it handled once it has shut down)
        assert first.wait(timeout=20) in (0, -signal.SIGTERM), svc.log("serve-1")
        assert "Application shutdown complete" in svc.log("serve-1")
        _serve(svc, "serve-2")  # the same database, with its in-process worker

        done = await fy.tasks.wait_for_all(tasks, timeout=30, poll_interval=POLL)
        assert [t.status for t in done] == ["completed"] * 6, [t.error for t in done]
        assert [t.outputs for t in done] == [{"greeting": f"Hello, {n}!"} for n in names]
        assert [t.attempts for t in done] == [1] * 6  # claimed once each
        for task in done:
            steps = await fy.runs.steps(task.run_id)
            assert [(s.step_id, s.attempt, s.status) for s in steps] == [
                ("greet", 1, "completed")]
        listed = (await fy.tasks.list()).items
        assert sorted(t.id for t in listed) == sorted(t.id for t in tasks)  # none more
        again = await fy.tasks.submit(target="hello", inputs={"who": "n0"},
                                      idempotency_key="restart-n0")
        assert (again.id, again.status) == (tasks[0].id, "completed")  # not queued anew
        metrics = await fy.get_metrics()
        assert _counter(metrics, "flowyard_worker_tasks_completed") == 6
        assert _counter(metrics, "flowyard_server_tasks_submitted_total",
                        kind="workflow") == 0  # the second server queued nothing
