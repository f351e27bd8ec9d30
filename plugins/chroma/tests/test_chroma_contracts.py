"""The core's memory and retriever contract suites, run against the chroma plugin with the
real MiniLM model and a persistent store in ``tmp_path``."""

from __future__ import annotations

from typing import Any

import pytest
from flowyard.testing import MemoryContract, RetrieverContract


class TestChromaMemoryContract(MemoryContract):
    @pytest.fixture
    def memory_store(self, store: Any) -> Any:
        return store


class TestChromaRetrieverContract(RetrieverContract):
    @pytest.fixture
    def retriever(self, rag: Any) -> Any:
        return rag


class TestChromaRetrieverContractSmallChunks(RetrieverContract):
    """The same promises when documents span several chunks."""

    @pytest.fixture
    def retriever(self, chroma_config: Any) -> Any:
        from flowyard_chroma.retriever import ChromaRetriever

        return ChromaRetriever(chroma_config, chunk_tokens=12, chunk_overlap=3)
