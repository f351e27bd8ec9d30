"""The gleitzeit loader and its translation, through flowyard's public API: the stack is built
with this plugin only (no discovery), so the results do not depend on what else is installed.
They run in a venv that has only the core and this distribution."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import flowyard
import pytest
from flowyard.testing import ToolContract
from flowyard_gleitzeit_format import GleitzeitLoader, Settings, plugin, sniff, translate
from flowyard_gleitzeit_format.files import FilesTool

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONFIG = {"models": {"default": "fake/echo"}, "gleitzeit": {"provider": ""},
          "storage": {"url": "memory://"}}


def stack(**config: Any) -> flowyard.Stack:
    return flowyard.Stack(plugins=[("gleitzeit", plugin)], config={**CONFIG, **config})


def write(tmp_path: Path, text: str, name: str = "wf.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def issues_of(exc: pytest.ExceptionInfo[flowyard.WorkflowValidationError]) -> list[str]:
    return [f"{Path(i.file).name}:{i.line}:{i.column}: {i.message}" for i in exc.value.issues]


@pytest.fixture
def examples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the examples folder, made the working directory (Gleitzeit's paths are
    relative to it)."""
    target = tmp_path / "examples"
    shutil.copytree(EXAMPLES, target)
    monkeypatch.chdir(target)
    return target


class TestFilesToolContract(ToolContract):
    @pytest.fixture
    def tool(self, tmp_path: Path) -> Any:
        (tmp_path / "a.txt").write_text("alpha")
        return FilesTool(root=str(tmp_path))

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"directory": ".", "pattern": "*.txt", "read": True}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"pattern": 3}


# ---------------------------------------------------------------------- sniffing


def test_sniff_claims_gleitzeit_files_and_leaves_native_ones() -> None:
    assert sniff("name: x\ntasks:\n  - method: llm/chat\n")
    assert sniff("name: x\ntype: batch\nbatch: {directory: d}\ntemplate: {method: llm/chat}\n")
    assert sniff('{"name": "x", "tasks": [{"method": "llm/chat"}]}', "wf.json")
    assert sniff("name: x\ntasks: [{name: a, method: llm/chat, params: {prompt: hi}}]\n")
    assert sniff('{"name": "x", "tasks": [{"method": "llm/chat"}]}', "wf.yaml")
    assert not sniff("name: x\nsteps:\n  - id: a\n    uses: echo\n")
    assert not sniff('{"name": "x", "steps": [{"id": "a", "uses": "echo"}]}', "wf.json")
    # a native workflow whose step arguments mention 'tasks' and 'method' stays native
    assert not sniff("name: x\nsteps:\n  - id: a\n    uses: echo\n    with:\n"
                     "      value: {tasks: [], method: m}\n")
    for example in EXAMPLES.glob("*.yaml"):
        assert sniff(example.read_text(), str(example)), example


def test_native_files_still_load_natively_and_gleitzeit_files_by_content(tmp_path: Path) -> None:
    native = write(tmp_path, "name: n\nsteps:\n  - id: a\n    uses: echo\n    with: {value: 1}\n",
                   "native.yaml")
    gleitzeit = write(tmp_path, "name: g\ntasks:\n  - id: a\n    method: llm/chat\n"
                      "    params: {prompt: hi}\n", "g.yaml")
    s = stack()
    assert [st.uses for st in s.load_workflow(native).steps] == ["echo"]
    assert [st.uses for st in s.load_workflow(gleitzeit).steps] == ["llm.chat"]
    with pytest.raises(flowyard.WorkflowValidationError) as exc:
        s.load_workflow(native, format="gleitzeit")
    assert "native.yaml:1:1: a Gleitzeit workflow needs 'tasks' (or type: batch)" in \
        issues_of(exc)


# ---------------------------------------------------------------------- translation


