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

Limits (issue 16): a template cannot take more time or memory than its data warrants.

* integers: ``**`` and ``*`` on integers are refused before computing when the result would
  have more than :data:`MAX_INT_BITS` bits;
* sizes: a string, list or mapping a template builds (``*``, ``+``, ``~``, ``%``, literals,
  filters, string methods such as ``ljust``), prints or passes to a filter may weigh at most
  :data:`MAX_RESULT` (characters plus items, counted through nested lists and mappings),
  checked before it is built;
* output: one render prints at most :data:`MAX_OUTPUT_CHARS` characters;
* work: one render runs at most :data:`MAX_ITERATIONS` loop iterations plus calls plus
  operators;
* time: one render stops at its deadline (the ``timeout`` given to :meth:`Compiled.render`,
  the engine passes what is left of the step's ``timeout`` and the run's; at most
  :data:`MAX_RENDER_SECONDS`); the check is cooperative, made at every loop iteration, call
  and operator, so it holds on the event-loop thread on asyncio and trio alike.

A violation is a :class:`~flowyard.errors.TemplateError` naming the step and field. Values
(inputs, step outputs, items) are data: they are never parsed as templates, so ``{{ 7*7 }}``
in an input stays ``{{ 7*7 }}``.
"""

from __future__ import annotations

import contextvars
import functools
import json
import math
import re
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from typing import Any

from flowyard.errors import PluginError, TemplateError

__all__ = [
    "environment",
    "template_extensions",
    "check_template_function",
    "TemplateExtensions",
    "TEMPLATE_KINDS",
    "BUILTIN_FILTERS",
    "has_template",
    "render_value",
    "render_string",
    "evaluate",
    "find_references",
    "translate",
    "Reference",
    "Compiled",
    "compile_value",
    "MAX_TEMPLATE_CHARS",
    "MAX_RESULT",
    "MAX_INT_BITS",
    "MAX_OUTPUT_CHARS",
    "MAX_ITERATIONS",
    "MAX_RENDER_SECONDS",
]

_REF = re.compile(r"(\$?)\$\{\s*([A-Za-z_][\w-]*)((?:\.[A-Za-z_][\w-]*|\[\d+\])*)\s*\}")
_WHOLE = re.compile(r"^\s*\{\{(?P<expr>.*)\}\}\s*$", re.S)
#: A string that is one ``${id}`` / ``${id.field[0]}`` / ``${inputs.x}`` reference and nothing else.
_WHOLE_REF = re.compile(r"\s*\$\{\s*([A-Za-z_][\w-]*)((?:\.[A-Za-z_][\w-]*|\[\d+\])*)\s*\}\s*")
_REF_PART = re.compile(r"\.([A-Za-z_][\w-]*)|\[(\d+)\]")
MAX_TEMPLATE_CHARS = 100_000
#: Largest value a template may build or print: characters of strings plus items of lists and
#: mappings, counted through nesting.
MAX_RESULT = 10_000_000
#: Largest integer a template may compute with ``**`` or ``*``, in bits (``**`` is refused when
#: ``(bits of the base - 1) * exponent`` passes it, so a power may have up to twice as many).
MAX_INT_BITS = 8192
#: Most characters one render may print.
MAX_OUTPUT_CHARS = 10_000_000
#: Most loop iterations, calls and operators one render may run.
MAX_ITERATIONS = 1_000_000
#: Longest one render may take, in seconds, when no shorter ``timeout`` is given.
MAX_RENDER_SECONDS = 30.0


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
        parts = _REF_PART.findall(rest)
        tail = "".join(_field(name) if name else f"[{num}]" for name, num in parts)
        if head == "inputs":
            return "{{ inputs" + tail + " }}"
        return "{{ steps[" + json.dumps(head) + "].output" + tail + " }}"

    return _REF.sub(repl, text)


def whole_reference(text: str) -> tuple[str, str | None, tuple[str | int, ...]] | None:
    """Parse a string that is exactly one ``${...}`` reference (surrounding blanks allowed).

    Returns:
        ``("steps", step_id, path)`` for ``${id.a[0]}`` (path ``("a", 0)``, read from the
        step's output), ``("inputs", name_or_None, path)`` for ``${inputs.x.y}`` (name
        ``"x"``, path ``("y",)``; ``${inputs}`` alone has name None), or None when ``text``
        is anything else (other text around it, Jinja syntax, an escaped ``$${``).
    """
    m = _WHOLE_REF.fullmatch(text)
    if m is None:
        return None
    parts: tuple[str | int, ...] = tuple(name if name else int(num)
                                         for name, num in _REF_PART.findall(m.group(2)))
    head = m.group(1)
    if head == "inputs":
        if not parts:
            return "inputs", None, ()
        first = parts[0]
        if not isinstance(first, str):
            return None  # ${inputs[0]}: left to Jinja (and its error)
        return "inputs", first, parts[1:]
    return "steps", head, parts


class _RenderTimeout(Exception):
    """A render passed its deadline (see :class:`_Budget`)."""


class _Budget:
    """What one render may still spend: ``ops`` (loop iterations, calls, operators), printed
    characters, and time until ``deadline`` (``time.monotonic()`` seconds).
    """

    __slots__ = ("deadline", "timeout", "ops", "output")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.ops = 0
        self.output = 0


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "flowyard_template_budget", default=None)


def _tick(n: int = 1) -> None:
    """Count ``n`` operations of the current render; raise once a limit is passed.

    Raises:
        SecurityError: more than :data:`MAX_ITERATIONS` operations.
        _RenderTimeout: the render's deadline passed.
    """
    budget = _BUDGET.get()
    if budget is None:  # compile-time constant folding: bounded by the template's size
        return
    budget.ops += n
    if budget.ops > MAX_ITERATIONS:
        from jinja2.exceptions import SecurityError

        raise SecurityError(f"the template ran more than {MAX_ITERATIONS} loop iterations, "
                            "calls and operators")
    if time.monotonic() > budget.deadline:
        raise _RenderTimeout(f"the template did not finish within its time limit of "
                             f"{budget.timeout:g} s")


def _weight(value: Any, limit: int = MAX_RESULT) -> int:
    """Return the size of ``value``: characters of strings plus items of containers (one per
    nested value), digits of integers, counted through nesting; stops once past ``limit``.
    """
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        total += 1
        if isinstance(item, (str, bytes)):
            total += len(item)
        elif isinstance(item, Mapping):
            total += len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            total += len(item)
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            total += item.bit_length() // 3
        if total > limit:
            return total
    return total


def _check_weight(value: Any, what: str) -> Any:
    """Return ``value`` unless it weighs more than :data:`MAX_RESULT`.

    Raises:
        SecurityError: ``value`` is too large.
    """
    if _weight(value) > MAX_RESULT:
        from jinja2.exceptions import SecurityError

        raise SecurityError(f"{what} would be larger than {MAX_RESULT} characters and items")
    return value


def _refuse(message: str) -> None:
    from jinja2.exceptions import SecurityError

    raise SecurityError(message)


_FORMAT_WIDTH = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_format(spec: str, args: Any) -> None:
    """Refuse ``spec % args`` when a width or precision, or the arguments, are too large."""
    _check_weight(args, "the formatted value")
    for match in _FORMAT_WIDTH.finditer(spec):
        for group in match.groups():
            if group == "*":
                numbers = args if isinstance(args, (list, tuple)) else (args,)
                if any(isinstance(n, int) and abs(n) > MAX_RESULT for n in numbers):
                    _refuse(f"a format width above {MAX_RESULT}")
            elif group and (len(group) > 9 or int(group) > MAX_RESULT):
                _refuse(f"a format width above {MAX_RESULT}")


def _check_int_result(operator: str, left: int, right: int) -> None:
    """Refuse ``left ** right`` or ``left * right`` whose result exceeds MAX_INT_BITS."""
    if operator == "**":
        if right > 0 and abs(left) > 1 and left.bit_length() * right > MAX_INT_BITS + right:
            _refuse(f"a {left.bit_length()}-bit integer ** {right} would have more than "
                    f"{MAX_INT_BITS} bits")
    elif left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
        _refuse(f"the product would have more than {MAX_INT_BITS} bits")


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse an operator whose result would pass the integer or size limits."""
    ints = (isinstance(left, int) and isinstance(right, int)
            and not isinstance(left, bool) and not isinstance(right, bool))
    if operator in ("**", "*") and ints:
        _check_int_result(operator, left, right)
    elif operator == "*":
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, (str, bytes, list, tuple)) and isinstance(count, int) and (
                    count > 0 and (_weight(seq) - 1) * count > MAX_RESULT):
                _refuse(f"repetition would produce more than {MAX_RESULT} characters and "
                        "items")
    elif operator == "+" and not ints:
        if _weight(left) + _weight(right) > MAX_RESULT:
            _refuse(f"the sum would be larger than {MAX_RESULT} characters and items")
    elif operator == "%" and isinstance(left, str):
        _check_format(left, right)


