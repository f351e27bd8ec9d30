"""Workers of the durable task queue (inside ``flowyard serve`` and as ``flowyard worker``).

A worker claims the next task from the storage's queue
(:class:`~flowyard.SupportsTaskQueue`: highest priority first, then oldest; or a running task
whose lease expired because its worker died), runs it, renews the task's lease every
``task_renew_interval`` seconds while it runs, and records its end with ``finish_task``.

A task's run id is chosen at submission. The first worker starts the run with that id; a
worker that takes over an abandoned task finds the run stored and resumes it
(``stack.resume``), so the steps that completed are not run again. A run still held by a live
process (its run lease) is waited for, never run twice at once.

With ``stream_deltas`` on, the worker relays the transient events of its runs (token deltas,
progress) through the storage to the SSE streams of every server process
(:class:`~flowyard_server.live.DeltaRelay`); a run's last events are written before its task's
end is recorded.

The run stops when the task's ``cancel_requested`` is set (the task ends ``cancelled``) or
when the worker loses the task's lease (another worker took it over; nothing is recorded).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

import anyio
from flowyard import (
    RunNotFoundError,
    Stack,
    StorageError,
    SupportsTaskQueue,
    TaskRecord,
    new_id,
    run_state,
)

from flowyard_server.live import DeltaRelay
from flowyard_server.settings import ServerSettings

__all__ = ["Worker", "AGENTS_NAMESPACE", "WORKFLOWS_NAMESPACE", "REGISTERED_SOURCE_NAME",
           "agent_workflow", "load_task_workflow", "registered_source", "task_workflow",
           "queue_of"]

log = logging.getLogger("flowyard_server.worker")

#: Key-value namespaces of a tenant's stored agents and registered workflows (``+ tenant``).
AGENTS_NAMESPACE = "server.agents."
WORKFLOWS_NAMESPACE = "server.workflows."


def queue_of(stack: Stack) -> SupportsTaskQueue:
    """Return the stack's storage as a task queue.

    Raises:
        StorageError: the backend does not implement :class:`~flowyard.SupportsTaskQueue`.
    """
    storage = stack.storage
    if not isinstance(storage, SupportsTaskQueue):
        raise StorageError(f"the storage backend {type(storage).__name__} ({stack.storage_url()})"
                           " has no task queue (SupportsTaskQueue); flowyard-server needs one")
    return storage


def agent_workflow(agent: dict[str, Any]) -> dict[str, Any]:
    """The one-step workflow that runs a stored agent on ``inputs.input``.

    Args:
        agent: the stored agent (``id``, ``model``, ``instructions``, ``tools``, ``metadata``;
            ``metadata.max_turns`` and ``metadata.budget_usd`` are passed on when set).

    Returns:
        a workflow definition with one input ``input`` and the outputs ``answer``, ``turns``.
    """
    settings: dict[str, Any] = {"prompt": "${inputs.input}", "tools": list(agent["tools"])}
    if agent.get("model"):
        settings["model"] = agent["model"]
    if agent.get("instructions"):
        settings["instructions"] = agent["instructions"]
    for key in ("max_turns", "budget_usd"):
        if key in agent.get("metadata", {}):
            settings[key] = agent["metadata"][key]
    return {
        "name": f"agent-{agent['id']}",
        "inputs": {"input": {"type": "string"}},
        "steps": [{"id": "agent", "uses": "agent", "with": settings}],
        "outputs": {"answer": "${agent.answer}", "turns": "${agent.turns}"},
    }


#: The file name (never read) of a registered workflow's ``source``: its directory is what
#: relative ``uses: workflow`` paths resolve against.
REGISTERED_SOURCE_NAME = "<registered workflow>"


def registered_source(workflows_dir: str | os.PathLike[str]) -> str:
    """The ``source`` given to workflows registered with the server: a name in the absolute
    ``workflows_dir`` that no file has, so relative sub-workflow paths resolve against that
    directory and nothing reads the name itself as a file.
    """
    return os.path.join(os.path.abspath(workflows_dir), REGISTERED_SOURCE_NAME)


async def load_task_workflow(stack: Stack, task: TaskRecord) -> Any:
    """Return the :class:`~flowyard.workflow.Workflow` a task runs (see
    :func:`task_workflow`), with the ``source`` stored at registration so that relative
    ``uses: workflow`` paths resolve against the server's ``workflows_dir``.

    Raises:
        LookupError: the workflow or agent is not (any more) stored for the task's tenant.
        WorkflowValidationError: the stored definition does not parse.
    """
    from flowyard import parse_workflow

    definition = await task_workflow(stack, task)
    source = None
    if task.kind == "workflow":
        entry = await stack.storage.kv_get(WORKFLOWS_NAMESPACE + task.tenant, task.target)
        source = entry.get("source") if isinstance(entry, dict) else None
    return parse_workflow(definition, source=source if isinstance(source, str) else None)


async def task_workflow(stack: Stack, task: TaskRecord) -> dict[str, Any]:
    """Return the workflow definition a task runs: the tenant's registered workflow named
    ``task.target``, or the one-step workflow of its stored agent.

    Raises:
        LookupError: the workflow or agent is not (any more) stored for the task's tenant.
    """
    if task.kind == "agent":
        agent = await stack.storage.kv_get(AGENTS_NAMESPACE + task.tenant, task.target)
        if agent is None:
            raise LookupError(f"agent {task.target} does not exist")
        return agent_workflow(agent)
    entry = await stack.storage.kv_get(WORKFLOWS_NAMESPACE + task.tenant, task.target)
    if entry is None:
        raise LookupError(f"workflow {task.target!r} is not registered")
    return dict(entry["definition"])


class Worker:
    """Claims tasks from the stack's queue and runs up to ``concurrency`` of them at once.

    Args:
        stack: an open stack whose storage implements :class:`~flowyard.SupportsTaskQueue`.
        settings: ``concurrency``, ``task_lease_timeout``, ``task_renew_interval`` and
            ``poll_interval`` are used.
        name: the worker's id in task records (default: host, pid and a random suffix).

    Attributes:
        running: ids of the tasks running now.
        finished: counts of the tasks this worker ended, by status.
        relay: the relay of its runs' transient events (None when ``stream_deltas`` is off).
    """

    def __init__(self, stack: Stack, settings: ServerSettings, *, name: str | None = None
                 ) -> None:
        self.stack = stack
        self.settings = settings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{new_id()[:8]}"
        self.running: set[str] = set()
        self.finished: dict[str, int] = {"completed": 0, "failed": 0, "cancelled": 0}
        self.started = False
        self._wake = anyio.Event()
        self.relay = (DeltaRelay(stack.storage, writer=self.name,
                                 interval=settings.relay_interval)
                      if settings.stream_deltas else None)

    def wake(self) -> None:
        """Look for a task now instead of after the poll interval (a task was submitted)."""
        self._wake.set()

    async def run(self) -> None:
        """Claim and run tasks until cancelled.

        Raises:
            StorageError: the storage has no task queue.
        """
        queue = queue_of(self.stack)
        limiter = anyio.Semaphore(self.settings.concurrency)
        self.started = True
        if self.relay is not None:
            self.relay.storage = self.stack.storage
            self.relay.attach(self.stack)
        try:
            async with anyio.create_task_group() as tg:
                if self.relay is not None:
                    tg.start_soon(self.relay.run)
                if self.settings.human_expiry_interval > 0:
                    tg.start_soon(self._expire_waiting)
                while True:
                    await limiter.acquire()
                    try:
                        task = await queue.claim_task(
                            self.name, now=time.time(),
                            lease_timeout=self.settings.task_lease_timeout)
                    except StorageError:
                        limiter.release()
                        log.exception("worker %s could not claim a task", self.name)
                        task = None
                        await anyio.sleep(self.settings.poll_interval)
                        continue
                    if task is None:
                        limiter.release()
                        with anyio.move_on_after(self.settings.poll_interval):
                            await self._wake.wait()
                        self._wake = anyio.Event()
                        continue
                    tg.start_soon(self._execute_released, task, limiter)
        finally:
            self.started = False
            if self.relay is not None:
                self.relay.detach()

    async def _expire_waiting(self) -> None:
        """Every ``human_expiry_interval`` seconds: give the human steps whose ``timeout_s``
        passed their default outcome (``stack.expire_waiting``) and queue their runs' tasks
        again once they ended, so a worker resumes the runs (a task still recording its end
        is queued at a later look). Storage errors are logged and tried next time.
        """
        queue = queue_of(self.stack)
        pending: set[str] = set()  # tasks of expired runs, to queue again once ended
        while True:
            await anyio.sleep(self.settings.human_expiry_interval)
            try:
                expired = await self.stack.expire_waiting(resume=False)
                for run_id in dict.fromkeys(run for run, _key in expired):
                    record = await self.stack.storage.get_run(run_id)
                    task_id = record.metadata.get("task_id")
                    if isinstance(task_id, str):
                        pending.add(task_id)
                requeued = False
                for task_id in sorted(pending):
                    task = await queue.get_task(task_id)
                    if task.status == "failed":  # a cancelled task stays cancelled
                        await queue.retry_task(task_id)
                        requeued = True
                    if task.status in ("failed", "cancelled", "completed"):
                        pending.discard(task_id)
                if requeued:
                    self.wake()
            except (StorageError, LookupError):
                log.exception("worker %s could not expire waiting human steps", self.name)

    async def _execute_released(self, task: TaskRecord, limiter: anyio.Semaphore) -> None:
        try:
            await self.execute(task)
        finally:
            limiter.release()

    async def execute(self, task: TaskRecord) -> str | None:
        """Run one claimed task to its end and record it.

        Returns:
            the status recorded (``completed``, ``failed``, ``cancelled``), or None when the
            lease was lost (another worker owns the task now) or the end could not be
            recorded.
        """
        queue = queue_of(self.stack)
        flags = {"lost": False, "cancel": False}
        outcome: dict[str, Any] = {}
        self.running.add(task.id)
        log.info("worker %s runs task %s (attempt %d, run %s)", self.name, task.id,
                 task.attempts, task.run_id)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._heartbeat, task, tg.cancel_scope, flags)
                try:
                    outcome["result"] = await self._run(task, tg.cancel_scope, flags)
                except Exception as exc:  # noqa: BLE001 - recorded as the task's failure
                    log.warning("task %s failed: %s: %s", task.id, type(exc).__name__, exc)
                    outcome["error"] = f"{type(exc).__name__}: {exc}"
                tg.cancel_scope.cancel()
            if flags["lost"]:
                log.warning("worker %s lost the lease of task %s; another worker has it",
                            self.name, task.id)
                return None
            if flags["cancel"]:
                status, outputs, error = "cancelled", {}, "cancelled on request"
            elif "error" in outcome:
                status, outputs, error = "failed", {}, outcome["error"]
            else:
                result = outcome["result"]
                outputs = dict(result.outputs)
                status = "completed" if result.status == "completed" else (
                    "cancelled" if result.status == "cancelled" else "failed")
                error = None if status == "completed" else (
                    result.error or f"the run ended {result.status}")
                if result.status == "waiting":  # the task queue has no waiting state
                    error = (f"the run is waiting for a human answer (steps: "
                             f"{', '.join(_waiting_steps(result))}); answering it (POST "
                             f"/v1/runs/{task.run_id}/steps/STEP/answer) queues this task "
                             "again")
            await self._flush_relay(task.run_id)
            try:
                with anyio.CancelScope(shield=True):
                    written = await queue.finish_task(task.id, self.name, status=status,
                                                      outputs=outputs, error=error,
                                                      now=time.time())
            except StorageError:
                # the lease expires and another worker records the end (the run is stored)
                log.exception("worker %s could not record the end of task %s", self.name,
                              task.id)
                return None
            if not written:
                log.warning("task %s was taken over before its end could be recorded", task.id)
                return None
            self.finished[status] += 1
            return status
        finally:
            self.running.discard(task.id)

    async def _flush_relay(self, run_id: str) -> None:
        """Write the run's last relayed events before its end is recorded (streams that see
        the end read them once more), then drop this worker's copy.
        """
        if self.relay is None:
            return
        try:
            with anyio.CancelScope(shield=True):
                await self.relay.flush(run_id)
        except StorageError:
            log.exception("worker %s could not relay the last events of run %s", self.name,
                          run_id)
        self.relay.forget(run_id)

    async def _heartbeat(self, task: TaskRecord, scope: anyio.CancelScope,
                         flags: dict[str, bool]) -> None:
        queue = queue_of(self.stack)
        while True:
            await anyio.sleep(self.settings.task_renew_interval)
            try:
                record = await queue.renew_task(task.id, self.name, now=time.time(),
                                                lease_timeout=self.settings.task_lease_timeout)
            except StorageError:
                log.exception("worker %s could not renew the lease of task %s", self.name,
                              task.id)
                continue  # the lease may still be valid; the next renewal tries again
            if record is None:
                flags["lost"] = True
                scope.cancel()
                return
            if record.cancel_requested:
                flags["cancel"] = True
                scope.cancel()
                return

    async def _run(self, task: TaskRecord, scope: anyio.CancelScope,
                   flags: dict[str, bool]) -> Any:
        current = await queue_of(self.stack).get_task(task.id)
        if current.cancel_requested:
            flags["cancel"] = True
            scope.cancel()
            await anyio.sleep(0)
        storage = self.stack.storage
        try:
            record = await storage.get_run(task.run_id)
        except RunNotFoundError:
            workflow = await load_task_workflow(self.stack, task)
            return await self.stack.run(workflow, task.inputs, run_id=task.run_id,
                                        metadata=_run_metadata(task))
        while True:  # a live process still executes the run: wait for it to stop
            leases = await storage.get_leases([record.id])
            if run_state(record, leases.get(record.id)) != "running":
                break
            await anyio.sleep(min(1.0, self.settings.task_renew_interval))
            record = await storage.get_run(record.id)
        if record.status == "completed":
            return _Stored(record)
        source = record.metadata.get("source")
        if isinstance(source, str) and source.endswith(REGISTERED_SOURCE_NAME):
            # a registered workflow: resume its stored definition with the source it ran
            # with, so relative sub-workflow paths resolve as they did
            from flowyard import parse_workflow

            return await self.stack.resume(
                record.id, workflow=parse_workflow(record.workflow, source=source))
        return await self.stack.resume(record.id)


def _waiting_steps(result: Any) -> list[str]:
    """The ids of a run result's steps that wait for a human answer."""
    steps = getattr(result, "steps", None) or {}
    return [sid for sid, step in steps.items() if step.status == "waiting"] or ["?"]


class _Stored:
    """A completed run's stored record, shaped like the run result the worker reads."""

    def __init__(self, record: Any) -> None:
        self.status = record.status
        self.outputs = record.outputs
        self.error = record.error


def _run_metadata(task: TaskRecord) -> dict[str, Any]:
    """The metadata of a task's run: its ``task_id``, ``actor`` and, when the task was
    submitted with a W3C ``traceparent`` header, that header (the run's trace continues it).
    """
    metadata: dict[str, Any] = {"task_id": task.id, "actor": _actor_of(task)}
    traceparent = task.metadata.get("traceparent")
    if isinstance(traceparent, str):
        metadata["traceparent"] = traceparent
    return metadata


def _actor_of(task: TaskRecord) -> dict[str, Any]:
    """The run's ``actor`` metadata (read by the audit log): the one stored at submission,
    else (a task queued by an older server) ``{"actor": "unknown", "tenant": tenant}``.
    """
    actor = task.metadata.get("actor")
    if isinstance(actor, dict) and isinstance(actor.get("actor"), str):
        return {"actor": actor["actor"], "tenant": task.tenant}
    return {"actor": "unknown", "tenant": task.tenant}
