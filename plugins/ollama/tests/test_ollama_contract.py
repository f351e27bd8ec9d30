"""The core's provider contract, run against the Ollama plugin talking to a fake Ollama
server (an httpx transport following the documented wire shapes)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from flowyard.testing import ProviderContract
from flowyard_ollama.provider import OllamaProvider


class TestOllamaProviderContract(ProviderContract):
    model = "llama3.2:latest"
    supports_embeddings = True
    embedding_model = "nomic-embed-text:latest"

    @pytest.fixture
    async def provider(self, fake_ollama: Any) -> AsyncIterator[OllamaProvider]:
        provider = OllamaProvider(base_url="http://127.0.0.1:11434",
                                  transport=httpx.MockTransport(fake_ollama))
        yield provider
        await provider.aclose()

