"""Template filters and globals that Orchestrator pipelines use and flowyard lacks.

flowyard itself provides ``slugify``, ``to_json``, ``from_json``, ``strftime``/``date``,
``basename`` and ``dirname``; this module adds the rest, registered through flowyard's
``register_template_filters`` hook, so each runs inside flowyard's sandbox and render limits.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

__all__ = ["FILTERS", "GLOBALS", "now", "orchestrator_choice", "regex_replace", "regex_search"]

#: Longest pattern accepted (a pattern is compiled per call; keep it small).
MAX_PATTERN = 1000


def _pattern(pattern: Any) -> re.Pattern[str]:
    text = str(pattern)
    if len(text) > MAX_PATTERN:
        raise ValueError(f"regex pattern longer than {MAX_PATTERN} characters")
    return re.compile(text)


def regex_search(value: Any, pattern: str, group: int = 0) -> str | None:
    """Return the first match of ``pattern`` in ``value`` (or its ``group``), None if none.

    Args:
        value: the text to search.
        pattern: a Python regular expression.
        group: the group to return (0: the whole match).

    Raises:
        ValueError: the pattern is too long.
        re.error: the pattern is not a regular expression.
    """
    match = _pattern(pattern).search(str(value))
    return match.group(group) if match else None


def regex_replace(value: Any, pattern: str, replacement: str = "") -> str:
    """Replace every match of ``pattern`` in ``value`` by ``replacement`` (``\\1`` groups).

    Args:
        value: the text.
        pattern: a Python regular expression.
        replacement: the replacement text.

    Raises:
        ValueError: the pattern is too long.
        re.error: the pattern is not a regular expression.
    """
    return _pattern(pattern).sub(str(replacement), str(value))


def now(format: str | None = None) -> str:
    """Return the current UTC time as ISO 8601 text (``2026-12-02T13:45:00+00:00``), or
    formatted with the ``strftime`` ``format``.

    Args:
        format: optional ``strftime`` format.
    """
    moment = datetime.now(timezone.utc).replace(microsecond=0)
    return moment.strftime(format) if format else moment.isoformat()


def orchestrator_choice(value: Any, choices: list[Any], name: str) -> Any:
    """Return ``value`` when it is one of a parameter's ``choices``; used by the step the
    translation adds for parameters that declare ``choices``.

    Args:
        value: the parameter's value in this run.
        choices: the values the pipeline allows.
        name: the parameter's name (for the error).

    Raises:
        ValueError: ``value`` is not one of ``choices``; the check step fails with it, and
            no other step of the run starts.
    """
    if value not in choices:
        raise ValueError(f"parameter {name!r} is {value!r}, not one of its choices "
                         f"({', '.join(map(repr, choices))})")
    return value


#: Filter name -> function.
FILTERS = {"regex_search": regex_search, "regex_replace": regex_replace}
#: Global name -> function.
GLOBALS = {"now": now, "orchestrator_choice": orchestrator_choice}
