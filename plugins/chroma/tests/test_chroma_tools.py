"""The memory and RAG actions: tool contract suites, registration through the plugin, and a
workflow that indexes, retrieves and remembers through ``uses:`` steps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import flowyard_chroma.plugin as chroma_plugin
import pytest
from flowyard.context import ToolContext
from flowyard.errors import ToolInputError
from flowyard.stack import Stack
from flowyard.testing import ToolContract
from flowyard_chroma.memory import ChromaMemoryStore
from flowyard_chroma.retriever import ChromaRetriever
from flowyard_chroma.tools import TOOL_NAMES


@pytest.fixture
async def chroma_stack(flowyard_home: Path) -> AsyncIterator[Stack]:
    """A stack with the chroma plugin; its store lives under the isolated data directory."""
    stack = Stack([("chroma", chroma_plugin)],
                  config={"storage": {"url": "memory://"}, "models": {"default": "fake/echo"}})
    async with stack:
        yield stack


@pytest.fixture
def tool_context(chroma_stack: Stack) -> ToolContext:
    return ToolContext(stack=chroma_stack, run_id="run-1", step_id="remember",
                       step_key="remember", idempotency_key="key-1", workflow_name="wf")


class TestMemoryAddContract(ToolContract):
    @pytest.fixture
    def tool(self, chroma_stack: Stack) -> Any:
        return chroma_stack.tools.get("memory.add")

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"text": "The build cache is purged every night.", "category": "ops",
                "score": 0.7, "metadata": {"team": "infra"}}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"text": "x", "score": "high"}


class TestMemorySearchContract(ToolContract):
    @pytest.fixture
    def tool(self, chroma_stack: Stack) -> Any:
        return chroma_stack.tools.get("memory.search")

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"query": "build cache", "top_k": 3, "filters": {"category": "ops"}}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"top_k": 3}


class TestRagIndexContract(ToolContract):
    @pytest.fixture
    def tool(self, chroma_stack: Stack) -> Any:
        return chroma_stack.tools.get("rag.index")

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"pydoc_topics": ["lambda", "pass"], "collection": "pyref"}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"paths": "not-a-list"}


class TestRagContextContract(ToolContract):
    @pytest.fixture
    def tool(self, chroma_stack: Stack) -> Any:
        return chroma_stack.tools.get("rag.context")

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"query": "anonymous functions", "max_tokens": 200}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"query": "x", "mode": "fuzzy"}


def test_the_plugin_registers_the_store_retriever_and_actions(flowyard_home: Path) -> None:
    stack = Stack([("chroma", chroma_plugin)])
    assert stack.memory_stores.metadata_of("chroma")["default_priority"] == 10
    assert stack.retrievers.metadata_of("chroma")["default_priority"] == 10
    assert isinstance(stack.memory(), ChromaMemoryStore)
    assert isinstance(stack.retriever(), ChromaRetriever)
    assert stack.memory().location == str(flowyard_home / "flowyard-data" / "chroma")
    for name in TOOL_NAMES:
        assert stack.tools.get(name).name == name
    assert {"memory.add", "memory.search", "rag.index", "rag.search", "rag.context"} <= set(
        stack.tools.names())


@pytest.mark.anyio
async def test_memory_add_records_the_source_and_is_idempotent_per_step(
        chroma_stack: Stack, tool_context: ToolContext) -> None:
    add = chroma_stack.tools.get("memory.add")
    first = await add.invoke({"texts": ["Deploys freeze on Fridays.", "Use feature flags."],
                              "namespace": "agent:planner"}, tool_context)
    retried = await add.invoke({"texts": ["Deploys freeze on Fridays.", "Use feature flags."],
                                "namespace": "agent:planner"}, tool_context)
    assert first["ids"] == retried["ids"] and first["count"] == 2
    hits = await chroma_stack.tools.get("memory.search").invoke(
        {"query": "when are deploys frozen", "namespace": "agent:planner", "top_k": 5},
        tool_context)
    assert len(hits) == 2
    assert hits[0]["text"] == "Deploys freeze on Fridays."
    assert hits[0]["source_run"] == "run-1" and hits[0]["source_step"] == "remember"
    with pytest.raises(ToolInputError, match="give 'text' or 'texts'"):
        await add.invoke({}, tool_context)
    with pytest.raises(ToolInputError, match="score must be a number"):
        await add.invoke({"text": "x", "score": 2}, tool_context)
    deleted = await chroma_stack.tools.get("memory.delete").invoke(
        {"ids": first["ids"][:1], "namespace": "agent:planner"}, tool_context)
    assert deleted == {"deleted": 1}


@pytest.mark.anyio
async def test_rag_index_reports_bad_sources(chroma_stack: Stack, tool_context: ToolContext,
                                             tmp_path: Path) -> None:
    index = chroma_stack.tools.get("rag.index")
    with pytest.raises(ToolInputError, match="no documents"):
        await index.invoke({}, tool_context)
    with pytest.raises(ToolInputError, match=r"missing.md: no such file"):
        await index.invoke({"paths": [str(tmp_path / "missing.md")]}, tool_context)
    with pytest.raises(ToolInputError, match="unknown pydoc topic 'nope'"):
        await index.invoke({"pydoc_topics": ["nope"]}, tool_context)
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "a.md").write_text("Invoices are sent on the first working day.")
    (tmp_path / "kb" / "b.txt").write_text("Payroll runs on the 25th.")
    result = await index.invoke({"directory": str(tmp_path / "kb"), "glob": "*.md",
                                 "texts": ["A bare note."],
                                 "documents": [{"id": "n1", "text": "Note one.",
                                                "source": "notes"}]}, tool_context)
    assert result["documents"] == 3 and result["added"] == 3


WORKFLOW = {
    "name": "pyref-qa",
    "inputs": {"question": {"type": "string"}},
    "steps": [
        {"id": "index", "uses": "rag.index",
         "with": {"pydoc_topics": ["lambda", "pass", "break", "continue"],
                  "collection": "pyref"}},
        {"id": "context", "uses": "rag.context", "depends_on": ["index"],
         "with": {"query": "{{ inputs.question }}", "collection": "pyref", "top_k": 3,
                  "max_tokens": 300}},
        {"id": "remember", "uses": "memory.add",
         "with": {"text": "Asked: {{ inputs.question }}", "namespace": "pyref-qa",
                  "metadata": {"sources": "{{ steps.context.output.sources | join(',') }}"}}},
        {"id": "recall", "uses": "memory.search", "depends_on": ["remember"],
         "with": {"query": "{{ inputs.question }}", "namespace": "pyref-qa"}},
    ],
    "outputs": {"sources": "${context.sources}", "recalled": "${recall}",
                "indexed": "${index}"},
}


@pytest.mark.anyio
async def test_a_workflow_indexes_retrieves_and_remembers(chroma_stack: Stack) -> None:
    result = await chroma_stack.run(WORKFLOW, {"question": "How do I write an anonymous "
                                                           "function?"})
    assert result.status == "completed", result
    assert result.outputs["indexed"]["added"] == 4
    assert result.outputs["sources"][0] == "pydoc_data.topics:lambda"
    [memory] = result.outputs["recalled"]
    assert memory["text"] == "Asked: How do I write an anonymous function?"
    assert memory["source_step"] == "remember" and memory["source_run"] == result.run_id
    assert memory["metadata"]["sources"].startswith("pydoc_data.topics:lambda")
    again = await chroma_stack.run(WORKFLOW, {"question": "How do I leave a loop early?"})
    assert again.status == "completed"
    assert again.outputs["indexed"]["unchanged"] == 4
    assert "pydoc_data.topics:break" in again.outputs["sources"]


AGENT_WORKFLOW = {
    "name": "remembering-agent",
    "inputs": {"task": {"type": "string"}},
    "steps": [
        {"id": "helper", "uses": "agent",
         "with": {"prompt": "{{ inputs.task }}", "model": "fake/echo",
                  "memory": {"namespace": "helper", "top_k": 3, "store_answer": True}}},
    ],
    "outputs": {"answer": "${helper.answer}"},
}


@pytest.mark.anyio
async def test_agent_memory_option_uses_the_chroma_store(chroma_stack: Stack) -> None:
    fake = chroma_stack.providers.get("fake")
    first = await chroma_stack.run(AGENT_WORKFLOW, {"task": "Rotate the staging API keys"})
    assert first.status == "completed", first
    store = chroma_stack.memory()
    [stored] = await store.search("staging API keys", namespace="helper", top_k=5)
    assert stored.entry.text.startswith("Q: Rotate the staging API keys")
    assert stored.entry.source_run == first.run_id and stored.entry.source_step == "helper"
    second = await chroma_stack.run(AGENT_WORKFLOW, {"task": "Rotate the production API keys"})
    assert second.status == "completed", second
    system = fake.requests[-1].messages[0]
    assert system.role == "system"
    assert "Relevant memories:" in system.text
    assert "Q: Rotate the staging API keys" in system.text
