"""Hook implementations of flowyard-redis (plugin name ``redis``).

Registers the storage schemes ``redis`` and ``rediss`` (TLS). Importing this module is
cheap: redis-py is imported only when a backend is built.
"""

from __future__ import annotations

from typing import Any

from flowyard import Config, Register, hookimpl


def make_storage(url: str, config: Config) -> Any:
    """Return a :class:`flowyard_redis.storage.RedisStorage` for ``url`` (not yet opened).

    Args:
        url: ``redis://[user:password@]host[:port][/db][?prefix=fy:&...]`` or ``rediss://...``.
        config: the stack configuration.

    Returns:
        the backend; :meth:`~flowyard_redis.storage.RedisStorage.open` connects it.

    Raises:
        StorageError: the URL is invalid.
    """
    from flowyard_redis.storage import RedisStorage

    return RedisStorage(url, config)


#: Below the in-core ``memory`` backend (-1): Redis is used only when a URL names it, never
#: chosen as the default storage because the plugin is installed.
DEFAULT_PRIORITY = -10


@hookimpl
def register_storage(register: Register, config: Config) -> None:
    """Register the ``redis`` and ``rediss`` storage schemes (never the default storage)."""
    register("redis", make_storage, default_priority=DEFAULT_PRIORITY)
    register("rediss", make_storage, default_priority=DEFAULT_PRIORITY)
