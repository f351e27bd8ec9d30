"""The interfaces that plugin objects implement, one per hook family.

Each is a :class:`typing.Protocol`: implement the methods with the documented shapes; no
base class is required (though subclassing documents intent and gives the defaults below).
The contract suites in :mod:`flowyard.testing` check implementations against these promises.

Units: seconds for time, tokens for token counts, US dollars for money.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from flowyard.models import (
    AuditRecord,
    ChatChunk,
    ChatRequest,
    ChatResponse,
    Chunk,
    CostLine,
    Document,
    Event,
    LogRecord,
    MemoryEntry,
    MemoryHit,
    ModelInfo,
    RunRecord,
    StepAttempt,
    TaskRecord,
)

if TYPE_CHECKING:
    from flowyard.config import Config
    from flowyard.context import ToolContext
    from flowyard.events import EventBus
    from flowyard.models import Message
    from flowyard.registry import Registry
    from flowyard.workflow import Step, Workflow

__all__ = [
    "Services",
    "LLMService",
    "Diagnostic",
    "Provider",
    "SupportsStepValidation",
    "SupportsSniff",
    "SupportsRawArguments",
    "SupportsDiagnostics",
    "SupportsAclose",
    "SupportsTokenCounting",
    "SupportsExplainedChoice",
    "SupportsRouterState",
    "Tool",
    "StorageBackend",
    "SupportsIdempotentRuns",
    "SupportsStepCommit",
    "SupportsTaskQueue",
    "SupportsAuditLog",
    "SupportsKeyValueListing",
    "TaskQuery",
    "RunQuery",
    "RunLease",
    "MemoryStore",
    "Retriever",
    "Router",
    "RouteRequest",
    "Executor",
    "SupportsStepCalls",
    "StepCall",
    "StepReply",
    "WorkflowLoader",
    "EventListener",
]


@runtime_checkable
class Provider(Protocol):
    """An LLM provider: chat, streaming, embeddings and model metadata.

    ``name`` is the provider name used as the model reference prefix. Errors are the typed
    :class:`flowyard.errors.ProviderError` subclasses; anything else escaping is a bug.
    """

    name: str

    async def chat(self, request: ChatRequest) -> ChatResponse:
        """Return one completion for ``request``.

        ``response.usage`` carries token counts; ``response.cost_usd`` is None when unknown.

        Raises:
            ProviderError: a typed subclass (authentication, rate limited, timeout, server,
                bad request, malformed response).
        """
        ...

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Yield chunks of the completion; the last one has ``done=True`` and the usage.

        A stream that ends without its end marker raises ``MalformedResponseError``.
        """
        ...

    async def embed(self, texts: Sequence[str], *, model: str) -> list[list[float]]:
        """Return one embedding vector per text, in order.

        Raises:
            BadRequestError: the model does not produce embeddings.
        """
        ...

    async def list_models(self) -> list[ModelInfo]:
        """Return the models this provider serves, with context windows and prices."""
        ...

    async def aclose(self) -> None:
        """Release connections and loaded models. Safe to call twice."""
        ...


@attrs.frozen
class Diagnostic:
    """One finding of a plugin's self-check, shown by ``flowyard doctor``.

    Attributes:
        name: what was checked (``"generation"``, ``"build"``), shown after the plugin's name.
        status: ``"ok"``, ``"warn"`` or ``"fail"`` (a failure makes ``doctor`` exit 1).
        detail: one line for a person.
    """

    name: str
    status: str
    detail: str = ""

    def __attrs_post_init__(self) -> None:
        if self.status not in ("ok", "warn", "fail"):
            raise ValueError(f"Diagnostic.status must be ok, warn or fail, got {self.status!r}")


@runtime_checkable
class SupportsDiagnostics(Protocol):
    """An optional provider capability: checks deeper than ``list_models`` for ``doctor``.

    A local model, for instance, proves that it can generate a token on this CPU.
    """

    async def diagnose(self, *, timeout_s: float) -> list[Diagnostic]:
        """Run the self-checks within about ``timeout_s`` seconds in all.

        Returns:
            The findings, in display order. Failures are findings, not exceptions.
        """
        ...


@runtime_checkable
class SupportsAclose(Protocol):
    """An object holding connections, processes or loaded models that must be released.

    :class:`Provider` requires it; the stack checks for it (``isinstance``) before calling it
    on every built provider when it closes, so a minimal provider may leave it out.
    """

    async def aclose(self) -> None:
        """Release what the object holds. Safe to call twice."""
        ...


@runtime_checkable
class SupportsTokenCounting(Protocol):
    """An optional provider capability: counts a request's prompt tokens exactly.

    The gateway reserves a call's worst-case cost in the caller's budgets before sending it;
    it uses this count instead of its own estimate (about four characters per token) when the
    provider offers it.
    """

    def count_prompt_tokens(self, request: ChatRequest) -> int | Awaitable[int]:
        """Return the number of input tokens ``request`` will use (may be a coroutine)."""
        ...


