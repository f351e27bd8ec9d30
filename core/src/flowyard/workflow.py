"""Workflow definitions: the attrs models, the dict parser, the Python builder, run results.

A workflow is a DAG of steps. It is written in YAML or JSON (see ``docs/workflows.md``),
given as a dict with the same structure, or built in Python::

    wf = (WorkflowBuilder("greet", description="Say hello")
          .input("name", type="string", default="world")
          .step("hello", uses="echo", with_={"value": "Hello {{ inputs.name }}"})
          .output("greeting", "{{ steps.hello.output }}")
          .build())

:func:`parse_workflow` turns a dict into a :class:`Workflow`, collecting every structural
problem (unknown keys, wrong types) as a :class:`~flowyard.errors.ValidationIssue` with the
file, line and column recorded by the loader. Semantic checks (cycles, unknown references,
unknown actions, argument schemas) are done by :func:`flowyard.engine.validate_workflow`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

import attrs
from attrs import define, field

from flowyard.errors import StepFailedError, ValidationIssue, WorkflowValidationError
from flowyard.serialization import unstructure

__all__ = [
    "InputSpec",
    "RetryPolicy",
    "Step",
    "Workflow",
    "WorkflowBuilder",
    "StepResult",
    "RunResult",
    "WaitingForInput",
    "parse_workflow",
    "Locations",
    "INPUT_TYPES",
    "ON_ERROR",
    "definition_hash",
]

#: The input types a workflow may declare, and the Python types they accept.
INPUT_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list, tuple),
    "object": (dict,),
    "any": (object,),
}

FailurePolicy = Literal["fail_fast", "continue"]

#: The string values of a step's ``on_error`` (the other form is ``{fallback: value}``).
ON_ERROR = ("fail", "continue", "continue_and_fail")


class _Required:
    """Marker for an input without a default."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


class Locations:
    """Where each field of a workflow was written: ``path -> (line, column)`` (1-based).

    Paths look like ``steps[2].with.path`` (mapping keys joined with ``.``, list indexes in
    ``[]``; ``""`` is the document itself). :func:`flowyard.parse_yaml` fills one for a YAML
    file; a loader that *translates* another format builds one for the translated definition
    (``steps[2].with.path`` -> where the value was written in the original file) with
    :meth:`set`, and passes it to :func:`parse_workflow`, whose issues (and those of
    validation) then name the original file, line and column::

        locations = Locations(file=path)
        locations.set("steps[0].with.command", 12, 7)   # the value, line 12, column 7
        locations.set("steps[0].uses", 11, 5, key=True)  # the key, for unknown-key errors
        workflow = parse_workflow(definition, locations=locations, source=path)

    :meth:`find` falls back to the closest enclosing path that has a location, so a loader
    may record only the positions it knows (each step's mapping, say).

    Args:
        file: the file named by issues (a path), or None.
        positions: initial ``path -> (line, column)`` of values.

    Attributes:
        file: the file named by issues.
        positions: public, ``path -> (line, column)`` of each value (1-based); a loader may
            fill it directly or through :meth:`set`.
        keys: public, ``path -> (line, column)`` of the *key* of each mapping entry (used for
            "unknown key" and "duplicate key" issues; falls back to ``positions``).
        issues: problems found while parsing that did not stop it (a duplicate key):
            :func:`parse_workflow` reports them along with its own, so that validation
            reports every problem at once.
        step_sources: for each parsed step, its index in the source's ``steps`` list.
    """

    def __init__(self, file: str | None = None,
                 positions: Mapping[str, tuple[int, int]] | None = None) -> None:
        self.file = file
        self.positions: dict[str, tuple[int, int]] = dict(positions or {})
        self.keys: dict[str, tuple[int, int]] = {}
        self.issues: list[ValidationIssue] = []
        #: for each parsed step, its index in the source's ``steps`` list
        self.step_sources: list[int] = []

    def set(self, path: str, line: int, column: int, *, key: bool = False) -> None:
        """Record that the value (or, with ``key``, the key) at ``path`` was written at
        ``line``:``column`` of :attr:`file`. A later call for the same path replaces it.

        Args:
            path: the field path in the definition given to :func:`parse_workflow`
                (``steps[2].with.path``; ``""`` for the whole document).
            line: 1-based line number.
            column: 1-based column number.
            key: record the position of the mapping key instead of the value.

        Raises:
            ValueError: ``line`` or ``column`` is not a positive integer.
        """
        for label, number in (("line", line), ("column", column)):
            if isinstance(number, bool) or not isinstance(number, int) or number < 1:
                raise ValueError(f"Locations.set: {label} must be a positive integer, "
                                 f"got {number!r} (path {path!r})")
        (self.keys if key else self.positions)[path] = (line, column)

    def step_path(self, index: int, count: int) -> str:
        """Return ``steps[i]`` with the source index of the ``index``-th of ``count`` parsed
        steps (steps that failed to parse shift the positions).
        """
        if len(self.step_sources) == count:
            return f"steps[{self.step_sources[index]}]"
        return f"steps[{index}]"

    def find(self, path: str) -> tuple[int | None, int | None]:
        """Return ``(line, column)`` of ``path`` or of its nearest ancestor, or (None, None)."""
        current = path
        while True:
            if current in self.positions:
                return self.positions[current]
            if not current:
                return None, None
            cut = max(current.rfind("."), current.rfind("["))
            current = current[:cut] if cut > 0 else ""

    def issue(self, message: str, path: str = "", *, key: bool = False) -> ValidationIssue:
        """Return a :class:`ValidationIssue` located at ``path`` (at its key when ``key``)."""
        line, column = self.keys[path] if key and path in self.keys else self.find(path)
        return ValidationIssue(message, path=path, file=self.file, line=line, column=column)


