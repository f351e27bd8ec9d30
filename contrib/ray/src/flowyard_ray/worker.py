"""The remote side: what runs inside Ray's worker processes and actors.

Each worker process keeps one opened :class:`flowyard.Stack` per configuration (keyed by the
hash the driver computed), built from the configuration the :class:`flowyard.StepCall`
carries, plus the ``[ray] plugins`` given by import path. A call is made with
:func:`flowyard.invoke_tool` and a :class:`flowyard.ToolContext` of the run, step key and
attempt, as the local executor makes it; the events it emits there are collected and
returned in a :class:`flowyard.StepReply`.

Ray tasks run synchronously in their worker process; the stacks live on one event loop per
process, in a daemon thread, so storage connections and loaded models outlive a task. A
task cancelled with ``ray.cancel(force=False)`` gets a ``KeyboardInterrupt`` in its main
thread: the call's asyncio task is cancelled (the action sees the cancellation, like a
local step) and the interrupt is raised once it has stopped. Actors (:class:`StepActor`)
are async: Ray runs their calls on the actor's own event loop and cancels them as asyncio
tasks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import importlib
import os
import pickle
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import flowyard

#: the events of the call running in the current task (None outside a call)
_CALL_EVENTS: contextvars.ContextVar[list[flowyard.Event] | None] = contextvars.ContextVar(
    "flowyard_ray_call_events", default=None)
#: the run of the call running in the current task ("" outside a call)
_CALL_RUN: contextvars.ContextVar[str] = contextvars.ContextVar("flowyard_ray_call_run",
                                                               default="")
#: polling interval of a task's main thread while its call runs, seconds (how quickly a
#: ``ray.cancel`` interrupt is noticed; completion itself is not delayed by it)
_POLL_S = 0.05


def import_plugin(reference: str) -> object:
    """Import a plugin object from ``"package.module"`` or ``"package.module:attribute"``.

    Raises:
        ConfigError: the module or attribute cannot be imported (message names it).
    """
    module_name, _, attribute = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attribute) if attribute else module
    except (ImportError, AttributeError) as exc:
        raise flowyard.ConfigError(f"[ray] plugins: cannot import {reference!r} on the Ray "
                                   f"worker ({exc}); is it installed on every node?") from exc


class Worker:
    """The stacks of one worker process, and the call loop that uses them."""

    def __init__(self) -> None:
        self._stacks: dict[str, flowyard.Stack] = {}
        self._lock: asyncio.Lock | None = None

    async def stack(self, key: str, config: Mapping[str, Any]) -> flowyard.Stack:
        """Return the opened stack for the configuration ``config`` (hashed as ``key``),
        building and opening it on first use.

        Raises:
            ConfigError: a ``[ray] plugins`` entry cannot be imported.
            StorageError: the configured storage cannot be opened from this worker.
        """
        stack = self._stacks.get(key)
        if stack is not None:
            return stack
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            stack = self._stacks.get(key)
            if stack is None:
                ray_section = config.get("ray", {}) if isinstance(config, Mapping) else {}
                plugins = [import_plugin(str(ref)) for ref in ray_section.get("plugins", ())]
                discover = ray_section.get("discover", True) is not False
                # steps of sub-workflows run in place here, unless they name an executor
                data = {**config, "engine": {**config.get("engine", {}), "executor": "local"}}
                stack = flowyard.Stack(plugins, config=flowyard.Config(data),
                                       discover=discover)
                _own_bus(stack)
                await stack.open()
                self._stacks[key] = stack
        return stack

    async def run(self, call: flowyard.StepCall, key: str, config: Mapping[str, Any]
                  ) -> flowyard.StepReply:
        """Make the call on this process's stack for ``config`` and return its reply.

        Args:
            call: the attempt (its ``config`` is empty; the configuration comes apart).
            key: the configuration's hash, the stack cache key.
            config: the stack's configuration.

        Returns:
            the reply: output or error (an unpicklable error is replaced by a
            :class:`flowyard.ToolError` with its type and message), and the events.
        """
        stack = await self.stack(key, config)
        tool = stack.tools.get(call.tool)
        budget = None
        if call.budget_usd is not None:
            budget = flowyard.BudgetChain.of([flowyard.Budget(
                call.budget_usd, scope="step", name=f"{call.step_key} (slice on Ray)")])
        ctx = flowyard.ToolContext(
            stack, call.run_id, call.step_id, call.step_key, call.attempt,
            call.idempotency_key, call.workflow_name, call.workflow_source,
            budget=budget, actor=call.actor)
        events: list[flowyard.Event] = []
        token = _CALL_EVENTS.set(events)
        run_token = _CALL_RUN.set(call.run_id)
        try:
            output = await flowyard.invoke_tool(ctx, tool, call.arguments,
                                                validated=call.validated)
            return flowyard.StepReply(output=output, events=tuple(events),
                                      cost_usd=_cost(events))
        except Exception as exc:  # noqa: BLE001 - returned with its events, raised by the driver
            return flowyard.StepReply(error=_picklable(exc), events=tuple(events),
                                      cost_usd=_cost(events))
        finally:
            _CALL_RUN.reset(run_token)
            _CALL_EVENTS.reset(token)


def _own_bus(stack: flowyard.Stack) -> None:
    """Give ``stack`` a new event bus where the events of a call's own run go only to the
    call (:func:`_collect`), to be emitted by the driver, while the stack's listeners (audit,
    metrics, traces...) still see every other run's events, such as a sub-workflow's.
    Otherwise a listener writing to shared storage (the audit log) would record a call's
    events twice: here and in the driver.
    """
    bus = type(stack.events)()
    bus.subscribe(_collect, name="flowyard-ray.collector")
    for name in stack.listeners.names():
        bus.subscribe(_not_the_calls(stack.listeners.get(name)), name=name)
    stack.events = bus


def _not_the_calls(listener: Callable[[flowyard.Event], None]
                   ) -> Callable[[flowyard.Event], None]:
    def deliver(event: flowyard.Event) -> None:
        if event.run_id != _CALL_RUN.get():
            listener(event)

    return deliver


def _collect(event: flowyard.Event) -> None:
    events = _CALL_EVENTS.get()
    if events is not None and event.run_id and event.run_id == _CALL_RUN.get():
        events.append(event)


def _cost(events: list[flowyard.Event]) -> float:
    total = 0.0
    for event in events:
        if event.type == "llm.call" and event.data.get("cost_usd") is not None:
            total += float(event.data["cost_usd"])
    return total


def _picklable(exc: BaseException) -> BaseException:
    """``exc`` when it survives pickling, else a ToolError naming its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any failure to round-trip means it cannot travel
        return flowyard.ToolError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}")


