"""Templating of step arguments with Jinja2's immutable sandbox.

Names available in templates:

``inputs``            the workflow inputs
``steps.<id>.output`` the output of an earlier step (``steps.<id>.status`` its status)
``item``, ``index``   the current item and its 0-based index inside ``for_each``
``iteration``         the 1-based iteration inside an ``until`` loop; ``previous`` the output of
                      the previous iteration (None on the first)
``output``            in ``until``: the output of the iteration just finished
``run``               ``{"id": ..., "workflow": ...}``

``${id.field}`` references (Gleitzeit style) are rewritten to ``{{ steps["id"].output.field }}``
(and ``${inputs.x}`` to ``{{ inputs.x }}``); ``$${`` escapes a literal ``${``.

A string that is exactly one expression (``"{{ steps.a.output }}"`` or ``"${a}"``) keeps the
value's type (list, dict, number); anything else renders to a string. An undefined name or
attribute is an error (:class:`~flowyard.errors.TemplateError`) naming the step and field.
Templates cannot reach Python internals: the environment is
:class:`jinja2.sandbox.ImmutableSandboxedEnvironment` (no underscore attributes, no mutation
of containers, no ``str.format`` escapes), without the ``cycler``/``joiner``/``lipsum``
globals.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

from flowyard.errors import TemplateError

__all__ = [
    "environment",
    "has_template",
    "render_value",
    "render_string",
    "evaluate",
    "find_references",
    "translate",
    "Reference",
    "Compiled",
    "compile_value",
]

_REF = re.compile(r"(\$?)\$\{\s*([A-Za-z_][\w-]*)((?:\.[A-Za-z_][\w-]*|\[\d+\])*)\s*\}")
_WHOLE = re.compile(r"^\s*\{\{(?P<expr>.*)\}\}\s*$", re.S)
MAX_TEMPLATE_CHARS = 100_000
#: Largest string or list a template may build with ``*`` (characters or items).
MAX_RESULT = 1_000_000


def has_template(value: str) -> bool:
    """True when ``value`` contains Jinja syntax or a ``${...}`` reference."""
    return "{{" in value or "{%" in value or "${" in value


def _field(name: str) -> str:
    return f".{name}" if name.isidentifier() else f"[{json.dumps(name)}]"


def translate(text: str) -> str:
    """Rewrite ``${id.a.b}`` references into Jinja expressions; return the new text."""
    if "${" not in text:
        return text

    def repl(m: re.Match[str]) -> str:
        if m.group(1):  # $${...}: escaped, keep a literal ${...}
            return m.group(0)[1:].replace("${", "{{ '${' }}", 1)
        head, rest = m.group(2), m.group(3)
        parts = re.findall(r"\.([A-Za-z_][\w-]*)|\[(\d+)\]", rest)
        tail = "".join(_field(name) if name else f"[{num}]" for name, num in parts)
        if head == "inputs":
            return "{{ inputs" + tail + " }}"
        return "{{ steps[" + json.dumps(head) + "].output" + tail + " }}"

    return _REF.sub(repl, text)


@lru_cache(maxsize=1)
def environment() -> Any:
    """Return the shared sandboxed Jinja2 environment (StrictUndefined, no autoescape)."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Environment(ImmutableSandboxedEnvironment):  # type: ignore[misc]
        """Data first: ``inputs.items`` is the key ``items``, not the ``dict.items`` method."""

        intercepted_binops = frozenset(["*", "**"])

        def getattr(self, obj: Any, attribute: str) -> Any:
            if isinstance(obj, Mapping) and isinstance(attribute, str) and attribute in obj:
                return obj[attribute]
            return super().getattr(obj, attribute)

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            """Refuse ``*`` and ``**`` whose result would be huge (memory exhaustion)."""
            from jinja2.exceptions import SecurityError

            if operator == "**":
                if (isinstance(left, (int, float)) and isinstance(right, (int, float))
                        and abs(right) > 64 and abs(left) > 1):
                    raise SecurityError(f"exponent {right!r} is too large")
                return left ** right
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(count, int) and (
                        len(seq) * count > MAX_RESULT):
                    raise SecurityError(f"repetition would produce more than {MAX_RESULT} "
                                        "items")
            return left * right

    env = _Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    for name in ("cycler", "joiner", "lipsum"):
        env.globals.pop(name, None)
    env.filters["fromjson"] = _fromjson
    env.policies["json.dumps_kwargs"] = {"sort_keys": False, "ensure_ascii": False}
    return env


def _fromjson(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"fromjson: not valid JSON: {exc}") from None


class Compiled:
    """A pre-compiled templated value: call :meth:`render` with a context.

    Static values (without templates) are returned as they are, without copying.
    """

    __slots__ = ("static", "value", "_fn")

    def __init__(self, value: Any, where: str = "") -> None:
        self.value = value
        self.static = not _contains_template(value)
        self._fn = None if self.static else _build(value, where)

    def render(self, context: Mapping[str, Any], *, where: str = "") -> Any:
        """Return the rendered value. Raises TemplateError naming ``where``."""
        if self._fn is None:
            return self.value
        return self._fn(context, where)


def compile_value(value: Any, where: str = "") -> Compiled:
    """Compile a (nested) value whose strings may be templates. Raises TemplateError."""
    return Compiled(value, where)


