"""flowyard-orchestrator-format's own tests, in a venv with only the core and this
distribution: the template rewriting, content sniffing, located errors, the filters, and the
example pipelines run end to end (with stand-in filesystem/shell tools, see conftest.py, and
the fake model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from flowyard import Stack, WorkflowValidationError, parse_yaml
from flowyard_orchestrator_format import OrchestratorLoader, filters, plugin, translate
from flowyard_orchestrator_format.templates import Ref, rewrite_template

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def translated(text: str) -> dict[str, Any]:
    data, locations = parse_yaml(text, path="p.yaml")
    definition, _ = translate(data, locations, "p.yaml")
    return definition


def issues(text: str) -> list[str]:
    with pytest.raises(WorkflowValidationError) as info:
        OrchestratorLoader().load(text, path="p.yaml")
    return [str(issue) for issue in info.value.issues]


# ---------------------------------------------------------------- templates


def test_bare_names_become_inputs_and_step_outputs() -> None:
    definition = translated("""
id: t
parameters:
  out_dir: {type: string, default: out}
steps:
  - id: run
    tool: terminal
    action: execute
    parameters: {command: "ls {{ out_dir }}"}
  - id: gen
    action: generate_text
    parameters:
      prompt: >-
        {{ run.stdout }} {{ run.return_code }} {{ run.result.success }} {{ run }}
        {{ gen_two.result.title | upper }} {{ out_dir | default('x', true) }}
        {% for line in run.stdout.split() %}{{ line }}{{ loop.index }}{% endfor %}
  - id: gen_two
    action: generate-structured
    parameters:
      prompt: hi
      schema: {type: object, properties: {title: {type: string}}}
""")
    prompt = definition["steps"][1]["with"]["prompt"]
    assert prompt == (
        "{{ steps.run.output.stdout }} {{ steps.run.output.exit_code }} "
        "{{ (steps.run.output.exit_code == 0) }} {{ steps.run.output }} "
        "{{ steps.gen_two.output.title | upper }} {{ inputs.out_dir | default('x', true) }} "
        "{% for line in steps.run.output.stdout.split() %}{{ line }}{{ loop.index }}"
        "{% endfor %}")
    assert definition["steps"][0]["with"] == {"command": "ls {{ inputs.out_dir }}",
                                              "shell": True}
    assert definition["steps"][2]["with"]["response_schema"]["type"] == "object"


def test_loop_results_are_reached_by_index_and_star() -> None:
    def resolve(name: str) -> Ref | None:
        if name == "per_item":
            return Ref("steps.per_item.output", item=Ref("", step=lambda e, n: (f"{e}.{n}",
                                                                                  None)))
        return None

    assert rewrite_template("{{ per_item[1].save.path }}", resolve) == \
        "{{ steps.per_item.output[1].save.path }}"
    assert rewrite_template("{{ per_item.*.save.result }}", resolve) == \
        "{{ (steps.per_item.output | map(attribute='save') | list) }}"
    assert rewrite_template("{{ $unknown }} {{ f(x=1) }}", resolve) == \
        "{{ unknown }} {{ f(x=1) }}"


def test_nested_steps_receive_outer_values_as_inputs() -> None:
    definition = translated("""
id: t
parameters: {prefix: p}
steps:
  - id: first
    tool: filesystem
    action: read
    parameters: {path: a.txt}
  - id: each
    for_each: [x, y]
    as: letter
    dependencies: [first]
    steps:
      - id: inner
        tool: filesystem
        action: write
        parameters:
          path: "{{ prefix }}/{{ letter }}-{{ $index }}.txt"
          content: "{{ first.content }}"
        dependencies: [first]
