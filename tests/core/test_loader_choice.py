"""Loader plugins: the public parsing API (``parse_yaml``, ``Locations``), errors located in
the original file of a translated format, and how a file's loader is chosen (``sniff``,
``--format``, two claimers)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import flowyard
import pytest
from click.testing import CliRunner
from flowyard import (
    Config,
    Locations,
    ParseLimits,
    PluginError,
    Stack,
    SupportsSniff,
    Workflow,
    WorkflowValidationError,
    hookimpl,
    parse_workflow,
    parse_yaml,
)

MEMORY = {"storage": {"url": "memory://"}}


class PipeLoader:
    """A translated format: ``pipeline: [{name, run}]`` becomes ``echo`` steps; every error
    names the line and column of the original file."""

    suffixes = (".yaml", ".yml")

    def sniff(self, source: str, path: str | None) -> bool:
        return re.search(r"^pipeline:", source, re.M) is not None

    def load(self, source: str, *, path: str | None = None) -> Workflow:
        data, original = parse_yaml(source, path=path, limits=ParseLimits(), keep_going=True)
        locations = Locations(file=path)
        locations.issues.extend(original.issues)
        steps = []
        for i, item in enumerate(data.get("pipeline") or []):
            steps.append({"id": item.get("name"), "uses": "echo",
                          "with": {"value": item.get("run")}})
            for src, dst in ((f"pipeline[{i}]", f"steps[{i}]"),
                             (f"pipeline[{i}].name", f"steps[{i}].id"),
                             (f"pipeline[{i}].run", f"steps[{i}].with.value")):
                if src in original.positions:
                    locations.set(dst, *original.positions[src])
        definition = {"name": data.get("title", "pipe"), "steps": steps}
        return parse_workflow(definition, locations=locations, source=path)


class TasksLoader:
    """Another format of ``.yaml`` files: ``tasks: {id: value}``."""

    suffixes = (".yaml",)

    def sniff(self, source: str, path: str | None) -> bool:
        return re.search(r"^tasks:", source, re.M) is not None

    def load(self, source: str, *, path: str | None = None) -> Workflow:
        data, _ = parse_yaml(source, path=path)
        steps = [{"id": k, "uses": "echo", "with": {"value": v}}
                 for k, v in data["tasks"].items()]
        return parse_workflow({"name": "tasks", "steps": steps}, source=path)


class FormatsPlugin:
    @hookimpl
    def register_workflow_loaders(self, register: Any, config: Config) -> None:
        # "a-pipe" sorts before "native": the choice must not depend on the order of names
        register("a-pipe", PipeLoader(), suffixes=(".yaml", ".yml"))
        register("tasks", TasksLoader(), suffixes=(".yaml",))


@pytest.fixture
def stack() -> Stack:
    return Stack([("formats", FormatsPlugin())], config=MEMORY)


PIPE = """\
title: piped
pipeline:
  - name: first
    run: hello
  - name: second
    run: "{{ steps.nosuch.output }}"
