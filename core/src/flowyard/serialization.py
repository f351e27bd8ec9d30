"""The one cattrs converter of flowyard, and JSON helpers.

Every public model in :mod:`flowyard.models` round-trips:
``from_json(to_json(x), type(x)) == x``. Plugins that persist or send models use these
functions rather than their own converters.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar, Union, get_origin

import cattrs

from flowyard.models import ContentPart, ImagePart, Message, TextPart, ToolCall

__all__ = ["converter", "unstructure", "structure", "to_json", "from_json", "json_default"]

T = TypeVar("T")

converter = cattrs.Converter(omit_if_default=False)


def _structure_part(value: Any, _type: Any) -> ContentPart:
    if not isinstance(value, dict):
        raise TypeError(f"content part must be an object, got {type(value).__name__}")
    kind = value.get("type", "text")
    if kind == "text":
        return converter.structure(value, TextPart)
    if kind == "image":
        return converter.structure(value, ImagePart)
    raise ValueError(f"unknown content part type {kind!r}")


def _structure_content(value: Any, _type: Any) -> str | list[ContentPart]:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return [_structure_part(v, ContentPart) for v in value]
    raise TypeError(f"message content must be a string or a list, got {type(value).__name__}")


converter.register_structure_hook(Union[TextPart, ImagePart], _structure_part)
converter.register_structure_hook(Union[str, list[ContentPart]], _structure_content)


def _is_set_type(cls: Any) -> bool:
    """True for ``set``/``frozenset`` and their parametrised forms (``frozenset[str]``)."""
    return cls in (set, frozenset) or get_origin(cls) in (set, frozenset)


# Sets (``ModelInfo.capabilities`` is a ``frozenset[str]``) unstructure as sorted lists, so
# every unstructured model is JSON-ready and stable; structuring a list back gives the set.
converter.register_unstructure_hook_func(_is_set_type, lambda s: sorted(s))


def _structure_message(value: Any, _type: Any) -> Message:
    data = dict(value)
    data["content"] = _structure_content(data.get("content", ""), None)
    return Message(
        role=data["role"],
        content=data["content"],
        name=data.get("name"),
        tool_calls=[converter.structure(c, _tool_call_type()) for c in data.get("tool_calls", [])],
        tool_call_id=data.get("tool_call_id"),
    )


def _tool_call_type() -> type:
    return ToolCall


converter.register_structure_hook(Message, _structure_message)


def unstructure(obj: Any) -> Any:
    """Return ``obj`` as JSON-ready builtins (dicts, lists, str, numbers, None)."""
    return converter.unstructure(obj)


def structure(data: Any, cls: type[T]) -> T:
    """Build an instance of ``cls`` from builtins.

    Raises:
        cattrs.BaseValidationError: when ``data`` does not fit ``cls``.
    """
    return converter.structure(data, cls)


def json_default(obj: Any) -> Any:
    """``default=`` for :func:`json.dumps`: attrs instances, sets, bytes and paths."""
    import attrs

    if attrs.has(type(obj)):
        return converter.unstructure(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", errors="replace")
    if hasattr(obj, "__fspath__"):
        return str(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def to_json(obj: Any, *, indent: int | None = None) -> str:
    """Serialize an attrs model (or builtins containing models) to a JSON string."""
    return json.dumps(converter.unstructure(obj), default=json_default, indent=indent)


def from_json(text: str | bytes, cls: type[T]) -> T:
    """Parse a JSON string into ``cls``.

    Raises:
        json.JSONDecodeError: on invalid JSON; cattrs.BaseValidationError when it does not fit.
    """
    return converter.structure(json.loads(text), cls)
