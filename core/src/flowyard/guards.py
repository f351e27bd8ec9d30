"""Guards: checks that run before a tool call or a model call and may allow, deny or redact.

A guard is an object registered through the ``register_guards`` hook (family ``guards``)
with a ``name``, the ``stages`` it looks at and an async ``check(request)`` returning a
:class:`GuardVerdict` (or None: allow). The stages, and their single choke points:

``inputs``        a workflow's inputs, once they passed the workflow's own checks, before the
                  run is created (:func:`flowyard.engine.run_workflow`); payload: the inputs.
``tool``          every tool call, of a step or of an agent, before the tool runs
                  (:func:`flowyard.engine.calls.invoke_tool`); payload: the arguments.
``tool_output``   a tool's result, before the step or the agent sees it; payload: the result.
``model``         every chat or stream call of the LLM gateway, before the provider is called;
                  payload: the messages (a list of :class:`~flowyard.models.Message`).
``model_output``  a chat reply's message, or each streamed chunk's text; payload: the
                  :class:`~flowyard.models.Message` (streams: the chunk's ``delta`` string).

Guards of a stage run in the order of their names. A denial stops the call: it emits a
``guard.denied`` event with data ``{"guard", "target", "reason", "step_id"}`` (target: the
tool name, the model reference or the workflow name) and raises :class:`GuardDenied` (a
:class:`~flowyard.errors.ToolError`, so an agent sees ``denied by guard X: reason`` as its
tool's result and can continue; a workflow step fails with it). A redaction replaces the
payload for the next guards and for the call, and emits ``guard.redacted`` with data
``{"guard", "target", "stage", "kinds", "step_id"}`` (the kinds found, never the text).

With no guard registered (no ``[guards]`` configuration and no plugin guard) every stage is a
length check: nothing is allowed or denied, today's behaviour. The first-party guards
(:mod:`flowyard.builtin.guards`) come from the ``[guards]`` table; see ``docs/guards.md``.

Tools name their egress-relevant arguments with an ``egress`` attribute (a mapping
``argument name -> kind``, kinds ``"url"``, ``"command"``, ``"read"``, ``"write"``,
``"code"``); a tool that reaches further on its own (a redirect) asks again with
:func:`check_egress`.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import attrs

from flowyard.errors import ToolError
from flowyard.models import Event

if TYPE_CHECKING:
    from flowyard.context import ToolContext
    from flowyard.interfaces import Services

__all__ = ["Guard", "GuardDenied", "GuardRequest", "GuardVerdict", "GuardSet", "STAGES",
           "EGRESS_KINDS", "guard_set", "check_egress", "egress_of"]

Stage = Literal["inputs", "tool", "tool_output", "model", "model_output", "egress"]

#: The stages a guard may look at (``egress``: a tool asking again with :func:`check_egress`).
STAGES: frozenset[str] = frozenset({"inputs", "tool", "tool_output", "model", "model_output",
                                    "egress"})

#: The kinds of an egress declaration (``tool.egress``: ``argument name -> kind``).
EGRESS_KINDS: frozenset[str] = frozenset({"url", "command", "read", "write", "code"})


class GuardDenied(ToolError):
    """A guard denied a call; the message is ``denied by guard <name>: <reason>``.

    Args:
        guard: the guard's registered name.
        target: the tool name, model reference or workflow name.
        reason: the guard's reason.
        tool: the tool name for tool calls (None for model calls and inputs).
    """

    def __init__(self, guard: str, target: str, reason: str, *, tool: str | None = None
                 ) -> None:
        super().__init__(f"denied by guard {guard}: {reason}", tool=tool, retriable=False)
        self.guard = guard
        self.target = target
        self.reason = reason


@attrs.frozen
class GuardVerdict:
    """What a guard decided.

    Args:
        action: ``"allow"``, ``"deny"`` or ``"redact"``.
        reason: why (required for a denial; shown to the agent and the audit log).
        payload: the replacement payload of a redaction.
        kinds: what a redaction found (``["email", "api_key"]``), for the event.
    """

    action: Literal["allow", "deny", "redact"]
    reason: str = ""
    payload: Any = None
    kinds: tuple[str, ...] = ()

    @classmethod
    def allow(cls) -> GuardVerdict:
        """Return an allowing verdict.

        Returns:
            the verdict.
        """
        return _ALLOW

    @classmethod
    def deny(cls, reason: str) -> GuardVerdict:
        """Return a denial with ``reason``.

        Args:
            reason: why the call is refused (non-empty).

        Returns:
            the verdict.

        Raises:
            ValueError: the reason is empty.
        """
        if not reason:
            raise ValueError("a guard denial needs a reason")
        return cls("deny", reason)

    @classmethod
    def redact(cls, payload: Any, kinds: Sequence[str] = ()) -> GuardVerdict:
        """Return a redaction replacing the payload with ``payload``.

        Args:
            payload: the payload to use instead (same shape as the request's).
            kinds: what was redacted, for the ``guard.redacted`` event.

        Returns:
            the verdict.
        """
        return cls("redact", payload=payload, kinds=tuple(kinds))


_ALLOW = GuardVerdict("allow")


@attrs.frozen
class GuardRequest:
    """One thing a guard is asked about.

    Args:
        stage: one of :data:`STAGES`.
        target: the tool name, model reference or workflow name.
        payload: what is checked (see the module docstring per stage).
        context: the calling step's context (None for a model call outside a step).
        tool: the tool object for ``tool``/``tool_output``/``egress`` stages.
        egress: for ``egress``: ``(kind, value)`` asked by the tool (a redirect's URL).
    """

    stage: str
    target: str
    payload: Any
    context: ToolContext | None = None
    tool: Any = None
    egress: tuple[str, str] | None = None


@runtime_checkable
class Guard(Protocol):
    """A guard (registered by ``register_guards``).

    Attributes:
        stages: the stages it checks (a subset of :data:`STAGES`); it is not called for
            the others.
    """

    stages: frozenset[str]

    async def check(self, request: GuardRequest) -> GuardVerdict | None:
        """Decide on ``request``.

        Args:
            request: the stage, target and payload.

        Returns:
            a verdict, or None to allow.
        """
        ...


def egress_of(tool: Any) -> Mapping[str, str]:
    """Return a tool's egress declaration (``argument name -> kind``; empty when none).

    Args:
        tool: a tool object.

    Returns:
        the ``egress`` mapping.

    Raises:
        TypeError: the declaration is not a mapping of argument names to known kinds.
    """
    declared = getattr(tool, "egress", None)
    if declared is None:
        return {}
    if not isinstance(declared, Mapping) or not all(
            isinstance(k, str) and v in EGRESS_KINDS for k, v in declared.items()):
        raise TypeError(f"tool {getattr(tool, 'name', tool)!r}: egress must map argument names "
                        f"to {sorted(EGRESS_KINDS)}, got {declared!r}")
    return declared


class GuardSet:
    """The guards of a stack, by stage, and how a call passes through them.

    Args:
        guards: ``(name, guard)`` pairs in registration order.
        services: the stack's services (for events outside a step).

    Raises:
        TypeError: a guard has no ``stages``/``check`` or names an unknown stage.
    """

    def __init__(self, guards: Sequence[tuple[str, Any]], services: Services) -> None:
        self.services = services
        self.names = [name for name, _ in guards]
        self.by_stage: dict[str, list[tuple[str, Any]]] = {}
        for name, guard in guards:
            stages = getattr(guard, "stages", None)
            if not callable(getattr(guard, "check", None)) or not stages:
                raise TypeError(f"guard {name!r} must have stages and an async check(request)")
            unknown = set(stages) - STAGES
            if unknown:
                raise TypeError(f"guard {name!r}: unknown stage(s) {sorted(unknown)}; stages: "
                                f"{sorted(STAGES)}")
            for stage in stages:
                self.by_stage.setdefault(stage, []).append((name, guard))

    def __bool__(self) -> bool:
        return bool(self.by_stage)

    def has(self, stage: str) -> bool:
        """Return True when some guard checks ``stage``.

        Args:
            stage: one of :data:`STAGES`.

        Returns:
            whether the stage is guarded.
        """
        return stage in self.by_stage

    async def apply(self, stage: str, target: str, payload: Any, context: ToolContext | None,
                    *, tool: Any = None, egress: tuple[str, str] | None = None) -> Any:
        """Run the stage's guards on ``payload``; return it, redacted where a guard said so.

        Args:
            stage: one of :data:`STAGES`.
            target: the tool name, model reference or workflow name.
            payload: what is checked.
            context: the calling step's context, or None.
            tool: the tool object (tool stages).
            egress: ``(kind, value)`` for the ``egress`` stage.

        Returns:
            the payload to use.

        Raises:
            GuardDenied: a guard denied it (after the ``guard.denied`` event).
            TypeError: a guard returned something else than a verdict or None.
        """
        for name, guard in self.by_stage.get(stage, ()):
            verdict = await guard.check(GuardRequest(stage, target, payload, context, tool,
                                                     egress))
            if verdict is None or verdict.action == "allow":
                continue
            if not isinstance(verdict, GuardVerdict):
                raise TypeError(f"guard {name!r} returned {verdict!r}, not a GuardVerdict")
            if verdict.action == "deny":
                self._emit(context, "guard.denied", guard=name, target=target,
                           reason=verdict.reason)
                tool_name = target if stage in ("tool", "tool_output", "egress") else None
                raise GuardDenied(name, target, verdict.reason, tool=tool_name)
            payload = verdict.payload
            self._emit(context, "guard.redacted", guard=name, target=target, stage=stage,
                       kinds=list(verdict.kinds))
        return payload

    def _emit(self, context: ToolContext | None, type: str, **data: Any) -> None:
        step_id = context.step_id if context is not None else None
        run_id = context.run_id if context is not None else ""
        self.services.events.emit(Event(type=type, run_id=run_id, step_id=step_id,
                                        data={**data, "step_id": step_id}))


_EMPTY_KEY = -1
_SETS: weakref.WeakKeyDictionary[Any, tuple[int, GuardSet]] = weakref.WeakKeyDictionary()


def guard_set(services: Services) -> GuardSet | None:
    """Return the guards of a stack, or None when it has none (the fast path).

    Built once per registry (again when guards were registered since).

    Args:
        services: the stack's services.

    Returns:
        the :class:`GuardSet`, or None.

    Raises:
        TypeError: a registered guard is malformed.
    """
    registry = services.guards
    if not len(registry):
        return None
    cached = _SETS.get(registry)
    if cached is not None and cached[0] == len(registry):
        return cached[1]
    built = GuardSet([(name, registry.get(name)) for name in registry.names()], services)
    _SETS[registry] = (len(registry), built)
    return built


async def check_egress(context: ToolContext, tool: Any, kind: str, value: str) -> None:
    """Ask the stack's guards whether ``tool`` may reach ``value`` (a tool's own further hop,
    such as a redirect of ``web.fetch``); no-op without guards.

    Args:
        context: the call's context.
        tool: the tool object (its ``name`` is the target).
        kind: one of :data:`EGRESS_KINDS`.
        value: the URL, command, or path.

    Raises:
        GuardDenied: a guard denied it.
        ValueError: unknown kind.
    """
    if kind not in EGRESS_KINDS:
        raise ValueError(f"unknown egress kind {kind!r}; kinds: {sorted(EGRESS_KINDS)}")
    guards = guard_set(context.stack)
    if guards is None or not guards.has("egress"):
        return
    await guards.apply("egress", tool.name, value, context, tool=tool, egress=(kind, value))