@runtime_checkable
class Tool(Protocol):
    """An action that steps and agents call.

    Attributes:
        name: dotted action name (``"filesystem.write"``).
        description: one paragraph for models and humans.
        parameters: JSON Schema (object) of the arguments.
        idempotent: True when calling twice with the same arguments has the effect of once.
        side_effects: what the tool changes outside flowyard (``["filesystem"]``,
            ``["network"]``, ``["process"]``); empty for pure tools.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    idempotent: bool
    side_effects: Sequence[str]

    async def invoke(self, arguments: Mapping[str, Any], context: ToolContext) -> Any:
        """Run the tool and return a JSON-ready result.

        Raises:
            ToolInputError: arguments do not match ``parameters``.
            ToolError: the action failed (``retriable`` says whether to try again).
        """
        ...


class RunQuery:
    """Filters for :meth:`StorageBackend.list_runs`.

    Args:
        status: keep runs with this status.
        workflow_name: keep runs of this workflow.
        created_after, created_before: UNIX seconds bounds on ``created_at``.
        limit: page size (1..1000); offset: rows to skip.
        order: ``"created_at"`` (oldest first) or ``"-created_at"`` (newest first).
    """

    __slots__ = ("status", "workflow_name", "created_after", "created_before", "limit", "offset",
                 "order")

    def __init__(
        self,
        *,
        status: str | None = None,
        workflow_name: str | None = None,
        created_after: float | None = None,
        created_before: float | None = None,
        limit: int = 50,
        offset: int = 0,
        order: str = "-created_at",
    ) -> None:
        if not 1 <= limit <= 1000:
            raise ValueError(f"limit must be between 1 and 1000, got {limit}")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        if order not in ("created_at", "-created_at"):
            raise ValueError(f"order must be 'created_at' or '-created_at', got {order!r}")
        self.status = status
        self.workflow_name = workflow_name
        self.created_after = created_after
        self.created_before = created_before
        self.limit = limit
        self.offset = offset
        self.order = order


@attrs.define
class RunLease:
    """Who is executing a run right now: the run's owner process and its heartbeat.

    The engine claims a run's lease when a run starts or is resumed, renews it every
    ``runs.heartbeat_interval`` seconds while the run executes, and releases it when the run
    ends. A process that dies stops renewing: its lease expires ``runs.lease_timeout`` seconds
    after the last heartbeat, and a ``running`` run without a live lease is *abandoned* (see
    :mod:`flowyard.engine.lease`).

    Attributes:
        run_id: the run held.
        owner: a random token (32 hex characters) unique to one claim: two runs, or two claims
            of one run, never share it, even in one process or after a pid is reused.
        host: the owner's host name (for people; liveness checks use ``host_id``).
        pid: the owner's process id.
        host_id: identifies the owner's machine and pid namespace (on Linux the boot id and
            the pid namespace); ``""`` when unknown. Two leases with the same non-empty
            ``host_id`` can check each other's pid.
        process_start: identifies the owner process instance with ``pid`` (on Linux its start
            time in clock ticks since boot), so a reused pid is not mistaken for the owner;
            ``""`` when unknown.
        acquired_at, heartbeat_at, expires_at: UNIX seconds (UTC) of the claim, of the last
            heartbeat, and after which the lease no longer protects the run (the owner's
            ``heartbeat_at + lease_timeout``).
    """

    run_id: str
    owner: str
    host: str
    pid: int
    acquired_at: float
    heartbeat_at: float
    expires_at: float
    host_id: str = ""
    process_start: str = ""

    def expired(self, now: float) -> bool:
        """True when ``now`` (UNIX seconds) is at or past ``expires_at``."""
        return self.expires_at <= now


@runtime_checkable
class StorageBackend(Protocol):
    """Persists runs, run leases, step attempts, checkpoints, events, logs, cost lines and
    plugin data.

    Every write is durable when the awaited call returns (for SQL: committed). Step outputs
    are JSON-ready values. A run's lease (:class:`RunLease`) is kept apart from its record:
    :meth:`update_run` never changes it.
    """

    async def open(self) -> None:
        """Connect / create the schema. Raises ``StorageError`` naming the file or URL."""
        ...

    async def close(self) -> None:
        """Release connections. Safe to call twice."""
        ...

    async def create_run(self, run: RunRecord) -> None:
        """Insert a new run."""
        ...

    async def update_run(self, run: RunRecord) -> None:
        """Replace the stored fields of ``run`` (matched by id). Raises RunNotFoundError."""
        ...

    async def get_run(self, run_id: str) -> RunRecord:
        """Return one run. Raises RunNotFoundError."""
        ...

    async def list_runs(self, query: RunQuery) -> list[RunRecord]:
        """Return runs matching ``query``, in ``query.order``."""
        ...

    async def claim_lease(self, lease: RunLease, *, now: float,
                          replace_owner: str | None = None) -> RunLease:
        """Make ``lease`` the lease of run ``lease.run_id``, atomically (compare-and-set).

        The claim succeeds when the run has no lease, or its lease belongs to ``lease.owner``
        already, or has expired (``expires_at <= now``, ``now`` in UNIX seconds), or belongs
        to ``replace_owner`` (an owner the caller found dead). Checking and writing happen in
        one transaction, safe across processes: of two concurrent claims at most one wins.

        Returns:
            the lease in force after the call: ``lease`` itself when claimed, else the
            current holder's lease (the claim was refused).

        Raises:
            RunNotFoundError: no such run.
        """
        ...

    async def renew_lease(self, run_id: str, owner: str, *, heartbeat_at: float,
                          expires_at: float) -> bool:
        """Record a heartbeat: set the lease's ``heartbeat_at`` and ``expires_at`` (UNIX
        seconds) if ``owner`` still holds it. One small write.

        Returns:
            True when renewed; False when ``owner`` no longer holds the lease (another process
            claimed it after it expired, or it was released).
        """
        ...

    async def release_lease(self, run_id: str, owner: str) -> bool:
        """Drop the run's lease if ``owner`` holds it. Returns True when it was dropped."""
        ...

    async def get_leases(self, run_ids: Sequence[str]) -> dict[str, RunLease]:
        """Return ``{run_id: lease}`` for the given runs that hold a lease (expired or not)."""
        ...

    async def save_attempt(self, attempt: StepAttempt) -> None:
        """Insert or update the attempt keyed by (run_id, step_key, attempt)."""
        ...

    async def list_attempts(self, run_id: str) -> list[StepAttempt]:
        """Return the run's attempts ordered by start time."""
        ...

    async def save_checkpoint(self, run_id: str, step_key: str, output: Any) -> None:
        """Record the final output of a completed step key (its commit point)."""
        ...

    async def load_checkpoints(self, run_id: str) -> dict[str, Any]:
        """Return ``{step_key: output}`` of every completed step key of the run."""
        ...

    async def append_events(self, events: Sequence[Event]) -> None:
        """Append events (already numbered by ``seq``)."""
        ...

    async def list_events(self, run_id: str, *, after_seq: int = 0, limit: int = 1000
                          ) -> list[Event]:
        """Return events with ``seq > after_seq`` in order, at most ``limit``."""
        ...

    async def append_log(self, record: LogRecord) -> None:
        """Append a log line."""
        ...

    async def list_logs(self, run_id: str) -> list[LogRecord]:
        """Return the run's log lines in order."""
        ...

    async def add_cost(self, line: CostLine) -> None:
        """Append a cost line."""
        ...

    async def list_costs(self, run_id: str | None = None) -> list[CostLine]:
        """Return cost lines of one run, or of all runs when ``run_id`` is None."""
        ...

    async def kv_get(self, namespace: str, key: str) -> Any | None:
        """Return a plugin value, or None."""
        ...

    async def kv_set(self, namespace: str, key: str, value: Any) -> None:
        """Store a JSON-ready plugin value."""
        ...

    async def kv_delete(self, namespace: str, key: str) -> None:
        """Delete a plugin value (no error when absent)."""
        ...


