"""The asynchronous client: :class:`AsyncClient` and its namespaces (agents, tasks, runs,
workflows). Runs on asyncio and trio (anyio).
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, TypeVar

import anyio
import httpx
import pydantic

from ._http import HTTPCore
from ._metrics import ClientMetrics
from .errors import TimeoutError, ValidationError
from .models import (
    Agent,
    AgentCreate,
    AgentPage,
    AgentUpdate,
    CostLine,
    Health,
    LogLine,
    ModelInfo,
    ProviderInfo,
    Run,
    RunEvent,
    RunPage,
    StepAttempt,
    Task,
    TaskBatch,
    TaskPage,
    TaskSubmit,
    ToolInfo,
    ValidationResult,
    WorkflowInfo,
    WorkflowSource,
)

__all__ = ["AsyncClient", "AsyncAgents", "AsyncTasks", "AsyncRuns", "AsyncWorkflows"]

M = TypeVar("M", bound=pydantic.BaseModel)

#: Default limit of ``wait_for_completion`` and ``wait_for_all`` (seconds).
DEFAULT_WAIT = 300.0
#: Default pause between two polls of a task (seconds).
DEFAULT_POLL = 1.0
#: The event type that ends a run's event stream.
RUN_FINISHED = "run.finished"


def build_params(model: type[M], params: Any, fields: Mapping[str, Any]) -> M:
    """Return a ``model`` from a model instance or mapping and/or keyword fields (the fields
    win over ``params``), validated on the client side.

    Raises:
        ValidationError: ``status`` None, ``details`` pydantic's error list.
        TypeError: ``params`` is neither a model, a mapping nor None.
    """
    if isinstance(params, model) and not fields:
        return params
    if params is None:
        data: dict[str, Any] = {}
    elif isinstance(params, pydantic.BaseModel):
        data = params.model_dump(exclude_unset=True)
    elif isinstance(params, Mapping):
        data = dict(params)
    else:
        raise TypeError(f"expected {model.__name__}, a mapping or keyword arguments, "
                        f"not {type(params).__name__}")
    data.update(fields)
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        first = errors[0] if errors else {"loc": (), "msg": str(exc)}
        where = ".".join(str(p) for p in first["loc"]) or model.__name__
        raise ValidationError(f"invalid {model.__name__}: {where}: {first['msg']}"
                              + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""),
                              code="validation_error", details=list(errors)) from None


def body_of(model: pydantic.BaseModel) -> dict[str, Any]:
    """The JSON body of a request model: the fields that were set."""
    return model.model_dump(mode="json", exclude_unset=True)


def id_of(value: Any) -> str:
    """An id given as a string or as an object with ``.id`` (an Agent, Task or Run)."""
    if isinstance(value, str):
        if not value:
            raise ValueError("an id must not be empty")
        return value
    ident = getattr(value, "id", None)
    if isinstance(ident, str) and ident:
        return ident
    raise TypeError(f"expected an id string or an object with .id, not {type(value).__name__}")


class _Namespace:
    def __init__(self, core: HTTPCore) -> None:
        self._core = core

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._core.base_url}>"


class AsyncAgents(_Namespace):
    """Stored agents: ``client.agents``."""

    async def create(self, params: AgentCreate | Mapping[str, Any] | None = None, /,
                     **fields: Any) -> Agent:
        """Create an agent (``POST /v1/agents``; never retried).

        Args:
            params: An :class:`AgentCreate` or a mapping of its fields.
            **fields: :class:`AgentCreate` fields (``name``, ``type``, ``capabilities``,
                ``model``, ``tools``, ``instructions``, ``status``, ``metadata``); they
                override ``params``.

        Returns:
            The stored :class:`Agent`.

        Raises:
            ValidationError: invalid fields (checked before sending, and by the server).
            FlowyardAPIError: any other failure (see :mod:`flowyard_client.errors`).
        """
        body = build_params(AgentCreate, params, fields)
        response = await self._core.request("POST", "/v1/agents", json=body_of(body))
        return self._core.parse(response, Agent)  # type: ignore[no-any-return]

    async def list(self, *, limit: int | None = None, after: str | None = None) -> AgentPage:
        """List agents in id order, one page (``GET /v1/agents``).

        Args:
            limit: Most agents to return (the server's default when None).
            after: The ``next_after`` of the previous page, for the next one.

        Returns:
            An :class:`AgentPage`: ``items`` and ``next_after`` (None on the last page).
        """
        response = await self._core.request("GET", "/v1/agents",
                                            params={"limit": limit, "after": after})
        return self._core.parse(response, AgentPage)  # type: ignore[no-any-return]

    async def get(self, agent_id: str | Agent) -> Agent:
        """Return one agent (``GET /v1/agents/{agent_id}``).

        Args:
            agent_id: The agent's id (or the :class:`Agent`).

        Raises:
            NotFoundError: no such agent.
        """
        response = await self._core.request("GET", "/v1/agents/{agent_id}",
                                            path_params={"agent_id": id_of(agent_id)})
        return self._core.parse(response, Agent)  # type: ignore[no-any-return]

    async def update(self, agent_id: str | Agent,
                     params: AgentUpdate | Mapping[str, Any] | None = None, /,
                     **fields: Any) -> Agent:
        """Change some fields of an agent (``PATCH /v1/agents/{agent_id}``; never retried).

        Args:
            agent_id: The agent's id (or the :class:`Agent`).
            params: An :class:`AgentUpdate` or a mapping of the fields to change.
            **fields: Fields to change; they override ``params``. Fields not given keep
                their values (``model=None`` clears the model).

        Returns:
            The updated :class:`Agent`.

        Raises:
            NotFoundError: no such agent.
            ValidationError: invalid fields.
        """
        body = build_params(AgentUpdate, params, fields)
        response = await self._core.request("PATCH", "/v1/agents/{agent_id}",
                                            path_params={"agent_id": id_of(agent_id)},
                                            json=body_of(body))
        return self._core.parse(response, Agent)  # type: ignore[no-any-return]

    async def delete(self, agent_id: str | Agent) -> None:
        """Delete an agent (``DELETE /v1/agents/{agent_id}``; retried, it is idempotent).

        Args:
            agent_id: The agent's id (or the :class:`Agent`).

        Raises:
            NotFoundError: no such agent (also when a retry follows a delete that worked).
        """
        await self._core.request("DELETE", "/v1/agents/{agent_id}",
                                 path_params={"agent_id": id_of(agent_id)})

    async def get_capabilities(self, agent_id: str | Agent) -> list[str]:
        """Return an agent's capabilities (``GET /v1/agents/{agent_id}/capabilities``).

        Args:
            agent_id: The agent's id (or the :class:`Agent`).

        Raises:
            NotFoundError: no such agent.
        """
        response = await self._core.request("GET", "/v1/agents/{agent_id}/capabilities",
                                            path_params={"agent_id": id_of(agent_id)})
        return self._core.parse(response, list[str])  # type: ignore[no-any-return]

    async def has_capability(self, agent_id: str | Agent, capability: str) -> bool:
        """Return True when the agent declares ``capability`` (exact match).

        Args:
            agent_id: The agent's id (or the :class:`Agent`).
            capability: The capability name.

        Raises:
            NotFoundError: no such agent.
        """
        return capability in await self.get_capabilities(agent_id)


class AsyncTasks(_Namespace):
    """Tasks (a workflow or an agent to run): ``client.tasks``."""

    async def submit(self, params: TaskSubmit | Mapping[str, Any] | None = None, /,
                     **fields: Any) -> Task:
        """Submit a task (``POST /v1/tasks``).

        Retried on a retriable failure only when it has an ``idempotency_key`` (the server
        then answers a repeat with the task it already has, so nothing runs twice).

        Args:
            params: A :class:`TaskSubmit` or a mapping of its fields.
            **fields: :class:`TaskSubmit` fields (``target``, ``kind``, ``inputs``, ``name``,
                ``priority``, ``idempotency_key``, ``metadata``); they override ``params``.

        Returns:
            The queued :class:`Task` (or the one submitted before with the same key).

        Raises:
            ValidationError: invalid fields.
            PayloadTooLargeError: inputs too large for the server.
            FlowyardAPIError: any other failure.
        """
        body = build_params(TaskSubmit, params, fields)
        response = await self._core.request("POST", "/v1/tasks", json=body_of(body),
                                            idempotent=body.idempotency_key is not None)
        return self._core.parse(response, Task)  # type: ignore[no-any-return]

    async def submit_batch(self, tasks: TaskBatch | Iterable[TaskSubmit | Mapping[str, Any]]
                           ) -> list[Task]:
        """Submit up to 100 tasks in one request (``POST /v1/tasks/batch``).

        Retried only when every task has an ``idempotency_key``.

        Args:
            tasks: A :class:`TaskBatch`, or :class:`TaskSubmit` objects / mappings.

        Returns:
            The :class:`Task` of each submission, in order.

        Raises:
            ValidationError: an invalid task, none, or more than 100.
        """
        if isinstance(tasks, TaskBatch):
            batch = tasks
        else:
            batch = build_params(TaskBatch, None, {"tasks": [
                build_params(TaskSubmit, t, {}) for t in tasks]})
        idempotent = all(t.idempotency_key is not None for t in batch.tasks)
        response = await self._core.request("POST", "/v1/tasks/batch", json=body_of(batch),
                                            idempotent=idempotent)
        return self._core.parse(response, list[Task])  # type: ignore[no-any-return]

    async def get(self, task_id: str | Task) -> Task:
        """Return a task and where it stands (``GET /v1/tasks/{task_id}``).

        Args:
            task_id: The task's id (or the :class:`Task`).

        Raises:
            NotFoundError: no such task.
        """
        response = await self._core.request("GET", "/v1/tasks/{task_id}",
                                            path_params={"task_id": id_of(task_id)})
        return self._core.parse(response, Task)  # type: ignore[no-any-return]

    async def list(self, *, status: str | None = None, kind: str | None = None,
                   target: str | None = None, limit: int | None = None,
                   offset: int | None = None) -> TaskPage:
        """List tasks, newest first, one page (``GET /v1/tasks``).

        Args:
            status: Only tasks in this status (queued, running, completed, failed, cancelled).
            kind: Only ``"workflow"`` or ``"agent"`` tasks.
            target: Only tasks of this workflow name or agent id.
            limit: Page size (the server's default when None).
            offset: Tasks to skip.

        Returns:
            A :class:`TaskPage` (``items``, ``limit``, ``offset``).
        """
        response = await self._core.request(
            "GET", "/v1/tasks", params={"status": status, "kind": kind, "target": target,
                                        "limit": limit, "offset": offset})
        return self._core.parse(response, TaskPage)  # type: ignore[no-any-return]

    async def cancel(self, task_id: str | Task) -> Task:
        """Ask for a task to be cancelled (``POST /v1/tasks/{task_id}/cancel``; idempotent).

        Args:
            task_id: The task's id (or the :class:`Task`).

        Returns:
            The :class:`Task`: ``status`` ``cancelled`` (it was queued), ``cancel_requested``
            True (it is running; its worker stops it), or unchanged (it had ended).

        Raises:
            NotFoundError: no such task.
        """
        response = await self._core.request("POST", "/v1/tasks/{task_id}/cancel",
                                            path_params={"task_id": id_of(task_id)},
                                            idempotent=True)
        return self._core.parse(response, Task)  # type: ignore[no-any-return]

    async def retry(self, task_id: str | Task) -> Task:
        """Queue a failed or cancelled task again (``POST /v1/tasks/{task_id}/retry``;
        idempotent: retrying a queued task changes nothing).

        Args:
            task_id: The task's id (or the :class:`Task`).

        Returns:
            The :class:`Task`: queued again with the same id and run id when it had failed
            or was cancelled, else unchanged.

        Raises:
            NotFoundError: no such task.
        """
        response = await self._core.request("POST", "/v1/tasks/{task_id}/retry",
                                            path_params={"task_id": id_of(task_id)},
                                            idempotent=True)
        return self._core.parse(response, Task)  # type: ignore[no-any-return]

    async def wait_for_completion(self, task_id: str | Task, *,
                                  timeout: float | None = DEFAULT_WAIT,
                                  poll_interval: float = DEFAULT_POLL) -> Task:
        """Poll a task until it is completed, failed or cancelled.

        Args:
            task_id: The task's id (or the :class:`Task`).
            timeout: Seconds to wait in all (None: no limit).
            poll_interval: Seconds between two polls.

        Returns:
            The finished :class:`Task` (check ``status``: a failed task is returned, not
            raised).

        Raises:
            TimeoutError: the task has not finished after ``timeout`` seconds (``timeout``
                attribute set).
            NotFoundError: no such task.
        """
        if poll_interval <= 0:
            raise ValueError("poll_interval must be > 0 seconds")
        ident = id_of(task_id)
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        with anyio.move_on_after(timeout):
            while True:
                task = await self.get(ident)
                if task.done:
                    return task
                remaining = deadline - time.monotonic()
                await anyio.sleep(max(0.0, min(poll_interval, remaining)))
        raise TimeoutError(f"task {ident} has not finished after {timeout} s",
                           timeout=timeout, code="wait_timeout")

    async def wait_for_all(self, task_ids: Iterable[str | Task], *,
                           timeout: float | None = DEFAULT_WAIT,
                           poll_interval: float = DEFAULT_POLL) -> list[Task]:
        """Wait for several tasks at once (each polled concurrently).

        Args:
            task_ids: Task ids (or :class:`Task` objects).
            timeout: Seconds to wait for all of them (None: no limit).
            poll_interval: Seconds between two polls of each task.

        Returns:
            The finished tasks, in the order of ``task_ids``.

        Raises:
            TimeoutError: some task has not finished after ``timeout`` seconds.
            FlowyardAPIError: the first failure polling a task (the others are cancelled).
        """
        ids = [id_of(t) for t in task_ids]
        results: list[Task | None] = [None] * len(ids)

        async def one(index: int, ident: str) -> None:
            results[index] = await self.wait_for_completion(
                ident, timeout=None, poll_interval=poll_interval)

        with anyio.move_on_after(timeout):
            async with anyio.create_task_group() as group:
                for index, ident in enumerate(ids):
                    group.start_soon(one, index, ident)
            return [t for t in results if t is not None]
        pending = [ident for ident, t in zip(ids, results, strict=True) if t is None]
        raise TimeoutError(f"{len(pending)} of {len(ids)} tasks have not finished after "
                           f"{timeout} s: {', '.join(pending[:5])}"
                           + (" ..." if len(pending) > 5 else ""),
                           timeout=timeout, code="wait_timeout")


class AsyncRuns(_Namespace):
    """Runs (what a task executed): ``client.runs``."""

    async def list(self, *, status: str | None = None, limit: int | None = None,
                   offset: int | None = None) -> RunPage:
        """List the runs of the tenant's tasks, newest first (``GET /v1/runs``).

        Args:
            status: Only runs in this status (pending, running, completed, failed...).
            limit: Page size (the server's default when None).
            offset: Runs to skip.

        Returns:
            A :class:`RunPage`.
        """
        response = await self._core.request(
            "GET", "/v1/runs", params={"status": status, "limit": limit, "offset": offset})
        return self._core.parse(response, RunPage)  # type: ignore[no-any-return]

    async def get(self, run_id: str | Run) -> Run:
        """Return a run (``GET /v1/runs/{run_id}``).

        Args:
            run_id: The run's id (or the :class:`Run`).

        Raises:
            NotFoundError: no such run.
        """
        response = await self._core.request("GET", "/v1/runs/{run_id}",
                                            path_params={"run_id": id_of(run_id)})
        return self._core.parse(response, Run)  # type: ignore[no-any-return]

    async def steps(self, run_id: str | Run) -> list[StepAttempt]:
        """Return every attempt of every step of a run (``GET /v1/runs/{run_id}/steps``).

        Args:
            run_id: The run's id (or the :class:`Run`).
        """
        response = await self._core.request("GET", "/v1/runs/{run_id}/steps",
                                            path_params={"run_id": id_of(run_id)})
        return self._core.parse(response, list[StepAttempt])  # type: ignore[no-any-return]

    async def logs(self, run_id: str | Run) -> list[LogLine]:
        """Return a run's log lines (``GET /v1/runs/{run_id}/logs``).

        Args:
            run_id: The run's id (or the :class:`Run`).
        """
        response = await self._core.request("GET", "/v1/runs/{run_id}/logs",
                                            path_params={"run_id": id_of(run_id)})
        return self._core.parse(response, list[LogLine])  # type: ignore[no-any-return]

    async def cost(self, run_id: str | Run) -> list[CostLine]:
        """Return the cost of each model call of a run in US dollars
        (``GET /v1/runs/{run_id}/cost``).

        Args:
            run_id: The run's id (or the :class:`Run`).
        """
        response = await self._core.request("GET", "/v1/runs/{run_id}/cost",
                                            path_params={"run_id": id_of(run_id)})
        return self._core.parse(response, list[CostLine])  # type: ignore[no-any-return]

    async def resume(self, run_id: str | Run) -> Task:
        """Queue an interrupted or failed run's task again to resume the run
        (``POST /v1/runs/{run_id}/resume``; never retried).

        Args:
            run_id: The run's id (or the :class:`Run`).

        Returns:
            The run's :class:`Task`, queued again.

        Raises:
            NotFoundError: no such run.
            ConflictError: the run cannot be resumed (running, or completed).
        """
        response = await self._core.request("POST", "/v1/runs/{run_id}/resume",
                                            path_params={"run_id": id_of(run_id)})
        return self._core.parse(response, Task)  # type: ignore[no-any-return]

    def events(self, run_id: str | Run, after_seq: int = 0) -> AsyncIterator[RunEvent]:
        """Follow a run's events live (``GET /v1/runs/{run_id}/events``, server-sent events).

        A dropped or silent connection is reopened with ``Last-Event-ID`` set to the last
        ``seq`` seen, and events already seen are skipped: every durable event (``seq`` >= 1)
        arrives exactly once, in order. Transient events (``step.delta``, ``step.progress``,
        ``seq`` 0) are passed on as they come and are not replayed. The iterator ends after
        the ``run.finished`` event; leave it early with ``break`` (the connection closes).

        Args:
            run_id: The run's id (or the :class:`Run`).
            after_seq: Start after this ``seq`` (0: from the first event).

        Returns:
            An async iterator of :class:`RunEvent`.

        Raises:
            NotFoundError: no such run (when iteration starts).
            FlowyardAPIError: the stream kept failing ``max_retries`` times in a row.
        """
        if after_seq < 0:
            raise ValueError("after_seq must be >= 0")
        return self._core.events("/v1/runs/{run_id}/events", {"run_id": id_of(run_id)},
                                 after_seq, RUN_FINISHED)


def _source(source: WorkflowSource | str | Mapping[str, Any] | None,
            definition: Mapping[str, Any] | None) -> WorkflowSource:
    if isinstance(source, WorkflowSource):
        if definition is not None:
            raise TypeError("give either a WorkflowSource or definition=, not both")
        return source
    if isinstance(source, Mapping):
        if definition is not None:
            raise TypeError("give either a definition mapping or definition=, not both")
        definition, source = source, None
    if (source is None) == (definition is None):
        raise TypeError("give exactly one of a source text or definition=")
    fields: dict[str, Any] = ({"source": source} if source is not None
                              else {"definition": dict(definition or {})})
    return build_params(WorkflowSource, None, fields)


class AsyncWorkflows(_Namespace):
    """Workflows (definitions tasks run by name): ``client.workflows``."""

    async def validate(self, source: WorkflowSource | str | Mapping[str, Any] | None = None,
                       /, *, definition: Mapping[str, Any] | None = None) -> ValidationResult:
        """Check a workflow without registering it (``POST /v1/workflows/validate``;
        retried, it changes nothing).

        Args:
            source: The workflow as YAML/JSON text, a :class:`WorkflowSource`, or a
                definition mapping.
            definition: The workflow as a definition mapping (instead of ``source``).

        Returns:
            A :class:`ValidationResult`: ``valid``, every issue with its location, the name.
        """
        body = _source(source, definition)
        response = await self._core.request("POST", "/v1/workflows/validate",
                                            json=body_of(body), idempotent=True)
        return self._core.parse(response, ValidationResult)  # type: ignore[no-any-return]

    async def register(self, source: WorkflowSource | str | Mapping[str, Any] | None = None,
                       /, *, definition: Mapping[str, Any] | None = None) -> WorkflowInfo:
        """Register (or replace) a workflow by its name (``POST /v1/workflows``).

        Args:
            source: The workflow as YAML/JSON text, a :class:`WorkflowSource`, or a
                definition mapping.
            definition: The workflow as a definition mapping (instead of ``source``).

        Returns:
            The registered :class:`WorkflowInfo`.

        Raises:
            ValidationError: the workflow is invalid (``details`` lists the issues).
        """
        body = _source(source, definition)
        response = await self._core.request("POST", "/v1/workflows", json=body_of(body))
        return self._core.parse(response, WorkflowInfo)  # type: ignore[no-any-return]

    async def list(self) -> list[WorkflowInfo]:
        """Return the registered workflows (``GET /v1/workflows``)."""
        response = await self._core.request("GET", "/v1/workflows")
        return self._core.parse(response, list[WorkflowInfo])  # type: ignore[no-any-return]


class AsyncClient:
    """An asynchronous client of a flowyard service, on asyncio or trio.

    One pooled :class:`httpx.AsyncClient` serves every request; use the client as
    ``async with AsyncClient(...) as client:`` (or call :meth:`aclose`). Namespaces:
    :attr:`agents`, :attr:`tasks`, :attr:`runs`, :attr:`workflows`.

    Retries: a failure that may pass (429, 502, 503, 504, a timeout, a broken connection) is
    retried up to ``max_retries`` times with exponential backoff and jitter, waiting what a
    ``Retry-After`` asks (a 429 asking more than 60 s fails at once), but only for
    idempotent requests: GET and DELETE, task cancel and retry, workflow validation, and a
    task submission with an ``idempotency_key``. Everything else is sent once.

    Args:
        base_url: The service's root URL, e.g. ``"http://127.0.0.1:8080"`` (no ``/v1``).
        api_key: Sent as ``Authorization: Bearer <key>``; never shown in ``repr``, logs or
            errors (a server echoing it gets ``***``).
        timeout: Seconds one attempt may take in all, connecting to the last byte of the
            answer (None: no limit). A live event stream may stay open longer; it is reopened
            after ``timeout`` seconds without a byte.
        max_retries: Extra attempts after a retriable failure (0: none).
        backoff: Seconds before the first retry; doubles each retry, plus up to ``backoff``
            seconds of random jitter, at most 30 s.
        http2: Speak HTTP/2 (needs the ``h2`` package: ``pip install 'httpx[http2]'``).
        transport: An :class:`httpx.AsyncBaseTransport` used instead of the network (tests,
            custom TLS or proxies).

    Raises:
        ValueError: a negative ``max_retries`` or ``backoff``, or a ``timeout`` <= 0.
        ImportError: ``http2=True`` without ``h2``.
    """

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float | None = 30.0,
                 max_retries: int = 3, backoff: float = 0.5, http2: bool = False,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._metrics = ClientMetrics()
        self._core = HTTPCore(base_url, api_key, timeout=timeout, max_retries=max_retries,
                              backoff=backoff, http2=http2, transport=transport,
                              metrics=self._metrics)
        self.agents = AsyncAgents(self._core)
        self.tasks = AsyncTasks(self._core)
        self.runs = AsyncRuns(self._core)
        self.workflows = AsyncWorkflows(self._core)

    @property
    def base_url(self) -> str:
        """The service's root URL."""
        return self._core.base_url

    @property
    def metrics(self) -> ClientMetrics:
        """Client-side request metrics: counts and latency percentiles (seconds) per route."""
        return self._metrics

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections; the client cannot be used afterwards."""
        await self._core.aclose()

    def __repr__(self) -> str:
        key = "'***'" if self._core.has_key else "None"
        url = httpx.URL(self.base_url)
        shown = (str(url.copy_with(username=url.username, password="***")) if url.password
                 else self.base_url)
        return (f"AsyncClient(base_url={shown!r}, api_key={key}, "
                f"timeout={self._core.timeout!r}, max_retries={self._core.max_retries!r})")

    async def health(self, *, ready: bool = True) -> Health:
        """Return the service's health (``GET /v1/health/ready``, or ``/live``).

        A ``DOWN`` service answering 503 with a health body is returned, not raised.

        Args:
            ready: True for readiness (storage, queue, workers, each in ``checks``), False for
                liveness (the process answers).

        Returns:
            A :class:`Health`: ``status`` ``UP``, ``DEGRADED`` or ``DOWN``, and ``checks``.
        """
        route = "/v1/health/ready" if ready else "/v1/health/live"
        response = await self._core.request("GET", route, allow_status=(503,))
        if response.status_code == 503:
            try:
                return Health.model_validate_json(response.content)
            except pydantic.ValidationError:
                raise self._core.error_from_response(response) from None
        return self._core.parse(response, Health)  # type: ignore[no-any-return]

    async def get_metrics(self) -> str:
        """Return the service's metrics in Prometheus text format (``GET /metrics``).

        For this client's own request metrics, see :attr:`metrics`.
        """
        response = await self._core.request("GET", "/metrics")
        return response.text

    async def providers(self) -> list[ProviderInfo]:
        """Return the model providers the service has (``GET /v1/providers``)."""
        response = await self._core.request("GET", "/v1/providers")
        return self._core.parse(response, list[ProviderInfo])  # type: ignore[no-any-return]

    async def models(self) -> list[ModelInfo]:
        """Return the models the service offers, with prices (``GET /v1/models``)."""
        response = await self._core.request("GET", "/v1/models")
        return self._core.parse(response, list[ModelInfo])  # type: ignore[no-any-return]

    async def tools(self) -> list[ToolInfo]:
        """Return the tools steps and agents can use (``GET /v1/tools``)."""
        response = await self._core.request("GET", "/v1/tools")
        return self._core.parse(response, list[ToolInfo])  # type: ignore[no-any-return]

