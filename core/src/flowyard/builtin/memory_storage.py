"""In-memory storage backend (URL ``memory://``): for tests, demos and throwaway runs.

Nothing survives the process. Values are deep-copied in and out so callers cannot change
stored state by mutating what they passed or got back.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import attrs

from flowyard.config import Config
from flowyard.errors import RunNotFoundError, StorageError
from flowyard.interfaces import RunLease, RunQuery
from flowyard.models import CostLine, Event, LogRecord, RunRecord, StepAttempt

__all__ = ["MemoryStorage"]


class MemoryStorage:
    """A :class:`~flowyard.interfaces.StorageBackend` kept in Python dicts.

    Args:
        url: ``memory://`` (anything after the scheme is ignored).
        config: the stack configuration (unused).
    """

    def __init__(self, url: str = "memory://", config: Config | None = None) -> None:
        self.url = url
        self._runs: dict[str, RunRecord] = {}
        self._attempts: dict[str, dict[tuple[str, int], StepAttempt]] = defaultdict(dict)
        self._checkpoints: dict[str, dict[str, Any]] = defaultdict(dict)
        self._events: dict[str, list[Event]] = defaultdict(list)
        self._logs: dict[str, list[LogRecord]] = defaultdict(list)
        self._costs: list[CostLine] = []
        self._kv: dict[tuple[str, str], Any] = {}
        self._leases: dict[str, RunLease] = {}
        self._idempotency: dict[str, str] = {}  # submission idempotency key -> run id
        self._open = False

    async def open(self) -> None:
        """Mark the backend open (there is nothing to connect to)."""
        self._open = True

    async def close(self) -> None:
        """Mark the backend closed; data stays for a later open in the same process."""
        self._open = False

    def _check(self) -> None:
        if not self._open:
            raise StorageError(f"storage {self.url} is not open: call 'await stack.open()'")

    async def create_run(self, run: RunRecord) -> None:
        """Insert a run. Raises StorageError when the id exists."""
        self._check()
        if run.id in self._runs:
            raise StorageError(f"run {run.id} already exists")
        self._runs[run.id] = copy.deepcopy(run)

    async def create_run_once(self, run: RunRecord, idempotency_key: str
                              ) -> tuple[RunRecord, bool]:
        """Insert ``run`` unless a run was stored under ``idempotency_key`` (no await between
        the check and the insert, so it is atomic). Returns ``(run in force, inserted)``.

        Raises:
            StorageError: ``run.id`` exists already.
        """
        self._check()
        existing = self._idempotency.get(idempotency_key)
        if existing is not None:
            return copy.deepcopy(self._runs[existing]), False
        await self.create_run(run)
        self._idempotency[idempotency_key] = run.id
        return copy.deepcopy(run), True

    async def update_run(self, run: RunRecord) -> None:
        """Replace a stored run. Raises RunNotFoundError."""
        self._check()
        if run.id not in self._runs:
            raise RunNotFoundError(f"no run {run.id!r}")
        self._runs[run.id] = copy.deepcopy(run)

    async def get_run(self, run_id: str) -> RunRecord:
        """Return a copy of a run. Raises RunNotFoundError."""
        self._check()
        try:
            return copy.deepcopy(self._runs[run_id])
        except KeyError:
            raise RunNotFoundError(f"no run {run_id!r}") from None

    async def list_runs(self, query: RunQuery) -> list[RunRecord]:
        """Return runs matching ``query``."""
        self._check()
        runs = [
            r for r in self._runs.values()
            if (query.status is None or r.status == query.status)
            and (query.workflow_name is None or r.workflow_name == query.workflow_name)
            and (query.created_after is None or r.created_at >= query.created_after)
            and (query.created_before is None or r.created_at < query.created_before)
        ]
        runs.sort(key=lambda r: (r.created_at, r.id), reverse=query.order.startswith("-"))
        return [copy.deepcopy(r) for r in runs[query.offset:query.offset + query.limit]]

    async def claim_lease(self, lease: RunLease, *, now: float,
                          replace_owner: str | None = None) -> RunLease:
        """Make ``lease`` the run's lease unless another live owner holds it (no await between
        the check and the write, so the claim is atomic). Returns the lease in force.

        Raises:
            RunNotFoundError: no such run.
        """
        self._check()
        if lease.run_id not in self._runs:
            raise RunNotFoundError(f"no run {lease.run_id!r}")
        current = self._leases.get(lease.run_id)
        if (current is None or current.owner in (lease.owner, replace_owner)
                or current.expired(now)):
            self._leases[lease.run_id] = copy.copy(lease)
            return copy.copy(lease)
        return copy.copy(current)

    async def renew_lease(self, run_id: str, owner: str, *, heartbeat_at: float,
                          expires_at: float) -> bool:
        """Move the lease's heartbeat and expiry if ``owner`` holds it; False otherwise."""
        self._check()
        current = self._leases.get(run_id)
        if current is None or current.owner != owner:
            return False
        current.heartbeat_at, current.expires_at = heartbeat_at, expires_at
        return True

    async def release_lease(self, run_id: str, owner: str) -> bool:
        """Drop the lease if ``owner`` holds it; True when dropped."""
        self._check()
        current = self._leases.get(run_id)
        if current is None or current.owner != owner:
            return False
        del self._leases[run_id]
        return True

    async def get_leases(self, run_ids: Sequence[str]) -> dict[str, RunLease]:
        """Return copies of the leases of ``run_ids`` that have one."""
        self._check()
        return {rid: copy.copy(self._leases[rid]) for rid in run_ids if rid in self._leases}

    async def save_attempt(self, attempt: StepAttempt) -> None:
        """Insert or replace an attempt."""
        self._check()
        self._attempts[attempt.run_id][(attempt.step_key, attempt.attempt)] = attrs.evolve(
            attempt, output=copy.deepcopy(attempt.output))

    async def list_attempts(self, run_id: str) -> list[StepAttempt]:
        """Return attempts ordered by start time."""
        self._check()
        attempts = sorted(self._attempts.get(run_id, {}).values(),
                          key=lambda a: (a.started_at, a.step_key, a.attempt))
        return [copy.deepcopy(a) for a in attempts]

    async def save_checkpoint(self, run_id: str, step_key: str, output: Any) -> None:
        """Record a completed step key's output."""
        self._check()
        self._checkpoints[run_id][step_key] = copy.deepcopy(output)

    async def load_checkpoints(self, run_id: str) -> dict[str, Any]:
        """Return ``{step_key: output}``."""
        self._check()
        return copy.deepcopy(self._checkpoints.get(run_id, {}))

    async def append_events(self, events: Sequence[Event]) -> None:
        """Append events."""
        self._check()
        for event in events:
            self._events[event.run_id].append(event)

    async def list_events(self, run_id: str, *, after_seq: int = 0, limit: int = 1000
                          ) -> list[Event]:
        """Return events after ``after_seq``."""
        self._check()
        return [e for e in self._events.get(run_id, []) if e.seq > after_seq][:limit]

    async def append_log(self, record: LogRecord) -> None:
        """Append a log line."""
        self._check()
        self._logs[record.run_id].append(record)

    async def list_logs(self, run_id: str) -> list[LogRecord]:
        """Return the run's log lines."""
        self._check()
        return list(self._logs.get(run_id, []))

    async def add_cost(self, line: CostLine) -> None:
        """Append a cost line."""
        self._check()
        self._costs.append(line)

    async def list_costs(self, run_id: str | None = None) -> list[CostLine]:
        """Return cost lines of one run or all."""
        self._check()
        return [c for c in self._costs if run_id is None or c.run_id == run_id]

    async def kv_get(self, namespace: str, key: str) -> Any | None:
        """Return a plugin value or None."""
        self._check()
        return copy.deepcopy(self._kv.get((namespace, key)))

    async def kv_set(self, namespace: str, key: str, value: Any) -> None:
        """Store a plugin value."""
        self._check()
        self._kv[(namespace, key)] = copy.deepcopy(value)

    async def kv_delete(self, namespace: str, key: str) -> None:
        """Delete a plugin value."""
        self._check()
        self._kv.pop((namespace, key), None)