_GROWING_METHODS = frozenset(["ljust", "rjust", "center", "zfill", "expandtabs"])


def _check_method_call(obj: Any, args: tuple[Any, ...]) -> None:
    """Refuse string methods whose result would pass :data:`MAX_RESULT`."""
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if not isinstance(owner, str):
        return
    if name in _GROWING_METHODS:
        if any(isinstance(a, int) and a * max(1, owner.count("\t") + 1) > MAX_RESULT
               for a in args):
            _refuse(f"str.{name} would produce more than {MAX_RESULT} characters")
    elif name == "join" and args:
        parts = args[0]
        if isinstance(parts, (list, tuple)) and (
                _weight(parts) + len(owner) * len(parts) > MAX_RESULT):
            _refuse(f"str.join would produce more than {MAX_RESULT} characters")
    elif name == "replace" and len(args) >= 2 and isinstance(args[1], str):
        count = owner.count(args[0]) if isinstance(args[0], str) else 0
        if len(owner) + count * len(args[1]) > MAX_RESULT:
            _refuse(f"str.replace would produce more than {MAX_RESULT} characters")


def _guard_filter(name: str, func: Any) -> Any:
    """Wrap a filter: count it as an operation and check the size of what it receives and
    returns (``center``, ``indent``, ``format``, ``join``, ``replace`` are checked before).
    """
    offset = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        value = args[offset] if len(args) > offset else None
        rest = args[offset + 1:]
        _check_weight(value, f"the input of filter {name!r}")
        if name in ("center", "indent", "truncate", "wordwrap"):
            numbers = [*rest, *kwargs.values()]
            lines = value.count("\n") + 1 if isinstance(value, str) else 1
            if any(isinstance(n, int) and not isinstance(n, bool) and n * lines > MAX_RESULT
                   for n in numbers):
                _refuse(f"filter {name!r} would produce more than {MAX_RESULT} characters")
        elif name == "format" and isinstance(value, str):
            _check_format(value, tuple(rest) or dict(kwargs))
        elif name == "join" and isinstance(value, (list, tuple)):
            sep = rest[0] if rest else kwargs.get("d", "")
            if _weight(value) + len(str(sep)) * len(value) > MAX_RESULT:
                _refuse(f"filter 'join' would produce more than {MAX_RESULT} characters")
        elif name == "replace" and isinstance(value, str) and len(rest) >= 2:
            count = value.count(str(rest[0]))
            if len(value) + count * len(str(rest[1])) > MAX_RESULT:
                _refuse(f"filter 'replace' would produce more than {MAX_RESULT} characters")
        result = func(*args, **kwargs)
        if isinstance(result, (str, list, tuple, Mapping)):
            _check_weight(result, f"the result of filter {name!r}")
        return result

    return guarded


