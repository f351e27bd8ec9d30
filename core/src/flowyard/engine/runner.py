"""The DAG engine: schedules a workflow's steps on an anyio task group.

How a run goes:

1. a :class:`~flowyard.models.RunRecord` is created (or loaded, on resume) with the workflow's
   definition and content hash;
2. steps whose dependencies are settled start as tasks; each *step key* (the step, one
   ``for_each`` item ``id[i]``, one loop iteration ``id#n``) takes a slot of the run's global
   :class:`PrioritySlots` per attempt, so higher ``priority`` goes first when slots are scarce;
3. an attempt renders the step's arguments, runs the action on the step's executor within
   its ``timeout`` and records a :class:`~flowyard.models.StepAttempt`; failures matching the
   retry policy are retried by tenacity with exponential backoff and jitter;
4. the output of a completed step key is checkpointed (awaited before any dependent starts);
   resuming never re-runs a checkpointed key and gives in-flight keys the same idempotency
   key (``sha256(run_id ":" step_key)``);
5. events go to the stack's event bus as they happen and to storage in batches at step
   boundaries; the run ends with ``update_run`` and a ``run.finished`` event;
6. meanwhile the caller holds the run's lease (:mod:`flowyard.engine.lease`) and renews its
   heartbeat in a background task; if the lease is lost to another process, the run is
   cancelled and writes nothing more (:attr:`Run.detached`).
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread

from flowyard.context import ToolContext
from flowyard.errors import (
    BudgetExceeded,
    ConfigError,
    StorageError,
    TemplateError,
    ValidationIssue,
    WorkflowError,
    WorkflowValidationError,
)
from flowyard.llm.budget import Budget, BudgetChain
from flowyard.interfaces import StepCall, SupportsStepCalls, SupportsStepCommit
from flowyard.models import Event, LogRecord, RunRecord, StepAttempt, new_id
from flowyard.propagation import StepScope, enter_step, leave_step
from flowyard.serialization import json_default
from flowyard.tools import check_templated_arguments
from flowyard.templating import Compiled, evaluate, template_extensions
from flowyard.workflow import (
    INPUT_TYPES,
    RetryPolicy,
    RunResult,
    Step,
    StepResult,
    WaitingForInput,
    Workflow,
    definition_hash,
)

from .calls import invoke_tool
from .slots import PrioritySlots
from .validate import plan_of

if TYPE_CHECKING:
    from anyio.abc import TaskGroup
    from anyio.streams.memory import MemoryObjectSendStream

    from flowyard.interfaces import Services

    from .lease import LeaseKeeper
    from .plan import Plan, StepPlan

__all__ = ["Run", "StepTimeoutError", "RunStorageError", "idempotency_key", "check_inputs",
           "DEFAULT_CONCURRENCY", "DEFAULT_STORAGE_WRITE_ATTEMPTS"]

DEFAULT_CONCURRENCY = 32
#: How many times the engine tries one of its own storage writes (attempt, checkpoint, events,
#: run record) when it fails with a retriable StorageError (``engine.storage_write_attempts``).
DEFAULT_STORAGE_WRITE_ATTEMPTS = 4
#: First wait in seconds between two tries of a storage write, doubled each time up to 8 s
#: (``engine.storage_retry_wait``).
DEFAULT_STORAGE_RETRY_WAIT = 0.5
log = logging.getLogger("flowyard.engine")

#: Token and cost counters of the attempt running in the current task (for StepAttempt).
_ATTEMPT_USAGE: contextvars.ContextVar[Any] = contextvars.ContextVar("flowyard_attempt_usage",
                                                                     default=None)
_UNSET = object()
#: The step key the current task executes (names the step in a RunStorageError).
_CURRENT_STEP: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "flowyard_current_step", default=None)


class StepTimeoutError(WorkflowError, TimeoutError):
    """A step attempt took longer than its ``timeout``. Retriable."""

    retriable = True


class RunStorageError(StorageError):
    """One of the engine's own storage writes failed during a run (after retrying a retriable
    failure ``engine.storage_write_attempts`` times), so the run stopped.

    Raised by :func:`flowyard.engine.run_workflow` / ``stack.run`` / ``run_sync`` / ``resume``
    as a plain exception (never inside an ``ExceptionGroup``), so ``except StorageError``
    catches it. The message names the run, the step key during which it happened (when one
    did), what was being written, the backend's own message (file or URL), and the state the
    run was left in.

    Attributes:
        run_id: the run.
        step_key: the step key being executed (``id``, ``id[i]``, ``id#n``), or None for the
            run's own writes (its events, its end).
        state: ``"failed"`` (the run record says failed with this error as reason),
            ``"abandoned"`` (the storage refused that write too: the run is left ``running``
            and its lease released or left to expire, so it shows as abandoned), or
            ``"running"`` while the run is still stopping.
        retriable: the underlying StorageError's flag (True: a lock held past the busy timeout
            or a dropped connection; resuming later may succeed).
    """

    def __init__(self, message: str, *, run_id: str, step_key: str | None,
                 state: str = "running", retriable: bool = False) -> None:
        super().__init__(message, retriable=retriable)
        self.run_id = run_id
        self.step_key = step_key
        self.state = state


def _find_surrogate(value: Any, path: str) -> tuple[str, str] | None:
    """Return ``(path, text)`` of the first string (or mapping key) in ``value`` holding a lone
    surrogate, or None.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return path, value[exc.start:exc.end]
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = (_find_surrogate(key, f"{path} (a key)")
                     or _find_surrogate(item, f"{path}.{key}"))
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _find_surrogate(item, f"{path}[{i}]")
            if found:
                return found
    return None


def _input_value_issue(workflow: Workflow, name: str, value: Any) -> ValidationIssue | None:
    """Why an input value cannot be stored with the run (not JSON-ready, or text that is not
    valid Unicode), or None.
    """
    import json

    where = f"inputs.{name}"
    try:
        json.dumps(value, default=json_default)
    except (TypeError, ValueError) as exc:
        return ValidationIssue(f"input {name!r} is not JSON-ready (at {where}): {exc}; nothing "
                               "was stored", path=where, file=workflow.source)
    found = _find_surrogate(value, where)
    if found is not None:
        at, text = found
        return ValidationIssue(
            f"input {name!r} holds text that is not valid Unicode: a lone surrogate {text!r} "
            f"at {at}; nothing was stored", path=where, file=workflow.source)
    return None


