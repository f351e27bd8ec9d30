"""Alembic migrations of the flowyard SQL schema (applied automatically on open)."""
