"""Fixtures of the flowyard-chroma tests: stores and retrievers on a fresh persistent
directory under ``tmp_path``, with the real bundled all-MiniLM-L6-v2 (loaded once per
process and shared)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flowyard.config import Config


@pytest.fixture
def chroma_config(tmp_path: Path) -> Config:
    """A configuration whose chroma store lives in ``tmp_path / "chroma"``."""
    return Config({"chroma": {"path": str(tmp_path / "chroma")},
                   "paths": {"data_dir": str(tmp_path / "data")}})


@pytest.fixture
def store(chroma_config: Config) -> Any:
    from flowyard_chroma.memory import ChromaMemoryStore

    return ChromaMemoryStore(chroma_config)


@pytest.fixture
def rag(chroma_config: Config) -> Any:
    from flowyard_chroma.retriever import ChromaRetriever

    return ChromaRetriever(chroma_config)