def idempotency_key(run_id: str, step_key: str) -> str:
    """Return the idempotency key of a step key: hex SHA-256 of ``run_id:step_key``."""
    return hashlib.sha256(f"{run_id}:{step_key}".encode()).hexdigest()


def check_inputs(workflow: Workflow, inputs: Mapping[str, Any]) -> dict[str, Any]:
    r"""Apply defaults and check the caller's inputs against the declared ones.

    Returns:
        the complete inputs.

    Raises:
        WorkflowValidationError: unknown, missing or mistyped inputs, and values that cannot
            be stored with the run (not JSON-ready, or text with a lone surrogate such as
            ``"\ud800"``); every problem, each naming its input (``path`` ``inputs.NAME``).
    """
    issues: list[ValidationIssue] = []
    out: dict[str, Any] = {}
    for name in inputs:
        if name not in workflow.inputs:
            issues.append(ValidationIssue(
                f"unknown input {name!r} (declared: {', '.join(workflow.inputs) or 'none'})",
                path=f"inputs.{name}", file=workflow.source))
    for name, spec in workflow.inputs.items():
        if name in inputs:
            value = inputs[name]
            ok = spec.type == "any" or (
                isinstance(value, INPUT_TYPES[spec.type])
                and not (spec.type in ("integer", "number") and isinstance(value, bool)))
            if not ok:
                issues.append(ValidationIssue(
                    f"input {name!r} must be of type {spec.type}, got {value!r}",
                    path=f"inputs.{name}", file=workflow.source))
            out[name] = list(value) if isinstance(value, tuple) else value
            if ok:
                problem = _input_value_issue(workflow, name, value)
                if problem is not None:
                    issues.append(problem)
        elif spec.required:
            issues.append(ValidationIssue(f"missing required input {name!r}"
                                          + (f" ({spec.description})" if spec.description
                                             else ""),
                                          path=f"inputs.{name}", file=workflow.source))
        else:
            out[name] = spec.default
    if issues:
        raise WorkflowValidationError(issues)
    return out


class _State:
    """Scheduling state of one step in one run (its compiled templates and dependencies come
    from the workflow's :class:`~flowyard.engine.plan.Plan`, shared by every run).
    """

    __slots__ = ("step", "deps", "raw", "children", "remaining", "result", "with_", "for_each",
                 "blocking", "fails_run", "waiting", "slot_priority", "budget_chain", "tool",
                 "argument_checks")

    def __init__(self, step: Step, plan: StepPlan) -> None:
        self.step = step
        self.deps = plan.deps
        self.raw = plan.raw
        self.children: list[_State] = []
        self.remaining = len(plan.deps)
        self.result = StepResult(id=step.id)
        self.with_ = plan.with_
        self.for_each = plan.for_each
        self.blocking = False
        #: failed under ``on_error: continue_and_fail``: the run goes on and ends failed
        self.fails_run = False
        #: a key of the step waits for a human answer (WaitingForInput)
        self.waiting = False
        self.slot_priority = step.priority
        self.budget_chain: Any = _UNSET
        self.tool: Any = None  # the action, looked up at its first attempt
        self.argument_checks = plan.argument_checks


class _Usage:
    __slots__ = ("input_tokens", "output_tokens", "cost", "unknown")

    def __init__(self) -> None:
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost = 0.0
        self.unknown = False

    def add(self, input_tokens: int, output_tokens: int, cost: float | None) -> None:
        self.input_tokens += int(input_tokens or 0)
        self.output_tokens += int(output_tokens or 0)
        if cost is None:
            self.unknown = True
        else:
            self.cost += float(cost)

    @property
    def cost_usd(self) -> float | None:
        return None if self.unknown else self.cost


