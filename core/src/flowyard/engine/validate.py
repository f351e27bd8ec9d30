"""Loading and semantic validation of workflows.

:func:`validate_workflow` reports every problem at once, each with file, line and column when
the workflow came from a file: duplicate step ids, unknown dependencies, cycles, unknown
actions, arguments that do not match the action's JSON schema, template syntax errors and
references to unknown steps or inputs.
"""

from __future__ import annotations

import difflib
import weakref
from collections import OrderedDict
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from flowyard.errors import PluginError, TemplateError, ValidationIssue, WorkflowValidationError
from flowyard.interfaces import SupportsSniff, SupportsStepValidation
from flowyard.parsing import ParseLimits, find_surrogate, read_bounded
from flowyard.templating import Reference, find_references, template_extensions
from flowyard.workflow import Step, Workflow, definition_hash, parse_workflow

from .plan import Plan, build_plan, step_raw_arguments, templated_paths

if TYPE_CHECKING:
    from flowyard.interfaces import Services

__all__ = ["load_workflow", "choose_loader", "validate_workflow", "step_dependencies",
           "templated_arguments", "raw_arguments", "unknown_message", "plan_of", "MAX_CACHED_PLANS"]

#: Plans of the workflows already validated against each stack, by content hash and source
#: (a stack's registries do not change after it is built, so the same definition validates and
#: plans the same way again); at most :data:`MAX_CACHED_PLANS` per stack, least recently used
#: dropped first.
_PLANS: weakref.WeakKeyDictionary[Any, OrderedDict[str, Plan]] = weakref.WeakKeyDictionary()
MAX_CACHED_PLANS = 256


def raw_arguments(services: Services | None, step: Step) -> tuple[str, ...]:
    """Return the keys of ``step.with_`` its action takes unrendered (see
    :class:`~flowyard.interfaces.SupportsRawArguments`); none for unknown actions.
    """
    return step_raw_arguments(services, step)


def _plan_key(workflow: Workflow, content_hash: str) -> str:
    return f"{content_hash}:{workflow.source or ''}"  # relative sub-workflow paths


def _cache_plan(stack: Services, key: str, plan: Plan) -> None:
    plans = _PLANS.setdefault(stack, OrderedDict())
    plans[key] = plan
    while len(plans) > MAX_CACHED_PLANS:
        plans.popitem(last=False)


def plan_of(stack: Services, workflow: Workflow, content_hash: str | None = None) -> Plan:
    """Return the :class:`~flowyard.engine.plan.Plan` of a validated workflow: the one cached
    when it was validated against ``stack``, else a new one (dependencies found again).

    Args:
        stack: the stack the workflow runs on.
        workflow: the workflow (validated).
        content_hash: its content hash when the caller has it (else computed).

    Raises:
        WorkflowValidationError: a template cannot be compiled.
    """
    content_hash = content_hash or workflow.content_hash()
    key = _plan_key(workflow, content_hash)
    plans = _PLANS.get(stack)
    if plans is not None:
        plan = plans.get(key)
        if plan is not None:
            plans.move_to_end(key)
            return plan
    deps = {step.id: step_dependencies(step, step_raw_arguments(stack, step))
            for step in workflow.steps}
    return build_plan(stack, workflow, deps, content_hash)


def templated_arguments(step: Step, raw: Collection[str] = ()) -> dict[str, Any]:
    """Return the part of ``step.with_`` that is rendered before the action runs.

    Args:
        step: the step.
        raw: keys left out (the action's ``raw_arguments``, e.g. a ``workflow`` step's
            ``with.workflow``, which renders its own templates).
    """
    if raw:
        return {k: v for k, v in step.with_.items() if k not in raw}
    return step.with_


def step_dependencies(step: Step, raw: Collection[str] = ()) -> set[str]:
    """Return the step ids ``step`` depends on: ``depends_on`` plus template references
    (outside the ``raw`` keys of ``with``).
    """
    deps = set(step.depends_on)
    for value, expr in ((templated_arguments(step, raw), False), (step.when, True),
                        (step.for_each, False), (step.until, True)):
        if value is None or isinstance(value, bool):
            continue
        for _, ref in find_references(value, expression=expr):
            if isinstance(ref, Reference) and ref.kind == "steps":
                deps.add(ref.name)
    return deps