class TaskQuery:
    """Filters for :meth:`SupportsTaskQueue.list_tasks` (newest first).

    Args:
        tenant: keep this tenant's tasks (required: tasks are never listed across tenants).
        status: keep tasks with this status; kind: ``"workflow"`` or ``"agent"``;
        target: keep tasks of this workflow name / agent id.
        limit: page size (1..1000); offset: rows to skip.

    Raises:
        ValueError: an empty tenant, or limit/offset out of range.
    """

    __slots__ = ("tenant", "status", "kind", "target", "limit", "offset")

    def __init__(self, *, tenant: str, status: str | None = None, kind: str | None = None,
                 target: str | None = None, limit: int = 50, offset: int = 0) -> None:
        if not tenant:
            raise ValueError("a task query needs a tenant")
        if not 1 <= limit <= 1000:
            raise ValueError(f"limit must be between 1 and 1000, got {limit}")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        self.tenant = tenant
        self.status = status
        self.kind = kind
        self.target = target
        self.limit = limit
        self.offset = offset


@runtime_checkable
class SupportsTaskQueue(Protocol):
    """A :class:`StorageBackend` that keeps a durable task queue: submitted tasks survive
    restarts; workers (in any process) claim them with a lease they renew, so a task whose
    worker died is claimed again once its lease expired, and runs its same ``run_id`` (resumed:
    completed steps are not run again). Claiming is atomic across processes (PostgreSQL:
    ``FOR UPDATE SKIP LOCKED``; SQLite: an immediate transaction). Times are UNIX seconds.
    """

    async def submit_task(self, task: TaskRecord) -> tuple[TaskRecord, bool]:
        """Insert a ``queued`` task, unless ``task.idempotency_key`` names a task of the
        same tenant already.

        Returns:
            ``(task, True)`` when inserted, ``(existing, False)`` otherwise (its current
            record; the caller compares ``request_hash``).

        Raises:
            StorageError: ``task.id`` exists, or the backend failed.
        """
        ...

    async def get_task(self, task_id: str) -> TaskRecord:
        """Return a task. Raises TaskNotFoundError."""
        ...

    async def list_tasks(self, query: TaskQuery) -> list[TaskRecord]:
        """Return the tenant's tasks matching ``query``, newest first."""
        ...

    async def claim_task(self, worker: str, *, now: float, lease_timeout: float
                         ) -> TaskRecord | None:
        """Atomically take the next task for ``worker``: the ``queued`` one with the highest
        priority (oldest first among equals), or a ``running`` one whose lease expired
        before ``now`` (its worker died). The task becomes ``running`` with ``worker``, a
        lease until ``now + lease_timeout``, ``attempts`` + 1, ``started_at`` set once.

        Returns:
            the claimed task, or None when there is nothing to claim.
        """
        ...

    async def renew_task(self, task_id: str, worker: str, *, now: float,
                         lease_timeout: float) -> TaskRecord | None:
        """Extend ``worker``'s lease to ``now + lease_timeout``.

        Returns:
            the task (its ``cancel_requested`` tells the worker to stop), or None when
            ``worker`` does not hold it any more (another worker took it over: stop).
        """
        ...

    async def finish_task(self, task_id: str, worker: str, *, status: str,
                          outputs: dict[str, Any] | None = None, error: str | None = None,
                          now: float) -> bool:
        """Record the end of a task ``worker`` holds (``completed``, ``failed`` or
        ``cancelled``) and release its lease.

        Returns:
            False (nothing written) when ``worker`` does not hold the task.
        """
        ...

    async def cancel_task(self, task_id: str, *, now: float) -> TaskRecord:
        """Cancel a task: a ``queued`` one is ``cancelled`` at once; a ``running`` one gets
        ``cancel_requested`` (its worker stops the run and records ``cancelled``); an ended
        one is returned unchanged. Raises TaskNotFoundError.
        """
        ...

    async def retry_task(self, task_id: str) -> TaskRecord:
        """Queue an ended (``failed`` or ``cancelled``) task again, keeping its ``run_id``
        (the run is resumed: completed steps are not run again); other tasks are returned
        unchanged. Raises TaskNotFoundError.
        """
        ...