class Run:
    """One execution (or resumption) of a workflow on a stack.

    Args:
        stack: an opened stack.
        workflow: a validated workflow.
        inputs: complete inputs (see :func:`check_inputs`).
        record: the run record (created by the caller or loaded for a resume).
        checkpoints: ``{step_key: output}`` of keys completed earlier (resume).
        attempts: ``{step_key: highest attempt number}`` made earlier (resume).
        max_concurrency: global limit on step keys running at once.
        stream: a memory stream that also receives every event of the run.
        previous_costs: cost lines of the run so far (resume): counted in totals and budget.
        parent_budget: the budgets of the parent step, for a sub-workflow's run.
        lease: the run's lease, held by the caller (None: no lease is checked).
        plan: the workflow's plan (see :func:`flowyard.engine.validate.plan_of`; looked up
            or built here when None).
    """

    def __init__(self, stack: Services, workflow: Workflow, inputs: dict[str, Any],
                 record: RunRecord, *, checkpoints: dict[str, Any] | None = None,
                 attempts: dict[str, int] | None = None, max_concurrency: int | None = None,
                 stream: MemoryObjectSendStream[Event] | None = None,
                 previous_costs: list[Any] | None = None,
                 parent_budget: BudgetChain | None = None,
                 lease: LeaseKeeper | None = None, plan: Plan | None = None) -> None:
        self.stack = stack
        #: the plugins' template filters, tests and globals (register_template_filters)
        self.template_extensions = template_extensions(stack)
        self.lease = lease
        self.workflow = workflow
        self.inputs = inputs
        self.record = record
        self.run_id = record.id
        self.checkpoints = checkpoints or {}
        self.attempt_base = attempts or {}
        limit = (max_concurrency or workflow.max_concurrency
                 or int(stack.config.get("engine.max_concurrency", DEFAULT_CONCURRENCY)))
        self.slots = PrioritySlots(limit)
        self.stream = stream
        self.storage = stack.storage
        self._step_commit = isinstance(self.storage, SupportsStepCommit)
        #: the backend's commit_step completes without suspending (see SupportsStepCommit),
        #: so it needs no shield against cancellation (a shield costs 4-9 µs per step)
        self._commit_cannot_suspend = self._step_commit and getattr(
            self.storage, "commit_step_never_suspends", False) is True
        self._buffer: list[Event] = []
        self._loop_thread = threading.get_ident()
        self._logs: list[LogRecord] = []
        self.usage = _Usage()
        self.step_usage: dict[str, _Usage] = {}
        self.states: dict[str, _State] = {}
        self.steps_view: dict[str, dict[str, Any]] = {}
        self._tg: TaskGroup | None = None
        self._failure: str | None = None
        #: the first of the engine's storage writes that failed for good (stops the run)
        self._storage_failure: RunStorageError | None = None
        self._end_recorded = False
        try:
            self._write_attempts = max(1, int(stack.config.get(
                "engine.storage_write_attempts", DEFAULT_STORAGE_WRITE_ATTEMPTS)))
            self._retry_wait = max(0.0, float(stack.config.get(
                "engine.storage_retry_wait", DEFAULT_STORAGE_RETRY_WAIT)))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"engine.storage_write_attempts / engine.storage_retry_wait must "
                              f"be numbers: {exc}") from None
        self._executors: dict[str | None, Any] = {}
        #: ids of the executors that take StepCall data (SupportsStepCalls), checked once
        self._step_call_executors: set[int] = set()
        self.budget = (Budget(workflow.budget_usd, scope="run", name=workflow.name)
                       if workflow.budget_usd is not None else None)
        self.parent_budgets = tuple(parent_budget or ())  # a sub-workflow's parent step
        for line in previous_costs or ():
            self._count(line.step_id, line.input_tokens, line.output_tokens, line.cost_usd)
            if self.budget is not None and line.cost_usd is not None:
                self.budget.spent_usd += line.cost_usd
        self.base_context = {"inputs": inputs, "steps": self.steps_view,
                             "run": {"id": self.run_id, "workflow": workflow.name}}
        plan = plan if plan is not None else plan_of(stack, workflow)
        states = self.states
        for step in workflow.steps:
            states[step.id] = _State(step, plan.steps[step.id])
            self.step_usage[step.id] = _Usage()
        for step_id, step_plan in plan.steps.items():
            if step_plan.children:
                states[step_id].children = [states[c] for c in step_plan.children]

    @property
    def detached(self) -> bool:
        """True once this process lost the run's lease: another process executes the run now,
        so this one stops and writes nothing more to it.
        """
        return self.lease is not None and self.lease.lost

    def _owned_now(self) -> bool:
        """True when this process surely holds the run's lease right now (no lease to hold,
        or a heartbeat that is not about to expire); False means "ask :meth:`_owned`".
        """
        lease = self.lease
        return lease is None or lease.fresh()

    async def _owned(self) -> bool:
        """Before a write: True while this process holds the run's lease. Costs a clock read
        unless the last heartbeat is about to expire (see :meth:`LeaseKeeper.ensure`); when
        the lease was lost, the run is cancelled (raised here unless shielded) and False is
        returned.
        """
        if self.lease is None:
            return True
        await self.lease.ensure()
        return not self.lease.lost

    async def _store(self, what: str, step_key: str | None,
                     write: Callable[[], Awaitable[None]], *,
                     first_failure: StorageError | None = None) -> None:
        """Run one of the engine's storage writes; a retriable :class:`StorageError` (a lock
        held past the busy timeout, a dropped connection) is tried again up to
        ``engine.storage_write_attempts`` times in all, with exponential backoff from
        ``engine.storage_retry_wait`` seconds (doubling, at most 8 s, plus up to 10% jitter).

        Args:
            what: what is written, for the message (``"the checkpoint"``...).
            step_key: the step key being executed, or None for the run's own writes.
            write: the write; every engine write is an upsert or writes nothing when it
                fails, so trying it again is safe.
            first_failure: the error of a first try the caller already made (the write is
                then not tried again at once: it goes on as after that failure).

        Raises:
            RunStorageError: the write failed for good (a non-retriable error, or the tries
                ran out); the first such failure is kept in ``_storage_failure`` and the run's
                task group is cancelled, so the run stops (see :meth:`execute`).
        """
        try:  # the usual case, without building a retry loop
            if first_failure is not None:
                raise first_failure
            await write()
            return
        except RunStorageError:
            raise
        except StorageError as exc:
            if not exc.retriable or self._write_attempts <= 1:
                self._storage_failed(what, step_key, exc)
            log.warning("run %s%s: writing %s failed (%s); trying again (2 of %d)",
                        self.run_id, f", step {step_key!r}" if step_key else "", what, exc,
                        self._write_attempts)
        from tenacity import (
            AsyncRetrying,
            retry_if_exception,
            stop_after_attempt,
            wait_exponential,
            wait_random,
        )

        def before_sleep(retry_state: Any) -> None:
            exc = retry_state.outcome.exception() if retry_state.outcome else None
            log.warning("run %s%s: writing %s failed (%s); trying again (%d of %d)",
                        self.run_id, f", step {step_key!r}" if step_key else "", what, exc,
                        retry_state.attempt_number + 2, self._write_attempts)

        # the waits double from engine.storage_retry_wait: the first one here, the next
        # ones (twice as long each) between the tries tenacity makes
        await anyio.sleep(self._retry_wait + random.uniform(0, self._retry_wait / 10))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._write_attempts - 1),
            wait=wait_exponential(multiplier=2 * self._retry_wait, max=8.0)
            + wait_random(0, self._retry_wait / 10),
            retry=retry_if_exception(lambda e: isinstance(e, StorageError) and e.retriable
                                     and not isinstance(e, RunStorageError)),
            sleep=anyio.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await write()
        except RunStorageError:
            raise
        except StorageError as exc:
            self._storage_failed(what, step_key, exc)

    def _storage_failed(self, what: str, step_key: str | None, exc: StorageError) -> None:
        """Stop the run after one of its storage writes failed for good (see :meth:`_store`).

        Raises:
            RunStorageError: always, naming the run, the step key and what was written.
        """
        tries = f" (tried {self._write_attempts} times)" if exc.retriable else ""
        failure = RunStorageError(
            f"run {self.run_id}"
            + (f", step {step_key!r}" if step_key else "")
            + f": could not write {what} to storage{tries}: {exc}",
            run_id=self.run_id, step_key=step_key, retriable=exc.retriable)
        failure.__cause__ = exc
        if self._storage_failure is None:
            self._storage_failure = failure
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        raise failure from exc

    # ------------------------------------------------------------------ events

    def _on_event(self, event: Event) -> None:
        if event.run_id != self.run_id:
            return
        if threading.get_ident() != self._loop_thread:
            # emitted by a sync tool in a worker thread: hand it to the event loop's thread
            try:
                anyio.from_thread.run_sync(self._accept, event)
                return
            except RuntimeError:  # not an anyio worker thread: record it, without streaming
                self._accept(event, live=False)
                return
        self._accept(event)

    def _accept(self, event: Event, live: bool = True) -> None:
        self._buffer.append(event)
        if event.type == "llm.call":
            data = event.data
            self._count(event.step_id, data.get("input_tokens", 0), data.get("output_tokens", 0),
                        data.get("cost_usd"))
            usage = _ATTEMPT_USAGE.get()
            if usage is not None:  # the call happened inside an attempt of this task
                usage.add(data.get("input_tokens", 0), data.get("output_tokens", 0),
                          data.get("cost_usd"))
        elif event.type == "step.usage":  # e.g. a sub-workflow's totals (its own run's calls)
            data = event.data
            self._count(event.step_id, data.get("input_tokens", 0), data.get("output_tokens", 0),
                        data.get("cost_usd"))
        elif event.type == "log":
            self._logs.append(LogRecord(run_id=self.run_id, message=str(event.data.get(
                "message", "")), level=str(event.data.get("level", "info")),
                step_id=event.step_id, time=event.time))
        if self.stream is not None and live:
            try:
                self.stream.send_nowait(event)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.stream = None  # the consumer stopped listening; the run goes on

    def _count(self, step_id: str | None, input_tokens: int, output_tokens: int,
               cost: float | None) -> None:
        self.usage.add(input_tokens, output_tokens, cost)
        if step_id is not None and step_id in self.step_usage:
            self.step_usage[step_id].add(input_tokens, output_tokens, cost)

    def emit(self, type: str, step_id: str | None = None, **data: Any) -> None:
        """Emit an event of this run through the stack's event bus."""
        self.stack.events.publish(type, self.run_id, step_id, data)

    async def flush(self) -> None:
        """Write the buffered events and log lines to storage (dropped once detached)."""
        if not (self._owned_now() or await self._owned()):
            self._buffer, self._logs = [], []
            return
        if self._buffer or self._logs:
            await self._commit("the run's events", _CURRENT_STEP.get())

    async def _commit(self, what: str, step_key: str | None, *,
                      attempt: StepAttempt | None = None,
                      checkpoint: tuple[str, Any] | None = None) -> None:
        """Write ``attempt``, ``checkpoint`` (``(step_key, output)``) and the events and log
        lines buffered so far: in one transaction when the backend implements
        :class:`~flowyard.interfaces.SupportsStepCommit`, else one call each. The caller
        checked :meth:`_owned`.

        Raises:
            RunStorageError: as :meth:`_store`.
        """
        events, self._buffer = self._buffer, []
        logs, self._logs = self._logs, []
        storage = self.storage
        run_id = self.run_id
        if self._step_commit:
            try:  # the usual case, without the retry machinery of _store
                await storage.commit_step(run_id, attempt=attempt, checkpoint=checkpoint,
                                          events=events, logs=logs)
                return
            except StorageError as exc:
                first_failure = exc
            await self._store(what, step_key, lambda: storage.commit_step(
                run_id, attempt=attempt, checkpoint=checkpoint, events=events, logs=logs),
                first_failure=first_failure)
            return
        if attempt is not None:
            await self._store(f"attempt {attempt.attempt} ({attempt.status})", step_key,
                              lambda: storage.save_attempt(attempt))
        if checkpoint is not None:
            await self._store("the checkpoint", step_key,
                              lambda: storage.save_checkpoint(run_id, *checkpoint))
        if events:
            await self._store("the run's events", step_key,
                              lambda: storage.append_events(events))
        for record in logs:
            await self._store("a log line", step_key,
                              lambda record=record: storage.append_log(record))

    # ------------------------------------------------------------------ main

    async def execute(self) -> RunResult:
        """Run the workflow to its end and return the result.

        Cancellation from outside marks the run ``cancelled`` (and its in-flight steps), then
        propagates.
        """
        self._loop_thread = threading.get_ident()
        unsubscribe = self.stack.events.subscribe(self._on_event, name=f"run:{self.run_id}")
        record = self.record
        record.status = "running"
        record.started_at = record.started_at or time.time()
        started = time.time()
        self.emit("run.started", workflow=self.workflow.name, inputs=self.inputs,
                  resumed=record.resume_count > 0, resume_count=record.resume_count,
                  parent_run_id=record.metadata.get("parent_run_id"),
                  parent_step=record.metadata.get("parent_step"),
                  traceparent=record.metadata.get("traceparent"))
        status = "completed"
        error: str | None = None
        try:
            try:
                with anyio.move_on_after(self.workflow.timeout
                                         if self.workflow.timeout is not None else math.inf
                                         ) as scope:
                    async with anyio.create_task_group() as tg:
                        self._tg = tg
                        for state in self.states.values():
                            if state.remaining == 0:
                                tg.start_soon(self._run_step, state)
                if self._storage_failure is not None:
                    await self._end_after_storage_failure(started)
                if scope.cancelled_caught:
                    status = "failed"
                    error = f"the workflow timed out after {self.workflow.timeout} s"
            except RunStorageError:
                raise
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    await self._finish("cancelled", "the run was cancelled", started)
                raise
            except Exception as exc:
                # the engine itself failed (e.g. storage is unreachable): record what we can
                with anyio.CancelScope(shield=True):
                    try:
                        await self._finish("failed", f"internal error: {exc!r}", started)
                    except Exception:  # the original error is what matters
                        log.exception("could not record the failure of run %s", self.run_id)
                raise
            if status == "completed":
                status, error = self._final_status()
            try:
                return await self._finish(status, error, started)
            except RunStorageError:
                await self._end_after_storage_failure(started)
                raise AssertionError("unreachable: the storage failure is raised above"
                                     ) from None
        finally:
            unsubscribe()

    async def _end_after_storage_failure(self, started: float) -> None:
        """Stop after one of the engine's storage writes failed for good: record the run as
        ``failed`` with that error as reason when the storage still accepts the write, and
        raise the error (a :class:`RunStorageError` naming the run, the step and the state
        the run is left in).

        When the storage refuses that write too, the run stays ``running`` in storage; its
        lease is then released by :meth:`LeaseKeeper.hold` (or, when that write fails as
        well, expires ``runs.lease_timeout`` seconds after the last heartbeat), so it shows
        as abandoned. Either way ``flowyard resume RUN_ID`` continues it without running the
        checkpointed step keys again.

        Raises:
            RunStorageError: always.
        """
        failure = self._storage_failure
        assert failure is not None
        if not self._end_recorded and not self.detached:
            with anyio.CancelScope(shield=True):
                try:
                    await self._finish("failed", str(failure), started)
                except StorageError as exc:
                    log.error("run %s: could not record its end either: %s", self.run_id, exc)
        if self._end_recorded:
            state = "failed"
            told = (f"the run is marked failed with this error as reason; `flowyard resume "
                    f"{self.run_id}` continues it (completed steps are not run again)")
        else:
            state = "abandoned"
            told = ("the storage refused to record the run's end as well, so it is left "
                    "'running' without a live lease (released, or expiring runs.lease_timeout "
                    "seconds after the last heartbeat) and shows as abandoned; `flowyard "
                    f"resume {self.run_id}` continues it (completed steps are not run again)")
        raise RunStorageError(f"{failure}; {told}", run_id=failure.run_id,
                              step_key=failure.step_key, state=state,
                              retriable=failure.retriable) from failure.__cause__

    def _final_status(self) -> tuple[str, str | None]:
        blocking = [s for s in self.states.values() if s.blocking]
        if any(s.waiting for s in self.states.values()) and not (
                blocking and self.workflow.on_failure == "fail_fast"):
            return "waiting", None  # resumed when answered; failures decide then
        if not blocking:
            failed = [s.result for s in self.states.values() if s.fails_run]
            if failed:  # on_error: continue_and_fail: everything ran, and the run fails
                first = failed[0]
                more = f" (and {len(failed) - 1} more step(s))" if len(failed) > 1 else ""
                return "failed", (f"step {first.id!r} {first.status}: {first.error}{more} "
                                  "(on_error: continue_and_fail)")
            return "completed", None
        first = blocking[0].result
        error = self._failure or f"step {first.id!r} {first.status}: {first.error}"
        if self.workflow.on_failure == "continue":
            done = any(s.result.status == "completed" for s in self.states.values())
            failing = any(s.fails_run for s in self.states.values())  # continue_and_fail
            return ("partial" if done and not failing else "failed"), error
        return "failed", error

    async def _finish(self, status: str, error: str | None, started: float) -> RunResult:
        finished = time.time()
        for state in self.states.values():
            res = state.result
            if res.status == "pending" and status == "waiting":
                pass  # runs when the run is resumed after the answer
            elif res.status in ("pending",):
                res.status = "skipped" if status != "cancelled" else "cancelled"
                res.reason = ("not run: the run was cancelled" if status == "cancelled"
                              else f"not run: the run ended {status}")
                self.emit("step.skipped", res.id, reason=res.reason)
            elif res.status == "running":
                res.status = "cancelled"
                res.finished_at = finished
            usage = self.step_usage[res.id]
            res.input_tokens, res.output_tokens = usage.input_tokens, usage.output_tokens
            res.cost_usd = usage.cost_usd
        outputs: dict[str, Any] = {}
        if self.workflow.outputs and status not in ("cancelled", "waiting"):
            context = {**self.base_context}
            for name, template in self.workflow.outputs.items():
                try:
                    outputs[name] = Compiled(template, f"output {name!r}",
                                             self.template_extensions).render(context)
                except TemplateError as exc:
                    if status == "completed":
                        status, error = "failed", f"cannot render the outputs: {exc}"
                    else:
                        error = f"{error}; output {name!r} not rendered: {exc}"
        result = RunResult(
            run_id=self.run_id, workflow_name=self.workflow.name, status=status,
            outputs=outputs, steps={sid: s.result for sid, s in self.states.items()},
            error=error, input_tokens=self.usage.input_tokens,
            output_tokens=self.usage.output_tokens, cost_usd=self.usage.cost_usd,
            started_at=started, finished_at=finished, resume_count=self.record.resume_count,
        )
        self.emit("run.finished", **result.summary(), outputs=outputs)
        record = self.record
        record.status = status  # type: ignore[assignment]
        record.outputs = outputs
        record.error = error
        record.finished_at = finished if status != "waiting" else None
        record.input_tokens = result.input_tokens
        record.output_tokens = result.output_tokens
        record.cost_usd = result.cost_usd
        try:
            await self.flush()
        finally:
            if not self.detached:  # else the run belongs to another process now
                await self._store("the run's end (status, outputs, totals)", None,
                                  lambda: self.storage.update_run(record))
                self._end_recorded = True
        return result

    # ------------------------------------------------------------------ steps

    def _settle(self, state: _State) -> None:
        res = state.result
        self.steps_view[res.id] = {"output": res.output, "status": res.status,
                                   "error": res.error}
        if state.blocking and self.workflow.on_failure == "fail_fast":
            if self._failure is None:
                self._failure = f"step {res.id!r} {res.status}: {res.error}"
            assert self._tg is not None
            self._tg.cancel_scope.cancel()
            return
        tg = self._tg
        assert tg is not None
        for child in state.children:
            child.remaining -= 1
            if child.remaining == 0:
                tg.start_soon(self._run_step, child)

    def _context(self, **extra: Any) -> dict[str, Any]:
        if not extra:
            return self.base_context
        return {**self.base_context, **extra}

    async def _run_step(self, state: _State) -> None:
        """Run one step (a task of the run's task group). A :class:`RunStorageError` of this
        run ends here: it is kept in ``_storage_failure`` and has cancelled the task group, so
        it leaves the group as a plain error of :meth:`execute`, never an ExceptionGroup.
        """
        token = _CURRENT_STEP.set(state.step.id)
        try:
            await self._step_body(state)
        except RunStorageError as exc:
            if exc.run_id != self.run_id or self._storage_failure is None:
                raise
        finally:
            _CURRENT_STEP.reset(token)

    async def _step_body(self, state: _State) -> None:
        step = state.step
        res = state.result
        blocked = [d for d in state.deps if self.states[d].blocking
                   or self.states[d].result.reason == "upstream failed"] if state.deps else ()
        if blocked:
            res.status = "skipped"
            res.reason = "upstream failed"
            self.emit("step.skipped", step.id, reason=f"upstream step {sorted(blocked)[0]!r} "
                      "did not complete")
            await self.flush()
            self._settle(state)
            return
        if step.id in self.checkpoints:
            res.status = "completed"
            res.output = self.checkpoints[step.id]
            res.resumed = True
            self.emit("step.completed", step.id, resumed=True, attempts=0)
            self._settle(state)
            return
        context = self.base_context
        res.started_at = time.time()
        try:
            if step.when is not None and not evaluate(step.when, context,
                                                      where=f"step {step.id!r}, field when",
                                                      timeout=_time_left(step.timeout),
                                                      extensions=self.template_extensions):
                res.status = "skipped"
                res.reason = "condition false"
                res.finished_at = res.started_at
                self.emit("step.skipped", step.id, reason="condition false")
                await self.flush()
                self._settle(state)
                return
            res.status = "running"
            self.emit("step.started", step.id, uses=step.uses)
            if step.for_each is not None:
                output = await self._fan_out(state, context)
            elif step.until is not None:
                output = await self._loop(state, context)
            else:  # completes the step, records it with its checkpoint in one write
                await self._execute_key(state, step.id, context, whole_step=True)
                self._settle(state)
                return
            res.output = output
            res.status = "completed"
        except anyio.get_cancelled_exc_class():
            res.status = "cancelled"
            res.finished_at = time.time()
            res.reason = "cancelled"
            with anyio.CancelScope(shield=True):
                self.emit("step.failed", step.id, status="cancelled", error="cancelled")
                await self.flush()
            raise
        except RunStorageError as exc:
            if exc.run_id == self.run_id:  # the engine's own write failed: the run stops
                raise
            await self._step_error(state, exc)  # a sub-workflow's storage failed
            return
        except WaitingForInput as wait:  # a human step: its dependents wait with it
            res.status = "waiting"
            res.reason = wait.prompt
            state.waiting = True
            await self.flush()
            return
        except Exception as exc:  # noqa: BLE001 - a step failure is data, not a crash
            await self._step_error(state, exc)
            return
        res.finished_at = time.time()
        self.emit("step.completed", step.id, attempts=res.attempts,
                  duration_s=round(res.finished_at - res.started_at, 6))
        with anyio.CancelScope(shield=True):  # the work is done: record it
            if self._owned_now() or await self._owned():
                await self._commit("the checkpoint", step.id, checkpoint=(step.id, res.output))
            else:
                await self.flush()
        self._settle(state)

    async def _step_error(self, state: _State, exc: BaseException) -> None:
        step = state.step
        res = state.result
        res.finished_at = time.time()
        res.error = str(exc) or type(exc).__name__
        res.error_type = type(exc).__name__
        status = "budget_exceeded" if isinstance(exc, BudgetExceeded) else "failed"
        has_fallback, fallback = step.fallback
        if has_fallback:
            res.status = "completed"
            res.output = fallback
            if self._owned_now() or await self._owned():
                await self._store("the checkpoint (fallback output)", step.id,
                                  lambda: self.storage.save_checkpoint(self.run_id, step.id,
                                                                       fallback))
            self.emit("step.completed", step.id, attempts=res.attempts, fallback=True,
                      error=res.error, error_type=res.error_type)
        else:
            res.status = status
            state.blocking = step.on_error not in ("continue", "continue_and_fail")
            state.fails_run = step.on_error == "continue_and_fail"
            self.emit("step.failed", step.id, status=status, error=res.error,
                      error_type=res.error_type, attempts=res.attempts,
                      continued=not state.blocking)
        await self.flush()
        self._settle(state)

    async def _fan_out(self, state: _State, context: dict[str, Any]) -> list[Any]:
        step = state.step
        items = state.for_each.render(context, timeout=_time_left(step.timeout))
        if isinstance(items, tuple):
            items = list(items)
        if not isinstance(items, list):
            raise TemplateError(f"step {step.id!r}, field for_each: must give a list, got "
                                f"{type(items).__name__}")
        results: list[Any] = [None] * len(items)
        errors: list[tuple[int, Exception]] = []
        waits: list[tuple[int, WaitingForInput]] = []
        limiter = anyio.CapacityLimiter(step.max_parallel) if step.max_parallel else None
        done = [sum(f"{step.id}[{i}]" in self.checkpoints for i in range(len(items)))]
        self.stack.events.progress(self.run_id, step.id, step.id, done[0], len(items))

        async def one(i: int, item: Any) -> None:
            key = f"{step.id}[{i}]"
            if key in self.checkpoints:
                results[i] = self.checkpoints[key]
                return
            item_context = self._context(item=item, index=i)
            try:
                if limiter is not None:
                    async with limiter:
                        results[i] = await self._execute_key(state, key, item_context)
                else:
                    results[i] = await self._execute_key(state, key, item_context)
            except WaitingForInput as wait:  # the other items go on
                waits.append((i, wait))
                return
            except Exception as exc:  # noqa: BLE001 - first failure cancels the siblings
                errors.append((i, exc))
                tg.cancel_scope.cancel()
                return
            done[0] += 1  # transient, throttled progress for live displays (never stored)
            self.stack.events.progress(self.run_id, step.id, step.id, done[0], len(items))

        async with anyio.create_task_group() as tg:
            for i, item in enumerate(items):
                tg.start_soon(one, i, item)
        if errors:
            i, exc = min(errors, key=lambda e: e[0])
            raise exc
        if waits:
            raise min(waits, key=lambda w: w[0])[1]
        return results

    async def _loop(self, state: _State, context: dict[str, Any]) -> Any:
        step = state.step
        previous: Any = None
        output: Any = None
        met = False
        n = 0
        assert step.until is not None
        while n < step.max_iterations:
            n += 1
            key = f"{step.id}#{n}"
            if key in self.checkpoints:
                output = self.checkpoints[key]
            else:
                output = await self._execute_key(state, key,
                                                 self._context(iteration=n, previous=previous))
            previous = output
            state.result.iterations = n
            if evaluate(step.until, self._context(output=output, iteration=n),
                        where=f"step {step.id!r}, field until",
                        timeout=_time_left(step.timeout),
                        extensions=self.template_extensions):
                met = True
                break
        if not met:
            self.emit("log", step.id, level="warning",
                      message=f"step {step.id!r}: 'until' still false after "
                              f"{step.max_iterations} iterations; keeping the last output")
        return output

    # ------------------------------------------------------------------ attempts

    def _budget_chain(self, state: _State) -> BudgetChain | None:
        """The budgets of ``state``'s calls: the run's, then the step's (one budget shared by
        every attempt and item of the step).
        """
        if state.budget_chain is _UNSET:
            step = state.step
            if step.budget_usd is None and self.budget is None and not self.parent_budgets:
                state.budget_chain = None
                return None
            chain = BudgetChain.of([*self.parent_budgets, self.budget,
                                    Budget(step.budget_usd, scope="step", name=step.id)
                                    if step.budget_usd is not None else None])
            state.budget_chain = chain if chain else None
        return state.budget_chain  # type: ignore[no-any-return]

    async def _execute_key(self, state: _State, key: str, context: dict[str, Any], *,
                           whole_step: bool = False) -> Any:
        """Run one step key (with its retries) and record its last attempt, checkpoint and
        the events so far in one write; return its output.

        Args:
            state: the step's scheduling state.
            key: the step key (``id``, ``id[i]``, ``id#n``).
            context: the names its templates see.
            whole_step: the key is the step itself (no ``for_each``/``until``): the step is
                marked completed and its ``step.completed`` event goes into that write too.
        """
        step = state.step
        policy = step.retry
        if policy is None or policy.attempts <= 1:
            output, record = await self._attempt(state, key, context)
        else:
            output, record = await self._with_retries(state, key, context, policy)
        if whole_step:
            res = state.result
            res.output = output
            res.status = "completed"
            res.finished_at = time.time()
            self.emit("step.completed", step.id, attempts=res.attempts,
                      duration_s=round(res.finished_at - res.started_at, 6))
        what = f"attempt {record.attempt} (completed) and the checkpoint"
        if self._commit_cannot_suspend:  # nothing for a cancellation to interrupt
            if self._owned_now() or await self._owned():
                await self._commit(what, key, attempt=record, checkpoint=(key, output))
            return output
        with anyio.CancelScope(shield=True):  # the work is done: record it
            if self._owned_now() or await self._owned():
                await self._commit(what, key, attempt=record, checkpoint=(key, output))
        return output

    async def _with_retries(self, state: _State, key: str, context: dict[str, Any],
                            policy: RetryPolicy) -> tuple[Any, StepAttempt]:
        from tenacity import (
            AsyncRetrying,
            retry_if_exception,
            stop_after_attempt,
            wait_exponential,
            wait_random,
        )

        def before_sleep(retry_state: Any) -> None:
            exc = retry_state.outcome.exception() if retry_state.outcome else None
            self.emit("step.retrying", state.step.id, step_key=key,
                      attempt=retry_state.attempt_number,
                      wait_s=round(retry_state.next_action.sleep, 6)
                      if retry_state.next_action else None,
                      error=str(exc), error_type=type(exc).__name__)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.attempts),
            wait=wait_exponential(multiplier=policy.backoff, exp_base=policy.multiplier,
                                  max=policy.max_backoff) + wait_random(0, policy.jitter),
            retry=retry_if_exception(
                lambda e: isinstance(e, Exception)
                and not isinstance(e, (RunStorageError, WaitingForInput))
                and policy.matches(e)),
            sleep=anyio.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt(state, key, context)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def _attempt(self, state: _State, key: str, context: dict[str, Any]
                       ) -> tuple[Any, StepAttempt]:
        """Make one attempt of a step key; return its output and its (completed) attempt
        record, which the caller stores with the checkpoint. A failed or cancelled attempt
        is stored here, then its error propagates.
        """
        step = state.step
        number = self.attempt_base.get(key, 0) + 1
        self.attempt_base[key] = number
        state.result.attempts += 1
        idem = idempotency_key(self.run_id, key)
        record = StepAttempt(self.run_id, step.id, key, number, "running", idem)
        await self.slots.acquire(state.slot_priority)
        usage = _Usage()
        token = _ATTEMPT_USAGE.set(usage)
        step_token = _CURRENT_STEP.set(key)
        scope_token = enter_step(StepScope(self.run_id, step.id, key, number))

        try:
            if self._owned_now() or await self._owned():
                await self._commit(f"attempt {number} (running)", key, attempt=record)
            ctx = ToolContext(self.stack, self.run_id, step.id, key, number, idem,
                              self.workflow.name, self.workflow.source,
                              budget=self._budget_chain(state),
                              actor=self.record.metadata.get("actor"))
            try:
                with_ = state.with_
                arguments = with_.render(context, timeout=_time_left(step.timeout)
                                         if with_.jinja else None)
                if step.timeout is not None:
                    with anyio.move_on_after(step.timeout) as scope:
                        output = await self._dispatch(state, arguments, ctx)
                    if scope.cancelled_caught:
                        raise StepTimeoutError(
                            f"step {step.id!r} ({key}) timed out after {step.timeout} s")
                else:
                    output = await self._dispatch(state, arguments, ctx)
            except anyio.get_cancelled_exc_class():
                record.status = "cancelled"
                record.error = "cancelled"
                _finish_attempt(record, usage)
                if not self.detached and self._storage_failure is None:
                    with anyio.CancelScope(shield=True):
                        await self._commit(f"attempt {number} (cancelled)", key,
                                           attempt=record)
                raise
            except WaitingForInput as wait:  # a human step: recorded waiting, never retried
                record.status = "waiting"
                record.error = wait.prompt
                record.error_type = "WaitingForInput"
                _finish_attempt(record, usage)
                self._note_waiting(step.id, key, wait)
                if self._owned_now() or await self._owned():
                    await self._commit(f"attempt {number} (waiting)", key, attempt=record)
                raise
            except Exception as exc:
                record.status = "budget_exceeded" if isinstance(exc, BudgetExceeded) else "failed"
                record.error = str(exc) or type(exc).__name__
                record.error_type = type(exc).__name__
                _finish_attempt(record, usage)
                if self._owned_now() or await self._owned():
                    await self._commit(f"attempt {number} ({record.status})", key,
                                       attempt=record)
                raise
            output = _jsonable(output)
            record.status = "completed"
            record.output = output
            _finish_attempt(record, usage)
            return output, record
        finally:
            leave_step(scope_token)
            _CURRENT_STEP.reset(step_token)
            _ATTEMPT_USAGE.reset(token)
            self.slots.release()

    def _note_waiting(self, step_id: str, key: str, wait: WaitingForInput) -> None:
        """Record that step key ``key`` waits for a human answer: a ``step.waiting`` event and
        ``metadata["human"]["waiting"][wait.key or key]`` of the run record (written with the
        run's end; the first request of a key is kept, so its deadline survives resumes).
        """
        human = self.record.metadata.setdefault("human", {})
        waiting = human.setdefault("waiting", {})
        answer_key = wait.key or key
        entry = waiting.get(answer_key)
        if entry is None:
            entry = waiting[answer_key] = {**wait.to_dict(), "step_id": step_id,
                                           "step_key": key, "since": time.time()}
            if wait.state is not None:
                entry["state"] = wait.state
        self.emit("step.waiting", step_id, step_key=key, answer_key=answer_key,
                  prompt=entry["prompt"],
                  kind=entry["kind"], schema=entry["schema"], deadline=entry["deadline"])

    def _executor(self, name: str | None) -> Any:
        executor = self._executors.get(name)
        if executor is None:
            resolved = name or str(self.stack.config.get("engine.executor") or "local")
            executor = self._executors[name] = self.stack.executors.get(resolved)
            if isinstance(executor, SupportsStepCalls):
                self._step_call_executors.add(id(executor))
        return executor

    async def _dispatch(self, state: _State, arguments: Any, ctx: ToolContext) -> Any:
        """Run the step's registered action (a tool) on the step's executor."""
        step = state.step
        tool = state.tool
        if tool is None:
            tool = state.tool = self.stack.tools.get(step.uses)
        if not isinstance(arguments, Mapping):
            raise TemplateError(f"step {step.id!r}, field with: must give a mapping of "
                                f"arguments, got {type(arguments).__name__}")
        raw = state.raw
        if raw:  # keys the action renders itself (SupportsRawArguments), passed as written
            arguments = {**arguments, **{k: step.with_[k] for k in raw if k in step.with_}}
        checks = state.argument_checks
        if checks is not None:  # validation checked what is written; the rest is checked here
            if checks:
                check_templated_arguments(checks, arguments, tool=step.uses)
            action = lambda: invoke_tool(ctx, tool, arguments, validated=True)  # noqa: E731
        else:
            action = lambda: invoke_tool(ctx, tool, arguments)  # noqa: E731
        executor = self._executor(step.executor)
        if id(executor) in self._step_call_executors:
            return await self._dispatch_call(executor, state, arguments, ctx, action,
                                             validated=checks is not None)
        return await executor.execute(action, step_id=step.id)

    async def _dispatch_call(self, executor: SupportsStepCalls, state: _State,
                             arguments: Mapping[str, Any], ctx: ToolContext,
                             action: Callable[[], Awaitable[Any]], *, validated: bool) -> Any:
        """Run one attempt on an executor that takes :class:`StepCall` data (another process
        or machine): hold a slice of the budgets for it, emit the events it returns in this
        run, settle the slice with their cost, and return its output or raise its error.

        The slice is the chain's remaining amount divided by the run's concurrency limit, so
        attempts running at once can never hold more than the budgets have left. A call whose
        executor failed (a lost worker; cancelled) is charged its whole slice: what it spent
        is unknown here.
        """
        step = state.step
        chain = ctx.budget
        reservation = None
        budget_usd = None
        if chain:
            remaining = chain.remaining_usd
            budget_usd = 0.0  # nothing left: the remote gateway refuses every priced call
            if remaining > 0:
                reservation = chain.reserve(remaining / max(1, self.slots.total))
                budget_usd = reservation.amount_usd
        call = StepCall(
            tool=step.uses, arguments=arguments, validated=validated, run_id=self.run_id,
            step_id=step.id, step_key=ctx.step_key or step.id, attempt=ctx.attempt,
            idempotency_key=ctx.idempotency_key or "", workflow_name=self.workflow.name,
            workflow_source=self.workflow.source, actor=ctx.actor, priority=step.priority,
            resources=step.resources, timeout_s=step.timeout,
            budget_usd=budget_usd, config=self.stack.config.data)
        try:
            reply = await executor.execute_step(call, action)
        except BaseException:
            if reservation is not None:
                BudgetChain.settle(reservation, reservation.amount_usd)
            raise
        events = self.stack.events
        for event in reply.events:
            events.publish(event.type, self.run_id, event.step_id, dict(event.data))
        if reservation is not None:
            BudgetChain.settle(reservation, reply.cost_usd)
        if reply.error is not None:
            raise reply.error
        return reply.output


