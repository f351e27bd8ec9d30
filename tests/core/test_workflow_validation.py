"""Loading and validation: YAML/JSON/dict/builder, every problem at once with file, line
and column, safe loading with size caps, canonical hashing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import flowyard
from flowyard.builtin.loader import NativeLoader
from flowyard.errors import WorkflowValidationError
from flowyard.stack import Stack
from flowyard.workflow import RetryPolicy, Workflow, WorkflowBuilder


@flowyard.tool(name="math.add", idempotent=True)
def add(a: int, b: int = 0) -> int:
    """Add two integers.

    Args:
        a: the first number.
        b: the second number.
    """
    return a + b


class Plugin:
    @flowyard.hookimpl
    def register_tools(self, register: Any, config: Any) -> None:
        register("math.add", add)


@pytest.fixture
def stack() -> Stack:
    return Stack([Plugin()])


BROKEN = """\
name: broken
steps:
  - id: a
    uses: math.add
    with:
      a: not-a-number
  - id: a
    uses: math.ad
  - id: b
    uses: echo
    depends_on: [ghost]
    with:
      value: "{{ steps.nowhere.output }}"
  - id: c
    uses: echo
    depends_on: [d]
  - id: d
    uses: echo
    with: {value: "${c}"}
  - id: e
    uses: math.add
    with: {a: 1, z: 2}
    retyr: 3