@runtime_checkable
class SupportsAuditLog(Protocol):
    """A :class:`StorageBackend` that keeps the append-only, hash-chained audit log
    (:mod:`flowyard.audit`).

    Appends are serialised across every writer of the store (processes included), so the
    chain never forks: each appended record gets the next ``seq`` and the previous record's
    hash, computed with :func:`flowyard.audit.chain_audit` inside the serialising
    transaction. Records are never updated or deleted through this interface.
    """

    async def append_audit(self, records: Sequence[AuditRecord]) -> list[AuditRecord]:
        """Append ``records`` (their ``seq``, ``prev_hash`` and ``hash`` are ignored) in
        order, atomically: all or none.

        Returns:
            the records as stored, chained (``seq``, ``prev_hash``, ``hash`` set).

        Raises:
            StorageError: a record's details are not JSON-ready, or the backend failed.
        """
        ...

    async def list_audit(self, *, after_seq: int = 0, limit: int = 1000
                         ) -> list[AuditRecord]:
        """Return up to ``limit`` records with ``seq > after_seq``, in ``seq`` order, as
        stored (a damaged row is returned as it is, for verification to report).
        """
        ...

    async def get_audit(self, seq: int) -> AuditRecord | None:
        """Return the record ``seq``, or None when there is none."""
        ...

    async def audit_head(self) -> AuditRecord | None:
        """Return the record with the highest ``seq``, or None when the log is empty."""
        ...


@runtime_checkable
class SupportsKeyValueListing(Protocol):
    """A :class:`StorageBackend` whose plugin key-value area can be listed."""

    async def kv_list(self, namespace: str, *, after: str = "", limit: int = 100
                      ) -> list[tuple[str, Any]]:
        """Return up to ``limit`` ``(key, value)`` pairs of ``namespace`` with keys greater
        than ``after``, in key order (pass the last key to get the next page).
        """
        ...


@runtime_checkable
class SupportsKeyValueTTL(Protocol):
    """A :class:`StorageBackend` whose key-value entries can expire (Redis: native key
    expiry). The response cache uses it when the backend has it; otherwise it stores the
    expiry time in the value and treats an expired entry as absent.
    """

    async def kv_set_ttl(self, namespace: str, key: str, value: Any, *, ttl_s: float) -> None:
        """Store ``value`` (JSON-ready) under ``(namespace, key)`` for ``ttl_s`` seconds
        (> 0); :meth:`StorageBackend.kv_get` returns None once it has expired.

        Raises:
            ValueError: ``ttl_s`` is not a positive number.
            StorageError: the value could not be stored.
        """
        ...