def environment(extensions: TemplateExtensions | None = None) -> Any:
    """Return the sandboxed Jinja2 environment (StrictUndefined, no autoescape), with the
    limits described in the module's docstring.

    Args:
        extensions: filters, tests and globals registered by plugins
            (:func:`template_extensions`); None: the shared environment of the built-ins.
            One environment is built per distinct set of extensions and kept.

    Raises:
        PluginError: a registered name is already a built-in filter, test or global and its
            registration does not say ``replace=True``.
    """
    if extensions is None or not extensions:
        return _base_environment()
    return _extended_environment(extensions)


@lru_cache(maxsize=1)
def _base_environment() -> Any:
    return _new_environment()


@lru_cache(maxsize=32)
def _extended_environment(extensions: TemplateExtensions) -> Any:
    env = _new_environment()
    builtin = {"filter": env.filters, "test": env.tests, "global": env.globals}
    for kind, name, func, plugin, replace in extensions.entries:
        table = builtin[kind]
        if name in table and not replace:
            raise PluginError(
                f"plugin {plugin!r} registered template {kind} {name!r}, which is a built-in "
                f"{kind}; choose another name, or register it with replace=True to replace it")
        table[name] = _guard_function(kind, name, func)
    return env


def _new_environment() -> Any:
    from jinja2 import StrictUndefined, nodes, pass_context
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.utils import Namespace
    from jinja2.visitor import NodeTransformer

    class _Namespace(Namespace):  # type: ignore[misc]
        """``namespace()`` whose attributes cannot grow past the size limit."""

        def __setitem__(self, name: str, value: Any) -> None:
            _tick()
            _check_weight(value, "a namespace attribute")
            super().__setitem__(name, value)

    class _LiteralGuard(NodeTransformer):  # type: ignore[misc]
        """``[a, b]``, ``(a, b)`` and ``{k: v}`` literals check their size once built (they
        could nest references to a large value many times over).
        """

        def _wrap(self, node: Any) -> Any:
            node = self.generic_visit(node)
            return nodes.Filter(node, "_flowyard_part", [], [], None, None, lineno=node.lineno)

        def visit_List(self, node: Any) -> Any:
            return self._wrap(node)

        def visit_Dict(self, node: Any) -> Any:
            return self._wrap(node)

        def visit_Tuple(self, node: Any) -> Any:
            return self._wrap(node) if node.ctx == "load" else self.generic_visit(node)

    class _Environment(ImmutableSandboxedEnvironment):  # type: ignore[misc]
        """Data first: ``inputs.items`` is the key ``items``, not the ``dict.items`` method."""

        intercepted_binops = frozenset(["*", "**", "+", "%", "//", "/", "-"])

        def getattr(self, obj: Any, attribute: str) -> Any:
            if isinstance(obj, Mapping) and isinstance(attribute, str) and attribute in obj:
                return obj[attribute]
            return super().getattr(obj, attribute)

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            """Refuse an operator whose result would pass the limits, before computing it."""
            _tick()
            _check_binop(operator, left, right)
            return super().call_binop(context, operator, left, right)

        def call(__self, __context: Any, __obj: Any, *args: Any,
                 **kwargs: Any) -> Any:
            """Count the call and refuse string methods that would build huge strings."""
            _tick()
            _check_method_call(__obj, args)
            return super().call(__context, __obj, *args, **kwargs)

        def _parse(self, source: str, name: str | None, filename: str | None) -> Any:
            """Parse, then make every ``for`` loop count its iterations and every ``~`` check
            the size of its parts.
            """
            tree = super()._parse(source, name, filename)
            for loop in tree.find_all(nodes.For):
                loop.iter = nodes.Filter(loop.iter, "_flowyard_iter", [], [], None, None,
                                         lineno=loop.lineno)
            for concat in tree.find_all(nodes.Concat):
                concat.nodes = [nodes.Filter(n, "_flowyard_part", [], [], None, None,
                                             lineno=n.lineno) for n in concat.nodes]
            _LiteralGuard().visit(tree)
            for output in tree.find_all(nodes.Output):
                # literal text is printed through finalize too, so it counts against the
                # output limit even inside macros and block assignments
                output.nodes = [nodes.Filter(nodes.Const(n.data), "_flowyard_text", [], [],
                                             None, None, lineno=n.lineno)
                                if isinstance(n, nodes.TemplateData) else n
                                for n in output.nodes]
            return tree

    def finalize(value: Any) -> Any:
        """Check the size of every printed value and count it against the output limit."""
        size = _weight(value)
        if size > MAX_RESULT:
            _refuse(f"a printed value would be larger than {MAX_RESULT} characters and items")
        budget = _BUDGET.get()
        if budget is not None:
            budget.output += len(value) if isinstance(value, str) else size
            if budget.output > MAX_OUTPUT_CHARS:
                _refuse(f"the output is longer than {MAX_OUTPUT_CHARS} characters")
        return value

    @pass_context
    def iterate(context: Any, iterable: Iterable[Any]) -> Iterator[Any]:
        """Yield the items of ``iterable``, counting each as an operation."""
        for item in iterable:
            _tick()
            yield item

    @pass_context
    def text(context: Any, value: str) -> str:
        """Return literal template text (at run time, so :func:`finalize` counts it)."""
        return value

    def part(value: Any) -> Any:
        return _check_weight(value, "a concatenated or literal value")

    env = _Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True,
                       finalize=finalize)
    for name in ("cycler", "joiner", "lipsum"):
        env.globals.pop(name, None)
    env.globals["namespace"] = _Namespace
    env.filters.update(BUILTIN_FILTERS)
    for name, func in list(env.filters.items()):
        env.filters[name] = _guard_filter(name, func)
    env.filters["_flowyard_iter"] = iterate
    env.filters["_flowyard_part"] = part
    env.filters["_flowyard_text"] = text
    env.policies["json.dumps_kwargs"] = {"sort_keys": False, "ensure_ascii": False}
    return env


