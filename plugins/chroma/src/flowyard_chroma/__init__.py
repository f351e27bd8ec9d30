"""flowyard-chroma: vector memory and RAG for flowyard on chromadb and sentence-transformers.

Registers the memory store ``chroma`` and the retriever ``chroma`` (``default_priority=10``)
and the actions ``memory.add``, ``memory.search``, ``memory.delete``, ``memory.cleanup``,
``memory.consolidate``, ``rag.index``, ``rag.search`` and ``rag.context``.

Names are imported lazily (``from flowyard_chroma import ChromaRetriever`` loads chromadb only
then), so that plugin discovery stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ChromaMemoryStore",
    "ChromaRetriever",
    "ChromaSettings",
    "SentenceTransformerEmbedder",
    "ProviderEmbedder",
    "make_embedder",
    "chunk_text",
    "format_context",
    "load_file",
    "load_directory",
    "load_pydoc_topics",
    "load_texts",
]

_LAZY = {
    "ChromaMemoryStore": "flowyard_chroma.memory",
    "ChromaRetriever": "flowyard_chroma.retriever",
    "format_context": "flowyard_chroma.retriever",
    "ChromaSettings": "flowyard_chroma.settings",
    "SentenceTransformerEmbedder": "flowyard_chroma.embeddings",
    "ProviderEmbedder": "flowyard_chroma.embeddings",
    "make_embedder": "flowyard_chroma.embeddings",
    "chunk_text": "flowyard_chroma.chunking",
    "load_file": "flowyard_chroma.loaders",
    "load_directory": "flowyard_chroma.loaders",
    "load_pydoc_topics": "flowyard_chroma.loaders",
    "load_texts": "flowyard_chroma.loaders",
}

if TYPE_CHECKING:
    from flowyard_chroma.chunking import chunk_text
    from flowyard_chroma.embeddings import (
        ProviderEmbedder,
        SentenceTransformerEmbedder,
        make_embedder,
    )
    from flowyard_chroma.loaders import load_directory, load_file, load_pydoc_topics, load_texts
    from flowyard_chroma.memory import ChromaMemoryStore
    from flowyard_chroma.retriever import ChromaRetriever, format_context
    from flowyard_chroma.settings import ChromaSettings


def __getattr__(name: str) -> Any:
    try:
        module_name = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'flowyard_chroma' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