@runtime_checkable
class SupportsSharedLimits(Protocol):
    """A :class:`StorageBackend` that keeps rate limits, circuit breakers and budget
    reservations *shared by every process using it*, each operation atomic across processes
    (SQL: one transaction with row locks; Redis: one Lua script). The gateway uses it when
    ``[limits] shared`` names this storage (``"storage"``) or its URL; without it, limits,
    breakers and budgets live in each process's memory.

    Times are the backend's own clock (seconds since the epoch; PostgreSQL ``now()``,
    Redis ``TIME``), so processes on machines with skewed clocks still agree. Keys are
    opaque strings built by the gateway (``"rate:openai/gpt-4o"``, ``"budget:tenant:acme:
    2026-12-02"``, ``"breaker:openai"``). Ids of permits and reservations are chosen by the
    caller (UUID hex), so a retried call after a dropped connection is idempotent.

    A process that dies holding a concurrency permit or a budget reservation loses it to
    its ``hold_s``: when that many seconds pass without release or settle, the permit is
    freed and the reservation is counted as spent (the provider may have billed).
    """

    async def shared_rate_acquire(self, key: str, *, permit_id: str,
                                  windows: Sequence[tuple[float, int]], tokens: int = 0,
                                  tpm: int | None = None, concurrency: int | None = None,
                                  hold_s: float = 600.0) -> float:
        """Admit one call under ``key`` if every limit allows it now, recording it.

        Args:
            key: the limiter's key.
            permit_id: the caller's id for this admission (released with it).
            windows: ``(seconds, most requests)`` sliding windows (1 s, 60 s, ...).
            tokens: estimated tokens of the call, counted against ``tpm`` over 60 s.
            tpm: tokens per minute (None: unlimited).
            concurrency: calls in flight at once under ``key`` (None: unlimited).
            hold_s: seconds after which an unreleased permit is freed.

        Returns:
            0.0 when admitted (also when ``permit_id`` was admitted before: a retry takes no
            second place); otherwise the seconds to wait before asking again (> 0; a full
            concurrency limit gives a short poll interval). A request of more than ``tpm``
            tokens counts as ``tpm``.

        Raises:
            ValueError: a window's seconds not finite and > 0 or its limit < 1; ``tokens``
                < 0; ``tpm`` or ``concurrency`` < 1; ``hold_s`` not finite and > 0.
        """
        ...

    async def shared_rate_release(self, key: str, permit_id: str, *,
                                  actual_tokens: int | None = None) -> None:
        """Free the permit's concurrency slot and, when given, replace its estimated tokens
        with ``actual_tokens``. Idempotent; an unknown or expired permit is ignored.
        """
        ...

    async def shared_rate_pause(self, key: str, seconds: float) -> None:
        """Admit nobody under ``key`` for ``seconds`` from now (a provider's retry-after);
        a pause never shortens a longer one.

        Raises:
            ValueError: ``seconds`` is negative or not finite.
        """
        ...

    async def shared_breaker(self, key: str, *, event: str, threshold: int,
                             cooldown_s: float) -> tuple[str, float | None]:
        """Read or update the circuit breaker ``key`` atomically.

        Args:
            key: the breaker's key.
            event: ``"check"`` (read only; an open breaker whose cooldown has passed reads
                as ``half_open``: the next ``before_call`` may probe), ``"before_call"`` (an
                open breaker whose cooldown passed becomes ``half_open`` and this caller is
                its one probe; a probe that reported nothing within ``cooldown_s`` is
                presumed lost with its process and the next caller probes),
                ``"success"`` (closes it), ``"failure"`` (counts a consecutive failure;
                ``threshold`` of them, or a failed probe, open it for ``cooldown_s``),
                ``"abort"`` (a probe that ended without an outcome: back to ``open`` with the
                same reopening time).
            threshold: consecutive failures that open the breaker.
            cooldown_s: seconds an open breaker stays open.

        Returns:
            ``(state, reopens_at)``: the state after the event (``"closed"``, ``"open"``,
            ``"half_open"``, or ``"probe"`` when ``before_call`` made this caller the probe)
            and, when open, the backend time at which a probe is allowed.

        Raises:
            ValueError: an unknown ``event``, ``threshold`` < 1 or ``cooldown_s`` <= 0.
        """
        ...

    async def shared_budget_reserve(self, reservation_id: str,
                                    budgets: Sequence[tuple[str, float]], amount_usd: float,
                                    *, hold_s: float = 600.0) -> tuple[str, float, float] | None:
        """Hold ``amount_usd`` (US dollars) in every budget, all or none.

        Args:
            reservation_id: the caller's id for the reservation.
            budgets: ``(key, limit in US dollars)`` pairs.
            amount_usd: the amount to hold (>= 0).
            hold_s: seconds after which an unsettled reservation counts as spent.

        Returns:
            None when held everywhere (also when ``reservation_id`` is held already: a retry
            holds nothing more); otherwise ``(key, spent_usd, reserved_usd)`` of the first
            budget that could not cover it (nothing was held). A budget covers an amount
            when ``spent + reserved + amount <= limit`` (1e-12 tolerance).

        Raises:
            ValueError: ``amount_usd`` or a limit negative or not finite; ``hold_s`` not
                finite and > 0.
        """
        ...

    async def shared_budget_settle(self, reservation_id: str, actual_usd: float | None
                                   ) -> None:
        """Replace the reservation's held amount with ``actual_usd`` in every budget it
        holds (None: unknown cost, nothing spent). Idempotent; an unknown reservation, or one
        already counted as spent after its ``hold_s``, is left as it is.

        Raises:
            ValueError: ``actual_usd`` is negative or not finite.
        """
        ...

    async def shared_budget_state(self, key: str) -> dict[str, float]:
        """Return ``{"spent_usd": ..., "reserved_usd": ...}`` of budget ``key`` (zeros for
        an unknown key); a reservation past its ``hold_s`` counts as spent.
        """
        ...


@runtime_checkable
class SupportsStepCommit(Protocol):
    """A :class:`StorageBackend` that writes what one step key's end produces -- its attempt
    record, its checkpoint, the events and log lines buffered since the last write -- in one
    transaction. The engine uses it when the backend has it (the memory and SQL backends
    do), so a durable step costs one commit at its start and one at its end; other backends
    get the same writes as separate calls (:meth:`StorageBackend.save_attempt`,
    :meth:`~StorageBackend.save_checkpoint`, :meth:`~StorageBackend.append_events`,
    :meth:`~StorageBackend.append_log`), each durable on its own.

    The engine shields the write of a completed step key from cancellation (the work is
    done). A backend whose ``commit_step`` never suspends (no ``await`` that yields to the
    event loop, like the in-memory one) may set the class attribute
    ``commit_step_never_suspends = True`` to spare that shield.
    """

    async def commit_step(self, run_id: str, *, attempt: StepAttempt | None = None,
                          checkpoint: tuple[str, Any] | None = None,
                          events: Sequence[Event] = (), logs: Sequence[LogRecord] = ()
                          ) -> None:
        """Write all of the given records in one transaction: all are durable when this
        returns, or none was written when it raises.

        Args:
            run_id: the run every record belongs to.
            attempt: an attempt to upsert (as :meth:`StorageBackend.save_attempt`).
            checkpoint: ``(step_key, output)`` to upsert (as
                :meth:`StorageBackend.save_checkpoint`; the output is JSON-ready).
            events: numbered events to store; an event whose ``(run_id, seq)`` is stored
                already is not stored again (so a retried call never duplicates one).
            logs: log lines to append.

        Raises:
            StorageError: nothing was written (``retriable`` for a lock held past the busy
                timeout or a dropped connection); the message names the run and what could
                not be stored (e.g. a value that is not JSON-ready).
        """
        ...


