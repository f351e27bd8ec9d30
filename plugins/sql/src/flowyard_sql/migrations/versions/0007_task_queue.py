"""The durable task queue: table ``fy_tasks`` (one row per submitted task).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

Every field of :class:`flowyard.TaskRecord` has a column; ``inputs``, ``outputs`` and
``metadata`` are JSON text like the other tables' values, times are UNIX seconds. Three
indexes serve the queue (see :mod:`flowyard_sql.queue`):

* ``ix_fy_tasks_claim`` (status, priority DESC, created_at, id): a claim reads the first
  ``queued`` row in claim order, and the ``running`` rows to find an expired lease, without a
  sort;
* ``ix_fy_tasks_tenant_created`` (tenant, created_at): a tenant's tasks, newest first;
* ``ux_fy_tasks_idempotency_key`` (tenant, idempotency_key), unique where the key is not
  NULL: at most one task per tenant and key, so "insert unless the key names a task" is one
  ``INSERT ... ON CONFLICT DO NOTHING`` across processes.

The table is new: no existing row is touched.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fy_tasks",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("inputs", sa.Text(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("idempotency_key", sa.String(), nullable=True),
        sa.Column("request_hash", sa.String(), nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("worker", sa.String(), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("outputs", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("metadata", sa.Text(), nullable=False),
    )
    op.create_index("ix_fy_tasks_claim", "fy_tasks",
                    ["status", sa.text("priority DESC"), "created_at", "id"])
    op.create_index("ix_fy_tasks_tenant_created", "fy_tasks", ["tenant", "created_at"])
    op.create_index("ux_fy_tasks_idempotency_key", "fy_tasks", ["tenant", "idempotency_key"],
                    unique=True, sqlite_where=sa.text("idempotency_key IS NOT NULL"),
                    postgresql_where=sa.text("idempotency_key IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ux_fy_tasks_idempotency_key", table_name="fy_tasks")
    op.drop_index("ix_fy_tasks_tenant_created", table_name="fy_tasks")
    op.drop_index("ix_fy_tasks_claim", table_name="fy_tasks")
    op.drop_table("fy_tasks")