def test_tasks_become_steps_with_dependencies_priorities_retry_and_timeouts(
        examples: Path) -> None:
    workflow = stack().load_workflow(examples / "chat_chain.yaml")
    assert workflow.name == "Topic Chain" and workflow.timeout == 120
    by_id = {s.id: s for s in workflow.steps}
    assert list(by_id) == ["Pick_Topic", "write_article", "title"]
    assert [by_id[s].priority for s in by_id] == [10, 0, -10]    # high, 2 (normal), "low"
    assert by_id["write_article"].depends_on == ["Pick_Topic"]
    assert set(by_id["title"].depends_on) == {"write_article", "Pick_Topic"}
    assert by_id["write_article"].timeout == 30
    retry = by_id["write_article"].retry
    assert (retry.attempts, retry.backoff, retry.multiplier, retry.max_backoff, retry.jitter) \
        == (3, 0.5, 2.0, 5, 0)
    assert by_id["write_article"].with_["temperature"] == 0.3


def test_substitution_rules_whole_string_keeps_type_embedded_is_text() -> None:
    result = translate({"name": "subst", "tasks": [
        {"id": "gen", "method": "python/execute", "params": {"code": "result = {'n': [1]}"}},
        {"id": "talk", "method": "llm/chat", "params": {"prompt": "hi"}},
        {"id": "use", "method": "python/execute", "dependencies": ["gen", "talk"], "params": {
            "code": "x = ${gen.result.n}\nd = {'k': 1}",
            "context": {"whole": "${gen.result.n}", "first": "${gen.n[0]}",
                        "text": "n=${gen.result.n}", "answer": "${talk.response}",
                        "stdout": "${gen.stdout}", "bare": "${gen}"}}}]})
    use = result.definition["steps"][2]["with"]
    context = use["context"]
    assert context["whole"] == '{{ steps["gen"].output["result"]["n"] }}'
    assert context["first"] == '{{ steps["gen"].output["result"]["n"][0] }}'
    assert context["text"] == 'n={{ (steps["gen"].output["result"]["n"]) | string }}'
    assert context["answer"] == '{{ steps["talk"].output }}'
    assert context["stdout"] == '{{ steps["gen"].output["stdout"] }}'
    assert context["bare"] == '{{ steps["gen"].output["result"] }}'
    # literal braces of the code are protected from flowyard's template syntax
    assert use["code"] == ('x = {{ (steps["gen"].output["result"]["n"]) | string }}'
                           "{% raw %}\nd = {'k': 1}{% endraw %}")


@pytest.mark.anyio
async def test_literal_template_syntax_reaches_the_model_unchanged(tmp_path: Path) -> None:
    path = write(tmp_path, "name: lit\ntasks:\n  - id: a\n    method: llm/chat\n"
                 "    params:\n      prompt: 'keep {{ 7*7 }} and {% if x %} and {# c #}'\n")
    async with stack() as s:
        result = await s.run(path)
    assert result.ok, result.error
    assert result.outputs == {"a": "echo: keep {{ 7*7 }} and {% if x %} and {# c #}"}


def test_model_names_map_to_the_configured_provider() -> None:
    task = {"name": "t", "tasks": [{"id": "a", "method": "llm/chat",
                                    "params": {"model": "llama3.2:latest", "prompt": "x"}}]}

    def model(settings: Settings) -> Any:
        return translate(task, settings=settings).definition["steps"][0]["with"].get("model")

    assert model(Settings()) == "ollama/llama3.2:latest"
    assert model(Settings(provider="")) is None
    assert model(Settings(models={"llama3.2:latest": "fake/echo"})) == "fake/echo"
    with pytest.raises(flowyard.ConfigError, match="unknown key"):
        Settings.from_config({"provder": "x"})


def test_file_path_and_batch_read_files_at_run_time() -> None:
    result = translate({"name": "b", "type": "batch",
                        "batch": {"directory": "docs", "pattern": "*.md"},
                        "template": {"method": "llm/chat", "prompt": "Sum up"}})
    files, batch = result.definition["steps"]
    assert files == {"id": "batch_files", "uses": "gleitzeit.files",
                     "with": {"directory": "docs", "pattern": "*.md", "read": True}}
    assert batch["for_each"] == "${batch_files}"
    assert batch["with"]["prompt"] == ("Sum up\n\nFile content from {{ item.path }}:\n"
                                       "{{ item.content }}")


