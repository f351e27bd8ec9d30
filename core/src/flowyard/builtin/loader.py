"""The native workflow loader: YAML (and JSON, a subset of YAML) with line/column tracking.

Parsing uses PyYAML's safe loader (no Python object tags). The node tree is walked by hand so
that every mapping, sequence and scalar records where it was written (``start_mark``) under
its field path (``steps[2].with.path``); validation errors then carry file, line and column.
Limits guard against hostile files: ``max_bytes`` of source text (default 1 MiB) and
``max_nodes`` constructed values (default 200 000, which stops alias "billion laughs"
expansion).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from flowyard.errors import ValidationIssue, WorkflowValidationError
from flowyard.workflow import Locations, Workflow, parse_workflow

__all__ = ["NativeLoader", "parse_yaml", "MAX_BYTES", "MAX_NODES"]

MAX_BYTES = 1024 * 1024
MAX_NODES = 200_000


_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:omap")


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps the node tree for the marked walk."""


class _Walker:
    def __init__(self, loader: _Loader, locations: Locations, max_nodes: int) -> None:
        self.loader = loader
        self.loc = locations
        self.max_nodes = max_nodes
        self.count = 0
        self.issues: list[ValidationIssue] = []

    def _mark(self, node: yaml.Node, path: str) -> None:
        mark = node.start_mark
        if path not in self.loc.positions:
            self.loc.positions[path] = (mark.line + 1, mark.column + 1)

    def walk(self, node: yaml.Node, path: str) -> Any:
        self.count += 1
        if self.count > self.max_nodes:
            raise WorkflowValidationError([self.loc.issue(
                f"the document has more than {self.max_nodes} values (alias expansion?)", path)])
        self._mark(node, path)
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
            mark = node.start_mark
            raise WorkflowValidationError([ValidationIssue(
                f"invalid YAML: unsupported tag {node.tag!r} (only plain data is allowed)",
                path=path, file=self.loc.file, line=mark.line + 1, column=mark.column + 1)])
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.loader.construct_object(key_node, deep=True)
                if not isinstance(key, (str, int, float, bool)) and key is not None:
                    mark = key_node.start_mark
                    self.issues.append(ValidationIssue(
                        "mapping keys must be scalars", path=path, file=self.loc.file,
                        line=mark.line + 1, column=mark.column + 1))
                    continue
                key = str(key) if not isinstance(key, str) else key
                child = f"{path}.{key}" if path else key
                self.loc.keys.setdefault(child, (key_node.start_mark.line + 1,
                                                 key_node.start_mark.column + 1))
                if key in out:
                    mark = key_node.start_mark
                    self.issues.append(ValidationIssue(
                        f"duplicate key {key!r}", path=child, file=self.loc.file,
                        line=mark.line + 1, column=mark.column + 1))
                    continue
                out[key] = self.walk(value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.walk(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        return self.loader.construct_object(node, deep=True)


def parse_yaml(source: str, *, path: str | None = None, max_bytes: int = MAX_BYTES,
               max_nodes: int = MAX_NODES) -> tuple[Any, Locations]:
    """Parse YAML/JSON text into builtins plus the location of every value.

    Raises:
        WorkflowValidationError: the text is too large, not valid YAML (with the line and
            column of the error), or has duplicate keys.
    """
    locations = Locations(file=path)
    size = len(source.encode("utf-8"))
    if size > max_bytes:
        raise WorkflowValidationError([ValidationIssue(
            f"workflow file is {size} bytes, more than the limit of {max_bytes}", file=path)])
    loader = _Loader(source)
    try:
        node = loader.get_single_node()
        if node is None:
            raise WorkflowValidationError([ValidationIssue("the workflow file is empty",
                                                           file=path)])
        walker = _Walker(loader, locations, max_nodes)
        data = walker.walk(node, "")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise WorkflowValidationError([ValidationIssue(
            f"invalid YAML: {exc.problem or exc}", file=path,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None)]) from None
    except yaml.YAMLError as exc:
        raise WorkflowValidationError([ValidationIssue(f"invalid YAML: {exc}", file=path)]
                                      ) from None
    finally:
        loader.dispose()
    if walker.issues:
        raise WorkflowValidationError(walker.issues)
    return data, locations


class NativeLoader:
    """The ``native`` workflow format: YAML or JSON files with the structure of
    ``docs/workflows.md``.

    Args:
        max_bytes: largest accepted file, bytes.
        max_nodes: most values constructed from one document.
    """

    name = "native"
    suffixes: Sequence[str] = (".yaml", ".yml", ".json")

    def __init__(self, max_bytes: int = MAX_BYTES, max_nodes: int = MAX_NODES) -> None:
        self.max_bytes = max_bytes
        self.max_nodes = max_nodes

    def load(self, source: str, *, path: str | None = None) -> Workflow:
        """Parse ``source`` into a :class:`Workflow` (structural checks only).

        Raises:
            WorkflowValidationError: with file, line and column of each problem.
        """
        if (path or "").lower().endswith(".json"):
            data, locations = self._json(source, path)
        else:
            data, locations = parse_yaml(source, path=path, max_bytes=self.max_bytes,
                                         max_nodes=self.max_nodes)
        return parse_workflow(data, locations=locations, source=path)

    def _json(self, source: str, path: str | None) -> tuple[Any, Locations]:
        """Parse JSON with :mod:`json`; locations come from a YAML pass when JSON's syntax
        is also valid YAML (the common case), else only JSON syntax errors are located.
        """
        import json

        size = len(source.encode("utf-8"))
        if size > self.max_bytes:
            raise WorkflowValidationError([ValidationIssue(
                f"workflow file is {size} bytes, more than the limit of {self.max_bytes}",
                file=path)])
        try:
            data = json.loads(source)
        except json.JSONDecodeError as exc:
            raise WorkflowValidationError([ValidationIssue(
                f"invalid JSON: {exc.msg}", file=path, line=exc.lineno, column=exc.colno)]
            ) from None
        try:
            _, locations = parse_yaml(source, path=path, max_bytes=self.max_bytes,
                                      max_nodes=self.max_nodes)
        except WorkflowValidationError as exc:
            if any(i.message.startswith("duplicate key") for i in exc.issues):
                raise
            locations = Locations(file=path)
        return data, locations
