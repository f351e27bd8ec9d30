"""Hook implementations of flowyard-sql (plugin name ``sql``).

Registers the storage schemes ``sqlite`` (the default storage: highest default priority,
``flowyard.db`` in the data directory) and ``postgresql`` (also ``postgres``). Importing this
module is cheap: SQLAlchemy is imported only when a backend is built.
"""

from __future__ import annotations

from typing import Any

from flowyard import Config, Register, hookimpl


def make_storage(url: str, config: Config) -> Any:
    """Return a :class:`flowyard_sql.storage.SQLStorage` for ``url`` (not yet opened).

    Raises:
        StorageError: the URL is invalid or names an unsupported driver.
    """
    from flowyard_sql.storage import SQLStorage

    return SQLStorage(url, config)


def default_sqlite_url(config: Config) -> str:
    """Return ``sqlite:///<data_dir>/flowyard.db`` for the configuration's data directory."""
    return f"sqlite:///{config.data_dir / 'flowyard.db'}"


@hookimpl
def register_storage(register: Register, config: Config) -> None:
    """Register ``sqlite`` (default, priority 10) and ``postgresql``/``postgres``."""
    register("sqlite", make_storage, default_priority=10, default_url=default_sqlite_url)
    register("postgresql", make_storage)
    register("postgres", make_storage)
