"""Cost ledger, metrics (stored and live), and the ``stats`` / ``doctor`` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from flowyard.builtin.memory_storage import MemoryStorage
from flowyard.cli import cli
from flowyard.commands.doctor import run_doctor
from flowyard_stats import plugin as stats_plugin
from flowyard_stats.command import format_stats, gather_stats, parse_since
from flowyard_stats.ledger import CostLedger, aggregate, total_of
from flowyard_stats.metrics import LatencyStats, LiveMetrics, collect_metrics, percentiles
from flowyard.models import CostLine, Event, RunRecord, StepAttempt
from flowyard.stack import Stack


def _line(run: str, step: str | None, cost: float | None, *, agent: str | None = None,
          model: str = "m", t: float = 0.0, wf: str = "wf") -> CostLine:
    return CostLine(run_id=run, provider="p", model=model, input_tokens=10, output_tokens=5,
                    cost_usd=cost, step_id=step, agent=agent, workflow_name=wf, time=t)


def test_percentiles_interpolate_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    pct = percentiles(values, (0, 50, 90, 100))
    assert pct == {"p0": 1.0, "p50": 3.0, "p90": pytest.approx(7.6), "p100": 10.0}
    assert percentiles([], (50,)) == {"p50": None}
    with pytest.raises(ValueError, match="within"):
        percentiles(values, (101,))
    stats = LatencyStats.of(values)
    assert (stats.count, stats.mean_s, stats.max_s) == (5, 4.0, 10.0)


def test_ledger_groups_and_keeps_unknown_prices_apart() -> None:
    lines = [_line("r1", "a", 0.001, t=1), _line("r1", "a", 0.002, t=2),
             _line("r1", "b", None, agent="helper", model="x", t=3),
             _line("r2", "a", 0.004, t=4, wf="other")]
    total = total_of(lines)
    assert total.calls == 4 and total.input_tokens == 40 and total.output_tokens == 20
    assert total.cost_usd is None and total.known_cost_usd == pytest.approx(0.007)
    assert "unknown (1 unpriced call)" in total.format()
    steps = aggregate(lines, "step")
    assert [(r.run_id, r.key, r.calls) for r in steps] == [("r1", "a", 2), ("r1", "b", 1),
                                                           ("r2", "a", 1)]
    assert steps[0].cost_usd == pytest.approx(0.003)
    assert steps[1].cost_usd is None and "unknown" in steps[1].format()
    assert [r.key for r in aggregate(lines, "call")] == ["r1:1", "r1:2", "r1:3", "r2:1"]
    assert [(r.run_id, r.key, r.calls) for r in aggregate(lines, "agent")] == [
        ("r1", None, 2), ("r1", "helper", 1), ("r2", None, 1)]
    assert {r.key: r.calls for r in aggregate(lines, "workflow")} == {"wf": 3, "other": 1}
    assert {r.key: r.cost_usd for r in aggregate(lines, "model")} == {
        "p/m": pytest.approx(0.007), "p/x": None}
    assert aggregate(lines, "run")[1].to_dict()["cost_usd"] == pytest.approx(0.004)
    with pytest.raises(ValueError, match="cannot group costs by 'colour'"):
        aggregate(lines, "colour")  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_collect_metrics_from_a_store() -> None:
    storage = MemoryStorage()
    await storage.open()
    for i, (status, duration) in enumerate([("completed", 2.0), ("completed", 4.0),
                                            ("failed", 6.0), ("running", None)]):
        run = RunRecord(id=f"r{i}", workflow_name="wf", status=status,  # type: ignore[arg-type]
                        created_at=100.0 + i, started_at=100.0 + i,
                        finished_at=None if duration is None else 100.0 + i + duration)
        await storage.create_run(run)
        await storage.save_attempt(StepAttempt(run.id, "s", "s", 1, status="failed",
                                               started_at=100.0, finished_at=101.0))
        await storage.save_attempt(StepAttempt(
            run.id, "s", "s", 2, status="completed" if status != "failed" else "budget_exceeded",
            started_at=101.0, finished_at=101.5))
        await storage.append_events([
            Event("llm.call", run.id, "s", {"latency_s": 0.1 * (i + 1)}, seq=1),
            Event("ratelimit.wait", run.id, "s", {"key": "p", "waited_s": 1.5}, seq=2),
            Event("llm.error", run.id, "s", {"error_type": "BudgetExceeded"}, seq=3),
            Event("router.choice", run.id, "s", {"model": "p/m"}, seq=4),
        ])
        await storage.add_cost(_line(run.id, "s", 0.01 if i else None))
    await storage.add_cost(_line("elsewhere", "s", 1.0))  # not a selected run
    m = await collect_metrics(storage)
    assert m.runs == 4
    assert m.runs_by_status == {"completed": 2, "failed": 1, "running": 1}
    assert m.run_success_rate == pytest.approx(2 / 3)
    assert m.run_latency.count == 3 and m.run_latency.p50_s == pytest.approx(4.0)
    assert m.steps_by_status == {"completed": 3, "budget_exceeded": 1}
    assert m.step_success_rate == pytest.approx(0.75)
    assert (m.step_attempts, m.step_retries) == (8, 4)
    assert m.llm_calls == 4 and m.llm_latency.max_s == pytest.approx(0.4)
    assert m.llm_errors_by_type == {"BudgetExceeded": 1 * 4}
    assert m.budget_refusals == 4
    assert m.ratelimit_waits == 4 and m.ratelimit_wait_s == pytest.approx(6.0)
    assert m.router_choices == {"p/m": 4}
    assert m.cost.calls == 4 and m.cost.cost_usd is None
    assert m.cost.known_cost_usd == pytest.approx(0.03)
    recent = await collect_metrics(storage, since=102.0, events=False)
    assert recent.runs == 2 and recent.llm_calls == 2
    rows = dict(format_stats(m))
    assert ("success rate", "66.7%") in rows["Runs"]
    assert any("unknown" in value for _, value in rows["LLM"])
    ledger = CostLedger(storage)
    summary = await ledger.run_summary("r1")
    assert summary["total"]["cost_usd"] == pytest.approx(0.01)
    assert [s["key"] for s in summary["steps"]] == ["s"]


@pytest.mark.anyio
async def test_metrics_of_real_runs_through_the_engine(flowyard_home: Path) -> None:
    stack = Stack([("stats", stats_plugin)], config={"storage": {"url": "memory://"}})
    async with stack:
        await stack.run({"name": "ok", "steps": [
            {"id": "a", "uses": "llm.chat", "with": {"prompt": "one two", "model": "fake/priced"}},
            {"id": "b", "uses": "llm.chat", "with": {"prompt": "x", "model": "fake/unpriced"}},
        ]})
        over = await stack.run({"name": "over", "steps": [
            {"id": "c", "uses": "llm.chat", "budget_usd": 0.000001,
             "with": {"prompt": "too much", "model": "fake/priced", "max_tokens": 500}},
        ]})
        assert over.steps["c"].status == "budget_exceeded"
        m = await gather_stats(stack)
        live = stack.listeners.get(stats_plugin.LIVE).snapshot()
    assert m.runs_by_status == {"completed": 1, "failed": 1}
    assert m.steps_by_status.get("budget_exceeded") == 1
    assert m.cost.calls == 2 and m.cost.cost_usd is None  # one call was unpriced
    assert m.llm_calls == 2 and m.llm_latency.count == 2
    assert m.budget_refusals >= 1
    assert live["calls"] == 2 and live["budget_refusals"] >= 1
    assert live["models"]["fake/unpriced"]["cost_usd"] is None
    assert live["models"]["fake/priced"]["cost_usd"] == pytest.approx((2 + 2 * 3) / 1e6)


def test_live_metrics_count_events() -> None:
    live = LiveMetrics(window=2)
    for latency in (1.0, 2.0, 3.0):
        live(Event("llm.call", data={"provider": "p", "model": "m", "input_tokens": 3,
                                     "output_tokens": 4, "cost_usd": 0.5,
                                     "latency_s": latency}))
    live(Event("llm.error", data={"provider": "p", "model": "m", "error_type": "ServerError"}))
    live(Event("ratelimit.wait", data={"key": "p", "waited_s": 2.5}))
    snap = live.snapshot()
    model = snap["models"]["p/m"]
    assert (model["calls"], model["errors"], model["input_tokens"]) == (3, 1, 9)
    assert model["success_rate"] == pytest.approx(0.75)
    assert model["latency"]["count"] == 2  # the window keeps the last two samples
    assert snap["cost_usd"] == pytest.approx(1.5)
    assert snap["ratelimit"] == {"p": {"waits": 1, "wait_s": 2.5}}
    live.reset()
    assert live.snapshot()["calls"] == 0


def test_parse_since() -> None:
    assert parse_since("90", now=1000.0) == 910.0
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("2026-11-01T00:00:00+00:00") == 1793491200.0
    assert parse_since(None) is None
    import click

    with pytest.raises(click.BadParameter, match="24h"):
        parse_since("yesterday")


@pytest.mark.anyio
async def test_doctor_reports_plugins_providers_storage_and_disk(flowyard_home: Path) -> None:
    from flowyard.builtin.fake import FakeProvider
    from flowyard.errors import AuthenticationError
    from flowyard.hookspecs import hookimpl

    class Locked(FakeProvider):
        async def list_models(self):  # type: ignore[no-untyped-def]
            raise AuthenticationError("no key", provider=self.name)

    class Hanging(FakeProvider):
        async def list_models(self):  # type: ignore[no-untyped-def]
            import anyio

            await anyio.sleep(30)
            return []

    class Plugin:
        @hookimpl
        def register_providers(self, register, config):  # type: ignore[no-untyped-def]
            register("locked", Locked("locked"))
            register("hanging", Hanging("hanging"))

    class Broken:
        @hookimpl
        def register_tools(self, register, config):  # type: ignore[no-untyped-def]
            raise RuntimeError("broken on purpose")

    stack = Stack(plugins=[("good", Plugin()), ("broken", Broken())],
                  config={"storage": {"url": "memory://"}, "limits": {"fake": {"rpm": -1}}})
    try:
        checks = await run_doctor(stack, timeout_s=0.2)
    finally:
        await stack.aclose()
    found = {(c.area, c.name): c for c in checks}
    assert found[("plugins", "broken")].status == "fail"
    assert "broken on purpose" in found[("plugins", "broken")].detail
    assert found[("plugins", "good")].status == "ok"
    assert found[("config", "limits")].status == "fail"
    assert found[("providers", "fake")].status == "ok"
    assert found[("providers", "locked")].status == "warn"
    assert found[("providers", "hanging")].status == "fail"
    assert "within 0.2s" in found[("providers", "hanging")].detail
    assert found[("storage", "memory://")].status == "ok"
    assert found[("disk", str(stack.config.data_dir))].status in ("ok", "warn")


def test_stats_and_doctor_commands(flowyard_home: Path) -> None:
    (flowyard_home / "flowyard.toml").write_text(
        '[storage]\nurl = "memory://"\n[plugins]\nenabled = ["builtin", "stats"]\n')
    runner = CliRunner()
    result = runner.invoke(cli, ["stats", "--json", "--since", "7d"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["runs"] == 0 and data["cost"]["calls"] == 0
    table = runner.invoke(cli, ["stats"])
    assert table.exit_code == 0 and "success rate" in table.output
    bad = runner.invoke(cli, ["stats", "--since", "whenever"])
    assert bad.exit_code == 2 and "--since" in bad.output
    doctor = runner.invoke(cli, ["doctor", "--json"])
    report = json.loads(doctor.output)
    assert doctor.exit_code == (0 if report["ok"] else 1)
    assert {c["area"] for c in report["checks"]} >= {"plugins", "providers", "storage", "disk"}
    assert any(c["area"] == "storage" and c["status"] == "ok" for c in report["checks"])
