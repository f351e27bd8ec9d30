"""Tools from plain Python functions, and the base class for tool objects.

``@flowyard.tool`` turns a sync or async function into a :class:`FunctionTool`: the JSON schema
of its arguments comes from the type hints, and each argument's description from the
docstring (Google, NumPy, reST or Epydoc style, parsed by ``docstring_parser``). A parameter
named ``context`` annotated as :class:`~flowyard.context.ToolContext` receives the call context
and is left out of the schema.

Example::

    @flowyard.tool(name="math.add", idempotent=True)
    def add(a: int, b: int = 0) -> int:
        '''Add two numbers.

Args:
            a: the first number.
            b: the second number.
        '''
        return a + b
"""

from __future__ import annotations

import abc
import enum
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin

import anyio.to_thread

from flowyard.context import ToolContext
from flowyard.errors import ToolInputError
from flowyard.models import ToolSpec

__all__ = ["tool", "FunctionTool", "BaseTool", "schema_for_type", "validate_arguments",
           "compiled_validator", "argument_checks", "check_templated_arguments",
           "ArgumentChecks"]

_SIMPLE: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    bytes: {"type": "string", "contentEncoding": "base64"},
    Any: {},
    dict: {"type": "object"},
    list: {"type": "array"},
}


def schema_for_type(tp: Any) -> dict[str, Any]:
    """Return the JSON Schema of a Python type hint.

    Supports str, int, float, bool, None, bytes, Any, list/tuple/set, dict, Optional/Union,
    Literal, Enum subclasses and attrs classes.

    Raises:
        TypeError: the hint cannot be expressed (the message names it).
    """
    if tp in _SIMPLE:
        return dict(_SIMPLE[tp])
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is Literal:
        values = list(args)
        kinds = {type(v) for v in values}
        schema: dict[str, Any] = {"enum": values}
        if len(kinds) == 1 and next(iter(kinds)) in _SIMPLE:
            schema.update(_SIMPLE[next(iter(kinds))])
        return schema
    if origin in (Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        schemas = [schema_for_type(a) for a in members]
        if len(members) < len(args):
            schemas.append({"type": "null"})
        return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    if origin in (list, Sequence, tuple, set, frozenset, typing.Sequence):
        schema = {"type": "array"}
        if args and not (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
            if origin is tuple:
                schema["prefixItems"] = [schema_for_type(a) for a in args]
            else:
                schema["items"] = schema_for_type(args[0])
        elif args:
            schema["items"] = schema_for_type(args[0])
        return schema
    if origin in (dict, Mapping, typing.Mapping):
        schema = {"type": "object"}
        if len(args) == 2 and args[1] is not Any:
            schema["additionalProperties"] = schema_for_type(args[1])
        return schema
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum": [m.value for m in tp]}
    if isinstance(tp, type):
        import attrs

        if attrs.has(tp):
            hints = typing.get_type_hints(tp)
            props = {f.name: schema_for_type(hints[f.name]) for f in attrs.fields(tp)}
            required = [f.name for f in attrs.fields(tp) if f.default is attrs.NOTHING]
            return {"type": "object", "properties": props, "required": required}
    raise TypeError(f"cannot express type hint {tp!r} as JSON Schema")


#: Compiled validators by the id of their schema (kept alive with it), most recent last.
_VALIDATORS: dict[int, tuple[Mapping[str, Any], Any]] = {}
MAX_CACHED_VALIDATORS = 1024


def compiled_validator(schema: Mapping[str, Any]) -> Any:
    """Return a JSON Schema (draft 2020-12) validator of ``schema``, built once per schema
    object: tools keep their ``parameters`` for their lifetime, so a tool called for every
    step compiles its schema once. A schema changed in place after its first use is not
    seen; give a new dict instead.

    Returns:
        a :class:`jsonschema.Draft202012Validator`.
    """
    entry = _VALIDATORS.get(id(schema))
    if entry is not None and entry[0] is schema:
        return entry[1]
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    if len(_VALIDATORS) >= MAX_CACHED_VALIDATORS:
        del _VALIDATORS[next(iter(_VALIDATORS))]
    _VALIDATORS[id(schema)] = (schema, validator)
    return validator


def validate_arguments(schema: Mapping[str, Any], arguments: Mapping[str, Any], *, tool: str
                       ) -> None:
    """Check ``arguments`` against a JSON Schema (draft 2020-12).

    Raises:
        ToolInputError: every violation, each with its JSON path, in one message.
    """
    validator = compiled_validator(schema)
    instance = arguments if type(arguments) is dict else dict(arguments)
    errors = list(validator.iter_errors(instance))
    if errors:
        errors.sort(key=lambda e: list(e.path))
        detail = "; ".join(
            f"{'/'.join(str(p) for p in e.path) or '<root>'}: {e.message}" for e in errors
        )
        raise ToolInputError(f"invalid arguments for tool {tool!r}: {detail}", tool=tool)


#: Keywords of a container's schema whose verdict depends only on what is written in the
#: workflow (its type, its keys, its length), never on the values templates fill in.
_STATIC_CONTAINER_KEYWORDS = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems",
    "minItems", "maxItems", "minProperties", "maxProperties", "propertyNames",
    "description", "title", "default", "examples", "$comment", "deprecated", "readOnly",
    "writeOnly", "$schema", "$id"})
