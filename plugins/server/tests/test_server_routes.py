"""The routes of the API against a real uvicorn: agents, tasks, runs, workflows, health,
metrics and the stack's providers/models/tools; every route refuses a missing or wrong key,
and another tenant's ids are 404 like missing ones.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from flowyard_client import models as wire

ZERO = "0" * 32

# (method, path template): every route behind authentication, with {id} filled per test
ROUTES = [
    ("GET", "/metrics"),
    ("POST", "/v1/agents"), ("GET", "/v1/agents"), ("GET", "/v1/agents/{agent}"),
    ("PATCH", "/v1/agents/{agent}"), ("DELETE", "/v1/agents/{agent}"),
    ("GET", "/v1/agents/{agent}/capabilities"),
    ("POST", "/v1/tasks"), ("POST", "/v1/tasks/batch"), ("GET", "/v1/tasks"),
    ("GET", "/v1/tasks/{task}"), ("POST", "/v1/tasks/{task}/cancel"),
    ("POST", "/v1/tasks/{task}/retry"),
    ("GET", "/v1/runs"), ("GET", "/v1/runs/{run}"), ("GET", "/v1/runs/{run}/steps"),
    ("GET", "/v1/runs/{run}/logs"), ("GET", "/v1/runs/{run}/cost"),
    ("POST", "/v1/runs/{run}/resume"), ("GET", "/v1/runs/{run}/events"),
    ("POST", "/v1/workflows/validate"), ("POST", "/v1/workflows"), ("GET", "/v1/workflows"),
    ("GET", "/v1/providers"), ("GET", "/v1/models"), ("GET", "/v1/tools"),
]
_BODIES: dict[str, Any] = {"/v1/agents": {"name": "x"}, "/v1/tasks": {"target": "hello"},
                           "/v1/tasks/batch": {"tasks": [{"target": "hello"}]},
                           "/v1/agents/{agent}": {"name": "y"},
                           "/v1/workflows/validate": {"source": "name: x\n"},
                           "/v1/workflows": {"source": "name: x\n"}}


def _call(client: httpx.Client, method: str, path: str, ids: dict[str, str]) -> httpx.Response:
    body = _BODIES.get(path) if method in ("POST", "PATCH") else None
    return client.request(method, path.format(**ids), json=body)


@pytest.fixture(scope="module")
def owned(server: Any, registered: dict[str, str], waiter: Any) -> dict[str, str]:
    """An agent, a completed task and its run of tenant ``a``."""
    with server.client("a") as client:
        agent = client.post("/v1/agents", json={"name": "helper", "capabilities": ["chat"],
                                                "model": "fake/echo", "tools": ["echo"]})
        assert agent.status_code == 201, agent.text
        task = client.post("/v1/tasks", json={"target": "hello", "inputs": {"who": "Ada"}})
        assert task.status_code == 201, task.text
        done = waiter(client, task.json()["id"])
        assert done["status"] == "completed", done
    return {"agent": agent.json()["id"], "task": task.json()["id"], "run": done["run_id"]}


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_needs_a_valid_key(server: Any, owned: dict[str, str], method: str,
                                       path: str) -> None:
    bad_headers = [{}, {"Authorization": "Bearer fy_000000000000_" + "A" * 43},
                   {"Authorization": "Bearer nonsense"}, {"X-API-Key": "wrong"},
                   {"Authorization": "Basic " + server.keys["a"]}]
    for headers in bad_headers:
        with httpx.Client(base_url=server.url, headers=headers, timeout=5) as client:
            response = _call(client, method, path, owned)
        assert response.status_code == 401, (headers, response.text)
        assert response.json()["code"] == "authentication_error"
        assert server.keys["a"] not in response.text


@pytest.mark.parametrize(("method", "path"), [r for r in ROUTES if "{" in r[1]])
def test_another_tenants_ids_are_not_found(server: Any, owned: dict[str, str], method: str,
                                           path: str) -> None:
    with server.client("b") as other:
        response = _call(other, method, path, owned)
        missing = _call(other, method, path, {"agent": ZERO, "task": ZERO, "run": ZERO})
    assert response.status_code == 404, response.text
    assert missing.status_code == 404
    assert response.json()["code"] == missing.json()["code"] == "not_found"
    # indistinguishable: the same message once the id is replaced
    assert (response.json()["message"].replace(owned[path.split("{")[1].split("}")[0]], "ID")
            == missing.json()["message"].replace(ZERO, "ID"))


def test_x_api_key_header_works(server: Any, owned: dict[str, str]) -> None:
    with httpx.Client(base_url=server.url, headers={"X-API-Key": server.keys["a"]}) as c:
        assert c.get(f"/v1/tasks/{owned['task']}").status_code == 200


def test_path_parameters_are_validated(server: Any) -> None:
    with server.client("a") as client:
        for path in ("/v1/tasks/not-an-id", "/v1/runs/" + "g" * 32, "/v1/agents/ABC",
                     "/v1/tasks/" + "a" * 33):
            response = client.get(path)
            assert response.status_code == 422, (path, response.text)
            assert response.json()["code"] == "validation_error"


def test_health_is_public_and_ready(server: Any) -> None:
    with server.client(None) as client:
        live = wire.Health.model_validate(client.get("/v1/health/live").json())
        ready = client.get("/v1/health/ready")
    assert live.status == "UP"
    health = wire.Health.model_validate(ready.json())
    assert ready.status_code == 200 and health.status == "UP", health
    # the server's own checks, then the registered ones (built in: model, disk; the
    # registered storage check is the server's own)
    assert set(health.checks) == {"storage", "queue", "worker", "model", "disk"}
    assert "fake/echo" in health.checks["model"].detail


def test_openapi_schema_and_docs(server: Any) -> None:
    with server.client(None) as client:
        schema = client.get("/openapi.json").json()
        assert client.get("/docs").status_code == 200
    assert "/v1/tasks" in schema["paths"] and "/v1/runs/{run_id}/events" in schema["paths"]
    assert "TaskSubmit" in schema["components"]["schemas"]


def test_agents_crud_and_pagination(server: Any) -> None:
    with server.client("b") as client:
        ids = []
        for i in range(5):
            response = client.post("/v1/agents", json={"name": f"agent {i}",
                                                       "capabilities": ["c"]})
            assert response.status_code == 201
            ids.append(wire.Agent.model_validate(response.json()).id)
        seen: list[str] = []
        after = ""
        while True:
            page = wire.AgentPage.model_validate(
                client.get("/v1/agents", params={"limit": 2, "after": after}).json())
            seen += [a.id for a in page.items]
            if page.next_after is None:
                break
            after = page.next_after
        assert sorted(seen) == sorted(ids)
        patched = client.patch(f"/v1/agents/{ids[0]}", json={"status": "inactive",
                                                              "capabilities": ["x", "y"]})
        assert patched.status_code == 200 and patched.json()["status"] == "inactive"
        assert patched.json()["name"] == "agent 0"
        assert client.get(f"/v1/agents/{ids[0]}/capabilities").json() == ["x", "y"]
        assert client.delete(f"/v1/agents/{ids[0]}").status_code == 204
        assert client.get(f"/v1/agents/{ids[0]}").status_code == 404
        bad = client.post("/v1/agents", json={"name": "x", "tools": ["no.such.tool"]})
        assert bad.status_code == 422 and bad.json()["code"] == "validation_error"
        typo = client.post("/v1/agents", json={"name": "x", "nmae": "typo"})
        assert typo.status_code == 422
        for agent_id in ids[1:]:
            client.delete(f"/v1/agents/{agent_id}")


def test_agent_task_runs_the_agent(server: Any, owned: dict[str, str], waiter: Any) -> None:
    with server.client("a") as client:
        task = client.post("/v1/tasks", json={"kind": "agent", "target": owned["agent"],
                                              "inputs": {"input": "What is 2+2?"}})
        assert task.status_code == 201, task.text
        done = waiter(client, task.json()["id"])
    assert done["status"] == "completed", done
    assert done["outputs"]["answer"] == "echo: What is 2+2?"


def test_workflow_task_run_steps_logs_cost(server: Any, owned: dict[str, str]) -> None:
    with server.client("a") as client:
        task = wire.Task.model_validate(client.get(f"/v1/tasks/{owned['task']}").json())
        assert task.outputs == {"greeting": "Hello, Ada!", "reply": "echo: Reply to: Hello, Ada!"}
        run = wire.Run.model_validate(client.get(f"/v1/runs/{owned['run']}").json())
        assert run.status == "completed" and run.task_id == task.id
        steps = [wire.StepAttempt.model_validate(s)
                 for s in client.get(f"/v1/runs/{owned['run']}/steps").json()]
        assert {s.step_id for s in steps} == {"greet", "ask"}
        costs = client.get(f"/v1/runs/{owned['run']}/cost").json()
        assert [c["model"] for c in costs] == ["echo"]
        assert isinstance(client.get(f"/v1/runs/{owned['run']}/logs").json(), list)
        runs = wire.RunPage.model_validate(client.get("/v1/runs", params={
            "status": "completed"}).json())
        assert owned["run"] in {r.id for r in runs.items}
        tasks = wire.TaskPage.model_validate(client.get("/v1/tasks", params={
            "status": "completed", "kind": "workflow", "target": "hello"}).json())
        assert task.id in {t.id for t in tasks.items}
        resume = client.post(f"/v1/runs/{owned['run']}/resume")
        assert resume.status_code == 409 and resume.json()["code"] == "conflict"
    with server.client("b") as other:
        assert other.get("/v1/runs").json()["items"] == []
        assert other.get("/v1/tasks").json()["items"] == []


def test_idempotent_submission(server: Any, registered: dict[str, str], waiter: Any) -> None:
    body = {"target": "hello", "inputs": {"who": "Bo"}, "idempotency_key": "order-17"}
    with server.client("a") as client:
        first = client.post("/v1/tasks", json=body)
        second = client.post("/v1/tasks", json=body)
        assert (first.status_code, second.status_code) == (201, 200)
        assert first.json()["id"] == second.json()["id"]
        other = client.post("/v1/tasks", json={**body, "inputs": {"who": "Cy"}})
        assert other.status_code == 409 and other.json()["code"] == "conflict"
        waiter(client, first.json()["id"])
        again = client.post("/v1/tasks", json=body)
        assert again.status_code == 200 and again.json()["status"] == "completed"
        listed = client.get("/v1/tasks", params={"limit": 200}).json()["items"]
        assert sum(1 for t in listed if t["idempotency_key"] == "order-17") == 1


def test_batch_priority_cancel_and_retry(server: Any, registered: dict[str, str],
                                         waiter: Any) -> None:
    with server.client("a") as client:
        batch = client.post("/v1/tasks/batch", json={"tasks": [
            {"target": "slow", "inputs": {"seconds": 30}, "priority": 5},
            {"target": "hello", "inputs": {"who": "Di"}, "priority": 1}]})
        assert batch.status_code == 200, batch.text
        slow, hello = (wire.Task.model_validate(t) for t in batch.json())
        waiter(client, slow.id, until=("running",))
        cancelled = client.post(f"/v1/tasks/{slow.id}/cancel").json()
        assert cancelled["cancel_requested"] or cancelled["status"] == "cancelled"
        assert waiter(client, slow.id)["status"] == "cancelled"
        assert waiter(client, hello.id)["status"] == "completed"
        retried = client.post(f"/v1/tasks/{slow.id}/retry")
        assert retried.status_code == 200 and retried.json()["status"] == "queued"
        assert retried.json()["run_id"] == slow.run_id
        waiter(client, slow.id, until=("running",))
        client.post(f"/v1/tasks/{slow.id}/cancel")
        assert waiter(client, slow.id)["status"] == "cancelled"
        unknown = client.post("/v1/tasks", json={"target": "no-such-workflow"})
        assert unknown.status_code == 404


def test_workflows_validate_register_list(server: Any, registered: dict[str, str]) -> None:
    with server.client("a") as client:
        ok = wire.ValidationResult.model_validate(
            client.post("/v1/workflows/validate", json={"source": registered["hello"]}).json())
        assert ok.valid and ok.name == "hello"
        bad = wire.ValidationResult.model_validate(client.post("/v1/workflows/validate", json={
            "definition": {"name": "bad", "steps": [{"id": "a", "uses": "nope"}]}}).json())
        assert not bad.valid and bad.issues
        path = client.post("/v1/workflows/validate", json={"source": "/etc/passwd"}).json()
        assert path["valid"] is False
        both = client.post("/v1/workflows/validate", json={"source": "x", "definition": {}})
        assert both.status_code == 422
        listed = [wire.WorkflowInfo.model_validate(w) for w in client.get("/v1/workflows").json()]
        assert {"hello", "slow"} <= {w.name for w in listed}
        hello = next(w for w in listed if w.name == "hello")
        assert hello.steps == 2 and "who" in hello.inputs
        invalid = client.post("/v1/workflows", json={"definition": {"name": "x", "steps": []}})
        assert invalid.status_code == 422
    with server.client("b") as other:
        assert other.get("/v1/workflows").json() == []
        assert other.post("/v1/tasks", json={"target": "hello"}).status_code == 404


def test_stack_listings(server: Any) -> None:
    with server.client("a") as client:
        providers = [wire.ProviderInfo.model_validate(p)
                     for p in client.get("/v1/providers").json()]
        models = [wire.ModelInfo.model_validate(m) for m in client.get("/v1/models").json()]
        tools = [wire.ToolInfo.model_validate(t) for t in client.get("/v1/tools").json()]
    assert "fake" in {p.name for p in providers}
    assert "fake/echo" in {m.ref for m in models}
    assert {"echo", "llm.chat", "sleep"} <= {t.name for t in tools}


def test_metrics_prometheus_text(server: Any, owned: dict[str, str]) -> None:
    with server.client("a") as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert "# TYPE flowyard_server_http_requests_total counter" in text
    assert re.search(r'flowyard_server_http_requests_total\{code="401",method="GET"\} \d+',
                     text)
    assert re.search(r"^flowyard_worker_tasks_completed \d+", text, re.M)


def test_unknown_route_is_an_error_body(server: Any) -> None:
    with server.client("a") as client:
        response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert wire.ErrorBody.model_validate(response.json()).code == "not_found"


def test_metrics_label_client_chosen_methods_as_other(server: Any) -> None:
    with server.client(None) as anonymous:
        assert anonymous.request("PROPFIND", "/v1/tasks").status_code == 401
    with server.client("a") as client:
        text = client.get("/metrics").text
    assert 'method="other"' in text and "PROPFIND" not in text


def test_a_task_cancelled_before_it_started_shows_its_run_cancelled(server: Any,
                                                                   registered: dict[str, str]
                                                                   ) -> None:
    import anyio
    from flowyard import TaskRecord, new_id

    async def cancel_queued() -> TaskRecord:
        queue: Any = server.stack.storage
        task = TaskRecord(id=new_id(), tenant="a", kind="workflow", target="hello",
                          status="queued")
        await queue.kv_set("server.runs.a", task.run_id, task.id)
        # submitted and cancelled with no await in between: no worker can claim it
        stored, _ = await queue.submit_task(task)
        return await queue.cancel_task(stored.id, now=0.0)

    task = anyio.run(cancel_queued)
    assert task.status == "cancelled"
    with server.client("a") as client:
        run = wire.Run.model_validate(client.get(f"/v1/runs/{task.run_id}").json())
    assert run.status == "cancelled" and run.task_id == task.id


def test_task_inputs_checked_at_submission(server: Any, registered: dict[str, str]) -> None:
    """Unknown, missing, mistyped inputs answer 422 listing every problem, and nothing is
    queued (a batch with one bad task queues none of its tasks).
    """
    typed = ("name: typed\ninputs:\n  n: {type: integer}\n  who: {type: string, default: x}\n"
             "steps:\n  - id: s\n    uses: echo\n    with: {value: \"${inputs.n}\"}\n")
    with server.client("a") as client:
        assert client.post("/v1/workflows", json={"source": typed}).status_code == 201
        before = len(client.get("/v1/tasks", params={"limit": 200}).json()["items"])
        bad = client.post("/v1/tasks", json={"target": "typed",
                                             "inputs": {"who": 3, "colour": "red"}})
        assert bad.status_code == 422, bad.text
        body = wire.ErrorBody.model_validate(bad.json())
        assert body.code == "validation_error"
        paths = sorted(d["path"] for d in body.details or [])
        assert paths == ["inputs.colour", "inputs.n", "inputs.who"], body.details
        assert all(d["message"] for d in body.details or [])
        wrong = client.post("/v1/tasks", json={"target": "typed", "inputs": {"n": True}})
        assert wrong.status_code == 422 and "integer" in wrong.json()["details"][0]["message"]
        batch = client.post("/v1/tasks/batch", json={"tasks": [
            {"target": "typed", "inputs": {"n": 1}},
            {"target": "hello", "inputs": {"who": "ok"}},
            {"target": "typed", "inputs": {}}]})
        assert batch.status_code == 422, batch.text
        assert [d["path"] for d in batch.json()["details"]] == ["tasks[2].inputs.n"]
        assert len(client.get("/v1/tasks", params={"limit": 200}).json()["items"]) == before
        ok = client.post("/v1/tasks", json={"target": "typed", "inputs": {"n": 2}})
        assert ok.status_code == 201, ok.text
        # a new registration under the same name counts at once (no stale parsed copy)
        renamed = typed.replace("  n: {type: integer}", "  n: {type: string}")
        assert client.post("/v1/workflows", json={"source": renamed}).status_code == 201
        now_bad = client.post("/v1/tasks", json={"target": "typed", "inputs": {"n": 2}})
        assert now_bad.status_code == 422, now_bad.text
        agent = client.post("/v1/agents", json={"name": "checked", "model": "fake/echo"})
        assert agent.status_code == 201, agent.text
        for inputs, path in (({}, "inputs.input"), ({"input": 3}, "inputs.input"),
                             ({"input": "hi", "extra": 1}, "inputs.extra")):
            refused = client.post("/v1/tasks", json={"kind": "agent", "inputs": inputs,
                                                     "target": agent.json()["id"]})
            assert refused.status_code == 422, refused.text
            assert [d["path"] for d in refused.json()["details"]] == [path]
    with server.client("b") as other:  # another tenant's workflow stays a 404
        assert other.post("/v1/tasks", json={"target": "typed",
                                             "inputs": {"n": 1}}).status_code == 404
