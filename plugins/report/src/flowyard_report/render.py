"""Rendering reports with a sandboxed Jinja2 environment.

The environment is :class:`jinja2.sandbox.ImmutableSandboxedEnvironment` (no access to
private or internal attributes such as ``__class__``/``__globals__``, no mutation of lists or
dicts), with ``StrictUndefined`` (a misspelt variable is an error, not an empty string),
autoescaping for HTML, and three extra limits against templates that try to exhaust memory
or CPU:

* ``*`` on a string/list and ``**`` are checked before they run (result at most
  ``max_output_chars`` items; integer results of ``**`` and ``*`` at most
  :data:`MAX_INT_BITS` bits, so ``((9**64)**64)**64`` is refused at once);
* every value the template builds with ``+``, ``~``, ``%``, a filter (``center``, ``format``,
  ``join``, ``replace``, ...), a string method (``ljust``, ...) or ``namespace`` attributes,
  and every value it prints, is checked before it is built: at most ``max_output_chars``
  characters plus items, counted through nested lists and mappings; literal text counts
  against the output limit inside macros too;
* ``range()`` may produce at most ``max_range_items`` items in total per render (Jinja's own
  sandbox caps one range at 100,000), and loop iterations plus calls plus operators are
  capped at ``max_range_items`` too;
* a render stops at its deadline (``timeout``, at most :data:`MAX_RENDER_SECONDS`), checked at
  every loop iteration, call and operator;
* the output is rendered in chunks and aborted once it exceeds ``max_output_chars``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from flowyard import ToolError, ToolInputError
from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError, TemplateError, TemplateNotFound
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace
from markupsafe import Markup

__all__ = ["ReportRenderer", "DEFAULT_TEMPLATES", "FORMATS", "infer_format", "MAX_INT_BITS",
           "MAX_RENDER_SECONDS"]

#: Largest integer ``**`` and ``*`` may compute in a report template, in bits.
MAX_INT_BITS = 8192
#: Longest one render may take, in seconds, when no shorter ``timeout`` is given.
MAX_RENDER_SECONDS = 30.0

FORMATS = ("markdown", "html")

_MARKDOWN_DEFAULT = """\
# {{ title or "Report" }}
{% if data is mapping %}
{% for key, value in data.items() %}

## {{ key }}

{{ value | as_markdown }}
{% endfor %}
{% elif data is not none %}

{{ data | as_markdown }}
{% endif %}
"""

_HTML_DEFAULT = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ title or "Report" }}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       line-height: 1.5; }
pre { background: #f5f5f5; padding: .75rem; overflow-x: auto; }
</style>
</head>
<body>
<h1>{{ title or "Report" }}</h1>
{% if data is mapping %}
{% for key, value in data.items() %}
<section>
<h2>{{ key }}</h2>
{{ value | as_html }}
</section>
{% endfor %}
{% elif data is not none %}
{{ data | as_html }}
{% endif %}
</body>
</html>
"""

DEFAULT_TEMPLATES = {"markdown": _MARKDOWN_DEFAULT, "html": _HTML_DEFAULT}


def infer_format(path: str) -> str:
    """``"html"`` for a path ending in ``.html``/``.htm``, else ``"markdown"``."""
    return "html" if path.lower().endswith((".html", ".htm")) else "markdown"


class _OutputTooLarge(Exception):
    pass


_FORMAT_WIDTH = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_GROWING_METHODS = frozenset(["ljust", "rjust", "center", "zfill", "expandtabs"])
_WIDTH_FILTERS = frozenset(["center", "indent", "truncate", "wordwrap"])


