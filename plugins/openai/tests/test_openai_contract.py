"""The core's provider contract, run against the OpenAI plugin talking HTTP to the mock
OpenAI-compatible server on 127.0.0.1 (the real llama.cpp server is driven in
test_openai_llamacpp.py: it ignores unknown model names, which the contract checks)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from flowyard.testing import ProviderContract
from flowyard_openai.provider import OpenAIProvider


class TestOpenAIProviderContract(ProviderContract):
    model = "mock-model"
    supports_embeddings = True
    embedding_model = "mock-embed"

    @pytest.fixture
    async def provider(self, mock_openai_server: Any) -> AsyncIterator[OpenAIProvider]:
        provider = OpenAIProvider("mock", base_url=mock_openai_server.base_url,
                                  api_key="sk-mock-key-0123456789", free=True)
        yield provider
        await provider.aclose()


class TestOpenAIProviderContractOnHttpxTransport(TestOpenAIProviderContract):
    """The same promises with httpx's own transport on asyncio too."""

    @pytest.fixture
    async def provider(self, mock_openai_server: Any) -> AsyncIterator[OpenAIProvider]:
        provider = OpenAIProvider("mock", base_url=mock_openai_server.base_url,
                                  api_key="sk-mock-key-0123456789", backend="httpx")
        yield provider
        await provider.aclose()
