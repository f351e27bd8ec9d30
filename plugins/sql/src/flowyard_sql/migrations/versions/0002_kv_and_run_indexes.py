"""Key-value area for plugins; indexes for filtered run listings.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fy_kv",
        sa.Column("namespace", sa.String(), primary_key=True),
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_fy_runs_status_created", "fy_runs", ["status", "created_at"])
    op.create_index("ix_fy_runs_workflow_created", "fy_runs", ["workflow_name", "created_at"])
    op.create_index("ix_fy_costs_time", "fy_costs", ["time"])


def downgrade() -> None:
    op.drop_index("ix_fy_costs_time", table_name="fy_costs")
    op.drop_index("ix_fy_runs_workflow_created", table_name="fy_runs")
    op.drop_index("ix_fy_runs_status_created", table_name="fy_runs")
    op.drop_table("fy_kv")
