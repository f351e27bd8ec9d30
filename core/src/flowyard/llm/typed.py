"""Typed outputs: a model's answer parsed, validated and returned as a given type.

An *output type* is one of:

- a pydantic model (or a pydantic dataclass, anything with ``__pydantic_core_schema__``):
  its schema and validation are pydantic's (``pydantic.TypeAdapter``); pydantic is not a
  dependency of the core, but such a type cannot exist without it;
- a standard ``dataclasses.dataclass``, an ``attrs`` class or a ``TypedDict``: the JSON
  schema is derived from the field annotations here (``str``, ``int``, ``float``, ``bool``,
  ``None``, ``Any``, ``Literal``, ``Enum``, ``list``/``tuple``/``set``, ``dict[str, X]``,
  ``Optional``/unions and nested classes of these kinds; anything else is a :class:`TypeError`
  naming the field), the answer is checked with ``jsonschema`` and converted with ``cattrs``;
- a JSON schema (a mapping, as YAML workflows give it): the answer is checked with
  ``jsonschema`` and returned as the parsed JSON value;
- an :class:`OutputType` (what :func:`output_type_of` returns).

:func:`chat_typed` sends the schema as the request's ``response_schema`` (providers that
support structured output enforce it), parses the answer as JSON (a fenced ```` ```json ````
block is unwrapped), validates it, and on a failure appends the invalid answer and the
validation errors to the conversation and asks again, at most ``max_validation_retries``
times, before raising :class:`OutputValidationError`. The ``llm.chat`` action and agents use
the same loop (:func:`ask_until_valid`).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import types
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from flowyard.errors import ToolError
from flowyard.models import Message

if TYPE_CHECKING:
    from flowyard.context import ToolContext

__all__ = ["OutputType", "OutputValidationError", "InvalidOutput", "output_type_of",
           "ask_until_valid", "chat_typed", "retry_message", "DEFAULT_VALIDATION_RETRIES"]

#: Re-asks after an invalid answer before :class:`OutputValidationError` (so at most 3 calls).
DEFAULT_VALIDATION_RETRIES = 2

#: Most validation errors quoted back to the model (and in the error message).
MAX_ERRORS_SHOWN = 10


class OutputValidationError(ToolError):
    """The model's answer did not validate against the output type, even after re-asking.

    Attributes:
        type_name: the output type's name (``"Invoice"``, ``"response_schema"``).
        errors: the last answer's validation errors (``"items[0].price: ..."``).
        attempts: model calls made.
        answer: the last answer's text.
    """

    def __init__(self, message: str, *, type_name: str, errors: Sequence[str], attempts: int,
                 answer: str, tool: str | None = None) -> None:
        super().__init__(message, tool=tool, retriable=False)
        self.type_name = type_name
        self.errors = list(errors)
        self.attempts = attempts
        self.answer = answer


class InvalidOutput(ValueError):
    """One answer did not validate; ``errors`` lists the problems, one string each."""

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = list(errors) or ["invalid"]


@attrs.frozen
class OutputType:
    """What an answer must be, and how to turn it into the value returned.

    Args:
        name: the type's name, for messages.
        schema: the JSON schema sent to the model (``response_schema``).
        convert: turns the parsed JSON value into the result; raises :class:`InvalidOutput`.
    """

    name: str
    schema: dict[str, Any]
    convert: Callable[[Any], Any] = attrs.field(repr=False)

    def parse(self, text: str) -> Any:
        """Return the answer ``text`` as the output value.

        Raises:
            InvalidOutput: the text is not JSON or the value does not validate.
        """
        return self.load(text)[1]

    def load(self, text: str) -> tuple[Any, Any]:
        """Return the answer ``text`` as (its parsed JSON value, the output value).

        Raises:
            InvalidOutput: the text is not JSON or the value does not validate.
        """
        try:
            value = json.loads(_unfence(text))
        except ValueError as exc:
            raise InvalidOutput([f"the answer is not valid JSON ({exc}); answer with only "
                                 "the JSON value"]) from None
        return value, self.convert(value)


_FENCE = re.compile(r"\A\s*```[a-zA-Z]*\s*\n(?P<body>.*?)\n\s*```\s*\Z", re.S)


def _unfence(text: str) -> str:
    match = _FENCE.match(text)
    return match.group("body") if match else text


def _path(parts: Sequence[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(the answer)"


def _schema_checker(schema: Mapping[str, Any]) -> Callable[[Any], list[str]]:
    import jsonschema  # lazy: loaded with the first typed call

    validator = jsonschema.Draft202012Validator(schema)

    def check(value: Any) -> list[str]:
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
        return [f"{_path(list(e.absolute_path))}: {e.message}" for e in errors]

    return check


def _from_schema(schema: Mapping[str, Any], name: str = "response_schema") -> OutputType:
    import jsonschema  # lazy: loaded with the first typed call

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise TypeError(f"{name}: not a valid JSON schema: {exc.message}") from None
    check = _schema_checker(schema)

    def convert(value: Any) -> Any:
        errors = check(value)
        if errors:
            raise InvalidOutput(errors)
        return value

    return OutputType(name, dict(schema), convert)


def _is_pydantic(tp: Any) -> bool:
    return isinstance(tp, type) and hasattr(tp, "__pydantic_core_schema__")


def _from_pydantic(tp: type) -> OutputType:
    import pydantic  # lazy: only for pydantic types (which cannot exist without it)

    adapter = pydantic.TypeAdapter(tp)

    def convert(value: Any) -> Any:
        try:
            return adapter.validate_python(value)
        except pydantic.ValidationError as exc:
            raise InvalidOutput([f"{_path(e['loc'])}: {e['msg']}"
                                 for e in exc.errors()]) from None

    return OutputType(tp.__name__, adapter.json_schema(), convert)


def _is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__required_keys__")


_SCALARS: dict[Any, dict[str, Any]] = {
    str: {"type": "string"}, int: {"type": "integer"}, float: {"type": "number"},
    bool: {"type": "boolean"}, type(None): {"type": "null"}, Any: {},
}


def _annotation_schema(tp: Any, where: str, seen: tuple[type, ...]) -> dict[str, Any]:
    """The JSON schema of one annotation (see the module docstring for what is supported).

    Raises:
        TypeError: an unsupported annotation, naming ``where`` (the field).
    """
    if tp in _SCALARS:
        return dict(_SCALARS[tp])
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        return {"anyOf": [_annotation_schema(a, where, seen) for a in args]}
    if origin in (typing.Annotated,):
        return _annotation_schema(args[0], where, seen)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum": [m.value for m in tp]}
    if origin in (list, set, frozenset, Sequence) or tp in (list, set, frozenset):
        schema: dict[str, Any] = {"type": "array"}
        if args:
            schema["items"] = _annotation_schema(args[0], f"{where}[]", seen)
        if origin in (set, frozenset):
            schema["uniqueItems"] = True
        return schema
    if origin is tuple or tp is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": _annotation_schema(args[0], f"{where}[]", seen)}
        items = [_annotation_schema(a, f"{where}[{i}]", seen) for i, a in enumerate(args)]
        return {"type": "array", "prefixItems": items, "minItems": len(items),
                "maxItems": len(items)}
    if origin in (dict, Mapping) or tp is dict:
        if args and args[0] is not str:
            raise TypeError(f"{where}: only dict[str, ...] has a JSON form, not {tp!r}")
        schema = {"type": "object"}
        if args:
            schema["additionalProperties"] = _annotation_schema(args[1], f"{where}{{}}", seen)
        return schema
    if isinstance(tp, type) and (attrs.has(tp) or dataclasses.is_dataclass(tp)
                                 or _is_typeddict(tp)):
        return _class_schema(tp, seen)
    raise TypeError(f"{where}: the annotation {tp!r} has no JSON schema here (supported: str, "
                    "int, float, bool, None, Any, Literal, Enum, list, tuple, set, dict[str, "
                    "...], unions, dataclasses, attrs classes and TypedDicts; use a pydantic "
                    "model for more)")


def _class_schema(tp: type, seen: tuple[type, ...]) -> dict[str, Any]:
    if tp in seen:
        raise TypeError(f"{tp.__name__}: recursive types are not supported here (use a "
                        "pydantic model)")
    seen = (*seen, tp)
    try:
        hints = typing.get_type_hints(tp, include_extras=True)
    except (NameError, TypeError) as exc:
        raise TypeError(f"{tp.__name__}: its annotations cannot be resolved: {exc}") from None
    if attrs.has(tp):
        fields = [(f.name, f.default is attrs.NOTHING) for f in attrs.fields(tp)]
    elif dataclasses.is_dataclass(tp):
        fields = [(f.name, f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING)
                  for f in dataclasses.fields(tp) if f.init]
    else:
        fields = [(name, name in tp.__required_keys__) for name in hints]
    properties = {name: _annotation_schema(hints.get(name, Any), f"{tp.__name__}.{name}", seen)
                  for name, _ in fields}
    return {"type": "object", "title": tp.__name__, "properties": properties,
            "required": [name for name, required in fields if required],
            "additionalProperties": False}


def _from_class(tp: type) -> OutputType:
    import cattrs  # lazy: loaded with the first typed call

    schema = _class_schema(tp, ())
    check = _schema_checker(schema)
    converter = cattrs.Converter()

    def convert(value: Any) -> Any:
        errors = check(value)
        if errors:
            raise InvalidOutput(errors)
        try:
            return converter.structure(value, tp)
        except Exception as exc:  # noqa: BLE001 - cattrs raises many kinds; all are invalid
            raise InvalidOutput(cattrs.transform_error(exc, path=tp.__name__)) from None

    return OutputType(tp.__name__, schema, convert)


def output_type_of(spec: Any) -> OutputType:
    """Return the :class:`OutputType` of ``spec``.

    Args:
        spec: an :class:`OutputType`, a JSON schema mapping, a pydantic model, a dataclass, an
            attrs class or a ``TypedDict`` class.

    Raises:
        TypeError: ``spec`` is none of these, a JSON schema is invalid, or a field's
            annotation has no JSON schema (the message names the field).
    """
    if isinstance(spec, OutputType):
        return spec
    if isinstance(spec, Mapping):
        return _from_schema(spec)
    if _is_pydantic(spec):
        return _from_pydantic(spec)
    if isinstance(spec, type) and (attrs.has(spec) or dataclasses.is_dataclass(spec)
                                   or _is_typeddict(spec)):
        return _from_class(spec)
    raise TypeError(f"an output type must be a pydantic model, a dataclass, an attrs class, a "
                    f"TypedDict or a JSON schema (a mapping), not {spec!r}")


def retry_message(output: OutputType, errors: Sequence[str]) -> Message:
    """Return the user message that asks again after an invalid answer: the errors (at most
    :data:`MAX_ERRORS_SHOWN`) and the schema.
    """
    shown = list(errors[:MAX_ERRORS_SHOWN])
    if len(errors) > len(shown):
        shown.append(f"... and {len(errors) - len(shown)} more")
    listing = "\n".join(f"- {e}" for e in shown)
    return Message.user(
        f"Your answer does not match the required {output.name} schema:\n{listing}\n"
        f"Answer again with only a JSON value that matches this JSON schema:\n"
        f"{json.dumps(output.schema, ensure_ascii=False)}")


async def ask_until_valid(call: Callable[[list[Message]], Awaitable[str]],
                          messages: Sequence[Message], output: OutputType, *,
                          max_validation_retries: int = DEFAULT_VALIDATION_RETRIES,
                          on_invalid: Callable[[int, str, list[str]], None] | None = None,
                          tool: str | None = None) -> tuple[Any, list[Message]]:
    """Ask with ``call(messages)`` until the answer validates as ``output``.

    Args:
        call: makes one model call on the conversation and returns the answer text.
        messages: the conversation to start from (not changed).
        output: what the answer must be.
        max_validation_retries: re-asks after an invalid answer (0: one call only).
        on_invalid: called with (attempt number from 1, answer text, errors) per invalid
            answer, e.g. to emit an event.
        tool: the action's name, for the error.

    Returns:
        (the converted value, the conversation including the valid answer).

    Raises:
        OutputValidationError: still invalid after ``max_validation_retries`` re-asks; names
            the type, the attempts and the errors.
        ValueError: ``max_validation_retries`` is negative.
    """
    if max_validation_retries < 0:
        raise ValueError(f"max_validation_retries must be >= 0, got {max_validation_retries}")
    conversation = list(messages)
    for attempt in range(1, max_validation_retries + 2):
        text = await call(conversation)
        conversation.append(Message.assistant(text))
        try:
            return output.parse(text), conversation
        except InvalidOutput as exc:
            errors = exc.errors
        if on_invalid is not None:
            on_invalid(attempt, text, errors)
        if attempt > max_validation_retries:
            shown = "; ".join(errors[:MAX_ERRORS_SHOWN])
            raise OutputValidationError(
                f"the model's answer does not match {output.name} after {attempt} "
                f"attempt(s) (max_validation_retries={max_validation_retries}): {shown}; last "
                f"answer: {text[:200]!r}", type_name=output.name, errors=errors,
                attempts=attempt, answer=text, tool=tool)
        conversation.append(retry_message(output, errors))
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


async def chat_typed(llm: Any, messages: Sequence[Message] | str, output_type: Any, *,
                     max_validation_retries: int = DEFAULT_VALIDATION_RETRIES,
                     model: str | None = None, context: ToolContext | None = None,
                     **params: Any) -> Any:
    """Ask a model for an answer of ``output_type`` and return it as that type.

    Args:
        llm: the LLM gateway (``stack.llm``).
        messages: the conversation, or a prompt string.
        output_type: a pydantic model, dataclass, attrs class, ``TypedDict`` or JSON schema
            (see :func:`output_type_of`).
        max_validation_retries: re-asks after an invalid answer (default 2: at most 3 calls).
        model: ``provider/model`` (None: the default model).
        context: the calling step's context (events, cost lines, budgets).
        **params: further ``llm.chat`` parameters (temperature, max_tokens, ...).

    Returns:
        an instance of ``output_type`` (the parsed JSON value for a JSON schema).

    Raises:
        OutputValidationError: no valid answer within the re-asks (with an
            ``llm.output.invalid`` event per invalid answer when ``context`` is given).
        TypeError: ``output_type`` is not a supported type.
        ProviderError, BudgetExceeded: from the gateway.
    """
    output = output_type_of(output_type)
    if isinstance(messages, str):
        messages = [Message.user(messages)]

    async def call(conversation: list[Message]) -> str:
        response = await llm.chat(conversation, model=model, context=context,
                                  response_schema=output.schema, **params)
        return str(response.text)

    def on_invalid(attempt: int, text: str, errors: list[str]) -> None:
        if context is not None:
            context.emit("llm.output.invalid", output_type=output.name, attempt=attempt,
                         errors=errors[:MAX_ERRORS_SHOWN], answer=text[:500])

    value, _ = await ask_until_valid(call, messages, output,
                                     max_validation_retries=max_validation_retries,
                                     on_invalid=on_invalid)
    return value
