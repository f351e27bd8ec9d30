"""AsyncClient against a real uvicorn server (conftest.py) on asyncio and trio: every route,
typed errors, retries, the resuming event stream, timeouts, metrics, and the API key kept out
of everything.
"""

from __future__ import annotations

import builtins
import logging
import socket
import time
from typing import Any

import anyio
import pytest
from flowyard_client import (
    AgentCreate,
    AsyncClient,
    AuthenticationError,
    ConflictError,
    ConnectionError,
    FlowyardAPIError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    ServerError,
    TaskSubmit,
    TimeoutError,
    ValidationError,
)

pytestmark = pytest.mark.anyio

#: What conftest.py's server accepts (its ``api_key``); a canary that must never leak.
API_KEY = "sk-canary-7f3a9c2e5b1d4806a9e2"
#: The seq of the last event (run.finished) of each scripted run.
LAST_SEQ = 9
#: The conftest server (conftest.Server): ``base_url``, ``state``.
Server = Any


def client_for(server: Server, **kwargs: Any) -> AsyncClient:
    kwargs.setdefault("api_key", API_KEY)
    kwargs.setdefault("backoff", 0.01)
    kwargs.setdefault("timeout", 5.0)
    return AsyncClient(server.base_url, **kwargs)


# -- every route -------------------------------------------------------------------------------


async def test_health_metrics_and_catalogue(server: Server) -> None:
    async with client_for(server) as client:
        health = await client.health()
        assert health.status == "UP" and health.checks["storage"].status == "UP"
        assert (await client.health(ready=False)).status == "UP"
        server.state.health_down = True
        try:
            down = await client.health()  # a 503 with a health body is an answer
        finally:
            server.state.health_down = False
        assert down.status == "DOWN" and down.checks["storage"].detail == "unreachable"
        assert "flowyard_tasks_total 3" in await client.get_metrics()
        assert [p.name for p in await client.providers()] == ["mock"]
        assert (await client.models())[0].input_usd_per_mtok == 1.0
        assert (await client.tools())[0].idempotent is True


async def test_agents_round_trip(server: Server, token: str) -> None:
    async with client_for(server) as client:
        first = await client.agents.create(AgentCreate(name=f"a-{token}",
                                                       capabilities=["summarise"]))
        second = await client.agents.create(name=f"b-{token}", model="mock:m",
                                            capabilities=["search", "summarise"])
        third = await client.agents.create({"name": f"c-{token}"}, type="planner")
        assert third.type == "planner" and second.model == "mock:m"
        assert await client.agents.get(first.id) == first
        seen: list[str] = []
        after = None
        while True:
            page = await client.agents.list(limit=2, after=after)
            seen += [a.id for a in page.items]
            if page.next_after is None:
                break
            after = page.next_after
        assert {first.id, second.id, third.id} <= set(seen)
        updated = await client.agents.update(second, instructions="be brief", model=None)
        assert updated.instructions == "be brief" and updated.model is None
        assert updated.capabilities == ["search", "summarise"]
        assert await client.agents.get_capabilities(second.id) == ["search", "summarise"]
        assert await client.agents.has_capability(second.id, "search")
        assert not await client.agents.has_capability(first, "search")
        await client.agents.delete(first.id)
        with pytest.raises(NotFoundError) as caught:
            await client.agents.get(first.id)
        assert caught.value.status == 404 and caught.value.code == "not_found"