#: Keywords that constrain nothing (annotations): a schema made of them accepts any value.
_ANNOTATIONS = frozenset({"description", "title", "default", "examples", "$comment",
                          "deprecated", "readOnly", "writeOnly"})

#: ``((path, validator), ...)``: what is left to check of a step's arguments at run time.
ArgumentChecks = tuple[tuple[tuple[str | int, ...], Any], ...]


def _accepts_anything(schema: Any) -> bool:
    return schema is True or (isinstance(schema, Mapping) and set(schema) <= _ANNOTATIONS)


def argument_checks(schema: Mapping[str, Any], templated: Sequence[tuple[str | int, ...]]
                    ) -> ArgumentChecks | None:
    """Split the validation of a step's arguments into what validation already did and what
    is left for run time.

    Call it only for arguments whose written part passed :func:`validate_arguments`-style
    checking at validation time, errors under the templated paths aside (what
    ``flowyard.engine.validate`` does). When every container on the way to a templated value
    is constrained only by keywords that the written part decides (type, keys, length: see
    ``_STATIC_CONTAINER_KEYWORDS``), the arguments are valid exactly when each templated
    value is valid against the sub-schema at its path; sub-schemas that accept anything are
    dropped.

    Args:
        schema: the tool's ``parameters`` (JSON Schema draft 2020-12).
        templated: the paths (keys and list indexes) of the templated values.

    Returns:
        ``((path, validator), ...)`` for the values to check when they are known (empty:
        nothing is left to check), or None when the schema uses anything else (``anyOf``,
        ``$ref``, ``enum`` of a container...): then the whole arguments are validated at run
        time.
    """
    checks: list[tuple[tuple[str | int, ...], Any]] = []
    for path in templated:
        if not path:
            return None
        sub: Any = schema
        for key in path:
            if _accepts_anything(sub):
                break
            if not isinstance(sub, Mapping) or not set(sub) <= _STATIC_CONTAINER_KEYWORDS:
                return None
            if isinstance(key, str):
                props = sub.get("properties") or {}
                sub = props[key] if key in props else sub.get("additionalProperties", True)
            else:
                prefix = sub.get("prefixItems") or []
                sub = prefix[key] if key < len(prefix) else sub.get("items", True)
        if sub is False:
            return None
        if not _accepts_anything(sub):
            if not isinstance(sub, Mapping):
                return None
            checks.append((path, compiled_validator(sub)))
    return tuple(checks)


def check_templated_arguments(checks: ArgumentChecks, arguments: Mapping[str, Any], *,
                              tool: str) -> None:
    """Check the templated values of rendered arguments (see :func:`argument_checks`).

    Raises:
        ToolInputError: every violation, each with its JSON path, in one message (as
            :func:`validate_arguments` words it).
    """
    problems: list[tuple[list[Any], str]] = []
    for path, validator in checks:
        value: Any = arguments
        for key in path:
            value = value[key]
        for error in validator.iter_errors(value):
            problems.append(([*path, *error.path], error.message))
    if problems:
        problems.sort(key=lambda p: [str(k) for k in p[0]])
        detail = "; ".join(f"{'/'.join(str(k) for k in where) or '<root>'}: {message}"
                           for where, message in problems)
        raise ToolInputError(f"invalid arguments for tool {tool!r}: {detail}", tool=tool)


