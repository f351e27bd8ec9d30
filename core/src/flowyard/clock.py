"""Clocks for rate limiters and circuit breakers: the real one and a virtual one for tests.

A clock has ``now()`` (seconds, monotonic), ``sleep(seconds)`` and ``wait(event, timeout)``.
The gateway's limiters and breakers read time only through their clock, so tests and the
limiter benchmark can run minutes of traffic in milliseconds with :class:`VirtualClock`.

:class:`MonotonicClock` reads ``time.monotonic()`` (not the event loop's clock: trio gives each
``trio.run`` its own randomly offset clock, and a stack's limiters outlive one event loop) and
sleeps with ``anyio.sleep``.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol, runtime_checkable

import anyio

__all__ = ["Clock", "MonotonicClock", "VirtualClock", "settle"]


@runtime_checkable
class Clock(Protocol):
    """Time source for limiters and breakers. All values in seconds."""

    def now(self) -> float:
        """Return the current time in seconds (monotonic; the origin is arbitrary)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` seconds of this clock's time."""
        ...

    async def wait(self, event: anyio.Event, timeout: float | None) -> None:
        """Return when ``event`` is set or ``timeout`` seconds have passed (None: no timeout).

        The caller checks the state it waits for afterwards; returning early is allowed.
        """
        ...


class MonotonicClock:
    """Real time: ``time.monotonic()`` for reading, ``anyio.sleep`` for waiting."""

    def now(self) -> float:
        """Return ``time.monotonic()`` in seconds."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """``anyio.sleep(seconds)``."""
        await anyio.sleep(max(0.0, seconds))

    async def wait(self, event: anyio.Event, timeout: float | None) -> None:
        """Wait for ``event`` at most ``timeout`` seconds."""
        if timeout is None:
            await event.wait()
            return
        with anyio.move_on_after(max(0.0, timeout)):
            await event.wait()


async def settle(max_rounds: int = 100_000) -> None:
    """Return once every other task of the event loop is blocked.

    On trio this is ``trio.testing.wait_all_tasks_blocked``. On asyncio it yields to the loop
    until no other task is runnable (anyio's own version polls every 0.1 real seconds, too
    slow for a virtual clock). After ``max_rounds`` yields it gives up and returns.
    """
    import sniffio

    if sniffio.current_async_library() == "trio":
        import trio.testing

        await trio.testing.wait_all_tasks_blocked()
        return
    import asyncio

    this = asyncio.current_task()
    for _ in range(max_rounds):
        await asyncio.sleep(0)
        busy = False
        for task in asyncio.all_tasks():
            if task is this:
                continue
            waiter = getattr(task, "_fut_waiter", None)
            if waiter is None or waiter.done():
                busy = True
                break
        if not busy:
            return


class VirtualClock:
    """A clock whose time only moves when told to (or automatically, see :meth:`autojump`).

    Args:
        start: the initial time in seconds.

    Use :meth:`advance` to move time forward, firing the timers that fall due in order, or run
    the code under test inside ``async with clock.autojump():``, which jumps to the next timer
    whenever every task is blocked (like trio's ``MockClock(autojump_threshold=0)``, on both
    anyio backends).
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._timers: list[tuple[float, int, anyio.Event]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        """Return the virtual time in seconds."""
        return self._now

    def _schedule(self, deadline: float, event: anyio.Event) -> None:
        heapq.heappush(self._timers, (deadline, next(self._seq), event))

    async def sleep(self, seconds: float) -> None:
        """Block until the virtual time has moved ``seconds`` forward."""
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        self._schedule(self._now + seconds, event)
        await event.wait()

    async def wait(self, event: anyio.Event, timeout: float | None) -> None:
        """Wait for ``event``; a timer sets it when ``timeout`` virtual seconds pass."""
        if timeout is not None:
            if timeout <= 0:
                await anyio.lowlevel.checkpoint()
                return
            self._schedule(self._now + timeout, event)
        await event.wait()

    @property
    def next_deadline(self) -> float | None:
        """The time of the earliest pending timer, or None."""
        while self._timers and self._timers[0][2].is_set():
            heapq.heappop(self._timers)  # fired already through another path
        return self._timers[0][0] if self._timers else None

    def _fire_due(self) -> int:
        fired = 0
        while self._timers and self._timers[0][0] <= self._now:
            _, _, event = heapq.heappop(self._timers)
            if not event.is_set():
                event.set()
                fired += 1
        return fired

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing due timers in deadline order and letting
        the woken tasks run (until all are blocked) after each one.
        """
        if seconds < 0:
            raise ValueError(f"cannot move a clock backwards ({seconds} s)")
        target = self._now + seconds
        await settle()
        while True:
            deadline = self.next_deadline
            if deadline is None or deadline > target:
                break
            self._now = max(self._now, deadline)
            self._fire_due()
            await settle()
        self._now = target
        await settle()

    @asynccontextmanager
    async def autojump(self) -> AsyncIterator[VirtualClock]:
        """Jump to the next timer whenever every other task is blocked, while the block runs.

        When all tasks are blocked and no timer is pending (a task waits for real I/O or a
        thread), it yields real time in 1 ms steps.
        """
        async def jumper() -> None:
            while True:
                await settle()
                deadline = self.next_deadline
                if deadline is None:
                    await anyio.sleep(0.001)
                    continue
                self._now = max(self._now, deadline)
                self._fire_due()

        async with anyio.create_task_group() as tg:
            tg.start_soon(jumper)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()


def remaining(deadline: float, now: float) -> float:
    """Seconds from ``now`` to ``deadline`` (0 when passed; inf stays inf)."""
    if math.isinf(deadline):
        return math.inf
    return max(0.0, deadline - now)
