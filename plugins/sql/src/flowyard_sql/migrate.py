"""Schema migrations: Alembic revisions shipped in :mod:`flowyard_sql.migrations`.

:func:`upgrade` brings a database to the newest revision. It is called by
:meth:`flowyard_sql.SQLStorage.open`, so opening an older database upgrades it in place.
Concurrent openers are serialised: SQLite by a write transaction (``BEGIN IMMEDIATE``) held
across the check and the migration, PostgreSQL by a transaction-scoped advisory lock; both
databases run the DDL inside that transaction, so a failed migration leaves the old schema.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import sqlalchemy as sa

__all__ = ["VERSION_TABLE", "SCRIPT_LOCATION", "head_revision", "current_revision", "upgrade",
           "SchemaTooNewError"]

#: The Alembic version table (prefixed so flowyard can share a database).
VERSION_TABLE = "flowyard_alembic_version"
#: Directory of the migration scripts inside the installed package.
SCRIPT_LOCATION = str(Path(__file__).parent / "migrations")
#: Key of the PostgreSQL advisory lock taken while migrating ("flowyard" in ASCII, truncated).
_PG_LOCK_KEY = 0x666C6F7779617264 & 0x7FFFFFFFFFFFFFFF


class SchemaTooNewError(Exception):
    """The database was migrated by a newer flowyard-sql than the one installed."""


def _alembic_config(connection: sa.Connection | None = None):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@cache
def _script():  # type: ignore[no-untyped-def]
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config())


def head_revision() -> str:
    """Return the newest revision id shipped with this package (``"0002"``...)."""
    head = _script().get_current_head()
    assert head is not None
    return str(head)


def known_revisions() -> set[str]:
    """Return every revision id shipped with this package."""
    return {rev.revision for rev in _script().walk_revisions()}


def current_revision(connection: sa.Connection) -> str | None:
    """Return the database's revision, or None when flowyard's schema was never created."""
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection,
                                         opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def upgrade(connection: sa.Connection, target: str = "head") -> bool:
    """Migrate the database of ``connection`` to ``target`` (default: the newest revision).

    The caller holds the transaction and, for concurrent safety, the write lock (see the module
    docstring); this function only checks the revision and runs the pending migrations.

    Returns:
        True when migrations ran, False when the database was already at ``target``.

    Raises:
        SchemaTooNewError: the database is at a revision this package does not know.
        sqlalchemy.exc.SQLAlchemyError: a migration failed (the transaction is then rolled back
            by the caller).
    """
    from alembic import command

    current = current_revision(connection)
    wanted = head_revision() if target == "head" else target
    if current is not None and current not in known_revisions():
        raise SchemaTooNewError(
            f"the database is at schema revision {current!r}, which this flowyard-sql does not "
            f"know (newest known: {head_revision()!r}); upgrade flowyard-sql"
        )
    if current == wanted:
        return False
    command.upgrade(_alembic_config(connection), target)
    return True