""")
    loop = definition["steps"][1]
    assert loop["uses"] == "workflow" and loop["for_each"] == ["x", "y"]
    assert loop["depends_on"] == ["first"]
    child = loop["with"]["workflow"]
    assert child["steps"][0]["with"] == {
        "path": "{{ inputs.outer_prefix }}/{{ inputs.item }}-{{ inputs.index }}.txt",
        "content": "{{ inputs.outer_first.content }}"}
    assert "depends_on" not in child["steps"][0]
    assert loop["with"]["inputs"]["outer_prefix"] == "{{ inputs.prefix }}"
    assert loop["with"]["inputs"]["outer_first"] == "{{ steps.first.output }}"
    assert loop["with"]["inputs"]["is_last"] == "{{ index == 2 - 1 }}"
    assert child["outputs"] == {"inner": "{{ steps.inner.output }}"}


# ---------------------------------------------------------------- sniffing


@pytest.mark.parametrize(("text", "claimed"), [
    ("id: x\nsteps:\n  - id: a\n    action: generate_text\n    parameters: {prompt: hi}\n",
     True),
    ("name: x\nsteps:\n  - id: a\n    tool: filesystem\n    action: read\n", True),
    ("name: x\nsteps:\n  - id: a\n    uses: echo\n    with: {value: 1}\n", False),
    ("name: x\nsteps:\n  - id: a\n    uses: echo\n    with: {action: 1}\n", False),
    ("steps: [\n", False),
    ("- action: x\n", False),
    ("name: x\nsteps:\n  - id: l\n    for_each: [1]\n    steps:\n      - id: a\n"
     "        action: generate_text\n", True),
])
def test_sniff_claims_orchestrator_pipelines_only(text: str, claimed: bool) -> None:
    assert OrchestratorLoader().sniff(text, "f.yaml") is claimed


# ---------------------------------------------------------------- located errors


def test_unsupported_features_are_located_errors() -> None:
    found = issues("""id: t
steps:
  - id: a
    tool: pdf-compiler
    action: compile
  - id: b
    action: generate_text
    parameters: {prompt: hi, format: json}
    on_success: a
  - id: c
    while: "<AUTO>again?</AUTO> or not"
    steps:
      - id: d
        action: generate_text
        parameters: {prompt: hi}
  - id: e
    tool: filesystem
    action: read
    parameters: {path: x, parse: true}
    max_retries: -1
  - id: f
    action: "Do something clever"
""")
    assert found == [
        "p.yaml:4:11: step 'a': tool 'pdf-compiler' has no flowyard counterpart (supported "
        "tools: filesystem, headless-browser, python-executor, report-generator, terminal, "
        "web-search) (steps[0].tool)",
        "p.yaml:22:13: step 'f': action 'Do something clever' has no flowyard counterpart "
        "(LLM actions: analyze-text, analyze_text, generate, generate-structured, "
        "generate-text, generate_structured, generate_text, summarize_text; tools: "
        "filesystem, headless-browser, python-executor, report-generator, terminal, "
        "web-search) (steps[4].action)",
        "p.yaml:8:30: step 'b': parameter 'format' of action 'generate_text' is not supported "
        "(supported: prompt, model, max_tokens, max_completion_tokens, temperature, system, "
        "system_prompt, top_p, stop, seed, response_format) (steps[1].parameters.format)",
        "p.yaml:9:17: on_success: target 'a' comes before step 'b'; only forward jumps are "
        "supported (flowyard workflows have no cycles) (steps[1].on_success)",
        "p.yaml:11:12: while: an <AUTO> tag must be the whole condition (steps[2].while)",
        "p.yaml:19:27: step 'e': parameter 'parse' of tool 'filesystem' action 'read' is not "
        "supported (supported: path, encoding) (steps[3].parameters.parse)",
        "p.yaml:20:18: max_retries must be a non-negative integer (steps[3].max_retries)",
    ]


def test_unknown_names_are_located_even_in_loop_bodies() -> None:
    assert issues("""id: t
parameters: {n: 1}
steps:
  - id: each
    for_each: [1, 2]
    steps:
      - id: inner
        action: generate_text
        parameters:
          prompt: "{{ n }} {{ $item }} {{ nothing_known }} {{ now() }}"
""") == ["p.yaml:10:19: unknown name 'nothing_known': not a parameter, step or loop "
         "variable here (known: item, index, is_first, is_last, length, inner, each, n, "
         "execution, inputs, output_path, parameters, results, timestamp) "
         "(steps[0].steps[0].parameters.prompt)"]


def test_flowyard_validation_reports_at_the_pipeline_positions() -> None:
    loader = OrchestratorLoader()
    workflow = loader.load("""id: t