def _weight(value: Any, limit: int) -> int:
    """Return the size of ``value``: characters of strings plus items of containers, counted
    through nesting (digits of integers); stops once past ``limit``.
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


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox plus limits: sizes of built and printed values, integers, loop
    iterations plus calls plus operators, output, and a deadline (see the module docstring).
    """

    intercepted_binops = frozenset(["*", "**", "+", "%", "-", "/", "//"])

    def __init__(self, *, max_output_chars: int, max_range_items: int, timeout: float,
                 **kwargs: Any) -> None:
        super().__init__(finalize=self._finalize, **kwargs)
        self.max_output_chars = max_output_chars
        self.max_range_items = max_range_items
        self.range_used = 0
        self.ops = 0
        self.output = 0
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.globals["range"] = self._range
        sandbox = self

        class _Namespace(Namespace):  # type: ignore[misc]
            """``namespace()`` whose attributes cannot grow past the size limit."""

            def __setitem__(self, name: str, value: Any) -> None:
                sandbox.tick()
                sandbox.check_size(value, "a namespace attribute")
                super().__setitem__(name, value)

        self.globals["namespace"] = _Namespace

    def tick(self) -> None:
        """Count one loop iteration, call or operator; refuse past the limits.

        Raises:
            SecurityError: more than ``max_range_items`` of them, or the deadline passed.
        """
        self.ops += 1
        if self.ops > self.max_range_items:
            raise SecurityError(f"the template ran more than {self.max_range_items} loop "
                                "iterations, calls and operators")
        if time.monotonic() > self.deadline:
            raise SecurityError(f"the template did not finish within its time limit of "
                                f"{self.timeout:g} s")

    def check_size(self, value: Any, what: str) -> Any:
        """Return ``value`` unless it weighs more than ``max_output_chars`` (characters plus
        items, through nesting).

        Raises:
            SecurityError: ``value`` is too large.
        """
        if _weight(value, self.max_output_chars) > self.max_output_chars:
            raise SecurityError(f"{what} would be larger than {self.max_output_chars} "
                                "characters and items")
        return value

    def _finalize(self, value: Any) -> Any:
        size = _weight(value, self.max_output_chars)
        if size > self.max_output_chars:
            raise SecurityError(f"a printed value would be larger than {self.max_output_chars} "
                                "characters and items")
        self.output += len(value) if isinstance(value, str) else size
        if self.output > self.max_output_chars:
            raise _OutputTooLarge
        return value

    def install_guards(self) -> None:
        """Wrap every filter with the size checks and add the engine's private filters; call
        once all filters are registered.
        """
        from jinja2 import pass_context

        for name, func in list(self.filters.items()):
            self.filters[name] = self._guard_filter(name, func)

        @pass_context
        def iterate(context: Any, iterable: Any) -> Any:
            for item in iterable:
                self.tick()
                yield item

        @pass_context
        def text(context: Any, value: str) -> Any:
            return Markup(value) if context.eval_ctx.autoescape else value

        self.filters["_report_iter"] = iterate
        self.filters["_report_text"] = text
        self.filters["_report_part"] = lambda value: self.check_size(value, "a part of ~")

    def _guard_filter(self, name: str, func: Any) -> Any:
        offset = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0

        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            self.tick()
            value = args[offset] if len(args) > offset else None
            rest = args[offset + 1:]
            self.check_size(value, f"the input of filter {name!r}")
            limit = self.max_output_chars
            if name in _WIDTH_FILTERS:
                lines = value.count("\n") + 1 if isinstance(value, str) else 1
                if any(isinstance(n, int) and not isinstance(n, bool) and n * lines > limit
                       for n in [*rest, *kwargs.values()]):
                    raise SecurityError(f"filter {name!r} would produce more than {limit} "
                                        "characters")
            elif name == "format" and isinstance(value, str):
                self._check_format(value, tuple(rest) or dict(kwargs))
            elif name == "join" and isinstance(value, (list, tuple)):
                sep = rest[0] if rest else kwargs.get("d", "")
                if _weight(value, limit) + len(str(sep)) * len(value) > limit:
                    raise SecurityError(f"filter 'join' would produce more than {limit} "
                                        "characters")
            elif name == "replace" and isinstance(value, str) and len(rest) >= 2:
                if len(value) + value.count(str(rest[0])) * len(str(rest[1])) > limit:
                    raise SecurityError(f"filter 'replace' would produce more than {limit} "
                                        "characters")
            result = func(*args, **kwargs)
            if isinstance(result, (str, list, tuple, Mapping)):
                self.check_size(result, f"the result of filter {name!r}")
            return result

        return guarded

    def _check_format(self, spec: str, args: Any) -> None:
        self.check_size(args, "the formatted value")
        limit = self.max_output_chars
        for match in _FORMAT_WIDTH.finditer(spec):
            for group in match.groups():
                numbers = args if isinstance(args, (list, tuple)) else (args,)
                if (group == "*" and any(isinstance(n, int) and abs(n) > limit
                                         for n in numbers)) or (
                        group and group != "*" and (len(group) > 9 or int(group) > limit)):
                    raise SecurityError(f"a format width above {limit}")

    def _parse(self, source: str, name: str | None, filename: str | None) -> Any:
        from jinja2 import nodes

        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, "_report_iter", [], [], None, None,
                                     lineno=loop.lineno)
        for concat in tree.find_all(nodes.Concat):
            concat.nodes = [nodes.Filter(n, "_report_part", [], [], None, None,
                                         lineno=n.lineno) for n in concat.nodes]
        for output in tree.find_all(nodes.Output):
            output.nodes = [nodes.Filter(nodes.Const(n.data), "_report_text", [], [], None,
                                         None, lineno=n.lineno)
                            if isinstance(n, nodes.TemplateData) else n for n in output.nodes]
        return tree

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        """Count the call (see :meth:`tick`), refuse string methods that would build huge
        strings, then call as the sandbox does.
        """
        __self.tick()
        owner = getattr(__obj, "__self__", None)
        method = getattr(__obj, "__name__", "")
        limit = __self.max_output_chars
        if isinstance(owner, str) and (
                (method in _GROWING_METHODS and any(
                    isinstance(a, int) and a * max(1, owner.count("\t") + 1) > limit
                    for a in args))
                or (method == "join" and args and isinstance(args[0], (list, tuple))
                    and _weight(args[0], limit) + len(owner) * len(args[0]) > limit)
                or (method == "replace" and len(args) >= 2 and isinstance(args[0], str)
                    and isinstance(args[1], str)
                    and len(owner) + owner.count(args[0]) * len(args[1]) > limit)):
            raise SecurityError(f"str.{method} would produce more than {limit} characters")
        return super().call(__context, __obj, *args, **kwargs)

    def _range(self, *args: int) -> range:
        rng = range(*args)
        self.range_used += len(rng)
        if self.range_used > self.max_range_items:
            raise SecurityError(f"the template asked range() for more than "
                                f"{self.max_range_items} items in total")
        return rng

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """Refuse an operator whose result would pass the limits, before computing it."""
        self.tick()
        ints = (isinstance(left, int) and isinstance(right, int)
                and not isinstance(left, bool) and not isinstance(right, bool))
        limit = self.max_output_chars
        if ints and operator == "**" and right > 0 and abs(left) > 1 and (
                left.bit_length() * right > MAX_INT_BITS + right):
            raise SecurityError(f"a {left.bit_length()}-bit integer ** {right} would have "
                                f"more than {MAX_INT_BITS} bits")
        if ints and operator == "*" and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
            raise SecurityError(f"the product would have more than {MAX_INT_BITS} bits")
        if operator == "*" and not ints:
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, (str, bytes, list, tuple)) and isinstance(count, int) \
                        and count > 0 and (_weight(seq, limit) - 1) * count > limit:
                    raise SecurityError(f"the template multiplies a sequence to more than "
                                        f"{limit} items")
        elif operator == "+" and not ints and _weight(left, limit) + _weight(right, limit) > limit:
            raise SecurityError(f"the sum would be larger than {limit} characters and items")
        elif operator == "%" and isinstance(left, str):
            self._check_format(left, right)
        return super().call_binop(context, operator, left, right)


