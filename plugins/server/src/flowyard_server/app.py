"""The FastAPI application of ``flowyard serve``: the routes of
:mod:`flowyard_client.models` (whose pydantic models are the request and response types, so
the OpenAPI schema, request validation and the client SDK share one definition).

Every route but health and the documentation needs an API key (see
:mod:`flowyard_server.security`); every read is scoped to the key's tenant, and another
tenant's id answers ``404`` exactly like a missing one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import anyio
import attrs
from fastapi import APIRouter, FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict
from flowyard import (
    FlowyardError,
    HumanAnswerError,
    RunNotFoundError,
    Stack,
    StorageError,
    SupportsKeyValueListing,
    SupportsTaskQueue,
    TaskQuery,
    TaskRecord,
    WorkflowValidationError,
    check_inputs,
    new_id,
    render_metrics,
    run_state,
)
from flowyard import __version__ as core_version
from flowyard_client import models as wire
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException

from flowyard_server.keys import KeyStore
from flowyard_server.live import DeltaHub, RelayReader, follow_run
from flowyard_server.metrics import CONTENT_TYPE, Metrics, queue_collector
from flowyard_server.security import SecurityMiddleware
from flowyard_server.settings import ServerSettings
from flowyard_server.ui.session import Sessions
from flowyard_server.worker import (
    AGENTS_NAMESPACE,
    WORKFLOWS_NAMESPACE,
    Worker,
    agent_workflow,
    queue_of,
    registered_source,
)

__all__ = ["create_app", "RUNS_NAMESPACE"]

log = logging.getLogger("flowyard_server.app")

#: Key-value namespace (``+ tenant``) mapping a run id to its task id.
RUNS_NAMESPACE = "server.runs."
#: A W3C trace context ``traceparent`` header (version 00): stored with a task, continued by
#: its run's trace.
TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_ID = r"^[0-9a-f]{32}$"
IdPath = Annotated[str, Path(pattern=_ID, description="32 hex characters")]
#: A step id, or the key of a fan-out item (``id[3]``).
StepPath = Annotated[str, Path(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]{0,127}(\[\d{1,9}\])?$",
                               description="a step id, or a fan-out item's key id[i]")]
#: Seconds the answer endpoint waits for a worker to record the end of a run's task that
#: just stopped waiting, before it queues the task again.
ANSWER_TASK_WAIT_S = 10.0


class AnswerBody(BaseModel):
    """The body of ``POST /v1/runs/{run_id}/steps/{step_id}/answer``: ``{"value": ...}``,
    the answer (``{"approved": true, "comment": "..."}`` for ``human.approve``; a value
    matching the step's schema for ``human.input``).
    """

    model_config = ConfigDict(extra="forbid")

    value: Any
_CODES = {400: "bad_request", 401: "authentication_error", 403: "forbidden",
          404: "not_found", 405: "method_not_allowed", 409: "conflict",
          413: "payload_too_large", 422: "validation_error", 429: "rate_limited",
          503: "unavailable"}
_ENDED_TASK = frozenset({"completed", "failed", "cancelled"})


class ApiError(HTTPException):
    """An error answered as an :class:`~flowyard_client.models.ErrorBody`.

    Args:
        status: the HTTP status.
        message: for humans (never a secret or a stack trace).
        code: the error code (default: from the status).
        details: structured details.
    """

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 details: Any = None) -> None:
        super().__init__(status_code=status, detail=message)
        self.code = code or _CODES.get(status, "error")
        self.details = details


def _not_found(what: str, ident: str) -> ApiError:
    return ApiError(404, f"{what} {ident} does not exist")


def _error_response(status: int, code: str, message: str, details: Any = None,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    body = wire.ErrorBody(code=code, message=message, details=details)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


_TASK_FIELDS = tuple(field.name for field in attrs.fields(TaskRecord))


def _task(record: TaskRecord) -> wire.Task:
    # (a comprehension over the field names: attrs.asdict costs several times more)
    return wire.Task.model_validate({name: getattr(record, name) for name in _TASK_FIELDS})


def _task_response(record: TaskRecord, status: int = 200) -> Response:
    """A task as a JSON response, serialised once by pydantic-core (no second validation of
    the route's ``response_model``, no ``json.dumps`` of a ``model_dump``).
    """
    return Response(_task(record).model_dump_json(), status_code=status,
                    media_type="application/json")


def _json_ready(value: Any, what: str) -> bytes:
    """Return ``value`` as canonical UTF-8 JSON, or raise a 422 naming ``what`` (a lone
    surrogate, NaN or an infinity cannot be stored).
    """
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except ValueError:  # UnicodeEncodeError included
        raise ApiError(422, f"{what} must be JSON-ready: no lone surrogates, NaN or "
                       "infinities") from None


def _request_hash(kind: str, target: str, inputs: dict[str, Any]) -> str:
    return hashlib.sha256(_json_ready([kind, target, inputs], "inputs")).hexdigest()


class Service:
    """What the routes share: the stack, its queue, key store, worker, hub and metrics.

    Args:
        stack: the stack (opened by the app's lifespan).
        settings: the server settings.
        worker: the in-process worker, or None (``--no-worker``).
    """

    def __init__(self, stack: Stack, settings: ServerSettings, worker: Worker | None) -> None:
        self.stack = stack
        self.settings = settings
        self.worker = worker
        self.keys = KeyStore(stack.storage, cache_seconds=settings.key_cache_seconds)
        self.sessions = Sessions(self.keys, stack.storage)
        self.hub = DeltaHub() if settings.stream_deltas else None
        self.relay = (RelayReader(stack, local_writer=worker.name if worker else None,
                                  max_age=settings.sse_poll)
                      if settings.stream_deltas else None)
        self.metrics = Metrics()
        #: (tenant, name) -> (parsed registered workflow, monotonic expiry, content hash)
        self._workflows: dict[tuple[str, str], tuple[Any, float, str]] = {}
        self._queue: SupportsTaskQueue | None = None
        self.sse_connections = 0
        self.metrics.gauge("flowyard_server_sse_connections", "open run event streams",
                           lambda: self.sse_connections)
        self.metrics.gauge("flowyard_server_uptime_seconds", "seconds since the server started",
                           lambda: time.time() - self.metrics.started_at)
        self.metrics.gauge("flowyard_worker_tasks_running", "tasks the in-process worker runs",
                           lambda: len(worker.running) if worker is not None else 0)
        self.metrics.gauge("flowyard_worker_tasks_completed", "tasks the in-process worker "
                           "completed", lambda: worker.finished["completed"] if worker else 0)
        self.metrics.gauge("flowyard_worker_tasks_failed", "tasks the in-process worker failed",
                           lambda: worker.finished["failed"] if worker else 0)

    async def render_metrics(self) -> bytes:
        """Return ``/metrics``: the core's metrics (every process's in multiprocess mode,
        :func:`flowyard.metrics.render_metrics`), this server's request counters and gauges,
        and the task queue by status with the age of the oldest queued task (read from the
        storage now: the tasks of every tenant that has an API key, at most 1000 per tenant
        and status).
        """
        counts = {"queued": 0, "running": 0}
        oldest: float | None = None
        tenants = sorted({key.tenant for key in await self.keys.list()})
        for tenant in tenants:
            for status in counts:
                tasks = await self.queue.list_tasks(TaskQuery(tenant=tenant, status=status,
                                                              limit=1000))
                counts[status] += len(tasks)
                if status == "queued" and tasks:
                    first = min(task.created_at for task in tasks)
                    oldest = first if oldest is None else min(oldest, first)
        return render_metrics(extra=[self.metrics,
                                          queue_collector(counts, oldest, time.time())])

    @property
    def queue(self) -> SupportsTaskQueue:
        """The storage as a task queue (checked once: a protocol ``isinstance`` costs tens of
        microseconds per request).
        """
        if self._queue is None or self._queue is not self.stack.storage:
            self._queue = queue_of(self.stack)
        return self._queue

    async def task_of(self, tenant: str, task_id: str) -> TaskRecord:
        """Return the tenant's task, or raise a 404 (also for another tenant's task)."""
        try:
            task = await self.queue.get_task(task_id)
        except LookupError:
            raise _not_found("task", task_id) from None
        if task.tenant != tenant:
            raise _not_found("task", task_id)
        return task

    async def task_of_run(self, tenant: str, run_id: str) -> TaskRecord:
        """Return the task of the tenant's run, or raise a 404."""
        task_id = await self.stack.storage.kv_get(RUNS_NAMESPACE + tenant, run_id)
        if not isinstance(task_id, str):
            raise _not_found("run", run_id)
        try:
            task = await self.queue.get_task(task_id)
        except LookupError:
            raise _not_found("run", run_id) from None
        if task.tenant != tenant or task.run_id != run_id:
            raise _not_found("run", run_id)
        return task

    async def run_of(self, task: TaskRecord) -> wire.Run:
        """The run of a task (``pending`` from the task when no worker started it yet)."""
        storage = self.stack.storage
        try:
            record = await storage.get_run(task.run_id)
        except LookupError:  # not started yet; or its task ended before it started
            status = task.status if task.status in _ENDED_TASK else "pending"
            return wire.Run(id=task.run_id, workflow_name=task.target, status=status,
                            inputs=task.inputs, error=task.error, created_at=task.created_at,
                            finished_at=task.finished_at, task_id=task.id)
        leases = await storage.get_leases([record.id])
        return wire.Run(
            id=record.id, workflow_name=record.workflow_name,
            status=run_state(record, leases.get(record.id)), inputs=record.inputs,
            outputs=record.outputs, error=record.error, created_at=record.created_at,
            started_at=record.started_at, finished_at=record.finished_at,
            input_tokens=record.input_tokens, output_tokens=record.output_tokens,
            cost_usd=record.cost_usd, resume_count=record.resume_count, task_id=task.id)

    async def answer(self, tenant: str, run_id: str, step: str, value: Any, *, actor: str
                     ) -> TaskRecord:
        """Answer a waiting human step of the tenant's run and queue the run's task again,
        so a worker resumes the run (the REST endpoint and the dashboard's form).

        Args:
            tenant: the caller's tenant.
            run_id: the run.
            step: the step id or a fan-out item's key.
            value: the answer (JSON-ready).
            actor: who answers (``api_key:<id>``, ``loopback``).

        Returns:
            the task, queued again.

        Raises:
            ApiError: 404 (not the tenant's run), 409 (the run or step is not waiting, or
                was answered; the run is held by a process), 422 (an invalid value); nothing
                was stored then.
        """
        task = await self.task_of_run(tenant, run_id)
        try:
            await self.stack.answer(run_id, step, value, actor=actor, resume=False)
        except RunNotFoundError:
            raise ApiError(409, f"run {run_id} has not started yet: it is not waiting for "
                           "an answer; nothing was stored") from None
        except HumanAnswerError as exc:  # reason "value": the answer; "state": the run/step
            raise ApiError(422 if exc.reason == "value" else 409, str(exc)) from None
        except FlowyardError as exc:  # e.g. the run is held by another process
            raise ApiError(409, str(exc)) from None
        # the worker that ran it records the task's end just after the run stopped waiting
        with anyio.move_on_after(ANSWER_TASK_WAIT_S):
            while task.status not in ("failed", "cancelled", "completed"):
                await anyio.sleep(0.05)
                task = await self.queue.get_task(task.id)
        record = await self.queue.retry_task(task.id)
        if self.worker is not None:
            self.worker.wake()
        return record

    async def submit(self, tenant: str, spec: wire.TaskSubmit, *, actor: str | None = None,
                     traceparent: str | None = None) -> tuple[TaskRecord, bool]:
        """Queue a task (or find the one its idempotency key names).

        The task's ``metadata["actor"]`` is set to ``{"actor": actor, "tenant": tenant}``
        (whatever the client sent under that name): the worker passes it to the run, and the
        audit log records it as who did what the run does. ``actor`` is
        ``api_key:<key id>`` (None: ``tenant:<tenant>``). ``traceparent``, the request's W3C
        trace context header, is stored as ``metadata["traceparent"]`` when it is well formed
        (anything else is dropped, and so is one the client sent in its metadata): the worker
        passes it to the run, whose trace (``flowyard-otel``) continues the caller's.

        Raises:
            ApiError: 404 unknown workflow/agent; 409 the key names another request.
        """
        storage = self.stack.storage
        issues = await self.input_issues(tenant, spec)
        if issues:
            raise ApiError(422, "the task's inputs are invalid",
                           details=[i.model_dump() for i in issues])
        request_hash = _request_hash(spec.kind, spec.target, spec.inputs)
        if spec.metadata or not (spec.name.isascii()
                                 and (spec.idempotency_key or "").isascii()):
            # (ASCII text and no metadata are JSON-ready: the common case skips an encoding)
            _json_ready([spec.name, spec.idempotency_key, spec.metadata],
                        "name, key and metadata")
        metadata = {**spec.metadata,
                    "actor": {"actor": actor or f"tenant:{tenant}", "tenant": tenant}}
        metadata.pop("traceparent", None)
        if traceparent is not None and TRACEPARENT.fullmatch(traceparent.strip()):
            metadata["traceparent"] = traceparent.strip()
        record = TaskRecord(id=new_id(), tenant=tenant, kind=spec.kind, target=spec.target,
                            inputs=spec.inputs, name=spec.name, priority=spec.priority,
                            idempotency_key=spec.idempotency_key, request_hash=request_hash,
                            metadata=metadata)
        # the run -> task index first: a crash in between leaves an index entry to nothing
        await storage.kv_set(RUNS_NAMESPACE + tenant, record.run_id, record.id)
        stored, created = await self.queue.submit_task(record)
        if not created:
            await storage.kv_delete(RUNS_NAMESPACE + tenant, record.run_id)
            if stored.request_hash != request_hash:
                raise ApiError(409, "this idempotency key was used for another request "
                               "(other kind, target or inputs)")
            return stored, False
        self.metrics.add("flowyard_server_tasks_submitted_total", "tasks queued",
                         (("kind", spec.kind),))
        if self.worker is not None:
            self.worker.wake()
        return stored, True

    async def registered_workflow(self, tenant: str, name: str) -> Any:
        """Return the tenant's registered workflow ``name`` as a validated
        :class:`~flowyard.workflow.Workflow`, for checking a task's inputs at submission.

        The parsed workflow is kept in memory for ``key_cache_seconds`` (at most 256): a
        registration through this process replaces it at once, one through another server
        process counts for input checks within that time (the worker always runs the
        definition stored when it starts the task).

        Raises:
            ApiError: 404 when no workflow of this name is registered for the tenant.
        """
        now = time.monotonic()
        cached = self._workflows.get((tenant, name))
        if cached is not None and cached[1] > now:
            return cached[0]
        entry = await self.stack.storage.kv_get(WORKFLOWS_NAMESPACE + tenant, name)
        if entry is None:
            raise ApiError(404, "no workflow of this name is registered")
        content_hash = str(entry.get("content_hash", ""))
        if cached is not None and cached[2] == content_hash:
            workflow = cached[0]
        else:
            from flowyard import parse_workflow

            source = entry.get("source")
            workflow = self.stack.load_workflow(parse_workflow(
                dict(entry["definition"]), source=source if isinstance(source, str) else None))
        self.remember_workflow(tenant, name, workflow, content_hash)
        return workflow

    def remember_workflow(self, tenant: str, name: str, workflow: Any, content_hash: str
                          ) -> None:
        """Cache a registered workflow for input checks (see :meth:`registered_workflow`)."""
        key = (tenant, name)
        self._workflows.pop(key, None)
        if len(self._workflows) >= 256:
            self._workflows.pop(next(iter(self._workflows)))
        self._workflows[key] = (workflow, time.monotonic() + self.settings.key_cache_seconds,
                                content_hash)

    async def input_issues(self, tenant: str, spec: wire.TaskSubmit
                           ) -> list[wire.ValidationIssue]:
        """Check a task's inputs against the declared inputs of the registered workflow (or of
        the stored agent's one-step workflow: ``input``, a string) with
        :func:`flowyard.check_inputs` (unknown, missing, mistyped and unstorable inputs).

        Returns:
            every problem (``path`` ``inputs.NAME``); empty when the inputs are valid.

        Raises:
            ApiError: 404 when the workflow is not registered for the tenant, or the agent
                does not exist.
        """
        if spec.kind == "agent":
            from flowyard import parse_workflow

            agent = await self.stack.storage.kv_get(AGENTS_NAMESPACE + tenant, spec.target)
            if agent is None:
                raise ApiError(404, "no agent has this id")
            workflow = parse_workflow(agent_workflow(agent))
        else:
            workflow = await self.registered_workflow(tenant, spec.target)
        try:
            check_inputs(workflow, spec.inputs)
        except WorkflowValidationError as exc:
            return _issues(exc)
        return []

    def load_workflow(self, source: wire.WorkflowSource) -> Any:
        """Parse and validate a workflow given as text or as a definition. Its ``source`` is
        :func:`~flowyard_server.worker.registered_source` of ``[server] workflows_dir``, so
        relative ``uses: workflow`` paths resolve against that directory.

        Raises:
            ApiError: 422 when both or neither of ``source``/``definition`` are given.
            WorkflowValidationError: the workflow is invalid.
        """
        from flowyard import parse_workflow

        if (source.source is None) == (source.definition is None):
            raise ApiError(422, "give exactly one of 'source' (YAML/JSON text) or 'definition'")
        _json_ready(source.model_dump(), "the workflow")
        if source.source is not None:
            # parsed as text only: never read as a path on the server's disk
            workflow = self.stack.loaders.get("native").load(source.source)
        else:
            # _json_ready above refused lone surrogates, NaN and infinities
            workflow = parse_workflow(source.definition or {})
        workflow.source = registered_source(self.settings.workflows_dir or os.getcwd())
        return self.stack.load_workflow(workflow)


def _issues(exc: WorkflowValidationError) -> list[wire.ValidationIssue]:
    return [wire.ValidationIssue(message=i.message, path=i.path or None, line=i.line,
                                 column=i.column) for i in exc.issues]


def _workflow_info(name: str, entry: dict[str, Any]) -> wire.WorkflowInfo:
    definition = entry["definition"]
    return wire.WorkflowInfo(name=name, description=definition.get("description", ""),
                             steps=len(definition.get("steps", [])),
                             inputs=definition.get("inputs", {}),
                             content_hash=entry["content_hash"],
                             registered_at=entry.get("registered_at"))


def _routes(svc: Service) -> APIRouter:
    api = APIRouter(prefix=wire.API_PREFIX)
    stack = svc.stack

    def tenant_of(request: Request) -> str:
        # set by SecurityMiddleware (read from the scope: request.state builds an object)
        return str(request.scope["state"]["tenant"])

    def actor_of(request: Request) -> str:
        # the API key id SecurityMiddleware verified ("" or absent: no keys are stored and
        # the client is on loopback)
        key_id = request.scope["state"].get("api_key_id")
        return f"api_key:{key_id}" if key_id else "loopback"

    # ------------------------------------------------------------------ tasks
    # (first: routes are matched in order, and submit/get of tasks are the busiest)

    @api.post("/tasks", response_model=wire.Task, status_code=201, tags=["tasks"],
              responses={200: {"model": wire.Task, "description": "the idempotency key's "
                               "task"}, 409: {"model": wire.ErrorBody}})
    async def submit_task(request: Request, spec: wire.TaskSubmit) -> Any:
        """Queue a workflow or agent task (201), or return the task its idempotency key
        names (200).
        """
        record, created = await svc.submit(tenant_of(request), spec, actor=actor_of(request),
                                           traceparent=request.headers.get("traceparent"))
        return _task_response(record, 201 if created else 200)

    # (second: no other route answers GET /v1/tasks/{x}, so its place changes no answer)
    @api.get("/tasks/{task_id}", response_model=wire.Task, tags=["tasks"])
    async def get_task(request: Request, task_id: IdPath) -> Any:
        """One task."""
        return _task_response(await svc.task_of(tenant_of(request), task_id))

    @api.post("/tasks/batch", response_model=list[wire.Task], tags=["tasks"])
    async def submit_batch(request: Request, batch: wire.TaskBatch) -> list[wire.Task]:
        """Queue several tasks (each as ``POST /tasks`` would). The inputs of every task are
        checked first: any problem answers 422 listing them all (``path``
        ``tasks[i].inputs.NAME``) and queues nothing; otherwise the first error stops.
        """
        tenant = tenant_of(request)
        problems: list[dict[str, Any]] = []
        for index, spec in enumerate(batch.tasks):
            for issue in await svc.input_issues(tenant, spec):
                item = issue.model_dump()
                item["path"] = f"tasks[{index}]." + (issue.path or "inputs")
                problems.append(item)
        if problems:
            raise ApiError(422, "the inputs of some tasks are invalid; none was queued",
                           details=problems)
        actor = actor_of(request)
        traceparent = request.headers.get("traceparent")
        return [_task((await svc.submit(tenant, spec, actor=actor, traceparent=traceparent))[0])
                for spec in batch.tasks]

    @api.get("/tasks", response_model=wire.TaskPage, tags=["tasks"])
    async def list_tasks(request: Request,
                         status: wire.TaskStatus | None = None,
                         kind: Literal["workflow", "agent"] | None = None,
                         target: Annotated[str | None,
                                           Query(max_length=wire.MAX_NAME_CHARS)] = None,
                         limit: Annotated[int, Query(ge=1, le=200)] = 50,
                         offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0
                         ) -> wire.TaskPage:
        """The tenant's tasks, newest first."""
        records = await svc.queue.list_tasks(TaskQuery(
            tenant=tenant_of(request), status=status, kind=kind, target=target, limit=limit,
            offset=offset))
        return wire.TaskPage(items=[_task(r) for r in records], limit=limit, offset=offset)

    @api.post("/tasks/{task_id}/cancel", response_model=wire.Task, tags=["tasks"])
    async def cancel_task(request: Request, task_id: IdPath) -> wire.Task:
        """Cancel a queued task, or ask a running one's worker to stop it."""
        await svc.task_of(tenant_of(request), task_id)
        return _task(await svc.queue.cancel_task(task_id, now=time.time()))

    @api.post("/tasks/{task_id}/retry", response_model=wire.Task, tags=["tasks"])
    async def retry_task(request: Request, task_id: IdPath) -> wire.Task:
        """Queue a failed or cancelled task again (its run resumes)."""
        await svc.task_of(tenant_of(request), task_id)
        record = await svc.queue.retry_task(task_id)
        if svc.worker is not None:
            svc.worker.wake()
        return _task(record)

    # ------------------------------------------------------------------ health

    @api.get("/health/live", response_model=wire.Health, tags=["health"])
    async def live() -> wire.Health:
        """The process answers."""
        return wire.Health(status="UP", version=core_version)

    @api.get("/health/ready", response_model=wire.Health, tags=["health"],
             responses={503: {"model": wire.Health}})
    async def ready() -> Any:
        """Storage answers, it has a task queue, the in-process worker runs, and the
        registered health checks (:func:`flowyard.health.run_health_checks`) pass.
        """
        checks: dict[str, wire.CheckResult] = {}
        started = time.perf_counter()
        try:
            with anyio.fail_after(2.0):
                await stack.storage.kv_get("server.health", "ping")
            checks["storage"] = wire.CheckResult(
                status="UP", duration_ms=(time.perf_counter() - started) * 1000)
        except (TimeoutError, OSError, FlowyardError) as exc:
            checks["storage"] = wire.CheckResult(status="DOWN", detail=type(exc).__name__,
                                                 duration_ms=(time.perf_counter() - started)
                                                 * 1000)
        queue_ok = isinstance(stack.storage, SupportsTaskQueue)
        checks["queue"] = wire.CheckResult(status="UP" if queue_ok else "DOWN")
        if svc.worker is None:
            checks["worker"] = wire.CheckResult(status="UP", detail="no in-process worker")
        else:
            checks["worker"] = wire.CheckResult(
                status="UP" if svc.worker.started else "DEGRADED",
                detail=f"{len(svc.worker.running)} running")
        # the checks plugins register (register_health_checks; built in: model, disk)
        from flowyard import run_health_checks  # lazy: kept beside the route it serves

        names = [name for name in stack.health_checks.names() if name not in checks]
        for name, result in (await run_health_checks(stack, names=names)).items():
            checks.setdefault(name, wire.CheckResult(status=result.status, detail=result.detail,
                                                     duration_ms=result.duration_ms))
        statuses = {c.status for c in checks.values()}
        status = "DOWN" if "DOWN" in statuses else ("DEGRADED" if "DEGRADED" in statuses
                                                    else "UP")
        health = wire.Health(status=status, version=core_version, checks=checks)
        return JSONResponse(health.model_dump(), status_code=503 if status == "DOWN" else 200)

    # ------------------------------------------------------------------ agents

    async def agent_of(tenant: str, agent_id: str) -> dict[str, Any]:
        agent = await stack.storage.kv_get(AGENTS_NAMESPACE + tenant, agent_id)
        if agent is None:
            raise _not_found("agent", agent_id)
        return dict(agent)

    def check_tools(tools: list[str]) -> None:
        unknown = [t for t in tools if t not in stack.tools]
        if unknown:
            raise ApiError(422, f"unknown tools: {', '.join(unknown)}",
                           details={"unknown_tools": unknown})

    @api.post("/agents", response_model=wire.Agent, status_code=201, tags=["agents"])
    async def create_agent(request: Request, spec: wire.AgentCreate) -> wire.Agent:
        """Store an agent definition."""
        check_tools(spec.tools)
        _json_ready(spec.model_dump(), "the agent")
        now = time.time()
        agent = wire.Agent(id=new_id(), created_at=now, updated_at=now, **spec.model_dump())
        await stack.storage.kv_set(AGENTS_NAMESPACE + tenant_of(request), agent.id,
                                   agent.model_dump())
        return agent

    @api.get("/agents", response_model=wire.AgentPage, tags=["agents"])
    async def list_agents(request: Request,
                          limit: Annotated[int, Query(ge=1, le=100)] = 20,
                          after: Annotated[str, Query(pattern=r"^([0-9a-f]{32})?$")] = ""
                          ) -> wire.AgentPage:
        """A page of the tenant's agents in id order."""
        page = await stack.storage.kv_list(  # type: ignore[attr-defined]
            AGENTS_NAMESPACE + tenant_of(request), after=after, limit=limit)
        items = [wire.Agent.model_validate(value) for _, value in page]
        return wire.AgentPage(items=items,
                              next_after=page[-1][0] if len(page) == limit else None)

    @api.get("/agents/{agent_id}", response_model=wire.Agent, tags=["agents"])
    async def get_agent(request: Request, agent_id: IdPath) -> wire.Agent:
        """One agent."""
        return wire.Agent.model_validate(await agent_of(tenant_of(request), agent_id))

    @api.patch("/agents/{agent_id}", response_model=wire.Agent, tags=["agents"])
    async def update_agent(request: Request, agent_id: IdPath,
                           update: wire.AgentUpdate) -> wire.Agent:
        """Change some fields of an agent."""
        tenant = tenant_of(request)
        agent = await agent_of(tenant, agent_id)
        changes = {k: v for k, v in update.model_dump(exclude_unset=True).items()
                   if v is not None or k == "model"}
        if "tools" in changes:
            check_tools(changes["tools"])
        _json_ready(changes, "the agent")
        agent.update(changes, updated_at=time.time())
        await stack.storage.kv_set(AGENTS_NAMESPACE + tenant, agent_id, agent)
        return wire.Agent.model_validate(agent)

    @api.delete("/agents/{agent_id}", status_code=204, tags=["agents"])
    async def delete_agent(request: Request, agent_id: IdPath) -> Response:
        """Delete an agent (its past tasks and runs stay)."""
        tenant = tenant_of(request)
        await agent_of(tenant, agent_id)
        await stack.storage.kv_delete(AGENTS_NAMESPACE + tenant, agent_id)
        return Response(status_code=204)

    @api.get("/agents/{agent_id}/capabilities", response_model=list[str], tags=["agents"])
    async def agent_capabilities(request: Request, agent_id: IdPath) -> list[str]:
        """The agent's declared capabilities."""
        return list((await agent_of(tenant_of(request), agent_id))["capabilities"])

    # ------------------------------------------------------------------ runs

    @api.get("/runs", response_model=wire.RunPage, tags=["runs"])
    async def list_runs(request: Request,
                        status: Annotated[str | None, Query(max_length=20)] = None,
                        limit: Annotated[int, Query(ge=1, le=200)] = 50,
                        offset: Annotated[int, Query(ge=0, le=10_000)] = 0) -> wire.RunPage:
        """The runs of the tenant's tasks, newest first (at most 10,000 tasks are scanned
        when filtering by status).
        """
        tenant = tenant_of(request)
        found: list[wire.Run] = []
        scanned = 0
        while len(found) < offset + limit and scanned < 10_000:
            tasks = await svc.queue.list_tasks(TaskQuery(tenant=tenant, limit=200,
                                                         offset=scanned))
            for task in tasks:
                run = await svc.run_of(task)
                if status is None or run.status == status:
                    found.append(run)
            scanned += len(tasks)
            if len(tasks) < 200:
                break
        return wire.RunPage(items=found[offset:offset + limit], limit=limit, offset=offset)

    @api.get("/runs/{run_id}", response_model=wire.Run, tags=["runs"])
    async def get_run(request: Request, run_id: IdPath) -> wire.Run:
        """One run."""
        return await svc.run_of(await svc.task_of_run(tenant_of(request), run_id))

    @api.get("/runs/{run_id}/steps", response_model=list[wire.StepAttempt], tags=["runs"])
    async def run_steps(request: Request, run_id: IdPath) -> list[wire.StepAttempt]:
        """Every step attempt of the run."""
        await svc.task_of_run(tenant_of(request), run_id)
        attempts = await stack.storage.list_attempts(run_id)
        return [wire.StepAttempt.model_validate(attrs.asdict(a)) for a in attempts]

    @api.get("/runs/{run_id}/logs", response_model=list[wire.LogLine], tags=["runs"])
    async def run_logs(request: Request, run_id: IdPath) -> list[wire.LogLine]:
        """The run's log lines in order."""
        await svc.task_of_run(tenant_of(request), run_id)
        return [wire.LogLine.model_validate(attrs.asdict(r))
                for r in await stack.storage.list_logs(run_id)]

    @api.get("/runs/{run_id}/cost", response_model=list[wire.CostLine], tags=["runs"])
    async def run_cost(request: Request, run_id: IdPath) -> list[wire.CostLine]:
        """The cost of each model call of the run."""
        await svc.task_of_run(tenant_of(request), run_id)
        return [wire.CostLine.model_validate(attrs.asdict(c))
                for c in await stack.storage.list_costs(run_id)]

    @api.post("/runs/{run_id}/resume", response_model=wire.Task, tags=["runs"],
              responses={409: {"model": wire.ErrorBody}})
    async def resume_run(request: Request, run_id: IdPath) -> wire.Task:
        """Queue the run's task again so a worker resumes the run (409 unless it failed or
        was cancelled).
        """
        task = await svc.task_of_run(tenant_of(request), run_id)
        if task.status not in ("failed", "cancelled"):
            raise ApiError(409, f"the run's task is {task.status}; only a failed or cancelled "
                           "run can be resumed")
        record = await svc.queue.retry_task(task.id)
        if svc.worker is not None:
            svc.worker.wake()
        return _task(record)

    @api.post("/runs/{run_id}/steps/{step_id}/answer", response_model=wire.Task,
              status_code=202, tags=["runs"],
              responses={404: {"model": wire.ErrorBody}, 409: {"model": wire.ErrorBody},
                         422: {"model": wire.ErrorBody}})
    async def answer_step(request: Request, run_id: IdPath, step_id: StepPath,
                          body: AnswerBody) -> Any:
        """Answer a waiting human step (``human.approve``/``human.input``) and queue the
        run's task again so a worker resumes the run (202; no request thread runs it).

        The answer is stored with the API key as who answered (``api_key:<id>``; ``loopback``
        without keys), a ``human.answered`` event and an audit record. 409: the run or step
        is not waiting, or the step was already answered; 422: the value does not match the
        step's schema (or is too large); nothing is stored then.
        """
        record = await svc.answer(tenant_of(request), run_id, step_id, body.value,
                                  actor=actor_of(request))
        return _task_response(record, 202)

    @api.get("/runs/{run_id}/events", tags=["runs"],
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "RunEvent items; `id:` is `seq`"}})
    async def run_events(request: Request, run_id: IdPath,
                         last_event_id: Annotated[str | None,
                                                  Header(max_length=20)] = None,
                         after: Annotated[int | None, Query(ge=0)] = None
                         ) -> EventSourceResponse:
        """The run's events as Server-Sent Events, from the durable log (``id:`` is ``seq``;
        ``Last-Event-ID`` or ``after`` resumes after that event), with heartbeat comments,
        ending after ``run.finished``; token deltas (``step.delta``) and progress reports
        (``step.progress``) of the run and its sub-workflow runs, from whichever worker runs
        them, come without an ``id:``.
        """
        tenant = tenant_of(request)
        task = await svc.task_of_run(tenant, run_id)
        start = after or 0
        if last_event_id is not None:
            if not last_event_id.strip().isdigit():
                raise ApiError(422, "Last-Event-ID must be an event seq (a whole number)")
            start = max(start, int(last_event_id))

        async def task_done() -> bool:
            return (await svc.queue.get_task(task.id)).status in _ENDED_TASK

        async def stream() -> AsyncIterator[dict[str, Any]]:
            svc.sse_connections += 1
            try:
                async for item in follow_run(stack, run_id, after_seq=start,
                                             poll=svc.settings.sse_poll, hub=svc.hub,
                                             relay=svc.relay,
                                             task_done=task_done):
                    yield item
            finally:
                svc.sse_connections -= 1

        return EventSourceResponse(stream(), ping=svc.settings.sse_ping)

    # ------------------------------------------------------------------ workflows

    @api.post("/workflows/validate", response_model=wire.ValidationResult, tags=["workflows"])
    async def validate_workflow(source: wire.WorkflowSource) -> wire.ValidationResult:
        """Check a workflow without storing it."""
        try:
            workflow = svc.load_workflow(source)
        except WorkflowValidationError as exc:
            return wire.ValidationResult(valid=False, issues=_issues(exc))
        return wire.ValidationResult(valid=True, name=workflow.name)

    @api.post("/workflows", response_model=wire.WorkflowInfo, status_code=201,
              tags=["workflows"], responses={422: {"model": wire.ErrorBody}})
    async def register_workflow(request: Request,
                                source: wire.WorkflowSource) -> wire.WorkflowInfo:
        """Register (or replace) a workflow under its name, for tasks of this tenant."""
        try:
            workflow = svc.load_workflow(source)
        except WorkflowValidationError as exc:
            raise ApiError(422, "the workflow is invalid",
                           details=[i.model_dump() for i in _issues(exc)]) from None
        definition = workflow.to_dict()
        entry = {"definition": definition, "content_hash": workflow.content_hash(),
                 "registered_at": time.time(), "source": workflow.source}
        await stack.storage.kv_set(WORKFLOWS_NAMESPACE + tenant_of(request), workflow.name,
                                   entry)
        svc.remember_workflow(tenant_of(request), workflow.name, workflow,
                              entry["content_hash"])
        return _workflow_info(workflow.name, entry)

    @api.get("/workflows", response_model=list[wire.WorkflowInfo], tags=["workflows"])
    async def list_workflows(request: Request) -> list[wire.WorkflowInfo]:
        """The tenant's registered workflows, by name."""
        namespace = WORKFLOWS_NAMESPACE + tenant_of(request)
        out: list[wire.WorkflowInfo] = []
        after = ""
        while True:
            page = await stack.storage.kv_list(  # type: ignore[attr-defined]
                namespace, after=after, limit=500)
            out.extend(_workflow_info(name, entry) for name, entry in page)
            if len(page) < 500:
                return out
            after = page[-1][0]

    # ------------------------------------------------------------------ the stack

    async def models_of(name: str) -> list[Any]:
        provider = stack.providers.get(name)
        with anyio.move_on_after(5.0):
            return list(await provider.list_models())
        log.warning("provider %s did not list its models within 5 s", name)
        return []

    @api.get("/providers", response_model=list[wire.ProviderInfo], tags=["stack"])
    async def providers() -> list[wire.ProviderInfo]:
        """The stack's model providers and their models."""
        return [wire.ProviderInfo(name=name, models=[m.model for m in await models_of(name)])
                for name in stack.providers.names()]

    @api.get("/models", response_model=list[wire.ModelInfo], tags=["stack"])
    async def models() -> list[wire.ModelInfo]:
        """Every model of every provider, with prices per million tokens."""
        out = []
        for name in stack.providers.names():
            for m in await models_of(name):
                out.append(wire.ModelInfo(
                    ref=f"{name}/{m.model}", provider=name, model=m.model,
                    context_window=m.context_window, capabilities=sorted(m.capabilities),
                    input_usd_per_mtok=m.price.input_per_mtok if m.price else None,
                    output_usd_per_mtok=m.price.output_per_mtok if m.price else None))
        return out

    @api.get("/tools", response_model=list[wire.ToolInfo], tags=["stack"])
    async def tools() -> list[wire.ToolInfo]:
        """Every tool steps and agents can use."""
        out = []
        for name in stack.tools.names():
            tool = stack.tools.get(name)
            out.append(wire.ToolInfo(
                name=name, description=str(getattr(tool, "description", "") or ""),
                parameters=dict(getattr(tool, "parameters", {}) or {}),
                idempotent=bool(getattr(tool, "idempotent", False)),
                side_effects=list(getattr(tool, "side_effects", ()) or ())))
        return out

    return api