# ---------------------------------------------------------------------- runs


@pytest.mark.anyio
async def test_retry_runs_max_attempts_then_fails(tmp_path: Path) -> None:
    path = write(tmp_path, """name: retrying
tasks:
  - id: broken
    method: llm/chat
    retry: {max_attempts: 2, backoff_strategy: fixed, base_delay: 0.01, jitter: false}
    params: {model: fake/no-such-model, prompt: hi}
""")
    async with stack() as s:
        result = await s.run(path)
    assert result.status == "failed"
    assert result.steps["broken"].attempts == 2


@pytest.mark.anyio
async def test_a_batch_over_a_missing_directory_fails_at_run_time(examples: Path) -> None:
    path = write(examples, "name: b\ntype: batch\nbatch: {directory: nowhere, pattern: '*'}\n"
                 "template: {method: llm/chat, prompt: x}\n", "missing.yaml")
    async with stack() as s:
        result = await s.run(path)
    assert result.status == "failed"
    assert "directory not found: 'nowhere'" in result.steps["batch_files"].error


@pytest.mark.anyio
async def test_files_outside_the_root_are_refused(tmp_path: Path, tool_context: Any) -> None:
    (tmp_path / "inside").mkdir()
    tool = FilesTool(root=str(tmp_path / "inside"))
    with pytest.raises(flowyard.ToolInputError, match="outside the root"):
        await tool.invoke({"paths": ["../secret.txt"]}, tool_context)


def test_python_tasks_need_the_python_tool_of_flowyard_exec(examples: Path) -> None:
    with pytest.raises(flowyard.WorkflowValidationError) as exc:
        stack().load_workflow(examples / "python_pipeline.yaml")
    assert issues_of(exc) == [
        f"python_pipeline.yaml:{line}:13: unknown action 'python.run' in step '{name}'"
        for line, name in ((12, "generate_data"), (21, "calculate_stats"))]


# ---------------------------------------------------------------------- errors


BAD = """name: bad
tasks:
  - name: echo
    method: mcp/tool.echo
    params: {message: hi}
  - name: emb
    method: llm/embeddings
    params: {text: x}
  - name: a
    method: llm/chat
    priority: critical
    retry: {max_attempts: 2, backoff_strategy: linear}
    dependencies: [nope]
    params:
      modell: x
      messages:
        - role: user
          content: "${missing.response} and ${a2.model}"
  - name: a2
    method: llm/chat
    protocol: python/v1
    params: {prompt: hi, temperature: 5}
  - id: p
    method: python/execute
    params: {code: "x=1", execution_mode: local}
  - id: q
    method: llm/chat
    params: {prompt: "${p.response}"}
"""


def test_every_problem_is_reported_at_its_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, BAD, "bad.yaml")
    with pytest.raises(flowyard.WorkflowValidationError) as exc:
        stack().load_workflow(path)
    got = issues_of(exc)
    expected = [
        "bad.yaml:4:13: method 'mcp/tool.echo' names no MCP server",
        "bad.yaml:7:13: method 'llm/embeddings' has no flowyard counterpart",
        "bad.yaml:13:20: task depends on unknown task 'nope'",
        "bad.yaml:11:15: priority 'critical' is not a Gleitzeit priority",
        "bad.yaml:12:48: retry backoff_strategy 'linear' has no flowyard counterpart",
        "bad.yaml:15:7: parameter 'modell' of llm/chat has no flowyard counterpart",
        "bad.yaml:18:20: reference ${missing.response} names unknown task 'missing'",
        "bad.yaml:18:20: reference ${a2.model}: an LLM task's result is its text",
        "bad.yaml:21:15: protocol 'python/v1' does not serve method 'llm/chat'",
        "bad.yaml:25:27: parameter 'execution_mode' of python/execute has no flowyard "
        "counterpart",
        "bad.yaml:28:22: reference ${p.response}: a python/execute task has no 'response'",
    ]
    assert len(got) == len(expected), got
    for line, start in zip(got, expected, strict=True):
        assert line.startswith(start), (line, start)


