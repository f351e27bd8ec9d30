"""flowyard-sql: SQL storage for flowyard (SQLite by default, PostgreSQL by URL).

Install it and ``Stack.default()`` persists runs, step attempts, checkpoints, events, logs,
cost lines, plugin data and the durable task queue (:mod:`flowyard_sql.queue`) to
``flowyard.db`` in the flowyard data directory. Set
``storage.url`` (or ``FLOWYARD_STORAGE_URL``) to ``sqlite:///path/runs.db`` or
``postgresql+psycopg://user:password@host/db`` to choose another database.

``SQLStorage`` is imported lazily so that plugin discovery stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["SQLStorage", "__version__"]

if TYPE_CHECKING:
    from flowyard_sql.storage import SQLStorage


def __getattr__(name: str) -> Any:
    if name == "SQLStorage":
        from flowyard_sql.storage import SQLStorage

        return SQLStorage
    raise AttributeError(f"module 'flowyard_sql' has no attribute {name!r}")
