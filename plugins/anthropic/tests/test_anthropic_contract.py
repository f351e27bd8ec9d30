"""The core's provider contract, run against the Anthropic plugin talking to a fake Messages
API (an httpx transport that follows the documented wire shapes)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from flowyard.testing import ProviderContract
from flowyard_anthropic.provider import AnthropicProvider

API_KEY = "sk-ant-api03-FAKEkey0123456789"


class TestAnthropicProviderContract(ProviderContract):
    model = "claude-3-5-haiku-20241022"
    supports_embeddings = False  # Anthropic has no embeddings API

    @pytest.fixture
    async def provider(self, fake_anthropic: Any) -> AsyncIterator[AnthropicProvider]:
        provider = AnthropicProvider(api_key=API_KEY,
                                     transport=httpx.MockTransport(fake_anthropic))
        yield provider
        await provider.aclose()
