"""Shared rate limits, breakers and budgets: the contract on the in-memory storage, and the
gateway's use of a shared backend (``[limits] shared``)."""

from __future__ import annotations

from typing import Any

import pytest

from flowyard.builtin.memory_storage import MemoryStorage
from flowyard.testing import SharedLimitsContract


class TestMemorySharedLimitsContract(SharedLimitsContract):
    @pytest.fixture
    async def storage(self) -> Any:
        backend = MemoryStorage()
        await backend.open()
        yield backend
        await backend.close()
