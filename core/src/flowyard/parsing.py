r"""Bounded parsing of YAML and JSON from users: workflow files, ``-i`` values, ``--inputs``.

Every way data enters flowyard as YAML or JSON text goes through :func:`read_bounded` (files)
and :func:`parse_yaml` / :func:`parse_json` (text), with the same :class:`ParseLimits`:

- ``max_bytes``: files are ``stat``-ed and then read with a bounded ``read`` (at most
  ``max_bytes + 1`` bytes), so an oversized file is refused before it is read whole;
  text is measured in UTF-8 bytes.
- ``max_nodes``: values composed and constructed, counted after alias expansion (an alias
  bomb stops after ``max_nodes`` values, in bounded memory and time); merge keys (``<<``)
  are counted too.
- ``max_aliases``: alias references (``*name``) in one document.
- ``max_depth``: nesting of sequences and mappings (after alias expansion); the composer's
  recursion is checked, so deep documents never reach Python's recursion limit. JSON's depth
  is pre-scanned before :func:`json.loads` runs.

Text holding a lone surrogate (``"\udc80"`` escapes) is refused: it cannot be stored or
hashed. Every violation raises :class:`~flowyard.errors.WorkflowValidationError` whose issue
names the source (a file path or ``-i NAME``), line and column when known, and the limit.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from attrs import define, field, validators

from flowyard.errors import ConfigError, ValidationIssue, WorkflowValidationError
from flowyard.workflow import Locations

__all__ = ["ParseLimits", "read_bounded", "parse_yaml", "parse_located", "parse_json", "parse_text",
           "find_surrogate", "is_json_path", "DEPTH_CEILING"]

#: Highest accepted ``max_depth``: the composer recurses (three frames a level), so the
#: ceiling keeps even the deepest accepted document well inside Python's recursion limit.
DEPTH_CEILING = 200


@define(frozen=True)
class ParseLimits:
    """Limits applied to one YAML/JSON document (config ``workflows.*``, see
    ``docs/configuration.md``).

    Args:
        max_bytes: largest source, in bytes (UTF-8); default 1 MiB.
        max_nodes: most values composed or constructed, counted after alias and merge-key
            expansion; default 200 000.
        max_aliases: most alias references (``*name``); default 1 000.
        max_depth: deepest nesting of sequences/mappings, 1..``DEPTH_CEILING``; default 100.

    Raises:
        ValueError: a limit is not a positive integer, or ``max_depth`` is above the ceiling.
    """

    max_bytes: int = field(default=1024 * 1024, validator=[validators.instance_of(int),
                                                           validators.gt(0)])
    max_nodes: int = field(default=200_000, validator=[validators.instance_of(int),
                                                       validators.gt(0)])
    max_aliases: int = field(default=1_000, validator=[validators.instance_of(int),
                                                       validators.ge(0)])
    max_depth: int = field(default=100, validator=[validators.instance_of(int),
                                                   validators.gt(0),
                                                   validators.le(DEPTH_CEILING)])

    @classmethod
    def from_config(cls, config: Any) -> ParseLimits:
        """Return the limits configured under ``workflows.*`` (defaults where unset).

        Args:
            config: a :class:`~flowyard.config.Config` (anything with ``get(dotted, default)``).

        Raises:
            ConfigError: a configured limit is not a positive integer or is out of range
                (``max_depth`` above ``DEPTH_CEILING``), naming the key.
        """
        base = cls()
        values: dict[str, int] = {}
        for name in ("max_bytes", "max_nodes", "max_aliases", "max_depth"):
            raw = config.get(f"workflows.{name}", getattr(base, name))
            if not isinstance(raw, int) or isinstance(raw, bool):
                raise ConfigError(f"workflows.{name} must be an integer, not {raw!r}")
            values[name] = raw
        try:
            return cls(**values)
        except ValueError as exc:
            raise ConfigError(f"workflows.*: {exc} (max_depth at most {DEPTH_CEILING}, the "
                              "others positive)") from None


def _fail(message: str, source: str | None, line: int | None = None,
          column: int | None = None, path: str = "") -> WorkflowValidationError:
    return WorkflowValidationError([ValidationIssue(message, path=path, file=source, line=line,
                                                    column=column)])


def _too_large(size: int | str, limits: ParseLimits, source: str | None
               ) -> WorkflowValidationError:
    return _fail(f"the document is {size} bytes, more than the limit of {limits.max_bytes} "
                 f"(workflows.max_bytes)", source)


def read_bounded(path: str | os.PathLike[str], limits: ParseLimits | None = None) -> str:
    """Return the UTF-8 text of the file ``path``, refusing it before reading it whole when it
    is larger than ``limits.max_bytes`` (``stat``, then a read of at most ``max_bytes + 1``
    bytes, which also bounds pipes and files that grow).

    Raises:
        WorkflowValidationError: the file cannot be read, is too large (the issue names the
            size and the limit), or is not UTF-8 (with the line and column of the bad byte).
    """
    limits = limits or ParseLimits()
    name = str(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > limits.max_bytes:
                raise _too_large(size, limits, name)
            data = fh.read(limits.max_bytes + 1)
    except OSError as exc:
        raise _fail(f"cannot read the file: {exc.strerror or exc}", name) from None
    if len(data) > limits.max_bytes:
        raise _too_large(f"more than {limits.max_bytes}", limits, name)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise _fail(f"the file is not valid UTF-8 ({exc.reason})", name, line, column) from None


def _check_size(text: str, limits: ParseLimits, source: str | None) -> None:
    if len(text) > limits.max_bytes:  # every character is at least one byte
        raise _too_large(f"more than {limits.max_bytes}", limits, source)
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_bytes:
        raise _too_large(size, limits, source)


def _is_lone_surrogate_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_SURROGATE = re.compile("[\ud800-\udfff]")


def find_surrogate(value: Any) -> tuple[str, str] | None:
    """Return ``(path, text)`` of the first string (key or value) in ``value`` that holds a
    lone surrogate, else None. Walks iteratively (any depth). Paths look like ``a.b[2]``.
    """
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if _is_lone_surrogate_text(item):
                return path, item
        elif isinstance(item, dict):
            for key, sub in item.items():
                child = f"{path}.{key}" if path else str(key)
                if isinstance(key, str) and _is_lone_surrogate_text(key):
                    return f"{child} (a key)", key
                stack.append((sub, child))
        elif isinstance(item, (list, tuple)):
            stack.extend((sub, f"{path}[{i}]") for i, sub in enumerate(item))
    return None


def _surrogate_message(text: str) -> str:
    found = _SURROGATE.search(text)
    code = f"\\u{ord(found.group()):04x}" if found else "?"
    return (f"text holds a lone surrogate ({code}), which is not valid Unicode; write the "
            "character itself or a surrogate pair")


_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:omap")


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer counts nodes and aliases and checks nesting depth, and whose
    merge-key flattening is bounded.
    """

    def __init__(self, stream: str, limits: ParseLimits, source: str | None) -> None:
        super().__init__(stream)
        self.limits = limits
        self.source = source
        self.depth = 0
        self.nodes = 0
        self.aliases = 0

    def _limit(self, message: str, mark: Any) -> WorkflowValidationError:
        return _fail(message, self.source, mark.line + 1 if mark else None,
                     mark.column + 1 if mark else None)

    def compose_node(self, parent: Any, index: Any) -> Any:
        """Compose one node, counting it (or the alias) and checking the depth.

        Raises:
            WorkflowValidationError: ``max_aliases``, ``max_nodes`` or ``max_depth`` exceeded.
        """
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > self.limits.max_aliases:
                raise self._limit(f"more than {self.limits.max_aliases} aliases "
                                  "(workflows.max_aliases)", event.start_mark)
            return super().compose_node(parent, index)
        self.nodes += 1
        if self.nodes > self.limits.max_nodes:
            raise self._limit(f"more than {self.limits.max_nodes} values "
                              "(workflows.max_nodes)", event.start_mark)
        if not isinstance(event, yaml.CollectionStartEvent):
            return super().compose_node(parent, index)  # a scalar nests nothing
        self.depth += 1
        try:
            if self.depth > self.limits.max_depth:
                raise self._limit(f"nested more than {self.limits.max_depth} levels deep "
                                  "(workflows.max_depth)", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def flatten_mapping(self, node: Any, _depth: int = 0) -> None:
        """PyYAML's merge-key (``<<``) flattening with the merged pairs counted against
        ``max_nodes`` and the merge chain against ``max_depth``.

        Raises:
            WorkflowValidationError: a limit is exceeded.
            yaml.constructor.ConstructorError: a merge value is not a mapping or a list of them.
        """
        if _depth > self.limits.max_depth:
            raise self._limit(f"merge keys nested more than {self.limits.max_depth} levels "
                              "(workflows.max_depth)", node.start_mark)
        merge: list[Any] = []
        index = 0
        while index < len(node.value):
            key_node, value_node = node.value[index]
            if key_node.tag == "tag:yaml.org,2002:merge":
                del node.value[index]
                subnodes = (value_node.value if isinstance(value_node, yaml.SequenceNode)
                            else [value_node])
                parts = []
                for subnode in subnodes:
                    if not isinstance(subnode, yaml.MappingNode):
                        raise yaml.constructor.ConstructorError(
                            "while constructing a mapping", node.start_mark,
                            f"expected a mapping for merging, but found {subnode.id}",
                            subnode.start_mark)
                    self.flatten_mapping(subnode, _depth + 1)
                    parts.append(subnode.value)
                for part in reversed(parts):
                    merge.extend(part)
                    if len(merge) > self.limits.max_nodes:
                        raise self._limit(f"merge keys expand to more than "
                                          f"{self.limits.max_nodes} values "
                                          "(workflows.max_nodes)", key_node.start_mark)
            elif key_node.tag == "tag:yaml.org,2002:value":
                key_node.tag = "tag:yaml.org,2002:str"
                index += 1
            else:
                index += 1
        if merge:
            node.value = merge + node.value


# JSON's exponent floats (``1e-05``, ``2E8``, ``1.5e3``), which YAML 1.1 reads as strings: a
# JSON value passed as YAML (``-i x=1e-05``) keeps its type.
_BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


class _Walker:
    """Builds plain values from the node tree, recording locations, expanding aliases into
    copies (counted against ``max_nodes``) and checking depth, keys, tags and surrogates.
    """

    def __init__(self, loader: _BoundedLoader, locations: Locations,
                 check_surrogates: bool) -> None:
        self.loader = loader
        self.loc = locations
        self.limits = loader.limits
        self.check_surrogates = check_surrogates
        self.count = 0
        self.issues: list[ValidationIssue] = []

    def _issue(self, message: str, node: Any, path: str) -> ValidationIssue:
        mark = node.start_mark
        return ValidationIssue(message, path=path, file=self.loc.file, line=mark.line + 1,
                               column=mark.column + 1)

    def _scalar(self, node: Any, path: str) -> Any:
        try:
            value = self.loader.construct_object(node, deep=True)
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            # PyYAML's scalar constructors raise these for values their tag cannot hold
            # (``2001-02-30``, ``!!int abc``, ``!!bool maybe``, ``0x_``)
            raise WorkflowValidationError([self._issue(
                f"invalid YAML: {node.value!r} is not a valid {node.tag.rsplit(':', 1)[-1]} "
                f"({type(exc).__name__}: {exc})", node, path)]) from None
        if self.check_surrogates and isinstance(value, str) and _is_lone_surrogate_text(value):
            raise WorkflowValidationError([self._issue(_surrogate_message(value), node, path)])
        return value

    def walk(self, node: Any, path: str, depth: int = 1) -> Any:
        self.count += 1
        if self.count > self.limits.max_nodes:
            raise WorkflowValidationError([self._issue(
                f"more than {self.limits.max_nodes} values after alias expansion "
                "(workflows.max_nodes)", node, path)])
        is_collection = isinstance(node, (yaml.MappingNode, yaml.SequenceNode))
        if is_collection and depth > self.limits.max_depth:
            raise WorkflowValidationError([self._issue(
                f"nested more than {self.limits.max_depth} levels deep after alias expansion "
                "(workflows.max_depth)", node, path if len(path) <= 80 else path[:77] + "...")])
        mark = node.start_mark
        self.loc.positions.setdefault(path, (mark.line + 1, mark.column + 1))
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
            raise WorkflowValidationError([self._issue(
                f"invalid YAML: unsupported tag {node.tag!r} (only plain data is allowed)",
                node, path)])
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    self.issues.append(self._issue("mapping keys must be scalars", key_node,
                                                   path))
                    continue
                key = self._scalar(key_node, path)
                key = str(key) if not isinstance(key, str) else key
                child = f"{path}.{key}" if path else key
                self.loc.keys.setdefault(child, (key_node.start_mark.line + 1,
                                                 key_node.start_mark.column + 1))
                if key in out:
                    first = self.loc.keys.get(child)
                    where = f" (first written at line {first[0]}, column {first[1]})" \
                        if first else ""
                    self.issues.append(self._issue(f"duplicate key {key!r}{where}", key_node,
                                                   child))
                    continue
                out[key] = self.walk(value_node, child, depth + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.walk(item, f"{path}[{i}]", depth + 1)
                    for i, item in enumerate(node.value)]
        return self._scalar(node, path)


def parse_yaml(text: str, *, source: str | None = None, limits: ParseLimits | None = None,
               empty: Any = None, check_surrogates: bool = True, keep_going: bool = False
               ) -> tuple[Any, Locations]:
    """Parse one YAML (or JSON) document into plain values plus the location of each.

    Args:
        text: the document.
        source: what issues name as the file (a path, or ``-i NAME``).
        limits: the limits (defaults: :class:`ParseLimits`).
        empty: returned for an empty document (``None``: the empty document is an error).
        check_surrogates: refuse strings holding lone surrogates.
        keep_going: record duplicate keys (the first value is kept, the later ones dropped)
            and non-scalar keys (dropped) in ``locations.issues`` instead of raising, so that
            :func:`~flowyard.workflow.parse_workflow` reports them with every other problem.

    Returns:
        ``(value, locations)``; ``locations.positions`` maps paths (``steps[2].with``) to
        1-based ``(line, column)``.

    Raises:
        WorkflowValidationError: too large, a limit exceeded, invalid YAML (with line and
            column), an unsupported tag, a lone surrogate; duplicate or non-scalar keys
            unless ``keep_going``.
    """
    limits = limits or ParseLimits()
    _check_size(text, limits, source)
    locations = Locations(file=source)
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text, limits, source)  # the reader checks characters here
        node = loader.get_single_node()
        if node is None:
            if empty is not None:
                return empty, locations
            raise _fail("the document is empty", source)
        walker = _Walker(loader, locations, check_surrogates)
        data = walker.walk(node, "")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise _fail(f"invalid YAML: {exc.problem or exc}", source,
                    mark.line + 1 if mark else None, mark.column + 1 if mark else None
                    ) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise _fail(f"invalid YAML: unacceptable character #x{exc.character:04x}", source,
                    line, column) from None
    except yaml.YAMLError as exc:
        raise _fail(f"invalid YAML: {exc}", source) from None
    finally:
        if loader is not None:
            loader.dispose()
    if walker.issues:
        if not keep_going:
            raise WorkflowValidationError(walker.issues)
        locations.issues.extend(walker.issues)
    return data, locations