def test_problems_found_by_flowyard_validation_point_into_the_gleitzeit_file(
        tmp_path: Path) -> None:
    path = write(tmp_path, "name: late\ntasks:\n  - name: a\n    method: llm/chat\n"
                 "    params:\n      temperature: 5\n      prompt: hi\n", "late.yaml")
    with pytest.raises(flowyard.WorkflowValidationError) as exc:
        stack().load_workflow(path)
    assert issues_of(exc) == ["late.yaml:6:20: invalid arguments for 'llm.chat': 5 is greater "
                              "than the maximum of 2"]


def test_duplicate_keys_are_reported_with_the_other_problems(tmp_path: Path) -> None:
    path = write(tmp_path, "name: dup\ntasks:\n  - id: a\n    method: llm/chat\n"
                 "    method: llm/vision\n    params: {prompt: x}\n  - id: b\n"
                 "    method: shell/run\n", "dup.yaml")
    with pytest.raises(flowyard.WorkflowValidationError) as exc:
        GleitzeitLoader().load(path.read_text(), path=str(path))
    got = issues_of(exc)
    assert got[0].startswith("dup.yaml:5:5: duplicate key 'method'")
    assert got[1].startswith("dup.yaml:8:13: method 'shell/run' has no flowyard counterpart")


@pytest.mark.anyio
async def test_json_gleitzeit_files_run_too(tmp_path: Path) -> None:
    path = write(tmp_path, '{"name": "json flow", "tasks": [\n'
                 ' {"id": "a", "method": "llm/chat", "params": {"prompt": "hi"}},\n'
                 ' {"id": "b", "method": "llm/chat", "dependencies": ["a"],\n'
                 '  "params": {"prompt": "${a.response}!", "temperature": 9}}]}\n', "wf.json")
    with pytest.raises(flowyard.WorkflowValidationError) as exc:
        stack().load_workflow(path)
    assert issues_of(exc) == ["wf.json:4:57: invalid arguments for 'llm.chat': 9 is greater "
                              "than the maximum of 2"]
    path.write_text(path.read_text().replace('"temperature": 9', '"temperature": 1'))
    async with stack() as s:
        result = await s.run(path)
    assert result.outputs == {"a": "echo: hi", "b": "echo: echo: hi!"}


def test_retry_aliases_max_parallel_tasks_and_informational_keys(tmp_path: Path) -> None:
    path = write(tmp_path, """name: "Test LLM Retry Workflow"
max_parallel_tasks: 2
tags: {team: docs}
providers: [ollama]
metadata: {owner: me}
tasks:
  - name: "llm_with_retry"
    method: "llm/chat"
    description: "retried"
    tags: {kind: llm}
    retry_config:
      max_attempts: 3
      initial_delay: 2
      backoff_multiplier: 1.5
      jitter: false
    params:
      messages:
        - role: "user"
          content: "Test"
""")
    workflow = stack().load_workflow(path)
    assert workflow.max_concurrency == 2
    retry = workflow.steps[0].retry
    assert (retry.attempts, retry.backoff, retry.multiplier, retry.jitter) == (3, 2, 1.5, 0)


def test_batch_template_step_keys_and_references_to_refused_tasks() -> None:
    result = translate({"name": "b", "type": "batch", "batch": {"directory": "d"},
                        "template": {"method": "llm/chat", "prompt": "x", "timeout": 30,
                                     "priority": "low",
                                     "retry": {"max_attempts": 2, "jitter": False}}})
    batch = result.definition["steps"][1]
    assert (batch["timeout"], batch["priority"], batch["retry"]["attempts"]) == (30, -10, 2)
    assert set(batch["with"]) == {"prompt"}
    with pytest.raises(flowyard.WorkflowValidationError) as exc:
        translate({"name": "m", "tasks": [
            {"name": "Echo Test", "method": "mcp/tool.echo", "params": {"message": "hi"}},
            {"name": "after", "method": "llm/chat", "dependencies": ["Echo Test"],
             "params": {"prompt": "Echo said: ${echo_test.response}"}}]})
    assert [i.message.split(":")[0] for i in exc.value.issues] == [
        "method 'mcp/tool.echo' names no MCP server"]