parameters:
  n: 2
steps:
  - id: a
    action: generate_text
    parameters:
      prompt: "{{ n }}"
""", path="p.yaml")
    assert workflow.locations.find("steps[0].with.prompt") == (8, 15)
    assert workflow.locations.find("inputs.n") == (3, 6)


def test_duplicate_keys_are_reported_with_the_other_problems() -> None:
    found = issues("id: t\nid: u\nsteps:\n  - id: a\n    tool: nope\n")
    assert any("p.yaml:2:1: duplicate key 'id'" in issue for issue in found), found
    assert any("p.yaml:5:11: step 'a': tool 'nope'" in issue for issue in found), found


# ---------------------------------------------------------------- filters


def test_filters() -> None:
    assert filters.regex_search("order 42 of 7", r"\d+") == "42"
    assert filters.regex_search("abc", r"(b)(c)", 2) == "c"
    assert filters.regex_search("abc", r"z") is None
    assert filters.regex_replace("a-b-c", "-", "+") == "a+b+c"
    assert filters.now().endswith("+00:00")
    assert len(filters.now("%Y")) == 4
    with pytest.raises(ValueError):
        filters.regex_search("x", "a" * 2000)


# ---------------------------------------------------------------- examples end to end


async def run_example(tools: Any, name: str, inputs: dict[str, Any] | None = None) -> Any:
    config = {"models": {"default": "fake/echo"}}
    async with Stack([plugin, tools], config=config) as stack:
        return await stack.run(EXAMPLES / name, inputs or {})


def files(workspace: Path) -> dict[str, str]:
    return {str(p.relative_to(workspace)): p.read_text() for p in sorted(workspace.rglob("*"))
            if p.is_file()}


@pytest.mark.anyio
async def test_files_and_terminal(workspace: Path, stand_in_tools: Any) -> None:
    result = await run_example(stand_in_tools, "files_and_terminal.yaml")
    assert result.status == "completed", result.error
    assert result.outputs == {"report_path": "reports/weekly-notes.md", "lines": 3}
    assert files(workspace)["reports/weekly-notes.md"] == (
        "# Weekly notes\nLines: 3 (exit 0, ok True)\nSize: 17 bytes, written 17\n"
        "First: alpha")


@pytest.mark.anyio
async def test_for_each_conditions_and_loops(workspace: Path, stand_in_tools: Any) -> None:
    result = await run_example(stand_in_tools, "for_each_files.yaml")
    assert result.status == "completed", result.error
    assert result.outputs["contents"] == ["RIVERS first=True last=False of 3 (ready)",
                                          "LAKES first=False last=False of 3 (ready)",
                                          "GLACIERS first=False last=True of 3 (ready)"]
    result = await run_example(stand_in_tools, "conditions.yaml", {"threshold": 9})
    assert {k: s.status for k, s in result.steps.items()} == {
        "measure": "completed", "big_enough": "skipped", "detail": "skipped",
        "quick_path": "skipped", "slow_path": "skipped", "summary": "completed"}
    result = await run_example(stand_in_tools, "loops.yaml")
    assert result.outputs == {"log": "start\ntick 0;tick 1;tick 2;", "lines": 2}
    result = await run_example(stand_in_tools, "single_action_loops.yaml")
    assert result.outputs == {"log": "round 0;round 1;round 2;", "count": 2}
    result = await run_example(stand_in_tools, "nested_loops.yaml")
    assert result.outputs == {"done": ["a done", "b done"], "last": "nested/b-2.txt"}
    assert files(workspace)["nested/b-2.txt"] == "b2 at 1"


@pytest.mark.anyio
async def test_failure_policies(workspace: Path, stand_in_tools: Any) -> None:
    result = await run_example(stand_in_tools, "failures.yaml")
    assert result.status == "failed"                 # on_failure: continue
    assert "required_input" in str(result.error)
    assert result.steps["optional_input"].status == "failed"      # on_failure: skip
    assert result.steps["flaky"].attempts == 2
    assert result.steps["flaky"].output["stdout"] == "recovered\n"
    assert result.steps["report"].status == "completed"
    result = await run_example(stand_in_tools, "fail_fast.yaml")
    assert result.status == "failed"
    assert result.steps["never"].status == "skipped"


@pytest.mark.anyio
async def test_llm_actions_and_structured_output(workspace: Path, stand_in_tools: Any) -> None:
    result = await run_example(stand_in_tools, "llm_actions.yaml")
    assert result.status == "completed", result.error
    assert result.outputs["draft"] == "echo: Write one sentence about tides."
    assert result.steps["maybe_extend"].status == "skipped"
    result = await run_example(stand_in_tools, "auto_everywhere.yaml")
    assert result.status == "completed", result.error
    assert result.outputs["reviewed"] == "echo: Check 1"
    assert (result.steps["refine"].iterations, result.steps["review"].iterations) == (1, 2)
    result = await run_example(stand_in_tools, "structured_report.yaml")
    assert result.outputs == {"facts": {"title": "", "count": 0},
                              "report": "# Facts\n\nTitle: ''; count: 0"}


def test_the_cli_runs_a_pipeline_and_locates_errors(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWYARD_")}
    env.update({"FLOWYARD_DATA_DIR": str(tmp_path / "data"),
                "FLOWYARD_DEFAULT_MODEL": "fake/echo"})

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from flowyard.cli import main; main()", *args],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    pipeline = tmp_path / "ask.yaml"      # llm.chat only: no tool plugin, no router here
    pipeline.write_text("""id: ask