@define
class InputSpec:
    """A declared workflow input.

    Args:
        name: the input name (``inputs.<name>`` in templates).
        type: one of ``string``, ``integer``, ``number``, ``boolean``, ``array``, ``object``,
            ``any``.
        default: the value used when the caller gives none; inputs without a default are
            required.
        description: for humans and ``flowyard validate``.
    """

    name: str
    type: str = "any"
    default: Any = REQUIRED
    description: str = ""

    @property
    def required(self) -> bool:
        """True when the input has no default."""
        return self.default is REQUIRED

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready definition (without the name)."""
        out: dict[str, Any] = {"type": self.type}
        if not self.required:
            out["default"] = self.default
        if self.description:
            out["description"] = self.description
        return out


@define
class RetryPolicy:
    """When and how a failed step is tried again.

    The wait before retry ``n`` (1-based) is ``min(max_backoff, backoff * multiplier**(n-1))``
    plus a random jitter in ``[0, jitter]`` seconds (tenacity's ``wait_exponential`` plus
    ``wait_random``).

    Args:
        attempts: total tries, including the first (1 = no retry).
        backoff: initial wait in seconds.
        multiplier: growth factor of the wait.
        max_backoff: cap on the wait, seconds.
        jitter: maximum random extra wait, seconds.
        on: which errors are retried: ``"retriable"`` (errors whose ``retriable`` attribute is
            true, plus timeouts), ``"any"``, or exception class names (``"ToolError"``,
            ``"TimeoutError"``); a class name matches subclasses too.
    """

    attempts: int = 1
    backoff: float = 1.0
    multiplier: float = 2.0
    max_backoff: float = 60.0
    jitter: float = 1.0
    on: list[str] = field(factory=lambda: ["retriable"])

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready definition."""
        return attrs.asdict(self)

    def matches(self, exc: BaseException) -> bool:
        """Return True when ``exc`` is one of the errors this policy retries."""
        for name in self.on:
            if name == "any":
                return True
            if name == "retriable":
                if getattr(exc, "retriable", False) or isinstance(exc, TimeoutError):
                    return True
                continue
            if any(cls.__name__ == name for cls in type(exc).__mro__):
                return True
        return False


