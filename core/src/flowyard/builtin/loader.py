"""The native workflow loader: YAML (and JSON, a subset of YAML) with line/column tracking.

Parsing goes through :mod:`flowyard.parsing`: PyYAML's safe loader (no Python object tags)
with a composer that counts values and aliases and checks nesting depth, a bounded JSON
pre-scan, and files read with their size checked first. Every mapping, sequence and scalar
records where it was written under its field path (``steps[2].with.path``); validation errors
then carry file, line and column. Limits (:class:`~flowyard.parsing.ParseLimits`, config
``workflows.*``): ``max_bytes`` of source (default 1 MiB), ``max_nodes`` values after alias
expansion (default 200 000), ``max_aliases`` (default 1 000) and ``max_depth`` (default 100).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowyard.errors import WorkflowValidationError
from flowyard.parsing import ParseLimits, is_json_path, parse_json, parse_located, read_bounded
from flowyard.parsing import parse_yaml as _parse_yaml
from flowyard.workflow import Locations, Workflow, parse_workflow

__all__ = ["NativeLoader", "parse_yaml", "MAX_BYTES", "MAX_NODES", "MAX_ALIASES", "MAX_DEPTH"]

MAX_BYTES = ParseLimits().max_bytes
MAX_NODES = ParseLimits().max_nodes
MAX_ALIASES = ParseLimits().max_aliases
MAX_DEPTH = ParseLimits().max_depth


def parse_yaml(source: str, *, path: str | None = None, limits: ParseLimits | None = None,
               keep_going: bool = False, max_bytes: int = MAX_BYTES, max_nodes: int = MAX_NODES
               ) -> tuple[Any, Locations]:
    """Parse YAML/JSON text into builtins plus the location of every value: see
    :func:`flowyard.parsing.parse_located` (public as :func:`flowyard.parse_yaml`).

    Args:
        source: the text.
        path: the file it came from (named by issues).
        limits: the limits; default: ``max_bytes`` and ``max_nodes``, the other defaults.
        keep_going: record duplicate keys in ``locations.issues`` instead of raising.
        max_bytes: largest text, bytes (ignored when ``limits`` is given).
        max_nodes: most values after alias expansion (ignored when ``limits`` is given).

    Raises:
        WorkflowValidationError: as :func:`flowyard.parsing.parse_located`.
    """
    limits = limits or ParseLimits(max_bytes=max_bytes, max_nodes=max_nodes)
    return parse_located(source, path=path, limits=limits, keep_going=keep_going)


class NativeLoader:
    """The ``native`` workflow format: YAML or JSON files with the structure of
    ``docs/workflows.md``.

    Args:
        max_bytes: largest accepted file, bytes.
        max_nodes: most values constructed from one document (after alias expansion).
        max_aliases: most alias references in one document.
        max_depth: deepest nesting of sequences and mappings.
    """

    name = "native"
    suffixes: Sequence[str] = (".yaml", ".yml", ".json")

    def __init__(self, max_bytes: int = MAX_BYTES, max_nodes: int = MAX_NODES,
                 max_aliases: int = MAX_ALIASES, max_depth: int = MAX_DEPTH) -> None:
        self.limits = ParseLimits(max_bytes=max_bytes, max_nodes=max_nodes,
                                  max_aliases=max_aliases, max_depth=max_depth)
        self.max_bytes = max_bytes
        self.max_nodes = max_nodes

    def load(self, source: str, *, path: str | None = None) -> Workflow:
        """Parse ``source`` into a :class:`Workflow` (structural checks only).

        Raises:
            WorkflowValidationError: with file, line and column of each problem.
        """
        if is_json_path(path):
            data, locations = self._json(source, path)
        else:
            # duplicate keys are reported by parse_workflow with every other problem
            data, locations = _parse_yaml(source, source=path, limits=self.limits,
                                          keep_going=True)
        return parse_workflow(data, locations=locations, source=path)

    def load_path(self, path: str | Path) -> Workflow:
        """Read the file ``path`` (its size checked before it is read) and :meth:`load` it.

        Raises:
            WorkflowValidationError: unreadable, too large, not UTF-8, or invalid, located.
        """
        return self.load(read_bounded(path, self.limits), path=str(path))

    def _json(self, source: str, path: str | None) -> tuple[Any, Locations]:
        """Parse JSON (bounded pre-scan, then :mod:`json`); locations come from a YAML pass
        when JSON's syntax is also valid YAML (the common case), else only JSON syntax errors
        and limits are located.
        """
        try:
            data = parse_json(source, source=path, limits=self.limits, keep_first=True)
        except WorkflowValidationError as exc:
            raise self._located(exc, source, path) from None
        try:
            # surrogate pairs written as two \u escapes are one character to JSON, two lone
            # surrogates to PyYAML: the JSON parse above already checked the strings
            _, locations = _parse_yaml(source, source=path, limits=self.limits,
                                       check_surrogates=False, keep_going=True)
        except WorkflowValidationError:
            locations = Locations(file=path)
        return data, locations

    def _located(self, exc: WorkflowValidationError, source: str, path: str | None
                 ) -> WorkflowValidationError:
        """Return ``exc`` with line and column added to issues that only have a field path
        (a lone surrogate found in the parsed JSON), from a YAML pass over the same text;
        ``exc`` itself when that pass cannot locate them.
        """
        if all(i.line is not None or not i.path for i in exc.issues):
            return exc
        try:
            _, locations = _parse_yaml(source, source=path, limits=self.limits,
                                       check_surrogates=False)
        except WorkflowValidationError:
            return exc  # not YAML as well: the issues keep their field paths
        issues = []
        for issue in exc.issues:
            if issue.line is None and issue.path:
                issue = locations.issue(issue.message, issue.path.removesuffix(" (a key)"))
            issues.append(issue)
        return WorkflowValidationError(issues)
