"""``register_template_filters``: plugins' filters, tests and globals in workflow templates,
inside the sandbox and its limits; unknown filters are located validation errors; the
built-in filters flowyard adds (slugify, to_json, from_json, basename, dirname, strftime)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flowyard import Config, PluginError, Stack, WorkflowValidationError, hookimpl
from flowyard.templating import MAX_RESULT, render_value

MEMORY = {"storage": {"url": "memory://"}}


class Box:
    """A value with a private attribute, to show the sandbox applies to filter results."""

    def __init__(self) -> None:
        self._secret = "s3cret"
        self.label = "box"


class FiltersPlugin:
    @hookimpl
    def register_template_filters(self, register: Any, config: Config) -> None:
        register("shout", lambda value, end="!": f"{str(value).upper()}{end}")
        register("multiple_of", lambda value, n: value % n == 0, kind="test")
        register("greet", lambda name: f"hello {name}", kind="global")
        register("answer", 42, kind="global")
        register("boxed", lambda value: Box())
        register("explode", lambda value: "x" * (MAX_RESULT + 1))


@pytest.fixture
def stack() -> Stack:
    return Stack([("filters", FiltersPlugin())], config=MEMORY)


def _write(tmp_path: Path, text: str, name: str = "wf.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


USES_ALL = """\
name: filters
inputs:
  n: {type: integer, default: 6}
steps:
  - id: a
    uses: echo
    with:
      value: "{{ 'hi' | shout }} {{ greet('ada') }} {{ answer }}"
  - id: b
    uses: echo
    when: "inputs.n is multiple_of(3)"
    with:
      value: "{{ steps.a.output | shout('?') }}"
outputs:
  a: "${a}"
  b: "${b}"
"""


def test_registered_filters_tests_and_globals_run_in_workflows(
        stack: Stack, tmp_path: Path) -> None:
    result = stack.run_sync(_write(tmp_path, USES_ALL))
    assert result.status == "completed", result.error
    assert result.outputs == {"a": "HI! hello ada 42", "b": "HI! HELLO ADA 42?"}
    result = stack.run_sync(_write(tmp_path, USES_ALL), {"n": 7})
    assert result.steps["b"].status == "skipped"


def test_a_stack_without_the_plugin_reports_its_filters_as_unknown(tmp_path: Path) -> None:
    with pytest.raises(WorkflowValidationError) as info:
        Stack(config=MEMORY).load_workflow(_write(tmp_path, USES_ALL))
    messages = [i.message for i in info.value.issues]
    assert any("unknown template filter 'shout'" in m for m in messages), messages
    assert any("unknown template test 'multiple_of'" in m for m in messages), messages
    with pytest.raises(WorkflowValidationError, match="unknown name 'greet'"):
        Stack(config=MEMORY).load_workflow(_write(tmp_path, USES_ALL.replace(
            "{{ 'hi' | shout }} ", "").replace("when: \"inputs.n is multiple_of(3)\"",
                                               "when: true").replace(" | shout('?')", "")))


def test_registered_functions_stay_inside_the_sandbox_and_its_limits(
        stack: Stack, tmp_path: Path) -> None:
    path = _write(tmp_path, "name: s\nsteps:\n  - id: a\n    uses: echo\n    with:\n"
                            "      value: \"{{ (1 | boxed)._secret }}\"\n")
    result = stack.run_sync(path)
    assert result.status == "failed"
    assert "_secret" in (result.error or "") and "s3cret" not in str(result.steps["a"].output)
    path = _write(tmp_path, "name: s\nsteps:\n  - id: a\n    uses: echo\n    with:\n"
                            "      value: \"{{ 1 | explode }}\"\n")
    result = stack.run_sync(path)
    assert result.status == "failed"
    assert "the result of filter 'explode' would be larger" in (result.error or "")


def test_unknown_filters_are_located_validation_errors_with_suggestions(
        stack: Stack, tmp_path: Path) -> None:
    path = _write(tmp_path, """\
name: bad
steps:
  - id: a
    uses: echo
    with:
      value: "{{ 'x' | nosuchfilter }}"
  - id: b
    uses: echo
    when: "{{ 'y' | uper == 'Y' }}"
    with: {value: 1}
outputs:
  out: "{{ steps.a.output | shuot }}"