"""


def issues_of(exc: WorkflowValidationError) -> list[tuple[str, int | None, int | None]]:
    return [(i.message, i.line, i.column) for i in exc.issues]


def test_every_problem_is_reported_with_file_line_and_column(stack: Stack,
                                                             tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    with pytest.raises(WorkflowValidationError) as info:
        stack.load_workflow(path)
    found = issues_of(info.value)
    # structural and semantic problems come together, in source order
    retyr = [f for f in found if "unknown key 'retyr'" in f[0]]
    assert retyr and "did you mean 'retry'" in retyr[0][0] and retyr[0][1:] == (23, 5)
    assert info.value.issues[-1].message.startswith("unknown key 'retyr'")
    assert all(i.file == str(path) for i in info.value.issues)
    text = str(info.value)
    assert f"{path}:6:10" in text  # a: not-a-number
    expect = {
        "invalid arguments for 'math.add': 'not-a-number' is not of type 'integer'": (6, 10),
        "duplicate step id 'a' (first defined at steps[0])": (7, 9),
        "unknown action 'math.ad' in step 'a'; did you mean 'math.add'?": (8, 11),
        "unknown step 'ghost' in depends_on of step 'b'": (11, 18),
        "unknown step 'nowhere' referenced by step 'b'": (13, 14),
        "invalid arguments for 'math.add': Additional properties are not allowed ('z' was "
        "unexpected)": (22, 11),
    }
    for message, where in expect.items():
        assert (message, *where) in found, (message, found)
    cycles = [f for f in found if f[0].startswith("dependency cycle")]
    assert len(cycles) == 1 and set(cycles[0][0].split(": ")[1].split(" -> ")) == {"c", "d"}


def test_semantic_issues_keep_source_positions_when_a_step_does_not_parse(
        stack: Stack) -> None:
    text = ("name: shifted\nsteps:\n  - id: broken\n  - id: later\n    uses: nope\n"
            "  - id: user\n    uses: echo\n    with: {value: '${broken}'}\n")
    with pytest.raises(WorkflowValidationError) as info:
        stack.load_workflow(text)
    found = issues_of(info.value)
    assert ("step 'broken' has no 'uses' (the action to run)", 3, 5) in found
    assert ("unknown action 'nope' in step 'later'", 5, 11) in found
    # the reference to the step that did not parse is not reported a second time
    assert not any("unknown step 'broken'" in f[0] for f in found)


def test_yaml_syntax_errors_and_duplicate_keys_have_locations() -> None:
    loader = NativeLoader()
    with pytest.raises(WorkflowValidationError) as info:
        loader.load("name: x\nsteps:\n  - id: a\n    uses: [echo\n", path="w.yaml")
    (issue,) = info.value.issues
    assert issue.file == "w.yaml" and issue.line is not None and "invalid YAML" in issue.message
    with pytest.raises(WorkflowValidationError) as info:
        loader.load("name: x\nname: y\nsteps: []\n", path="d.yaml")
    # the duplicate key is one of the problems: validation goes on (the first value is kept)
    assert issues_of(info.value) == [
        ("duplicate key 'name' (first written at line 1, column 1)", 2, 1),
        ("'steps' is empty", 3, 8)]


def test_unsafe_tags_are_rejected() -> None:
    with pytest.raises(WorkflowValidationError, match="invalid YAML"):
        NativeLoader().load("name: !!python/object/apply:os.system ['echo hacked']\nsteps: []\n")


def test_size_and_alias_limits() -> None:
    big = "name: x\ndescription: '" + "a" * 2000 + "'\nsteps: []\n"
    with pytest.raises(WorkflowValidationError, match="more than the limit of 1000"):
        NativeLoader(max_bytes=1000).load(big)
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n"
        for i in range(6))
    with pytest.raises(WorkflowValidationError, match="more than 200000 values"):
        NativeLoader().load(bomb)


def test_json_yaml_dict_and_builder_give_the_same_workflow(stack: Stack, tmp_path: Path) -> None:
    data = {"name": "same", "description": "d", "inputs": {"n": {"type": "integer",
                                                                 "default": 1}},
            "steps": [{"id": "a", "uses": "math.add", "with": {"a": "{{ inputs.n }}"},
                       "retry": {"attempts": 3, "backoff": 0.5}},
                      {"id": "b", "uses": "echo", "with": {"value": "${a}"}, "priority": 2}],
            "outputs": {"b": "${b}"}}
    (tmp_path / "w.json").write_text(json.dumps(data))
    import yaml

    (tmp_path / "w.yaml").write_text(yaml.safe_dump(data))
    built = (WorkflowBuilder("same", description="d")
             .input("n", type="integer", default=1)
             .step("a", "math.add", with_={"a": "{{ inputs.n }}"},
                   retry=RetryPolicy(attempts=3, backoff=0.5))
             .step("b", "echo", with_={"value": "${a}"}, priority=2)
             .output("b", "${b}")
             .build())
    loaded = [stack.load_workflow(tmp_path / "w.json"), stack.load_workflow(tmp_path / "w.yaml"),
              stack.load_workflow(data), stack.load_workflow(built)]
    assert all(w == loaded[0] for w in loaded)
    assert len({w.content_hash() for w in loaded}) == 1
    again = Workflow.from_dict(loaded[0].to_dict())
    assert again == loaded[0]
    changed = Workflow.from_dict({**data, "outputs": {"b": "${a}"}})
    assert changed.content_hash() != loaded[0].content_hash()


def test_structural_errors_are_all_reported() -> None:
    with pytest.raises(WorkflowValidationError) as info:
        Workflow.from_dict({"steps": [{"uses": "echo"}, {"id": "x y", "uses": 3},
                                      {"id": "z", "uses": "echo", "for_each": [1],
                                       "until": "true", "timeout": -1,
                                       "on_error": "explode", "priority": "high"}],
                            "on_failure": "sometimes"})
    messages = " | ".join(i.message for i in info.value.issues)
    for part in ("needs a 'name'", "has no 'id'", "must be a non-empty string of letters",
                 "'uses' must be a non-empty string", "both 'for_each' and 'until'",
                 "must be >= 0", "'on_error' must be", "'priority' must be an integer",
                 "'on_failure' must be"):
        assert part in messages, part


def test_inputs_declared_and_referenced(stack: Stack) -> None:
    with pytest.raises(WorkflowValidationError, match=r"unknown input 'nme'.*did you mean 'name'"):
        stack.load_workflow({"name": "i", "inputs": {"name": {"type": "string"}},
                             "steps": [{"id": "a", "uses": "echo",
                                        "with": {"value": "{{ inputs.nme }}"}}]})
    with pytest.raises(WorkflowValidationError, match="default 'x' is not of type integer"):
        stack.load_workflow({"name": "i", "inputs": {"n": {"type": "integer", "default": "x"}},
                             "steps": [{"id": "a", "uses": "echo"}]})


def test_agent_steps_are_checked(stack: Stack) -> None:
    with pytest.raises(WorkflowValidationError) as info:
        stack.load_workflow({"name": "ag", "steps": [
            {"id": "a", "uses": "agent", "with": {"tools": ["nope"], "mode": "magic",
                                                  "max_turn": 3, "memory": {"top_k": 2}}}]})
    messages = " | ".join(i.message for i in info.value.issues)
    for part in ("needs with.prompt", "mode must be 'native' or 'react'", "unknown tool 'nope'",
                 "unknown agent argument 'max_turn'; did you mean 'max_turns'",
                 "needs a memory store"):
        assert part in messages, part


def test_template_syntax_error_is_a_validation_issue(stack: Stack) -> None:
    with pytest.raises(WorkflowValidationError, match="template syntax error"):
        stack.load_workflow({"name": "t", "steps": [
            {"id": "a", "uses": "echo", "with": {"value": "{{ oops( }}"}}]})


def test_yaml_text_can_be_given_directly(stack: Stack) -> None:
    wf = stack.load_workflow("name: inline\nsteps:\n  - id: a\n    uses: echo\n")
    assert wf.name == "inline" and wf.steps[0].uses == "echo"
    with pytest.raises(WorkflowValidationError, match="workflow file not found"):
        stack.load_workflow("does-not-exist.yaml")


def test_json_files_with_tabs_and_json_errors(tmp_path: Path, stack: Stack) -> None:
    path = tmp_path / "w.json"
    path.write_text('{\n\t"name": "tabs",\n\t"steps": [{"id": "a", "uses": "echo",'
                    ' "with": {"value": "a\\/b"}}]\n}\n')
    wf = stack.load_workflow(path)
    assert wf.steps[0].with_ == {"value": "a/b"}
    path.write_text('{"name": "x",\n "steps": [}\n')
    with pytest.raises(WorkflowValidationError) as info:
        stack.load_workflow(path)
    (issue,) = info.value.issues
    assert issue.message.startswith("invalid JSON") and (issue.line, issue.column) == (2, 12)
    path.write_text('{"name": "x", "name": "y", "steps": [{"id": "a", "uses": "echo"}]}')
    with pytest.raises(WorkflowValidationError, match="duplicate key 'name'"):
        stack.load_workflow(path)


def test_errors_inside_an_inline_sub_workflow_point_at_the_nested_field(tmp_path: Path) -> None:
    path = tmp_path / "outer.yaml"
    path.write_text("""\
name: outer
steps:
  - id: loop
    uses: workflow
    with:
      workflow:
        name: inner
        steps:
          - id: a
            uses: echo
            with: {value: 1}
          - id: b
            uses: nosuchtool
""")
    with pytest.raises(WorkflowValidationError) as caught:
        Stack.default().load_workflow(path)
    [issue] = caught.value.issues
    assert "unknown action 'nosuchtool'" in issue.message
    assert (issue.file, issue.line, issue.column) == (str(path), 13, 19)
