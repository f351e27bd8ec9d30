"""Alert rules over a window of the stack's events, on a virtual clock (flowyard.alerts)."""

from __future__ import annotations

import logging
from typing import Any

import flowyard
import pytest
from flowyard import ToolError
from flowyard.alerts import AlertManager, AlertNotice, parse_rules
from flowyard.clock import VirtualClock
from flowyard.errors import ConfigError
from flowyard.models import Event, TaskRecord
from flowyard.stack import Stack

pytestmark = pytest.mark.anyio


class Recorder:
    """A channel type that keeps what it is sent."""

    sent: list[AlertNotice] = []

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.name = name

    async def send(self, notice: AlertNotice) -> None:
        Recorder.sent.append(notice)


class RecorderPlugin:
    """Registers the ``recorder`` channel type."""

    @staticmethod
    def register_alert_channels(register: Any, config: Any) -> None:
        register("recorder", Recorder)


def _manager(rules: list[dict[str, Any]], clock: VirtualClock, *, wall: Any = None,
             interval_s: float = 1e9) -> tuple[Stack, AlertManager, list[Event]]:
    """A manager on ``clock``; the default interval keeps the background loop out of the
    way of tests that call ``evaluate`` themselves.
    """
    from flowyard.hookspecs import hookimpl

    plugin = type("P", (), {"register_alert_channels":
                            staticmethod(hookimpl(RecorderPlugin.register_alert_channels))})
    stack = Stack([("recorder-plugin", plugin)], config={"audit": {"enabled": False}})
    Recorder.sent = []
    for rule in rules:
        rule.setdefault("channels", ["rec"])
    manager = AlertManager(stack, parse_rules(rules), channels={"rec": {"type": "recorder"}},
                           interval_s=interval_s, clock=clock,
                           wall=wall or (lambda: 1_000_000.0 + clock.now()))
    events: list[Event] = []
    stack.events.subscribe(events.append, name="spy")
    stack.events.subscribe(manager, name="alerts-under-test")
    return stack, manager, events


def _run(stack: Stack, run_id: str, status: str, *, workflow: str = "wf",
         cost: float = 0.0) -> None:
    stack.events.make("run.started", run_id, workflow=workflow)
    stack.events.make("run.finished", run_id, status=status, cost_usd=cost)


async def test_error_rate_fires_after_for_s_and_resolves_once_the_window_passes() -> None:
    clock = VirtualClock()
    stack, manager, events = _manager([{"name": "errors", "metric": "error_rate",
                                        "threshold": 0.5, "window_s": 60, "for_s": 20,
                                        "filter": {"workflow": "wf"}}], clock)
    _run(stack, "r1", "completed")
    _run(stack, "r2", "failed")
    _run(stack, "r3", "failed")
    _run(stack, "x1", "failed", workflow="other")  # filtered out
    assert await manager.value(manager.rules[0]) == pytest.approx(2 / 3)
    assert await manager.evaluate() == []  # pending: the condition holds, not yet for 20 s
    await clock.advance(10)
    assert await manager.evaluate() == []
    await clock.advance(10)
    [fired] = await manager.evaluate()
    assert (fired.state, fired.rule, fired.labels) == ("firing", "errors", {"workflow": "wf"})
    assert fired.value == pytest.approx(2 / 3)
    await clock.advance(10)
    assert await manager.evaluate() == []  # de-duplicated: sent once
    assert manager.firing() == ["errors"]
    await clock.advance(31)  # the failures left the 60 s window: no data, resolved
    [resolved] = await manager.evaluate()
    assert resolved.state == "resolved" and resolved.value is None
    assert [n.state for n in Recorder.sent] == ["firing", "resolved"]
    alert_events = [e for e in events if e.type.startswith("alert.")]
    assert [e.type for e in alert_events] == ["alert.firing", "alert.resolved"]
    assert alert_events[0].data["threshold"] == 0.5
    assert alert_events[0].data["labels"] == {"workflow": "wf"}


