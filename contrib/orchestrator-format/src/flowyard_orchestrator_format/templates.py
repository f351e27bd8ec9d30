"""Rewrite the Orchestrator's Jinja templates into flowyard templates.

The Orchestrator resolves bare names in its templates: ``{{ topic }}`` is a pipeline parameter,
``{{ read_data.content }}`` a field of a step's result, ``{{ summarize.result }}`` a step's
whole result, ``{{ $item }}`` the current loop item. flowyard's templates reach the same values
through ``inputs.topic`` and ``steps.read_data.output.content``. This module rewrites the names
of a template's expressions (found with Jinja's own lexer) and leaves everything else as it was
written, so flowyard validates and renders the result.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jinja2

__all__ = ["Ref", "TemplateRewriteError", "rewrite_template", "template_names"]

#: Names Jinja itself gives meaning to; never translated.
_JINJA_WORDS = frozenset({
    "and", "or", "not", "in", "is", "if", "else", "elif", "true", "false", "none", "True",
    "False", "None", "loop", "recursive", "with", "without", "context", "import", "as", "from",
    "range", "dict", "lipsum", "cycler", "joiner", "namespace", "super", "self", "varargs",
    "kwargs", "caller",
})

#: ``$name`` inside an expression: the Orchestrator's spelling of loop variables.
_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
#: ``a.*.b``: the Orchestrator's "field b of every item of loop a".
_STAR = re.compile(
    r"([A-Za-z_][A-Za-z0-9_]*)\.\*\.([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z_][A-Za-z0-9_]*)*)")
#: The expression and statement parts of a template.
_REGIONS = re.compile(r"(\{\{.*?\}\}|\{%.*?%\})", re.DOTALL)

_ENV = jinja2.Environment()


class TemplateRewriteError(ValueError):
    """A template that cannot be translated (a Jinja syntax error, say)."""


class Ref:
    """What a name of a template stands for, as the scope that resolves it answers.

    Args:
        text: the flowyard expression for the bare name (``steps.a.output``).
        step: for a step's result, how its fields are reached: a callable
            ``(expression, field) -> (expression, next Ref or None)``; None for plain values.
        item: what an item (``x[i]``) of the value stands for (a loop's list of results).
    """

    def __init__(self, text: str,
                 step: Callable[[str, str], tuple[str, Ref | None]] | None = None,
                 item: Ref | None = None) -> None:
        self.text = text
        self.step = step
        self.item = item

    def attribute(self, expression: str, name: str) -> tuple[str, Ref | None]:
        """Return the expression for ``.name`` of ``expression`` and what it stands for.

        Args:
            expression: the flowyard expression so far.
            name: the attribute written after it.

        Returns:
            ``(expression, ref)``; ``ref`` None once the value is plain data.
        """
        if self.step is None:
            return f"{expression}.{name}", None
        return self.step(expression, name)

    def subscript(self) -> Ref | None:
        """Return what an item (``x[i]``) of this value stands for (None: plain data)."""
        return self.item


def _prepare(source: str) -> str:
    """Replace ``$name`` by ``name`` and ``a.*.b`` by a map over ``a`` inside expressions."""

    def region(match: re.Match[str]) -> str:
        text = _DOLLAR.sub(r"\1", match.group(0))
        return _STAR.sub(_star, text)

    return _REGIONS.sub(region, source)


def _star(match: re.Match[str]) -> str:
    fields = [f for f in match.group(3).split(".") if f and f != "result"]
    attribute = ".".join([match.group(2), *fields])
    return f"({match.group(1)} | map(attribute='{attribute}') | list)"


def _locals(tokens: list[tuple[int, str, str]]) -> set[str]:
    """Names a template binds itself (``{% for a, b in ... %}``, ``{% set x = ... %}``)."""
    bound: set[str] = set()
    significant = [(kind, value) for _, kind, value in tokens if kind != "whitespace"]
    for i, (kind, _) in enumerate(significant):
        if kind != "block_begin" or i + 1 >= len(significant):
            continue
        tag = significant[i + 1][1]
        j = i + 2
        if tag == "for":
            while j < len(significant) and significant[j][1] != "in":
                if significant[j][0] == "name":
                    bound.add(significant[j][1])
                j += 1
        elif tag in ("set", "macro"):
            while j < len(significant) and significant[j][0] in ("name", "operator") \
                    and significant[j][1] not in ("=",):
                if significant[j][0] == "name":
                    bound.add(significant[j][1])
                j += 1
    return bound


def _lex(source: str) -> list[tuple[int, str, str]]:
    try:
        return list(_ENV.lexer.tokeniter(source, "template"))
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateRewriteError(f"template syntax error: {exc.message}") from None


def template_names(source: str) -> set[str]:
    """Return the free names of a template's expressions (``$`` removed).

    Args:
        source: an Orchestrator template.

    Returns:
        The names a scope would be asked to resolve.

    Raises:
        TemplateRewriteError: the template is not valid Jinja.
    """
    found: set[str] = set()

    def resolve(name: str) -> Ref | None:
        found.add(name)
        return None

    rewrite_template(source, resolve)
    return found


def rewrite_template(source: str, resolve: Callable[[str], Ref | None],
                     unresolved: Callable[[str, bool], None] | None = None) -> str:
    """Rewrite the free names of ``source``'s expressions with ``resolve``.

    Args:
        source: an Orchestrator template (text with ``{{ }}`` and ``{% %}`` parts).
        resolve: name -> :class:`Ref`, or None to leave the name as written.
        unresolved: called with ``(name, called)`` for each name ``resolve`` left as written;
            ``called`` is True for a function call (``now()``: a template global).

    Returns:
        The flowyard template.

    Raises:
        TemplateRewriteError: the template is not valid Jinja.
    """
    if "{{" not in source and "{%" not in source and "$" not in source:
        return source
    prepared = _prepare(source)
    tokens = _lex(prepared)
    bound = _locals(tokens)
    out: list[str] = []
    i = 0
    prev = ""          # the previous significant token's value in an expression
    after_begin = False
    depth = 0          # parentheses and brackets
    pending: list[tuple[int, Ref]] = []   # open subscripts of refs: (depth inside, item ref)

    def chain(expression: str, current: Ref | None, i: int) -> int:
        while current is not None:
            j = _next_significant(tokens, i)
            if j is None:
                break
            if tokens[j][2] == "[" and current.subscript() is not None:
                pending.append((depth + 1, current.subscript()))
                break
            if tokens[j][2] != "." or j + 1 >= len(tokens) or tokens[j + 1][1] != "name":
                break
            expression, current = current.attribute(expression, tokens[j + 1][2])
            i = j + 2
        out.append(expression)
        return i

    while i < len(tokens):
        _, kind, value = tokens[i]
        if kind in ("variable_begin", "block_begin"):
            out.append(value)
            prev, after_begin, depth = "", kind == "block_begin", 0
            pending.clear()
            i += 1
            continue
        if kind != "name" or value in _JINJA_WORDS or value in bound \
                or prev in (".", "|", "is") or after_begin:
            out.append(value)
            i += 1
            if kind == "whitespace":
                continue
            prev = value
            after_begin = False
            if kind == "operator" and value in "([{":
                depth += 1
            elif kind == "operator" and value in ")]}":
                depth -= 1
                if value == "]" and pending and pending[-1][0] == depth + 1:
                    i = chain("", pending.pop()[1], i)
            continue
        nxt = _next_significant(tokens, i + 1)
        ref = None
        if not (nxt is not None and tokens[nxt][2] == "=" and depth > 0):   # keyword argument
            ref = resolve(value)
        if ref is None:
            if unresolved is not None and not (nxt is not None and tokens[nxt][2] == "="
                                               and depth > 0):
                unresolved(value, nxt is not None and tokens[nxt][2] == "(")
            out.append(value)
            prev = value
            i += 1
            continue
        i = chain(ref.text, ref, i + 1)
        prev = "name"
    return "".join(out)


def _next_significant(tokens: list[tuple[int, str, str]], start: int) -> int | None:
    for j in range(start, len(tokens)):
        if tokens[j][1] != "whitespace":
            return j
    return None


def as_expression(source: Any) -> str | None:
    """Return the expression of a condition written as ``"{{ expr }}"`` or as a bare
    expression; None when it mixes text and expressions.

    Args:
        source: the condition as written (a string, or a boolean).
    """
    if isinstance(source, bool):
        return "true" if source else "false"
    text = str(source).strip()
    match = re.fullmatch(r"\{\{(.*)\}\}", text, re.DOTALL)
    if match and "{{" not in match.group(1) and "}}" not in match.group(1):
        return match.group(1).strip()
    if "{{" in text or "{%" in text:
        return None
    return text