@runtime_checkable
class _LoadsPaths(Protocol):
    """A workflow loader that reads files itself, checking their size before reading (the
    native loader's ``load_path``).
    """

    def load_path(self, path: Path) -> Workflow:
        """Return the workflow of the file ``path``."""
        ...


def _loader_suffixes(stack: Services, name: str) -> tuple[str, ...]:
    suffixes = stack.loaders.metadata_of(name).get("suffixes")
    if suffixes is None:
        suffixes = stack.loaders.get(name).suffixes  # required by WorkflowLoader
    return tuple(str(s).lower() for s in suffixes)


def _named_loader(stack: Services, format: str, where: str | None) -> Any:
    """Return the loader registered as ``format``, or raise a located error listing them."""
    if format not in stack.loaders:
        raise WorkflowValidationError([ValidationIssue(
            f"unknown workflow format {format!r} (--format); the formats are: "
            f"{', '.join(stack.loaders.names()) or 'none'}", file=where)])
    return stack.loaders.get(format)


def choose_loader(stack: Services, path: Path, text: str | None = None) -> tuple[str, str | None]:
    """Return ``(format name, text)`` of the loader that loads the file ``path``.

    The candidates are the loaders whose suffixes include the file's; of those that support
    :class:`~flowyard.interfaces.SupportsSniff`, the ones whose ``sniff`` returns True claim
    the file and exactly one claimer wins. When none claims it: ``native`` if it is a
    candidate, else the one candidate without ``sniff``.

    Args:
        stack: the stack whose loaders are used.
        path: the workflow file.
        text: the file's text when already read (else it is read, size-checked, when a
            candidate sniffs).

    Returns:
        the chosen format name and the file's text (None when it was not read: no candidate
        sniffs).

    Raises:
        WorkflowValidationError: no loader for the suffix; two or more loaders claim the file
            (naming them and ``--format``); no loader claims it and none is the default.
        PluginError: a loader's ``sniff`` raised or returned something else than a bool.
    """
    suffix = path.suffix.lower()
    candidates = [name for name in stack.loaders.names()
                  if suffix in _loader_suffixes(stack, name)]
    if not candidates:
        known = sorted({s for n in stack.loaders.names() for s in _loader_suffixes(stack, n)})
        raise WorkflowValidationError([ValidationIssue(
            f"no workflow loader for {suffix or 'files without a suffix'!r} (known: "
            f"{', '.join(known) or 'none'})", file=str(path))])
    sniffers = [n for n in candidates if isinstance(stack.loaders.get(n), SupportsSniff)]
    if sniffers and text is None:
        text = read_bounded(path, ParseLimits.from_config(stack.config))
    claimers = [n for n in sniffers if _sniff(stack, n, text or "", path)]
    if len(claimers) == 1:
        return claimers[0], text
    if len(claimers) > 1:
        names = ", ".join(repr(n) for n in claimers)
        raise WorkflowValidationError([ValidationIssue(
            f"the workflow loaders {names} all recognize this file as their format; choose "
            f"one with --format NAME (flowyard run/validate --format {claimers[0]} ...) or "
            "Stack.load_workflow(path, format=NAME)", file=str(path))])
    if "native" in candidates:
        return "native", text
    plain = [n for n in candidates if n not in sniffers]
    if len(plain) == 1:
        return plain[0], text
    raise WorkflowValidationError([ValidationIssue(
        f"no workflow loader recognizes this {suffix!r} file (loaders for {suffix!r}: "
        f"{', '.join(candidates)}); choose one with --format NAME", file=str(path))])


