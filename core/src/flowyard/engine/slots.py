"""A counting semaphore that hands free slots to the highest-priority waiter first."""

from __future__ import annotations

import heapq
import itertools

import anyio

__all__ = ["PrioritySlots"]


class PrioritySlots:
    """``total`` concurrency slots; waiters with a higher ``priority`` get a slot first
    (FIFO among equal priorities).

    Args:
        total: number of slots (>= 1).

    Raises:
        ValueError: ``total`` < 1.
    """

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"concurrency limit must be >= 1, got {total}")
        self.total = total
        self.free = total
        self._waiters: list[list[object]] = []
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        """Number of tasks waiting for a slot (cancelled waiters may still be counted)."""
        return len(self._waiters)

    async def acquire(self, priority: int = 0) -> None:
        """Wait for a slot. Cancellation while waiting gives nothing up."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        event = anyio.Event()
        entry: list[object] = [-priority, next(self._seq), event, False]
        heapq.heappush(self._waiters, entry)
        try:
            await event.wait()
        except BaseException:
            if entry[3]:  # the slot was handed over just as we were cancelled: pass it on
                self.release()
            else:
                entry[2] = None  # lazily removed by release()
            raise

    def release(self) -> None:
        """Give a slot back (to the best waiter, if any)."""
        while self._waiters:
            entry = heapq.heappop(self._waiters)
            event = entry[2]
            if event is None:
                continue
            entry[3] = True
            event.set()  # type: ignore[attr-defined]
            return
        self.free += 1