def _fromjson(text: str) -> Any:
    """Parse JSON text (the ``fromjson`` / ``from_json`` filter).

    Raises:
        ValueError: not valid JSON.
    """
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"fromjson: not valid JSON: {exc}") from None


def _to_json(value: Any, indent: int | None = None, sort_keys: bool = False) -> str:
    """Return ``value`` as JSON text, non-ASCII kept and nothing HTML-escaped (unlike
    Jinja's ``tojson``); ``indent`` spaces (0..16) pretty-print it.

    Raises:
        ValueError: ``indent`` out of range, or a value JSON cannot hold.
    """
    if indent is not None and (isinstance(indent, bool) or not isinstance(indent, int)
                               or not 0 <= indent <= 16):
        raise ValueError(f"to_json: indent must be an integer from 0 to 16, got {indent!r}")
    try:
        return json.dumps(value, indent=indent, sort_keys=bool(sort_keys), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"to_json: {exc}") from None


_SLUG_DROP = re.compile(r"[^\w\s-]")
_SLUG_SPACE = re.compile(r"[-\s_]+")


def _slugify(value: Any, separator: str = "-") -> str:
    """Return ``value`` as a lower-case slug: accents dropped (NFKD), characters other than
    letters, digits, ``-`` and blanks removed, runs of blanks, ``-`` and ``_`` joined with
    ``separator``, no separator at either end (``"Hello, Wörld!"`` -> ``"hello-world"``).
    """
    import unicodedata

    text = unicodedata.normalize("NFKD", str(value)).encode("ascii", "ignore").decode("ascii")
    text = _SLUG_DROP.sub("", text).strip().lower()
    return _SLUG_SPACE.sub(str(separator), text).strip(str(separator))