# ----------------------------------------------------------------------------- tasks

_WORKER = Worker()
_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def _loop() -> asyncio.AbstractEventLoop:
    """The process's call loop, running in a daemon thread (started on first use)."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="flowyard-ray-loop",
                             daemon=True).start()
            _LOOP = loop
        return _LOOP


def _run_on_loop(make: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``make()`` on the process's call loop and return its result; a
    ``KeyboardInterrupt`` (``ray.cancel``) cancels it, waits for it to stop, and re-raises.
    """
    done = threading.Event()

    async def wrapper() -> Any:
        try:
            return await make()
        finally:
            done.set()

    future = asyncio.run_coroutine_threadsafe(wrapper(), _loop())
    try:
        while True:
            try:
                return future.result(timeout=_POLL_S)
            except concurrent.futures.TimeoutError:
                continue
    except KeyboardInterrupt:
        future.cancel()
        done.wait()
        raise


def run_step_task(call: flowyard.StepCall, key: str, config: Mapping[str, Any]
                  ) -> flowyard.StepReply:
    """The Ray task of a stateless step: make ``call`` in this worker process.

    Args:
        call: the attempt; key: the configuration's hash; config: the configuration.

    Returns:
        the :class:`flowyard.StepReply`.
    """
    return _run_on_loop(lambda: _WORKER.run(call, key, config))  # type: ignore[no-any-return]


def run_action_task(action: Callable[[], Awaitable[Any]]) -> Any:
    """The Ray task of :meth:`RayExecutor.execute`: await ``action()`` (shipped by
    cloudpickle) here and return ``("ok", result)`` or ``("error", exception)``.
    """
    try:
        return ("ok", _run_on_loop(action))
    except Exception as exc:  # noqa: BLE001 - returned, raised unchanged by the caller
        return ("error", _picklable(exc))


class StepActor:
    """An async Ray actor for steps that keep state (a loaded local model): its stacks,
    and what their plugins load, stay in one process across calls.
    """

    def __init__(self) -> None:
        self._worker = Worker()

    async def run(self, call: flowyard.StepCall, key: str, config: Mapping[str, Any]
                  ) -> flowyard.StepReply:
        """Make ``call`` on this actor's stack; see :meth:`Worker.run`."""
        return await self._worker.run(call, key, config)

    def where(self) -> dict[str, Any]:
        """Return ``{"pid", "node_id"}`` of this actor (for tests and diagnostics)."""
        import ray  # lazy: only inside a Ray worker

        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}