parameters:
  who: {type: string, default: Ada}
steps:
  - id: greet
    action: generate_text
    parameters:
      prompt: "Greet {{ who }} in a <AUTO>pick a tone</AUTO> tone."
outputs:
  greeting: "{{ greet.result }}"
""")
    proc = cli("run", str(pipeline), "--no-live", "--json", "-i", "who=Grace")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["outputs"] == {
        "greeting": "echo: Greet Grace in a echo: pick a tone\n\nAnswer with the value only. "
                    "tone."}
    proc = cli("validate", str(EXAMPLES / "errors" / "unknown_tool.yaml"))
    assert proc.returncode == 2
    assert f"{EXAMPLES}/errors/unknown_tool.yaml:10:11: step 'filter_rows': tool " \
           "'data-processing' has no flowyard counterpart" in proc.stderr


def test_failure_policies_translate_to_flowyard_error_handling() -> None:
    steps = translated("""id: t
steps:
  - id: a
    action: generate_text
    parameters: {prompt: a}
    on_failure: retry
    max_retries: 2
    timeout: 5
  - id: b
    action: generate_text
    parameters: {prompt: b}
    on_failure: continue
  - id: c
    action: generate_text
    parameters: {prompt: c}
    on_failure: skip
  - id: d
    action: generate_text
    parameters: {prompt: d}
    on_failure: fail
    max_retries: 4
""")["steps"]
    assert steps[0]["retry"] == {"attempts": 3, "backoff": 0.5, "multiplier": 2,
                                 "max_backoff": 30, "jitter": 0, "on": ["any"]}
    assert steps[0]["timeout"] == 5
    assert steps[1]["on_error"] == "continue_and_fail"
    assert steps[2]["on_error"] == "continue"
    assert "retry" not in steps[3] and "on_error" not in steps[3]


@pytest.mark.anyio
async def test_skip_alone_lets_the_run_complete(workspace: Path, stand_in_tools: Any) -> None:
    pipeline = workspace.parent / "skip.yaml"
    pipeline.write_text("""id: skip
steps:
  - id: missing
    tool: filesystem
    action: read
    on_failure: skip
    parameters: {path: nowhere.txt}
  - id: after
    tool: filesystem
    action: write
    dependencies: [missing]
    parameters: {path: after.txt, content: "{{ missing.content | default('none', true) }}"}
