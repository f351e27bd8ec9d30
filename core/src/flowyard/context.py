"""The context handed to tools and actions when a step runs them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from flowyard.models import Event

if TYPE_CHECKING:
    from flowyard.stack import Stack

__all__ = ["ToolContext"]


@attrs.define
class ToolContext:
    """Where a tool call happens, and the services it may use.

    Args:
        stack: the stack running the call (providers, memory, storage, events).
        run_id: the run ("" outside a run, e.g. a direct call in a test).
        step_id: the step id; step_key: the step key (with fan-out index / loop iteration).
        attempt: 1-based attempt number of the step.
        idempotency_key: stable across retries and resumes of the same step key; tools with
            side effects use it to make them happen once.
        workflow_name: the workflow of the run.
        agent: the agent step's id when the call comes from an agent loop.
        budget: an opaque budget scope handle used by the LLM gateway (None: no budget).
        extras: free-form data for plugins.
    """

    stack: Stack
    run_id: str = ""
    step_id: str | None = None
    step_key: str | None = None
    attempt: int = 1
    idempotency_key: str | None = None
    workflow_name: str = ""
    agent: str | None = None
    budget: Any = None
    extras: dict[str, Any] = attrs.field(factory=dict)

    def emit(self, type: str, **data: Any) -> None:
        """Emit an event of ``type`` with ``data`` for this run and step."""
        self.stack.events.emit(Event(type=type, run_id=self.run_id, step_id=self.step_id,
                                     data=data))

    def log(self, message: str, level: str = "info") -> None:
        """Record a log line for this run and step (emitted as a ``log`` event)."""
        self.stack.events.emit(Event(type="log", run_id=self.run_id, step_id=self.step_id,
                                     data={"level": level, "message": message}))

    def child(self, **changes: Any) -> ToolContext:
        """Return a copy with ``changes`` applied (e.g. ``agent="researcher"``)."""
        return attrs.evolve(self, **changes)