""")
    with pytest.raises(WorkflowValidationError) as info:
        stack.load_workflow(path)
    got = {(i.line, i.column): i.message for i in info.value.issues}
    assert set(got) == {(6, 14), (9, 11), (12, 8)}, got
    assert got[(6, 14)].startswith("step 'a', field with.value: unknown template filter "
                                   "'nosuchfilter'")
    assert "field when" in got[(9, 11)] and "did you mean 'upper'" in got[(9, 11)]
    assert got[(12, 8)].startswith("outputs.out: unknown template filter 'shuot'")
    assert "did you mean 'shout'" in got[(12, 8)]
    assert all(i.file == str(path) for i in info.value.issues)


def test_cli_validate_and_run_report_an_unknown_filter_with_its_location(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flowyard.cli import cli

    monkeypatch.setenv("FLOWYARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FLOWYARD_STORAGE_URL", "memory://")
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "name: bad\nsteps:\n  - id: a\n    uses: echo\n    with:\n"
                     "      value: \"{{ x | nosuchfilter }}\"\n")
    for command in (["validate", "wf.yaml"], ["run", "--no-live", "wf.yaml"]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 2, result.output
        assert "wf.yaml:6:14: step 'a', field with.value: unknown template filter " \
               "'nosuchfilter'" in result.output
        assert "Traceback" not in result.output and "TemplateAssertionError" not in result.output


class BadKind:
    @hookimpl
    def register_template_filters(self, register: Any) -> None:
        register("fine", str.upper)
        register("odd", str.lower, kind="macro")


class NotCallable:
    @hookimpl
    def register_template_filters(self, register: Any) -> None:
        register("nope", 3)


class ReservedName:
    @hookimpl
    def register_template_filters(self, register: Any) -> None:
        register("steps", lambda: 1, kind="global")


@pytest.mark.parametrize(("plugin", "message"), [
    (BadKind(), "kind must be one of filter, test, global, not 'macro'"),
    (NotCallable(), "a template filter must be callable, got int"),
    (ReservedName(), "'steps' is a name the engine gives templates"),
])
def test_bad_registrations_fail_the_plugin(plugin: object, message: str) -> None:
    stack = Stack([("bad", plugin)], config=MEMORY)
    (status,) = [s for s in stack.plugin_report if s.name == "bad"]
    assert status.status == "failed" and message in str(status.error)
    assert "fine" not in stack.template_filters  # all or nothing


class Replacer:
    def __init__(self, replace: bool) -> None:
        self.replace = replace

    @hookimpl
    def register_template_filters(self, register: Any) -> None:
        register("upper", lambda value: f"<{value}>", replace=self.replace)


def test_a_built_in_name_is_replaced_only_when_asked(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: r\nsteps:\n  - id: a\n    uses: echo\n    with:\n"
                            "      value: \"{{ 'x' | upper }}\"\n")
    with pytest.raises(PluginError, match=r"'upper', which is a built-in filter.*replace=True"):
        Stack([("r", Replacer(False))], config=MEMORY).load_workflow(path)
    result = Stack([("r", Replacer(True))], config=MEMORY).run_sync(path)
    assert result.steps["a"].output == "<x>"


def test_the_built_in_filters() -> None:
    def render(text: str, **context: Any) -> Any:
        return render_value(text, context)

    assert render("{{ 'Hello, Wörld! --  2nd_try ' | slugify }}") == "hello-world-2nd-try"
    assert render("{{ 'A B' | slugify('_') }}") == "a_b"
    assert render("{{ v | to_json }}", v={"b": [1, "é"], "a": "<x>"}) == \
        '{"b": [1, "é"], "a": "<x>"}'
    assert render("{{ v | to_json(indent=2, sort_keys=true) }}", v={"b": 1, "a": 2}) == \
        '{\n  "a": 2,\n  "b": 1\n}'
    assert render("{{ ('{\"k\": [1, 2]}' | from_json).k[1] }}") == 2
    assert render("{{ 'dir/sub/file.txt' | basename }}") == "file.txt"
    assert render("{{ 'dir\\\\sub\\\\file.txt' | basename }}") == "file.txt"
    assert render("{{ 'dir/sub/file.txt' | dirname }}") == "dir/sub"
    assert render("{{ 'file.txt' | dirname }}") == ""
    assert render("{{ '2026-12-02T13:20:00Z' | strftime('%Y/%m/%d %H:%M') }}") == \
        "2026/12/02 13:20"
    assert render("{{ 0 | date('%Y-%m-%d') }}") == "1970-01-01"
    assert render("{{ d | date }}", d=dt.date(2026, 1, 2)) == "2026-01-02"
    from flowyard import TemplateError

    with pytest.raises(TemplateError, match="not an ISO 8601 date"):
        render("{{ 'yesterday' | date }}")
    with pytest.raises(TemplateError, match="without widths"):
        render("{{ 0 | strftime('%_99999999Y') }}")
    with pytest.raises(TemplateError, match="to_json: indent must be"):
        render("{{ 1 | to_json(indent=1000) }}")
