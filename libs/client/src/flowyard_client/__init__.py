"""flowyard-client: the Python client of flowyard's service API (``flowyard-server``).

``AsyncClient`` (asyncio or trio) and its blocking twin ``Client`` cover every route of
:mod:`flowyard_client.models`: agents, tasks, runs (with a live event stream that resumes
after a dropped connection), workflows, health, metrics, providers, models and tools.
Errors are typed (:mod:`flowyard_client.errors`); idempotent requests are retried with
backoff. Import everything from this package::

    from flowyard_client import AsyncClient, TaskSubmit, NotFoundError
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import errors, models
from ._async import AsyncAgents, AsyncClient, AsyncRuns, AsyncTasks, AsyncWorkflows
from ._metrics import ClientMetrics, RouteMetrics
from ._sync import Agents, Client, Runs, Tasks, Workflows
from .errors import (
    AuthenticationError,
    ConflictError,
    ConnectionError,
    FlowyardAPIError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    ServerError,
    TimeoutError,
    ValidationError,
)
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

__all__ = [
    "__version__",
    # clients
    "AsyncClient",
    "Client",
    "AsyncAgents",
    "AsyncTasks",
    "AsyncRuns",
    "AsyncWorkflows",
    "Agents",
    "Tasks",
    "Runs",
    "Workflows",
    "ClientMetrics",
    "RouteMetrics",
    # errors
    "errors",
    "FlowyardAPIError",
    "ValidationError",
    "AuthenticationError",
    "NotFoundError",
    "ConflictError",
    "PayloadTooLargeError",
    "RateLimitError",
    "ServerError",
    "TimeoutError",
    "ConnectionError",
    # wire types
    "models",
    "Agent",
    "AgentCreate",
    "AgentPage",
    "AgentUpdate",
    "CostLine",
    "Health",
    "LogLine",
    "ModelInfo",
    "ProviderInfo",
    "Run",
    "RunEvent",
    "RunPage",
    "StepAttempt",
    "Task",
    "TaskBatch",
    "TaskPage",
    "TaskSubmit",
    "ToolInfo",
    "ValidationResult",
    "WorkflowInfo",
    "WorkflowSource",
]