class BaseTool(abc.ABC):
    """Base class for stateful tool objects (abstract: subclasses implement :meth:`run`).

    Subclasses set ``name``, ``description``, ``parameters``, ``idempotent`` and
    ``side_effects`` and implement :meth:`run`. :meth:`invoke` validates the arguments
    against ``parameters`` before calling :meth:`run`.
    """

    name: str = ""
    description: str = ""
    parameters: dict[str, Any] = {"type": "object", "properties": {}}
    idempotent: bool = False
    side_effects: Sequence[str] = ()

    async def invoke(self, arguments: Mapping[str, Any], context: ToolContext) -> Any:
        """Validate ``arguments`` and run the tool.

        Raises:
            ToolInputError: the arguments do not match ``parameters``.
            ToolError: raised by :meth:`run`.
        """
        validate_arguments(self.parameters, arguments, tool=self.name)
        return await self.run(dict(arguments), context)

    @abc.abstractmethod
    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Do the work; return a JSON-ready result."""

    def spec(self) -> Any:
        """Return the :class:`~flowyard.models.ToolSpec` shown to models."""
        return ToolSpec(name=self.name, description=self.description,
                        parameters=self.parameters)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class FunctionTool(BaseTool):
    """A tool backed by a plain function (see :func:`tool`).

    Sync functions run in a worker thread so they never block the event loop.
    """

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        idempotent: bool = False,
        side_effects: Sequence[str] = (),
    ) -> None:
        import docstring_parser

        self.func = func
        self.name = name or func.__name__
        doc = docstring_parser.parse(inspect.getdoc(func) or "")
        summary = "\n\n".join(p for p in (doc.short_description, doc.long_description) if p)
        self.description = description if description is not None else summary
        self.idempotent = idempotent
        self.side_effects = tuple(side_effects)
        self.is_async = inspect.iscoroutinefunction(func)
        arg_docs = {p.arg_name: p.description or "" for p in doc.params}
        try:
            hints = typing.get_type_hints(func)
        except NameError as exc:
            raise TypeError(f"tool {self.name!r}: cannot resolve its type hints ({exc}); "
                            "define the annotated types at module level") from None
        signature = inspect.signature(func)
        props: dict[str, Any] = {}
        required: list[str] = []
        self._context_param: str | None = None
        for pname, param in signature.parameters.items():
            hint = hints.get(pname, Any)
            if hint is ToolContext or pname == "context":
                self._context_param = pname
                continue
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"tool {self.name!r}: *args/**kwargs are not supported")
            try:
                prop = schema_for_type(hint)
            except TypeError as exc:
                raise TypeError(f"tool {self.name!r}, argument {pname!r}: {exc}") from None
            if arg_docs.get(pname):
                prop["description"] = arg_docs[pname]
            if param.default is inspect.Parameter.empty:
                required.append(pname)
            elif param.default is None or isinstance(param.default, (str, int, float, bool)):
                prop["default"] = param.default
            props[pname] = prop
        self.parameters = {"type": "object", "properties": props, "required": required,
                           "additionalProperties": False}

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Call the function with ``arguments`` (and the context when it asks for one)."""
        if self._context_param is not None:
            arguments = {**arguments, self._context_param: context}
        if self.is_async:
            return await self.func(**arguments)
        return await anyio.to_thread.run_sync(lambda: self.func(**arguments))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the underlying function directly."""
        return self.func(*args, **kwargs)


def tool(
    func: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    idempotent: bool = False,
    side_effects: Sequence[str] = (),
) -> Any:
    """Turn a function into a :class:`FunctionTool`; usable bare or with arguments.

    Args:
        func: the function, when used bare (``@tool``); None with arguments (``@tool(...)``),
            which returns the decorator.
        name: the action name (default: the function's name).
        description: overrides the docstring's summary.
        idempotent: calling twice with the same arguments has the effect of once.
        side_effects: what the tool changes outside flowyard (``["filesystem"]``).

    Raises:
        TypeError: a parameter's type hint cannot be expressed as JSON Schema.
    """

    def wrap(f: Callable[..., Any]) -> FunctionTool:
        return FunctionTool(f, name=name, description=description, idempotent=idempotent,
                            side_effects=side_effects)

    return wrap(func) if func is not None else wrap

