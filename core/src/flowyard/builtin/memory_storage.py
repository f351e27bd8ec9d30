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
import math
import threading
import time
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

__all__ = ["MemoryStorage", "SharedLimitsMixin", "CONCURRENCY_POLL_S"]

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


# ----------------------------------------------------------------------------- shared limits

#: Seconds a caller is asked to wait when a concurrency limit is full (no release time is
#: known in advance): the poll interval of :meth:`MemoryStorage.shared_rate_acquire`.
CONCURRENCY_POLL_S = 0.02
_EPS = 1e-9
_BREAKER_EVENTS = ("check", "before_call", "success", "failure", "abort")


def _finite(value: Any, what: str, *, low: float, strict: bool = False) -> float:
    """Return ``value`` as a float after checking it is a finite number ``>= low`` (``> low``
    when ``strict``).

    Raises:
        ValueError: not a number, not finite, or out of range (names ``what``).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) \
            or math.isinf(value) or value < low or (strict and value == low):
        raise ValueError(f"{what} must be a finite number {'>' if strict else '>='} {low:g}, "
                         f"got {value!r}")
    return float(value)


def _count(value: Any, what: str, *, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{what} must be an integer >= {low}, got {value!r}")
    return value


class _RateState:
    """One shared rate key: admission log (times ascending, with tokens), live concurrency
    holds, pause.
    """

    __slots__ = ("times", "entries", "permits", "holds", "paused_until", "horizon")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.entries: list[list[Any]] = []  # [time, permit_id, tokens]
        self.permits: dict[str, list[Any]] = {}
        self.holds: dict[str, float] = {}  # permit id -> expires at
        self.paused_until = -math.inf
        self.horizon = 60.0

    def prune(self, now: float) -> None:
        cut = bisect.bisect_right(self.times, now - self.horizon)
        if cut:
            for entry in self.entries[:cut]:
                self.permits.pop(entry[1], None)
            del self.times[:cut]
            del self.entries[:cut]
        for permit, expires in list(self.holds.items()):
            if expires <= now:
                del self.holds[permit]


class SharedLimitsMixin:
    """:class:`~flowyard.interfaces.SupportsSharedLimits` in this process's memory: the
    reference implementation of the contract (every operation runs under one lock without
    suspending, so it is atomic for every task and thread of the process; nothing is shared
    with other processes). Times are ``time.time()``.
    """

    def _shared_init(self) -> None:
        self._shared_lock = threading.Lock()
        self._rate: dict[str, _RateState] = {}
        self._breakers: dict[str, list[Any]] = {}  # key -> [state, failures, reopens, probe]
        self._budget_spent: dict[str, float] = defaultdict(float)
        self._budget_held: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
        self._reservations: dict[str, tuple[tuple[str, ...], float, float]] = {}

    #: the backend's clock (seconds since the epoch); tests may replace it
    shared_now = staticmethod(time.time)

    async def shared_rate_acquire(self, key: str, *, permit_id: str,
                                  windows: Sequence[tuple[float, int]], tokens: int = 0,
                                  tpm: int | None = None, concurrency: int | None = None,
                                  hold_s: float = 600.0) -> float:
        """Admit one call under ``key`` if every limit allows it now (see
        :meth:`flowyard.SupportsSharedLimits.shared_rate_acquire`).

        Returns:
            0.0 when admitted (also for a ``permit_id`` admitted before); otherwise the
            seconds to wait before asking again (> 0; :data:`CONCURRENCY_POLL_S` when only
            the concurrency limit is full).

        Raises:
            ValueError: a window, ``tokens``, ``tpm``, ``concurrency`` or ``hold_s`` out of
                range.
        """
        checked = [(_finite(s, "window seconds", low=0.0, strict=True),
                    _count(n, "window limit")) for s, n in windows]
        tokens = _count(tokens, "tokens", low=0)
        if tpm is not None:
            tpm = _count(tpm, "tpm")
            tokens = min(tokens, tpm)
        if concurrency is not None:
            concurrency = _count(concurrency, "concurrency")
        hold_s = _finite(hold_s, "hold_s", low=0.0, strict=True)
        with self._shared_lock:
            state = self._rate.get(key)
            if state is None:
                state = self._rate[key] = _RateState()
            if permit_id in state.permits or permit_id in state.holds:
                return 0.0
            now = max(self.shared_now(), state.times[-1] if state.times else -math.inf)
            state.horizon = max(state.horizon, *(s for s, _ in checked)) if checked \
                else state.horizon
            state.prune(now)
            delay = max(0.0, state.paused_until - now)
            times = state.times
            for seconds, limit in checked:
                start = bisect.bisect_right(times, now - seconds + _EPS)
                if len(times) - start >= limit:
                    delay = max(delay, times[len(times) - limit] + seconds - now)
            if tpm is not None:
                start = bisect.bisect_right(times, now - 60.0 + _EPS)
                used = sum(e[2] for e in state.entries[start:])
                if used and used + tokens > tpm:
                    excess, freed = used + tokens - tpm, 0
                    for entry in state.entries[start:]:
                        freed += entry[2]
                        if freed >= excess:
                            delay = max(delay, entry[0] + 60.0 - now)
                            break
            if concurrency is not None and len(state.holds) >= concurrency:
                delay = max(delay, CONCURRENCY_POLL_S)
            if delay > _EPS:
                return max(delay, 1e-3)
            entry = [now, permit_id, tokens]
            times.append(now)
            state.entries.append(entry)
            state.permits[permit_id] = entry
            state.holds[permit_id] = now + hold_s
            return 0.0

    async def shared_rate_release(self, key: str, permit_id: str, *,
                                  actual_tokens: int | None = None) -> None:
        """Free the permit's concurrency slot and record its actual tokens (idempotent; an
        unknown or expired permit is ignored).

        Raises:
            ValueError: ``actual_tokens`` is negative.
        """
        if actual_tokens is not None:
            actual_tokens = _count(actual_tokens, "actual_tokens", low=0)
        with self._shared_lock:
            state = self._rate.get(key)
            if state is None:
                return
            state.holds.pop(permit_id, None)
            entry = state.permits.get(permit_id)
            if entry is not None and actual_tokens is not None:
                entry[2] = actual_tokens

    async def shared_rate_pause(self, key: str, seconds: float) -> None:
        """Admit nobody under ``key`` for ``seconds`` (>= 0) from now.

        Raises:
            ValueError: ``seconds`` is negative or not finite.
        """
        seconds = _finite(seconds, "pause seconds", low=0.0)
        with self._shared_lock:
            state = self._rate.get(key)
            if state is None:
                state = self._rate[key] = _RateState()
            state.paused_until = max(state.paused_until, self.shared_now() + seconds)

    async def shared_breaker(self, key: str, *, event: str, threshold: int,
                             cooldown_s: float) -> tuple[str, float | None]:
        """Read or update the breaker ``key`` (see
        :meth:`flowyard.SupportsSharedLimits.shared_breaker`).

        Returns:
            ``(state, reopens_at)``.

        Raises:
            ValueError: an unknown ``event``, ``threshold`` < 1 or ``cooldown_s`` <= 0.
        """
        if event not in _BREAKER_EVENTS:
            raise ValueError(f"breaker event must be one of {', '.join(_BREAKER_EVENTS)}, "
                             f"got {event!r}")
        threshold = _count(threshold, "threshold")
        cooldown_s = _finite(cooldown_s, "cooldown_s", low=0.0, strict=True)
        with self._shared_lock:
            now = self.shared_now()
            b = self._breakers.get(key)
            if b is None:
                if event in ("check", "before_call", "abort", "success"):
                    return ("closed", None)
                b = self._breakers[key] = ["closed", 0, None, None]
            state, failures, reopens, probe = b
            if event == "check":
                if state == "open" and (reopens is None or now >= reopens):
                    return ("half_open", None)  # cooled down: the next before_call probes
                return (state, reopens if state == "open" else None)
            if event == "before_call":
                if state == "closed":
                    return ("closed", None)
                if state == "open" and reopens is not None and now < reopens:
                    return ("open", reopens)
                if state == "half_open" and probe is not None and now < probe + cooldown_s:
                    return ("half_open", None)
                b[0], b[3] = "half_open", now
                return ("probe", None)
            if event == "success":
                self._breakers[key] = ["closed", 0, None, None]
                return ("closed", None)
            if event == "failure":
                failures += 1
                b[1] = failures
                if state == "half_open" or failures >= threshold:
                    b[0], b[2], b[3] = "open", now + cooldown_s, None
                    return ("open", b[2])
                return (state, reopens if state == "open" else None)
            # abort: a probe ended without an outcome
            if state == "half_open":
                b[0], b[3] = "open", None
                return ("open", reopens)
            return (state, reopens if state == "open" else None)

    def _expire_held(self, key: str, now: float) -> None:
        held = self._budget_held.get(key)
        if not held:
            return
        for rid, (amount, expires) in list(held.items()):
            if expires <= now:
                del held[rid]
                self._budget_spent[key] += amount

    async def shared_budget_reserve(self, reservation_id: str,
                                    budgets: Sequence[tuple[str, float]], amount_usd: float,
                                    *, hold_s: float = 600.0) -> tuple[str, float, float] | None:
        """Hold ``amount_usd`` in every budget, all or none (see
        :meth:`flowyard.SupportsSharedLimits.shared_budget_reserve`).

        Returns:
            None when held (also for a ``reservation_id`` held before); otherwise
            ``(key, spent_usd, reserved_usd)`` of the first budget that could not cover it.

        Raises:
            ValueError: ``amount_usd``, a limit or ``hold_s`` is negative or not finite.
        """
        amount_usd = _finite(amount_usd, "amount_usd", low=0.0)
        checked = [(key, _finite(limit, f"limit of budget {key!r}", low=0.0))
                   for key, limit in budgets]
        hold_s = _finite(hold_s, "hold_s", low=0.0, strict=True)
        with self._shared_lock:
            if reservation_id in self._reservations:
                return None
            now = self.shared_now()
            for key, limit in checked:
                self._expire_held(key, now)
                spent = self._budget_spent.get(key, 0.0)
                reserved = sum(a for a, _ in self._budget_held.get(key, {}).values())
                if spent + reserved + amount_usd > limit + 1e-12:
                    return (key, spent, reserved)
            keys = tuple(dict.fromkeys(key for key, _ in checked))
            for key in keys:
                self._budget_held[key][reservation_id] = (amount_usd, now + hold_s)
            self._reservations[reservation_id] = (keys, amount_usd, now + hold_s)
            return None

    async def shared_budget_settle(self, reservation_id: str, actual_usd: float | None
                                   ) -> None:
        """Replace the reservation's held amount with ``actual_usd`` (None: nothing spent).
        Idempotent; an unknown reservation, or one already counted as spent after its
        ``hold_s``, is ignored.

        Raises:
            ValueError: ``actual_usd`` is negative or not finite.
        """
        if actual_usd is not None:
            actual_usd = _finite(actual_usd, "actual_usd", low=0.0)
        with self._shared_lock:
            found = self._reservations.pop(reservation_id, None)
            if found is None:
                return
            for key in found[0]:
                if self._budget_held[key].pop(reservation_id, None) is not None \
                        and actual_usd is not None:
                    self._budget_spent[key] += actual_usd

    async def shared_budget_state(self, key: str) -> dict[str, float]:
        """Return ``{"spent_usd", "reserved_usd"}`` of budget ``key`` (US dollars; zeros for
        an unknown key); a reservation past its ``hold_s`` counts as spent.
        """
        with self._shared_lock:
            self._expire_held(key, self.shared_now())
            return {"spent_usd": self._budget_spent.get(key, 0.0),
                    "reserved_usd": sum(a for a, _ in self._budget_held.get(key, {}).values())}


class MemoryStorage(SharedLimitsMixin):
    """A :class:`~flowyard.interfaces.StorageBackend` kept in Python dicts.

    It implements :class:`~flowyard.interfaces.SupportsSharedLimits` for one process (see
    :class:`SharedLimitsMixin`): the reference implementation of the contract suite, and
    what ``[limits] shared = "storage"`` uses on a ``memory://`` stack.

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
        self._shared_init()

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