@runtime_checkable
class SupportsIdempotentRuns(Protocol):
    """A :class:`StorageBackend` that stores a submission idempotency key with a run, so that
    ``stack.run(..., idempotency_key=KEY)`` creates at most one run per key, even when several
    processes submit the same key at once. The memory and SQL backends implement it; the
    engine refuses ``idempotency_key`` on a backend that does not (``StorageError``).
    """

    async def create_run_once(self, run: RunRecord, idempotency_key: str
                              ) -> tuple[RunRecord, bool]:
        """Insert ``run`` with ``idempotency_key`` unless a run was stored with that key.

        Checking and inserting are one atomic step across processes (SQL: a unique index on
        the key), so of concurrent calls with one key exactly one inserts.

        Returns:
            ``(run, True)`` when ``run`` was inserted; ``(existing, False)`` with the run stored
            earlier under the key (its current record) otherwise.

        Raises:
            StorageError: ``run.id`` exists already (under another key or none), or the
                backend failed.
        """
        ...


@runtime_checkable
class MemoryStore(Protocol):
    """Long-term memory for agents and workflows, searched by meaning."""

    async def add(self, entries: Sequence[MemoryEntry]) -> list[str]:
        """Store entries; return their ids."""
        ...

    async def search(
        self,
        query: str,
        *,
        namespace: str = "default",
        top_k: int = 5,
        filters: Mapping[str, Any] | None = None,
        min_score: float | None = None,
    ) -> list[MemoryHit]:
        """Return up to ``top_k`` entries of ``namespace`` closest to ``query``, best first.

        ``filters`` match metadata keys (and ``category``) by equality; hits below
        ``min_score`` are dropped.
        """
        ...

    async def delete(self, ids: Sequence[str], *, namespace: str = "default") -> int:
        """Delete entries by id; return how many were deleted."""
        ...

    async def cleanup(self, *, older_than_days: float, namespace: str = "default") -> int:
        """Delete entries created more than ``older_than_days`` days ago; return the count."""
        ...

    async def consolidate(self, *, namespace: str = "default", threshold: float = 0.95) -> int:
        """Merge entries whose similarity is at least ``threshold``; return how many were
        removed.
        """
        ...


@runtime_checkable
class Retriever(Protocol):
    """Indexes documents and retrieves chunks for prompts (RAG)."""

    async def index(self, documents: Sequence[Document], *, collection: str = "default"
                    ) -> dict[str, int]:
        """Index documents; unchanged ones are skipped, changed ones replace their chunks.

        Returns counts: ``{"added": n, "updated": n, "unchanged": n, "chunks": n}``.
        """
        ...

    async def search(self, query: str, *, top_k: int = 5, collection: str = "default"
                     ) -> list[Chunk]:
        """Return up to ``top_k`` chunks, best first."""
        ...

    async def get_context(
        self, query: str, *, top_k: int = 5, max_tokens: int = 1500, collection: str = "default"
    ) -> list[Chunk]:
        """Return the best chunks whose total size fits ``max_tokens`` tokens."""
        ...


class RouteRequest:
    """What a step needs from a model, for a router.

    Args:
        capabilities: required capabilities (``{"tools", "json"}``).
        min_context: minimum context window in tokens.
        max_input_price: maximum input price in US dollars per million tokens.
        candidates: model references the router may choose from (all known when empty).
        estimated_input_tokens: the prompt size, for context checks and cost estimates.
    """

    __slots__ = ("capabilities", "min_context", "max_input_price", "candidates",
                 "estimated_input_tokens")

    def __init__(
        self,
        *,
        capabilities: Sequence[str] = (),
        min_context: int | None = None,
        max_input_price: float | None = None,
        candidates: Sequence[str] = (),
        estimated_input_tokens: int = 0,
    ) -> None:
        self.capabilities = frozenset(capabilities)
        self.min_context = min_context
        self.max_input_price = max_input_price
        self.candidates = list(candidates)
        self.estimated_input_tokens = estimated_input_tokens


@runtime_checkable
class Router(Protocol):
    """Chooses a model for a call."""

    async def choose(self, request: RouteRequest, models: Sequence[ModelInfo]) -> list[ModelInfo]:
        """Return the models to try, in order (the first is the choice; the rest are fallbacks
        after retriable errors). Raises ``UnknownNameError`` when none fits.
        """
        ...

    def record_outcome(self, model: ModelInfo, *, success: bool, cost_usd: float | None,
                       latency_s: float) -> None:
        """Learn from the result of a call (routers that do not learn ignore it)."""
        ...


@runtime_checkable
class SupportsExplainedChoice(Protocol):
    """An optional router capability: says why it chose each model.

    The gateway calls :meth:`choose_explained` instead of :meth:`Router.choose` when offered;
    the reasons appear in ``router.choice`` events (``flowyard runs logs``).
    """

    async def choose_explained(self, request: RouteRequest, models: Sequence[ModelInfo]
                               ) -> list[tuple[ModelInfo, str]]:
        """Return ``(model, reason)`` pairs in the order of :meth:`Router.choose`.

        Raises:
            UnknownNameError: no model meets the requirements.
        """
        ...


@runtime_checkable
class SupportsRouterState(Protocol):
    """An optional router capability: what a learning router learned survives the process.

    The gateway restores the state from the storage key-value area (namespace
    ``flowyard.routing``, key: the router's name) before the router's first choice and saves
    it after each routed call, when the stack's storage is open and ``routing.persist``
    is not false.
    """

    def export_state(self) -> dict[str, Any]:
        """Return the learned state, JSON-ready."""
        ...

    def import_state(self, state: Mapping[str, Any]) -> None:
        """Replace the learned state with one :meth:`export_state` returned.

        Raises:
            ValueError: the state is not in the expected shape (the router starts afresh).
        """
        ...


