"""Workflow actions and agent tools for memory and RAG.

``memory.add``, ``memory.search``, ``memory.delete``, ``memory.cleanup``,
``memory.consolidate`` use the stack's memory store (``stack.memory()``: ``memory.store`` in
the configuration, else the registered store with the highest ``default_priority``);
``rag.index``, ``rag.search`` and ``rag.context`` use its retriever (``stack.retriever()``).
Any store or retriever implementing the interfaces works; the chroma ones are bound to the
calling stack so that ``provider/model`` embeddings use its providers.

Results are JSON-ready dicts and lists (memories and chunks as plain objects).
"""

from __future__ import annotations

from typing import Any, Literal

from flowyard import (
    Chunk,
    Document,
    FunctionTool,
    MemoryEntry,
    MemoryHit,
    ToolContext,
    ToolInputError,
    tool,
)

__all__ = ["make_tools", "chunk_dict", "hit_dict"]


def _memory(context: ToolContext) -> Any:
    store = context.stack.memory()
    bind = getattr(store, "bind", None)
    if callable(bind):
        bind(context.stack)
    return store


def _retriever(context: ToolContext) -> Any:
    retriever = context.stack.retriever()
    bind = getattr(retriever, "bind", None)
    if callable(bind):
        bind(context.stack)
    return retriever


def hit_dict(hit: MemoryHit) -> dict[str, Any]:
    """Return a memory hit as a JSON-ready dict (the entry's fields plus ``score``, and the
    entry's importance as ``importance``).
    """
    e = hit.entry
    return {"id": e.id, "text": e.text, "score": round(hit.score, 6), "namespace": e.namespace,
            "category": e.category, "importance": e.score, "metadata": e.metadata,
            "source_run": e.source_run, "source_step": e.source_step,
            "created_at": e.created_at}


def chunk_dict(chunk: Chunk) -> dict[str, Any]:
    """Return a chunk as a JSON-ready dict."""
    return {"id": chunk.id, "document_id": chunk.document_id, "text": chunk.text,
            "source": chunk.source, "score": round(chunk.score, 6),
            "metadata": chunk.metadata}


def _key_id(key: str, index: int) -> str:
    import hashlib

    return hashlib.sha256(f"memory.add:{key}:{index}".encode()).hexdigest()[:32]


def _input_error(name: str, exc: Exception) -> ToolInputError:
    return ToolInputError(f"{name}: {exc}", tool=name)


