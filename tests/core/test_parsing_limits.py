"""Bounded parsing (issue 16, item 3), tried as an attacker: every way YAML/JSON enters
(workflow files, ``-i``, ``--inputs``) has size, value, alias and depth limits and refuses lone
surrogates, each violation a located ``WorkflowValidationError`` (exit 2 from the CLI, one
issue line, no traceback), in bounded memory and time.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from flowyard.builtin.loader import NativeLoader
from flowyard.commands.run import parse_inputs
from flowyard.config import Config
from flowyard.errors import ConfigError, WorkflowValidationError
from flowyard.parsing import (
    DEPTH_CEILING,
    ParseLimits,
    parse_json,
    parse_text,
    parse_yaml,
    read_bounded,
)
from flowyard.stack import Stack
from flowyard.workflow import definition_hash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

#: A nine-level alias bomb like the report's 306-byte one (341 bytes; 9**9 = 387 420 489
#: strings once expanded).
BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{c}: &{c} [{','.join(['*' + p] * 9)}]"
       for p, c in zip("abcdefgh", "bcdefghi", strict=True)])

WORKFLOW = textwrap.dedent("""\
    name: t
    inputs:
      x: {type: any}
    steps:
      - id: a
        uses: echo
        with: {value: "{{ inputs.x }}"}
    outputs:
      out: "{{ steps.a.output }}"
    """)

#: Runs a command under an address-space limit and reports its status, output and peak RSS.
_BOUNDED_RUN = textwrap.dedent("""\
    import json, resource, subprocess, sys
    limit = int(sys.argv[1])
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    done = subprocess.run(sys.argv[2:], capture_output=True, text=True, preexec_fn=cap,
                          timeout=120)
    print(json.dumps({"rc": done.returncode, "out": done.stdout, "err": done.stderr,
                      "peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
    """)

GIB = 1024 ** 3


def _flowyard(*args: str, cwd: Path, limit: int = 2 * GIB) -> dict[str, Any]:
    """Run ``flowyard ARGS`` in a fresh process capped at ``limit`` bytes of address space.

    Returns ``{"rc", "out", "err", "peak_kib"}`` (peak resident set size of the child, KiB).
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLOWYARD_TRACEBACK": "0",
           "FLOWYARD_DATA_DIR": str(cwd / ".data")}
    cli = [sys.executable, "-c", "from flowyard.cli import main; main()", *args]
    done = subprocess.run([sys.executable, "-c", _BOUNDED_RUN, str(limit), *cli], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=180, check=True)
    return dict(json.loads(done.stdout))


def _assert_located_refusal(result: dict[str, Any], *needles: str) -> None:
    output = result["out"] + result["err"]
    assert result["rc"] == 2, output
    assert "Traceback" not in output and "RecursionError" not in output, output
    assert "MemoryError" not in output, output
    for needle in needles:
        assert needle in output, output


def _issue(exc: pytest.ExceptionInfo[WorkflowValidationError]) -> str:
    assert len(exc.value.issues) == 1, exc.value.issues
    return str(exc.value.issues[0])


# ----------------------------------------------------------------------------- -i values


def test_billion_laughs_input_value_is_refused_fast_in_bounded_memory(tmp_path: Path) -> None:
    assert len(BILLION_LAUGHS.encode()) < 400
    (tmp_path / "wf.yaml").write_text(WORKFLOW, encoding="utf-8")
    started = time.monotonic()
    result = _flowyard("run", "wf.yaml", "--no-live", "-i", f"x={BILLION_LAUGHS}",
                       cwd=tmp_path, limit=GIB)
    _assert_located_refusal(result, "-i x:", "more than 200000 values", "workflows.max_nodes")
    assert time.monotonic() - started < 60
    assert result["peak_kib"] < 400 * 1024, result["peak_kib"]


def test_billion_laughs_in_process_stops_at_the_node_limit() -> None:
    with pytest.raises(WorkflowValidationError) as exc:
        parse_inputs((f"x={BILLION_LAUGHS}",))
    assert "-i x:1:" in _issue(exc) and "workflows.max_nodes" in _issue(exc)


def test_900_level_input_value_is_a_located_error(tmp_path: Path) -> None:
    deep = "[" * 900 + "]" * 900
    with pytest.raises(WorkflowValidationError) as exc:
        parse_inputs((f"x={deep}",))
    assert _issue(exc).startswith("-i x:1:101: nested more than 100 levels deep")
    (tmp_path / "wf.yaml").write_text(WORKFLOW, encoding="utf-8")
    _assert_located_refusal(_flowyard("run", "wf.yaml", "--no-live", "-i", f"x={deep}",
                                      cwd=tmp_path), "-i x:1:101:", "workflows.max_depth")


def test_input_value_limits_are_configurable(tmp_path: Path) -> None:
    limits = ParseLimits.from_config(Config({"workflows": {"max_depth": 3, "max_aliases": 1}}))
    assert parse_inputs(("x=[[[1]]]",), limits) == {"x": [[[1]]]}
    with pytest.raises(WorkflowValidationError, match="nested more than 3 levels"):
        parse_inputs(("x=[[[[1]]]]",), limits)
    with pytest.raises(WorkflowValidationError, match=r"more than 1 aliases"):
        parse_inputs(("x=[&a 1, *a, *a]",), limits)


@pytest.mark.parametrize("config", [{"max_depth": DEPTH_CEILING + 1}, {"max_nodes": 0},
                                    {"max_bytes": "big"}, {"max_depth": True}])
def test_bad_limits_in_config_are_config_errors(config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"workflows\."):
        ParseLimits.from_config(Config({"workflows": config}))


def test_ordinary_input_values_still_parse() -> None:
    assert parse_inputs(("n=3", "flag=true", "name=Ada", "tags=[a, b]", 'obj={"k": 1}',
                         "empty=", "sm=\U0001F600", "f=1e-05", "g=[2E8]")) == {
        "n": 3, "flag": True, "name": "Ada", "tags": ["a", "b"], "obj": {"k": 1}, "empty": "",
        "sm": "\U0001F600", "f": 1e-05, "g": [2e8]}


@pytest.mark.parametrize("value", ['"\\udc80"', '{"k\\ud800": 1}', "[a, \"\\ud83d\"]"])
def test_lone_surrogate_in_an_input_value_is_located(value: str) -> None:
    with pytest.raises(WorkflowValidationError) as exc:
        parse_inputs((f"x={value}",))
    assert _issue(exc).startswith("-i x:1:") and "lone surrogate" in _issue(exc)


@pytest.mark.parametrize("value", ["2001-02-30", "!!int abc", "!!bool maybe", "0x_",
                                   "!!python/object:os.system x", "!!set {a}", "a: \x00"])
def test_values_pyyaml_cannot_construct_are_located_errors(value: str) -> None:
    with pytest.raises(WorkflowValidationError) as exc:
        parse_inputs((f"x={value}",))
    assert _issue(exc).startswith("-i x:1:")


def test_recursive_and_merge_key_bombs_are_bounded() -> None:
    with pytest.raises(WorkflowValidationError, match="levels deep after alias expansion"):
        parse_text("&a [*a]", source="-i x")
    merges = ["a0: &a0 {k: 1}"] + [f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}]}}"
                                   for i in range(1, 40)]
    started = time.monotonic()
    with pytest.raises(WorkflowValidationError, match=r"workflows\.max_nodes"):
        parse_text("\n".join(merges), source="-i x")
    assert time.monotonic() - started < 30


