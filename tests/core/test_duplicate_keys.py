"""A duplicate key is one problem among the others: validation reports every problem of the
file (the first value of a duplicated key is kept, the later ones are dropped)."""

from __future__ import annotations

from pathlib import Path

import pytest
from flowyard import Stack, WorkflowValidationError, parse_yaml
from flowyard.parsing import parse_text

MEMORY = {"storage": {"url": "memory://"}}

YAML = """\
name: dup
steps:
  - id: a
    uses: echo
    with: {value: 1}
    with: {value: 2}
  - id: b
    uses: echo
    retries: 3
    with:
      value: "{{ steps.nosuch.output }}"
outputs:
  out: "${a}"
name: again
"""

JSON = """\
{"name": "dup",
 "steps": [{"id": "a", "uses": "echo", "with": {"value": 1}, "with": {"value": 2}},
           {"id": "b", "uses": "echo", "retries": 3,
            "with": {"value": "{{ steps.nosuch.output }}"}}]}
"""


def _issues(path: Path) -> list[tuple[int | None, int | None, str]]:
    with pytest.raises(WorkflowValidationError) as info:
        Stack(config=MEMORY).load_workflow(path)
    assert all(i.file == str(path) for i in info.value.issues)
    return [(i.line, i.column, i.message.split(";")[0].split(" (")[0])
            for i in info.value.issues]


def test_yaml_duplicate_keys_unknown_keys_and_bad_references_are_all_reported(
        tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(YAML, encoding="utf-8")
    assert _issues(path) == [
        (6, 5, "duplicate key 'with'"),
        (9, 5, "unknown key 'retries' in a step"),
        (11, 14, "unknown step 'nosuch' referenced by step 'b'"),
        (14, 1, "duplicate key 'name'"),
    ]


def test_json_duplicate_keys_are_reported_with_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "dup.json"
    path.write_text(JSON, encoding="utf-8")
    assert _issues(path) == [
        (2, 62, "duplicate key 'with'"),
        (3, 40, "unknown key 'retries' in a step"),
        (4, 31, "unknown step 'nosuch' referenced by step 'b'"),
    ]


def test_the_message_names_the_first_occurrence_and_the_first_value_is_kept() -> None:
    data, locations = parse_yaml("a: 1\nb: 2\na: 3\n", path="x.yaml", keep_going=True)
    assert data == {"a": 1, "b": 2}
    (issue,) = locations.issues
    assert (issue.line, issue.column, issue.path) == (3, 1, "a")
    assert issue.message == "duplicate key 'a' (first written at line 1, column 1)"
    with pytest.raises(WorkflowValidationError, match="duplicate key 'a'"):
        parse_yaml("a: 1\na: 3\n")  # without keep_going: raised at once, as before


def test_a_workflow_whose_only_problem_is_a_duplicate_key_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "only.yaml"
    path.write_text("name: x\nsteps:\n  - id: a\n    uses: echo\n    uses: echo\n",
                    encoding="utf-8")
    assert _issues(path) == [(5, 5, "duplicate key 'uses'")]


def test_inputs_given_as_text_still_refuse_duplicate_keys() -> None:
    with pytest.raises(WorkflowValidationError, match="duplicate key 'k'"):
        parse_text("{k: 1, k: 2}", source="-i x")
