"""Alembic environment of flowyard-sql.

Migrations run on a connection handed over by :mod:`flowyard_sql.migrate` through
``config.attributes["connection"]`` (already inside the caller's transaction and lock), so this
environment never opens its own engine.
"""

from __future__ import annotations

from alembic import context

from flowyard_sql.migrate import VERSION_TABLE

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "flowyard-sql migrations run through flowyard_sql.migrate.upgrade(), which provides the "
        "connection; they are not meant to be run with the alembic command line"
    )

context.configure(
    connection=connection,
    target_metadata=None,
    version_table=VERSION_TABLE,
    render_as_batch=True,
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