def _as_markdown(value: Any) -> str:
    """A step output as Markdown: text as is, lists as bullet lists, other values as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value):
        return "\n".join(f"- {v}" for v in value)
    return "```json\n" + json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n```"


class ReportRenderer:
    """Render report templates.

    Args:
        load_template: ``load_template(name) -> str`` for ``template_path`` and for
            ``{% include %}``/``{% extends %}`` (names relative to the report root); raises
            :class:`~flowyard.errors.ToolError` when missing.
        max_output_chars: largest rendered report, in characters.
        max_range_items: most items ``range()`` may produce in one render.
    """

    def __init__(self, load_template: Callable[[str], str] | None = None, *,
                 max_output_chars: int = 20_000_000, max_range_items: int = 1_000_000) -> None:
        self.load_template = load_template
        self.max_output_chars = max_output_chars
        self.max_range_items = max_range_items

    def _environment(self, fmt: str, timeout: float) -> _Sandbox:
        from jinja2 import FunctionLoader

        def load(name: str) -> tuple[str, str, Callable[[], bool]] | None:
            if self.load_template is None:
                return None
            return self.load_template(name), name, lambda: False

        env = _Sandbox(max_output_chars=self.max_output_chars,
                       max_range_items=self.max_range_items, timeout=timeout,
                       loader=FunctionLoader(load), autoescape=fmt == "html",
                       undefined=StrictUndefined, keep_trailing_newline=True,
                       trim_blocks=True, lstrip_blocks=True)
        env.filters["markdown"] = self._markdown_filter
        env.filters["as_markdown"] = _as_markdown
        env.filters["as_html"] = self._as_html
        env.filters["json"] = lambda v, indent=2: json.dumps(v, indent=indent,
                                                             ensure_ascii=False, default=str)
        env.install_guards()
        return env

    @staticmethod
    def _markdown_filter(text: Any) -> Markup:
        """Markdown to HTML (CommonMark, raw HTML escaped, unsafe link schemes dropped)."""
        from markdown_it import MarkdownIt

        md = MarkdownIt("commonmark", {"html": False}).enable("table")
        return Markup(md.render(str(text)))

    def _as_html(self, value: Any) -> Markup:
        """A step output as HTML: text through Markdown, other values as escaped JSON."""
        from markupsafe import escape

        if isinstance(value, str):
            return self._markdown_filter(value)
        if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float))
                                                    for v in value):
            items = "".join(f"<li>{escape(v)}</li>" for v in value)
            return Markup(f"<ul>{items}</ul>")
        text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
        return Markup(f"<pre><code>{escape(text)}</code></pre>")

    def render(self, *, fmt: str, data: Any, template: str | None = None,
               template_path: str | None = None, title: str | None = None,
               timeout: float | None = None) -> str:
        """Render a report and return its text.

        Args:
            fmt: ``"markdown"`` or ``"html"`` (HTML autoescapes every value).
            data: the step outputs; available as ``data`` and, when a mapping, each key whose
                name is not ``data``, ``title``, ``format`` or ``generated_at`` also as a
                variable of its own.
            template: inline Jinja template source (at most one of ``template`` and
                ``template_path``; neither: the built-in template of ``fmt``).
            template_path: name of a template file, read through the ``load_template``
                callable given to the renderer (the report tool resolves it inside its
                root directory); templates it includes or extends load the same way.
            title: available as ``title``.
            timeout: seconds the render may take (``None`` or more than
                :data:`MAX_RENDER_SECONDS`: that limit).

        Raises:
            ToolInputError: both templates given, an unknown format, or a template syntax
                error (with its line).
            ToolError: an undefined variable, a forbidden operation (sandbox), output over the
                limit, a missing template file, or an error raised while rendering.
        """
        if fmt not in FORMATS:
            raise ToolInputError(f"unknown report format {fmt!r}; use one of {FORMATS}")
        if template is not None and template_path is not None:
            raise ToolInputError("give either `template` or `template_path`, not both")
        limit = MAX_RENDER_SECONDS if timeout is None else max(0.0, min(timeout,
                                                                         MAX_RENDER_SECONDS))
        env = self._environment(fmt, limit)
        where = f"template {template_path!r}" if template_path is not None else "the template"
        try:
            if template_path is not None:
                tpl = env.get_template(template_path)
            else:
                tpl = env.from_string(template if template is not None
                                      else DEFAULT_TEMPLATES[fmt])
        except TemplateSyntaxError as exc:
            name = exc.name or (template_path or "<inline>")
            raise ToolInputError(f"syntax error in {name!r} line {exc.lineno}: {exc.message}"
                                 ) from None
        except TemplateNotFound as exc:
            raise ToolError(f"report template {exc.name!r} not found") from None
        context: dict[str, Any] = {}
        if isinstance(data, Mapping):
            context.update({str(k): v for k, v in data.items()})
        context.update({"data": data, "title": title, "format": fmt,
                        "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(
                            timespec="seconds")})
        parts: list[str] = []
        size = 0
        try:
            for chunk in tpl.generate(context):
                size += len(chunk)
                if size > self.max_output_chars:
                    raise _OutputTooLarge
                parts.append(chunk)
        except _OutputTooLarge:
            raise ToolError(f"the rendered report exceeds {self.max_output_chars} characters"
                            ) from None
        except SecurityError as exc:
            raise ToolError(f"{where} uses a forbidden operation: {exc}") from None
        except UndefinedError as exc:
            hint = ""
            if exc.message and any(f"'{name}' is undefined" in exc.message
                                   for name in ("inputs", "steps", "item", "run")):
                hint = ("; a report template sees only `data`, `title`, `format` and "
                        "`generated_at`: pass the run's values through `data`")
            raise ToolError(f"{where} uses an undefined value: {exc.message}{hint}") from None
        except TemplateSyntaxError as exc:
            raise ToolInputError(f"syntax error in {exc.name or '<inline>'!r} line "
                                 f"{exc.lineno}: {exc.message}") from None
        except TemplateNotFound as exc:
            raise ToolError(f"report template {exc.name!r} not found") from None
        except RecursionError:
            raise ToolError(f"{where} nests or recurses too deeply") from None
        except (TemplateError, TypeError, ValueError, ArithmeticError, LookupError,
                AttributeError) as exc:
            raise ToolError(f"{where} failed while rendering: {type(exc).__name__}: {exc}"
                            ) from None
        return "".join(parts)