async def memory_add(
    context: ToolContext,
    text: str | None = None,
    texts: list[str] | None = None,
    namespace: str = "default",
    category: str = "general",
    score: float = 0.5,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Remember one text (``text``) or several (``texts``) in a namespace.

    The source run and step of the calling step are recorded on each memory. Inside a run
    the memory ids derive from the step's idempotency key, so a retried or resumed step
    rewrites the same memories instead of adding duplicates.

    Args:
        context: the calling step's context, passed by the runtime (not part of the tool's
            schema); its stack provides the memory store, its run and step ids are recorded
            on each memory, and its idempotency key (inside a run) derives the memory ids.
        text: what to remember.
        texts: several things to remember (same category, score and metadata).
        namespace: the agent's or workflow's memory namespace.
        category: free-form category (fact, preference, lesson...).
        score: importance in [0, 1].
        metadata: flat metadata usable in search filters.
    """
    items = ([text] if text is not None else []) + list(texts or [])
    if not items:
        raise ToolInputError("memory.add: give 'text' or 'texts'", tool="memory.add")
    key = context.idempotency_key
    entries = [MemoryEntry(text=t, namespace=namespace, category=category, score=score,
                           metadata=dict(metadata or {}), source_run=context.run_id or None,
                           source_step=context.step_id,
                           **({"id": _key_id(key, i)} if key else {}))
               for i, t in enumerate(items)]
    try:
        ids = await _memory(context).add(entries)
    except (ValueError, TypeError) as exc:
        raise _input_error("memory.add", exc) from exc
    return {"ids": ids, "namespace": namespace, "count": len(ids)}


async def memory_search(
    context: ToolContext,
    query: str,
    namespace: str = "default",
    top_k: int = 5,
    filters: dict[str, Any] | None = None,
    min_score: float | None = None,
) -> list[dict[str, Any]]:
    """Find the memories closest in meaning to a query, best first.

    Args:
        context: the calling step's context, passed by the runtime (not part of the tool's
            schema); its stack provides the memory store (``stack.memory()``).
        query: what to look for.
        namespace: the memory namespace to search.
        top_k: maximum number of memories.
        filters: equality filters on category and metadata keys.
        min_score: drop memories whose similarity (-1..1) is below this.
    """
    try:
        hits = await _memory(context).search(query, namespace=namespace, top_k=top_k,
                                             filters=filters, min_score=min_score)
    except (ValueError, TypeError) as exc:
        raise _input_error("memory.search", exc) from exc
    return [hit_dict(h) for h in hits]


async def memory_delete(context: ToolContext, ids: list[str], namespace: str = "default"
                        ) -> dict[str, Any]:
    """Forget memories by id.

    Args:
        context: the calling step's context, passed by the runtime (not part of the tool's
            schema); its stack provides the memory store (``stack.memory()``).
        ids: the memory ids.
        namespace: their namespace.
    """
    try:
        deleted = await _memory(context).delete(ids, namespace=namespace)
    except (ValueError, TypeError) as exc:
        raise _input_error("memory.delete", exc) from exc
    return {"deleted": deleted}


async def memory_cleanup(context: ToolContext, older_than_days: float,
                         namespace: str = "default") -> dict[str, Any]:
    """Forget memories created more than a number of days ago.

    Args:
        context: the calling step's context, passed by the runtime (not part of the tool's
            schema); its stack provides the memory store (``stack.memory()``).
        older_than_days: age limit in days.
        namespace: the namespace to clean.
    """
    try:
        deleted = await _memory(context).cleanup(older_than_days=older_than_days,
                                                 namespace=namespace)
    except (ValueError, TypeError) as exc:
        raise _input_error("memory.cleanup", exc) from exc
    return {"deleted": deleted}


async def memory_consolidate(context: ToolContext, namespace: str = "default",
                             threshold: float = 0.95) -> dict[str, Any]:
    """Merge near-duplicate memories of a namespace.

    Args:
        context: the calling step's context, passed by the runtime (not part of the tool's
            schema); its stack provides the memory store (``stack.memory()``).
        namespace: the namespace to consolidate.
        threshold: cosine similarity from which two memories count as duplicates.
    """
    try:
        removed = await _memory(context).consolidate(namespace=namespace, threshold=threshold)
    except (ValueError, TypeError) as exc:
        raise _input_error("memory.consolidate", exc) from exc
    return {"removed": removed}


async def rag_index(
    context: ToolContext,
    collection: str = "default",
    texts: list[str] | None = None,
    documents: list[dict[str, Any]] | None = None,
    paths: list[str] | None = None,
    directory: str | None = None,
    glob: str = "**/*",
    pydoc_topics: bool | list[str] = False,
) -> dict[str, Any]:
    """Index documents for retrieval; unchanged documents are skipped, changed ones replaced.

    Sources can be combined in one call. While it chunks, embeds and writes, the step reports
    its progress (``step.progress`` events: documents or chunks done of the total), shown by
    the live view of ``flowyard run``.

    Args:
        context: the calling step's context, passed by the runtime (not part of the tool's
            schema); its stack provides the retriever (``stack.retriever()``), and its
            ``progress`` method receives the indexing progress when the retriever's
            ``index`` accepts a progress callback.
        collection: the collection to index into.
        texts: bare texts (ids derived from their content).
        documents: objects with text and optional id, source and metadata.
        paths: files (Markdown, text, HTML, PDF).
        directory: a directory whose supported files are indexed.
        glob: which files of the directory (default every file, recursively).
        pydoc_topics: index the Python Language Reference topics shipped with CPython
            (true for all, or a list of topic names).
    """
    from flowyard_chroma import loaders

    docs: list[Document] = []
    try:
        if texts:
            docs += loaders.load_texts(texts)
        if documents:
            docs += loaders.documents_from_dicts(documents)
        for path in paths or []:
            docs.append(loaders.load_file(path))
        if directory is not None:
            docs += loaders.load_directory(directory, glob=glob)
        if pydoc_topics:
            docs += loaders.load_pydoc_topics(None if pydoc_topics is True else pydoc_topics)
    except (ValueError, KeyError, OSError) as exc:
        raise _input_error("rag.index", exc) from exc
    if not docs:
        raise ToolInputError("rag.index: no documents: give texts, documents, paths, "
                             "directory or pydoc_topics", tool="rag.index")
    retriever = _retriever(context)
    extra: dict[str, Any] = {}
    if _takes_progress(retriever.index):
        extra["progress"] = context.progress
    try:
        counts = await retriever.index(docs, collection=collection, **extra)
    except (ValueError, TypeError) as exc:
        raise _input_error("rag.index", exc) from exc
    context.log(f"rag.index {collection}: {counts}")
    return {"collection": collection, "documents": len(docs), **counts}


def _takes_progress(method: Any) -> bool:
    """Whether a retriever's ``index`` accepts a ``progress`` callback (the chroma one does;
    the :class:`~flowyard.interfaces.Retriever` protocol does not require it).
    """
    import inspect

    return "progress" in inspect.signature(method).parameters


def _mode_kwargs(retriever: Any, mode: str | None, name: str) -> dict[str, Any]:
    if mode is None:
        return {}
    from flowyard_chroma.retriever import ChromaRetriever

    if not isinstance(retriever, ChromaRetriever):
        raise ToolInputError(f"{name}: 'mode' needs the chroma retriever; the stack uses "
                             f"{type(retriever).__name__}", tool=name)
    return {"mode": mode}


async def rag_search(
    context: ToolContext,
    query: str,
    top_k: int = 5,
    collection: str = "default",
    mode: Literal["hybrid", "dense", "bm25"] | None = None,
) -> list[dict[str, Any]]:
    """Retrieve the chunks most relevant to a query, best first, with their sources.

    Args:
        context: the calling step's context, passed by the runtime (not part of the tool's
            schema); its stack provides the retriever (``stack.retriever()``).
        query: the question or keywords.
        top_k: maximum number of chunks.
        collection: the collection to search.
        mode: hybrid (dense + BM25, the default), dense or bm25.
    """
    retriever = _retriever(context)
    try:
        chunks = await retriever.search(query, top_k=top_k, collection=collection,
                                        **_mode_kwargs(retriever, mode, "rag.search"))
    except (ValueError, TypeError) as exc:
        raise _input_error("rag.search", exc) from exc
    return [chunk_dict(c) for c in chunks]


async def rag_context(
    context: ToolContext,
    query: str,
    top_k: int = 5,
    max_tokens: int = 1500,
    collection: str = "default",
    mode: Literal["hybrid", "dense", "bm25"] | None = None,
) -> dict[str, Any]:
    """Build prompt context for a query: the best chunks that fit a token budget.

    Returns the rendered ``context`` text (numbered passages with their sources), the
    ``chunks``, the distinct ``sources`` and the ``tokens`` used.

    Args:
        context: the calling step's context, passed by the runtime (not part of the tool's
            schema); its stack provides the retriever (``stack.retriever()``).
        query: the question.
        top_k: maximum number of chunks.
        max_tokens: token budget of the context.
        collection: the collection to search.
        mode: hybrid (the default), dense or bm25.
    """
    from flowyard_chroma.retriever import format_context

    retriever = _retriever(context)
    try:
        chunks = await retriever.get_context(query, top_k=top_k, max_tokens=max_tokens,
                                             collection=collection,
                                             **_mode_kwargs(retriever, mode, "rag.context"))
    except (ValueError, TypeError) as exc:
        raise _input_error("rag.context", exc) from exc
    sources = list(dict.fromkeys(c.source or c.document_id for c in chunks))
    return {"context": format_context(chunks), "chunks": [chunk_dict(c) for c in chunks],
            "sources": sources,
            "tokens": sum(int(c.metadata.get("tokens", 0)) for c in chunks)}


_SPECS: list[tuple[str, Any, bool, tuple[str, ...]]] = [
    ("memory.add", memory_add, True, ("memory",)),
    ("memory.search", memory_search, True, ()),
    ("memory.delete", memory_delete, True, ("memory",)),
    ("memory.cleanup", memory_cleanup, False, ("memory",)),
    ("memory.consolidate", memory_consolidate, False, ("memory",)),
    ("rag.index", rag_index, True, ("memory",)),
    ("rag.search", rag_search, True, ()),
    ("rag.context", rag_context, True, ()),
]

#: The action names this module provides.
TOOL_NAMES = [name for name, *_ in _SPECS]


def make_tools() -> dict[str, FunctionTool]:
    """Return ``{action name: tool}`` for every memory and RAG action."""
    return {name: tool(func, name=name, idempotent=idem, side_effects=effects)
            for name, func, idem, effects in _SPECS}
