"""Shared rate limits, circuit breakers and budget reservations on Redis."""

from __future__ import annotations

__all__ = ["SharedLimitsMixin"]


class SharedLimitsMixin:
    """Placeholder."""
