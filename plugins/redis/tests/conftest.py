"""Fixtures of the flowyard-redis tests: one throwaway ``redis-server`` per session.

The server is Debian's ``redis-server`` (installed by ``scripts/system-deps.sh``), started on
a free port of 127.0.0.1 with the append-only file fsynced on every write
(:class:`flowyard_redis.testing.RedisServer`). Each test gets its own key prefix, so tests
never see each other's keys.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from flowyard import new_id
from flowyard_redis.storage import RedisStorage
from flowyard_redis.testing import RedisServer


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once on asyncio and once on trio."""
    return str(request.param)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server for the whole session (AOF on, ``appendfsync always``)."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server's URL with a key prefix of this test's own."""
    return f"{redis_server.url}?prefix=t{new_id()[:12]}:"


@pytest.fixture
async def redis_storage(redis_url: str) -> AsyncIterator[RedisStorage]:
    """An opened RedisStorage on an empty key prefix."""
    storage = RedisStorage(redis_url)
    await storage.open()
    try:
        yield storage
    finally:
        await storage.close()