def _sniff(stack: Services, name: str, text: str, path: Path) -> bool:
    """Return the loader ``name``'s ``sniff`` of the file.

    Raises:
        PluginError: the sniff raised or did not return a bool (a bug of the loader's plugin,
            named).
    """
    try:
        claimed = stack.loaders.get(name).sniff(text, str(path))
    except Exception as exc:  # a plugin's bug: re-raised as a PluginError naming it
        raise PluginError(f"workflow loader {name!r} (plugin "
                          f"{stack.loaders.plugin_of(name)!r}) failed to sniff {path}: "
                          f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(claimed, bool):
        raise PluginError(f"workflow loader {name!r} (plugin {stack.loaders.plugin_of(name)!r}) "
                          f"returned {type(claimed).__name__} from sniff, not a bool")
    return claimed


def _read_source(stack: Services, path: Path, format: str | None = None) -> Workflow:
    text: str | None = None
    if format is not None:
        loader = _named_loader(stack, format, str(path))
    else:
        name, text = choose_loader(stack, path)
        loader = stack.loaders.get(name)
    if text is None and isinstance(loader, _LoadsPaths):  # reads with its own limits
        return loader.load_path(path)
    if text is None:
        # other loaders take text: the file's size is checked before it is read (workflows.*)
        text = read_bounded(path, ParseLimits.from_config(stack.config))
    return loader.load(text, path=str(path))


def load_workflow(stack: Services, source: Any, *, validate: bool = True,
                  format: str | None = None) -> Workflow:
    """See :func:`load_workflow_with_definition`; returns only the workflow."""
    return load_workflow_with_definition(stack, source, validate=validate, format=format)[0]


def load_workflow_with_definition(stack: Services, source: Any, *, validate: bool = True,
                                  format: str | None = None
                                  ) -> tuple[Workflow, dict[str, Any], str]:
    """Return a validated :class:`Workflow` from a path, YAML text, a dict or a workflow.

    Args:
        stack: the stack whose loaders and tools are used.
        source: a :class:`Workflow`; a mapping; a path (``str`` or :class:`Path`) of a file
            whose suffix a registered loader handles; or YAML text (a string with a newline).
        validate: run :func:`validate_workflow`.
        format: the name of the workflow loader that parses a path or text (``--format``);
            None: chosen by :func:`choose_loader` (text: ``native``).

    Returns:
        ``(workflow, definition dict, content hash)``.

    Raises:
        WorkflowValidationError: every problem found, with file, line and column; an unknown
            ``format`` (listing the formats).
        ValueError: ``format`` given with a mapping or a :class:`Workflow`.
    """
    try:
        workflow = _parse_source(stack, source, format)
    except WorkflowValidationError as exc:
        partial = getattr(exc, "partial", None)
        if not validate or partial is None:
            raise
        try:  # report the semantic problems of what parsed along with the structural ones
            validate_workflow(stack, partial, known_ids=getattr(exc, "declared_ids", set()))
        except WorkflowValidationError as more:
            issues = sorted([*exc.issues, *more.issues],
                            key=lambda i: (i.line is None, i.line or 0, i.column or 0))
            raise WorkflowValidationError(issues) from None
        raise
    definition = workflow.to_dict()
    key = definition_hash(definition)
    if validate:
        cache_key = _plan_key(workflow, key)
        plans = _PLANS.get(stack)
        if plans is not None and cache_key in plans:
            plans.move_to_end(cache_key)
        else:
            issues, deps = _check(stack, workflow)
            if issues:
                raise WorkflowValidationError(issues)
            _cache_plan(stack, cache_key, build_plan(stack, workflow, deps, key, validated=True))
    return workflow, definition, key


def _parse_source(stack: Services, source: Any, format: str | None = None) -> Workflow:
    if format is not None and isinstance(source, (Workflow, Mapping)):
        raise ValueError("format= applies to a workflow file or text, not to a "
                         f"{type(source).__name__}")
    if isinstance(source, Workflow):
        return source
    if isinstance(source, Mapping):
        found = find_surrogate(source)  # files are checked by the loader, with line/column
        if found is not None:
            raise WorkflowValidationError([ValidationIssue(
                "text holds a lone surrogate, which is not valid Unicode",
                path=found[0])])
        return parse_workflow(source)
    if isinstance(source, Path) or (isinstance(source, str) and "\n" not in source):
        path = Path(source)
        if not path.is_file():
            raise WorkflowValidationError([ValidationIssue(
                "workflow file not found", file=str(path))])
        return _read_source(stack, path, format)
    if isinstance(source, str):  # text: the named loader, else the native one, parses it
        return _named_loader(stack, format or "native", None).load(source)
    raise TypeError(f"cannot load a workflow from {type(source).__name__}; give a path, "
                    "YAML text, a dict or a Workflow")


def _index(workflow: Workflow) -> dict[str, int]:
    out: dict[str, int] = {}
    for i, step in enumerate(workflow.steps):
        out.setdefault(step.id, i)
    return out


def _check_schema(schema: Mapping[str, Any], params: Mapping[str, Any], where: str,
                  tool: str, issue: Any) -> None:
    import jsonschema

    templated = templated_paths(params)
    try:
        validator = jsonschema.Draft202012Validator(schema)
        errors = list(validator.iter_errors(dict(params)))
    except jsonschema.SchemaError as exc:
        issue(f"action {tool!r} has an invalid JSON schema: {exc.message}", where)
        return
    for err in errors:
        epath = tuple(err.absolute_path)
        if any(epath[:len(t)] == t for t in templated):
            continue  # the value is only known at run time; it is checked then
        if err.validator in ("anyOf", "oneOf") and templated and not epath:
            continue
        sub = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in epath)
        issue(f"invalid arguments for {tool!r}: {err.message}", f"{where}{sub}")