""")
    config = {"models": {"default": "fake/echo"}}
    async with Stack([plugin, stand_in_tools], config=config) as stack:
        result = await stack.run(pipeline)
    assert result.status == "completed"
    assert result.steps["missing"].status == "failed"
    assert files(workspace) == {"after.txt": "none"}


def test_auto_with_attributes_json_format_and_list_forms() -> None:
    definition = translated("""id: t
inputs:
  - topic: {type: string, default: tides}
  - name: depth
    type: integer
    default: 2
metadata: {owner: someone}
steps:
  - id: summarize
    action: generate_text
    metadata: {note: informational}
    produces: json
    parameters:
      prompt: "{{ topic }} {{ depth }} {{ execution.timestamp | date('%Y') }}"
      model: <AUTO task="summarize">pick a model</AUTO>
      response_format: json_object
  - id: save
    tool: filesystem
    action: write
    parameters: {path: out.json, content: "{{ summarize.result | to_json }}"}
outputs:
  - file: "{{ save.filepath }}"
  - written: "{{ save.size }}"
""")
    assert definition["inputs"] == {"topic": {"type": "string", "default": "tides"},
                                    "depth": {"type": "integer", "default": 2}}
    execution, summarize, _ = definition["steps"]
    assert execution["id"] == "orchestrator-execution"
    assert summarize["with"] == {
        "prompt": "{{ inputs.topic }} {{ inputs.depth }} "
                  "{{ steps[\"orchestrator-execution\"].output.timestamp | date('%Y') }}",
        "model": "auto", "response_schema": {"type": "object"}}
    assert definition["outputs"] == {"file": "{{ steps.save.output.path }}",
                                     "written": "{{ steps.save.output.bytes_written }}"}


@pytest.mark.anyio
async def test_auto_in_a_for_each_action_is_asked_per_item(tmp_path: Path) -> None:
    pipeline = tmp_path / "tones.yaml"
    pipeline.write_text("""id: tones
parameters:
  cities: [Oslo, Lima]
steps:
  - id: describe
    for_each: "{{ cities }}"
    max_parallel: 2
    action: generate_text
    parameters:
      prompt: "Describe {{ $item }} in a <AUTO>pick a tone for {{ $item }}</AUTO> tone"
outputs:
  all: "{{ describe }}"
""")
    async with Stack([plugin], config={"models": {"default": "fake/echo"}}) as stack:
        result = await stack.run(pipeline)
    assert result.status == "completed", result.error
    assert result.outputs["all"] == [
        f"echo: Describe {city} in a echo: pick a tone for {city}\n\nAnswer with the value "
        "only. tone" for city in ("Oslo", "Lima")]
    assert result.steps["describe-auto-1"].output == [
        f"echo: pick a tone for {city}\n\nAnswer with the value only." for city in ("Oslo",
                                                                                  "Lima")]


def test_loop_conditions_combine() -> None:
    steps = translated("""id: t
parameters: {go: true, limit: 3}
steps:
  - id: body
    condition: "{{ go }}"
    while: "{{ $iteration < limit }}"
    until: "{{ work.result == 'done' }}"
    max_iterations: 4
    steps:
      - id: work
        action: generate_text
        parameters: {prompt: "round {{ $iteration }}"}
  - id: again
    action: generate_text
    while: "again.result != 'stop'"
    parameters: {prompt: "round {{ $iteration }}"}
""")["steps"]
    assert steps[0]["when"] == "{{ (inputs.go) and (0 < inputs.limit) }}"
    assert steps[0]["until"] == \
        "{{ not (iteration < inputs.limit) or (output.work == 'done') }}"
    assert steps[0]["max_iterations"] == 4
    assert steps[0]["with"]["inputs"]["iteration"] == "{{ iteration - 1 }}"
    assert steps[1]["until"] == "{{ not (output != 'stop') }}"
    assert "when" not in steps[1]            # it names its own result: no first check
    assert steps[1]["with"]["prompt"] == "round {{ (iteration - 1) }}"
    assert issues("""id: t
steps:
  - id: body
    action: generate_text
    for_each: [1]
    steps:
      - id: work
        action: generate_text
        parameters: {prompt: hi}
