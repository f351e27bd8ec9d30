"""``GET /metrics`` of flowyard serve (docs/metrics.md): the core's run, step and model metrics
rendered with the server's request counters and the task queue gauges, parsed with
``prometheus_client.parser``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def scrape(server: Any) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    with server.client("a") as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    text = response.text
    return text, {(s.name, tuple(sorted(s.labels.items()))): s.value
                  for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_task_shows_in_the_metrics(server: Any, registered: dict[str, str],
                                     waiter: Any) -> None:
    _, before = scrape(server)
    with server.client("a") as client:
        task = client.post("/v1/tasks", json={"target": "hello", "inputs": {"who": "Bo"}})
        assert task.status_code == 201, task.text
        done = waiter(client, task.json()["id"])
        assert done["status"] == "completed", done
    text, after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("flowyard_runs_total", workflow="hello", status="completed") == 1
    assert delta("flowyard_steps_total", workflow="hello", status="completed") == 2
    assert delta("flowyard_model_calls_total", provider="fake", model="echo",
                 outcome="ok") == 1
    assert delta("flowyard_model_call_duration_seconds_count", provider="fake", model="echo",
                 outcome="ok") == 1
    assert delta("flowyard_model_tokens_total", provider="fake", model="echo",
                 kind="input") > 0
    assert delta("flowyard_server_tasks_submitted_total", kind="workflow") == 1
    # the queue gauges, read from the storage at the scrape
    assert {labels for name, labels in after if name == "flowyard_queue_tasks"} == {
        (("status", "queued"),), (("status", "running"),)}
    assert after[("flowyard_queue_oldest_age_seconds", ())] >= 0
    # the server's own metrics keep their names, next to the core's
    assert "# TYPE flowyard_server_http_requests_total counter" in text
    assert after[("flowyard_worker_tasks_completed", ())] >= 1
    # bounded labels: neither the run id nor the task id
    assert done["run_id"] not in text and done["id"] not in text