async def test_tasks_round_trip(server: Server, token: str) -> None:
    async with client_for(server) as client:
        task = await client.tasks.submit(TaskSubmit(target="wf", inputs={"polls": 3},
                                                    name=f"t-{token}"))
        assert task.status == "queued" and task.run_id
        done = await client.tasks.wait_for_completion(task.id, timeout=5, poll_interval=0.01)
        assert done.status == "completed" and done.outputs == {"echo": {"polls": 3}}
        with pytest.raises(ConflictError):
            await client.tasks.cancel(done)
        failed = await client.tasks.submit(target="boom", name=f"f-{token}")
        failed = await client.tasks.wait_for_completion(failed, poll_interval=0.01)
        assert failed.status == "failed" and failed.error == "boom"
        again = await client.tasks.retry(failed.id)
        assert again.status == "queued" and again.id == failed.id and again.attempts == 1
        never = await client.tasks.submit(target="never")
        cancelled = await client.tasks.cancel(never.id)
        assert cancelled.status == "cancelled"
        page = await client.tasks.list(target="boom", limit=100)
        assert failed.id in [t.id for t in page.items]
        assert all(t.target == "boom" for t in page.items)
        batch = await client.tasks.submit_batch([TaskSubmit(target="wf"),
                                                 {"target": "wf", "inputs": {"polls": 2}}])
        assert len(batch) == 2
        finished = await client.tasks.wait_for_all([t.id for t in batch], poll_interval=0.01)
        assert [t.id for t in finished] == [t.id for t in batch]
        assert all(t.status == "completed" for t in finished)


async def test_runs_and_workflows(server: Server, token: str) -> None:
    async with client_for(server) as client:
        page = await client.runs.list(limit=2)
        assert [r.id for r in page.items] == ["r1", "r2"] and page.limit == 2
        run = await client.runs.get("r1")
        assert run.cost_usd == 0.001
        assert (await client.runs.steps(run))[0].output == {"text": "hi"}
        assert (await client.runs.logs("r1"))[0].message == "started"
        assert (await client.runs.cost("r1"))[0].cost_usd is None
        assert (await client.runs.resume(f"ok-{token}")).run_id == f"ok-{token}"
        with pytest.raises(NotFoundError):
            await client.runs.get(f"missing-{token}")
        good = {"name": f"wf-{token}", "steps": [{"id": "a"}]}
        assert (await client.workflows.validate(good)).valid
        bad = await client.workflows.validate("name: x\n")
        assert not bad.valid and bad.issues[0].path == "steps"
        info = await client.workflows.register(definition=good)
        assert info.name == f"wf-{token}"
        assert f"wf-{token}" in [w.name for w in await client.workflows.list()]
        with pytest.raises(ValidationError) as caught:
            await client.workflows.register("name: x\n")
        assert caught.value.status == 422 and caught.value.details[0]["path"] == "steps"


# -- typed errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "kind"), [
    (400, ValidationError), (422, ValidationError), (401, AuthenticationError),
    (403, AuthenticationError), (404, NotFoundError), (409, ConflictError),
    (413, PayloadTooLargeError), (429, RateLimitError), (500, ServerError),
    (502, ServerError), (503, ServerError), (504, ServerError)])
async def test_each_status_has_its_error(server: Server, status: int,
                                         kind: type[FlowyardAPIError]) -> None:
    async with client_for(server, max_retries=0) as client:
        with pytest.raises(kind) as caught:
            await client.agents.get(f"status-{status}")
    exc = caught.value
    assert type(exc) is kind and isinstance(exc, FlowyardAPIError)
    assert exc.status == status
    assert exc.message == f"scripted {status}"
    assert exc.details == {"field": "name", "status": status}
    assert exc.request_id == f"req-{status}"
    assert exc.code and str(status) in str(exc) and exc.message in str(exc)
    if status == 429:
        assert isinstance(exc, RateLimitError) and exc.retry_after == 3600.0


async def test_payload_too_large_and_server_validation(server: Server) -> None:
    async with client_for(server) as client:
        with pytest.raises(PayloadTooLargeError) as caught:
            await client.tasks.submit(target="wf", inputs={"text": "x" * 20_000})
        assert caught.value.code == "payload_too_large"


