"""The core's shared-limits contract suite on Redis (Lua scripts on Redis's clock)."""

from __future__ import annotations

import pytest
from flowyard.testing import SharedLimitsContract
from flowyard_redis.storage import RedisStorage


class TestRedisSharedLimits(SharedLimitsContract):
    @pytest.fixture
    async def storage(self, redis_storage: RedisStorage) -> RedisStorage:
        return redis_storage

    async def test_a_refused_call_is_admitted_after_its_wait(self, storage: RedisStorage
                                                             ) -> None:
        """The contract's check, with one timing assumption made explicit.

        The contract's version admits ``a`` and ``b``, waits until ``c`` is admitted, and
        then expects ``d`` at once. ``c`` is admitted as soon as ``a`` leaves the window;
        ``b`` was admitted one round trip to Redis later (1-4 ms through a worker thread),
        so for those milliseconds ``d`` is rightly refused (observed: about every other
        run). Here ``d`` must be admitted within 0.25 s -- far less than the 0.5 s it would
        wait if the retried ``c`` had taken a second place -- and ``e`` is then refused.
        """
        backend = self._backend(storage)
        key = self._key("rate:again")
        windows = [(0.5, 2)]
        assert await backend.shared_rate_acquire(key, permit_id="a", windows=windows) == 0.0
        assert await backend.shared_rate_acquire(key, permit_id="b", windows=windows) == 0.0
        delay = await backend.shared_rate_acquire(key, permit_id="c", windows=windows)
        assert 0.0 < delay <= 0.5 + 1e-6
        took = await self._admit(backend, key, "c", windows=windows)
        assert took >= delay - 0.1  # not admitted before the window moved on
        assert await backend.shared_rate_acquire(key, permit_id="c", windows=windows) == 0.0
        assert await self._admit(backend, key, "d", windows=windows) < 0.25
        assert await backend.shared_rate_acquire(key, permit_id="e", windows=windows) > 0.0
