"""Fixtures of the flowyard-chroma tests: stores and retrievers on a fresh persistent
directory under ``tmp_path``, with the real bundled all-MiniLM-L6-v2 (loaded once per
process and shared)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from flowyard.config import Config

# Real models are loaded from installed packages only; never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once on asyncio and once on trio."""
    return str(request.param)


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
