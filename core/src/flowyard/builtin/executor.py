"""The local executor: runs a step's action in the current process, on the event loop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["LocalExecutor"]


class LocalExecutor:
    """Awaits the action directly. Blocking work belongs in the action itself (tools run
    sync functions in worker threads).
    """

    name = "local"

    async def execute(self, action: Callable[[], Awaitable[Any]], *, step_id: str) -> Any:
        """Await ``action()`` and return its result; cancellation propagates."""
        return await action()
