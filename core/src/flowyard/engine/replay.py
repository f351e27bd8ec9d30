"""Replay and fork: a new run that reuses an earlier run's completed steps up to a chosen step.

``flowyard runs replay RUN --from STEP`` (and ``stack.replay``) creates a **new** run of the
same workflow. Every step of the original run that completed and is neither ``STEP`` nor
downstream of it (transitively, through ``depends_on`` and template references) is *reused*:
its checkpointed output is copied into the new run, and the engine does not execute it again
(its ``step.completed`` event carries ``resumed: true`` and ``replayed_from: <original run
id>``, plus ``output_set: true`` when ``set_outputs`` replaced its output). ``STEP`` and
everything downstream of it runs again. ``set_outputs`` (``--set step.output=JSON``) replaces
the output of reused steps, and ``inputs`` replaces workflow inputs (a fork: "what if this
step had answered that?").

The two runs are linked: the new run's metadata holds ``replayed_from`` (the original run's
id), ``replay_from_step``, ``replay_reused`` (the reused step ids) and ``replay_set`` (the steps
whose output was replaced). The original run is only read, never written.

A replay is refused, before anything is stored, when the workflow changed since the original
run started (its source file, when it still exists, has another content hash: the same check
as resume), when ``STEP`` is not a step of the workflow, and when ``set_outputs`` names an
unknown step, a step that runs again, or a value that is not JSON-ready.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowyard.errors import (
    ValidationIssue,
    WorkflowChangedError,
    WorkflowError,
    WorkflowValidationError,
)
from flowyard.guards import GuardDenied, guard_set
from flowyard.workflow import parse_workflow

from .lease import LeaseKeeper, LeaseSettings
from .runner import Run, check_inputs, new_record
from .validate import load_workflow, plan_of, validate_workflow

if TYPE_CHECKING:
    from flowyard.interfaces import Services
    from flowyard.workflow import RunResult, Workflow

__all__ = ["ReplayError", "replay_run", "downstream_of", "step_of_key"]


class ReplayError(WorkflowError):
    """A replay was refused: unknown step, ``set_outputs`` on a step that runs again, or an
    output that cannot be stored. Nothing was stored.
    """


def step_of_key(key: str) -> str:
    """Return the step id of a checkpoint key: ``"s"``, ``"s[3]"`` (fan-out item) and
    ``"s#2"`` (loop iteration) all belong to step ``"s"``.
    """
    for mark in ("[", "#"):
        cut = key.find(mark)
        if cut > 0:
            key = key[:cut]
    return key


def downstream_of(stack: Services, workflow: Workflow, step_id: str) -> set[str]:
    """Return ``step_id`` and the ids of every step that depends on it, directly or through
    other steps (``depends_on`` and template references, as the engine schedules them).

    Args:
        stack: the stack the workflow was validated against.
        workflow: a validated workflow.
        step_id: a step of ``workflow``.

    Raises:
        ReplayError: ``step_id`` is not a step of ``workflow``.
    """
    plan = plan_of(stack, workflow)
    if step_id not in plan.steps:
        raise ReplayError(f"step {step_id!r} is not a step of workflow {workflow.name!r} "
                          f"(its steps: {', '.join(plan.steps)})")
    found = {step_id}
    todo = [step_id]
    while todo:
        for child in plan.steps[todo.pop()].children:
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _checked_output(step_id: str, value: Any) -> Any:
    """Return ``value`` as stored JSON would give it back, or raise :class:`ReplayError`."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")  # lone surrogates cannot be stored
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise ReplayError(f"the output given for step {step_id!r} cannot be stored as JSON: "
                          f"{exc}") from None
    return json.loads(text)


class _ReplayRun(Run):
    """A :class:`Run` whose events say which run it replays and which steps it reused."""

    replayed_from: str = ""
    from_step: str = ""
    output_set: frozenset[str] = frozenset()

    def emit(self, type: str, step_id: str | None = None, **data: Any) -> None:
        """Emit an event, marking reused steps and the run's start with the original run
        (and ``output_set: true`` on steps whose output ``set_outputs`` replaced).
        """
        if (type == "step.completed" and data.get("resumed")) or type == "run.started":
            data["replayed_from"] = self.replayed_from
            if step_id in self.output_set:
                data["output_set"] = True
        if type == "run.started":
            data["replay_from_step"] = self.from_step
        super().emit(type, step_id, **data)