""") == ["p.yaml:4:5: step 'body': a step with nested 'steps' has no 'action' (its steps do "
         "the work) (steps[0].action)"]


# ---------------------------------------------------------------- parameter choices, foreach


def test_choices_add_a_check_step_that_every_root_step_waits_for() -> None:
    definition = translated("""id: t
parameters:
  mode: {type: string, default: fast, choices: [fast, "careful \\"x\\""]}
  level: {type: integer, default: 2, choices: [1, 2, true]}
  free: {type: string, default: any}
steps:
  - id: first
    action: generate_text
    parameters: {prompt: "{{ mode }}"}
  - id: second
    action: generate_text
    parameters: {prompt: "{{ first.result }}"}
    dependencies: [first]
  - id: third
    action: generate_text
    parameters: {prompt: "{{ execution.run_id }}"}
""")
    ids = [step["id"] for step in definition["steps"]]
    assert ids == ["orchestrator-execution", "orchestrator-parameters", "first", "second",
                   "third"]
    check = definition["steps"][1]
    assert check["uses"] == "echo"
    assert check["with"]["value"] == {
        "mode": '{{ orchestrator_choice(inputs.mode, ["fast", "careful \\"x\\""], "mode") }}',
        "level": '{{ orchestrator_choice(inputs.level, [1, 2, true], "level") }}'}
    deps = {step["id"]: step.get("depends_on") for step in definition["steps"]}
    assert deps == {"orchestrator-execution": None, "orchestrator-parameters": None,
                    "first": ["orchestrator-parameters"], "second": ["first"],
                    "third": ["orchestrator-parameters"]}
    assert definition["inputs"]["mode"] == {"type": "string", "default": "fast"}


def test_bad_choices_are_located_errors() -> None:
    assert issues("""id: t
parameters:
  a: {type: string, default: slow, choices: [fast, careful]}
  b: {type: string, choices: []}
  c: {type: object, choices: [{x: 1}]}
steps:
  - id: s
    action: generate_text
    parameters: {prompt: "{{ a }} {{ b }} {{ c }}"}
""") == [
        "p.yaml:3:30: the default 'slow' of parameter 'a' is not one of its choices ('fast', "
        "'careful') (parameters.a.default)",
        "p.yaml:4:30: 'choices' of parameter 'b' must be a non-empty list of strings, numbers "
        "or booleans (parameters.b.choices)",
        "p.yaml:5:30: 'choices' of parameter 'c' must be a non-empty list of strings, numbers "
        "or booleans (parameters.c.choices)"]


def test_orchestrator_choice_returns_an_allowed_value_and_names_a_refused_one() -> None:
    assert filters.orchestrator_choice("fast", ["fast", "slow"], "mode") == "fast"
    with pytest.raises(ValueError, match=r"parameter 'mode' is 'quick', not one of its "
                                         r"choices \('fast', 'slow'\)"):
        filters.orchestrator_choice("quick", ["fast", "slow"], "mode")


def test_foreach_and_parallel_are_the_for_each_spellings() -> None:
    definition = translated("""id: t
parameters: {names: [a, b]}
steps:
  - id: one_by_one
    action: generate_text
    foreach: "{{ names }}"
    parallel: false
    parameters: {prompt: "{{ item }}"}
  - id: all_at_once
    action: generate_text
    foreach: "{{ names }}"
    parallel: true
    parameters: {prompt: "{{ $index }}"}
""")
    first, second = definition["steps"]
    assert (first["for_each"], first["max_parallel"]) == ("{{ inputs.names }}", 1)
    assert (second["for_each"], "max_parallel" in second) == ("{{ inputs.names }}", False)
    assert second["with"]["prompt"] == "{{ index }}"
    assert issues("""id: t
steps:
  - id: a
    action: generate_text
    parallel: true
    parameters: {prompt: hi}
  - id: b
    action: generate_text
    foreach: [1]
    for_each: [2]
    parameters: {prompt: hi}
""") == ["p.yaml:5:5: 'parallel' needs 'foreach' (or 'for_each') on the same step "
         "(steps[0].parallel)",
         "p.yaml:9:5: write either 'foreach' or 'for_each', not both (steps[1].foreach)"]


def test_a_step_without_counterpart_is_reported_once_not_at_each_use() -> None:
    assert issues("""id: t