async def test_a_condition_that_stops_before_for_s_never_fires() -> None:
    clock = VirtualClock()
    stack, manager, _ = _manager([{"name": "errors", "metric": "error_rate",
                                   "threshold": 0.5, "window_s": 5, "for_s": 30}], clock)
    _run(stack, "r1", "failed")
    assert await manager.evaluate() == []
    await clock.advance(6)
    assert await manager.evaluate() == []
    assert Recorder.sent == []


async def test_cost_per_hour_and_repeat_interval() -> None:
    clock = VirtualClock()
    stack, manager, _ = _manager([{"name": "spend", "metric": "cost_usd_per_hour",
                                   "threshold": 10.0, "window_s": 360,
                                   "repeat_interval_s": 60,
                                   "filter": {"model": "openai/gpt-4o"}}], clock)
    for _ in range(3):  # 0.4 USD in 6 minutes = 4 USD/hour
        stack.events.make("llm.call", "r", provider="openai", model="gpt-4o", cost_usd=0.4 / 3,
                          latency_s=1.0)
    stack.events.make("llm.call", "r", provider="anthropic", model="claude", cost_usd=5.0,
                      latency_s=1.0)  # another model
    assert await manager.value(manager.rules[0]) == pytest.approx(4.0)
    assert await manager.evaluate() == []
    for _ in range(2):  # +0.8 USD: 1.2 USD in 6 minutes = 12 USD/hour
        stack.events.make("llm.call", "r", provider="openai", model="gpt-4o", cost_usd=0.4,
                          latency_s=1.0)
    [fired] = await manager.evaluate()
    assert fired.state == "firing" and fired.value == pytest.approx(12.0)
    await clock.advance(30)
    assert await manager.evaluate() == []
    await clock.advance(30)
    [again] = await manager.evaluate()  # repeat_interval_s
    assert again.repeat and again.state == "firing"
    await clock.advance(400)
    [resolved] = await manager.evaluate()
    assert resolved.state == "resolved" and resolved.value == 0.0


async def test_p95_latency_nearest_rank() -> None:
    clock = VirtualClock()
    stack, manager, _ = _manager([{"name": "slow", "metric": "p95_latency_s",
                                   "threshold": 5.0, "window_s": 60, "min_samples": 20}], clock)
    for latency in range(1, 20):
        stack.events.make("llm.call", "r", provider="p", model="m", cost_usd=0.0,
                          latency_s=float(latency) / 10)
    assert await manager.value(manager.rules[0]) is None  # 19 < min_samples
    stack.events.make("llm.call", "r", provider="p", model="m", cost_usd=0.0, latency_s=30.0)
    # 20 samples: the 19th by rank (ceil(0.95 * 20)) is 1.9 s: not firing
    assert await manager.value(manager.rules[0]) == pytest.approx(1.9)
    for _ in range(2):
        stack.events.make("llm.call", "r", provider="p", model="m", cost_usd=0.0,
                          latency_s=30.0)
    [fired] = await manager.evaluate()
    assert fired.value == pytest.approx(30.0)


async def test_breaker_open_from_circuit_state_events() -> None:
    clock = VirtualClock()
    stack, manager, _ = _manager([{"name": "breaker", "metric": "breaker_open",
                                   "threshold": 1, "severity": "critical",
                                   "filter": {"provider": "openai"}}], clock)
    stack.events.make("circuit.state", provider="anthropic", old="closed", new="open")
    assert await manager.evaluate() == []  # another provider
    stack.events.make("circuit.state", provider="openai", old="closed", new="open")
    [fired] = await manager.evaluate()
    assert fired.severity == "critical" and fired.labels == {"provider": "openai"}
    stack.events.make("circuit.state", provider="openai", old="open", new="half_open")
    [resolved] = await manager.evaluate()
    assert resolved.state == "resolved" and resolved.value == 0.0


