"""Memory store behaviour beyond the contract: persistence, filters, consolidation details,
validation, embedding-model guards and provider embeddings."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flowyard.config import Config
from flowyard.errors import ConfigError
from flowyard.models import MemoryEntry
from flowyard.stack import Stack
from flowyard_chroma import plugin as chroma_plugin
from flowyard_chroma.memory import ChromaMemoryStore, build_where

pytestmark = pytest.mark.anyio

FACTS = [
    "The nightly backup job copies the orders database to cold storage at 02:00 UTC.",
    "Bob wants pull requests to be squashed before merging.",
    "The frontend is built with Vite and deployed to the CDN on every tag.",
    "Use pandas read_csv with dtype=str to keep leading zeros in postcodes.",
]


async def test_entries_survive_a_new_store_on_the_same_directory(chroma_config: Config
                                                                 ) -> None:
    first = ChromaMemoryStore(chroma_config)
    entry = MemoryEntry(text=FACTS[3], namespace="agent:coder", category="lesson", score=0.9,
                        metadata={"lang": "python", "stars": 3, "tags": ["csv", "pandas"]},
                        source_run="run-1", source_step="step-a")
    await first.add([entry])
    second = ChromaMemoryStore(chroma_config)
    hits = await second.search("keep leading zeros when reading CSV", namespace="agent:coder",
                               top_k=1)
    assert len(hits) == 1
    got = hits[0].entry
    assert got == entry
    assert 0.3 < hits[0].score <= 1.0
    assert await second.namespaces() == ["agent:coder"]
    assert await second.count(namespace="agent:coder") == 1


async def test_add_with_an_existing_id_replaces_the_entry(store: ChromaMemoryStore) -> None:
    entry = MemoryEntry(text=FACTS[0], id="fixed")
    await store.add([entry])
    await store.add([MemoryEntry(text=FACTS[1], id="fixed")])
    assert await store.count() == 1
    assert [e.text for e in await store.get(["fixed"])] == [FACTS[1]]


async def test_filter_operators_lists_and_entry_fields(store: ChromaMemoryStore) -> None:
    now = time.time()
    await store.add([
        MemoryEntry(text=FACTS[0], category="ops", score=0.9, metadata={"prio": 1},
                    source_run="r1", created_at=now - 10),
        MemoryEntry(text=FACTS[1], category="people", score=0.2, metadata={"prio": 5},
                    source_run="r2", created_at=now - 5),
        MemoryEntry(text=FACTS[2], category="ops", score=0.6, metadata={"prio": 3},
                    source_run="r2", created_at=now),
    ])
    query = "deployment and backups"

    async def texts(**filters: Any) -> set[str]:
        return {h.entry.text for h in await store.search(query, top_k=10, filters=filters)}

    assert await texts(prio={"$gte": 3}) == {FACTS[1], FACTS[2]}
    assert await texts(category=["people", "nothing"]) == {FACTS[1]}
    assert await texts(score={"$gt": 0.5}, category="ops") == {FACTS[0], FACTS[2]}
    assert await texts(source_run="r2", category="ops") == {FACTS[2]}
    assert await texts(created_at={"$lt": now - 1}) == {FACTS[0], FACTS[1]}
    assert await texts(prio={"$ne": 1, "$lt": 5}) == {FACTS[2]}


def test_bad_filters_are_rejected_with_the_key_named() -> None:
    with pytest.raises(ValueError, match=r"'team'.*null"):
        build_where({"team": None})
    with pytest.raises(ValueError, match="unknown operator"):
        build_where({"team": {"$regex": "x"}})
    with pytest.raises(ValueError, match=r"'tags'.*\$in"):
        build_where({"tags": {"$in": []}})
    assert build_where({"category": "a"}) == {"category": {"$eq": "a"}}
    assert build_where({"team": "a", "score": {"$gte": 0.5}}) == {
        "$and": [{"m.team": {"$eq": "a"}}, {"importance": {"$gte": 0.5}}]}


async def test_bad_entries_and_arguments_raise_clear_errors(store: ChromaMemoryStore) -> None:
    with pytest.raises(ValueError, match=r"memory entry 1 .*text"):
        await store.add([MemoryEntry(text="fine"), MemoryEntry(text="  ")])
    with pytest.raises(ValueError, match=r"score must be a number in \[0, 1\]"):
        await store.add([MemoryEntry(text="x", score=3.0)])
    with pytest.raises(ValueError, match="appears twice"):
        await store.add([MemoryEntry(text="a", id="same"), MemoryEntry(text="b", id="same")])
    with pytest.raises(ValueError, match="top_k"):
        await store.search("x", top_k=0)
    with pytest.raises(ValueError, match="query"):
        await store.search("   ")
    with pytest.raises(ValueError, match="older_than_days"):
        await store.cleanup(older_than_days=-1)
    with pytest.raises(ValueError, match="threshold"):
        await store.consolidate(threshold=0)
    # Nothing was stored by the failed calls.
    assert await store.namespaces() == []


async def test_missing_namespace_searches_and_deletes_nothing(store: ChromaMemoryStore) -> None:
    assert await store.search("anything", namespace="nobody") == []
    assert await store.delete(["x"], namespace="nobody") == 0
    assert await store.cleanup(older_than_days=0, namespace="nobody") == 0
    assert await store.consolidate(namespace="nobody") == 0
    assert await store.namespaces() == []


async def test_consolidate_keeps_the_most_important_and_counts_merges(store: ChromaMemoryStore
                                                                      ) -> None:
    low = MemoryEntry(text=FACTS[0], score=0.2, metadata={"from": "a"})
    high = MemoryEntry(text=FACTS[0] + " ", score=0.8, metadata={"from": "b"})
    third = MemoryEntry(text=FACTS[0], score=0.5)
    other = MemoryEntry(text=FACTS[2], score=0.5)
    await store.add([low, high, third, other])
    assert await store.consolidate(threshold=0.95) == 2
    left = await store.entries()
    assert {e.id for e in left} == {high.id, other.id}
    survivor = next(e for e in left if e.id == high.id)
    assert survivor.score == 0.8
    assert survivor.metadata == {"from": "b", "merged_count": 2}
    # Nothing left to merge.
    assert await store.consolidate(threshold=0.95) == 0


async def test_cleanup_and_delete_count_only_existing_entries(store: ChromaMemoryStore) -> None:
    old = [MemoryEntry(text=t, created_at=time.time() - 10 * 86400) for t in FACTS[:2]]
    fresh = MemoryEntry(text=FACTS[2])
    await store.add([*old, fresh])
    assert await store.cleanup(older_than_days=30) == 0
    assert await store.cleanup(older_than_days=9.5) == 2
    assert await store.delete([fresh.id, fresh.id, "missing"]) == 1
    assert await store.count() == 0


async def test_a_namespace_refuses_another_embedding_model(chroma_config: Config) -> None:
    from flowyard.stack import Stack

    minilm = ChromaMemoryStore(chroma_config)
    await minilm.add([MemoryEntry(text=FACTS[0])])
    stack = Stack(config=chroma_config.with_overrides({"chroma": {"embedding": "fake/echo"}}))
    fake = ChromaMemoryStore(stack=stack)
    with pytest.raises(ConfigError, match="built with embedding model 'st:all-MiniLM-L6-v2'"):
        await fake.search("backup", top_k=1)
    # Other namespaces can use the provider's embeddings.
    await fake.add([MemoryEntry(text=t, namespace="fake-ns") for t in FACTS])
    hits = await fake.search("pull requests squashed before merging", namespace="fake-ns",
                             top_k=1)
    assert hits[0].entry.text == FACTS[1]


async def test_provider_embeddings_go_through_the_stack_gateway(chroma_config: Config) -> None:
    from flowyard.stack import Stack

    stack = Stack(config=chroma_config.with_overrides({"chroma": {"embedding": "fake/echo"}}))
    calls: list[list[str]] = []
    gateway = stack.llm
    real_embed = gateway.embed

    async def spy(texts: Any, *, model: str | None = None) -> Any:
        calls.append(list(texts))
        assert model == "fake/echo"
        return await real_embed(texts, model=model)

    gateway.embed = spy  # type: ignore[method-assign]
    store = ChromaMemoryStore(stack=stack, batch_size=3)
    await store.add([MemoryEntry(text=t) for t in FACTS])
    assert [len(c) for c in calls] == [3, 1]
    hits = await store.search("frontend built with Vite", top_k=1)
    assert hits[0].entry.text == FACTS[2]


def test_settings_errors_name_the_key(tmp_path: Any) -> None:
    base = {"paths": {"data_dir": str(tmp_path)}}
    with pytest.raises(ConfigError, match=r"unknown key.*colour"):
        ChromaMemoryStore(Config({**base, "chroma": {"colour": "red"}}))
    with pytest.raises(ConfigError, match="chunk_overlap"):
        ChromaMemoryStore(Config({**base, "chroma": {"chunk_tokens": 10, "chunk_overlap": 10}}))
    with pytest.raises(ConfigError, match="url"):
        ChromaMemoryStore(Config({**base, "chroma": {"url": "ftp://x"}}))
    with pytest.raises(ConfigError, match="embedding 'nonsense'"):
        _ = ChromaMemoryStore(Config({**base, "chroma": {"embedding": "nonsense"}})).embedder
    default = ChromaMemoryStore(Config(base))
    assert default.settings.path == tmp_path / "chroma"


async def test_an_unbound_store_never_builds_a_private_stack(chroma_config: Config) -> None:
    store = ChromaMemoryStore(chroma_config.with_overrides({"chroma": {"embedding":
                                                                       "fake/echo"}}))
    with pytest.raises(ConfigError, match="go through a stack's LLM gateway"):
        await store.add([MemoryEntry(text=t) for t in FACTS])


async def test_the_stack_hands_its_services_to_the_store(chroma_config: Config) -> None:
    stack = Stack(plugins=[("chroma", chroma_plugin)],
                  config=chroma_config.with_overrides({"chroma": {"embedding": "fake/echo"}}))
    store = stack.memory("chroma")
    await store.add([MemoryEntry(text=t) for t in FACTS])
    [hit] = await store.search("squashed pull requests", top_k=1)
    assert hit.entry.text == FACTS[1]
    assert store.embedder.name == "provider:fake/echo"


async def test_concurrent_adds_and_searches_lose_nothing(store: ChromaMemoryStore) -> None:
    import anyio

    texts = [f"{fact} (note {i})" for i, fact in enumerate(FACTS * 3)]

    async def add(text: str) -> None:
        await store.add([MemoryEntry(text=text, namespace="shared")])
        assert await store.search(text, namespace="shared", top_k=1)

    async with anyio.create_task_group() as tg:
        for text in texts:
            tg.start_soon(add, text)
    assert await store.count(namespace="shared") == len(texts)
    assert {e.text for e in await store.entries(namespace="shared", limit=100)} == set(texts)
