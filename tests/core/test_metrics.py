"""The Prometheus metrics listener (flowyard.metrics): values after known workflows, parsed
from the text exposition, bounded label sets, configuration and the ``flowyard metrics`` CLI.
"""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from flowyard.cli import cli
from flowyard.metrics import FlowyardMetrics, MetricsListener, render_metrics
from flowyard.models import Event
from flowyard.stack import Stack

#: every label name the core's metrics may carry (docs/metrics.md)
ALLOWED_LABELS = {"workflow", "status", "provider", "model", "outcome", "error_type", "kind",
                  "key", "scope", "le"}


def samples(metrics: FlowyardMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse the exposition: (sample name, sorted labels) -> value."""
    text = render_metrics(metrics).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


pytestmark = pytest.mark.anyio

WORKFLOW = {"name": "priced", "steps": [
    {"id": "ask", "uses": "llm.chat", "with": {"prompt": "hello there", "model": "fake/priced"}},
    {"id": "boom", "uses": "llm.chat", "with": {"prompt": "hi", "model": "fake/missing"},
     "on_error": "continue"},
]}


async def test_a_run_is_counted_with_its_steps_tokens_and_cost() -> None:
    metrics = FlowyardMetrics()
    async with Stack(config={"storage": {"url": "memory://"}}) as stack:
        stack.listeners.get("metrics").metrics = metrics
        workflow = stack.load_workflow(WORKFLOW)
        result = await stack.run(workflow, {})
    got = samples(metrics)
    assert got[("flowyard_runs_started_total", (("workflow", "priced"),))] == 1
    assert got[("flowyard_runs_total", (("status", result.status),
                                        ("workflow", "priced")))] == 1
    assert got[("flowyard_run_duration_seconds_count", (("status", result.status),
                                                        ("workflow", "priced")))] == 1
    steps = {dict(labels)["status"]: v for (name, labels), v in got.items()
             if name == "flowyard_steps_total"}
    assert steps == {"completed": 1, "failed": 1}
    assert got[("flowyard_step_duration_seconds_count", (("status", "completed"),
                                                         ("workflow", "priced")))] == 1
    model = (("model", "priced"), ("provider", "fake"))
    assert got[("flowyard_model_calls_total", (*model[:1], ("outcome", "ok"),
                                               *model[1:]))] == 1
    assert got[("flowyard_model_tokens_total", (("kind", "input"), *model))] == \
        result.input_tokens > 0
    assert got[("flowyard_model_tokens_total", (("kind", "output"), *model))] == \
        result.output_tokens > 0
    assert got[("flowyard_model_cost_usd_total", model)] == pytest.approx(result.cost_usd)
    assert result.cost_usd > 0
    # label sets are bounded: no run id or step id anywhere
    text = render_metrics(metrics).decode()
    assert result.run_id not in text and "boom" not in text and '"ask"' not in text
    assert {k for _, labels in got for k, _ in labels} <= ALLOWED_LABELS


def event(type: str, **data: Any) -> Event:
    return Event(type=type, run_id="r1", data=data)


def test_model_errors_rate_limits_budgets_and_breakers() -> None:
    metrics = FlowyardMetrics()
    listen = MetricsListener(metrics)
    listen(event("llm.error", provider="p", model="m", error_type="RateLimitedError",
                 latency_s=0.5))
    listen(event("ratelimit.wait", key="p/m", waited_s=1.5))
    listen(event("ratelimit.wait", key="p/m", waited_s=0.5))
    listen(event("ratelimit.paused", key="p/m", seconds=30))
    listen(event("budget.exceeded", provider="p", model="m", scope="run"))
    listen(Event(type="step.skipped", run_id="r1", step_id="s", data={"reason": "x"}))
    listen(event("circuit.state", provider="p", old="closed", new="open"))
    got = samples(metrics)
    assert got[("flowyard_model_errors_total", (("error_type", "RateLimitedError"),
                                                ("model", "m"), ("provider", "p")))] == 1
    assert got[("flowyard_model_call_duration_seconds_bucket",
                (("le", "0.5"), ("model", "m"), ("outcome", "error"), ("provider", "p")))] == 1
    assert got[("flowyard_model_call_duration_seconds_bucket",
                (("le", "0.25"), ("model", "m"), ("outcome", "error"), ("provider", "p")))] == 0
    assert got[("flowyard_ratelimit_waits_total", (("key", "p/m"),))] == 2
    assert got[("flowyard_ratelimit_wait_seconds_total", (("key", "p/m"),))] == 2.0
    assert got[("flowyard_ratelimit_pause_seconds_total", (("key", "p/m"),))] == 30
    assert got[("flowyard_budget_exceeded_total", (("scope", "run"),))] == 1
    assert got[("flowyard_steps_total", (("status", "skipped"), ("workflow", "unknown")))] == 1
    assert got[("flowyard_circuit_state", (("provider", "p"),))] == 2
    listen(event("circuit.state", provider="p", old="open", new="half_open"))
    assert samples(metrics)[("flowyard_circuit_state", (("provider", "p"),))] == 1
    with pytest.raises(ValueError, match="unknown state"):
        listen(event("circuit.state", provider="p", old="open", new="ajar"))


def test_metrics_can_be_turned_off() -> None:
    assert "metrics" not in Stack(config={"metrics": {"enabled": False}}).listeners.names()
    assert "metrics" in Stack(config={}).listeners.names()


def test_metrics_show_needs_a_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setenv("FLOWYARD_CONFIG", str(tmp_path / "flowyard.toml"))
    (tmp_path / "flowyard.toml").write_text("")
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(cli, ["metrics", "show"])
    assert done.exit_code == 2
    assert "no metrics directory" in done.output