def parse_located(source: str, *, path: str | None = None, limits: ParseLimits | None = None,
                  keep_going: bool = False) -> tuple[Any, Locations]:
    """Parse YAML/JSON text into builtins plus the location of every value (the parser of the
    ``native`` loader, public as :func:`flowyard.parse_yaml` for loader plugins).

    Args:
        source: the text.
        path: the file it came from (named by issues and stored as ``locations.file``).
        limits: the limits (:class:`ParseLimits`; config ``workflows.*``
            gives them with ``ParseLimits.from_config(config)``); default: the defaults.
        keep_going: record duplicate keys (the first value is kept) and non-scalar keys in
            ``locations.issues`` instead of raising; :func:`~flowyard.workflow.parse_workflow`
            reports them with every other problem (a translating loader copies them into the
            :class:`~flowyard.workflow.Locations` it builds).

    Returns:
        ``(data, locations)``: plain values (dict, list, str, int, float, bool, None, dates)
        and a :class:`~flowyard.workflow.Locations` whose ``positions`` map each value's path
        (``steps[2].with.path``) and ``keys`` each mapping key's path to 1-based
        ``(line, column)``.

    Raises:
        WorkflowValidationError: the text is too large, exceeds a limit, is not valid YAML
            (with the line and column of the error), holds a lone surrogate; has duplicate
            keys unless ``keep_going``.
    """
    return parse_yaml(source, source=path, limits=limits, keep_going=keep_going)