@runtime_checkable
class Executor(Protocol):
    """Decides where a step's action runs (in-process, a thread, a worker pool...)."""

    async def execute(self, action: Callable[[], Awaitable[Any]], *, step_id: str) -> Any:
        """Run ``action`` and return its result; cancellation must propagate."""
        ...


@runtime_checkable
class WorkflowLoader(Protocol):
    """Parses workflow files of one format.

    A loader is registered by format name (``register("native", loader, suffixes=(...))``);
    it handles files whose suffix is in ``suffixes`` (lower case, with the dot).

    Optional: ``sniff(source, path) -> bool`` (:class:`SupportsSniff`) lets a loader *claim* a
    file by its content when several loaders handle the same suffix (``.yaml``). A file is
    loaded by: the loader named by ``--format NAME`` (``Stack.load_workflow(path,
    format=NAME)``) when given; else the one loader of its suffix whose ``sniff`` returns True
    (two or more claimers: a validation error naming them, asking for ``--format``); else,
    when none claims it, the ``native`` loader if it handles the suffix, or the one loader
    of the suffix without ``sniff``. Loaders without ``sniff`` stay valid and never claim.
    """

    suffixes: Sequence[str]

    def load(self, source: str, *, path: str | None = None) -> Workflow:
        """Parse ``source`` (the file's text) into a workflow.

        Raises:
            WorkflowValidationError: with file, line and column of each problem.
        """
        ...


@runtime_checkable
class SupportsSniff(Protocol):
    """A workflow loader that recognizes its files by content (see :class:`WorkflowLoader`).

    ``sniff`` must be cheap and must not raise on text of another format: look for the
    format's distinctive top-level keys with a regular expression or a bounded parse, never
    load the workflow.
    """

    def sniff(self, source: str, path: str | None) -> bool:
        """Return True when ``source`` (the whole text of the file ``path``) is in this
        loader's format, so that it claims the file from the other loaders of its suffix.

        Args:
            source: the file's text (its size already checked against ``workflows.max_bytes``).
            path: the file's path, or None for text without a file.
        """
        ...


@runtime_checkable
class EventListener(Protocol):
    """Receives every event of the stack's runs.

    ``__call__`` runs on the engine's hot path: it must return quickly and never block
    (queue slow work). Exceptions are logged and do not break the run.
    """

    def __call__(self, event: Event) -> None:
        """Handle one event."""
        ...


@runtime_checkable
class LLMService(Protocol):
    """The LLM gateway as the layers below it see it (:class:`flowyard.llm.LLMGateway`).

    Every model call of the engine, agents and plugins goes through it: budgets, rate limits,
    circuit breakers, routing and cost accounting apply. See :mod:`flowyard.llm.gateway`
    for the full documentation of each method.
    """

    def default_model(self) -> str:
        """Return the default model reference (``provider/model`` or ``"auto"``)."""
        ...

    async def chat(self, messages: Sequence[Message] | str, *, model: str | None = None,
                   context: ToolContext | None = None, route: RouteRequest | None = None,
                   router: str | None = None, **params: Any) -> ChatResponse:
        """Call a model and return its response (``cost_usd`` None when the price is unknown).

        Raises:
            BudgetExceeded: the estimated maximum cost does not fit a budget (nothing sent).
            ProviderError: typed provider errors.
        """
        ...

    def stream(self, messages: Sequence[Message] | str, *, model: str | None = None,
               context: ToolContext | None = None, route: RouteRequest | None = None,
               router: str | None = None, **params: Any) -> AsyncIterator[ChatChunk]:
        """Stream a completion chunk by chunk (an async generator)."""
        ...

    async def embed(self, texts: Sequence[str], *, model: str | None = None
                    ) -> list[list[float]]:
        """Return one embedding (a list of floats) per text, in order."""
        ...

    async def model_info(self, ref: str) -> ModelInfo | None:
        """Return the :class:`ModelInfo` of ``provider/model``, None when unknown."""
        ...


@runtime_checkable
class Services(Protocol):
    """What a stack offers to the layers below the composition root.

    :class:`flowyard.stack.Stack` implements it; the engine, the agent loop, the LLM gateway,
    :class:`~flowyard.context.ToolContext` and registration hooks that ask for ``services``
    see only this protocol, never ``Stack`` itself.

    Attributes:
        config: the stack's :class:`~flowyard.config.Config`.
        events: the stack's :class:`~flowyard.events.EventBus`.
        providers, tools, storage_schemes, memory_stores, retrievers, routers, executors,
        loaders, listeners, template_filters, guards, alert_channels, health_checks: the
            per-family registries
            (:class:`~flowyard.registry.Registry`).
    """

    config: Config
    events: EventBus
    providers: Registry[Provider]
    tools: Registry[Tool]
    storage_schemes: Registry[Any]
    memory_stores: Registry[MemoryStore]
    retrievers: Registry[Retriever]
    routers: Registry[Router]
    executors: Registry[Executor]
    loaders: Registry[WorkflowLoader]
    listeners: Registry[EventListener]
    template_filters: Registry[Any]
    guards: Registry[Any]
    alert_channels: Registry[Any]
    health_checks: Registry[Any]

    @property
    def llm(self) -> LLMService:
        """The LLM gateway (built on first use)."""
        ...

    @property
    def storage(self) -> StorageBackend:
        """The storage backend (built on first use, opened by :meth:`open`)."""
        ...

    @property
    def storage_is_open(self) -> bool:
        """True once :meth:`open` has opened the storage backend."""
        ...

    async def open(self) -> Services:
        """Open the storage backend (idempotent) and return the services."""
        ...

    def memory(self, name: str | None = None) -> MemoryStore:
        """Return a memory store by name, else the configured or preferred one.

        Raises:
            UnknownNameError: no such store, or none registered.
        """
        ...

    def retriever(self, name: str | None = None) -> Retriever:
        """Return a retriever by name, else the configured or preferred one.

        Raises:
            UnknownNameError: no such retriever, or none registered.
        """
        ...


