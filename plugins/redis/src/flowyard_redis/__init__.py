"""flowyard-redis: Redis storage for flowyard.

Set ``storage.url`` (or ``FLOWYARD_STORAGE_URL``) to ``redis://host:6379/0`` (``rediss://``
for TLS) and runs, step attempts, checkpoints, events, logs, cost lines, plugin data (with
native expiry for the response cache), flowyard-server's task queue, the audit log and
shared rate limits/budgets/breakers are kept in Redis. :class:`RedisStorage` is imported
lazily so that plugin discovery stays cheap; :mod:`flowyard_redis.testing` starts a
throwaway ``redis-server`` for tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["RedisStorage", "__version__"]

if TYPE_CHECKING:
    from flowyard_redis.storage import RedisStorage


def __getattr__(name: str) -> Any:
    if name == "RedisStorage":
        from flowyard_redis.storage import RedisStorage

        return RedisStorage
    raise AttributeError(f"module 'flowyard_redis' has no attribute {name!r}")