@define
class Step:
    """One step of a workflow.

    Args:
        id: unique within the workflow (letters, digits, ``_`` and ``-``).
        uses: the action: a tool name (``filesystem.write``, ``llm.chat``, ``echo``), ``agent``
            or ``workflow`` (a sub-workflow).
        with_: the action's arguments (``with`` in YAML), templated.
        depends_on: explicit dependencies (step ids); references in templates add more.
        when: a condition (template expression); the step is skipped when it is false.
        for_each: a list (or a template giving one); the action runs once per item
            (``item``, ``index`` in templates), results collected in input order.
        max_parallel: at most this many items of ``for_each`` at once (None: no per-step limit).
        until: loop condition evaluated after each iteration (``output``, ``iteration``).
        max_iterations: bound of the ``until`` loop.
        retry: the retry policy (None: one try).
        timeout: seconds allowed per attempt (None: no limit).
        on_error: what a failure (after retries) means: ``"fail"`` (the step fails; under
            ``fail_fast`` the run stops), ``"continue"`` (dependents run, seeing the step
            failed with output None; the run can still complete), ``"continue_and_fail"``
            (dependents and the rest of the workflow run as with ``continue``, and the run
            then ends ``failed`` with this step's error) or ``{"fallback": value}`` (the step
            completes with ``value``).
        priority: higher runs first when concurrency slots are scarce.
        budget_usd: US dollars this step's LLM calls may spend.
        executor: the executor name (None: ``local``).
        resources: what one attempt needs where it runs, for executors that place work
            (``flowyard-ray``): ``num_cpus`` and ``num_gpus`` (numbers >= 0), ``memory`` in
            bytes (written as an integer or a size such as ``"2GB"``/``"512MiB"``) and any
            custom resource name with a number >= 0; None: the executor's default. The
            ``local`` executor ignores it.
        name, description: for humans.
    """

    id: str
    uses: str
    with_: dict[str, Any] = field(factory=dict)
    depends_on: list[str] = field(factory=list)
    when: str | bool | None = None
    for_each: Any = None
    max_parallel: int | None = None
    until: str | None = None
    max_iterations: int = 10
    retry: RetryPolicy | None = None
    timeout: float | None = None
    on_error: Any = "fail"
    priority: int = 0
    budget_usd: float | None = None
    executor: str | None = None
    resources: dict[str, Any] | None = None
    name: str = ""
    description: str = ""

    @property
    def fallback(self) -> tuple[bool, Any]:
        """``(True, value)`` when ``on_error`` gives a fallback value, else ``(False, None)``."""
        if isinstance(self.on_error, Mapping) and "fallback" in self.on_error:
            return True, self.on_error["fallback"]
        return False, None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready definition (only fields that differ from the defaults)."""
        out: dict[str, Any] = {"id": self.id, "uses": self.uses}
        for name, key, default in _step_defaults():
            value = getattr(self, name)
            if value == default:
                continue
            out[key] = value.to_dict() if isinstance(value, RetryPolicy) else value
        return out


_STEP_DEFAULTS: list[tuple[str, str, Any]] = []


def _step_defaults() -> list[tuple[str, str, Any]]:
    """``(attribute, key, default)`` of every optional Step field, computed once."""
    if not _STEP_DEFAULTS:
        for a in attrs.fields(Step):
            if a.name in ("id", "uses"):
                continue
            default = a.default.factory() if isinstance(a.default, attrs.Factory) else a.default
            _STEP_DEFAULTS.append((a.name, "with" if a.name == "with_" else a.name, default))
    return _STEP_DEFAULTS


@define
class Workflow:
    """A workflow definition.

    Args:
        name: the workflow name.
        description: what it does.
        inputs: declared inputs by name.
        steps: the steps, in definition order.
        outputs: output name -> template (rendered when the run ends).
        max_concurrency: global limit of step keys running at once (None: the engine's
            ``engine.max_concurrency`` config, default 32).
        budget_usd: US dollars the whole run may spend on LLM calls.
        timeout: seconds the whole run may take.
        on_failure: ``"fail_fast"`` (a failing step cancels the run) or ``"continue"``
            (independent branches finish; the run ends ``partial``).
        version: free-form version string.
        source: the file it was loaded from (not part of the definition).
        locations: where each field was written (not part of the definition).
    """

    name: str
    steps: list[Step] = field(factory=list)
    description: str = ""
    inputs: dict[str, InputSpec] = field(factory=dict)
    outputs: dict[str, Any] = field(factory=dict)
    max_concurrency: int | None = None
    budget_usd: float | None = None
    timeout: float | None = None
    on_failure: str = "fail_fast"
    version: str = ""
    source: str | None = field(default=None, eq=False)
    locations: Locations = field(factory=Locations, eq=False, repr=False)

    def step(self, step_id: str) -> Step:
        """Return the step ``step_id``. Raises KeyError naming the known ids."""
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(f"no step {step_id!r}; steps: {', '.join(s.id for s in self.steps)}")

    def to_dict(self) -> dict[str, Any]:
        """Return the definition as a JSON-ready dict (the canonical form that is hashed)."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        if self.version:
            out["version"] = self.version
        if self.inputs:
            out["inputs"] = {k: v.to_dict() for k, v in self.inputs.items()}
        out["steps"] = [s.to_dict() for s in self.steps]
        if self.outputs:
            out["outputs"] = dict(self.outputs)
        for key in ("max_concurrency", "budget_usd", "timeout"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.on_failure != "fail_fast":
            out["on_failure"] = self.on_failure
        return out

    def content_hash(self) -> str:
        """Return the SHA-256 (hex) of the canonical JSON of :meth:`to_dict`."""
        return definition_hash(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, locations: Locations | None = None
                  ) -> Workflow:
        """Parse a dict (see :func:`parse_workflow`)."""
        return parse_workflow(data, locations=locations)


def definition_hash(definition: Mapping[str, Any]) -> str:
    """Return the SHA-256 (hex) of the canonical JSON (sorted keys, no spaces) of a workflow
    definition dict, encoded as UTF-8.

    Text holding a lone surrogate (which files never yield: the loader refuses it with its
    location) is encoded with ``surrogatepass`` instead of raising, so the hash is defined for
    every definition; valid text hashes exactly as before.
    """
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


# ----------------------------------------------------------------------------- parsing

_WORKFLOW_KEYS = {"name", "description", "version", "inputs", "steps", "outputs",
                  "max_concurrency", "budget_usd", "timeout", "on_failure"}
_STEP_KEYS = {"id", "uses", "with", "depends_on", "when", "for_each", "max_parallel", "until",
              "max_iterations", "retry", "timeout", "on_error", "priority", "budget_usd",
              "executor", "resources", "name", "description"}
_RETRY_KEYS = {a.name for a in attrs.fields(RetryPolicy)}
_INPUT_KEYS = {"type", "default", "description"}


def _unknown_key(key: str, allowed: set[str], where: str) -> str:
    close = difflib.get_close_matches(key, sorted(allowed), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key {key!r} in {where}{hint} (allowed: {', '.join(sorted(allowed))})"


class _Collector:
    def __init__(self, locations: Locations) -> None:
        self.loc = locations
        self.issues: list[ValidationIssue] = []

    def add(self, message: str, path: str, *, key: bool = False) -> None:
        self.issues.append(self.loc.issue(message, path, key=key))

    def number(self, value: Any, path: str, *, integer: bool = False, minimum: float = 0,
               allow_none: bool = True) -> Any:
        if value is None and allow_none:
            return None
        kinds: tuple[type, ...] = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            self.add(f"must be {'an integer' if integer else 'a number'}, got {value!r}", path)
            return None
        if value < minimum:
            self.add(f"must be >= {minimum}, got {value!r}", path)
            return None
        return value

    def string(self, value: Any, path: str, *, allow_none: bool = False) -> Any:
        if value is None and allow_none:
            return None
        if not isinstance(value, str):
            self.add(f"must be a string, got {type(value).__name__}", path)
            return None
        return value


def _parse_input(name: str, spec: Any, path: str, c: _Collector) -> InputSpec | None:
    if not isinstance(spec, Mapping):
        # shorthand: `name: default-value`
        return InputSpec(name=name, default=spec, type=_infer_type(spec))
    for key in spec:
        if key not in _INPUT_KEYS:
            c.add(_unknown_key(str(key), _INPUT_KEYS, f"input {name!r}"), f"{path}.{key}",
                  key=True)
    kind = spec.get("type", "any")
    if kind not in INPUT_TYPES:
        c.add(f"unknown input type {kind!r} (types: {', '.join(INPUT_TYPES)})", f"{path}.type")
        kind = "any"
    default = spec.get("default", REQUIRED)
    if default is not REQUIRED and default is not None and not _type_ok(kind, default):
        c.add(f"default {default!r} is not of type {kind}", f"{path}.default")
    return InputSpec(name=name, type=kind, default=default,
                     description=str(spec.get("description", "")))


def _infer_type(value: Any) -> str:
    for kind in ("boolean", "integer", "number", "string", "array", "object"):
        if _type_ok(kind, value):
            return kind
    return "any"


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "any":
        return True
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, INPUT_TYPES[kind])


def _parse_retry(value: Any, path: str, c: _Collector) -> RetryPolicy | None:
    if value is None:
        return None
    if isinstance(value, RetryPolicy):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        value = {"attempts": value}
    if not isinstance(value, Mapping):
        c.add("retry must be a mapping (attempts, backoff, multiplier, max_backoff, jitter, on) "
              "or a number of attempts", path)
        return None
    kwargs: dict[str, Any] = {}
    for key, item in value.items():
        if key not in _RETRY_KEYS:
            c.add(_unknown_key(str(key), _RETRY_KEYS, "retry"), f"{path}.{key}", key=True)
            continue
        if key == "on":
            items = [item] if isinstance(item, str) else item
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                c.add("retry.on must be a string or a list of strings", f"{path}.on")
                continue
            kwargs["on"] = list(items)
        elif key == "attempts":
            n = c.number(item, f"{path}.attempts", integer=True, minimum=1, allow_none=False)
            if n is not None:
                kwargs[key] = n
        else:
            n = c.number(item, f"{path}.{key}", allow_none=False)
            if n is not None:
                kwargs[key] = float(n)
    return RetryPolicy(**kwargs)


def _parse_step(raw: Any, index: int, c: _Collector) -> Step | None:
    path = f"steps[{index}]"
    if isinstance(raw, Step):
        return raw
    if not isinstance(raw, Mapping):
        c.add(f"a step must be a mapping, got {type(raw).__name__}", path)
        return None
    for key in raw:
        if key not in _STEP_KEYS:
            c.add(_unknown_key(str(key), _STEP_KEYS, "a step"), f"{path}.{key}", key=True)
    step_id = raw.get("id")
    if step_id is None:
        c.add("step has no 'id'", path)
    elif not isinstance(step_id, str) or not step_id or not all(
            ch.isalnum() or ch in "_-" for ch in step_id):
        c.add(f"step id {step_id!r} must be a non-empty string of letters, digits, '_' and '-'",
              f"{path}.id")
        step_id = None
    uses = raw.get("uses")
    if uses is None:
        c.add(f"step {step_id or index!r} has no 'uses' (the action to run)", path)
    elif not isinstance(uses, str) or not uses:
        c.add("'uses' must be a non-empty string", f"{path}.uses")
        uses = None
    params = raw.get("with", {})
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        c.add(f"'with' must be a mapping of arguments, got {type(params).__name__}",
              f"{path}.with")
        params = {}
    depends = raw.get("depends_on", [])
    if isinstance(depends, str):
        depends = [depends]
    if not isinstance(depends, list) or not all(isinstance(d, str) for d in depends):
        c.add("'depends_on' must be a step id or a list of step ids", f"{path}.depends_on")
        depends = []
    when = raw.get("when")
    if when is not None and not isinstance(when, (str, bool)):
        c.add("'when' must be a template expression or a boolean", f"{path}.when")
        when = None
    for_each = raw.get("for_each")
    if for_each is not None and not isinstance(for_each, (str, list)):
        c.add("'for_each' must be a list or a template giving one", f"{path}.for_each")
        for_each = None
    until = c.string(raw.get("until"), f"{path}.until", allow_none=True)
    if until is not None and for_each is not None:
        c.add("a step cannot have both 'for_each' and 'until'", f"{path}.until")
    on_error = raw.get("on_error", "fail")
    if not (on_error in ON_ERROR or (
            isinstance(on_error, Mapping) and set(on_error) == {"fallback"})):
        c.add("'on_error' must be 'fail', 'continue', 'continue_and_fail' or "
              f"{{fallback: <value>}}, got {on_error!r}", f"{path}.on_error")
        on_error = "fail"
    priority = raw.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        c.add(f"'priority' must be an integer, got {priority!r}", f"{path}.priority")
        priority = 0
    max_iterations = c.number(raw.get("max_iterations", 10), f"{path}.max_iterations",
                              integer=True, minimum=1, allow_none=False)
    executor = c.string(raw.get("executor"), f"{path}.executor", allow_none=True)
    resources = _parse_resources(raw.get("resources"), f"{path}.resources", c)
    if step_id is None or uses is None:
        return None
    return Step(
        id=step_id,
        uses=uses,
        with_=dict(params),
        depends_on=list(depends),
        when=when,
        for_each=for_each,
        max_parallel=c.number(raw.get("max_parallel"), f"{path}.max_parallel", integer=True,
                              minimum=1),
        until=until,
        max_iterations=max_iterations or 10,
        retry=_parse_retry(raw.get("retry"), f"{path}.retry", c),
        timeout=c.number(raw.get("timeout"), f"{path}.timeout", minimum=0),
        on_error=on_error,
        priority=priority,
        budget_usd=c.number(raw.get("budget_usd"), f"{path}.budget_usd"),
        executor=executor,
        resources=resources,
        name=str(raw.get("name", "") or ""),
        description=str(raw.get("description", "") or ""),
    )


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(value: Any) -> int:
    """Return a size in bytes from an integer (bytes) or text such as ``"2GB"`` (10^9),
    ``"512MiB"`` (2^20) or ``"1.5G"``; units are case-insensitive.

    Raises:
        ValueError: not a size (the message shows the value and the units).
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        if match and match.group(2).lower() in _SIZE_UNITS:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    raise ValueError(f"expected a size in bytes (an integer >= 0 or text such as '2GB', "
                     f"'512MiB'; units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), got {value!r}")


def _parse_resources(raw: Any, path: str, c: _Collector) -> dict[str, Any] | None:
    """Check and normalize a step's ``resources`` (``memory`` to bytes); None when absent."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        c.add(f"'resources' must be a mapping such as {{num_cpus: 1, memory: 2GB}}, "
              f"got {type(raw).__name__}", path)
        return None
    out: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{path}.{key}"
        if not isinstance(key, str) or not key:
            c.add(f"resource names must be non-empty strings, got {key!r}", where, key=True)
            continue
        if key == "memory":
            try:
                out[key] = parse_size(value)
            except ValueError as exc:
                c.add(f"'memory': {exc}", where)
            continue
        number = c.number(value, where, allow_none=False)
        if number is not None:
            out[key] = number
    return out


