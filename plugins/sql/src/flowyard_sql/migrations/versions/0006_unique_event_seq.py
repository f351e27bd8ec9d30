"""One event per ``(run_id, seq)``: duplicates removed, then a unique index.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

A write retried after an error that hid its commit (a dropped connection, a timeout) could
store a batch of events twice. Each duplicate is a copy of the event first stored with that
``(run_id, seq)``: the row with the lowest id is kept, the others are deleted (their number is
logged by the ``flowyard_sql.migrate`` logger), and the unique index ``ux_fy_events_run_seq``
replaces the plain index ``ix_fy_events_run_seq`` of revision 0001 (same columns, so
``list_events`` reads the same way). Events are then inserted with ``ON CONFLICT (run_id, seq)
DO NOTHING``. No other table is touched.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

log = logging.getLogger("flowyard_sql.migrate")

# Correlated through the (run_id, seq) index of 0001: one index probe per event row, on SQLite
# and PostgreSQL alike.
_DELETE_DUPLICATES = sa.text(
    "DELETE FROM fy_events WHERE EXISTS (SELECT 1 FROM fy_events AS kept "
    "WHERE kept.run_id = fy_events.run_id AND kept.seq = fy_events.seq "
    "AND kept.id < fy_events.id)")


def upgrade() -> None:
    deleted = op.get_bind().execute(_DELETE_DUPLICATES).rowcount
    if deleted:
        log.warning("schema revision 0006: deleted %d duplicate event rows (same run and seq "
                    "as an event stored earlier; the first one of each is kept)", deleted)
    op.drop_index("ix_fy_events_run_seq", table_name="fy_events")
    op.create_index("ux_fy_events_run_seq", "fy_events", ["run_id", "seq"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_fy_events_run_seq", table_name="fy_events")
    op.create_index("ix_fy_events_run_seq", "fy_events", ["run_id", "seq"])
