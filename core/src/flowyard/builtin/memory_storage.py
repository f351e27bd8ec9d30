"""In-memory storage backend (URL ``memory://``): for tests, demos and throwaway runs.

Nothing survives the process. Stored records are immutable: the JSON-ready values inside them
(run inputs, outputs, definitions and metadata, step outputs, plugin values) are kept as JSON
text (strings and numbers as they are), so callers cannot change stored state by mutating what
they passed or got back, without the cost of deep copies on the engine's hot path. Like the
SQL backend, a value that is not JSON-ready is refused with a StorageError.
"""

from __future__ import annotations

import bisect
import copy
import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import attrs

from flowyard.config import Config
from flowyard.errors import RunNotFoundError, StorageError, TaskNotFoundError
from flowyard.interfaces import RunLease, RunQuery, TaskQuery
from flowyard.models import (
    AuditRecord,
    CostLine,
    Event,
    LogRecord,
    RunRecord,
    StepAttempt,
    TaskRecord,
)
from flowyard.serialization import json_default

__all__ = ["MemoryStorage"]

_IMMUTABLE = (str, int, float, bool, type(None))


class _Json(str):
    """A stored container value, as its JSON text."""

    __slots__ = ()


def _freeze(value: Any, what: str) -> Any:
    """Return an immutable stored form of a JSON-ready value.

    Raises:
        StorageError: the value is not JSON-ready; ``what`` names it.
    """
    if type(value) in _IMMUTABLE:
        return value
    try:
        return _Json(json.dumps(value, default=json_default))
    except (TypeError, ValueError) as exc:
        raise StorageError(f"{what} is not JSON-ready: {exc}") from None


def _thaw(stored: Any) -> Any:
    """Return a new value from its stored form (see :func:`_freeze`)."""
    return json.loads(stored) if type(stored) is _Json else stored


def _copy_json(value: Any) -> Any:
    """A deep copy of a JSON-ready value: dicts and lists are rebuilt, strings, numbers,
    booleans and None are shared (immutable); any other object is copied with
    :func:`copy.deepcopy`.
    """
    kind = type(value)
    if kind is dict:
        if not value:
            return {}
        return {k: v if type(v) in _IMMUTABLE else _copy_json(v) for k, v in value.items()}
    if kind is list:
        return [v if type(v) in _IMMUTABLE else _copy_json(v) for v in value]
    if kind in _IMMUTABLE:
        return value
    return copy.deepcopy(value)


def _copy_audit(record: AuditRecord) -> AuditRecord:
    """A stored audit record with its own copy of ``details``."""
    from flowyard.audit import replace_audit  # lazy: with the first audit record

    return replace_audit(record, details=_copy_json(record.details))


_RUN_VALUES = ("inputs", "outputs", "workflow", "metadata")


def _freeze_run(run: RunRecord) -> tuple[RunRecord, tuple[Any, ...]]:
    """A run as ``(record without its values, frozen values)`` (see :data:`_RUN_VALUES`)."""
    values = tuple(_freeze(getattr(run, name), f"field {name!r} of run {run.id}")
                   for name in _RUN_VALUES)
    return attrs.evolve(run, inputs={}, outputs={}, workflow={}, metadata={}), values


def _thaw_run(stored: tuple[RunRecord, tuple[Any, ...]]) -> RunRecord:
    shell, values = stored
    return attrs.evolve(shell, **{name: _thaw(v) for name, v in zip(_RUN_VALUES, values)})


def _freeze_attempt(attempt: StepAttempt) -> StepAttempt:
    """A copy of ``attempt`` whose output is frozen (its other fields are immutable)."""
    return StepAttempt(
        attempt.run_id, attempt.step_id, attempt.step_key, attempt.attempt, attempt.status,
        attempt.idempotency_key,
        _freeze(attempt.output, f"output of attempt {attempt.attempt} of step "
                                f"{attempt.step_key!r} of run {attempt.run_id}"),
        attempt.error, attempt.error_type, attempt.started_at, attempt.finished_at,
        attempt.input_tokens, attempt.output_tokens, attempt.cost_usd)


def _thaw_attempt(stored: StepAttempt) -> StepAttempt:
    if type(stored.output) is not _Json:
        return copy.copy(stored)
    return attrs.evolve(stored, output=_thaw(stored.output))


