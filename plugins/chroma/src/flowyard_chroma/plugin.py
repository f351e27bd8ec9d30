"""Hook implementations of flowyard-chroma (plugin name ``chroma``).

Cheap to import: the store, the retriever and the tools are built by lazy factories on first
lookup, and chromadb, torch and sentence-transformers are imported only then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowyard import Config, Register, hookimpl

if TYPE_CHECKING:
    from flowyard import Services


@hookimpl
def register_memory_stores(register: Register, config: Config, services: Services) -> None:
    """``chroma``: the chromadb memory store (default priority 10)."""

    def make() -> Any:
        from flowyard_chroma.memory import ChromaMemoryStore

        return ChromaMemoryStore(config, stack=services)

    register("chroma", factory=make, default_priority=10)


@hookimpl
def register_retrievers(register: Register, config: Config, services: Services) -> None:
    """``chroma``: the chromadb hybrid (dense + BM25) retriever (default priority 10)."""

    def make() -> Any:
        from flowyard_chroma.retriever import ChromaRetriever

        return ChromaRetriever(config, stack=services)

    register("chroma", factory=make, default_priority=10)


@hookimpl
def register_tools(register: Register, config: Config) -> None:
    """The memory and RAG actions (``memory.add``, ``rag.search``, ...)."""
    from flowyard_chroma.tools import TOOL_NAMES

    def maker(name: str) -> Any:
        def make() -> Any:
            from flowyard_chroma.tools import make_tools

            return make_tools()[name]

        return make

    for name in TOOL_NAMES:
        register(name, factory=maker(name))
