"""POST /v1/runs/{run_id}/steps/{step_id}/answer: a task whose run waits at a human step ends
(no worker held), the answer is checked and stored with the API key as who answered, the
task is queued again and a worker resumes the run to its end; wrong keys, other tenants,
invalid values, wrong steps and second answers are refused and store nothing."""

from __future__ import annotations

import re
from typing import Any

import anyio
import httpx
import pytest

APPROVAL = """\
name: approval
steps:
  - id: draft
    uses: echo
    with: {value: "the draft"}
  - id: review
    uses: human.approve
    with: {prompt: "Publish ${draft}?"}
  - id: publish
    uses: echo
    depends_on: [review]
    with: {value: "{{ steps.review.output.approved }} by {{ steps.review.output.by }}"}
outputs:
  published: "${publish}"
"""


@pytest.fixture(scope="module")
def waiting_run(server: Any, waiter: Any) -> dict[str, str]:
    """A run of ``approval`` (tenant ``a``) waiting at ``review``; its task has ended."""
    with server.client("a") as client:
        assert client.post("/v1/workflows", json={"source": APPROVAL}).status_code == 201
        task = client.post("/v1/tasks", json={"target": "approval"}).json()
        ended = waiter(client, task["id"])
        assert ended["status"] == "failed"
        assert "waiting for a human answer (steps: review)" in ended["error"]
        run = client.get(f"/v1/runs/{task['run_id']}").json()
        assert run["status"] == "waiting"
    return {"task": task["id"], "run": task["run_id"]}


def test_answer_resumes_the_run_through_a_worker(server: Any, waiting_run: dict[str, str],
                                                 waiter: Any) -> None:
    run_id = waiting_run["run"]
    path = f"/v1/runs/{run_id}/steps/review/answer"
    with httpx.Client(base_url=server.url, timeout=10) as anonymous:
        assert anonymous.post(path, json={"value": {"approved": True}}).status_code == 401
    with server.client("b") as other:
        assert other.post(path, json={"value": {"approved": True}}).status_code == 404
    with server.client("a") as client:
        refused = [
            (path, {"value": {"approved": "yes"}}, 422, "does not match its schema"),
            (path, {"value": {"approved": True, "x": 1}}, 422, "does not match its schema"),
            (path, {"answer": True}, 422, None),
            (f"/v1/runs/{run_id}/steps/publish/answer", {"value": {"approved": True}}, 409,
             "is not waiting for an answer"),
            (f"/v1/runs/{run_id}/steps/bad%20step/answer", {"value": 1}, 422, None),
        ]
        for url, body, status, message in refused:
            response = client.post(url, json=body)
            assert response.status_code == status, (url, body, response.text)
            if message:
                assert message in response.json()["message"]
        record = anyio.run(server.stack.storage.get_run, run_id)
        assert record.status == "waiting" and "answers" not in record.metadata["human"]

        response = client.post(path, json={"value": {"approved": True, "comment": "ok"}})
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "queued"
        done = waiter(client, waiting_run["task"])
        assert done["status"] == "completed", done
        key_id = server.keys["a"].split("_")[1]
        run = client.get(f"/v1/runs/{run_id}").json()
        assert run["status"] == "completed"
        assert run["outputs"] == {"published": f"True by api_key:{key_id}"}
        steps = [(s["step_id"], s["status"]) for s in client.get(f"/v1/runs/{run_id}/steps"
                                                                  ).json()]
        assert steps.count(("draft", "completed")) == 1  # not run again
        again = client.post(path, json={"value": {"approved": False}})
        assert again.status_code == 409 and "not waiting" in again.json()["message"]

    async def audit() -> list[Any]:
        return [r for r in await server.stack.storage.list_audit()
                if r.action == "human.answered" and r.run_id == run_id]

    records = anyio.run(audit)
    assert [(r.actor, r.step_id) for r in records] == [(f"api_key:{key_id}", "review")]