def parse_workflow(data: Mapping[str, Any], *, locations: Locations | None = None,
                   source: str | None = None) -> Workflow:
    """Build a :class:`Workflow` from its dict form.

    Args:
        data: the definition (``name``, ``description``, ``inputs``, ``steps``, ``outputs``,
            ``max_concurrency``, ``budget_usd``, ``timeout``, ``on_failure``, ``version``).
        locations: where each field was written (from the YAML loader), for error messages.
        source: the file path, when loaded from a file.

    Returns:
        the workflow (not yet checked for cycles, references and actions).

    Raises:
        WorkflowValidationError: every structural problem found, with locations; its
            ``partial`` attribute holds the workflow built from the parts that parsed and
            ``declared_ids`` the step ids written in the source.
    """
    loc = locations or Locations(file=source)
    c = _Collector(loc)
    c.issues.extend(loc.issues)  # found while parsing (duplicate keys): reported with the rest
    if not isinstance(data, Mapping):
        raise WorkflowValidationError([*loc.issues, loc.issue(
            f"a workflow must be a mapping, got {type(data).__name__}")])
    for key in data:
        if key not in _WORKFLOW_KEYS:
            c.add(_unknown_key(str(key), _WORKFLOW_KEYS, "the workflow"), str(key), key=True)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        c.add("the workflow needs a 'name' (a non-empty string)", "name" if "name" in data
              else "")
        name = "<unnamed>"
    inputs: dict[str, InputSpec] = {}
    raw_inputs = data.get("inputs") or {}
    if isinstance(raw_inputs, list):  # list form: [{name: x, type: ..., default: ...}]
        converted: dict[str, Any] = {}
        for i, item in enumerate(raw_inputs):
            if isinstance(item, Mapping) and isinstance(item.get("name"), str):
                converted[item["name"]] = {k: v for k, v in item.items() if k != "name"}
            else:
                c.add("each input in a list needs a 'name'", f"inputs[{i}]")
        raw_inputs = converted
    if not isinstance(raw_inputs, Mapping):
        c.add("'inputs' must be a mapping of input name to spec", "inputs")
        raw_inputs = {}
    for key, spec in raw_inputs.items():
        if isinstance(spec, InputSpec):
            inputs[str(key)] = spec
            continue
        parsed = _parse_input(str(key), spec, f"inputs.{key}", c)
        if parsed is not None:
            inputs[str(key)] = parsed
    raw_steps = data.get("steps")
    steps: list[Step] = []
    if raw_steps is None:
        c.add("the workflow has no 'steps'", "")
    elif not isinstance(raw_steps, list):
        c.add("'steps' must be a list", "steps")
    else:
        if not raw_steps:
            c.add("'steps' is empty", "steps")
        for i, raw in enumerate(raw_steps):
            step = _parse_step(raw, i, c)
            if step is not None:
                steps.append(step)
                loc.step_sources.append(i)
    outputs = data.get("outputs") or {}
    if not isinstance(outputs, Mapping):
        c.add("'outputs' must be a mapping of output name to template", "outputs")
        outputs = {}
    on_failure = data.get("on_failure", "fail_fast")
    if on_failure not in ("fail_fast", "continue"):
        c.add("'on_failure' must be 'fail_fast' or 'continue'", "on_failure")
        on_failure = "fail_fast"
    description = data.get("description", "") or ""
    if not isinstance(description, str):
        c.add("'description' must be a string", "description")
        description = ""
    workflow = Workflow(
        name=name,
        description=description,
        version=str(data.get("version", "") or ""),
        inputs=inputs,
        steps=steps,
        outputs=dict(outputs),
        max_concurrency=c.number(data.get("max_concurrency"), "max_concurrency", integer=True,
                                 minimum=1),
        budget_usd=c.number(data.get("budget_usd"), "budget_usd"),
        timeout=c.number(data.get("timeout"), "timeout"),
        on_failure=on_failure,
        source=source or loc.file,
        locations=loc,
    )
    if c.issues:
        error = WorkflowValidationError(c.issues)
        # what could be parsed, so that validation can report the other problems too
        error.partial = workflow  # type: ignore[attr-defined]
        error.declared_ids = {  # type: ignore[attr-defined]
            str(raw["id"]) for raw in (raw_steps if isinstance(raw_steps, list) else [])
            if isinstance(raw, Mapping) and isinstance(raw.get("id"), str)}
        raise error
    return workflow


