"""The wire types of flowyard's service API, shared by ``flowyard-server`` (which builds its
OpenAPI schema and validates request bodies with them) and ``flowyard-client`` (which parses
responses with them), so the two cannot drift.

All routes are under ``/v1`` and take the API key as ``Authorization: Bearer <key>`` (or
``X-API-Key: <key>``); every error body is an :class:`ErrorBody`. Times are UNIX seconds,
money US dollars, token counts tokens.

=======  ======================================  ==================================================
Method   Path                                    Body -> response
=======  ======================================  ==================================================
GET      /v1/health/live                         -> :class:`Health` (the process answers)
GET      /v1/health/ready                        -> :class:`Health` (storage, queue, workers...)
GET      /metrics                                -> Prometheus text format
POST     /v1/agents                              :class:`AgentCreate` -> :class:`Agent` (201)
GET      /v1/agents?limit=&after=                -> :class:`AgentPage`
GET      /v1/agents/{agent_id}                   -> :class:`Agent`
PATCH    /v1/agents/{agent_id}                   :class:`AgentUpdate` -> :class:`Agent`
DELETE   /v1/agents/{agent_id}                   -> 204
GET      /v1/agents/{agent_id}/capabilities      -> ``list[str]``
POST     /v1/tasks                               :class:`TaskSubmit` -> :class:`Task` (201; 200 for
                                                 an idempotency key seen before)
POST     /v1/tasks/batch                         :class:`TaskBatch` -> ``list[Task]``
GET      /v1/tasks?status=&kind=&target=&limit=  -> :class:`TaskPage`
         &offset=
GET      /v1/tasks/{task_id}                     -> :class:`Task`
POST     /v1/tasks/{task_id}/cancel              -> :class:`Task`
POST     /v1/tasks/{task_id}/retry               -> :class:`Task`
GET      /v1/runs?status=&limit=&offset=         -> :class:`RunPage` (the runs of the tenant's
                                                 tasks)
GET      /v1/runs/{run_id}                       -> :class:`Run`
GET      /v1/runs/{run_id}/steps                 -> ``list[StepAttempt]``
GET      /v1/runs/{run_id}/logs                  -> ``list[LogLine]``
GET      /v1/runs/{run_id}/cost                  -> ``list[CostLine]``
POST     /v1/runs/{run_id}/resume                -> :class:`Task` (the run's task, queued again)
GET      /v1/runs/{run_id}/events                -> ``text/event-stream`` of :class:`RunEvent`
                                                 (``id:`` is ``seq``; ``Last-Event-ID`` resumes)
POST     /v1/workflows/validate                  :class:`WorkflowSource` ->
                                                 :class:`ValidationResult`
POST     /v1/workflows                           :class:`WorkflowSource` -> :class:`WorkflowInfo`
GET      /v1/workflows                           -> ``list[WorkflowInfo]``
GET      /v1/providers, /v1/models, /v1/tools    -> ``list[ProviderInfo | ModelInfo | ToolInfo]``
=======  ======================================  ==================================================
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "API_PREFIX",
    "ErrorBody",
    "CheckResult",
    "Health",
    "AgentCreate",
    "AgentUpdate",
    "Agent",
    "AgentPage",
    "TaskSubmit",
    "TaskBatch",
    "Task",
    "TaskPage",
    "Run",
    "RunPage",
    "StepAttempt",
    "LogLine",
    "CostLine",
    "RunEvent",
    "WorkflowSource",
    "ValidationIssue",
    "ValidationResult",
    "WorkflowInfo",
    "ProviderInfo",
    "ModelInfo",
    "ToolInfo",
    "TaskStatus",
    "HealthStatus",
    "MAX_NAME_CHARS",
    "MAX_ID_CHARS",
]

API_PREFIX = "/v1"
#: Longest name, agent type, capability, model or workflow reference accepted.
MAX_NAME_CHARS = 200
#: Longest id or idempotency key accepted (ids are 32 hex characters).
MAX_ID_CHARS = 128

TaskStatus = Literal["queued", "running", "completed", "failed", "cancelled"]
HealthStatus = Literal["UP", "DOWN", "DEGRADED"]

_Name = Field(min_length=1, max_length=MAX_NAME_CHARS)


class _Model(BaseModel):
    """Strict about unknown fields in requests (a typo is an error, not ignored)."""

    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    """Responses: unknown fields are ignored, so a newer server does not break a client."""

    model_config = ConfigDict(extra="ignore")


class ErrorBody(_Out):
    """Every error response: ``code`` (``not_found``, ``validation_error``,
    ``authentication_error``, ``rate_limited``, ``conflict``, ``payload_too_large``,
    ``server_error``...), a message for humans, and details (e.g. the invalid fields).
    """

    code: str
    message: str
    details: dict[str, Any] | list[Any] | None = None


class CheckResult(_Out):
    """One readiness check: its status, what it found, how long it took (milliseconds)."""

    status: HealthStatus
    detail: str = ""
    duration_ms: float = 0.0


class Health(_Out):
    """``UP`` when every check is up, ``DEGRADED`` when a non-essential one is not, ``DOWN``
    when an essential one (storage) is not.
    """

    status: HealthStatus
    version: str = ""
    checks: dict[str, CheckResult] = Field(default_factory=dict)


class AgentCreate(_Model):
    """A stored agent definition: an agent step's settings, runnable as a task."""

    name: str = _Name
    type: str = Field(default="worker", min_length=1, max_length=MAX_NAME_CHARS)
    capabilities: list[str] = Field(default_factory=list, max_length=100)
    model: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    tools: list[str] = Field(default_factory=list, max_length=100)
    instructions: str = Field(default="", max_length=100_000)
    status: Literal["active", "inactive"] = "active"
    metadata: dict[str, Any] = Field(default_factory=dict)