def _login(server: Any, tenant: str) -> httpx.Client:
    """A browser-like client logged in to the dashboard as ``tenant``."""
    browser = httpx.Client(base_url=server.url, timeout=10.0)
    page = browser.get("/ui/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    done = browser.post("/ui/login", data={"api_key": server.keys[tenant], "csrf": csrf})
    assert done.status_code == 303, done.text
    return browser


def test_the_dashboard_shows_the_prompt_and_answers_with_a_form(server: Any,
                                                                waiter: Any) -> None:
    with server.client("a") as client:
        assert client.post("/v1/workflows", json={"source": APPROVAL}).status_code in (200, 201)
        task = client.post("/v1/tasks", json={"target": "approval"}).json()
        assert waiter(client, task["id"])["status"] == "failed"
    run_id = task["run_id"]
    browser, other = _login(server, "a"), _login(server, "b")
    page = browser.get(f"/ui/runs/{run_id}")
    assert page.status_code == 200
    assert 'id="human-steps"' in page.text and "Publish the draft?" in page.text
    assert 'id="resume-run"' not in page.text  # answering resumes it, not the button
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text).group(1)
    form = {"csrf": csrf, "step": "review", "decision": "reject", "comment": "not yet"}
    assert browser.post(f"/ui/runs/{run_id}/answer",
                        data={**form, "csrf": "forged"}).status_code == 403
    other_csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"',
                           other.get("/ui/runs").text).group(1)
    assert other.post(f"/ui/runs/{run_id}/answer",
                      data={**form, "csrf": other_csrf}).status_code == 404
    wrong = browser.post(f"/ui/runs/{run_id}/answer", data={**form, "step": "draft"})
    assert wrong.status_code == 303 and "Not+answered" in wrong.headers["location"]
    done = browser.post(f"/ui/runs/{run_id}/answer", data=form)
    assert done.status_code == 303 and "Answered" in done.headers["location"]
    with server.client("a") as client:
        assert waiter(client, task["id"])["status"] == "completed"
        run = client.get(f"/v1/runs/{run_id}").json()
    key_id = server.keys["a"].split("_")[1]
    assert run["outputs"] == {"published": f"False by api_key:{key_id}"}
    page = browser.get(f"/ui/runs/{run_id}")
    assert 'id="human-steps"' not in page.text
    browser.close()
    other.close()


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.anyio
async def test_a_worker_expires_a_timed_out_step_and_resumes_its_run() -> None:
    from flowyard import Stack, TaskRecord, new_id
    from flowyard_server.settings import ServerSettings
    from flowyard_server.worker import Worker

    timed = {"name": "timed", "steps": [
        {"id": "ok", "uses": "human.approve",
         "with": {"prompt": "go?", "timeout_s": 0.5, "default": True}},
        {"id": "after", "uses": "echo",
         "with": {"value": "{{ steps.ok.output.approved }} by {{ steps.ok.output.by }}"}}],
        "outputs": {"after": "${after}"}}
    stack = Stack(config={"storage": {"url": "memory://"},
                          "runs": {"heartbeat_interval": 0.2, "lease_timeout": 1}})
    await stack.open()
    await stack.storage.kv_set("server.workflows.t", "timed", {
        "definition": timed, "content_hash": "x", "registered_at": 0.0})
    task, _ = await stack.storage.submit_task(  # type: ignore[attr-defined]
        TaskRecord(id=new_id(), tenant="t", kind="workflow", target="timed"))
    settings = ServerSettings(concurrency=1, task_lease_timeout=1.0, task_renew_interval=0.1,
                              poll_interval=0.05, human_expiry_interval=0.1)
    worker = Worker(stack, settings, name="w")
    seen: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        with anyio.fail_after(20):
            while True:
                current = await stack.storage.get_task(task.id)  # type: ignore[attr-defined]
                if not seen or seen[-1] != current.status:
                    seen.append(current.status)
                if current.status == "completed":
                    break
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    assert "failed" in seen  # the task ended while its run waited (no worker held)
    assert current.outputs == {"after": "True by flowyard:timeout"}
    assert worker.finished == {"completed": 1, "failed": 1, "cancelled": 0}
    await stack.aclose()