async def test_budget_used_ratio_and_cost_per_run() -> None:
    clock = VirtualClock()
    stack, manager, _ = _manager([
        {"name": "budget", "metric": "budget_used_ratio", "threshold": 0.8, "budget_usd": 1.0},
        {"name": "per-run", "metric": "cost_usd_per_run", "threshold": 0.5},
    ], clock)
    stack.events.make("llm.call", "r", provider="p", model="m", cost_usd=0.5, latency_s=1)
    _run(stack, "r", "completed", cost=0.2)
    assert await manager.evaluate() == []
    stack.events.make("budget.exceeded", "r2", model="p/m", scope="run", limit_usd=0.1,
                      requested_usd=0.2)
    _run(stack, "r2", "budget_exceeded", cost=0.6)
    fired = await manager.evaluate()
    assert sorted((n.rule, n.value) for n in fired) == [("budget", 1.0), ("per-run", 0.6)]


async def test_queue_age_reads_the_memory_storage_queue() -> None:
    clock = VirtualClock()
    stack, manager, _ = _manager([{"name": "queue", "metric": "queue_age_s",
                                   "threshold": 120, "tenant": "acme"}], clock)
    rule = manager.rules[0]
    assert await manager.value(rule) is None  # storage not open: no queue to read
    await stack.open()
    try:
        assert await manager.value(rule) == 0.0  # an empty queue
        base = 1_000_000.0
        await stack.storage.submit_task(TaskRecord(id="t1", tenant="acme", kind="workflow",
                                                   target="wf", created_at=base))
        await stack.storage.submit_task(TaskRecord(id="t2", tenant="other", kind="workflow",
                                                   target="wf", created_at=base + 50))
        assert await manager.evaluate() == []
        await clock.advance(121)
        [fired] = await manager.evaluate()
        assert fired.value == pytest.approx(121.0)
        task = await stack.storage.claim_task("w", now=base + 121, lease_timeout=30)
        assert task is not None and task.id == "t1"
        [resolved] = await manager.evaluate()
        assert resolved.state == "resolved" and resolved.value == 0.0
    finally:
        await stack.aclose()


async def test_the_background_loop_evaluates_every_interval_and_stops_with_aclose() -> None:
    clock = VirtualClock()
    stack, manager, _ = _manager([{"name": "breaker", "metric": "breaker_open",
                                   "threshold": 1}], clock, interval_s=10)
    stack.events.make("circuit.state", provider="openai", old="closed", new="open")
    await clock.advance(9)
    assert Recorder.sent == []
    await clock.advance(1)  # interval_s = 10
    assert [n.state for n in Recorder.sent] == ["firing"]
    await manager.aclose()
    stack.events.make("circuit.state", provider="openai", old="open", new="closed")
    await clock.advance(30)
    assert [n.state for n in Recorder.sent] == ["firing"]  # stopped


async def test_the_builtin_listener_runs_with_the_stack_and_logs(caplog: Any) -> None:
    stack = Stack(config={"audit": {"enabled": False}, "alerts": {
        "interval_s": 0.01,
        "rules": [{"name": "breaker", "metric": "breaker_open", "threshold": 1}]}})
    manager = stack.listeners.get("alerts")
    assert isinstance(manager, AlertManager) and manager.rules[0].channels == ("log",)
    import anyio

    with caplog.at_level(logging.WARNING, logger="flowyard.alerts"):
        stack.events.make("circuit.state", provider="openai", old="closed", new="open")
        with anyio.fail_after(5):
            while not manager.firing():
                await anyio.sleep(0.01)
    await stack.aclose()
    assert "[FIRING] breaker (warning): breaker_open=1" in caplog.text


