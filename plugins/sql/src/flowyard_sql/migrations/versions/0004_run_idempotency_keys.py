"""Submission idempotency keys: ``fy_runs.idempotency_key`` with a unique index.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24

``stack.run(..., idempotency_key=KEY)`` stores KEY with the run it creates; the unique index
makes "insert unless a run holds this key" one atomic step across processes (``INSERT ... ON
CONFLICT (idempotency_key) DO NOTHING``). Runs created without a key hold NULL, which the
index does not compare (SQLite and PostgreSQL both allow any number of NULLs in a unique
index), so existing runs need no backfill.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("fy_runs", sa.Column("idempotency_key", sa.String(), nullable=True))
    op.create_index("ux_fy_runs_idempotency_key", "fy_runs", ["idempotency_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_fy_runs_idempotency_key", table_name="fy_runs")
    op.drop_column("fy_runs", "idempotency_key")