async def test_invalid_params_are_rejected_before_sending(server: Server) -> None:
    async with client_for(server) as client:
        with pytest.raises(ValidationError) as caught:
            await client.tasks.submit(kind="workflow")  # no target
        with pytest.raises(ValidationError):
            await client.agents.create(name="x", colour="red")  # unknown field
        with pytest.raises(TypeError):
            await client.tasks.submit(42)  # type: ignore[arg-type]
    assert caught.value.status is None and "target" in caught.value.message
    assert caught.value.details and caught.value.details[0]["loc"] == ("target",)
    assert client.metrics.requests == 0


async def test_a_non_json_error_body_and_a_malformed_answer(server: Server, token: str) -> None:
    async with client_for(server, max_retries=0) as client:
        with pytest.raises(ServerError) as caught:
            await client.tasks.get(f"garbage-{token}")
        assert caught.value.status == 500 and not caught.value.retriable
        assert "Internal error" in caught.value.message
        with pytest.raises(FlowyardAPIError) as bad:
            await client.tasks.get(f"badjson-{token}")
        assert bad.value.code == "malformed_response" and bad.value.status == 200


# -- retries -----------------------------------------------------------------------------------


async def test_503_then_success_is_retried_and_counted(server: Server, token: str) -> None:
    async with client_for(server) as client:
        task = await client.tasks.get(f"flaky-{token}")
    assert task.id == f"flaky-{token}"
    assert server.state.hits[f"GET:/v1/tasks/flaky-{token}"] == 3
    route = client.metrics.route("GET /v1/tasks/{task_id}")
    assert (route.requests, route.failures, route.retries) == (3, 2, 2)
    assert client.metrics.retries == 2


async def test_retries_stop_after_max_retries(server: Server, token: str) -> None:
    async with client_for(server, max_retries=2) as client:
        with pytest.raises(ServerError) as caught:
            await client.tasks.get(f"gateway-{token}")
    assert caught.value.status == 502 and caught.value.retriable
    assert server.state.hits[f"GET:/v1/tasks/gateway-{token}"] == 3
    assert client.metrics.failures == 3


async def test_429_waits_for_retry_after(server: Server, token: str) -> None:
    async with client_for(server) as client:
        start = time.monotonic()
        task = await client.tasks.get(f"rl-{token}")
        elapsed = time.monotonic() - start
    assert task.id == f"rl-{token}"
    assert elapsed >= 0.95, "Retry-After: 1 was not honoured"
    assert client.metrics.retries == 1


async def test_a_long_retry_after_fails_at_once(server: Server) -> None:
    async with client_for(server) as client:
        start = time.monotonic()
        with pytest.raises(RateLimitError) as caught:
            await client.agents.get("status-429")
    assert time.monotonic() - start < 1 and caught.value.retry_after == 3600
    assert client.metrics.requests == 1


async def test_post_without_idempotency_key_is_not_retried(server: Server, token: str) -> None:
    async with client_for(server) as client:
        with pytest.raises(ServerError) as caught:
            await client.tasks.submit(target="flaky", name=f"nokey-{token}")
        assert caught.value.status == 503
        assert server.state.hits[f"submit:nokey-{token}"] == 1
        assert client.metrics.retries == 0


async def test_post_with_idempotency_key_is_retried(server: Server, token: str) -> None:
    async with client_for(server) as client:
        task = await client.tasks.submit(target="flaky", name=f"key-{token}",
                                         idempotency_key=f"k-{token}")
        assert server.state.hits[f"submit:key-{token}"] == 3
        again = await client.tasks.submit(target="flaky", name=f"key-{token}",
                                          idempotency_key=f"k-{token}")
    assert again.id == task.id and task.idempotency_key == f"k-{token}"
    assert client.metrics.route("POST /v1/tasks").retries == 2


async def test_resume_is_not_retried(server: Server, token: str) -> None:
    async with client_for(server) as client:
        with pytest.raises(ServerError):
            await client.runs.resume(f"flaky-{token}")
    assert server.state.hits[f"resume:flaky-{token}"] == 1


