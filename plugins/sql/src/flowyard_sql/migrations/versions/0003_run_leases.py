"""Run leases: the owner process and heartbeat of each run being executed.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

Runs left ``running`` before this revision have no lease, so they show as abandoned and can be
resumed: let runs of an older flowyard finish (or stop them) before upgrading.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fy_run_leases",
        sa.Column("run_id", sa.String(), primary_key=True),
        sa.Column("owner", sa.String(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("pid", sa.BigInteger(), nullable=False),
        sa.Column("host_id", sa.String(), nullable=False),
        sa.Column("process_start", sa.String(), nullable=False),
        sa.Column("acquired_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("fy_run_leases")
