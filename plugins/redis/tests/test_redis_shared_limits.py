"""The core's shared-limits contract suite on Redis (Lua scripts on Redis's clock)."""

from __future__ import annotations

import pytest
from flowyard.testing import SharedLimitsContract
from flowyard_redis.storage import RedisStorage


class TestRedisSharedLimits(SharedLimitsContract):
    @pytest.fixture
    async def storage(self, redis_storage: RedisStorage) -> RedisStorage:
        return redis_storage