def validate_workflow(stack: Services | None, workflow: Workflow, *,
                      known_ids: set[str] | None = None) -> Workflow:
    """Check a workflow; return it unchanged when valid.

    Args:
        stack: the stack whose tools resolve ``uses`` (None: actions are not checked).
        workflow: the parsed workflow.
        known_ids: more step ids to accept in references (steps written in the source that
            did not parse; their own problems are reported by the parser).

    Raises:
        WorkflowValidationError: every problem, each with path, file, line and column.
    """
    issues, _ = _check(stack, workflow, known_ids=known_ids)
    if issues:
        raise WorkflowValidationError(issues)
    return workflow


def _check(stack: Services | None, workflow: Workflow, *, known_ids: set[str] | None = None
           ) -> tuple[list[ValidationIssue], dict[str, set[str]]]:
    """Return every problem of ``workflow`` and, per step id, the step ids it depends on."""
    loc = workflow.locations
    issues: list[ValidationIssue] = []

    def issue(message: str, path: str) -> None:
        issues.append(loc.issue(message, path))

    index = _index(workflow)
    seen: set[str] = set()
    count = len(workflow.steps)
    extensions = template_extensions(stack)
    for i, step in enumerate(workflow.steps):
        if step.id in seen:
            first = loc.step_path(index[step.id], count)
            issue(f"duplicate step id {step.id!r} (first defined at {first})",
                  f"{loc.step_path(i, count)}.id")
        seen.add(step.id)

    ids = set(index) | set(known_ids or ())
    deps: dict[str, set[str]] = {}
    for i, step in enumerate(workflow.steps):
        base = loc.step_path(i, count)
        own: set[str] = set()
        for j, dep in enumerate(step.depends_on):
            if dep == step.id:
                issue(f"step {step.id!r} depends on itself", f"{base}.depends_on[{j}]")
            elif dep not in ids:
                issue(unknown_message("step", dep, ids, f"in depends_on of step {step.id!r}"),
                      f"{base}.depends_on[{j}]")
            else:
                own.add(dep)
        for field, value, expr in (("with", templated_arguments(step, raw_arguments(stack, step)),
                                    False),
                                   ("when", step.when, True),
                                   ("for_each", step.for_each, False),
                                   ("until", step.until, True)):
            if value is None or isinstance(value, bool):
                continue
            for where, ref in find_references(value, f"{base}.{field}", expression=expr,
                                              extensions=extensions):
                if isinstance(ref, TemplateError):
                    issue(f"step {step.id!r}, field {where[len(base) + 1:]}: {ref}", where)
                elif ref.kind == "name":
                    allowed = _names_for(step, field)
                    if ref.name not in allowed:
                        issue(f"unknown name {ref.name!r} in a template of step {step.id!r} "
                              f"(available here: {', '.join(sorted(allowed))}; workflow inputs "
                              "are 'inputs.<name>')", where)
                elif ref.kind == "steps":
                    if ref.name == step.id:
                        issue(f"step {step.id!r} refers to its own output (use 'previous' or "
                              "'output' inside loops)", where)
                    elif ref.name not in ids:
                        issue(unknown_message("step", ref.name, ids, f"referenced by step "
                                       f"{step.id!r}"), where)
                    else:
                        own.add(ref.name)
                elif ref.name not in workflow.inputs:
                    issue(unknown_message("input", ref.name, set(workflow.inputs),
                                   f"referenced by step {step.id!r}"), where)
        deps[step.id] = own
        if stack is not None:
            _check_action(stack, workflow, step, base, issue)

    for where, ref in find_references(workflow.outputs, "outputs", extensions=extensions):
        if isinstance(ref, TemplateError):
            issue(f"{where}: {ref}", where)
        elif ref.kind == "name" and ref.name not in _BASE_NAMES:
            issue(f"unknown name {ref.name!r} in the outputs (available: "
                  f"{', '.join(sorted(_BASE_NAMES))})", where)
        elif ref.kind == "steps" and ref.name not in ids:
            issue(unknown_message("step", ref.name, ids, "referenced by the outputs"), where)
        elif ref.kind == "inputs" and ref.name not in workflow.inputs:
            issue(unknown_message("input", ref.name, set(workflow.inputs), "referenced by the outputs"),
                  where)

    for cycle in _cycles(deps, [s.id for s in workflow.steps]):
        issue("dependency cycle: " + " -> ".join(cycle),
              loc.step_path(index[cycle[0]], count))
    return issues, deps


