"""Gleitzeit's Python convenience API (seed 004) on a flowyard stack, with memory persistence
(the core alone) and sqlite persistence (flowyard-sql, when installed)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import flowyard
import pytest
from flowyard_gleitzeit_format.client import (
    GleitzeitClient,
    InvalidWorkflowError,
    TaskResult,
    batch_process,
    chat,
    run_workflow,
    vision,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CONFIG = {"models": {"default": "fake/echo"}, "gleitzeit": {"provider": ""}}


@pytest.fixture
def examples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flowyard_home: Path) -> Path:
    target = tmp_path / "examples"
    shutil.copytree(EXAMPLES, target)
    monkeypatch.chdir(target)
    return target


@pytest.mark.anyio
async def test_chat_and_vision_with_memory_persistence(examples: Path) -> None:
    async with GleitzeitClient(persistence="memory", config=CONFIG) as client:
        assert await client.chat("What is the capital of France?") == \
            "echo: What is the capital of France?"
        # the prompt is data: Gleitzeit and Jinja syntax reach the model unchanged
        assert await client.chat("${x.response} {{ 7*7 }}", system="Be brief",
                                 temperature=0.3, max_tokens=20) == \
            "echo: ${x.response} {{ 7*7 }}"
        assert await client.vision("images/red.png", "What colour?") == \
            "echo: What colour? [1 image]"
        runs = await client.list_workflows()
        assert [r.workflow_name for r in runs] == ["gleitzeit-vision", "gleitzeit-chat",
                                                   "gleitzeit-chat"]
        status = await client.get_workflow_status(runs[0].id)
        assert status is not None and status.status == "completed"
        assert await client.get_workflow_status("no-such-run") is None


@pytest.mark.anyio
async def test_run_workflow_from_a_file_a_dict_and_create_workflow(examples: Path) -> None:
    async with GleitzeitClient(persistence="memory", config=CONFIG) as client:
        results = await client.run_workflow("chat_chain.yaml")
        assert list(results) == ["Pick Topic", "write_article", "title"]
        assert results["Pick Topic"] == TaskResult(
            "Pick Topic", "completed", {"response": "echo: Pick a topic about rivers"})
        assert results["write_article"].result["response"].startswith(
            "echo: Write about echo: Pick a topic")

        workflow = await client.create_workflow("Document Analysis", [
            {"id": "summarize", "method": "llm/chat",
             "params": {"model": "llama3.2:latest",
                        "messages": [{"role": "user", "content": "Summarize: notes"}]}},
            {"id": "extract_entities", "method": "llm/chat", "dependencies": ["summarize"],
             "params": {"messages": [{"role": "user",
                                      "content": "Entities of: ${summarize.response}"}]}}])
        results = await client.run_workflow(workflow)
        assert results["extract_entities"].result["response"] == \
            "echo: Entities of: echo: Summarize: notes"
        assert await client.get_task_result("extract_entities") == \
            "echo: Entities of: echo: Summarize: notes"

        results = await client.run_workflow({"name": "Simple Workflow", "tasks": [
            {"id": "task1", "method": "llm/chat",
             "params": {"messages": [{"role": "user", "content": "Hello"}]}}]})
        assert results["task1"].result == {"response": "echo: Hello"}

        batch = await client.run_workflow("batch_text.yaml")
        assert batch["batch"].status == "completed" and len(batch["batch"].result) == 2


@pytest.mark.anyio
async def test_run_workflow_errors(examples: Path) -> None:
    async with GleitzeitClient(persistence="memory", config=CONFIG) as client:
        with pytest.raises(FileNotFoundError):
            await client.run_workflow("non_existent.yaml")
        (examples / "broken.yaml").write_text(
            "name: b\ntasks:\n  - id: a\n    method: mcp/tool.add\n    params: {a: 1}\n")
        with pytest.raises(InvalidWorkflowError) as exc:
            await client.run_workflow("broken.yaml")
        assert isinstance(exc.value, ValueError)
        [issue] = exc.value.issues
        assert (Path(issue.file).name, issue.line, issue.column) == ("broken.yaml", 4, 13)
        with pytest.raises(InvalidWorkflowError, match="unknown task 'nope'"):
            await client.create_workflow("x", [{"id": "a", "method": "llm/chat",
                                               "dependencies": ["nope"],
                                               "params": {"prompt": "x"}}])


@pytest.mark.anyio
async def test_batch_process_and_batch_chat(examples: Path) -> None:
    async with GleitzeitClient(persistence="memory", config=CONFIG) as client:
        results = await client.batch_process(directory="documents", pattern="*.txt",
                                             prompt="Summarize this document")
        assert (results["total_files"], results["successful"], results["failed"]) == (2, 2, 0)
        first = results["file_results"][0]
        assert first["file_path"] == "documents/meeting_notes.txt"
        assert first["result"] == ("echo: Summarize this document\n\nFile content from "
                                   "documents/meeting_notes.txt:\nMeeting on Monday: ship the "
                                   "loader, review the docs.\n")
        images = await client.batch_process(files=["images/red.png", "images/blue.png"],
                                            method="llm/vision", prompt="Describe")
        assert [r["result"] for r in images["file_results"]] == ["echo: Describe [1 image]"] * 2
        summary = await client.batch_chat("documents", pattern="*.md", prompt="Key points")
        assert summary["total_files"] == 1 and summary["successful"] == 1
        # one failing file does not stop the others
        mixed = await client.batch_process(files=["images/notes.txt", "images/red.png"],
                                           method="llm/vision", prompt="Describe")
        assert (mixed["successful"], mixed["failed"]) == (1, 1)
        bad, good = mixed["file_results"]
        assert bad["status"] == "failed" and "notes.txt" in bad["error"]
        assert good == {"file_path": "images/red.png", "status": "completed",
                        "result": "echo: Describe [1 image]", "error": None}
        with pytest.raises(ValueError, match="no flowyard counterpart"):
            await client.batch_process(directory="documents", method="python/execute")
        with pytest.raises(FileNotFoundError):
            await client.batch_process(directory="nowhere")


@pytest.mark.anyio
async def test_one_off_functions(examples: Path) -> None:
    assert await chat("Hello, world!", persistence="memory", config=CONFIG) == \
        "echo: Hello, world!"
    assert await vision("images/blue.png", "What is this?", persistence="memory",
                        config=CONFIG) == "echo: What is this? [1 image]"
    results = await run_workflow("vision.yaml", persistence="memory", config=CONFIG)
    assert results["analyze-file"].result == {"response": "echo: What colour is this? [1 image]"}
    summary = await batch_process("documents", "*.txt", "Summarize", persistence="memory",
                                  config=CONFIG)
    assert summary["total_files"] == 2 and summary["failed"] == 0


@pytest.mark.anyio
async def test_persistence_options(examples: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Redis"):
        GleitzeitClient(persistence="redis")
    with pytest.raises(ValueError, match="unknown persistence"):
        GleitzeitClient(persistence="files")
    db = tmp_path / "gz" / "gleitzeit.db"
    client = GleitzeitClient(persistence="sqlite", db_path=str(db), config=CONFIG)
    if importlib.util.find_spec("flowyard_sql") is None:
        with pytest.raises(RuntimeError, match="flowyard-sql"):
            await client.initialize()
        return
    async with client:
        assert await client.chat("stored") == "echo: stored"
    assert db.is_file()
    async with GleitzeitClient(persistence="sqlite", db_path=str(db), config=CONFIG) as again:
        assert [r.workflow_name for r in await again.list_workflows()] == ["gleitzeit-chat"]


@pytest.mark.anyio
async def test_execute_python_needs_flowyard_exec(examples: Path) -> None:
    # without flowyard-exec (disabled here when it is installed; check-dists has it not at
    # all); tests/e2e/test_gleitzeit_format.py runs execute_python with it
    config = {**CONFIG, "plugins": {"disabled": ["exec"]}}
    async with GleitzeitClient(persistence="memory", config=config) as client:
        assert "python.run" not in client.stack.tools.names()
        with pytest.raises(RuntimeError, match="flowyard-exec"):
            await client.execute_python("scripts/generate_numbers.py", {"count": 2})


def test_the_client_needs_initializing() -> None:
    with pytest.raises(RuntimeError, match="not initialized"):
        GleitzeitClient(persistence="memory").stack  # noqa: B018


def test_the_installed_entry_point_loads_the_plugin(flowyard_home: Path) -> None:
    stack = flowyard.Stack.default()
    [status] = [s for s in stack.plugin_report if s.name == "gleitzeit"]
    assert status.status == "loaded", status.error
    assert stack.tools.plugin_of("gleitzeit.files") == "gleitzeit"
    assert "gleitzeit" in stack.loaders.names()
