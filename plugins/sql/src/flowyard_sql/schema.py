"""The SQLAlchemy Core tables of the current schema (the head migration).

Queries use these definitions; the migrations in :mod:`flowyard_sql.migrations` create and
evolve the real tables. Table names carry the ``fy_`` prefix so flowyard can share a database
with other applications.

JSON-ready values (inputs, outputs, event data, plugin values) are stored as JSON text, which
round-trips identically on SQLite and PostgreSQL. Times are UNIX seconds (float); token counts
are integers; money is US dollars (float, NULL when unknown).
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["metadata", "runs", "leases", "attempts", "checkpoints", "events", "logs", "costs",
           "kv", "tasks", "audit"]

metadata = sa.MetaData()

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

runs = sa.Table(
    "fy_runs",
    metadata,
    sa.Column("id", sa.String(), primary_key=True),
    sa.Column("workflow_name", sa.String(), nullable=False),
    sa.Column("status", sa.String(), nullable=False),
    sa.Column("inputs", sa.Text(), nullable=False),
    sa.Column("outputs", sa.Text(), nullable=False),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("workflow_hash", sa.String(), nullable=False),
    sa.Column("workflow", sa.Text(), nullable=False),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("started_at", sa.Float(), nullable=True),
    sa.Column("finished_at", sa.Float(), nullable=True),
    sa.Column("input_tokens", sa.BigInteger(), nullable=False),
    sa.Column("output_tokens", sa.BigInteger(), nullable=False),
    sa.Column("cost_usd", sa.Float(), nullable=True),
    sa.Column("resume_count", sa.Integer(), nullable=False),
    sa.Column("metadata", sa.Text(), nullable=False),
    sa.Column("extra", sa.Text(), nullable=False),
    # the submission idempotency key (migration 0004; unique index ux_fy_runs_idempotency_key;
    # NULL for runs created without one)
    sa.Column("idempotency_key", sa.String(), nullable=True),
)

#: The lease of each run being executed (see flowyard.interfaces.RunLease); a row is deleted
#: when its owner releases it. Kept out of fy_runs so that update_run never touches it.
leases = sa.Table(
    "fy_run_leases",
    metadata,
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

attempts = sa.Table(
    "fy_attempts",
    metadata,
    sa.Column("run_id", sa.String(), primary_key=True),
    sa.Column("step_key", sa.String(), primary_key=True),
    sa.Column("attempt", sa.Integer(), primary_key=True),
    sa.Column("step_id", sa.String(), nullable=False),
    sa.Column("status", sa.String(), nullable=False),
    sa.Column("idempotency_key", sa.String(), nullable=False),
    sa.Column("output", sa.Text(), nullable=False),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("error_type", sa.String(), nullable=True),
    sa.Column("started_at", sa.Float(), nullable=False),
    sa.Column("finished_at", sa.Float(), nullable=True),
    sa.Column("input_tokens", sa.BigInteger(), nullable=False),
    sa.Column("output_tokens", sa.BigInteger(), nullable=False),
    sa.Column("cost_usd", sa.Float(), nullable=True),
    sa.Column("extra", sa.Text(), nullable=False),
)

checkpoints = sa.Table(
    "fy_checkpoints",
    metadata,
    sa.Column("run_id", sa.String(), primary_key=True),
    sa.Column("step_key", sa.String(), primary_key=True),
    sa.Column("output", sa.Text(), nullable=False),
    sa.Column("saved_at", sa.Float(), nullable=False),
)

events = sa.Table(
    "fy_events",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(), nullable=False),
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("type", sa.String(), nullable=False),
    sa.Column("step_id", sa.String(), nullable=True),
    sa.Column("time", sa.Float(), nullable=False),
    sa.Column("data", sa.Text(), nullable=False),
    # one event per (run_id, seq) (migration 0006): inserts are ON CONFLICT DO NOTHING
    sa.Index("ux_fy_events_run_seq", "run_id", "seq", unique=True),
)

logs = sa.Table(
    "fy_logs",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(), nullable=False),
    sa.Column("step_id", sa.String(), nullable=True),
    sa.Column("level", sa.String(), nullable=False),
    sa.Column("message", sa.Text(), nullable=False),
    sa.Column("time", sa.Float(), nullable=False),
)

costs = sa.Table(
    "fy_costs",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(), nullable=False),
    sa.Column("provider", sa.String(), nullable=False),
    sa.Column("model", sa.String(), nullable=False),
    sa.Column("input_tokens", sa.BigInteger(), nullable=False),
    sa.Column("output_tokens", sa.BigInteger(), nullable=False),
    sa.Column("cost_usd", sa.Float(), nullable=True),
    sa.Column("step_id", sa.String(), nullable=True),
    sa.Column("agent", sa.String(), nullable=True),
    sa.Column("workflow_name", sa.String(), nullable=False),
    sa.Column("time", sa.Float(), nullable=False),
    sa.Column("estimated", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("overshoot_usd", sa.Float(), nullable=False, server_default="0"),
)

kv = sa.Table(
    "fy_kv",
    metadata,
    sa.Column("namespace", sa.String(), primary_key=True),
    sa.Column("key", sa.String(), primary_key=True),
    sa.Column("value", sa.Text(), nullable=False),
    sa.Column("updated_at", sa.Float(), nullable=False),
)

#: The durable task queue (migration 0007; see flowyard_sql.queue): one row per TaskRecord,
#: every field a column. Claims read ix_fy_tasks_claim in claim order (priority, then age);
#: ux_fy_tasks_idempotency_key holds at most one task per tenant and idempotency key.
tasks = sa.Table(
    "fy_tasks",
    metadata,
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
    sa.Index("ix_fy_tasks_claim", "status", sa.text("priority DESC"), "created_at", "id"),
    sa.Index("ix_fy_tasks_tenant_created", "tenant", "created_at"),
    sa.Index("ux_fy_tasks_idempotency_key", "tenant", "idempotency_key", unique=True,
             sqlite_where=sa.text("idempotency_key IS NOT NULL"),
             postgresql_where=sa.text("idempotency_key IS NOT NULL")),
)

#: The hash-chained audit log (migration 0008; see flowyard_sql.audit): one row per
#: AuditRecord, every field a column, ``seq`` the primary key (a second writer of one seq
#: fails instead of forking the chain). Rows are only ever inserted.
audit = sa.Table(
    "fy_audit",
    metadata,
    sa.Column("seq", _ID, primary_key=True, autoincrement=False),
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
