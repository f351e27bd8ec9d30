"""The audit log: table ``fy_audit`` (one row per :class:`flowyard.AuditRecord`).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

Every field of the record has a column; ``details`` is JSON text like the other tables'
values, ``time`` is UNIX seconds. ``seq`` is the primary key (BIGINT on PostgreSQL, SQLite's
INTEGER): records are appended with consecutive sequence numbers inside one serialised
transaction (see :mod:`flowyard_sql.audit`), and a second insert of one ``seq`` fails, so the
hash chain cannot fork. No other index: records are read in ``seq`` order.

The table is new: no existing row is touched.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fy_audit",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  primary_key=True, autoincrement=False),
        sa.Column("time", sa.Float(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=True),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("run_id", sa.String(), nullable=True),
        sa.Column("step_id", sa.String(), nullable=True),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(), nullable=False),
        sa.Column("hash", sa.String(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("fy_audit")
