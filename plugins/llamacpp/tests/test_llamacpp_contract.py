"""The core's provider contract suite against the real SmolLM2 model on llama.cpp."""

from __future__ import annotations

import pytest
from flowyard.testing import ProviderContract
from flowyard_llamacpp import LlamaCppProvider

pytestmark = pytest.mark.slow


class TestLlamaCppProviderContract(ProviderContract):
    model = "smollm2"
    supports_streaming = True
    supports_tools = True
    supports_json = True
    supports_embeddings = True

    @pytest.fixture
    def provider(self) -> LlamaCppProvider:
        return LlamaCppProvider()