@pytest.mark.parametrize(("rule", "message"), [
    ({"name": "x", "metric": "nope", "threshold": 1}, "metric must be one of"),
    ({"name": "x", "metric": "error_rate"}, "needs a threshold"),
    ({"name": "x", "metric": "error_rate", "threshold": 1, "window_s": -1}, "window_s"),
    ({"name": "x", "metric": "error_rate", "threshold": 1, "filter": {"user": "a"}},
     "filter keys"),
    ({"name": "x", "metric": "budget_used_ratio", "threshold": 1}, "needs budget_usd"),
    ({"name": "x", "metric": "error_rate", "threshold": 1, "colour": "red"}, "unknown keys"),
])
def test_invalid_rules_are_config_errors(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_rules([rule])


def test_unknown_channels_are_config_errors() -> None:
    stack = Stack(config={"audit": {"enabled": False}})
    rules = parse_rules([{"name": "x", "metric": "error_rate", "threshold": 1,
                          "channels": ["pager"]}])
    with pytest.raises(ConfigError, match="no channel 'pager'"):
        AlertManager(stack, rules)
    with pytest.raises(ConfigError, match="unknown type 'sms'"):
        AlertManager(stack, rules, channels={"pager": {"type": "sms"}})


@flowyard.tool(name="test.explode")
def explode(message: str = "boom") -> str:
    """Fail with ``message``.

    Args:
        message: the error's text.
    """
    raise ToolError(message)


class Tools:
    @flowyard.hookimpl
    def register_tools(self, register: Any) -> None:
        register(explode.name, explode)


async def test_engine_runs_drive_the_builtin_listener() -> None:
    """Events from real runs (not hand-made): one of two runs of `wf` fails; the
    `alerts` listener of the built-in plugin fires on a step error rate and a run error
    rate filtered by workflow, and resolves once the window passed."""
    clock = VirtualClock()
    stack = Stack([("tools", Tools())], config={
        "storage": {"url": "memory://"}, "audit": {"enabled": False},
        "alerts": {"interval_s": 1e9, "rules": [
            {"name": "runs", "metric": "error_rate", "threshold": 0.5, "window_s": 60,
             "filter": {"workflow": "wf"}},
            {"name": "steps", "metric": "error_rate", "scope": "steps", "threshold": 0.5,
             "window_s": 60},
            {"name": "other", "metric": "error_rate", "threshold": 0.1, "window_s": 60,
             "filter": {"workflow": "another"}},
        ]}})
    manager = stack.listeners.get("alerts")
    assert isinstance(manager, AlertManager)
    manager.clock = clock
    events: list[Event] = []
    stack.events.subscribe(events.append, name="spy")
    try:
        ok = await stack.run({"name": "wf", "steps": [{"id": "a", "uses": "echo",
                                                       "with": {"value": 1}}]})
        bad = await stack.run({"name": "wf", "steps": [{"id": "b", "uses": "test.explode"}]})
        assert (ok.status, bad.status) == ("completed", "failed")
        fired = await manager.evaluate()
        assert sorted((n.rule, n.value) for n in fired) == [("runs", 0.5), ("steps", 0.5)]
        await clock.advance(61)
        resolved = await manager.evaluate()
        assert sorted((n.rule, n.state) for n in resolved) == [("runs", "resolved"),
                                                               ("steps", "resolved")]
    finally:
        await stack.aclose()
    assert [e.data["rule"] for e in events if e.type == "alert.firing"] == ["runs", "steps"]


def test_an_invalid_rule_stops_the_stack_from_building() -> None:
    with pytest.raises(ConfigError, match="metric must be one of"):
        Stack(config={"audit": {"enabled": False},
                      "alerts": {"rules": [{"name": "x", "metric": "bogus", "threshold": 1}]}})
    with pytest.raises(ConfigError, match=r"\[alerts\] interval_s must be a number"):
        Stack(config={"audit": {"enabled": False}, "alerts": {"interval_s": "often", "rules": [
            {"name": "x", "metric": "error_rate", "threshold": 1}]}})


def test_no_rules_no_listener() -> None:
    assert "alerts" not in Stack(config={"audit": {"enabled": False}}).listeners.names()
