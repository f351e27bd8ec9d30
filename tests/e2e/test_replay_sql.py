"""Replay and fork on real storage (SQLite file and PostgreSQL): a diamond a -> (b, c) -> d
replayed from c with a changed output of b reuses a and b (not executed again), runs c and d,
links the runs; the CLI (`flowyard runs replay`) does the same and refuses a changed workflow
and hostile --set values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import flowyard_sql.plugin
import pytest
from click.testing import CliRunner
from flowyard import Stack, hookimpl
from flowyard.cli import cli
from flowyard.tools import BaseTool


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    pg = request.getfixturevalue("postgres_server")
    return str(pg.url(pg.create_database()))


class Count(BaseTool):
    """Returns ``value``; records every call (the side effect a replay must not repeat)."""

    def __init__(self) -> None:
        self.name = "count"
        self.description = "returns value, counts calls"
        self.parameters = {"type": "object"}
        self.idempotent = False
        self.side_effects = ("test",)
        self.calls: list[str] = []

    async def run(self, arguments: dict[str, Any], context: Any) -> Any:
        self.calls.append(arguments["tag"])
        return arguments.get("value")


class Plugin:
    def __init__(self, tool: Count) -> None:
        self.tool = tool

    @hookimpl
    def register_tools(self, register: Any, config: Any) -> None:
        register("count", self.tool)


def diamond(uses: str) -> dict[str, Any]:
    """a -> (b, c) -> d with the action ``uses`` (count takes a tag, echo only a value)."""
    def w(tag: str, value: str) -> dict[str, Any]:
        return {"tag": tag, "value": value} if uses == "count" else {"value": value}

    return {"name": "diamond", "inputs": {"n": {"type": "integer", "default": 1}}, "steps": [
        {"id": "a", "uses": uses, "with": w("a", "A")},
        {"id": "b", "uses": uses, "with": w("b", "B({{ steps.a.output }})")},
        {"id": "c", "uses": uses, "with": w("c", "C({{ steps.a.output }},{{ inputs.n }})")},
        {"id": "d", "uses": uses, "with": w("d", "{{ steps.b.output }}+{{ steps.c.output }}")},
    ], "outputs": {"d": "${d}"}}


@pytest.mark.anyio
async def test_replay_from_the_middle_with_a_changed_output(storage_url: str) -> None:
    tool = Count()
    config = {"storage": {"url": storage_url}}
    async with Stack([flowyard_sql.plugin, Plugin(tool)], config=config) as stack:
        first = await stack.run(diamond("count"), run_id="orig")
        result = await stack.replay("orig", from_step="c", set_outputs={"b": {"x": [1, "é"]}})
    assert first.outputs == {"d": "B(A)+C(A,1)"}
    assert sorted(tool.calls) == ["a", "b", "c", "c", "d", "d"]  # a, b ran once
    assert result.outputs == {"d": "{'x': [1, 'é']}+C(A,1)"}
    # a fresh stack reads what was stored: linked runs, reused checkpoints, attempts of c, d
    async with Stack([flowyard_sql.plugin, Plugin(Count())], config=config) as stack:
        storage = stack.storage
        new = await storage.get_run(result.run_id)
        original = await storage.get_run("orig")
        attempts = await storage.list_attempts(result.run_id)
        checkpoints = await storage.load_checkpoints(result.run_id)
        events = await storage.list_events(result.run_id)
    assert new.metadata["replayed_from"] == "orig" and new.metadata["replay_from_step"] == "c"
    assert "replayed_from" not in original.metadata and original.status == "completed"
    assert sorted(a.step_key for a in attempts) == ["c", "d"]
    assert checkpoints["a"] == "A" and checkpoints["b"] == {"x": [1, "é"]}
    assert {e.step_id for e in events if e.type == "step.completed"
            and e.data.get("replayed_from") == "orig" and e.data.get("resumed")} == {"a", "b"}


def test_cli_replay_and_refusals(storage_url: str, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWYARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FLOWYARD_STORAGE_URL", storage_url)
    monkeypatch.chdir(tmp_path)
    wf = tmp_path / "diamond.json"
    wf.write_text(json.dumps(diamond("echo")))
    runner = CliRunner()
    first = runner.invoke(cli, ["run", str(wf), "--json", "--run-id", "orig-cli"])
    assert first.exit_code == 0, first.output
    done = runner.invoke(cli, ["runs", "replay", "orig-c", "--from", "c", "--set",
                               'b.output="B2"', "-i", "n=7", "--json"])
    assert done.exit_code == 0, done.output + str(done.exception)
    data = json.loads(done.stdout)
    assert data["outputs"] == {"d": "B2+C(A,7)"}
    assert data["steps"]["a"]["resumed"] and data["steps"]["b"]["resumed"]
    assert not data["steps"]["c"]["resumed"] and not data["steps"]["d"]["resumed"]
    shown = runner.invoke(cli, ["runs", "show", data["run_id"], "--json"])
    assert shown.exit_code == 0, shown.output
    assert "orig-cli" in shown.output  # the link is stored on the new run
    for bad, message in ((["--set", "b.output=NaN"], "not valid JSON"),
                         (["--set", "b.output={bad"], "not valid JSON"),
                         (["--set", "b=1"], "expected STEP.output=JSON"),
                         (["--set", "d.output=1"], "it runs again"),
                         (["--set", "'; drop table runs;--.output=1"], "no such step"),
                         (["--from", "nope"], "'nope' is not a step")):
        args = ["runs", "replay", "orig-cli", *(["--from", "c"] if "--from" not in bad else []),
                *bad]
        out = runner.invoke(cli, args)
        assert out.exit_code != 0 and message in out.output, (bad, out.output)
    wf.write_text(json.dumps(diamond("echo") | {"outputs": {"d": "${d}", "a": "${a}"}}))
    changed = runner.invoke(cli, ["runs", "replay", "orig-cli", "--from", "c"])
    assert changed.exit_code == 1 and "changed since run orig-cli" in changed.output
