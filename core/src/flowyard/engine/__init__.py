"""The workflow engine: load, validate, run, stream and resume workflows.

:class:`flowyard.stack.Stack` delegates ``load_workflow``/``run``/``stream``/``resume`` here.
Options accepted by :func:`run_workflow` and :func:`stream_workflow`:

``run_id``           the id of the new run (default: a random 32-hex id)
``max_concurrency``  global limit of step keys running at once (default: the workflow's
                     ``max_concurrency``, else config ``engine.max_concurrency``, else 32)
``raise_on_failure`` raise :class:`~flowyard.errors.StepFailedError` when the run does not
                     complete (default False: the status is in the result)
``metadata``         extra JSON-ready data stored on the run record
``idempotency_key``  a submission idempotency key (a non-empty string): at most one run is
                     ever created per key (see :func:`run_workflow`)
``format``           the workflow loader (format name) that parses a path or text
                     (``flowyard run --format``; default: chosen by suffix and content)

Used by the engine itself for sub-workflows: ``parent_run_id`` and ``parent_step`` (stored in
the child run's metadata) and ``parent_budget`` (the parent step's budget chain, so the child's
calls count against the parent's budgets too).

Every run holds a lease while it executes (:mod:`flowyard.engine.lease`): its process is
recorded as the run's owner and renews a heartbeat every ``runs.heartbeat_interval`` seconds, so
a run whose process died is recognised as abandoned, and resuming a run that a live process
is executing is refused (:class:`RunInUseError`).
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowyard.errors import (
    StorageError,
    ValidationIssue,
    WorkflowChangedError,
    WorkflowError,
    WorkflowValidationError,
)
from flowyard.guards import GuardDenied, guard_set
from flowyard.interfaces import SupportsIdempotentRuns
from flowyard.models import Event
from flowyard.serialization import json_default
from flowyard.workflow import RunResult, StepResult, parse_workflow

from .lease import LeaseKeeper, LeaseSettings, RunInUseError, RunLeaseLostError, run_state
from .runner import Run, RunStorageError, check_inputs, new_record
from .validate import (
    load_workflow,
    load_workflow_with_definition,
    plan_of,
    step_dependencies,
    validate_workflow,
)

if TYPE_CHECKING:
    from flowyard.interfaces import Services
    from flowyard.models import Event
    from flowyard.workflow import RunResult, Workflow

__all__ = [
    "load_workflow",
    "validate_workflow",
    "step_dependencies",
    "run_workflow",
    "stream_workflow",
    "resume_run",
    "ResumeLimitError",
    "IdempotencyKeyReusedError",
    "RunStorageError",
    "RunInUseError",
    "RunLeaseLostError",
    "DEFAULT_MAX_RESUME_ATTEMPTS",
]

DEFAULT_MAX_RESUME_ATTEMPTS = 3


class ResumeLimitError(WorkflowError):
    """A run was resumed more than ``runs.max_resume_attempts`` times; it is marked failed."""


class IdempotencyKeyReusedError(WorkflowError):
    """An idempotency key was submitted again with another workflow or other inputs than the
    run stored under it (like Stripe's idempotency keys, a key names one request).
    """


#: Seconds between two looks at a run submitted with the same idempotency key by another
#: caller and still running.
IDEMPOTENCY_POLL_INTERVAL = 0.2


def _request_hash(content_hash: str, inputs: Mapping[str, Any]) -> str:
    """SHA-256 hex of the workflow's content hash and the complete inputs (canonical JSON):
    what an idempotency key stands for.
    """
    import hashlib
    import json

    text = json.dumps({"workflow": content_hash, "inputs": inputs}, sort_keys=True,
                      default=json_default, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


async def _submitted_result(stack: Services, record: Any, key: str, request_hash: str,
                            wf: Workflow) -> RunResult:
    """The result for a submission whose idempotency key names an existing run ``record``:
    its stored result once it has ended (nothing runs again), after waiting while another
    process executes it. A run left abandoned (its process died) is resumed here, so it
    still ends exactly once per completed step.

    Raises:
        IdempotencyKeyReusedError: the stored run was submitted with another workflow or
            other inputs.
    """
    import anyio

    stored_hash = (record.metadata.get("idempotency") or {}).get("request_hash")
    if stored_hash != request_hash:
        raise IdempotencyKeyReusedError(
            f"idempotency key {key!r} was used for run {record.id} (workflow "
            f"{record.workflow_name!r}) with another workflow definition or other inputs; "
            "a key names one request: use a new key for a different one")
    storage = stack.storage
    settings = LeaseSettings.from_config(stack.config)
    while record.status in ("pending", "running"):
        lease = (await storage.get_leases([record.id])).get(record.id)
        # a run just created has no lease for a moment: abandoned only once that is long
        young = lease is None and time.time() - record.created_at < settings.lease_timeout
        if not young and run_state(record, lease) == "abandoned":
            try:
                return await resume_run(stack, record.id)
            except RunInUseError:
                pass  # another waiter took it over: wait for that one
        await anyio.sleep(IDEMPOTENCY_POLL_INTERVAL)
        record = await storage.get_run(record.id)
    return await _stored_result(stack, record, wf)


async def _stored_result(stack: Services, record: Any, wf: Workflow) -> RunResult:
    """Rebuild the :class:`RunResult` of an ended run from storage: the record's status,
    outputs, error and totals, and per step the checkpointed output or the last attempt.
    """
    storage = stack.storage
    checkpoints = await storage.load_checkpoints(record.id)
    attempts: dict[str, list[Any]] = {}
    for attempt in await storage.list_attempts(record.id):
        attempts.setdefault(attempt.step_id, []).append(attempt)
    steps: dict[str, StepResult] = {}
    for step in wf.steps:
        tries = attempts.get(step.id, [])
        last = tries[-1] if tries else None
        res = StepResult(id=step.id, attempts=len(tries),
                         started_at=tries[0].started_at if tries else None,
                         finished_at=last.finished_at if last else None)
        if step.id in checkpoints:
            res.status, res.output = "completed", checkpoints[step.id]
        elif last is not None:
            res.status, res.error, res.error_type = last.status, last.error, last.error_type
        else:
            res.status, res.reason = "skipped", f"not run: the run ended {record.status}"
        steps[step.id] = res
    return RunResult(run_id=record.id, workflow_name=record.workflow_name,
                     status=record.status, outputs=dict(record.outputs), steps=steps,
                     error=record.error, input_tokens=record.input_tokens,
                     output_tokens=record.output_tokens, cost_usd=record.cost_usd,
                     started_at=record.started_at or record.created_at,
                     finished_at=record.finished_at or record.created_at,
                     resume_count=record.resume_count)


def _metadata(workflow: Workflow, options: dict[str, Any]) -> dict[str, Any]:
    meta = dict(options.pop("metadata", None) or {})
    if workflow.source:
        meta["source"] = str(Path(workflow.source).resolve())
    for key in ("parent_run_id", "parent_step"):
        if options.get(key):
            meta[key] = options.pop(key)
        else:
            options.pop(key, None)
    return meta


async def run_workflow(stack: Services, workflow: Any, inputs: Mapping[str, Any] | None = None,
                       **options: Any) -> RunResult:
    """Run a workflow to its end and return its :class:`~flowyard.workflow.RunResult`.

    Args:
        stack: the stack (opened here when it is not open yet).
        workflow: a path, YAML text, a dict or a :class:`~flowyard.workflow.Workflow`.
        inputs: the workflow inputs (defaults are applied).
        **options: see the module docstring.

    With ``idempotency_key``, the run is created only if no run was submitted with that key
    (atomically, across processes): a later submission with the same key, workflow and inputs
    returns the existing run's result without running anything -- after waiting for it while
    another caller (another process) still executes it, polling storage every
    :data:`IDEMPOTENCY_POLL_INTERVAL` seconds, and resuming it when its process died
    (abandoned). Other options (``run_id``...) of such a later submission are ignored.

    Raises:
        WorkflowValidationError: invalid workflow or inputs, including values that cannot be
            stored (not JSON-ready, lone surrogates) and inputs an ``inputs`` guard denied
            (:mod:`flowyard.guards`); nothing is stored.
        IdempotencyKeyReusedError: ``idempotency_key`` names a run of another workflow or
            other inputs.
        RunStorageError: one of the run's storage writes failed for good mid-run (a plain
            :class:`~flowyard.errors.StorageError` naming the run and step and the state it
            left: ``failed``, or ``abandoned`` when even that could not be written).
        StorageError: the run could not be created, or its lease claimed (naming the run).
        StepFailedError: the run did not complete and ``raise_on_failure`` is set.
    """
    return await _run(stack, workflow, inputs, options, None)


async def _run(stack: Services, workflow: Any, inputs: Mapping[str, Any] | None,
               options: dict[str, Any], stream: Any) -> RunResult:
    options = dict(options)
    wf, definition, content_hash = load_workflow_with_definition(
        stack, workflow, format=options.pop("format", None))
    values = check_inputs(wf, inputs or {})
    guards = guard_set(stack)
    if guards is not None and guards.has("inputs"):
        try:
            values = await guards.apply("inputs", wf.name, values, None)
        except GuardDenied as exc:
            raise WorkflowValidationError([ValidationIssue(str(exc), path="inputs")]) from exc
    if not stack.storage_is_open:
        await stack.open()
    raise_on_failure = bool(options.pop("raise_on_failure", False))
    run_id = options.pop("run_id", None)
    max_concurrency = options.pop("max_concurrency", None)
    parent_budget = options.pop("parent_budget", None)
    key = options.pop("idempotency_key", None)
    if key is not None and (not isinstance(key, str) or not key.strip()):
        raise TypeError(f"idempotency_key must be a non-empty string, got {key!r}")
    metadata = _metadata(wf, options)
    if options:
        raise TypeError(f"unknown run options: {', '.join(sorted(options))}")
    settings = LeaseSettings.from_config(stack.config)
    record = new_record(wf, values, run_id, metadata, definition, content_hash)
    if key is not None:
        storage = stack.storage
        if not isinstance(storage, SupportsIdempotentRuns):
            raise StorageError(f"the storage backend {type(storage).__name__} does not support "
                               "idempotency keys (it has no create_run_once)")
        request_hash = _request_hash(record.workflow_hash, values)
        record.metadata["idempotency"] = {"key": key, "request_hash": request_hash}
        stored, created = await storage.create_run_once(record, key)
        if not created:
            result = await _submitted_result(stack, stored, key, request_hash, wf)
            if raise_on_failure:
                result.raise_for_status()
            return result
    else:
        await stack.storage.create_run(record)
    keeper = LeaseKeeper(stack.storage, record.id, settings)
    try:
        await keeper.claim()
    except StorageError as exc:
        raise StorageError(
            f"run {record.id} was created but its lease could not be claimed: {exc}; it is "
            f"stored as 'running' without a lease, so it shows as abandoned and `flowyard "
            f"resume {record.id}` starts it", retriable=exc.retriable) from exc
    run = Run(stack, wf, values, record, max_concurrency=max_concurrency, stream=stream,
              parent_budget=parent_budget, lease=keeper,
              plan=plan_of(stack, wf, record.workflow_hash))
    try:
        result = await keeper.hold(run.execute)
    finally:
        stack.events.forget(record.id)
    if raise_on_failure:
        result.raise_for_status()
    return result


async def stream_workflow(stack: Services, workflow: Any,
                          inputs: Mapping[str, Any] | None = None, **options: Any
                          ) -> AsyncIterator[Event]:
    """Run a workflow and yield its events as they happen, ending with ``run.finished``.

    Validation errors are raised before the first event. Close the iterator (``async with
    contextlib.aclosing(...)``) when you stop early: the run is then cancelled.
    """
    import anyio

    options = dict(options)
    wf = load_workflow(stack, workflow, format=options.pop("format", None))
    check_inputs(wf, inputs or {})
    send, receive = anyio.create_memory_object_stream[Event](math.inf)
    failure: list[BaseException] = []

    async def runner() -> None:
        try:
            with send:
                await _run(stack, wf, inputs, dict(options), send)
        except Exception as exc:  # noqa: BLE001 - re-raised to the consumer below
            failure.append(exc)

    closed = False
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner)
        with receive:
            try:
                async for event in receive:
                    yield event
            except GeneratorExit:  # the consumer closed the iterator: cancel the run
                closed = True
                tg.cancel_scope.cancel()
    if failure and not closed:
        raise failure[0]


async def resume_run(stack: Services, run_id: str, *, force: bool = False, **options: Any
                     ) -> RunResult:
    """Continue a stored run; completed step keys are never run again.

    The run's lease is claimed first, atomically: a run that a live process is executing is
    refused before anything is read or written; a run whose owner died (abandoned), or that
    ended, is taken over.

    Args:
        stack: the stack (opened here when needed).
        run_id: the run to continue.
        force: run even when the workflow changed since the run started (a run held by a
            live process is refused even then).
        **options: ``workflow`` (a path, dict or Workflow to use instead of the stored
            definition / its source file), ``max_concurrency``, ``raise_on_failure``.

    Raises:
        RunNotFoundError: no such run.
        RunInUseError: a live process holds the run's lease (it is executing the run); the
            message names its host, pid and the seconds since its last heartbeat.
        RunLeaseLostError: this process lost the lease while resuming (it was frozen for
            longer than ``runs.lease_timeout`` and another process took the run over).
        WorkflowChangedError: the workflow's content hash differs from the run's and
            ``force`` is False.
        ResumeLimitError: the run was already resumed ``runs.max_resume_attempts`` times
            (default 3); it is marked failed.
        ConfigError: ``runs.heartbeat_interval`` or ``runs.lease_timeout`` is invalid.
    """
    if not stack.storage_is_open:
        await stack.open()
    settings = LeaseSettings.from_config(stack.config)
    raise_on_failure = bool(options.pop("raise_on_failure", False))
    keeper = LeaseKeeper(stack.storage, run_id, settings)
    await keeper.claim()
    try:
        result = await keeper.hold(lambda: _resume_claimed(stack, keeper, run_id, force,
                                                           options))
    finally:
        stack.events.forget(run_id)
    if raise_on_failure:
        result.raise_for_status()
    return result


async def _resume_claimed(stack: Services, keeper: LeaseKeeper, run_id: str, force: bool,
                          options: dict[str, Any]) -> RunResult:
    """The body of :func:`resume_run`, run while this process holds the run's lease."""
    storage = stack.storage
    record = await storage.get_run(run_id)
    limit = int(stack.config.get("runs.max_resume_attempts", DEFAULT_MAX_RESUME_ATTEMPTS))
    # continuing a run that waited for a human answer is not a recovery from a crash: it
    # counts neither against runs.max_resume_attempts nor in resume_count
    was_waiting = record.status == "waiting"
    if record.resume_count >= limit and not was_waiting:
        record.status = "failed"
        record.error = (f"run {run_id} was already resumed {record.resume_count} times, the "
                        f"limit set by runs.max_resume_attempts ({limit}); it is marked failed")
        await storage.update_run(record)
        raise ResumeLimitError(record.error)
    source = options.pop("workflow", None)
    if source is None:
        stored_source = record.metadata.get("source")
        if stored_source and Path(stored_source).is_file():
            source = Path(stored_source)
    wf = (load_workflow(stack, source) if source is not None
          else validate_workflow(stack, parse_workflow(record.workflow)))
    current_hash = wf.content_hash()
    if current_hash != record.workflow_hash:
        if not force:
            raise WorkflowChangedError(
                f"the workflow {wf.name!r} changed since run {run_id} started (hash "
                f"{record.workflow_hash[:12]} -> {current_hash[:12]}); resume with force=True "
                "(--force) to run the new definition")
        record.workflow_hash = current_hash
        record.workflow = wf.to_dict()
    max_concurrency = options.pop("max_concurrency", None)
    if options:
        raise TypeError(f"unknown resume options: {', '.join(sorted(options))}")
    checkpoints = await storage.load_checkpoints(run_id)
    attempts: dict[str, int] = {}
    for attempt in await storage.list_attempts(run_id):
        attempts[attempt.step_key] = max(attempts.get(attempt.step_key, 0), attempt.attempt)
        if attempt.status == "running":
            attempt.status = "cancelled"
            attempt.error = "interrupted: the run stopped before this attempt finished"
            await storage.save_attempt(attempt)
    last_seq = 0
    while True:
        page = await storage.list_events(run_id, after_seq=last_seq, limit=1000)
        if not page:
            break
        last_seq = page[-1].seq
        if len(page) < 1000:
            break
    stack.events.seed(run_id, last_seq)
    costs = await storage.list_costs(run_id)
    if not was_waiting:
        record.resume_count += 1
    record.error = None
    record.status = "running"
    record.finished_at = None
    await storage.update_run(record)
    run = Run(stack, wf, dict(record.inputs), record, checkpoints=checkpoints,
              attempts=attempts, max_concurrency=max_concurrency, previous_costs=costs,
              lease=keeper, plan=plan_of(stack, wf, current_hash))
    return await run.execute()
