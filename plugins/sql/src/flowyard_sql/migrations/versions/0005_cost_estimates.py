"""Cost lines say whether their tokens were estimated and how far they overshot their budget
reservation (``CostLine.estimated``, ``CostLine.overshoot_usd``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24

Existing lines get ``estimated = false`` and ``overshoot_usd = 0``: they were recorded from
reported usage, or not at all (cut streams were not charged before this revision).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fy_costs") as batch:
        batch.add_column(sa.Column("estimated", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("overshoot_usd", sa.Float(), nullable=False,
                                   server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("fy_costs") as batch:
        batch.drop_column("overshoot_usd")
        batch.drop_column("estimated")