def test_inputs_file_alias_bomb_is_a_located_exit_2(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(WORKFLOW, encoding="utf-8")
    (tmp_path / "in.yaml").write_text("x:\n  " + BILLION_LAUGHS.replace("\n", "\n  ") + "\n",
                                      encoding="utf-8")
    result = _flowyard("run", "wf.yaml", "--no-live", "--inputs", "in.yaml", cwd=tmp_path,
                       limit=GIB)
    _assert_located_refusal(result, "in.yaml:", "workflows.max_nodes")
    (tmp_path / "deep.json").write_text('{"x": ' + "[" * 5000 + "]" * 5000 + "}",
                                        encoding="utf-8")
    _assert_located_refusal(_flowyard("run", "wf.yaml", "--no-live", "--inputs", "deep.json",
                                      cwd=tmp_path), "deep.json:1:", "workflows.max_depth")


# ----------------------------------------------------------------------------- workflow files


def test_10000_level_json_workflow_is_a_located_error(tmp_path: Path) -> None:
    (tmp_path / "deep.json").write_text(
        '{"name": "t", "steps": ' + "[" * 10_000 + "]" * 10_000 + "}", encoding="utf-8")
    with pytest.raises(WorkflowValidationError) as exc:
        NativeLoader().load_path(tmp_path / "deep.json")
    assert "deep.json:1:" in _issue(exc) and "workflows.max_depth" in _issue(exc)
    _assert_located_refusal(_flowyard("validate", "deep.json", cwd=tmp_path),
                            "deep.json:1:", "nested more than 100 levels deep")


def test_1000_level_yaml_block_is_a_located_error(tmp_path: Path) -> None:
    text = "name: t\nsteps:\n" + "".join("  " * i + "- \n" for i in range(1000))
    (tmp_path / "deep.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(WorkflowValidationError) as exc:
        NativeLoader().load_path(tmp_path / "deep.yaml")
    assert _issue(exc).startswith(f"{tmp_path / 'deep.yaml'}:102:")
    _assert_located_refusal(_flowyard("validate", "deep.yaml", cwd=tmp_path),
                            "deep.yaml:102:", "workflows.max_depth")


@pytest.mark.parametrize("command", ["validate", "run"])
def test_lone_surrogate_in_a_workflow_file_is_located_not_a_crash(tmp_path: Path,
                                                                  command: str) -> None:
    (tmp_path / "sur.yaml").write_text(
        'name: t\ndescription: "\\udc80"\nsteps:\n  - id: a\n    uses: echo\n'
        "    with: {value: 1}\n", encoding="utf-8")
    (tmp_path / "sur.json").write_text(json.dumps(
        {"name": "t", "steps": [{"id": "a", "uses": "echo", "with": {"value": "\udc80"}}]}),
        encoding="utf-8")
    args = ("--no-live",) if command == "run" else ()
    _assert_located_refusal(_flowyard(command, "sur.yaml", *args, cwd=tmp_path),
                            "sur.yaml:2:14:", "lone surrogate")
    _assert_located_refusal(_flowyard(command, "sur.json", *args, cwd=tmp_path),
                            "sur.json:1:", "lone surrogate", "steps[0].with.value")


def test_surrogate_pairs_in_json_are_one_character(tmp_path: Path) -> None:
    path = tmp_path / "ok.json"
    path.write_text(json.dumps({"name": "t", "description": "\U0001F600", "steps": [
        {"id": "a", "uses": "echo", "with": {"value": 1}}]}), encoding="utf-8")
    assert "\\ud83d\\ude00" in path.read_text(encoding="utf-8")
    assert NativeLoader().load_path(path).description == "\U0001F600"


def test_lone_surrogate_in_a_workflow_dict_is_a_validation_error() -> None:
    wf = {"name": "t", "steps": [{"id": "a", "uses": "echo", "with": {"v\udc80": 1}}]}
    with pytest.raises(WorkflowValidationError) as exc:
        Stack().load_workflow(wf)
    assert exc.value.issues[0].path == "steps[0].with.v\udc80 (a key)"


def test_definition_hash_is_defined_for_lone_surrogates() -> None:
    assert len(definition_hash({"name": "\udc80"})) == 64
    assert definition_hash({"name": "é"}) != definition_hash({"name": "\udc80"})


def test_400_mb_workflow_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(WORKFLOW, encoding="utf-8")
    big = tmp_path / "big.yaml"
    with open(big, "wb") as fh:  # sparse: 400 MB on paper, nothing on disk
        fh.truncate(400 * 1000 * 1000)
    result = _flowyard("validate", "big.yaml", cwd=tmp_path, limit=GIB)
    _assert_located_refusal(result, "big.yaml:", "400000000 bytes",
                            "more than the limit of 1048576 (workflows.max_bytes)")
    assert result["peak_kib"] < 300 * 1024, result["peak_kib"]
    result = _flowyard("run", "wf.yaml", "--no-live", "--inputs", "big.yaml", cwd=tmp_path,
                       limit=GIB)
    _assert_located_refusal(result, "big.yaml:", "workflows.max_bytes")


def test_a_pipe_is_read_at_most_max_bytes_plus_one(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    written: list[int] = []

    def feed() -> None:
        try:
            with open(fifo, "wb") as fh:
                for _ in range(64):
                    fh.write(b"#" * 65536)
                    written.append(65536)
        except BrokenPipeError:
            return

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    with pytest.raises(WorkflowValidationError) as exc:
        read_bounded(fifo, ParseLimits(max_bytes=100_000))
    writer.join(timeout=10)
    assert "more than the limit of 100000 (workflows.max_bytes)" in _issue(exc)
    assert sum(written) < 4 * 1024 * 1024


def test_non_utf8_file_is_located(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"name: t\ndescription: \xff\n")
    with pytest.raises(WorkflowValidationError) as exc:
        read_bounded(path)
    assert _issue(exc).startswith(f"{path}:2:14: the file is not valid UTF-8")


def test_text_workflows_get_the_limits_too() -> None:
    with pytest.raises(WorkflowValidationError, match=r"workflows\.max_bytes"):
        NativeLoader(max_bytes=100).load("name: t\n" + "#" * 200 + "\n")
    with pytest.raises(WorkflowValidationError, match=r"workflows\.max_aliases"):
        NativeLoader(max_aliases=2).load("name: &n t\ndescription: [*n, *n, *n]\nsteps: []\n")


# ----------------------------------------------------------------------------- properties

_SCALARS = (st.none() | st.booleans() | st.integers()
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(st.characters(blacklist_categories=())))
_VALUES = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(st.characters(blacklist_categories=()), max_size=5), inner,
                      max_size=4), max_leaves=30)
_NESTED = st.tuples(_VALUES, st.integers(min_value=0, max_value=260)).map(
    lambda pair: _wrap(*pair))


def _wrap(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and (
            math.isclose(a, b) or a == b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k])
                                                                    for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_NESTED)