async def test_unreachable_server_is_a_connection_error(anyio_backend: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nobody listens
    async with AsyncClient(f"http://127.0.0.1:{port}", api_key=API_KEY, backoff=0,
                           max_retries=2) as client:
        with pytest.raises(ConnectionError) as caught:
            await client.tasks.get("x")
        with pytest.raises(ConnectionError):
            await client.tasks.submit(target="wf")  # not retried
    assert isinstance(caught.value, builtins.ConnectionError)
    assert caught.value.status is None and caught.value.code == "connection_error"
    assert client.metrics.route("GET /v1/tasks/{task_id}").requests == 3
    assert client.metrics.route("POST /v1/tasks").requests == 1


# -- timeouts ----------------------------------------------------------------------------------


async def test_slow_answers_time_out_and_are_retried(server: Server, token: str) -> None:
    async with client_for(server, timeout=0.3, max_retries=1) as client:
        start = time.monotonic()
        with pytest.raises(TimeoutError) as caught:
            await client.tasks.get(f"slow-{token}")
    assert time.monotonic() - start < 1.5
    assert isinstance(caught.value, builtins.TimeoutError)
    assert caught.value.timeout == 0.3 and caught.value.status is None
    assert client.metrics.route("GET /v1/tasks/{task_id}").requests == 2


async def test_a_trickling_answer_cannot_pass_the_deadline(server: Server, token: str) -> None:
    async with client_for(server, timeout=0.5, max_retries=0) as client:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.tasks.get(f"trickle-{token}")  # each byte within 0.5 s, never all
    assert time.monotonic() - start < 1.5


async def test_wait_for_completion_times_out(server: Server) -> None:
    async with client_for(server) as client:
        task = await client.tasks.submit(target="never")
        start = time.monotonic()
        with pytest.raises(TimeoutError) as caught:
            await client.tasks.wait_for_completion(task.id, timeout=0.3, poll_interval=0.05)
        assert 0.25 < time.monotonic() - start < 2
        assert caught.value.timeout == 0.3 and task.id in caught.value.message
        with pytest.raises(TimeoutError):
            await client.tasks.wait_for_all([task.id], timeout=0.2, poll_interval=0.05)


# -- the event stream --------------------------------------------------------------------------


async def collect(client: AsyncClient, run_id: str, after_seq: int = 0) -> list[Any]:
    return [event async for event in client.runs.events(run_id, after_seq=after_seq)]


@pytest.mark.parametrize("scenario", ["drop", "replay", "early"])
async def test_events_resume_after_a_break(server: Server, token: str, scenario: str) -> None:
    run_id = f"{scenario}-{token}"
    async with client_for(server) as client:
        events = await collect(client, run_id)
    durable = [e.seq for e in events if e.seq]
    assert durable == list(range(1, LAST_SEQ + 1)), "an event was missed or seen twice"
    assert [e.type for e in events if not e.seq] == ["step.delta"]
    assert events[-1].type == "run.finished" and events[0].type == "run.started"
    assert all(e.run_id == run_id for e in events)
    # The second connection asked for what followed the last event seen.
    assert server.state.last_event_ids[run_id] == [None, "4"]


async def test_events_reconnect_after_silence(server: Server, token: str) -> None:
    async with client_for(server, timeout=0.5) as client:
        events = await collect(client, f"silent-{token}")
    assert [e.seq for e in events if e.seq] == list(range(1, LAST_SEQ + 1))
    assert server.state.last_event_ids[f"silent-{token}"] == [None, "4"]


async def test_events_after_seq_and_early_exit(server: Server, token: str) -> None:
    async with client_for(server) as client:
        events = await collect(client, f"plain-{token}", after_seq=6)
        assert [e.seq for e in events] == [7, 8, 9]
        stream = client.runs.events(f"plain2-{token}")
        first = await stream.__anext__()
        await stream.aclose()  # type: ignore[attr-defined]
        assert first.seq == 1
        with pytest.raises(NotFoundError):
            await collect(client, f"missing-{token}")
    assert server.state.last_event_ids[f"plain-{token}"] == ["6"]


async def test_events_give_up_after_max_retries(server: Server, token: str) -> None:
    async with client_for(server, max_retries=2) as client:
        with pytest.raises(ServerError) as caught:
            await collect(client, f"down-{token}")
        assert caught.value.status == 503
        assert len(server.state.last_event_ids[f"down-{token}"]) == 3
        route = client.metrics.route("GET /v1/runs/{run_id}/events")
        assert (route.requests, route.failures, route.retries) == (3, 3, 2)
    async with client_for(server, api_key="sk-wrong") as client:
        with pytest.raises(AuthenticationError):  # not retried
            await collect(client, f"plain3-{token}")
    assert client.metrics.requests == 1


# -- secrets and metrics -----------------------------------------------------------------------


async def test_the_key_never_leaks(server: Server, caplog: pytest.LogCaptureFixture,
                                   token: str) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "sk-wrong-canary-0123456789abcdef"
    async with client_for(server, api_key=wrong) as client:
        assert wrong not in repr(client) and "***" in repr(client)
        with pytest.raises(AuthenticationError) as denied:
            await client.tasks.get("x")
    async with client_for(server) as client:
        with pytest.raises(ValidationError) as echoed:
            await client.agents.get("echo-key")
        await client.tasks.get(f"flaky-{token}")  # retries are logged
        assert API_KEY not in repr(client)
    for secret, exc in ((wrong, denied.value), (API_KEY, echoed.value)):
        shown = [str(exc), repr(exc), exc.message, repr(exc.details), repr(exc.args)]
        assert not [s for s in shown if secret in s], shown
        assert "***" in exc.message
    assert echoed.value.details == {"key": "***", "nested": ["***"]}
    assert "retrying" in caplog.text
    assert API_KEY not in caplog.text and wrong not in caplog.text


async def test_a_password_in_the_base_url_is_hidden(server: Server) -> None:
    url = server.base_url.replace("http://", "http://user:pw-canary-0451@")
    async with AsyncClient(url, api_key=API_KEY, max_retries=0) as client:
        assert "pw-canary-0451" not in repr(client) and "user:***@" in repr(client)
        assert (await client.health()).status == "UP"
        with pytest.raises(ValidationError) as caught:
            await client.agents.get("echo-key")  # the key wins over the URL's Basic auth
        assert API_KEY not in str(caught.value)
    async with AsyncClient(url, max_retries=0) as client:  # no key: Basic auth from the URL
        with pytest.raises(AuthenticationError) as denied:
            await client.agents.get("x")
    assert "pw-canary-0451" not in repr(denied.value.details)


async def test_latency_percentiles(server: Server) -> None:
    async with client_for(server) as client:
        for _ in range(20):
            await client.health()
    route = client.metrics.route("GET /v1/health/ready")
    assert route.requests == 20 and route.failures == 0 and route.retries == 0
    assert route.p50 is not None and route.p90 is not None and route.p99 is not None
    assert 0 < route.p50 <= route.p90 <= route.p99 <= route.max < 5  # type: ignore[operator]
    assert "GET /v1/health/ready" in client.metrics.snapshot()
    client.metrics.reset()
    assert client.metrics.requests == 0


async def test_a_closed_client_and_settings(server: Server) -> None:
    client = client_for(server)
    await client.aclose()
    with pytest.raises(RuntimeError):
        await client.health()
    with pytest.raises(ValueError):
        AsyncClient(server.base_url, max_retries=-1)
    with pytest.raises(ValueError):
        AsyncClient(server.base_url, timeout=0)


async def test_cancelling_a_call_cancels_the_request(server: Server, token: str) -> None:
    async with client_for(server) as client:
        with anyio.move_on_after(0.2) as scope:
            await client.tasks.get(f"slow-{token}")
        assert scope.cancelled_caught
        assert (await client.health()).status == "UP"  # the pool still works
