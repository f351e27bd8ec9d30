"""``flowyard runs list|show|logs|cost`` on a SQLite database filled through the interface."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner
from flowyard.cli import cli
from flowyard.commands.runs import parse_time
from flowyard.models import CostLine, LogRecord, RunRecord, StepAttempt
from flowyard_sql.storage import SQLStorage

BASE = 1_800_000_000.0


async def _fill(url: str) -> None:
    storage = SQLStorage(url)
    await storage.open()
    try:
        for i in range(25):
            await storage.create_run(RunRecord(
                id=f"run{i:02d}", workflow_name="alpha" if i % 2 else "beta",
                status="failed" if i % 5 == 0 else "completed", created_at=BASE + i * 60,
                started_at=BASE + i * 60, finished_at=BASE + i * 60 + 1.5,
                inputs={"topic": f"t{i}"}, outputs={"answer": i},
                error="step b failed: boom" if i % 5 == 0 else None,
                input_tokens=10, output_tokens=5, cost_usd=None if i == 3 else 0.001))
        await storage.save_attempt(StepAttempt(
            run_id="run05", step_id="a", step_key="a", attempt=1, status="completed",
            output={"text": "hello"}, started_at=BASE + 300, finished_at=BASE + 300.5))
        await storage.save_attempt(StepAttempt(
            run_id="run05", step_id="b", step_key="b", attempt=1, status="failed",
            error="boom", error_type="ToolError", started_at=BASE + 301, finished_at=BASE + 302))
        await storage.save_checkpoint("run05", "a", {"text": "hello"})
        for level, message in [("debug", "details"), ("info", "started a"),
                               ("error", "b exploded")]:
            await storage.append_log(LogRecord(run_id="run05", message=message, level=level,
                                               step_id="b" if level == "error" else "a",
                                               time=BASE + 301))
        await storage.add_cost(CostLine(run_id="run05", provider="fake", model="priced",
                                        input_tokens=100, output_tokens=50, cost_usd=0.25,
                                        step_id="a", workflow_name="beta", time=BASE + 300))
        await storage.add_cost(CostLine(run_id="run05", provider="fake", model="unpriced",
                                        input_tokens=7, output_tokens=3, cost_usd=None,
                                        step_id="b", workflow_name="beta", time=BASE + 301))
        await storage.add_cost(CostLine(run_id="run07", provider="fake", model="priced",
                                        input_tokens=10, output_tokens=10, cost_usd=0.5,
                                        step_id="a", workflow_name="alpha", time=BASE + 420))
    finally:
        await storage.close()


@pytest.fixture
def url(tmp_path: Path, flowyard_home: Path) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    anyio.run(_fill, url)
    return url


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_list_filters_and_pages(url: str) -> None:
    page1 = json.loads(_invoke("runs", "--storage", url, "list", "--json", "--limit", "10"))
    assert [r["id"] for r in page1] == [f"run{i:02d}" for i in range(24, 14, -1)]
    page3 = json.loads(_invoke("runs", "--storage", url, "list", "--json", "--limit", "10",
                               "--page", "3"))
    assert [r["id"] for r in page3] == [f"run{i:02d}" for i in range(4, -1, -1)]
    failed = json.loads(_invoke("runs", "--storage", url, "list", "--json", "--status",
                                "failed", "--workflow", "beta", "--oldest-first"))
    assert [r["id"] for r in failed] == ["run00", "run10", "run20"]
    window = json.loads(_invoke("runs", "--storage", url, "list", "--json", "--since",
                                str(BASE + 120), "--until", str(BASE + 300)))
    assert [r["id"] for r in window] == ["run04", "run03", "run02"]
    table = _invoke("runs", "--storage", url, "list", "--limit", "5")
    assert "run24" in table and "run19" not in table and "--page 2" in table


def test_list_rejects_bad_times_and_statuses(url: str) -> None:
    result = CliRunner().invoke(cli, ["runs", "--storage", url, "list", "--since", "yesterday"])
    assert result.exit_code == 2 and "is not a time" in result.output
    result = CliRunner().invoke(cli, ["runs", "--storage", url, "list", "--status", "weird"])
    assert result.exit_code == 2 and "weird" in result.output


def test_show_prints_steps_outputs_errors_and_costs(url: str) -> None:
    text = _invoke("runs", "--storage", url, "show", "run05")
    assert "status failed" in text and "step b failed: boom" in text
    assert "ToolError: boom" in text and "hello" in text
    assert "1 step key(s) completed" in text and "3 log line(s)" in text
    data = json.loads(_invoke("runs", "--storage", url, "show", "run05", "--json"))
    assert data["run"]["outputs"] == {"answer": 5}
    assert [a["step_key"] for a in data["attempts"]] == ["a", "b"]
    assert data["checkpoints"] == {"a": {"text": "hello"}}
    assert len(data["costs"]) == 2 and len(data["logs"]) == 3


def test_show_unknown_run_is_a_clear_error(url: str) -> None:
    result = CliRunner().invoke(cli, ["runs", "--storage", url, "show", "nope"])
    assert result.exit_code == 1 and "no run with id 'nope'" in result.output


def test_show_logs_and_cost_accept_a_unique_prefix(url: str) -> None:
    ambiguous = CliRunner().invoke(cli, ["runs", "--storage", url, "show", "run0"])
    assert ambiguous.exit_code == 1
    assert "'run0' is the start of 10 run ids" in ambiguous.output
    shown = json.loads(_invoke("runs", "--storage", url, "show", "run05", "--json"))
    assert shown["run"]["id"] == "run05"
    anyio.run(_add_long_run, url)
    prefix = LONG_ID[:6]
    shown = json.loads(_invoke("runs", "--storage", url, "show", prefix, "--json"))
    assert shown["run"]["id"] == LONG_ID
    _invoke("runs", "--storage", url, "logs", prefix)  # exit 0: the prefix resolved
    _invoke("runs", "--storage", url, "cost", prefix, "--json")
    unknown = CliRunner().invoke(cli, ["runs", "--storage", url, "logs", "zz"])
    assert unknown.exit_code == 1 and "no run with id 'zz'" in unknown.output


LONG_ID = "5f0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e"


async def _add_long_run(url: str) -> None:
    storage = SQLStorage(url)
    await storage.open()
    try:
        await storage.create_run(RunRecord(id=LONG_ID, workflow_name="a-long-workflow-name",
                                           status="completed", created_at=BASE + 10_000))
    finally:
        await storage.close()


@pytest.mark.parametrize("columns", [80, 120])
def test_list_never_cuts_run_ids(url: str, columns: int,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    anyio.run(_add_long_run, url)
    monkeypatch.setenv("COLUMNS", str(columns))
    table = _invoke("runs", "--storage", url, "list", "--limit", "3")
    assert LONG_ID in table.replace("\n", "")


def test_logs_filter_by_level_and_step(url: str) -> None:
    text = _invoke("runs", "--storage", url, "logs", "run05")
    assert [line.split(" ", 2)[2].split()[0] for line in text.splitlines()] == [
        "DEBUG", "INFO", "ERROR"]
    text = _invoke("runs", "--storage", url, "logs", "run05", "--level", "info")
    assert "details" not in text and "started a" in text and "b exploded" in text
    lines = [json.loads(x) for x in _invoke("runs", "--storage", url, "logs", "run05",
                                            "--step", "b", "--json").splitlines()]
    assert [x["message"] for x in lines] == ["b exploded"]


def test_cost_groups_and_keeps_unknown_prices_apart(url: str) -> None:
    data = json.loads(_invoke("runs", "--storage", url, "cost", "run05", "--json"))
    assert data["total_usd"] == pytest.approx(0.25)
    assert data["unpriced_calls"] == 1 and data["cost_known"] is False
    assert {g["model"]: g["calls"] for g in data["groups"]} == {"fake/priced": 1,
                                                                "fake/unpriced": 1}
    everything = json.loads(_invoke("runs", "--storage", url, "cost", "--by", "workflow",
                                    "--json"))
    assert {g["workflow"]: g["cost_usd"] for g in everything["groups"]} == pytest.approx(
        {"alpha": 0.5, "beta": 0.25})
    text = _invoke("runs", "--storage", url, "cost", "--by", "run")
    assert "run07" in text and "1 call(s) of unknown price" in text


def test_parse_time_forms() -> None:
    assert parse_time("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_time("1.5d", now=200_000.0) == 200_000.0 - 129_600
    assert parse_time("1700000000") == 1_700_000_000.0
    assert parse_time("2026-01-31T00:00:00+00:00") == 1_769_817_600.0
    with pytest.raises(ValueError, match="is not a time"):
        parse_time("soon")


def test_the_commands_work_on_postgresql_too(postgres_url: str, flowyard_home: Path) -> None:
    anyio.run(_fill, postgres_url)
    failed = json.loads(_invoke("runs", "--storage", postgres_url, "list", "--json",
                                "--status", "failed", "--limit", "2", "--page", "2"))
    assert [r["id"] for r in failed] == ["run10", "run05"]
    data = json.loads(_invoke("runs", "--storage", postgres_url, "cost", "--json"))
    assert data["total_usd"] == pytest.approx(0.75) and data["unpriced_calls"] == 1
    assert "b exploded" in _invoke("runs", "--storage", postgres_url, "logs", "run05")