def test_json_parses_to_an_equal_value_or_a_located_error(value: Any) -> None:
    text = json.dumps(value)
    try:
        parsed = parse_json(text, source="in.json")
    except WorkflowValidationError as exc:
        assert exc.issues and all(i.file == "in.json" for i in exc.issues)
        return
    assert _same(value, parsed)


class _JsonNumberDumper(yaml.SafeDumper):
    """PyYAML's safe dumper that also knows flowyard reads JSON exponent numbers (``0E0``,
    ``1e-05``) as floats, so it quotes strings that look like them. PyYAML's own dumper
    follows YAML 1.1 and writes the string ``"0E0"`` unquoted, which flowyard reads as 0.0:
    the dumper and the loader under test must agree on what a plain scalar means."""


_JsonNumberDumper.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_NESTED, st.sampled_from(["json", "yaml-flow", "yaml-block"]))
def test_yaml_parses_to_an_equal_value_or_a_located_error(value: Any, form: str) -> None:
    try:
        text = (json.dumps(value) if form == "json"
                else yaml.dump(value, Dumper=_JsonNumberDumper,
                               default_flow_style=form == "yaml-flow",
                               allow_unicode=False, width=10**9))
        # no line folding: PyYAML's emitter folds escaped text at deep indents into
        # something its own parser reads back differently (not the parser under test)
    except (yaml.YAMLError, RecursionError):
        return  # PyYAML's emitter cannot write it (its recursion): nothing to parse
    try:
        parsed, _ = parse_yaml(text, source="-i x")
    except WorkflowValidationError as exc:
        assert exc.issues and all(i.file == "-i x" for i in exc.issues)
        return
    assert _same(value, parsed)


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_categories=()), max_size=200)
       | st.text(st.sampled_from("[]{}:,-&*!<>\"'\\ \nab1.#|?%@"), max_size=200))
def test_arbitrary_text_parses_or_is_a_located_error(text: str) -> None:
    for json_only in (False, True):
        try:
            parse_text(text, source="-i x", json_only=json_only)
        except WorkflowValidationError as exc:
            assert exc.issues and all(i.file == "-i x" for i in exc.issues)
