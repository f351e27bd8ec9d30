"""``rag.index`` reports its progress (documents chunked, chunks embedded and written) with the
real chroma retriever and the bundled all-MiniLM-L6-v2."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import flowyard_chroma.plugin as chroma_plugin
import pytest
from flowyard.events import PROGRESS_EVENT
from flowyard.models import Document, Event
from flowyard.stack import Stack
from flowyard_chroma.retriever import ChromaRetriever

TOPICS = ["compilers", "gardening", "volcanoes", "chess", "bread", "tides", "jazz",
          "glaciers", "bees", "satellites", "origami", "lighthouses"]


def _docs() -> list[Document]:
    return [Document(id=f"d{i}", text=f"A short note about {topic}: it is number {i}.",
                     source=f"notes/{topic}.md") for i, topic in enumerate(TOPICS)]


@pytest.mark.anyio
async def test_index_reports_each_phase_up_to_its_total(rag: ChromaRetriever) -> None:
    rag.embed_slice = 5
    calls: list[tuple[str, str, float, float | None]] = []

    def progress(done: float, total: float | None = None, *, unit: str = "items",
                 description: str = "") -> None:
        calls.append((description, unit, done, total))

    counts = await rag.index(_docs(), collection="notes", progress=progress)
    assert counts["added"] == 12 and counts["chunks"] == 12
    phases = list(dict.fromkeys(description for description, *_ in calls))
    assert phases == ["chunking", "embedding", "writing"]
    chunking = [c for c in calls if c[0] == "chunking"]
    assert chunking[-1] == ("chunking", "documents", 12, 12) and len(chunking) == 12
    embedding = [c[2] for c in calls if c[0] == "embedding"]
    assert embedding == [0, 5, 10, 12]  # one report per slice of 5
    assert calls[-1] == ("writing", "chunks", 12, 12)
    # unchanged documents: nothing to chunk or embed, nothing reported
    calls.clear()
    assert (await rag.index(_docs(), collection="notes", progress=progress))["unchanged"] == 12
    assert calls == []


@pytest.mark.anyio
async def test_vectors_do_not_depend_on_progress_reporting(rag: ChromaRetriever) -> None:
    rag.embed_slice = 5
    await rag.index(_docs(), collection="watched", progress=lambda *a, **k: None)
    await rag.index(_docs(), collection="unwatched")
    for query in ("molten rock", "honey", "bishop and knight"):
        watched = await rag.search(query, collection="watched", mode="dense", top_k=4)
        unwatched = await rag.search(query, collection="unwatched", mode="dense", top_k=4)
        assert [(c.id, c.score) for c in watched] == [(c.id, c.score) for c in unwatched]


@pytest.fixture
async def chroma_stack(flowyard_home: Path) -> AsyncIterator[Stack]:
    stack = Stack([("chroma", chroma_plugin)],
                  config={"storage": {"url": "memory://"}, "models": {"default": "fake/echo"}})
    async with stack:
        yield stack


@pytest.mark.anyio
async def test_the_rag_index_step_emits_progress_events(chroma_stack: Stack,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ChromaRetriever, "embed_slice", 4)
    seen: list[Event] = []
    chroma_stack.events.subscribe(seen.append, transient=True)
    workflow = chroma_stack.load_workflow({
        "name": "index-notes",
        "inputs": {"texts": {"type": "array"}},
        "steps": [{"id": "index", "uses": "rag.index",
                   "with": {"collection": "notes", "texts": "{{ inputs.texts }}"}}],
        "outputs": {"chunks": "${index.chunks}"},
    })
    texts = [d.text for d in _docs()]
    result = await chroma_stack.run(workflow, {"texts": texts})
    assert result.ok and result.outputs["chunks"] == 12
    progress = [e for e in seen if e.type == PROGRESS_EVENT]
    assert progress and all(e.step_id == "index" and e.run_id == result.run_id
                            for e in progress)
    by_phase: dict[str, list[dict[str, Any]]] = {}
    for e in progress:
        by_phase.setdefault(e.data["description"], []).append(e.data)
    assert list(by_phase) == ["chunking", "embedding", "writing"]
    assert by_phase["embedding"][0]["done"] == 0
    last = by_phase["embedding"][-1]
    assert (last["done"], last["total"], last["unit"]) == (12, 12, "chunks")
    stored = await chroma_stack.storage.list_events(result.run_id, limit=1000)
    assert not [e for e in stored if e.type == PROGRESS_EVENT]