def _basename(value: Any) -> str:
    """Return the last component of a ``/`` or backslash separated path (``a/b.txt`` ->
    ``b.txt``); ``""`` for a path ending with a separator.
    """
    text = str(value)
    return text.replace("\\", "/").rsplit("/", 1)[-1]


def _dirname(value: Any) -> str:
    """Return a path without its last component (``a/b.txt`` -> ``a``; ``""`` when none)."""
    text = str(value).replace("\\", "/")
    return text.rsplit("/", 1)[0] if "/" in text else ""


#: strftime directives with a width or padding flag (``%_1000000Y``): refused, since the C
#: library would pad to any width.
_WIDE_DIRECTIVE = re.compile(r"%[-_0^#]*\d")


def _strftime(value: Any, format: str = "%Y-%m-%d") -> str:
    """Format a date or time: ``value`` is a :class:`datetime.datetime`/``date``, an ISO 8601
    string (``2026-12-02T13:20:00Z``) or a number of seconds since the Unix epoch (UTC);
    ``format`` is a :func:`time.strftime` format (default ``%Y-%m-%d``; at most 200
    characters, no widths such as ``%10Y``).

    Raises:
        ValueError: ``value`` is not a date, time, ISO string or number; the format is too
            long or has a width.
    """
    import datetime as dt

    if not isinstance(format, str) or len(format) > 200 or _WIDE_DIRECTIVE.search(format):
        raise ValueError("strftime: the format must be a string of at most 200 characters "
                         "without widths (%10Y)")
    if isinstance(value, (dt.date, dt.datetime)):
        moment = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            moment = dt.datetime.fromtimestamp(value, tz=dt.timezone.utc)
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError(f"strftime: {value!r} is not a valid time stamp ({exc})") from None
    elif isinstance(value, str):
        text = value.strip()
        try:
            moment = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z")
                                               else text)
        except ValueError:
            raise ValueError(f"strftime: {value!r} is not an ISO 8601 date or time") from None
    else:
        raise ValueError(f"strftime: cannot format a {type(value).__name__} as a date")
    return moment.strftime(format)


#: The filters flowyard adds to Jinja's built-in ones (see ``docs/workflows.md``).
BUILTIN_FILTERS: dict[str, Any] = {
    "fromjson": _fromjson,
    "from_json": _fromjson,
    "to_json": _to_json,
    "slugify": _slugify,
    "basename": _basename,
    "dirname": _dirname,
    "strftime": _strftime,
    "date": _strftime,
}

#: What a plugin may register with ``register_template_filters``: ``kind=`` metadata values.
TEMPLATE_KINDS = ("filter", "test", "global")
_FILTER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z][A-Za-z0-9_]*)*")


class TemplateExtensions:
    """The filters, tests and globals plugins registered (``register_template_filters``),
    frozen; equal sets share one Jinja environment and one cache of compiled templates.

    Args:
        entries: ``(kind, name, function, plugin, replace)`` tuples; ``kind`` is one of
            :data:`TEMPLATE_KINDS`.
    """

    __slots__ = ("entries", "_key")

    def __init__(self, entries: Iterable[tuple[str, str, Any, str, bool]] = ()) -> None:
        self.entries = tuple(entries)
        self._key = tuple((k, n, id(f), r) for k, n, f, _, r in self.entries)

    def names(self, kind: str) -> set[str]:
        """Return the registered names of one kind (``"filter"``, ``"test"``, ``"global"``)."""
        return {name for k, name, *_ in self.entries if k == kind}

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TemplateExtensions) and (
            self._key == other._key
            and all(a[2] is b[2] for a, b in zip(self.entries, other.entries, strict=True)))

    def __repr__(self) -> str:
        return f"TemplateExtensions({[(k, n) for k, n, *_ in self.entries]!r})"


def check_template_function(name: str, obj: Any, metadata: Mapping[str, Any]) -> str | None:
    """Check one ``register_template_filters`` entry (the registry's validator).

    Args:
        name: the registered name.
        obj: the function (or, for a global, any value).
        metadata: the registration's metadata: ``kind`` (``filter``, the default, ``test`` or
            ``global``), ``replace`` (bool).

    Returns:
        the problem, or None when the entry is valid.
    """
    kind = metadata.get("kind", "filter")
    if kind not in TEMPLATE_KINDS:
        return f"kind must be one of {', '.join(TEMPLATE_KINDS)}, not {kind!r}"
    if not isinstance(metadata.get("replace", False), bool):
        return "replace must be True or False"
    pattern = _FILTER_NAME if kind != "global" else re.compile(r"[A-Za-z][A-Za-z0-9_]*")
    if not pattern.fullmatch(name):
        return (f"a template {kind} name is letters, digits and '_'"
                + (" (dotted parts allowed)" if kind != "global" else "")
                + ", starting with a letter")
    if name in ("steps", "inputs", "item", "index", "iteration", "previous", "output", "run"):
        return f"{name!r} is a name the engine gives templates"
    if kind != "global" and not callable(obj):
        return f"a template {kind} must be callable, got {type(obj).__name__}"
    return None


