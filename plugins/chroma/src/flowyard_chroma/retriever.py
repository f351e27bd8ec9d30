"""The chroma retriever: document indexing and hybrid (dense + BM25) retrieval for RAG.

Indexing chunks each document by tokens with overlap, embeds the chunks and stores them in
a chroma collection (cosine distance). Each chunk record carries its document's id, a content
hash of the document (text, source, metadata and the chunking settings), its position and
size. Re-indexing a document whose hash is unchanged does nothing; a changed document has
its chunks replaced (the new chunks are embedded before the old ones are deleted).

Indexing reports its progress through an optional callback with the signature of
:meth:`flowyard.context.ToolContext.progress` (``progress(done, total, unit=...,
description=...)``): documents chunked (``"chunking"``), chunks embedded (``"embedding"``,
in slices of :attr:`ChromaRetriever.embed_slice` texts) and chunks written (``"writing"``).

Retrieval modes:

``dense``   cosine similarity of MiniLM (or the configured model's) vectors, via chroma.
``bm25``    Okapi BM25 over the chunks (bm25s; English stop words, Snowball stemming), the
            index rebuilt lazily whenever the collection changed.
``hybrid``  both candidate lists fused by reciprocal rank fusion:
            ``score = sum(1 / (rrf_k + rank))`` with ranks from 1 (Cormack, Clarke and
            Buettcher, SIGIR 2009: "Reciprocal Rank Fusion outperforms Condorcet and
            individual Rank Learning Methods", k = 60).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from flowyard import Chunk, Document

from flowyard_chroma._imports import importing
from flowyard_chroma.base import GENERATION_KEY, ChromaBase
from flowyard_chroma.chunking import chunk_text, truncate_to_tokens
from flowyard_chroma.settings import MODES

__all__ = ["ChromaRetriever", "format_context"]

_DOC_META = "doc_metadata_json"

#: ``progress(done, total, *, unit, description)``, as :meth:`ToolContext.progress`.
ProgressCallback = Callable[..., None]


@attrs.define
class _Bm25Index:
    generation: str
    ids: list[str]
    texts: list[str]
    metadatas: list[dict[str, Any]]
    model: Any  # bm25s.BM25, or None for an empty collection


def _stemmer() -> Any:
    with importing():
        import Stemmer

    return Stemmer.Stemmer("english")


def _tokenize(texts: list[str], stemmer: Any) -> Any:
    with importing():
        import bm25s

    return bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False)


def _doc_hash(doc: Document, chunk_tokens: int, overlap: int) -> str:
    payload = json.dumps({"text": doc.text, "source": doc.source, "metadata": doc.metadata,
                          "chunking": [chunk_tokens, overlap]}, sort_keys=True,
                         ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def format_context(chunks: Sequence[Chunk]) -> str:
    """Return chunks as a prompt-ready block: ``[n] <source>`` then the text, per chunk."""
    parts = []
    for n, chunk in enumerate(chunks, 1):
        parts.append(f"[{n}] {chunk.source or chunk.document_id}\n{chunk.text.strip()}")
    return "\n\n".join(parts)


class ChromaRetriever(ChromaBase):
    """A :class:`~flowyard.interfaces.Retriever` on chromadb (registered as ``chroma``).

    Args: see :class:`~flowyard_chroma.base.ChromaBase` (``config``, ``stack``,
    ``embedder``, ``[chroma]`` overrides such as ``path=``, ``chunk_tokens=``).

    Chunk scores: cosine similarity for ``dense``, the BM25 score for ``bm25`` and the fused
    reciprocal-rank score for ``hybrid``; ``chunk.metadata`` holds the document's metadata
    plus ``chunk_index``, ``chunk_count``, ``tokens`` (word pieces), ``start``/``end``
    (character offsets in the document) and, for hybrid, ``dense_rank``/``bm25_rank``.
    """

    kind = "rag"
    prefix = "fy_rag"
    #: Chunks embedded per call of the embedder while indexing (progress is reported after
    #: each slice: one batch of the default embedder, a fraction of a second on a laptop);
    #: the same slicing is used whether or not progress is reported, so the vectors never
    #: depend on it.
    embed_slice = 64

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bm25: dict[str, _Bm25Index] = {}
        self._bm25_lock = threading.Lock()

    # ------------------------------------------------------------------ indexing

    async def index(self, documents: Sequence[Document], *, collection: str = "default",
                    progress: ProgressCallback | None = None) -> dict[str, int]:
        """Index ``documents`` into ``collection``.

        Args:
            documents: the documents.
            collection: the collection (created when absent).
            progress: called as ``progress(done, total, unit=..., description=...)`` while
                the changed documents are chunked (unit ``"documents"``), their chunks
                embedded and written (unit ``"chunks"``); possibly from a worker thread.
                :meth:`flowyard.context.ToolContext.progress` fits (and throttles).

        Returns:
            ``{"added", "updated", "unchanged", "chunks", "empty"}``: documents new to the
            collection, changed ones whose chunks were replaced, unchanged ones skipped, the
            number of chunks written, and documents without text (not indexed; a previous
            version's chunks are removed).

        Raises:
            ValueError: a document id is empty or appears twice, or an item is not a
                :class:`Document`.
        """
        docs = list(documents)
        seen: set[str] = set()
        for i, doc in enumerate(docs):
            if not isinstance(doc, Document):
                raise ValueError(f"documents[{i}] must be a Document, got "
                                 f"{type(doc).__name__}")
            if not isinstance(doc.id, str) or not doc.id:
                raise ValueError(f"documents[{i}]: id must be a non-empty string")
            if not isinstance(doc.text, str):
                raise ValueError(f"documents[{i}] ({doc.id}): text must be a string")
            if doc.id in seen:
                raise ValueError(f"documents[{i}]: id {doc.id!r} appears twice")
            seen.add(doc.id)
        counts = {"added": 0, "updated": 0, "unchanged": 0, "chunks": 0, "empty": 0}
        if not docs:
            return counts
        s = self.settings
        hashes = {d.id: _doc_hash(d, s.chunk_tokens, s.chunk_overlap) for d in docs}
        col = await self._run(self._collection, collection, True)
        existing = await self._run(self._existing_hashes, col, [d.id for d in docs])
        todo = []
        for doc in docs:
            if existing.get(doc.id) == hashes[doc.id]:
                counts["unchanged"] += 1
            else:
                todo.append(doc)
        if not todo:
            return counts
        pieces = await self._run(self._chunk_all, todo, progress)
        texts = [c.text for _, chunks in pieces for c in chunks]
        vectors = await self._embed_all(texts, progress)
        await self._run(self._write, col, pieces, vectors, hashes, existing, progress)
        for doc, chunks in pieces:
            if not chunks:
                counts["empty"] += 1
            elif doc.id in existing:
                counts["updated"] += 1
            else:
                counts["added"] += 1
            counts["chunks"] += len(chunks)
        return counts

    def _chunk_all(self, docs: list[Document], progress: ProgressCallback | None = None
                   ) -> list[tuple[Document, list[Any]]]:
        s = self.settings
        out = []
        for n, d in enumerate(docs, 1):
            out.append((d, chunk_text(d.text, chunk_tokens=s.chunk_tokens,
                                      overlap=s.chunk_overlap)))
            if progress is not None:
                progress(n, len(docs), unit="documents", description="chunking")
        return out

    async def _embed_all(self, texts: list[str], progress: ProgressCallback | None = None
                         ) -> Any:
        """Embed ``texts`` in slices of :attr:`embed_slice`; return one array of vectors."""
        if len(texts) <= self.embed_slice and progress is None:
            return await self.embedder.embed(texts)
        with importing():
            import numpy as np

        total = len(texts)
        if progress is not None:
            progress(0, total, unit="chunks", description="embedding")
        parts = []
        for start in range(0, total, self.embed_slice):
            parts.append(await self.embedder.embed(texts[start:start + self.embed_slice]))
            if progress is not None:
                progress(min(start + self.embed_slice, total), total, unit="chunks",
                         description="embedding")
        return np.concatenate(parts) if parts else await self.embedder.embed([])

    def _existing_hashes(self, col: Any, ids: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            got = col.get(where={"$and": [{"doc_id": {"$in": part}}, {"chunk_index": 0}]},
                          include=["metadatas"])
            for meta in got["metadatas"]:
                found[str(meta["doc_id"])] = str(meta["doc_hash"])
        return found

    def _write(self, col: Any, pieces: list[tuple[Document, list[Any]]], vectors: Any,
               hashes: dict[str, str], existing: dict[str, str],
               progress: ProgressCallback | None = None) -> None:
        ids: list[str] = []
        texts: list[str] = []
        metas: list[dict[str, Any]] = []
        for doc, chunks in pieces:
            doc_meta = json.dumps(doc.metadata, sort_keys=True, ensure_ascii=False)
            for c in chunks:
                ids.append(f"{doc.id}#{c.index}")
                texts.append(c.text)
                metas.append({"doc_id": doc.id, "doc_hash": hashes[doc.id],
                              "chunk_index": c.index, "chunk_count": len(chunks),
                              "source": doc.source, "tokens": c.tokens, "start": c.start,
                              "end": c.end, _DOC_META: doc_meta})
        step = self._batches()
        with self._write_lock:
            stale = [d.id for d, _ in pieces if d.id in existing]
            for start in range(0, len(stale), 500):
                col.delete(where={"doc_id": {"$in": stale[start:start + 500]}})
            for start in range(0, len(ids), step):
                col.upsert(ids=ids[start:start + step],
                           embeddings=vectors[start:start + step],
                           documents=texts[start:start + step],
                           metadatas=metas[start:start + step])
                if progress is not None:
                    progress(min(start + step, len(ids)), len(ids), unit="chunks",
                             description="writing")
            self._bump_generation(col)

    async def delete_documents(self, ids: Sequence[str], *, collection: str = "default") -> int:
        """Remove documents (all their chunks); return how many chunks were deleted."""
        ids = [i for i in ids]
        for i in ids:
            if not isinstance(i, str) or not i:
                raise ValueError(f"document ids must be non-empty strings, got {i!r}")
        col = await self._run(self._collection, collection, False)
        if col is None or not ids:
            return 0

        def remove() -> int:
            with self._write_lock:
                found = col.get(where={"doc_id": {"$in": ids}}, include=[])["ids"]
                if found:
                    col.delete(ids=found)
                    self._bump_generation(col)
                return len(found)

        return await self._run(remove)

    async def documents(self, *, collection: str = "default") -> dict[str, dict[str, Any]]:
        """Return ``{document id: {"source", "chunks", "hash"}}`` of a collection."""
        col = await self._run(self._collection, collection, False)
        if col is None:
            return {}

        def fetch() -> dict[str, dict[str, Any]]:
            got = col.get(where={"chunk_index": 0}, include=["metadatas"])
            return {str(m["doc_id"]): {"source": m.get("source", ""),
                                       "chunks": int(m.get("chunk_count", 0)),
                                       "hash": m.get("doc_hash")} for m in got["metadatas"]}

        return await self._run(fetch)

    async def count(self, *, collection: str = "default") -> int:
        """Return the number of chunks in ``collection`` (0 when it does not exist)."""
        col = await self._run(self._collection, collection, False)
        return 0 if col is None else int(await self._run(col.count))

    async def collections(self) -> list[str]:
        """Return the names of the collections that exist, sorted."""
        return await self._run(self._names)

    async def drop_collection(self, collection: str) -> bool:
        """Delete a collection with all its chunks; return False when it did not exist."""
        def drop() -> bool:
            with self._write_lock:
                self._bm25.pop(collection, None)
                return self._drop(collection)

        return await self._run(drop)

    # ------------------------------------------------------------------ retrieval

    async def search(self, query: str, *, top_k: int = 5, collection: str = "default",
                     mode: str | None = None) -> list[Chunk]:
        """Return up to ``top_k`` chunks for ``query``, best first.

        Args:
            query: the question or keywords.
            top_k: maximum chunks (>= 1).
            collection: the collection to search (none yet: no chunks).
            mode: ``"hybrid"``, ``"dense"`` or ``"bm25"`` (default: ``[chroma] mode``).

        Raises:
            ValueError: empty query, ``top_k`` < 1 or unknown mode.
        """
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query must be a non-empty string")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
        mode = mode or self.settings.mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        col = await self._run(self._collection, collection, False)
        if col is None:
            return []
        n = max(top_k, self.settings.candidates) if mode == "hybrid" else top_k
        dense: list[Chunk] = []
        lexical: list[Chunk] = []
        if mode in ("dense", "hybrid"):
            vector = await self.embedder.embed([query])
            dense = await self._run(self._dense, col, vector, n)
        if mode in ("bm25", "hybrid"):
            lexical = await self._run(self._lexical, col, collection, query, n)
        if mode == "dense":
            return dense[:top_k]
        if mode == "bm25":
            return lexical[:top_k]
        return self._fuse(dense, lexical, top_k)

    def _dense(self, col: Any, vector: Any, n: int) -> list[Chunk]:
        count = col.count()
        if count == 0:
            return []
        got = col.query(query_embeddings=vector, n_results=min(n, count),
                        include=["documents", "metadatas", "distances"])
        return [self._chunk(cid, text or "", meta or {}, 1.0 - float(dist))
                for cid, text, meta, dist in zip(got["ids"][0], got["documents"][0],
                                                 got["metadatas"][0], got["distances"][0],
                                                 strict=True)]

    def _bm25_index(self, col: Any, collection: str) -> _Bm25Index:
        with importing():
            import bm25s

        with self._bm25_lock:
            fresh = self.client().get_collection(col.name, embedding_function=None)
            generation = str((fresh.metadata or {}).get(GENERATION_KEY, ""))
            cached = self._bm25.get(collection)
            if cached is not None and cached.generation == generation:
                return cached
            ids: list[str] = []
            texts: list[str] = []
            metas: list[dict[str, Any]] = []
            page = 5000
            offset = 0
            while True:
                got = fresh.get(include=["documents", "metadatas"], limit=page, offset=offset)
                ids.extend(got["ids"])
                texts.extend(t or "" for t in got["documents"])
                metas.extend(dict(m or {}) for m in got["metadatas"])
                if len(got["ids"]) < page:
                    break
                offset += page
            model = None
            if ids:
                model = bm25s.BM25()
                model.index(_tokenize(texts, _stemmer()), show_progress=False)
            index = _Bm25Index(generation, ids, texts, metas, model)
            self._bm25[collection] = index
            return index

    def _lexical(self, col: Any, collection: str, query: str, n: int) -> list[Chunk]:
        with importing():
            import numpy as np

        index = self._bm25_index(col, collection)
        if index.model is None:
            return []
        with importing():
            import bm25s

        tokens = bm25s.tokenize([query], stopwords="en", stemmer=_stemmer(), return_ids=False,
                                show_progress=False)[0]
        if not tokens:
            return []
        scores = index.model.get_scores(tokens)
        k = min(n, len(index.ids))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [self._chunk(index.ids[i], index.texts[i], index.metadatas[i], float(scores[i]))
                for i in top.tolist() if scores[i] > 0]

    def _fuse(self, dense: list[Chunk], lexical: list[Chunk], top_k: int) -> list[Chunk]:
        k = self.settings.rrf_k
        fused: dict[str, float] = {}
        by_id: dict[str, Chunk] = {}
        ranks: dict[str, dict[str, Any]] = {}
        for name, hits in (("dense", dense), ("bm25", lexical)):
            for rank, chunk in enumerate(hits, 1):
                fused[chunk.id] = fused.get(chunk.id, 0.0) + 1.0 / (k + rank)
                by_id.setdefault(chunk.id, chunk)
                info = ranks.setdefault(chunk.id, {"dense_rank": None, "bm25_rank": None,
                                                   "dense_score": None, "bm25_score": None})
                info[f"{name}_rank"] = rank
                info[f"{name}_score"] = chunk.score
        best = sorted(fused, key=lambda cid: (-fused[cid], cid))[:top_k]
        return [attrs.evolve(by_id[cid], score=fused[cid],
                             metadata={**by_id[cid].metadata, **ranks[cid]}) for cid in best]

    def _chunk(self, chunk_id: str, text: str, meta: Mapping[str, Any], score: float) -> Chunk:
        doc_meta = json.loads(str(meta.get(_DOC_META, "{}")))
        info = {key: meta[key] for key in ("chunk_index", "chunk_count", "tokens", "start",
                                           "end") if key in meta}
        return Chunk(id=chunk_id, document_id=str(meta.get("doc_id", "")), text=text,
                     source=str(meta.get("source", "")), score=score,
                     metadata={**doc_meta, **info})

    async def get_context(
        self, query: str, *, top_k: int = 5, max_tokens: int = 1500,
        collection: str = "default", mode: str | None = None,
    ) -> list[Chunk]:
        """Return the best chunks (at most ``top_k``) whose total size fits ``max_tokens``
        word pieces, best first, each with its ``source``.

        Chunks are taken in rank order; one that does not fit in what is left is skipped,
        except the first, which is cut to ``max_tokens`` (``metadata["truncated"] = True``)
        so that a small budget still gets the best passage. Use :func:`format_context` to
        render them for a prompt.

        Raises:
            ValueError: as :meth:`search`, or ``max_tokens`` < 1.
        """
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        hits = await self.search(query, top_k=top_k, collection=collection, mode=mode)
        out: list[Chunk] = []
        used = 0
        for chunk in hits:
            size = int(chunk.metadata.get("tokens", 0))
            if used + size <= max_tokens:
                out.append(chunk)
                used += size
            elif not out:
                text = await self._run(truncate_to_tokens, chunk.text, max_tokens)
                out.append(attrs.evolve(chunk, text=text, metadata={
                    **chunk.metadata, "truncated": True, "tokens": max_tokens}))
                used = max_tokens
        return out

    def __repr__(self) -> str:
        return f"ChromaRetriever({self.location!r})"