steps:
  - id: crunch
    tool: data-processing
    action: filter
    parameters: {data: x}
  - id: each
    for_each: [1]
    steps:
      - id: judge
        action: validation
        parameters: {data: x}
      - id: say
        action: generate_text
        parameters: {prompt: "{{ judge.result }} {{ crunch.result }}"}
outputs:
  crunched: "{{ crunch.result }}"
""") == [
        "p.yaml:4:11: step 'crunch': tool 'data-processing' has no flowyard counterpart "
        "(supported tools: filesystem, headless-browser, python-executor, report-generator, "
        "terminal, web-search) (steps[0].tool)",
        "p.yaml:11:17: step 'judge': action 'validation' has no flowyard counterpart (LLM "
        "actions: analyze-text, analyze_text, generate, generate-structured, generate-text, "
        "generate_structured, generate_text, summarize_text; tools: filesystem, "
        "headless-browser, python-executor, report-generator, terminal, web-search) "
        "(steps[1].steps[0].action)"]


def test_names_the_orchestrator_leaves_undefined_say_what_to_write() -> None:
    [issue] = issues("""id: t
steps:
  - id: a
    action: generate_text
    parameters: {prompt: "Made {{ current_timestamp }}"}
""")
    assert issue.startswith("p.yaml:5:26: unknown name 'current_timestamp'")
    assert issue.endswith("; the Orchestrator does not define it either (it leaves such a "
                          "template unrendered): for the run's start time write "
                          "execution.timestamp (steps[0].parameters.prompt)")


@pytest.mark.anyio
async def test_choices_are_checked_before_any_step_runs(workspace: Path,
                                                        stand_in_tools: Any) -> None:
    result = await run_example(stand_in_tools, "choices_and_foreach.yaml")
    assert result.status == "completed", result.error
    assert result.outputs == {"written": ["notes/0.txt", "notes/1.txt", "notes/2.txt"],
                              "text": "ALPHABETAGAMMA"}
    result = await run_example(stand_in_tools, "choices_and_foreach.yaml", {"style": "lower"})
    assert result.outputs["text"] == "alphabetagamma"
    for path in ("notes/0.txt", "notes/1.txt", "notes/2.txt"):
        (workspace / path).unlink()
    result = await run_example(stand_in_tools, "choices_and_foreach.yaml", {"style": "title"})
    assert result.status == "failed"
    assert "parameter 'style' is 'title', not one of its choices ('upper', 'lower')" in str(
        result.error)
    assert {k: s.status for k, s in result.steps.items()} == {
        "orchestrator-parameters": "failed", "write_notes": "skipped", "list_notes": "skipped"}
    assert files(workspace) == {}


def test_parameters_timestamp_and_max_completion_tokens() -> None:
    definition = translated("""id: t
parameters:
  topic: {type: string, default: tides}
steps:
  - id: ask
    action: generate_text
    parameters:
      prompt: "{{ parameters.topic }} at {{ timestamp }} ({{ parameters | length }})"
      max_completion_tokens: 50
  - id: each
    for_each: [1, 2]
    add_completion_task: true
    steps:
      - id: inner
        action: generate_text
        parameters: {prompt: "{{ parameters.topic }} {{ timestamp }} {{ item }}"}
""")
    execution, ask, each = definition["steps"]
    assert execution["id"] == "orchestrator-execution"
    assert ask["with"] == {
        "prompt": "{{ inputs.topic }} at {{ steps[\"orchestrator-execution\"].output.timestamp }}"
                  " ({{ inputs | length }})",
        "max_tokens": 50}
    assert each["with"]["inputs"]["outer_parameters"] == "{{ inputs }}"
    assert each["with"]["inputs"]["outer_timestamp"] == (
        "{{ steps[\"orchestrator-execution\"].output.timestamp }}")
    assert issues("""id: t
steps:
  - id: a
    action: generate_text
    add_completion_task: true
    parameters: {prompt: hi, max_tokens: 5, max_completion_tokens: 6}