class AgentUpdate(_Model):
    """Fields to change (the others keep their values)."""

    name: str | None = Field(default=None, min_length=1, max_length=MAX_NAME_CHARS)
    type: str | None = Field(default=None, min_length=1, max_length=MAX_NAME_CHARS)
    capabilities: list[str] | None = Field(default=None, max_length=100)
    model: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    tools: list[str] | None = Field(default=None, max_length=100)
    instructions: str | None = Field(default=None, max_length=100_000)
    status: Literal["active", "inactive"] | None = None
    metadata: dict[str, Any] | None = None


class Agent(_Out):
    """A stored agent."""

    id: str
    name: str
    type: str
    capabilities: list[str]
    model: str | None = None
    tools: list[str] = Field(default_factory=list)
    instructions: str = ""
    status: str = "active"
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: float
    updated_at: float


class AgentPage(_Out):
    """A page of agents in id order; pass ``next_after`` as ``after`` for the next page."""

    items: list[Agent]
    next_after: str | None = None


class TaskSubmit(_Model):
    """Run a registered workflow (``kind="workflow"``, ``target`` its name) or a stored agent
    (``kind="agent"``, ``target`` its id; ``inputs`` ``{"input": "..."}``).
    """

    kind: Literal["workflow", "agent"] = "workflow"
    target: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    inputs: dict[str, Any] = Field(default_factory=dict)
    name: str = Field(default="", max_length=MAX_NAME_CHARS)
    priority: int = Field(default=0, ge=-1000, le=1000)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=MAX_ID_CHARS)
    metadata: dict[str, Any] = Field(default_factory=dict)


class TaskBatch(_Model):
    """Several submissions at once (at most 100)."""

    tasks: list[TaskSubmit] = Field(min_length=1, max_length=100)


class Task(_Out):
    """A submitted task and where it stands."""

    id: str
    kind: str
    target: str
    name: str = ""
    inputs: dict[str, Any] = Field(default_factory=dict)
    priority: int = 0
    status: TaskStatus
    run_id: str
    attempts: int = 0
    cancel_requested: bool = False
    idempotency_key: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    outputs: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def done(self) -> bool:
        """True once the task ended (completed, failed or cancelled)."""
        return self.status in ("completed", "failed", "cancelled")


class TaskPage(_Out):
    """A page of tasks, newest first."""

    items: list[Task]
    limit: int
    offset: int


class Run(_Out):
    """A run (``status``: pending, running, completed, failed, cancelled, partial)."""

    id: str
    workflow_name: str
    status: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    resume_count: int = 0
    task_id: str | None = None


class RunPage(_Out):
    """A page of runs, newest first."""

    items: list[Run]
    limit: int
    offset: int


class StepAttempt(_Out):
    """One try of one step key."""

    step_id: str
    step_key: str
    attempt: int
    status: str
    started_at: float
    finished_at: float | None = None
    output: Any = None
    error: str | None = None
    error_type: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None


class LogLine(_Out):
    """A log line of a run."""

    time: float
    level: str
    message: str
    step_id: str | None = None


class CostLine(_Out):
    """The cost of one model call (``cost_usd`` None when the price is unknown)."""

    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float | None = None
    step_id: str | None = None
    time: float | None = None


class RunEvent(_Out):
    """One event of a run's durable event log (``seq`` from 1, the SSE ``id``); transient
    events (``step.delta`` token deltas, ``step.progress``) have ``seq`` 0.
    """

    seq: int
    type: str
    run_id: str
    step_id: str | None = None
    time: float
    data: dict[str, Any] = Field(default_factory=dict)


class WorkflowSource(_Model):
    """A workflow as YAML/JSON text (``source``) or as a definition (``definition``)."""

    source: str | None = Field(default=None, max_length=1_000_000)
    definition: dict[str, Any] | None = None


class ValidationIssue(_Out):
    """One problem of a workflow, with where it is."""

    message: str
    path: str | None = None
    line: int | None = None
    column: int | None = None


class ValidationResult(_Out):
    """Whether a workflow is valid, and every problem found."""

    valid: bool
    issues: list[ValidationIssue] = Field(default_factory=list)
    name: str | None = None


class WorkflowInfo(_Out):
    """A registered workflow."""

    name: str
    description: str = ""
    steps: int
    inputs: dict[str, Any] = Field(default_factory=dict)
    content_hash: str
    registered_at: float | None = None


class ProviderInfo(_Out):
    """A registered model provider."""

    name: str
    models: list[str] = Field(default_factory=list)


class ModelInfo(_Out):
    """A model a provider offers (prices in US dollars per million tokens)."""

    ref: str
    provider: str
    model: str
    context_window: int | None = None
    capabilities: list[str] = Field(default_factory=list)
    input_usd_per_mtok: float | None = None
    output_usd_per_mtok: float | None = None


class ToolInfo(_Out):
    """A registered tool (an action steps and agents can use)."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    idempotent: bool = False
    side_effects: list[str] = Field(default_factory=list)