def _time_left(step_timeout: float | None) -> float | None:
    """Return the seconds a template render may take: at most the step's ``timeout`` and what
    is left before the enclosing deadline (the run's ``timeout``); None when there is neither.
    """
    left = anyio.current_effective_deadline() - anyio.current_time()
    if step_timeout is not None:
        left = min(left, step_timeout)
    return None if math.isinf(left) else left


def _finish_attempt(record: StepAttempt, usage: _Usage) -> None:
    record.finished_at = time.time()
    record.input_tokens = usage.input_tokens
    record.output_tokens = usage.output_tokens
    record.cost_usd = usage.cost_usd


_SCALARS = (str, int, float, bool, type(None))


def _jsonable(value: Any) -> Any:
    """Return a step output as JSON-ready builtins (attrs models, tuples, sets, paths and
    bytes are converted as :func:`flowyard.serialization.json_default` does).

    Raises:
        WorkflowError: the output cannot be represented as JSON.
    """
    if type(value) in _SCALARS:
        return value
    import json

    try:
        return json.loads(json.dumps(value, default=json_default))
    except (TypeError, ValueError) as exc:
        raise WorkflowError(f"the action's output is not JSON-ready: {exc}") from None


def new_record(workflow: Workflow, inputs: dict[str, Any], run_id: str | None,
               metadata: dict[str, Any], definition: dict[str, Any] | None = None,
               content_hash: str | None = None) -> RunRecord:
    """Return a new :class:`RunRecord` for ``workflow`` (status ``running``: it is created
    when the run starts).
    """
    if definition is None:
        definition = workflow.to_dict()
    return RunRecord(id=run_id or new_id(), workflow_name=workflow.name, status="running",
                     inputs=inputs, workflow_hash=content_hash or definition_hash(definition),
                     workflow=definition, metadata=metadata, started_at=time.time())