def _contains_template(value: Any) -> bool:
    if isinstance(value, str):
        return has_template(value)
    if isinstance(value, Mapping):
        return any(_contains_template(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_contains_template(v) for v in value)
    return False


def _error(where: str, source: str, exc: Exception) -> TemplateError:
    from jinja2.exceptions import SecurityError, UndefinedError

    if isinstance(exc, UndefinedError):
        what = f"unresolved reference: {exc}"
    elif isinstance(exc, SecurityError):
        what = f"forbidden operation: {exc}"
    else:
        what = f"{type(exc).__name__}: {exc}"
    prefix = f"{where}: " if where else ""
    return TemplateError(f"{prefix}{what} in template {source!r}")


def _build(value: Any, where: str) -> Any:
    if isinstance(value, str):
        if not has_template(value):
            return lambda ctx, w: value
        return _compile_string(value, where)
    if isinstance(value, Mapping):
        parts = {k: _build(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        return lambda ctx, w: {k: fn(ctx, w) for k, fn in parts.items()}
    if isinstance(value, (list, tuple)):
        items = [_build(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return lambda ctx, w: [fn(ctx, w) for fn in items]
    return lambda ctx, w: value


def _compile_string(text: str, where: str) -> Any:
    from jinja2.exceptions import TemplateSyntaxError

    if len(text) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"{where}: template of {len(text)} characters exceeds the limit of "
                            f"{MAX_TEMPLATE_CHARS}")
    env = environment()
    source = translate(text)
    whole = _WHOLE.match(source)
    try:
        if whole and "{{" not in whole.group("expr") and "}}" not in whole.group("expr"):
            expr = env.compile_expression(whole.group("expr"), undefined_to_none=False)

            def run_expr(ctx: Mapping[str, Any], w: str) -> Any:
                try:
                    result = expr(**ctx)
                    _check_defined(result)
                    return result
                except Exception as exc:  # noqa: BLE001 - rewrapped with the location
                    raise _error(w or where, text, exc) from None

            return run_expr
        template = env.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{where}: template syntax error: {exc.message} in {text!r}"
                            ) from None

    def run_template(ctx: Mapping[str, Any], w: str) -> Any:
        try:
            return template.render(**ctx)
        except Exception as exc:  # noqa: BLE001 - rewrapped with the location
            raise _error(w or where, text, exc) from None

    return run_template


def _check_defined(value: Any) -> None:
    from jinja2 import Undefined

    if isinstance(value, Undefined):
        value._fail_with_undefined_error()


def render_value(value: Any, context: Mapping[str, Any], *, where: str = "") -> Any:
    """Render every template string inside ``value`` (dicts and lists recursively).

    Raises:
        TemplateError: a syntax error, an unresolved reference or a forbidden operation;
            the message starts with ``where`` (e.g. ``"step 'b', field with.prompt"``).
    """
    return Compiled(value, where).render(context, where=where)


def render_string(text: str, context: Mapping[str, Any], *, where: str = "") -> str:
    """Render ``text`` to a string (even when it is one expression)."""
    result = render_value(text, context, where=where)
    return result if isinstance(result, str) else json.dumps(result, default=str)


def evaluate(condition: str | bool | None, context: Mapping[str, Any], *, where: str = ""
             ) -> bool:
    """Evaluate a condition: a boolean, a template (``"{{ x > 1 }}"``) or a bare expression
    (``"x > 1"``); the strings ``"false"``, ``"no"``, ``"0"``, ``""`` are false.

    Raises:
        TemplateError: as :func:`render_value`.
    """
    if condition is None:
        return True
    if isinstance(condition, bool):
        return condition
    text = condition if has_template(condition) else "{{ " + condition + " }}"
    result = render_value(text, context, where=where)
    if isinstance(result, str):
        return result.strip().lower() not in ("", "false", "no", "0", "none", "null")
    return bool(result)


# ----------------------------------------------------------------------------- references


class Reference:
    """A reference found in a template: ``kind`` is ``"steps"`` or ``"inputs"`` (``name`` is
    the step id or input name) or ``"name"`` (another top-level variable such as ``item``);
    ``text`` is the template it was found in.
    """

    __slots__ = ("kind", "name", "text")

    def __init__(self, kind: str, name: str, text: str) -> None:
        self.kind = kind
        self.name = name
        self.text = text

    def __repr__(self) -> str:
        return f"Reference({self.kind}.{self.name})"


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        if has_template(value):
            yield path, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}[{i}]")


def find_references(value: Any, path: str = "", *, expression: bool = False
                    ) -> list[tuple[str, Reference | TemplateError]]:
    """Return ``(path, reference-or-syntax-error)`` for every template in ``value``.

    ``expression`` treats a bare string as an expression (for ``when``/``until``).
    """
    from jinja2 import nodes
    from jinja2.exceptions import TemplateSyntaxError

    env = environment()
    found: list[tuple[str, Reference | TemplateError]] = []
    items = list(_strings(value, path))
    if expression and isinstance(value, str) and not has_template(value):
        items = [(path, "{{ " + value + " }}")]
    for where, text in items:
        try:
            tree = env.parse(translate(text))
        except TemplateSyntaxError as exc:
            found.append((where, TemplateError(f"template syntax error: {exc.message} in "
                                               f"{text!r}")))
            continue
        from jinja2 import meta

        for name in sorted(meta.find_undeclared_variables(tree)):
            if name not in ("steps", "inputs") and name not in env.globals:
                found.append((where, Reference("name", name, text)))
        for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
            base = node.node
            if not isinstance(base, nodes.Name) or base.name not in ("steps", "inputs"):
                continue
            if isinstance(node, nodes.Getattr):
                name = node.attr
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                name = node.arg.value
            else:
                continue
            found.append((where, Reference(base.name, name, text)))
    return found