""") == ["p.yaml:5:5: 'add_completion_task' needs 'for_each' on the same step "
         "(steps[0].add_completion_task)",
         "p.yaml:6:45: step 'a': write either 'max_tokens' or 'max_completion_tokens', not "
         "both (steps[0].parameters.max_completion_tokens)"]


def test_an_undeclared_output_path_is_the_run_scripts_required_input() -> None:
    definition = translated("""id: t
steps:
  - id: save
    tool: filesystem
    action: write
    parameters: {path: "{{ output_path }}/a.txt", content: hi}
""")
    assert definition["inputs"] == {"output_path": {
        "type": "string",
        "description": "the output directory (the Orchestrator's run_pipeline.py -o)"}}
    assert definition["steps"][0]["with"]["path"] == "{{ inputs.output_path }}/a.txt"
    declared = translated("""id: t
parameters:
  output_path: {type: string, default: out}
steps:
  - id: save
    tool: filesystem
    action: write
    parameters: {path: "{{ output_path }}/a.txt", content: hi}
""")
    assert declared["inputs"] == {"output_path": {"type": "string", "default": "out"}}


@pytest.mark.anyio
async def test_output_path_is_passed_like_the_run_scripts_o_option(
        workspace: Path, stand_in_tools: Any) -> None:
    pipeline = workspace.parent / "save.yaml"
    pipeline.write_text("""id: t
steps:
  - id: save
    tool: filesystem
    action: write
    parameters: {path: "{{ output_path }}/a.txt", content: "at {{ output_path }}"}
""")
    async with Stack([plugin, stand_in_tools], config={"models": {"default": "fake/echo"}}
                     ) as stack:
        result = await stack.run(pipeline, {"output_path": "out"})
        assert result.status == "completed", result.error
        assert files(workspace) == {"out/a.txt": "at out"}
        with pytest.raises(WorkflowValidationError, match="missing required input 'output_path'"):
            await stack.run(pipeline, {})


def test_the_filesystem_action_may_be_its_action_parameter() -> None:
    definition = translated("""id: t
steps:
  - id: save
    tool: filesystem
    action: execute
    parameters: {action: write, path: a.txt, content: hi}
  - id: look
    tool: filesystem
    parameters: {action: list, path: .}
  - id: named
    action: filesystem
    parameters: {action: read, path: a.txt}
""")
    save, look, named = definition["steps"]
    assert (named["uses"], named["with"]) == ("filesystem.read", {"path": "a.txt"})
    assert (save["uses"], save["with"]) == ("filesystem.write", {"path": "a.txt",
                                                                 "content": "hi"})
    assert (look["uses"], look["with"]) == ("filesystem.list", {"path": "."})
    [issue] = issues("""id: t
steps:
  - id: save
    tool: filesystem
    action: execute
    parameters: {action: shred, path: a.txt}
""")
    assert issue.startswith("p.yaml:5:13: step 'save': tool 'filesystem' has no action "
                            "'execute'")


def test_bare_model_names_get_their_provider_or_a_located_error() -> None:
    definition = translated("""id: t
steps:
  - id: a
    action: generate_text
    parameters: {prompt: hi, model: claude-sonnet-4-20250514}
  - id: b
    action: generate_text
    parameters: {prompt: hi, model: gpt-4o-mini}
  - id: c
    action: generate_text
    parameters: {prompt: hi, model: o3-mini}
  - id: d
    action: generate_text
    parameters: {prompt: hi, model: ollama/llama3.2}
""")
    assert [step["with"]["model"] for step in definition["steps"]] == [
        "anthropic/claude-sonnet-4-20250514", "openai/gpt-4o-mini", "openai/o3-mini",
        "ollama/llama3.2"]
    assert issues("""id: t
steps:
  - id: a
    action: generate_text
    parameters: {prompt: hi, model: "llama3.2:1b"}
""") == ["p.yaml:5:37: model 'llama3.2:1b' names no provider: write provider/model (for "
         "example ollama/llama3.2:1b); the Orchestrator looks bare names up in its own model "
         "registry (steps[0].parameters.model)"]