@runtime_checkable
class SupportsRawArguments(Protocol):
    """An action that receives some keys of its step's ``with`` unrendered.

    ``raw_arguments`` names those keys (the ``workflow`` action's ``with.workflow``, a
    sub-workflow with templates of its own); they are neither rendered nor scanned for step
    references.
    """

    raw_arguments: tuple[str, ...]


@runtime_checkable
class SupportsStepValidation(Protocol):
    """An action that checks its steps itself when a workflow is validated.

    The engine calls :meth:`validate_step` instead of checking ``with`` against the action's
    JSON schema (``parameters``).
    """

    def validate_step(self, step: Step, *, workflow: Workflow, services: Services,
                      issue: Callable[[str, str], None], base: str) -> None:
        """Report every problem of ``step`` as ``issue(message, path)``.

        Args:
            step: the step using this action.
            workflow: the workflow being validated (its ``source`` resolves relative paths).
            services: the stack's services (registries, configuration).
            issue: records one problem: a message and a path such as ``steps[2].with.prompt``.
            base: the step's path (``steps[2]``), the prefix of ``issue`` paths.
        """
        ...


@attrs.frozen
class StepCall:
    """One attempt of a step key described as data, for executors that run it elsewhere
    (another process or machine) and rebuild the stack there (:class:`SupportsStepCalls`).

    Everything is picklable and, except ``arguments`` and ``config`` (which are whatever the
    workflow and the configuration hold), JSON-ready.

    Attributes:
        tool: the registered action to call (the step's ``uses``).
        arguments: the rendered arguments (keys of ``SupportsRawArguments`` as written).
        validated: the arguments were checked against the tool's schema by the engine.
        run_id, step_id, step_key, attempt, idempotency_key: identify the attempt (as in
            :class:`~flowyard.context.ToolContext`).
        workflow_name, workflow_source: the run's workflow and its file (None without one).
        actor: the run metadata's ``actor`` (per-caller limits and budgets), or None.
        priority: the step's priority (higher first when slots are scarce).
        resources: the step's ``resources`` (``num_cpus``, ``num_gpus``, ``memory`` in
            bytes, custom names), or None.
        timeout_s: seconds the attempt may take (None: no limit); the engine enforces it and
            cancels :meth:`SupportsStepCalls.execute_step` when it passes.
        budget_usd: US dollars the attempt's LLM calls may spend, held for it in the run's
            and step's budgets by the engine (None: no budget applies).
        config: the stack's merged configuration (``Config.data``), to rebuild the stack.
    """

    tool: str
    arguments: Mapping[str, Any]
    validated: bool
    run_id: str
    step_id: str
    step_key: str
    attempt: int
    idempotency_key: str
    workflow_name: str
    workflow_source: str | None
    actor: Any
    priority: int
    resources: Mapping[str, Any] | None
    timeout_s: float | None
    budget_usd: float | None
    config: Mapping[str, Any]


@attrs.frozen
class StepReply:
    """What a :class:`StepCall` produced where it ran.

    Attributes:
        output: the action's result (JSON-ready), None when it failed.
        events: the events the call emitted there (``llm.call``, ``tool.call``, ``log``,
            ...; transient events excluded), in order; the engine emits them again in the
            run, so listeners, totals and budgets see them as for a local call.
        error: the exception the action raised (re-raised by the engine after the events),
            or None.
        cost_usd: the sum of the known costs of the call's ``llm.call`` events, US dollars.
    """

    output: Any = None
    events: tuple[Event, ...] = ()
    error: BaseException | None = None
    cost_usd: float = 0.0


@runtime_checkable
class SupportsStepCalls(Protocol):
    """An executor that runs steps where the driver's objects cannot go (another process,
    a cluster), given a :class:`StepCall` instead of a closure.

    The engine (the driver) keeps the DAG, priorities, retries, timeouts, checkpoints and
    events: for each attempt of a step using this executor it holds the attempt's budget
    slice, calls :meth:`execute_step`, emits the reply's events in the run, settles the
    budget slice with ``reply.cost_usd`` and returns ``reply.output`` or raises
    ``reply.error``. :meth:`Executor.execute` keeps serving callers with closures.
    """

    async def execute_step(self, call: StepCall, action: Callable[[], Awaitable[Any]]
                           ) -> StepReply:
        """Run ``call`` and return its reply.

        Args:
            call: the attempt, as data.
            action: the same attempt as an in-process closure (for executors that may run
                some calls locally).

        Returns:
            a :class:`StepReply`; an error of the action is returned in ``reply.error``, not
            raised, so its events are kept.

        Raises:
            Exception: the executor itself failed (a lost worker: an error with
                ``retriable = True``, so the step's retry policy applies); cancellation
                propagates and cancels the remote work.
        """
        ...
