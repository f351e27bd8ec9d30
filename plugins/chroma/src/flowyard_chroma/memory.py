"""The chroma memory store: long-term memory searched by meaning.

Each namespace (one per agent or workflow, ``"default"`` otherwise) is its own chroma
collection with cosine distance. An entry's fields are kept in the record's metadata:
``category``, ``importance`` (the entry's ``score``), ``created_at``, ``source_run``,
``source_step``, the full ``metadata`` as JSON, and each scalar metadata value again as
``m.<key>`` so that filters can use it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from flowyard import MemoryEntry, MemoryHit

from flowyard_chroma._imports import importing
from flowyard_chroma.base import ChromaBase

__all__ = ["ChromaMemoryStore", "FILTER_OPERATORS"]

#: Comparison operators accepted in filter values (``{"score": {"$gte": 0.5}}``).
FILTER_OPERATORS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin"})

_ENTRY_FIELDS = {"category": "category", "score": "importance", "importance": "importance",
                 "created_at": "created_at", "source_run": "source_run",
                 "source_step": "source_step"}
_SCALARS = (str, int, float, bool)


def _check_entry(index: int, entry: Any) -> MemoryEntry:
    where = f"memory entry {index}"
    if not isinstance(entry, MemoryEntry):
        raise TypeError(f"{where}: expected a MemoryEntry, got {type(entry).__name__}")
    if not isinstance(entry.text, str) or not entry.text.strip():
        raise ValueError(f"{where} ({entry.id}): text must be a non-empty string")
    if not isinstance(entry.namespace, str) or not entry.namespace:
        raise ValueError(f"{where} ({entry.id}): namespace must be a non-empty string")
    if isinstance(entry.score, bool) or not isinstance(entry.score, (int, float)) or not (
            0.0 <= float(entry.score) <= 1.0):
        raise ValueError(f"{where} ({entry.id}): score must be a number in [0, 1], "
                         f"got {entry.score!r}")
    if not isinstance(entry.metadata, Mapping):
        raise ValueError(f"{where} ({entry.id}): metadata must be a mapping")
    try:
        json.dumps(entry.metadata)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where} ({entry.id}): metadata is not JSON-ready: {exc}") from None
    if not isinstance(entry.id, str) or not entry.id:
        raise ValueError(f"{where}: id must be a non-empty string")
    return entry


def _to_record(entry: MemoryEntry) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "category": entry.category,
        "importance": float(entry.score),
        "created_at": float(entry.created_at),
        # chroma may round floats; the exact value is kept as text for the round trip
        "created_at_exact": repr(float(entry.created_at)),
        "importance_exact": repr(float(entry.score)),
        "metadata_json": json.dumps(entry.metadata, sort_keys=True),
    }
    if entry.source_run is not None:
        meta["source_run"] = entry.source_run
    if entry.source_step is not None:
        meta["source_step"] = entry.source_step
    for key, value in entry.metadata.items():
        if isinstance(value, _SCALARS):
            meta[f"m.{key}"] = value
    return meta


def _from_record(record_id: str, text: str, meta: Mapping[str, Any], namespace: str
                 ) -> MemoryEntry:
    return MemoryEntry(
        text=text, namespace=namespace, category=str(meta.get("category", "general")),
        score=float(meta.get("importance_exact", meta.get("importance", 0.5))),
        metadata=json.loads(str(meta.get("metadata_json", "{}"))),
        source_run=meta.get("source_run"), source_step=meta.get("source_step"),
        id=record_id,
        created_at=float(meta.get("created_at_exact", meta.get("created_at", 0.0))),
    )


def build_where(filters: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Translate flowyard memory filters into a chroma ``where`` clause.

    Keys ``category``, ``score`` (importance), ``created_at``, ``source_run`` and
    ``source_step`` filter the entry's fields; any other key filters a scalar metadata value.
    A value is matched by equality; a list means "one of"; a mapping of operators
    (:data:`FILTER_OPERATORS`) compares (``{"created_at": {"$gte": 1.7e9}}``).

    Raises:
        ValueError: a key is empty, a value is null, or an operator is unknown.
    """
    if not filters:
        return None
    if not isinstance(filters, Mapping):
        raise ValueError(f"filters must be a mapping, got {type(filters).__name__}")
    clauses: list[dict[str, Any]] = []
    for key, value in filters.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"filter keys must be non-empty strings, got {key!r}")
        field = _ENTRY_FIELDS.get(key, f"m.{key}")
        if isinstance(value, Mapping):
            bad = sorted(set(value) - FILTER_OPERATORS)
            if bad or not value:
                raise ValueError(f"filter {key!r}: unknown operator(s) {bad or '{}'}; use "
                                 f"{', '.join(sorted(FILTER_OPERATORS))}")
            for op, operand in value.items():
                clauses.append({field: {op: _check_operand(key, operand, op)}})
        elif isinstance(value, (list, tuple)):
            clauses.append({field: {"$in": _check_operand(key, list(value), "$in")}})
        else:
            clauses.append({field: {"$eq": _check_operand(key, value, "$eq")}})
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _check_operand(key: str, operand: Any, op: str) -> Any:
    if op in ("$in", "$nin"):
        if not isinstance(operand, list) or not operand or not all(
                isinstance(v, _SCALARS) for v in operand):
            raise ValueError(f"filter {key!r}: {op} needs a non-empty list of scalars, "
                             f"got {operand!r}")
        return operand
    if operand is None:
        raise ValueError(f"filter {key!r}: null cannot be matched (metadata nulls are not "
                         "indexed)")
    if not isinstance(operand, _SCALARS):
        raise ValueError(f"filter {key!r}: {op} needs a string, number or boolean, got "
                         f"{operand!r}")
    return operand