async def replay_run(stack: Services, run_id: str, *, from_step: str,
                     set_outputs: Mapping[str, Any] | None = None,
                     inputs: Mapping[str, Any] | None = None,
                     run_id_new: str | None = None, max_concurrency: int | None = None,
                     raise_on_failure: bool = False) -> RunResult:
    """Create a new run of ``run_id``'s workflow that reuses its completed steps before
    ``from_step`` and runs ``from_step`` and everything downstream of it again.

    Args:
        stack: the stack (opened here when needed); its storage holds the original run.
        run_id: the original run (any status; only its checkpoints are used, it is not
            changed).
        from_step: the step id to run again, with every step downstream of it.
        set_outputs: ``{step_id: output}`` replacing the output of steps that are reused
            (JSON-ready values); a step that did not complete in the original run gets this
            output instead of running.
        inputs: workflow inputs replacing the original run's (the others are kept); steps
            that are reused keep their outputs even if they read a changed input.
        run_id_new: the id of the new run (default: a random 32-hex id).
        max_concurrency: global limit of step keys running at once.
        raise_on_failure: raise :class:`~flowyard.errors.StepFailedError` when the new run
            does not complete.

    Returns:
        the new run's :class:`~flowyard.workflow.RunResult` (its ``run_id`` is the new run's;
        reused steps have ``resumed`` set).

    Raises:
        RunNotFoundError: no run ``run_id``.
        WorkflowChangedError: the workflow's source file changed since the original run
            started (its content hash differs from the stored one).
        ReplayError: ``from_step`` is not a step of the workflow, or ``set_outputs`` names an
            unknown step, a step that runs again, or an output that is not JSON-ready.
        WorkflowValidationError: invalid ``inputs`` (or denied by an ``inputs`` guard).
        StorageError: the new run could not be created.
    """
    if not stack.storage_is_open:
        await stack.open()
    storage = stack.storage
    original = await storage.get_run(run_id)
    stored_source = original.metadata.get("source")
    wf = (load_workflow(stack, Path(stored_source))
          if stored_source and Path(stored_source).is_file()
          else validate_workflow(stack, parse_workflow(original.workflow)))
    current_hash = wf.content_hash()
    if current_hash != original.workflow_hash:
        raise WorkflowChangedError(
            f"the workflow {wf.name!r} changed since run {run_id} started (hash "
            f"{original.workflow_hash[:12]} -> {current_hash[:12]}, source "
            f"{stored_source or 'the stored definition'}); its checkpoints may not fit the "
            "new definition, so it cannot be replayed: run the workflow anew")
    rerun = downstream_of(stack, wf, from_step)
    step_ids = {step.id for step in wf.steps}
    overrides: dict[str, Any] = {}
    for sid, value in (set_outputs or {}).items():
        if sid not in step_ids:
            raise ReplayError(f"cannot set the output of {sid!r}: no such step in workflow "
                              f"{wf.name!r}")
        if sid in rerun:
            raise ReplayError(
                f"cannot set the output of step {sid!r}: it runs again in the replay from "
                f"{from_step!r} (it is {'that step' if sid == from_step else 'downstream of it'}"
                "); set the output of a step before it, or replay from a later step")
        overrides[sid] = _checked_output(sid, value)
    values = dict(original.inputs)
    if inputs:
        values = check_inputs(wf, {**values, **inputs})
        guards = guard_set(stack)
        if guards is not None and guards.has("inputs"):
            try:
                values = await guards.apply("inputs", wf.name, values, None)
            except GuardDenied as exc:
                raise WorkflowValidationError([ValidationIssue(str(exc), path="inputs")]
                                              ) from exc
    stored = await storage.load_checkpoints(run_id)
    checkpoints = {key: output for key, output in stored.items()
                   if step_of_key(key) not in rerun and step_of_key(key) not in overrides
                   and step_of_key(key) in stored}
    checkpoints.update(overrides)
    reused = sorted({step_of_key(key) for key in checkpoints})
    metadata: dict[str, Any] = {"replayed_from": run_id, "replay_from_step": from_step,
                                "replay_reused": reused, "replay_set": sorted(overrides)}
    if stored_source:
        metadata["source"] = stored_source
    record = new_record(wf, values, run_id_new, metadata, original.workflow, current_hash)
    await storage.create_run(record)
    for key, output in checkpoints.items():  # a crash of the replay resumes from them too
        await storage.save_checkpoint(record.id, key, output)
    keeper = LeaseKeeper(storage, record.id, LeaseSettings.from_config(stack.config))
    await keeper.claim()
    run = _ReplayRun(stack, wf, values, record, checkpoints=checkpoints,
                     max_concurrency=max_concurrency, lease=keeper,
                     plan=plan_of(stack, wf, current_hash))
    run.replayed_from = run_id
    run.from_step = from_step
    run.output_set = frozenset(overrides)
    try:
        result = await keeper.hold(run.execute)
    finally:
        stack.events.forget(record.id)
    if raise_on_failure:
        result.raise_for_status()
    return result