"""


def test_the_loader_api_is_public() -> None:
    for name in ("Locations", "parse_yaml", "ParseLimits", "ValidationIssue",
                 "WorkflowValidationError", "SupportsSniff"):
        assert name in flowyard.__all__
    data, locations = flowyard.parse_yaml("a:\n  b: [1, 2]\n", path="x.yaml")
    assert data == {"a": {"b": [1, 2]}}
    assert locations.file == "x.yaml"
    assert locations.positions["a.b[1]"] == (2, 10)
    assert locations.keys["a.b"] == (2, 3)
    assert isinstance(PipeLoader(), SupportsSniff)


def test_locations_set_checks_its_arguments() -> None:
    locations = Locations(file="f.yaml")
    locations.set("steps[0].uses", 3, 5)
    locations.set("steps[0].uses", 3, 3, key=True)
    assert locations.find("steps[0].uses.deeper") == (3, 5)
    assert locations.issue("bad", "steps[0].uses", key=True).column == 3
    with pytest.raises(ValueError, match="line must be a positive integer"):
        locations.set("steps[0]", 0, 1)
    with pytest.raises(ValueError, match="column must be a positive integer"):
        locations.set("steps[0]", 1, True)


def test_a_translated_workflow_reports_errors_at_the_original_line_and_column(
        stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PIPE.replace("name: first", "name: 'bad id!'"), encoding="utf-8")
    with pytest.raises(WorkflowValidationError) as info:
        stack.load_workflow(path)
    found = {(i.line, i.column, i.file) for i in info.value.issues}
    # the bad id at `name:` of the first item, the unknown step at `run:` of the second
    assert (3, 11, str(path)) in found, info.value.issues
    assert (6, 10, str(path)) in found, info.value.issues
    assert any("nosuch" in i.message for i in info.value.issues)


def test_a_translating_loader_keeps_duplicate_keys_among_the_problems(
        stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PIPE.replace("    run: hello\n", "    run: hello\n    run: again\n"),
                    encoding="utf-8")
    with pytest.raises(WorkflowValidationError) as info:
        stack.load_workflow(path)
    messages = [(i.message.split(" (")[0], i.line, i.column) for i in info.value.issues]
    assert ("duplicate key 'run'", 5, 5) in messages
    assert any("nosuch" in i.message and i.line == 7 for i in info.value.issues)


def test_the_loader_that_sniffs_the_file_wins_and_runs_it(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PIPE.replace("{{ steps.nosuch.output }}", "{{ steps.first.output }}!"),
                    encoding="utf-8")
    workflow = stack.load_workflow(path)
    assert workflow.name == "piped"
    result = stack.run_sync(path)
    assert result.status == "completed"
    assert result.steps["second"].output == "hello!"


def test_a_file_no_loader_claims_goes_to_native_not_the_first_name(
        stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "n.yaml"
    path.write_text("name: plain\nsteps:\n  - id: a\n    uses: echo\n    with: {value: 1}\n",
                    encoding="utf-8")
    assert stack.load_workflow(path).name == "plain"


def test_two_claimers_are_reported_and_format_settles_it(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "both.yaml"
    path.write_text("tasks:\n  t: 1\npipeline:\n  - name: p\n    run: 2\n", encoding="utf-8")
    with pytest.raises(WorkflowValidationError) as info:
        stack.load_workflow(path)
    message = info.value.issues[0].message
    assert "'a-pipe'" in message and "'tasks'" in message and "--format" in message
    assert info.value.issues[0].file == str(path)
    assert stack.load_workflow(path, format="tasks").name == "tasks"
    assert [s.id for s in stack.load_workflow(path, format="a-pipe").steps] == ["p"]
    result = stack.run_sync(path, format="tasks")  # a run option too
    assert result.status == "completed" and result.steps["t"].output == 1


def test_format_forces_a_loader_and_an_unknown_format_lists_them(
        stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(PIPE, encoding="utf-8")
    with pytest.raises(WorkflowValidationError, match="unknown key 'pipeline'"):
        stack.load_workflow(path, format="native")
    with pytest.raises(WorkflowValidationError,
                       match=r"unknown workflow format 'nope'.*a-pipe, native, tasks"):
        stack.load_workflow(path, format="nope")
    with pytest.raises(ValueError, match="format= applies to a workflow file or text"):
        stack.load_workflow({"name": "x", "steps": []}, format="native")


@pytest.fixture
def cli_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    import flowyard.commands.run as run_command

    monkeypatch.setenv("FLOWYARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FLOWYARD_STORAGE_URL", "memory://")
    monkeypatch.chdir(tmp_path)
    # the CLI's stack with the formats plugin added (installed plugins are entry points)
    monkeypatch.setattr(run_command, "default_stack",
                        lambda: Stack([("formats", FormatsPlugin())], config=MEMORY))
    return CliRunner()


def test_cli_format_option(cli_runner: CliRunner, tmp_path: Path) -> None:
    from flowyard.cli import cli

    (tmp_path / "both.yaml").write_text("tasks:\n  t: hi\npipeline:\n  - name: p\n    run: 2\n",
                                        encoding="utf-8")
    result = cli_runner.invoke(cli, ["validate", "both.yaml"])
    assert result.exit_code == 2 and "--format" in result.output, result.output
    result = cli_runner.invoke(cli, ["validate", "--format", "nope", "both.yaml"])
    assert result.exit_code == 2
    assert "unknown workflow format 'nope'" in result.output and "tasks" in result.output
    result = cli_runner.invoke(cli, ["validate", "--format", "tasks", "both.yaml"])
    assert result.exit_code == 0 and "workflow 'tasks'" in result.output, result.output
    result = cli_runner.invoke(cli, ["run", "--no-live", "--json", "--format", "tasks",
                                     "both.yaml"])
    assert result.exit_code == 0, result.output
    assert '"status": "completed"' in result.output


class BrokenSniff:
    suffixes = (".yaml",)

    def sniff(self, source: str, path: str | None) -> bool:
        raise KeyError("oops")

    def load(self, source: str, *, path: str | None = None) -> Workflow:
        raise AssertionError("never called")


class BrokenPlugin:
    @hookimpl
    def register_workflow_loaders(self, register: Any) -> None:
        register("broken", BrokenSniff(), suffixes=(".yaml",))


def test_a_sniff_that_raises_is_a_plugin_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "n.yaml"
    path.write_text("name: x\n", encoding="utf-8")
    stack = Stack([("brokenplugin", BrokenPlugin())], config=MEMORY)
    with pytest.raises(PluginError, match=r"loader 'broken' \(plugin 'brokenplugin'\) failed "
                                          r"to sniff .*KeyError: 'oops'"):
        stack.load_workflow(path)
