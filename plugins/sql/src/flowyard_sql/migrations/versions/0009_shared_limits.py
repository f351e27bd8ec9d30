"""Shared rate limits, circuit breakers and budget reservations (see
:mod:`flowyard_sql.limits`): tables ``fy_rate_keys``, ``fy_rate_events``, ``fy_breakers``,
``fy_budgets`` and ``fy_budget_holds``.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

Times are UNIX seconds (float), money US dollars (float), tokens integers. ``fy_rate_events``
is read by key and time (index ``ix_fy_rate_events_key_at``), ``fy_budget_holds`` by key
and expiry (``ix_fy_budget_holds_key``) and by reservation (its primary key's first column).

The tables are new: no existing row is touched.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fy_rate_keys",
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("paused_until", sa.Float(), nullable=True),
    )
    op.create_table(
        "fy_rate_events",
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("permit_id", sa.String(), primary_key=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("hold_until", sa.Float(), nullable=True),
    )
    op.create_index("ix_fy_rate_events_key_at", "fy_rate_events", ["key", "at"])
    op.create_table(
        "fy_breakers",
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("reopens_at", sa.Float(), nullable=True),
        sa.Column("probe_at", sa.Float(), nullable=True),
    )
    op.create_table(
        "fy_budgets",
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("spent_usd", sa.Float(), nullable=False),
    )
    op.create_table(
        "fy_budget_holds",
        sa.Column("reservation_id", sa.String(), primary_key=True),
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("amount_usd", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_fy_budget_holds_key", "fy_budget_holds", ["key", "expires_at"])


def downgrade() -> None:
    op.drop_index("ix_fy_budget_holds_key", table_name="fy_budget_holds")
    op.drop_table("fy_budget_holds")
    op.drop_table("fy_budgets")
    op.drop_table("fy_breakers")
    op.drop_index("ix_fy_rate_events_key_at", table_name="fy_rate_events")
    op.drop_table("fy_rate_events")
    op.drop_table("fy_rate_keys")
