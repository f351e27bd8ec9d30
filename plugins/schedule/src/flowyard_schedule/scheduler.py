"""The scheduler: fires due schedules, holds a lease in the storage, applies catch-up.

Storage layout (the stack's plugin key-value area; listing needs
:class:`~flowyard.SupportsKeyValueListing`):

- namespace ``schedule``, key = schedule name: the :class:`~flowyard_schedule.Schedule`
  (written by ``schedule add/remove/pause/resume``);
- namespace ``schedule.state``, key = schedule name: what the active scheduler did (cursor,
  last fire, last run id and status, counters), written only by the lease holder.

No double firing, in two layers:

1. **The scheduler lease.** Every scheduler claims the run lease of one marker run
   (:data:`LEASE_RUN_ID`, workflow ``schedule.scheduler-lease``) with the storage's atomic
   compare-and-set (:meth:`~flowyard.StorageBackend.claim_lease`); only the holder fires. It
   renews the lease every loop; when its process dies, another scheduler takes over once
   the lease expired (``lease_s`` seconds after the last renewal).
2. **One run per fire.** A fire's run is created with the idempotency key
   ``schedule:<name>:<UTC time>`` and a run id derived from it
   (:class:`~flowyard.SupportsIdempotentRuns`), so even two schedulers that both believe
   they hold the lease (one stalled past its lease) create one run per scheduled time.

Fires are written ahead: the schedule's state records them as ``pending`` together with the
cursor moved past their times, in one write, before they start; a fire leaves ``pending``
when its run ended. A scheduler that takes over after a crash fires the pending ones again:
their idempotency keys find the runs already created, and a run abandoned by the dead
scheduler is resumed (completed steps are not run again).

When two schedulers create the same fire's run at the same moment, the storage lets one
insert win; the other's :meth:`~flowyard.Stack.run` fails with a ``StorageError`` and the
fire is recorded with the winner's run (whose status it reports).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import attrs
from anyio.abc import TaskGroup
from flowyard import (
    FlowyardError,
    RunLease,
    RunNotFoundError,
    RunRecord,
    StorageError,
    SupportsIdempotentRuns,
    SupportsKeyValueListing,
)

from flowyard_schedule.spec import (
    Schedule,
    ScheduleError,
    check_name,
    fire_key,
    fire_run_id,
    iso_utc,
)

__all__ = ["NAMESPACE", "STATE_NAMESPACE", "LEASE_RUN_ID", "FireOutcome", "Scheduler",
           "SchedulerLease", "ScheduleStore"]

log = logging.getLogger("flowyard.schedule")

NAMESPACE = "schedule"
STATE_NAMESPACE = "schedule.state"
#: The id of the marker run whose run lease is the scheduler lease.
LEASE_RUN_ID = hashlib.sha256(b"flowyard-schedule:scheduler-lease").hexdigest()[:32]
LEASE_WORKFLOW = "schedule.scheduler-lease"


def _need(storage: Any, protocol: type, what: str) -> Any:
    if not isinstance(storage, protocol):
        raise StorageError(f"flowyard-schedule needs a storage with {what}; "
                           f"{type(storage).__name__} has none (use sqlite://, postgresql:// "
                           "or redis:// storage)")
    return storage


class ScheduleStore:
    """Schedules and their state in a storage backend's key-value area.

    Args:
        storage: an opened :class:`~flowyard.StorageBackend`.
    """

    def __init__(self, storage: Any) -> None:
        self.storage = storage

    async def add(self, schedule: Schedule, *, replace: bool = False) -> None:
        """Store ``schedule`` and reset its state (its cursor starts at ``created_at``).

        Raises:
            ScheduleError: a schedule of that name exists and ``replace`` is false.
        """
        if not replace and await self.storage.kv_get(NAMESPACE, schedule.name) is not None:
            raise ScheduleError(f"schedule {schedule.name!r} exists; remove it first or use "
                                "--replace")
        await self.storage.kv_set(NAMESPACE, schedule.name, schedule.to_json())
        await self.storage.kv_set(STATE_NAMESPACE, schedule.name,
                                  {"cursor": schedule.created_at})

    async def get(self, name: str) -> Schedule:
        """Return schedule ``name``.

        Raises:
            ScheduleError: no such schedule (or an invalid name).
        """
        data = await self.storage.kv_get(NAMESPACE, check_name(name))
        if data is None:
            raise ScheduleError(f"no schedule {name!r}")
        return Schedule.from_json(data)

    async def list(self) -> list[Schedule]:
        """Return every schedule, by name.

        Raises:
            StorageError: the storage cannot list its key-value area.
        """
        storage = _need(self.storage, SupportsKeyValueListing, "a listable key-value area")
        out: list[Schedule] = []
        after = ""
        while True:
            page = await storage.kv_list(NAMESPACE, after=after, limit=100)
            for key, value in page:
                try:
                    out.append(Schedule.from_json(value))
                except ScheduleError as exc:  # reported, never silently dropped
                    log.error("schedule %r in storage is unreadable: %s", key, exc)
            if len(page) < 100:
                return out
            after = page[-1][0]

    async def remove(self, name: str) -> None:
        """Delete schedule ``name`` and its state.

        Raises:
            ScheduleError: no such schedule.
        """
        await self.get(name)
        await self.storage.kv_delete(NAMESPACE, name)
        await self.storage.kv_delete(STATE_NAMESPACE, name)

    async def set_paused(self, name: str, paused: bool) -> Schedule:
        """Pause or resume schedule ``name``; returns it. Raises ScheduleError when unknown."""
        schedule = await self.get(name)
        schedule.paused = paused
        await self.storage.kv_set(NAMESPACE, name, schedule.to_json())
        return schedule

    async def state(self, name: str) -> dict[str, Any]:
        """Return the stored state of schedule ``name`` (``{}`` when none)."""
        value = await self.storage.kv_get(STATE_NAMESPACE, check_name(name))
        return dict(value) if isinstance(value, dict) else {}

    async def save_state(self, name: str, state: dict[str, Any]) -> None:
        """Store the state of schedule ``name``, unless the schedule was removed meanwhile."""
        if await self.storage.kv_get(NAMESPACE, name) is not None:
            await self.storage.kv_set(STATE_NAMESPACE, name, state)


class SchedulerLease:
    """The scheduler lease: the run lease of the marker run :data:`LEASE_RUN_ID`.

    Args:
        storage: an opened storage backend with :class:`~flowyard.SupportsIdempotentRuns`.
        lease_s: seconds the lease protects its holder after each renewal (> 0).
        owner: this scheduler's id (default: ``scheduler:<host>:<pid>:<random>``).

    Attributes:
        holder: the lease in force after the last :meth:`acquire` (this scheduler's or
            another's), None before.
        acquired_now: True when the last :meth:`acquire` claimed the lease (it was not held
            before it).
    """

    def __init__(self, storage: Any, *, lease_s: float = 30.0, owner: str | None = None) -> None:
        if not math.isfinite(lease_s) or lease_s <= 0:
            raise ScheduleError(f"lease_s: {lease_s!r} must be > 0 seconds")
        self.storage = storage
        self.lease_s = lease_s
        self.owner = owner or (
            f"scheduler:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
        self.holder: RunLease | None = None
        self.acquired_now = False
        self._held = False

    async def _ensure_marker(self) -> None:
        try:
            await self.storage.get_run(LEASE_RUN_ID)
        except RunNotFoundError:
            storage = _need(self.storage, SupportsIdempotentRuns, "idempotent runs")
            marker = RunRecord(id=LEASE_RUN_ID, workflow_name=LEASE_WORKFLOW, status="completed",
                               metadata={"schedule_lease": True})
            await storage.create_run_once(marker, "schedule:scheduler-lease")

    async def acquire(self) -> bool:
        """Renew the lease when held, else try to claim it (atomic across processes).

        Returns:
            True when this scheduler holds the lease now; :attr:`holder` is the lease in
            force either way.

        Raises:
            StorageError: the storage failed.
        """
        now = time.time()
        self.acquired_now = False
        if self._held and await self.storage.renew_lease(
                LEASE_RUN_ID, self.owner, heartbeat_at=now, expires_at=now + self.lease_s):
            assert self.holder is not None
            self.holder.heartbeat_at, self.holder.expires_at = now, now + self.lease_s
            return True
        if self._held:
            log.warning("scheduler %s lost the scheduler lease", self.owner)
        await self._ensure_marker()
        mine = RunLease(run_id=LEASE_RUN_ID, owner=self.owner, host=socket.gethostname(),
                        pid=os.getpid(), acquired_at=now, heartbeat_at=now,
                        expires_at=now + self.lease_s)
        self.holder = await self.storage.claim_lease(mine, now=now)
        was = self._held
        self._held = self.holder.owner == self.owner
        self.acquired_now = self._held and not was
        if self.acquired_now:
            log.info("scheduler %s holds the scheduler lease", self.owner)
        return self._held

    async def release(self) -> None:
        """Drop the lease if held (another scheduler can take over at once)."""
        if self._held:
            await self.storage.release_lease(LEASE_RUN_ID, self.owner)
            self._held = False


@attrs.define
class FireOutcome:
    """What one fire did.

    Args:
        schedule: the schedule's name.
        scheduled_for: the fire time, UNIX seconds.
        run_id: the run's id, or None when no run was created (unreadable or invalid
            workflow, bad inputs).
        status: the run's final status, or ``"failed"`` when no run was created.
        error: the run's or the fire's error message, or None.
    """

    schedule: str
    scheduled_for: float
    run_id: str | None
    status: str
    error: str | None = None


class Scheduler:
    """Fires the due schedules of a stack's storage.

    Args:
        stack: a :class:`~flowyard.Stack` (opened here when needed); fired runs execute in
            this process through ``stack.stream``.
        clock: returns the current time, UNIX seconds (tests inject a fake clock).
        lease_s: seconds of the scheduler lease (see :class:`SchedulerLease`).
        use_lease: False fires without the lease (only the idempotency keys prevent double
            runs; for tests and for callers that guarantee one scheduler).
        owner: this scheduler's lease owner id.
        max_parallel: most fired runs executing at once in this process (>= 1); further
            fires wait (a catch-up of many missed times does not start them all at once).
    """

    def __init__(self, stack: Any, *, clock: Callable[[], float] = time.time,
                 lease_s: float = 30.0, use_lease: bool = True, owner: str | None = None,
                 max_parallel: int = 8) -> None:
        if not isinstance(max_parallel, int) or max_parallel < 1:
            raise ScheduleError(f"max_parallel: {max_parallel!r} must be an integer >= 1")
        self.stack = stack
        self.clock = clock
        self.lease_s = lease_s
        self.use_lease = use_lease
        self.owner = owner
        self._limiter = anyio.CapacityLimiter(max_parallel)
        self._collect: list[FireOutcome] | None = None
        self._lease: SchedulerLease | None = None
        self._states: dict[str, dict[str, Any]] = {}
        self._inflight: set[tuple[str, float]] = set()

    async def _open(self) -> tuple[ScheduleStore, SchedulerLease]:
        await self.stack.open()
        store = ScheduleStore(self.stack.storage)
        if self._lease is None:
            self._lease = SchedulerLease(self.stack.storage, lease_s=self.lease_s,
                                         owner=self.owner)
        return store, self._lease

    @property
    def lease(self) -> SchedulerLease | None:
        """The scheduler lease (None before the first :meth:`tick`)."""
        return self._lease

    async def tick(self, tg: TaskGroup) -> list[tuple[str, float]]:
        """Fire every due time of every schedule, applying its catch-up policy, plus the
        pending fires of a scheduler that died; the runs execute in ``tg``. Returns once
        the fires are recorded as pending and started (not waiting for their runs).

        Returns:
            ``[(schedule name, fire time in UNIX seconds)]`` fired by this call; empty when
            another scheduler holds the lease.

        Raises:
            StorageError: the storage failed or lacks a needed capability.
        """
        store, lease = await self._open()
        if self.use_lease and not await lease.acquire():
            return []
        if self.use_lease and lease.acquired_now:
            self._states.clear()  # another scheduler may have fired meanwhile: reload
        fired: list[tuple[str, float]] = []
        for schedule in await store.list():
            cached = self._states.get(schedule.name)
            if cached is None or cached.get("_created_at") != schedule.created_at:
                cached = await store.state(schedule.name)
                cached["_created_at"] = schedule.created_at
                self._states[schedule.name] = cached
            state = cached
            now = self.clock()
            cursor = float(state.get("cursor", schedule.created_at))
            if schedule.paused:
                if now > cursor:
                    state["cursor"] = now
                    await store.save_state(schedule.name, _stored(state))
                continue
            times, more = schedule.times_between(cursor, now, limit=schedule.max_catch_up)
            on_time = [t for t in times if now - t <= schedule.misfire_grace_s]
            missed = len(times) - len(on_time) + more
            if schedule.catch_up == "skip":
                chosen = on_time
            elif schedule.catch_up == "once":
                chosen = times[-1:]
            else:
                chosen = times
                if more:
                    log.warning("schedule %r: %d missed fires before %s exceed max_catch_up=%d;"
                                " they are skipped", schedule.name, more, iso_utc(times[0]),
                                schedule.max_catch_up)
            skipped = len(times) + more - len(chosen)
            if missed and skipped:
                log.warning("schedule %r: skipped %d missed fire(s) (catch_up=%s)",
                            schedule.name, skipped, schedule.catch_up)
            # write-ahead: the fires are recorded as pending with the cursor moved past
            # them, in one write, before any starts; a successor that takes over after a
            # crash fires the pending ones again (their idempotency keys find their runs)
            pending = sorted(set(state.get("pending", [])) | set(chosen))
            if times or pending != state.get("pending", []):
                state["skipped"] = int(state.get("skipped", 0)) + skipped
                state["pending"] = pending
                state["cursor"] = max(now, cursor)
                await store.save_state(schedule.name, _stored(state))
            for t in pending:
                if (schedule.name, t) not in self._inflight:
                    self._inflight.add((schedule.name, t))
                    tg.start_soon(self._fire, store, schedule, t)
                    fired.append((schedule.name, t))
        return fired

    async def fire_due(self) -> list[FireOutcome]:
        """One :meth:`tick`, waiting for its runs to end.

        Returns:
            the outcomes of the fires of this call, in the order their runs ended.
        """
        collected: list[FireOutcome] = []
        self._collect = collected
        try:
            async with anyio.create_task_group() as tg:
                await self.tick(tg)
        finally:
            self._collect = None
        return collected

    async def run(self, *, poll_s: float = 5.0, stop: anyio.Event | None = None) -> None:
        """Loop: renew or claim the lease, fire what is due, sleep until the next fire time
        or ``poll_s`` seconds, until ``stop`` is set; then wait for running fires and release
        the lease. A failing storage is logged and tried again after ``poll_s`` (the lease
        expires meanwhile if the failure lasts, and another scheduler may take over).

        Raises:
            ScheduleError: ``poll_s`` not > 0, or not below a third of ``lease_s``.
        """
        if not math.isfinite(poll_s) or poll_s <= 0:
            raise ScheduleError(f"poll_s: {poll_s!r} must be > 0 seconds")
        if self.use_lease and poll_s * 3 > self.lease_s:
            raise ScheduleError(f"poll_s ({poll_s:g}) must be at most a third of lease_s "
                                f"({self.lease_s:g}) so the lease is renewed in time")
        stop = stop or anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                while not stop.is_set():
                    wait = poll_s
                    try:
                        await self.tick(tg)
                        nxt = await self._next_due()
                        if nxt is not None:
                            wait = min(poll_s, max(0.0, nxt - self.clock()) + 0.001)
                    except StorageError as exc:  # a database restart must not end the loop
                        log.error("scheduler %s: storage failed, retrying in %g s: %s",
                                  self._lease.owner if self._lease else "-", poll_s, exc)
                    with anyio.move_on_after(wait):
                        await stop.wait()
        finally:
            if self._lease is not None:
                with anyio.CancelScope(shield=True):
                    await self._lease.release()

    async def _next_due(self) -> float | None:
        store = ScheduleStore(self.stack.storage)
        times = []
        for schedule in await store.list():
            if not schedule.paused:
                cursor = float(self._states.get(schedule.name, {}).get(
                    "cursor", schedule.created_at))
                times.append(schedule.next_after(max(cursor, self.clock())))
        return min(times) if times else None

    async def _fire(self, store: ScheduleStore, schedule: Schedule, scheduled_for: float
                    ) -> None:
        try:
            async with self._limiter:
                outcome = await self._execute(schedule, scheduled_for)
            if self._collect is not None:
                self._collect.append(outcome)
            state = self._states.setdefault(schedule.name, {})
            if scheduled_for >= float(state.get("last_scheduled_for", -math.inf)):
                state.update(last_scheduled_for=scheduled_for, last_run_id=outcome.run_id,
                             last_status=outcome.status, last_error=outcome.error,
                             last_fired_at=time.time())
            state["fired"] = int(state.get("fired", 0)) + 1
            if outcome.status not in ("completed", "running"):
                state["failed"] = int(state.get("failed", 0)) + 1
            state["pending"] = [t for t in state.get("pending", []) if t != scheduled_for]
            with anyio.CancelScope(shield=True):
                await store.save_state(schedule.name, _stored(state))
        finally:
            self._inflight.discard((schedule.name, scheduled_for))

    async def _execute(self, schedule: Schedule, scheduled_for: float) -> FireOutcome:
        key = fire_key(schedule.name, scheduled_for)
        run_id = fire_run_id(schedule.name, scheduled_for)
        when = iso_utc(scheduled_for)
        try:
            try:
                content = await anyio.Path(schedule.workflow).read_bytes()
            except OSError as exc:
                raise ScheduleError(f"workflow file {schedule.workflow}: {exc.strerror or exc}"
                                    ) from exc
            metadata: dict[str, Any] = {"schedule": schedule.name, "scheduled_for": when}
            if hashlib.sha256(content).hexdigest() != schedule.workflow_sha256:
                metadata["workflow_changed"] = True
                log.warning("schedule %r: %s changed since the schedule was added",
                            schedule.name, schedule.workflow)
            result = await self.stack.run(Path(schedule.workflow), schedule.inputs,
                                          run_id=run_id, idempotency_key=key, metadata=metadata)
            log.info("schedule %r fire %s: run %s %s", schedule.name, when, result.run_id,
                     result.status)
            return FireOutcome(schedule.name, scheduled_for, result.run_id, result.status,
                               result.error)
        except Exception as exc:
            try:
                record = await self.stack.storage.get_run(run_id)
            except RunNotFoundError:
                record = None
            ours = record is not None and (record.metadata.get("idempotency") or {}).get(
                "key") == key
            if ours and isinstance(exc, StorageError):
                # another scheduler created this fire's run at the same moment (its insert
                # or lease claim came first) and executes it: the fire happened once
                log.info("schedule %r fire %s: run %s is another scheduler's (%s)",
                         schedule.name, when, run_id, exc)
                return FireOutcome(schedule.name, scheduled_for, run_id, record.status,
                                   record.error)
            if isinstance(exc, FlowyardError):
                log.error("schedule %r fire %s failed: %s", schedule.name, when, exc)
            else:
                log.exception("schedule %r fire %s failed", schedule.name, when)
            return FireOutcome(schedule.name, scheduled_for, run_id if ours else None,
                               "failed", f"{type(exc).__name__}: {exc}")


def _stored(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if not k.startswith("_")}