_EXTENSIONS: weakref.WeakKeyDictionary[Any, TemplateExtensions | None] = (
    weakref.WeakKeyDictionary())


def template_extensions(services: Any) -> TemplateExtensions | None:
    """Return the template filters, tests and globals registered in ``services`` (a stack),
    or None when there are none (the shared built-in environment serves), built once per
    stack.

    Args:
        services: a :class:`~flowyard.interfaces.Services` (its ``template_filters``
            registry), or None.
    """
    if services is None:
        return None
    try:
        return _EXTENSIONS[services]
    except KeyError:
        pass
    except TypeError:  # not weak-referenceable: built again on each call
        return _collect_extensions(services)
    found = _collect_extensions(services)
    _EXTENSIONS[services] = found
    return found


def _collect_extensions(services: Any) -> TemplateExtensions | None:
    registry = services.template_filters
    entries = []
    for name in registry.names():
        meta = registry.metadata_of(name)
        entries.append((meta.get("kind", "filter"), name, registry.get(name),
                        registry.plugin_of(name), bool(meta.get("replace", False))))
    return TemplateExtensions(entries) if entries else None


def _guard_function(kind: str, name: str, func: Any) -> Any:
    """Wrap a registered filter, test or callable global in the render limits: each call is
    an operation (work and time budget) and its arguments and result are size-checked.
    """
    if kind == "filter":
        return _guard_filter(name, func)
    if not callable(func):
        _check_weight(func, f"template global {name!r}")  # a constant: checked once
        return func
    label = f"template {kind} {name!r}"

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        _check_weight((args, kwargs), f"the arguments of {label}")
        result = func(*args, **kwargs)
        if isinstance(result, (str, list, tuple, Mapping)):
            _check_weight(result, f"the result of {label}")
        return result

    return guarded


class Compiled:
    """A pre-compiled templated value: call :meth:`render` with a context.

    Static values (without templates) are returned as they are, without copying.

    Args:
        value: the value; its strings may be templates.
        where: the location named in errors.
        extensions: plugins' filters, tests and globals (:func:`template_extensions`).

    Raises:
        TemplateError: a template does not compile (syntax, an unknown filter or test).
    """

    __slots__ = ("static", "value", "_fn", "jinja")

    def __init__(self, value: Any, where: str = "",
                 extensions: TemplateExtensions | None = None) -> None:
        self.value = value
        self.static = not _contains_template(value)
        #: True when some template needs Jinja (not only whole-value ``${...}`` references,
        #: which are plain lookups): only then does a render take a time and work budget.
        self.jinja = not self.static and _contains_jinja(value)
        self._fn = None if self.static else _build(value, where, extensions or None)

    def render(self, context: Mapping[str, Any], *, where: str = "",
               timeout: float | None = None) -> Any:
        """Return the rendered value.

        Args:
            context: the names templates see (``inputs``, ``steps``, ...); their values are
                data, never rendered themselves.
            where: the location named in errors (e.g. ``"step 'b', field with"``).
            timeout: seconds the whole value may take to render (``None``, or more than
                :data:`MAX_RENDER_SECONDS`: that limit); the engine passes what is left of the
                step's and the run's ``timeout``.

        Raises:
            TemplateError: naming ``where``: an unresolved reference, a forbidden operation,
                a limit of the module's docstring passed, or the time limit reached.
        """
        if self._fn is None:
            return self.value
        if not self.jinja:
            return self._fn(context, where)
        with _render_budget(timeout):
            return self._fn(context, where)


class _render_budget:
    """Give the renders inside it a shared :class:`_Budget` (a nested render shares the
    outer one). ``timeout`` is in seconds (``None``: :data:`MAX_RENDER_SECONDS`).
    """

    __slots__ = ("timeout", "token")

    def __init__(self, timeout: float | None) -> None:
        limit = MAX_RENDER_SECONDS if timeout is None else min(timeout, MAX_RENDER_SECONDS)
        self.timeout = max(0.0, limit) if not math.isnan(limit) else MAX_RENDER_SECONDS
        self.token: contextvars.Token[_Budget | None] | None = None

    def __enter__(self) -> None:
        if _BUDGET.get() is None:
            self.token = _BUDGET.set(_Budget(self.timeout))

    def __exit__(self, *exc: object) -> None:
        if self.token is not None:
            _BUDGET.reset(self.token)


def compile_value(value: Any, where: str = "",
                  extensions: TemplateExtensions | None = None) -> Compiled:
    """Compile a (nested) value whose strings may be templates, with the plugins'
    ``extensions`` (filters, tests, globals). Raises TemplateError.
    """
    return Compiled(value, where, extensions)


