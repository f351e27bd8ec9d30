"""The error hierarchy of flowyard.

Every error raised on purpose by flowyard or a first-party plugin derives from
:class:`FlowyardError`. Errors that a caller may retry carry ``retriable = True``;
the engine's retry policy and the ``fallback`` router read that attribute.

Errors never include secrets (API keys, tokens) in their message or attributes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "FlowyardError",
    "ConfigError",
    "PluginError",
    "UnknownNameError",
    "DuplicateNameError",
    "ProviderError",
    "AuthenticationError",
    "RateLimitedError",
    "ProviderTimeoutError",
    "ServerError",
    "BadRequestError",
    "MalformedResponseError",
    "ToolError",
    "ToolInputError",
    "StorageError",
    "RunNotFoundError",
    "TaskNotFoundError",
    "WorkflowError",
    "ValidationIssue",
    "WorkflowValidationError",
    "TemplateError",
    "StepFailedError",
    "BudgetExceeded",
    "CircuitOpenError",
    "WorkflowChangedError",
]


class FlowyardError(Exception):
    """Base class of all flowyard errors.

    Attributes:
        retriable: True when repeating the same operation later may succeed
            (rate limits, timeouts, server errors). False by default.
    """

    retriable: bool = False


class ConfigError(FlowyardError):
    """Invalid configuration: a bad ``flowyard.toml`` key or ``FLOWYARD_*`` variable.

    The message names the file (or variable) and the key.
    """


class PluginError(FlowyardError):
    """A plugin failed to load or raised in a hook (raised only in strict mode)."""


class UnknownNameError(FlowyardError, LookupError):
    """A registry lookup of a name that is not registered.

    Args:
        kind: what was looked up ("provider", "tool", ...).
        name: the name asked for.
        available: the names that are registered; listed in the message.
    """

    def __init__(self, kind: str, name: str, available: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self.available = sorted(available)
        listing = ", ".join(self.available) if self.available else "none"
        super().__init__(f"unknown {kind} {name!r}; available: {listing}")


class DuplicateNameError(FlowyardError):
    """Two plugins registered the same name in one registry (raised only in strict mode)."""


# ----------------------------------------------------------------------------- providers


class ProviderError(FlowyardError):
    """An LLM provider call failed.

    Args:
        message: what went wrong; never contains an API key.
        provider: the provider name (``"openai"``).
        model: the model id, when known.
        status_code: the HTTP status, when the error came from an HTTP response.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        model: str | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.model = model
        self.status_code = status_code


class AuthenticationError(ProviderError):
    """The provider refused the credentials (HTTP 401/403). Not retriable."""


class RateLimitedError(ProviderError):
    """The provider rate-limited the call (HTTP 429). Retriable.

    Attributes:
        retry_after: seconds to wait before the next call, when the provider said so
            (parsed from ``retry-after-ms``, ``retry-after`` seconds or an HTTP date).
    """

    retriable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ProviderTimeoutError(ProviderError):
    """The provider did not answer in time. Retriable."""

    retriable = True


class ServerError(ProviderError):
    """The provider failed on its side (HTTP 5xx, overloaded). Retriable."""

    retriable = True


class BadRequestError(ProviderError):
    """The provider rejected the request as malformed (HTTP 400/404/422). Not retriable."""


class MalformedResponseError(ProviderError):
    """The provider's answer could not be parsed, or a stream ended before its end marker.

    Retriable: a cut stream usually succeeds on a second try.
    """

    retriable = True


# ----------------------------------------------------------------------------- tools


class ToolError(FlowyardError):
    """A tool call failed. ``retriable`` is set by the tool."""

    def __init__(self, message: str, *, tool: str | None = None, retriable: bool = False) -> None:
        super().__init__(message)
        self.tool = tool
        self.retriable = retriable


class ToolInputError(ToolError):
    """The arguments given to a tool do not match its JSON schema."""


# ----------------------------------------------------------------------------- storage


class StorageError(FlowyardError):
    """A storage backend failed (unreadable database, failed migration, ...).

    Args:
        message: what failed and where (the file or URL, the run and step).
        retriable: True when the same operation may succeed later (a lock held past the busy
            timeout, a dropped connection); False for damage and invalid values.
    """

    def __init__(self, message: str = "", *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class RunNotFoundError(StorageError, LookupError):
    """No run with the given id is stored."""


class TaskNotFoundError(StorageError, LookupError):
    """No task with the given id is stored (see :class:`~flowyard.interfaces.SupportsTaskQueue`)."""


# ----------------------------------------------------------------------------- workflows


class WorkflowError(FlowyardError):
    """Base class of workflow definition and execution errors."""


class ValidationIssue:
    """One problem found in a workflow definition.

    Args:
        message: what is wrong.
        path: the field path inside the workflow (``"steps[2].with.path"``).
        file: the source file, when loaded from one.
        line: 1-based line number, when known.
        column: 1-based column number, when known.
    """

    __slots__ = ("message", "path", "file", "line", "column")

    def __init__(
        self,
        message: str,
        *,
        path: str = "",
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.message = message
        self.path = path
        self.file = file
        self.line = line
        self.column = column

    def location(self) -> str:
        """Return ``file:line:column`` (parts that are unknown are left out)."""
        parts = [self.file or "<workflow>"]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)

    def __str__(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return f"{self.location()}: {self.message}{where}"

    def __repr__(self) -> str:
        return f"ValidationIssue({str(self)!r})"

    def to_dict(self) -> dict[str, Any]:
        """Return the issue as a JSON-ready dict."""
        return {
            "message": self.message,
            "path": self.path,
            "file": self.file,
            "line": self.line,
            "column": self.column,
        }


class WorkflowValidationError(WorkflowError):
    """A workflow failed validation. ``issues`` lists every problem found, not just the first."""

    def __init__(self, issues: Sequence[ValidationIssue]) -> None:
        self.issues = list(issues)
        body = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"workflow is invalid ({len(self.issues)} problem(s)):\n{body}")


class TemplateError(WorkflowError):
    """A template failed to render: an unresolved reference or a forbidden operation.

    The message names the step and the field.
    """


class StepFailedError(WorkflowError):
    """A step ended in failure; raised by ``run_sync(..., raise_on_failure=True)``."""


class BudgetExceeded(FlowyardError):
    """A call was not made because its estimated maximum cost would exceed a budget.

    Attributes:
        scope: ``"run"``, ``"step"`` or ``"agent"``.
        limit_usd: the budget, in US dollars.
        requested_usd: the reservation that did not fit, in US dollars.
    """

    def __init__(
        self,
        message: str,
        *,
        scope: str = "run",
        limit_usd: float = 0.0,
        requested_usd: float = 0.0,
    ) -> None:
        super().__init__(message)
        self.scope = scope
        self.limit_usd = limit_usd
        self.requested_usd = requested_usd


class CircuitOpenError(ProviderError):
    """Calls to a provider fail fast because its circuit breaker is open. Retriable later."""

    retriable = True


class WorkflowChangedError(WorkflowError):
    """Resuming a run was refused because the workflow's content hash changed since it started."""