# ----------------------------------------------------------------------------- builder


class WorkflowBuilder:
    """Build a workflow in Python, step by step; :meth:`build` returns the :class:`Workflow`.

    Args:
        name: the workflow name; other keyword arguments are :class:`Workflow` fields
            (``description``, ``max_concurrency``, ``budget_usd``, ``timeout``, ``on_failure``).
    """

    def __init__(self, name: str, **options: Any) -> None:
        self._data: dict[str, Any] = {"name": name, **options, "inputs": {}, "steps": [],
                                      "outputs": {}}

    def input(self, name: str, *, type: str = "any", default: Any = REQUIRED,
              description: str = "") -> WorkflowBuilder:
        """Declare an input (no ``default``: required). Returns self."""
        spec: dict[str, Any] = {"type": type, "description": description}
        if default is not REQUIRED:
            spec["default"] = default
        self._data["inputs"][name] = spec
        return self

    def step(self, id: str, uses: str, *, with_: Mapping[str, Any] | None = None,
             **options: Any) -> WorkflowBuilder:
        """Add a step; ``options`` are the step keys (``depends_on``, ``when``, ``for_each``,
        ``retry``, ``timeout``, ``on_error``, ``priority``, ...). Returns self.
        """
        raw: dict[str, Any] = {"id": id, "uses": uses, **options}
        if with_:
            raw["with"] = dict(with_)
        if isinstance(raw.get("retry"), RetryPolicy):
            raw["retry"] = raw["retry"].to_dict()
        self._data["steps"].append(raw)
        return self

    def output(self, name: str, template: Any) -> WorkflowBuilder:
        """Add an output (a template rendered when the run ends). Returns self."""
        self._data["outputs"][name] = template
        return self

    def build(self) -> Workflow:
        """Return the workflow. Raises WorkflowValidationError on structural problems."""
        return parse_workflow(self._data)