class ChromaMemoryStore(ChromaBase):
    """A :class:`~flowyard.interfaces.MemoryStore` on chromadb (registered as ``chroma``).

    Args: see :class:`~flowyard_chroma.base.ChromaBase` (``config``, ``stack``,
    ``embedder``, ``[chroma]`` overrides such as ``path=``).

    Scores are cosine similarities in [-1, 1] (higher is closer). Every method raises
    ``ValueError`` for bad arguments (naming the argument), ``ConfigError`` when a namespace
    was built with another embedding model and ``StorageError`` when the store cannot be
    opened.
    """

    kind = "memory"
    prefix = "fy_mem"

    async def add(self, entries: Sequence[MemoryEntry]) -> list[str]:
        """Store ``entries`` (an entry with an existing id replaces it); return their ids in
        order. Entries may belong to several namespaces.
        """
        checked = [_check_entry(i, e) for i, e in enumerate(entries)]
        if not checked:
            return []
        seen: set[tuple[str, str]] = set()
        for entry in checked:
            key = (entry.namespace, entry.id)
            if key in seen:
                raise ValueError(f"memory entry id {entry.id!r} appears twice in one add()")
            seen.add(key)
        vectors = await self.embedder.embed([e.text for e in checked])
        await self._run(self._add_sync, checked, vectors)
        return [e.id for e in checked]

    def _add_sync(self, entries: list[MemoryEntry], vectors: Any) -> None:
        by_ns: dict[str, list[int]] = {}
        for i, entry in enumerate(entries):
            by_ns.setdefault(entry.namespace, []).append(i)
        step = self._batches()
        with self._write_lock:
            for namespace, indexes in by_ns.items():
                col = self._collection(namespace, create=True)
                for start in range(0, len(indexes), step):
                    part = indexes[start:start + step]
                    col.upsert(ids=[entries[i].id for i in part],
                               embeddings=vectors[part],
                               documents=[entries[i].text for i in part],
                               metadatas=[_to_record(entries[i]) for i in part])

    async def search(
        self,
        query: str,
        *,
        namespace: str = "default",
        top_k: int = 5,
        filters: Mapping[str, Any] | None = None,
        min_score: float | None = None,
    ) -> list[MemoryHit]:
        """Return up to ``top_k`` entries of ``namespace`` closest to ``query``, best first.

        Args:
            query: the text to look for.
            namespace: the agent's or workflow's namespace.
            top_k: maximum hits (>= 1).
            filters: see :func:`build_where` (equality on ``category`` and metadata keys).
            min_score: drop hits whose cosine similarity is below this.

        Raises:
            ValueError: empty query, ``top_k`` < 1, bad filters.
        """
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query must be a non-empty string")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
        if min_score is not None and (isinstance(min_score, bool) or
                                      not isinstance(min_score, (int, float))):
            raise ValueError(f"min_score must be a number, got {min_score!r}")
        where = build_where(filters)
        col = await self._run(self._collection, namespace, False)
        if col is None:
            return []
        vector = await self.embedder.embed([query])
        return await self._run(self._search_sync, col, namespace, vector, top_k, where,
                               min_score)

    def _search_sync(self, col: Any, namespace: str, vector: Any, top_k: int,
                     where: dict[str, Any] | None, min_score: float | None) -> list[MemoryHit]:
        count = col.count()
        if count == 0:
            return []
        result = col.query(query_embeddings=vector, n_results=min(top_k, count), where=where,
                           include=["documents", "metadatas", "distances"])
        hits = []
        for rid, text, meta, dist in zip(result["ids"][0], result["documents"][0],
                                         result["metadatas"][0], result["distances"][0],
                                         strict=True):
            score = max(-1.0, min(1.0, 1.0 - float(dist)))
            if min_score is not None and score < min_score:
                continue
            hits.append(MemoryHit(entry=_from_record(rid, text or "", meta or {}, namespace),
                                  score=score))
        hits.sort(key=lambda h: -h.score)
        return hits

    async def get(self, ids: Sequence[str], *, namespace: str = "default") -> list[MemoryEntry]:
        """Return the entries with these ids that exist, in the order of ``ids``."""
        ids = _check_ids(ids)
        col = await self._run(self._collection, namespace, False)
        if col is None or not ids:
            return []

        def fetch() -> list[MemoryEntry]:
            got = col.get(ids=ids, include=["documents", "metadatas"])
            found = {rid: _from_record(rid, text or "", meta or {}, namespace)
                     for rid, text, meta in zip(got["ids"], got["documents"], got["metadatas"],
                                                strict=True)}
            return [found[i] for i in ids if i in found]

        return await self._run(fetch)

    async def entries(self, *, namespace: str = "default", limit: int = 100, offset: int = 0
                   ) -> list[MemoryEntry]:
        """Return a page of a namespace's entries, oldest first.

        Raises:
            ValueError: ``limit`` < 1 or ``offset`` < 0.
        """
        if limit < 1 or offset < 0:
            raise ValueError(f"limit must be >= 1 and offset >= 0, got {limit}, {offset}")
        col = await self._run(self._collection, namespace, False)
        if col is None:
            return []

        def fetch() -> list[MemoryEntry]:
            got = col.get(include=["documents", "metadatas"])
            entries = [_from_record(rid, text or "", meta or {}, namespace)
                       for rid, text, meta in zip(got["ids"], got["documents"],
                                                  got["metadatas"], strict=True)]
            entries.sort(key=lambda e: (e.created_at, e.id))
            return entries[offset:offset + limit]

        return await self._run(fetch)

    async def count(self, *, namespace: str = "default") -> int:
        """Return the number of entries in ``namespace`` (0 when it does not exist)."""
        col = await self._run(self._collection, namespace, False)
        return 0 if col is None else int(await self._run(col.count))

    async def namespaces(self) -> list[str]:
        """Return the namespaces that exist, sorted."""
        return await self._run(self._names)

    async def drop_namespace(self, namespace: str) -> bool:
        """Delete a namespace and all its entries; return False when it did not exist."""
        def drop() -> bool:
            with self._write_lock:
                return self._drop(namespace)

        return await self._run(drop)

    async def delete(self, ids: Sequence[str], *, namespace: str = "default") -> int:
        """Delete entries by id; return how many existed and were deleted."""
        ids = _check_ids(ids)
        col = await self._run(self._collection, namespace, False)
        if col is None or not ids:
            return 0

        def remove() -> int:
            with self._write_lock:
                existing = col.get(ids=ids, include=[])["ids"]
                if existing:
                    col.delete(ids=existing)
                return len(existing)

        return await self._run(remove)

    async def cleanup(self, *, older_than_days: float, namespace: str = "default") -> int:
        """Delete entries created more than ``older_than_days`` days (of 86,400 s) ago;
        return the count.

        Raises:
            ValueError: ``older_than_days`` is negative or not a number.
        """
        if isinstance(older_than_days, bool) or not isinstance(older_than_days, (int, float)) \
                or older_than_days < 0 or math.isnan(older_than_days):
            raise ValueError(f"older_than_days must be a number >= 0, got {older_than_days!r}")
        cutoff = time.time() - float(older_than_days) * 86_400.0
        col = await self._run(self._collection, namespace, False)
        if col is None:
            return 0

        def remove() -> int:
            with self._write_lock:
                old = col.get(where={"created_at": {"$lt": cutoff}}, include=[])["ids"]
                if old:
                    col.delete(ids=old)
                return len(old)

        return await self._run(remove)

    async def consolidate(self, *, namespace: str = "default", threshold: float = 0.95) -> int:
        """Merge near-duplicate entries; return how many entries were removed.

        Entries are visited by importance (highest first, then oldest first); each one kept
        absorbs every later entry whose cosine similarity to it is at least ``threshold``.
        The survivor keeps its text and id, takes the highest importance of its group and
        counts the absorbed entries in ``metadata["merged_count"]``.

        Raises:
            ValueError: ``threshold`` is not in (0, 1].
        """
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
                0.0 < threshold <= 1.0):
            raise ValueError(f"threshold must be a number in (0, 1], got {threshold!r}")
        col = await self._run(self._collection, namespace, False)
        if col is None:
            return 0
        return await self._run(self._consolidate_sync, col, namespace, float(threshold))

    def _consolidate_sync(self, col: Any, namespace: str, threshold: float) -> int:
        with importing():
            import numpy as np

        with self._write_lock:
            got = col.get(include=["documents", "metadatas", "embeddings"])
            n = len(got["ids"])
            if n < 2:
                return 0
            entries = [_from_record(rid, text or "", meta or {}, namespace)
                       for rid, text, meta in zip(got["ids"], got["documents"],
                                                  got["metadatas"], strict=True)]
            vectors = np.asarray(got["embeddings"], dtype=np.float32)
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            norms[norms == 0] = 1.0
            vectors = vectors / norms
            order = sorted(range(n), key=lambda i: (-entries[i].score, entries[i].created_at,
                                                    entries[i].id))
            removed: set[int] = set()
            survivors: dict[int, list[int]] = {}
            for i in order:
                if i in removed:
                    continue
                sims = vectors @ vectors[i]
                group = [j for j in np.nonzero(sims >= threshold)[0].tolist()
                         if j != i and j not in removed and j not in survivors]
                if group:
                    survivors[i] = group
                    removed.update(group)
            if not removed:
                return 0
            updates = []
            for i, group in survivors.items():
                entry = entries[i]
                merged = dict(entry.metadata)
                merged["merged_count"] = int(merged.get("merged_count", 0)) + sum(
                    1 + int(entries[j].metadata.get("merged_count", 0)) for j in group)
                best = max([entry.score, *(entries[j].score for j in group)])
                updates.append(MemoryEntry(
                    text=entry.text, namespace=namespace, category=entry.category, score=best,
                    metadata=merged, source_run=entry.source_run, source_step=entry.source_step,
                    id=entry.id, created_at=entry.created_at))
            # Update the survivors before deleting, so an interruption never loses a memory.
            col.update(ids=[e.id for e in updates], metadatas=[_to_record(e) for e in updates])
            col.delete(ids=[entries[j].id for j in sorted(removed)])
            return len(removed)

    def __repr__(self) -> str:
        return f"ChromaMemoryStore({self.location!r})"


def _check_ids(ids: Sequence[str]) -> list[str]:
    if isinstance(ids, str):
        raise ValueError("ids must be a list of strings, not one string")
    out = list(ids)
    for i in out:
        if not isinstance(i, str) or not i:
            raise ValueError(f"ids must be non-empty strings, got {i!r}")
    return list(dict.fromkeys(out))
