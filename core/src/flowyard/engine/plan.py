"""What the engine derives from a validated workflow once, not on every run.

A :class:`Plan` holds, per step, its dependencies (taken from validation), the keys of
``with`` its action renders itself, and its ``with`` / ``for_each`` values compiled
(:class:`~flowyard.templating.Compiled`: whole-value ``${id}`` references become direct
lookups, other templates are compiled by Jinja once). Plans are cached per stack and
workflow content (see :func:`flowyard.engine.validate.plan_of`), so running the same
workflow again, or a sub-workflow once per item, compiles nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flowyard.errors import TemplateError, ValidationIssue, WorkflowValidationError
from flowyard.interfaces import SupportsRawArguments, SupportsStepValidation
from flowyard.templating import Compiled, has_template, template_extensions
from flowyard.tools import ArgumentChecks, argument_checks

if TYPE_CHECKING:
    from flowyard.interfaces import Services
    from flowyard.workflow import Step, Workflow

__all__ = ["Plan", "StepPlan", "build_plan", "step_raw_arguments", "templated_paths"]


def templated_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Return the paths (keys and list indexes) of the template strings inside ``value``."""
    if isinstance(value, str):
        return [path] if has_template(value) else []
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in templated_paths(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in templated_paths(v, (*path, i))]
    return []


def step_raw_arguments(services: Services | None, step: Step) -> tuple[str, ...]:
    """Return the keys of ``step.with_`` its action takes unrendered (see
    :class:`~flowyard.interfaces.SupportsRawArguments`); none for unknown actions.
    """
    if services is None or step.uses not in services.tools:
        return ()
    tool = services.tools.get(step.uses)
    return tuple(tool.raw_arguments) if isinstance(tool, SupportsRawArguments) else ()


class StepPlan:
    """The run-independent part of one step.

    Attributes:
        deps: ids of the steps it waits for (``depends_on`` plus template references).
        children: ids of the steps waiting for it, in definition order.
        raw: keys of ``with`` passed to the action as written.
        with_: the rest of ``with``, compiled.
        for_each: ``for_each``, compiled.
        argument_checks: what is left to check of the action's arguments once rendered
            (see :func:`flowyard.tools.argument_checks`; empty: nothing, validation checked
            what is written), or None: check them all against the action's schema.
    """

    __slots__ = ("deps", "children", "raw", "with_", "for_each", "argument_checks")

    def __init__(self, deps: frozenset[str], raw: tuple[str, ...], with_: Compiled,
                 for_each: Compiled, argument_checks: ArgumentChecks | None = None) -> None:
        self.deps = deps
        self.children: list[str] = []
        self.raw = raw
        self.with_ = with_
        self.for_each = for_each
        self.argument_checks = argument_checks


class Plan:
    """Per step id, its :class:`StepPlan`; ``content_hash`` names the definition planned."""

    __slots__ = ("steps", "content_hash")

    def __init__(self, steps: dict[str, StepPlan], content_hash: str) -> None:
        self.steps = steps
        self.content_hash = content_hash


def build_plan(services: Services | None, workflow: Workflow,
               deps: Mapping[str, set[str]], content_hash: str, *,
               validated: bool = False) -> Plan:
    """Compile ``workflow``'s templates and index its dependencies.

    Args:
        services: the stack whose tools decide the raw ``with`` keys (None: no action's).
        workflow: a validated workflow (unique step ids, no cycles).
        deps: step id -> the step ids it depends on (validation's result).
        content_hash: the workflow's content hash, kept on the plan.
        validated: ``workflow`` passed :func:`~flowyard.engine.validate.validate_workflow`
            against ``services`` (its written arguments match their actions' schemas), so
            only templated values are left to check at run time where the schema allows.

    Raises:
        WorkflowValidationError: a template cannot be compiled (e.g. longer than
            :data:`~flowyard.templating.MAX_TEMPLATE_CHARS`), naming the step and field.
    """
    steps: dict[str, StepPlan] = {}
    issues: list[ValidationIssue] = []
    extensions = template_extensions(services)
    loc = workflow.locations
    count = len(workflow.steps)
    for i, step in enumerate(workflow.steps):
        raw = step_raw_arguments(services, step)
        with_ = {k: v for k, v in step.with_.items() if k not in raw} if raw else step.with_
        compiled: list[Compiled] = []
        for field, value in (("with", with_), ("for_each", step.for_each)):
            try:
                compiled.append(Compiled(value, f"step {step.id!r}, field {field}", extensions))
            except TemplateError as exc:
                issues.append(loc.issue(str(exc), f"{loc.step_path(i, count)}.{field}"))
                compiled.append(Compiled(None))
        checks = (_argument_checks(services, step, with_)
                  if validated and services is not None else None)
        steps[step.id] = StepPlan(frozenset(deps.get(step.id, ())), raw, *compiled, checks)
    if issues:
        raise WorkflowValidationError(issues)
    for step in workflow.steps:
        for dep in steps[step.id].deps:
            steps[dep].children.append(step.id)
    return Plan(steps, content_hash)


def _argument_checks(services: Services, step: Step, with_: Mapping[str, Any]
                     ) -> ArgumentChecks | None:
    """The run-time checks of a validated step's arguments, or None (check them all)."""
    if step.uses not in services.tools:
        return None
    tool = services.tools.get(step.uses)
    if isinstance(tool, SupportsStepValidation):  # validated its own way, not by the schema
        return None
    schema = tool.parameters
    if not isinstance(schema, Mapping):
        return None
    return argument_checks(schema, templated_paths(with_))