#: Strings (skipped whole, escapes included), brackets and commas of JSON text.
_JSON_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{},]', re.DOTALL)


def _line_column(text: str, pos: int) -> tuple[int, int]:
    return text.count("\n", 0, pos) + 1, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def parse_json(text: str, *, source: str | None = None, limits: ParseLimits | None = None,
               keep_first: bool = False) -> Any:
    """Parse JSON text after a bounded pre-scan of its nesting depth and value count.

    Args:
        text: the JSON text.
        source: what issues name as the file.
        limits: the limits (defaults: :class:`ParseLimits`); JSON has no aliases.
        keep_first: of duplicate keys in an object keep the first value (as
            :func:`parse_yaml` with ``keep_going`` does) instead of :mod:`json`'s last.

    Returns:
        The value (dicts, lists, str, int, float, bool, None).

    Raises:
        WorkflowValidationError: too large, nested deeper than ``max_depth`` or holding more
            than ``max_nodes`` values (located at the offending bracket), invalid JSON (with
            line and column), or a string with a lone surrogate (with its path).
    """
    limits = limits or ParseLimits()
    _check_size(text, limits, source)
    depth = 0
    values = 1
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            values += 1
            if depth > limits.max_depth:
                raise _fail(f"nested more than {limits.max_depth} levels deep "
                            "(workflows.max_depth)", source, *_line_column(text, match.start()))
        elif token in "]}":
            depth -= 1
        elif token == ",":
            values += 1
        if values > limits.max_nodes:
            raise _fail(f"more than {limits.max_nodes} values (workflows.max_nodes)", source,
                        *_line_column(text, match.start()))
    try:
        data = json.loads(text, object_pairs_hook=_first_wins if keep_first else None)
    except json.JSONDecodeError as exc:
        raise _fail(f"invalid JSON: {exc.msg}", source, exc.lineno, exc.colno) from None
    except RecursionError:  # unreachable after the pre-scan; kept as a located error
        raise _fail(f"nested too deeply (workflows.max_depth {limits.max_depth})",
                    source) from None
    found = find_surrogate(data)
    if found is not None:
        raise _fail(_surrogate_message(found[1]), source, path=found[0])
    return data


def parse_text(text: str, *, source: str | None = None, limits: ParseLimits | None = None,
               json_only: bool = False) -> Any:
    """Parse user text as JSON when ``json_only``, else as YAML (JSON is a subset).

    Returns the value (an empty YAML document gives ``None``). Raises
    :class:`~flowyard.errors.WorkflowValidationError` as :func:`parse_yaml`/:func:`parse_json`.
    """
    if json_only:
        return parse_json(text, source=source, limits=limits)
    empty = object()
    value, _ = parse_yaml(text, source=source, limits=limits, empty=empty)
    return None if value is empty else value


def is_json_path(path: str | Path | None) -> bool:
    """Return whether ``path`` names a ``.json`` file."""
    return str(path or "").lower().endswith(".json")