_BASE_NAMES = {"inputs", "steps", "run"}


def _names_for(step: Step, field: str) -> set[str]:
    """Top-level template names available in ``field`` of ``step``."""
    names = set(_BASE_NAMES)
    if step.for_each is not None and field in ("with", "until"):
        names |= {"item", "index"}
    if step.until is not None:
        if field == "with":
            names |= {"iteration", "previous"}
        if field == "until":
            names |= {"output", "iteration"}
    return names


def unknown_message(kind: str, name: str, known: set[str], context: str) -> str:
    """Return ``unknown <kind> <name> <context>`` with the closest known name as a hint."""
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r} {context}{hint}"


def _cycles(deps: dict[str, set[str]], order: list[str]) -> list[list[str]]:
    """Return one cycle per strongly connected group (as ``[a, b, ..., a]``)."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(deps, white)
    cycles: list[list[str]] = []
    reported: set[frozenset[str]] = set()
    for root in order:
        if color.get(root) != white:
            continue
        stack: list[tuple[str, list[str]]] = [(root, sorted(deps.get(root, ())))]
        path = [root]
        color[root] = grey
        while stack:
            node, pending = stack[-1]
            if pending:
                nxt = pending.pop(0)
                if nxt not in color:
                    continue
                if color[nxt] == grey:
                    cyc = [*path[path.index(nxt):], nxt]
                    key = frozenset(cyc)
                    if key not in reported:
                        reported.add(key)
                        cycles.append(list(reversed(cyc)))
                elif color[nxt] == white:
                    color[nxt] = grey
                    path.append(nxt)
                    stack.append((nxt, sorted(deps.get(nxt, ()))))
            else:
                color[node] = black
                path.pop()
                stack.pop()
    return cycles


def _check_action(stack: Services, workflow: Workflow, step: Step, base: str, issue: Any) -> None:
    if step.uses not in stack.tools:
        issue(unknown_message("action", step.uses, set(stack.tools.names()),
                              f"in step {step.id!r}"), f"{base}.uses")
        return
    if step.executor is not None and step.executor not in stack.executors:
        issue(unknown_message("executor", step.executor, set(stack.executors.names()),
                              f"in step {step.id!r}"), f"{base}.executor")
    tool = stack.tools.get(step.uses)
    if isinstance(tool, SupportsStepValidation):
        tool.validate_step(step, workflow=workflow, services=stack, issue=issue, base=base)
        return
    schema = tool.parameters  # required by the Tool protocol
    if isinstance(schema, Mapping):
        _check_schema(schema, step.with_, f"{base}.with", step.uses, issue)
