"""The core's storage contract suite on Redis (task queue, audit log and key-value listing
included: RedisStorage implements every optional protocol the suite checks).
"""

from __future__ import annotations

import pytest
from flowyard import (
    SupportsAuditLog,
    SupportsIdempotentRuns,
    SupportsKeyValueListing,
    SupportsKeyValueTTL,
    SupportsSharedLimits,
    SupportsStepCommit,
    SupportsTaskQueue,
)
from flowyard.testing import StorageContract
from flowyard_redis.storage import RedisStorage


class TestRedisContract(StorageContract):
    @pytest.fixture
    async def storage(self, redis_storage: RedisStorage) -> RedisStorage:
        return redis_storage


def test_every_optional_protocol_is_implemented() -> None:
    """No part of the contract suite is skipped for Redis."""
    storage = RedisStorage("redis://127.0.0.1:1/0")
    for protocol in (SupportsAuditLog, SupportsIdempotentRuns, SupportsKeyValueListing,
                     SupportsKeyValueTTL, SupportsSharedLimits, SupportsStepCommit,
                     SupportsTaskQueue):
        assert isinstance(storage, protocol), protocol.__name__
