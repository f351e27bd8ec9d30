"""Context propagation into outgoing requests, without a tracing dependency in the core.

Two small pieces, both exported from ``flowyard``:

- **the current step**: the engine records, for the task (and the worker threads it starts)
  that executes a step attempt, which run, step key and attempt that is
  (:func:`current_step`). Code running inside a step (a provider's HTTP request) can ask.
- **outgoing header injectors**: a process-wide list of functions that add headers to an
  outgoing request (:func:`add_header_injector`). Libraries that send requests on behalf of a
  step (``flowyard-http``'s providers) call :func:`outgoing_headers` once per request and send
  what it returns. A tracing plugin (``flowyard-otel``) registers an injector that adds the
  W3C ``traceparent`` of the current step's attempt span.

With no injector registered, :func:`outgoing_headers` returns an empty dict after one length
check. An injector that raises is logged (logger ``flowyard.propagation``) and the request is
sent without its headers: tracing must never break a call.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Mapping, MutableMapping
from typing import NamedTuple

__all__ = ["StepScope", "HeaderInjector", "add_header_injector", "outgoing_headers",
           "current_step", "enter_step", "leave_step"]

log = logging.getLogger("flowyard.propagation")


class StepScope(NamedTuple):
    """The step attempt the current task executes.

    Attributes:
        run_id: the run's id.
        step_id: the step's id.
        step_key: the step key (``id``, ``id[i]`` for a fan-out item, ``id#n`` for a loop turn).
        attempt: the attempt number of this step key, from 1.
    """

    run_id: str
    step_id: str
    step_key: str
    attempt: int


#: Adds headers to an outgoing request: called with the request's header mapping (to update).
HeaderInjector = Callable[[MutableMapping[str, str]], None]

_SCOPE: contextvars.ContextVar[StepScope | None] = contextvars.ContextVar(
    "flowyard_step_scope", default=None)
_INJECTORS: list[HeaderInjector] = []


def current_step() -> StepScope | None:
    """Return the step attempt the current task (or worker thread) executes.

    Returns:
        the :class:`StepScope`, or None outside a step attempt.
    """
    return _SCOPE.get()


def enter_step(scope: StepScope) -> contextvars.Token[StepScope | None]:
    """Mark the current task as executing ``scope`` (called by the engine).

    Args:
        scope: the run, step, step key and attempt.

    Returns:
        the token that ``_SCOPE.reset`` takes (see :func:`leave_step`).
    """
    return _SCOPE.set(scope)


def leave_step(token: contextvars.Token[StepScope | None]) -> None:
    """Undo :func:`enter_step` (called by the engine).

    Args:
        token: what :func:`enter_step` returned.
    """
    _SCOPE.reset(token)


def add_header_injector(injector: HeaderInjector) -> Callable[[], None]:
    """Register a function that adds headers to every outgoing request.

    Args:
        injector: called with a mutable header mapping by :func:`outgoing_headers`.

    Returns:
        a function that removes the injector again (safe to call twice).
    """
    _INJECTORS.append(injector)

    def remove() -> None:
        if injector in _INJECTORS:
            _INJECTORS.remove(injector)

    return remove


def outgoing_headers(headers: Mapping[str, str] | None = None) -> Mapping[str, str] | None:
    """Return ``headers`` plus what the registered injectors add.

    Args:
        headers: the request's own headers (kept; an injector may not remove them).

    Returns:
        ``headers`` itself (possibly None, not copied) when no injector is registered or
        none added anything, else a new dict with the injected headers added (the request's
        own headers win over injected ones of the same name).
    """
    if not _INJECTORS:
        return headers
    added: dict[str, str] = {}
    for injector in tuple(_INJECTORS):
        try:
            injector(added)
        except Exception:
            log.exception("outgoing header injector %r failed; request sent without it",
                          injector)
    if not added:
        return headers
    return {**added, **(headers or {})}