class MemoryStorage:
    """A :class:`~flowyard.interfaces.StorageBackend` kept in Python dicts.

    Args:
        url: ``memory://`` (anything after the scheme is ignored).
        config: the stack configuration (unused).
    """

    #: ``commit_step`` completes without suspending (see SupportsStepCommit).
    commit_step_never_suspends = True

    def __init__(self, url: str = "memory://", config: Config | None = None) -> None:
        self.url = url
        self._runs: dict[str, tuple[RunRecord, tuple[Any, ...]]] = {}
        self._attempts: dict[str, dict[tuple[str, int], StepAttempt]] = defaultdict(dict)
        self._checkpoints: dict[str, dict[str, Any]] = defaultdict(dict)
        self._events: dict[str, list[Event]] = defaultdict(list)
        self._event_seqs: dict[str, set[int]] = defaultdict(set)  # numbered events stored
        self._logs: dict[str, list[LogRecord]] = defaultdict(list)
        self._costs: list[CostLine] = []
        self._kv: dict[tuple[str, str], Any] = {}
        self._leases: dict[str, RunLease] = {}
        self._idempotency: dict[str, str] = {}  # submission idempotency key -> run id
        self._tasks: dict[str, TaskRecord] = {}
        self._task_keys: dict[tuple[str, str], str] = {}  # (tenant, idempotency key) -> id
        self._audit: list[AuditRecord] = []  # record seq n at index n - 1
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
        self._runs[run.id] = _freeze_run(run)

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
            return _thaw_run(self._runs[existing]), False
        await self.create_run(run)
        self._idempotency[idempotency_key] = run.id
        return _thaw_run(self._runs[run.id]), True

    async def update_run(self, run: RunRecord) -> None:
        """Replace a stored run. Raises RunNotFoundError."""
        self._check()
        if run.id not in self._runs:
            raise RunNotFoundError(f"no run {run.id!r}")
        self._runs[run.id] = _freeze_run(run)

    async def get_run(self, run_id: str) -> RunRecord:
        """Return a copy of a run. Raises RunNotFoundError."""
        self._check()
        try:
            stored = self._runs[run_id]
        except KeyError:
            raise RunNotFoundError(f"no run {run_id!r}") from None
        return _thaw_run(stored)

    async def list_runs(self, query: RunQuery) -> list[RunRecord]:
        """Return runs matching ``query``."""
        self._check()
        runs = [
            stored for stored in self._runs.values()
            if (query.status is None or stored[0].status == query.status)
            and (query.workflow_name is None or stored[0].workflow_name == query.workflow_name)
            and (query.created_after is None or stored[0].created_at >= query.created_after)
            and (query.created_before is None or stored[0].created_at < query.created_before)
        ]
        runs.sort(key=lambda r: (r[0].created_at, r[0].id), reverse=query.order.startswith("-"))
        return [_thaw_run(r) for r in runs[query.offset:query.offset + query.limit]]

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
        self._attempts[attempt.run_id][(attempt.step_key, attempt.attempt)] = (
            _freeze_attempt(attempt))

    async def list_attempts(self, run_id: str) -> list[StepAttempt]:
        """Return attempts ordered by start time."""
        self._check()
        attempts = sorted(self._attempts.get(run_id, {}).values(),
                          key=lambda a: (a.started_at, a.step_key, a.attempt))
        return [_thaw_attempt(a) for a in attempts]

    async def save_checkpoint(self, run_id: str, step_key: str, output: Any) -> None:
        """Record a completed step key's output."""
        self._check()
        self._checkpoints[run_id][step_key] = _freeze(
            output, f"output of step {step_key!r} of run {run_id}")

    async def load_checkpoints(self, run_id: str) -> dict[str, Any]:
        """Return ``{step_key: output}``."""
        self._check()
        return {key: _thaw(out) for key, out in self._checkpoints.get(run_id, {}).items()}

    async def append_events(self, events: Sequence[Event]) -> None:
        """Append events; a numbered event whose ``(run_id, seq)`` is stored is skipped."""
        self._check()
        self._add_events(events)

    def _add_events(self, events: Sequence[Event]) -> None:
        for event in events:
            stored = self._events[event.run_id]
            if event.seq:
                seqs = self._event_seqs[event.run_id]
                if event.seq in seqs:
                    continue
                seqs.add(event.seq)
                if stored and stored[-1].seq > event.seq:  # keep the list in seq order
                    bisect.insort(stored, event, key=lambda e: e.seq)
                    continue
            stored.append(event)

    async def commit_step(self, run_id: str, *, attempt: StepAttempt | None = None,
                          checkpoint: tuple[str, Any] | None = None,
                          events: Sequence[Event] = (), logs: Sequence[LogRecord] = ()
                          ) -> None:
        """Store an attempt, a checkpoint, events and log lines at once, all or nothing
        (:class:`~flowyard.interfaces.SupportsStepCommit`).

        Raises:
            StorageError: the attempt's output or the checkpoint is not JSON-ready; nothing
                was stored.
        """
        self._check()
        frozen_attempt = _freeze_attempt(attempt) if attempt is not None else None
        if checkpoint is not None:
            key, output = checkpoint
            frozen_output = _freeze(output, f"output of step {key!r} of run {run_id}")
        # nothing below can fail: the call is all or nothing
        if frozen_attempt is not None:
            self._attempts[run_id][(frozen_attempt.step_key, frozen_attempt.attempt)] = (
                frozen_attempt)
        if checkpoint is not None:
            self._checkpoints[run_id][key] = frozen_output
        if events:
            self._add_events(events)
        if logs:
            self._logs[run_id].extend(logs)

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

    async def kv_list(self, namespace: str, *, after: str = "", limit: int = 100
                      ) -> list[tuple[str, Any]]:
        """Return up to ``limit`` ``(key, value)`` pairs of ``namespace`` with keys after
        ``after``, in key order (:class:`~flowyard.interfaces.SupportsKeyValueListing`).
        """
        self._check()
        keys = sorted(k for ns, k in self._kv if ns == namespace and k > after)[:limit]
        return [(k, copy.deepcopy(self._kv[(namespace, k)])) for k in keys]

    # ------------------------------------------------------------------ task queue

    def _task(self, task_id: str) -> TaskRecord:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise TaskNotFoundError(f"no task {task_id!r}") from None

    @staticmethod
    def _copy_task(task: TaskRecord) -> TaskRecord:
        # a task's values are JSON-ready (checked by submit_task/finish_task), so dicts and
        # lists are copied by a plain walk (copy.deepcopy's memo costs several times more),
        # and an empty dict is a new dict; anything else falls back to copy.deepcopy
        return attrs.evolve(task, inputs=_copy_json(task.inputs),
                            outputs=_copy_json(task.outputs),
                            metadata=_copy_json(task.metadata))

    async def submit_task(self, task: TaskRecord) -> tuple[TaskRecord, bool]:
        """Insert a queued task unless its tenant's idempotency key names one
        (:class:`~flowyard.interfaces.SupportsTaskQueue`; no await between check and insert).

        Raises:
            StorageError: the id exists, or a value is not JSON-ready.
        """
        self._check()
        if task.idempotency_key is not None:
            existing = self._task_keys.get((task.tenant, task.idempotency_key))
            if existing is not None:
                return self._copy_task(self._tasks[existing]), False
        if task.id in self._tasks:
            raise StorageError(f"task {task.id} already exists")
        for name in ("inputs", "outputs", "metadata"):
            value = getattr(task, name)
            if value or type(value) is not dict:  # (an empty dict is JSON-ready)
                _freeze(value, f"field {name!r} of task {task.id}")
        stored = self._copy_task(task)
        stored.status = "queued"
        self._tasks[task.id] = stored
        if task.idempotency_key is not None:
            self._task_keys[(task.tenant, task.idempotency_key)] = task.id
        return self._copy_task(stored), True

    async def get_task(self, task_id: str) -> TaskRecord:
        """Return a copy of a task. Raises TaskNotFoundError."""
        self._check()
        return self._copy_task(self._task(task_id))

    async def list_tasks(self, query: TaskQuery) -> list[TaskRecord]:
        """Return the tenant's tasks matching ``query``, newest first."""
        self._check()
        tasks = [t for t in self._tasks.values()
                 if t.tenant == query.tenant
                 and (query.status is None or t.status == query.status)
                 and (query.kind is None or t.kind == query.kind)
                 and (query.target is None or t.target == query.target)]
        tasks.sort(key=lambda t: (t.created_at, t.id), reverse=True)
        return [self._copy_task(t) for t in tasks[query.offset:query.offset + query.limit]]

    async def claim_task(self, worker: str, *, now: float, lease_timeout: float
                         ) -> TaskRecord | None:
        """Take the best queued task, or a running one whose lease expired (no await
        between choosing and taking it, so it is atomic).
        """
        self._check()
        best: TaskRecord | None = None
        for task in self._tasks.values():
            claimable = task.status == "queued" or (
                task.status == "running" and task.lease_expires_at is not None
                and task.lease_expires_at < now)
            if claimable and (best is None or (-task.priority, task.created_at, task.id)
                              < (-best.priority, best.created_at, best.id)):
                best = task
        if best is None:
            return None
        best.status = "running"
        best.worker = worker
        best.lease_expires_at = now + lease_timeout
        best.attempts += 1
        best.started_at = best.started_at or now
        return self._copy_task(best)

    async def renew_task(self, task_id: str, worker: str, *, now: float,
                         lease_timeout: float) -> TaskRecord | None:
        """Extend ``worker``'s lease; None when it does not hold the task."""
        self._check()
        task = self._task(task_id)
        if task.status != "running" or task.worker != worker:
            return None
        task.lease_expires_at = now + lease_timeout
        return self._copy_task(task)

    async def finish_task(self, task_id: str, worker: str, *, status: str,
                          outputs: dict[str, Any] | None = None, error: str | None = None,
                          now: float) -> bool:
        """Record the end of a task ``worker`` holds; False when it does not.

        Raises:
            ValueError: ``status`` is not an end status.
            StorageError: ``outputs`` is not JSON-ready (nothing written).
        """
        self._check()
        if status not in ("completed", "failed", "cancelled"):
            raise ValueError(f"a task ends completed, failed or cancelled, not {status!r}")
        task = self._task(task_id)
        if task.status != "running" or task.worker != worker:
            return False
        _freeze(outputs or {}, f"outputs of task {task_id}")
        task.status = status  # type: ignore[assignment]
        task.outputs = copy.deepcopy(outputs or {})
        task.error = error
        task.finished_at = now
        task.worker = None
        task.lease_expires_at = None
        return True

    async def cancel_task(self, task_id: str, *, now: float) -> TaskRecord:
        """Cancel a queued task, or ask a running one's worker to stop."""
        self._check()
        task = self._task(task_id)
        if task.status == "queued":
            task.status = "cancelled"
            task.finished_at = now
            task.error = "cancelled before it started"
        elif task.status == "running":
            task.cancel_requested = True
        return self._copy_task(task)

    async def retry_task(self, task_id: str) -> TaskRecord:
        """Queue a failed or cancelled task again (same run id)."""
        self._check()
        task = self._task(task_id)
        if task.status in ("failed", "cancelled"):
            task.status = "queued"
            task.error = None
            task.finished_at = None
            task.cancel_requested = False
        return self._copy_task(task)

    # ------------------------------------------------------------------ audit log

    async def append_audit(self, records: Sequence[AuditRecord]) -> list[AuditRecord]:
        """Append ``records`` to the hash chain (:class:`~flowyard.interfaces.SupportsAuditLog`;
        no await between reading the head and appending, so appends never interleave).

        Raises:
            StorageError: the backend is not open, or a record is not JSON-ready.
        """
        from flowyard.audit import chain_audit  # lazy: with the first audit record

        self._check()
        chained = chain_audit(records, self._audit[-1] if self._audit else None)
        self._audit.extend(chained)
        return [_copy_audit(r) for r in chained]

    async def list_audit(self, *, after_seq: int = 0, limit: int = 1000) -> list[AuditRecord]:
        """Return up to ``limit`` records with ``seq > after_seq``, in order."""
        self._check()
        start = bisect.bisect_right([r.seq for r in self._audit], after_seq)
        return [_copy_audit(r) for r in self._audit[start:start + limit]]

    async def get_audit(self, seq: int) -> AuditRecord | None:
        """Return the record ``seq``, or None."""
        self._check()
        for record in self._audit:
            if record.seq == seq:
                return _copy_audit(record)
        return None

    async def audit_head(self) -> AuditRecord | None:
        """Return the last record, or None when the log is empty."""
        self._check()
        if not self._audit:
            return None
        return _copy_audit(self._audit[-1])
