"""The context handed to tools and actions when a step runs them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from flowyard.models import Event

if TYPE_CHECKING:
    from flowyard.interfaces import Services

__all__ = ["ToolContext"]


@attrs.define
class ToolContext:
    """Where a tool call happens, and the services it may use.

    Args:
        stack: the services of the stack running the call (providers, memory, storage,
            events; a :class:`~flowyard.interfaces.Services`).
        run_id: the run ("" outside a run, e.g. a direct call in a test).
        step_id: the step id; step_key: the step key (with fan-out index / loop iteration).
        attempt: 1-based attempt number of the step.
        idempotency_key: stable across retries and resumes of the same step key; tools with
            side effects use it to make them happen once.
        workflow_name: the workflow of the run.
        workflow_source: the workflow's file, when it came from one (relative paths in
            arguments resolve against its folder).
        agent: the agent step's id when the call comes from an agent loop.
        budget: an opaque budget scope handle used by the LLM gateway (None: no budget).
        extras: free-form data for plugins.
        actor: who the run is for: the run metadata's ``actor`` (flowyard-server sets
            ``{"actor": "api_key:<id>", "tenant": ...}`` at submission; ``user`` and
            ``key_id`` keys are read too, see :func:`flowyard.llm.ratelimit.caller_keys`), or
            None. The LLM gateway applies the per-caller limits and budgets of
            ``[limits.<kind>]`` and ``[budgets.<kind>]`` to it
            (``docs/budgets-and-limits.md``).
    """

    stack: Services
    run_id: str = ""
    step_id: str | None = None
    step_key: str | None = None
    attempt: int = 1
    idempotency_key: str | None = None
    workflow_name: str = ""
    workflow_source: str | None = None
    agent: str | None = None
    budget: Any = None
    extras: dict[str, Any] = attrs.field(factory=dict)
    actor: Any = None

    @property
    def services(self) -> Services:
        """The stack's services (the same object as :attr:`stack`, by its protocol's name)."""
        return self.stack

    def emit(self, type: str, **data: Any) -> None:
        """Emit an event of ``type`` with ``data`` for this run and step."""
        self.stack.events.emit(Event(type=type, run_id=self.run_id, step_id=self.step_id,
                                     data=data))

    def add_usage(self, input_tokens: int, output_tokens: int, cost_usd: float | None) -> None:
        """Count tokens and cost (US dollars, None when unknown) spent outside this run's own
        LLM calls, such as a sub-workflow's run, into this step's totals (a ``step.usage``
        event).
        """
        self.emit("step.usage", input_tokens=input_tokens, output_tokens=output_tokens,
                  cost_usd=cost_usd)

    def log(self, message: str, level: str = "info") -> None:
        """Record a log line for this run and step (emitted as a ``log`` event)."""
        self.stack.events.emit(Event(type="log", run_id=self.run_id, step_id=self.step_id,
                                     data={"level": level, "message": message}))

    def progress(self, done: float, total: float | None = None, *, unit: str = "items",
                 description: str = "") -> None:
        """Report how far this call is (``done`` of ``total`` ``unit``), for live displays.

        Call it as often as is convenient (every item of a loop): the stack's event bus emits
        a ``step.progress`` event at most every 0.2 s per step key (plus the first report, a
        change of ``unit``/``description``/``total``, and reaching ``total``), only while a
        live display listens, and never stores it. See :meth:`flowyard.events.EventBus.progress`.

        Args:
            done: units done so far (a number >= 0).
            total: units in all, None when unknown.
            unit: what is counted, a plural noun (``"chunks"``).
            description: the current phase (``"embedding"``).

        Raises:
            ValueError: ``done`` or ``total`` is not a number >= 0.
        """
        self.stack.events.progress(self.run_id, self.step_id, self.step_key, done, total,
                                   unit=unit, description=description, attempt=self.attempt)

    def stream_text(self, delta: str, *, final: bool = False) -> None:
        """Report new text this call produced (a streamed answer), for live displays.

        Pieces are buffered and emitted as ``step.delta`` events at most every 0.2 s per step
        key, and flushed when ``final`` is True: call once with ``final=True`` when the text is
        complete (also after an error), so that nothing stays buffered. Not stored; the step's
        output is what the tool returns. See :meth:`flowyard.events.EventBus.text`.

        Raises:
            TypeError: ``delta`` is not a string.
        """
        self.stack.events.text(self.run_id, self.step_id, self.step_key, delta, final=final,
                               attempt=self.attempt)

    def child(self, **changes: Any) -> ToolContext:
        """Return a copy with ``changes`` applied (e.g. ``agent="researcher"``)."""
        return attrs.evolve(self, **changes)