def _contains_template(value: Any) -> bool:
    if isinstance(value, str):
        return has_template(value)
    if isinstance(value, Mapping):
        return any(_contains_template(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_contains_template(v) for v in value)
    return False


def _contains_jinja(value: Any) -> bool:
    if isinstance(value, str):
        return has_template(value) and whole_reference(value) is None
    if isinstance(value, Mapping):
        return any(_contains_jinja(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_contains_jinja(v) for v in value)
    return False


def _error(where: str, source: str, exc: Exception) -> TemplateError:
    from jinja2.exceptions import SecurityError, UndefinedError

    if isinstance(exc, UndefinedError):
        what = f"unresolved reference: {exc}"
    elif isinstance(exc, _RenderTimeout):
        what = str(exc)
    elif isinstance(exc, RecursionError):
        what = "the template nests or recurses too deeply"
    elif isinstance(exc, SecurityError):
        what = f"forbidden operation: {exc}"
    else:
        what = f"{type(exc).__name__}: {exc}"
    prefix = f"{where}: " if where else ""
    return TemplateError(f"{prefix}{what} in template {source!r}")


def _build(value: Any, where: str, ext: TemplateExtensions | None) -> Any:
    if isinstance(value, str):
        if not has_template(value):
            return lambda ctx, w: value
        return _compile_string(value, where, ext)
    if isinstance(value, Mapping):
        parts = {k: _build(v, f"{where}.{k}" if where else str(k), ext)
                 for k, v in value.items()}
        return lambda ctx, w: {k: fn(ctx, w) for k, fn in parts.items()}
    if isinstance(value, (list, tuple)):
        items = [_build(v, f"{where}[{i}]", ext) for i, v in enumerate(value)]
        return lambda ctx, w: [fn(ctx, w) for fn in items]
    return lambda ctx, w: value


def _compile_string(text: str, where: str, ext: TemplateExtensions | None) -> Any:
    if len(text) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"{where}: template of {len(text)} characters exceeds the limit of "
                            f"{MAX_TEMPLATE_CHARS}")
    ref = whole_reference(text)
    if ref is not None:
        return _compile_reference(text, ref, where, ext)
    return _compile_jinja(text, where, ext)


def _compile_reference(text: str, ref: tuple[str, str | None, tuple[str | int, ...]],
                       where: str, ext: TemplateExtensions | None) -> Any:
    """A whole-value ``${...}`` reference: a direct lookup in the context's plain dicts and
    lists, which is what the Jinja expression would give (data first, as
    ``_Environment.getattr``). Anything else -- a missing key, an index out of range, a value
    that is not a plain dict or list -- is handed to the Jinja expression, compiled on first
    need, so errors and unusual values behave exactly as in any other template.
    """
    kind, name, path = ref
    jinja: list[Any] = []

    def slow(ctx: Mapping[str, Any], w: str) -> Any:
        if not jinja:
            jinja.append(_compile_jinja(text, where, ext))
        return jinja[0](ctx, w)

    def lookup(ctx: Mapping[str, Any], w: str) -> Any:
        try:
            if kind == "steps":
                entry = ctx["steps"][name]
                if type(entry) is not dict or "output" not in entry:
                    return slow(ctx, w)
                obj = entry["output"]
            else:
                obj = ctx["inputs"]
                if name is not None:
                    if type(obj) is not dict or name not in obj:
                        return slow(ctx, w)
                    obj = obj[name]
        except (KeyError, TypeError):
            return slow(ctx, w)
        for part in path:
            kind_of = type(obj)
            if kind_of is dict and type(part) is str and part in obj:
                obj = obj[part]
            elif (kind_of is list or kind_of is tuple) and type(part) is int and part < len(obj):
                obj = obj[part]
            else:
                return slow(ctx, w)
        return obj

    return lookup


@lru_cache(maxsize=4096)
def _jinja(source: str, ext: TemplateExtensions | None = None) -> tuple[bool, Any]:
    """Compile translated template text once per process and set of extensions: ``(True,
    expression)`` for a string that is one ``{{ ... }}`` expression (keeps the value's type),
    ``(False, template)`` otherwise. Raises TemplateSyntaxError (not cached).
    """
    env = environment(ext)
    whole = _WHOLE.match(source)
    if whole and "{{" not in whole.group("expr") and "}}" not in whole.group("expr"):
        return True, env.compile_expression(whole.group("expr"), undefined_to_none=False)
    return False, env.from_string(source)


def _compile_jinja(text: str, where: str, ext: TemplateExtensions | None = None) -> Any:
    from jinja2.exceptions import TemplateSyntaxError

    try:
        is_expression, compiled = _jinja(translate(text), ext)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{where}: {_syntax_message(exc, ext)} in {text!r}") from None
    if is_expression:
        expr = compiled

        def run_expr(ctx: Mapping[str, Any], w: str) -> Any:
            try:
                result = expr(**ctx)
                _check_defined(result)
                return result
            except Exception as exc:  # noqa: BLE001 - rewrapped with the location
                raise _error(w or where, text, exc) from None

        return run_expr
    template = compiled

    def run_template(ctx: Mapping[str, Any], w: str) -> Any:
        parts: list[str] = []
        size = 0
        try:
            for chunk in template.generate(**ctx):
                size += len(chunk)
                if size > MAX_OUTPUT_CHARS:
                    _refuse(f"the output is longer than {MAX_OUTPUT_CHARS} characters")
                parts.append(chunk)
        except Exception as exc:  # noqa: BLE001 - rewrapped with the location
            raise _error(w or where, text, exc) from None
        return "".join(parts)

    return run_template


_UNKNOWN = re.compile(r"No (filter|test) named '([^']*)'")


def _syntax_message(exc: Any, ext: TemplateExtensions | None) -> str:
    """Describe a TemplateSyntaxError: an unknown filter or test names the close matches and
    where to get more (``register_template_filters``); else ``template syntax error: ...``.
    """
    import difflib

    found = _UNKNOWN.match(exc.message or "")
    if found is None:
        return f"template syntax error: {exc.message}"
    kind, name = found.groups()
    env = environment(ext)
    known = env.filters if kind == "filter" else env.tests
    public = sorted(n for n in known if not n.startswith("_"))
    close = difflib.get_close_matches(name, public, n=3)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return (f"unknown template {kind} {name!r} ({hint}plugins add {kind}s with "
            "register_template_filters; see docs/workflows.md, Templates)")


def _check_defined(value: Any) -> None:
    from jinja2 import Undefined

    if isinstance(value, Undefined):
        value._fail_with_undefined_error()


def render_value(value: Any, context: Mapping[str, Any], *, where: str = "",
                 timeout: float | None = None,
                 extensions: TemplateExtensions | None = None) -> Any:
    """Render every template string inside ``value`` (dicts and lists recursively) within
    ``timeout`` seconds (see :meth:`Compiled.render`), with the plugins' ``extensions``.

    Raises:
        TemplateError: a syntax error, an unresolved reference, a forbidden operation, a limit
            passed or the time limit reached; the message starts with ``where`` (e.g.
            ``"step 'b', field with.prompt"``).
    """
    return Compiled(value, where, extensions).render(context, where=where, timeout=timeout)


def render_string(text: str, context: Mapping[str, Any], *, where: str = "",
                  timeout: float | None = None,
                  extensions: TemplateExtensions | None = None) -> str:
    """Render ``text`` to a string (even when it is one expression).

    Raises:
        TemplateError: as :func:`render_value`.
    """
    result = render_value(text, context, where=where, timeout=timeout, extensions=extensions)
    return result if isinstance(result, str) else json.dumps(result, default=str)


def evaluate(condition: str | bool | None, context: Mapping[str, Any], *, where: str = "",
             timeout: float | None = None,
             extensions: TemplateExtensions | None = None) -> bool:
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
    result = render_value(text, context, where=where, timeout=timeout, extensions=extensions)
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


def find_references(value: Any, path: str = "", *, expression: bool = False,
                    extensions: TemplateExtensions | None = None
                    ) -> list[tuple[str, Reference | TemplateError]]:
    """Return ``(path, reference-or-error)`` for every template in ``value``: an error for a
    template that does not compile (a syntax error, an unknown filter or test, with close
    names suggested).

    ``expression`` treats a bare string as an expression (for ``when``/``until``);
    ``extensions`` are the plugins' filters, tests and globals. Each distinct template text
    is parsed once per process (a whole-value ``${...}`` reference is read without parsing).
    """
    found: list[tuple[str, Reference | TemplateError]] = []
    items = list(_strings(value, path))
    if expression and isinstance(value, str) and not has_template(value):
        items = [(path, "{{ " + value + " }}")]
    for where, text in items:
        refs = _references_in(text, extensions or None)
        if isinstance(refs, str):
            found.append((where, TemplateError(refs)))
            continue
        found.extend((where, Reference(kind, name, text)) for kind, name in refs)
    return found


@lru_cache(maxsize=4096)
def _references_in(text: str, ext: TemplateExtensions | None = None
                   ) -> tuple[tuple[str, str], ...] | str:
    """The ``(kind, name)`` references of one template text, or the error's message (syntax,
    unknown filter or test).
    """
    ref = whole_reference(text)
    if ref is not None:
        kind, name, _ = ref
        return ((kind, name),) if name is not None else ()
    from jinja2 import meta, nodes
    from jinja2.exceptions import TemplateSyntaxError

    env = environment(ext)
    try:
        tree = env.parse(translate(text))
        # generates the code, which checks that every filter and test exists
        undeclared = meta.find_undeclared_variables(tree)
    except TemplateSyntaxError as exc:  # TemplateAssertionError too (an unknown filter)
        return f"{_syntax_message(exc, ext)} in {text!r}"
    found: list[tuple[str, str]] = []
    for name in sorted(undeclared):
        if name not in ("steps", "inputs") and name not in env.globals:
            found.append(("name", name))
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
        found.append((base.name, name))
    return tuple(found)