# ----------------------------------------------------------------------------- results


@define
class StepResult:
    """The result of one step of a run.

    Args:
        id: step id.
        status: pending, running, completed, failed, skipped, cancelled, budget_exceeded,
            or waiting (a human step waits for its answer; see :class:`WaitingForInput`).
        output: the output (a list in input order for ``for_each``; None when none).
        error: the error message when it failed (or when a fallback replaced its output).
        error_type: the error's class name.
        attempts: tries made across all its keys (retries included).
        started_at, finished_at: UNIX seconds (None when it never started).
        input_tokens, output_tokens: tokens of its LLM calls.
        cost_usd: US dollars of its LLM calls; None when any price was unknown.
        resumed: True when its output came from a checkpoint of an earlier attempt of the run.
        reason: why it was skipped or cancelled.
        iterations: loop iterations run (``until`` steps).
    """

    id: str
    status: str = "pending"
    output: Any = None
    error: str | None = None
    error_type: str | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0
    resumed: bool = False
    reason: str | None = None
    iterations: int | None = None

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to finish (None when it did not run)."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


@define
class RunResult:
    """What a run produced.

    Args:
        run_id: the stored run id.
        workflow_name: the workflow's name.
        status: completed, failed, partial, cancelled, or waiting (a human step waits for
            its answer: the run is stored ``waiting``, no process holds it, and answering
            resumes it; see ``docs/workflows.md``, "Human steps").
        outputs: the workflow outputs, rendered (empty while waiting).
        steps: per-step results by step id, in definition order.
        error: why the run failed (None when it completed).
        input_tokens, output_tokens: totals of all LLM calls of the run.
        cost_usd: total US dollars; None when any call's price was unknown.
        started_at, finished_at: UNIX seconds.
        resume_count: how many times the run was resumed.
    """

    run_id: str
    workflow_name: str
    status: str
    outputs: dict[str, Any] = field(factory=dict)
    steps: dict[str, StepResult] = field(factory=dict)
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    resume_count: int = 0

    @property
    def ok(self) -> bool:
        """True when the run completed."""
        return self.status == "completed"

    @property
    def waiting(self) -> bool:
        """True when the run stopped to wait for a human answer (status ``waiting``)."""
        return self.status == "waiting"

    @property
    def duration_s(self) -> float:
        """Seconds the run took."""
        return self.finished_at - self.started_at

    @property
    def total_tokens(self) -> int:
        """input_tokens + output_tokens."""
        return self.input_tokens + self.output_tokens

    def steps_by_status(self) -> dict[str, int]:
        """Return ``{status: count}`` over the steps."""
        counts: dict[str, int] = {}
        for s in self.steps.values():
            counts[s.status] = counts.get(s.status, 0) + 1
        return counts

    def summary(self) -> dict[str, Any]:
        """Return the run summary carried by the ``run.finished`` event."""
        return {
            "status": self.status,
            "steps": self.steps_by_status(),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
            "duration_s": round(self.duration_s, 6),
            "error": self.error,
        }

    def raise_for_status(self) -> RunResult:
        """Return self when completed; else raise StepFailedError naming the failed steps
        (a ``waiting`` run raises too: it has no outputs yet).
        """
        if self.ok:
            return self
        failed = [f"{s.id}: {s.error}" for s in self.steps.values()
                  if s.status in ("failed", "budget_exceeded", "cancelled")]
        raise StepFailedError(f"run {self.run_id} {self.status}: {self.error or ''}"
                              + ("; " + "; ".join(failed) if failed else ""))

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-ready builtins (with ``duration_s`` per step and run)."""
        data = unstructure(self)
        data["duration_s"] = self.duration_s
        for sid, step in self.steps.items():
            data["steps"][sid]["duration_s"] = step.duration_s
        return data



class WaitingForInput(Exception):
    """Raised by a step's action to stop the step until a human answers (``human.approve``,
    ``human.input``).

    The engine records the step key as ``waiting`` (its attempt, a ``step.waiting`` event and
    the run record's ``metadata["human"]["waiting"][step_key]``), lets the other branches of
    the run finish, and ends the run ``waiting``. Never retried. Answering the step
    (:func:`flowyard.engine.human.answer_step`) stores the answer and resumes the run; the
    action then finds the answer and returns it.

    Args:
        prompt: what the human is asked (text).
        kind: ``"approve"`` or ``"input"``.
        schema: the JSON Schema the answer must satisfy (None: any JSON value).
        deadline: UNIX seconds after which the step takes its default outcome (None: waits
            forever).
        default: the answer used when the deadline passes (``has_default`` says if one was
            given).
        has_default: whether ``default`` was given (None is a valid default).
        key: the key the answer is stored under when it is not the step key (a human tool
            called by an agent: ``<step key>/<tool call id>``), else None.
        state: JSON-ready data to keep with the request and hand back after the answer
            (an agent's conversation), else None; set by whoever the signal passes through.
    """

    def __init__(self, prompt: str, *, kind: str = "input",
                 schema: Mapping[str, Any] | None = None, deadline: float | None = None,
                 default: Any = None, has_default: bool = False, key: str | None = None,
                 state: dict[str, Any] | None = None) -> None:
        super().__init__(f"waiting for a human answer: {prompt}")
        self.prompt = prompt
        self.kind = kind
        self.schema = dict(schema) if schema is not None else None
        self.deadline = deadline
        self.default = default
        self.has_default = has_default
        self.key = key
        self.state = state

    def to_dict(self) -> dict[str, Any]:
        """Return what is stored for the waiting step: ``{prompt, kind, schema, deadline,
        default, has_default}`` (JSON-ready when the schema and default are).
        """
        return {"prompt": self.prompt, "kind": self.kind, "schema": self.schema,
                "deadline": self.deadline, "default": self.default,
                "has_default": self.has_default}