def create_app(stack: Stack, settings: ServerSettings, *, worker: Worker | None = None
               ) -> FastAPI:
    """Build the ASGI application.

    Args:
        stack: the stack to serve; its storage must implement
            :class:`~flowyard.SupportsTaskQueue` and
            :class:`~flowyard.SupportsKeyValueListing`. The app's lifespan opens it (and
            closes it when it opened it).
        settings: limits and timings.
        worker: a worker to run inside the server during the app's lifespan (None: tasks
            are left to ``flowyard worker`` processes).

    Returns:
        the FastAPI app, with the security and metrics middleware installed (the
        :class:`Service` the routes share is ``app.state.service``).
    """
    svc = Service(stack, settings, worker)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        opened = not stack.storage_is_open
        await stack.open()
        queue_of(stack)  # fail at start, not at the first request
        if not isinstance(stack.storage, SupportsKeyValueListing):
            raise StorageError(f"the storage backend {type(stack.storage).__name__} cannot "
                               "list its key-value area (no kv_list); flowyard-server needs it")
        if svc.hub is not None:
            svc.hub.attach(stack)
        try:
            async with anyio.create_task_group() as tg:
                if worker is not None:
                    tg.start_soon(worker.run)
                yield
                tg.cancel_scope.cancel()
        finally:
            if svc.hub is not None:
                svc.hub.detach()
            if opened:
                await stack.aclose()

    app = FastAPI(title="flowyard", version=core_version, lifespan=lifespan,
                  description="Run flowyard workflows and agents as a service. Every route "
                  "but /v1/health/* needs `Authorization: Bearer <key>` (or `X-API-Key`).")
    app.state.service = svc

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        if isinstance(exc, ApiError):
            return _error_response(exc.status_code, exc.code, str(exc.detail), exc.details)
        return _error_response(exc.status_code, _CODES.get(exc.status_code, "error"),
                               str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # the offending values are not echoed: they may hold secrets
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""),
                    "type": e.get("type", "")} for e in exc.errors()]
        return _error_response(422, "validation_error", "the request is invalid", details)

    @app.exception_handler(Exception)
    async def crashed(_: Request, exc: Exception) -> JSONResponse:
        log.error("request failed: %s", type(exc).__name__, exc_info=exc)
        return _error_response(500, "server_error", "internal server error")

    # the routes go straight into the app's router, ahead of the documentation routes (whose
    # paths no /v1 path matches): an included router is matched twice per request by FastAPI
    # (the router, then its route), and each route tried before the right one costs too
    app.router.routes[0:0] = _routes(svc).routes

    if settings.ui:
        from starlette.staticfiles import StaticFiles

        from flowyard_server.ui.pages import STATIC_DIR, ui_router

        app.include_router(ui_router(svc))
        app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")

    @app.get("/metrics", response_class=PlainTextResponse, tags=["health"])
    async def metrics() -> PlainTextResponse:
        """Process metrics in the Prometheus text format."""
        return PlainTextResponse(await svc.render_metrics(), media_type=CONTENT_TYPE)
    if settings.ui:  # inside the security layer: gzip for /ui pages only
        from flowyard_server.ui.pages import CompressPages

        app.add_middleware(CompressPages)  # type: ignore[arg-type]
    # one pure ASGI layer: counts every response (its own 401/413/422 too), authenticates,
    # then limits the body
    app.add_middleware(SecurityMiddleware, keys=svc.keys,  # type: ignore[arg-type]
                       max_body_bytes=settings.max_body_bytes,
                       max_json_depth=settings.max_json_depth, metrics=svc.metrics,
                       sessions=svc.sessions if settings.ui else None)
    return app

