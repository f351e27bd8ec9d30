"""The filesystem tools. Every path argument is relative to the configured root (see
:mod:`flowyard_safepath` for how paths are checked and why symlink races cannot escape it).

All tools run their blocking file operations in a worker thread, so they never block the
event loop, and raise :class:`~flowyard.errors.ToolInputError` (bad or refused path, bad
arguments) or :class:`~flowyard.errors.ToolError` (the operation failed) with the path as the
caller wrote it.
"""

from __future__ import annotations

import abc
import base64
import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

import anyio.to_thread
from flowyard import BaseTool, ToolContext, ToolError, ToolInputError
from flowyard_safepath import SafeRoot, decode_content

__all__ = [
    "FilesystemTool",
    "ReadTool",
    "WriteTool",
    "AppendTool",
    "ListTool",
    "GlobTool",
    "ExistsTool",
    "MkdirTool",
    "CopyTool",
    "MoveTool",
    "DeleteTool",
    "ALL_TOOLS",
    "glob_match",
]

_PATH = {"type": "string", "minLength": 1,
         "description": "path relative to the filesystem root ('/'-separated; '.' is the root)"}
_ENCODING = {"type": "string", "default": "utf-8",
             "description": "text encoding of `content` (e.g. 'utf-8'), or 'base64' for binary "
                            "data"}


class FilesystemTool(BaseTool, metaclass=abc.ABCMeta):
    """Base class of the filesystem tools: holds the :class:`SafeRoot` (shared by all tools of
    one stack) and runs :meth:`call` in a worker thread.

    Args:
        root: where the tools may act.
        read_only: refuse every tool that changes files (``side_effects`` not empty).
    """

    side_effects: Sequence[str] = ()

    def __init__(self, root: SafeRoot, *, read_only: bool = False) -> None:
        self.root = root
        self.read_only = read_only

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Run :meth:`call` in a worker thread; label errors with this tool's name.

        Raises:
            ToolError: the root is read-only and this tool changes files, or :meth:`call`
                failed.
        """
        if self.read_only and self.side_effects:
            raise ToolError(f"{self.name}: the filesystem root is configured read-only "
                            "([filesystem] read_only = true)", tool=self.name)
        try:
            return await anyio.to_thread.run_sync(self.call, arguments)
        except ToolError as exc:
            if exc.tool is None:
                exc.tool = self.name
            raise

    @abc.abstractmethod
    def call(self, arguments: dict[str, Any]) -> Any:
        """Do the work synchronously (in a worker thread); return a JSON-ready dict."""


class ReadTool(FilesystemTool):
    """``filesystem.read``: the content of a file, as text or base64."""

    name = "filesystem.read"
    description = ("Read a file inside the workspace. Returns its content as text (default "
                   "UTF-8) or, with encoding 'base64', as base64 for binary files.")
    parameters = {
        "type": "object",
        "properties": {
            "path": _PATH,
            "encoding": {**_ENCODING, "description": "decode the content with this text "
                         "encoding, or 'base64' to return the raw bytes as base64"},
            "max_bytes": {"type": "integer", "minimum": 1,
                          "description": "refuse files larger than this many bytes"},
        },
        "required": ["path"],
        "additionalProperties": False,
    }
    idempotent = True
    side_effects = ()
    egress = {"path": "read"}

    def call(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Returns ``{"path", "content", "encoding", "size"}`` (size in bytes).

        Raises:
            ToolError: missing, a directory, over the read limit, or not decodable as the
                requested text encoding (the message suggests base64).
        """
        path = arguments["path"]
        encoding = arguments.get("encoding", "utf-8")
        max_bytes = arguments.get("max_bytes")
        if max_bytes is not None and self.root.max_read_bytes is not None:
            max_bytes = min(max_bytes, self.root.max_read_bytes)
        data = self.root.read_bytes(path, max_bytes=max_bytes)
        if encoding == "base64":
            content = base64.b64encode(data).decode("ascii")
        else:
            try:
                content = data.decode(encoding)
            except LookupError:
                raise ToolInputError(f"{path!r}: unknown text encoding {encoding!r}") from None
            except UnicodeDecodeError as exc:
                raise ToolError(f"{path!r} is not valid {encoding} text (byte {exc.start}); "
                                "read it with encoding 'base64'") from None
        return {"path": path, "content": content, "encoding": encoding, "size": len(data)}


class WriteTool(FilesystemTool):
    """``filesystem.write``: create or replace a file atomically."""

    name = "filesystem.write"
    description = ("Write a file inside the workspace (text, or binary given as base64). The "
                   "file is replaced atomically: readers see the old or the new content, never "
                   "a partial one.")
    parameters = {
        "type": "object",
        "properties": {
            "path": _PATH,
            "content": {"type": "string", "description": "the text, or base64 data"},
            "encoding": _ENCODING,
            "overwrite": {"type": "boolean", "default": True,
                          "description": "replace an existing file (else fail if it exists)"},
            "make_parents": {"type": "boolean", "default": True,
                             "description": "create missing parent directories"},
        },
        "required": ["path", "content"],
        "additionalProperties": False,
    }
    idempotent = True
    side_effects = ("filesystem",)
    egress = {"path": "write"}

    def call(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Returns ``{"path", "bytes_written", "location"}`` (location: the absolute host path,
        for people; models should keep using ``path``).

        Raises:
            QuotaExceededError: over the per-file or total quota (nothing is written).
            ToolError: exists and ``overwrite`` is false, is a directory, or the OS refused.
        """
        path = arguments["path"]
        data = decode_content(arguments["content"], arguments.get("encoding", "utf-8"),
                              path=path)
        written = self.root.write_bytes(path, data,
                                        overwrite=arguments.get("overwrite", True),
                                        make_parents=arguments.get("make_parents", True))
        return {"path": path, "bytes_written": written,
                "location": str(self.root.location(path))}


class AppendTool(FilesystemTool):
    """``filesystem.append``: add content at the end of a file (created when missing)."""

    name = "filesystem.append"
    description = ("Append text (or base64 binary data) to the end of a file inside the "
                   "workspace, creating it when missing.")
    parameters = {
        "type": "object",
        "properties": {
            "path": _PATH,
            "content": {"type": "string", "description": "the text, or base64 data"},
            "encoding": _ENCODING,
            "make_parents": {"type": "boolean", "default": True,
                             "description": "create missing parent directories"},
        },
        "required": ["path", "content"],
        "additionalProperties": False,
    }
    idempotent = False
    side_effects = ("filesystem",)
    egress = {"path": "write"}

    def call(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Returns ``{"path", "bytes_appended", "size", "location"}`` (size: the new size in
        bytes; location: the absolute host path).

        Raises:
            QuotaExceededError: over a quota (nothing is appended).
            ToolError: not a regular file, or the OS refused (the file is restored to its
                original size).
        """
        path = arguments["path"]
        data = decode_content(arguments["content"], arguments.get("encoding", "utf-8"),
                              path=path)
        size = self.root.append_bytes(path, data,
                                      make_parents=arguments.get("make_parents", True))
        return {"path": path, "bytes_appended": len(data), "size": size,
                "location": str(self.root.location(path))}


class ListTool(FilesystemTool):
    """``filesystem.list``: the entries of a directory."""

    name = "filesystem.list"
    description = ("List a directory inside the workspace: each entry's name, path, type "
                   "(file, directory, symlink, other), size in bytes and modification time.")
    parameters = {
        "type": "object",
        "properties": {
            "path": {**_PATH, "default": "."},
            "limit": {"type": "integer", "minimum": 1, "maximum": 100_000, "default": 1000,
                      "description": "most entries to return"},
        },
        "additionalProperties": False,
    }
    idempotent = True
    side_effects = ()
    egress = {"path": "read"}

    def call(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Returns ``{"path", "entries": [{"name", "path", "type", "size", "modified"}],
        "truncated"}`` (size in bytes, modified in UNIX seconds), sorted by name.

        Raises:
            ToolError: missing or not a directory.
        """
        path = arguments.get("path", ".")
        entries, truncated = self.root.list_dir(path, limit=arguments.get("limit", 1000))
        return {"path": path, "entries": [e.to_dict() for e in entries],
                "truncated": truncated}


def _has_magic(part: str) -> bool:
    return any(c in part for c in "*?[")


def glob_match(parts: Sequence[str], pattern: Sequence[str], *,
               include_hidden: bool = False) -> bool:
    """True when path components ``parts`` match glob components ``pattern``.

    ``**`` matches any number (zero included) of components; other components use
    :func:`fnmatch.fnmatchcase` (``*``, ``?``, ``[abc]``), case-sensitive. A component starting
    with ``.`` is matched by a wildcard only when ``include_hidden`` is true (as in a shell).
    """
    memo: dict[tuple[int, int], bool] = {}

    def hidden_ok(name: str, pat: str) -> bool:
        return include_hidden or not name.startswith(".") or pat.startswith(".")

    def match(i: int, j: int) -> bool:
        key = (i, j)
        if key in memo:
            return memo[key]
        if j == len(pattern):
            result = i == len(parts)
        elif pattern[j] == "**":
            result = match(i, j + 1) or (
                i < len(parts) and hidden_ok(parts[i], "*") and match(i + 1, j))
        else:
            result = (i < len(parts) and hidden_ok(parts[i], pattern[j])
                      and fnmatch.fnmatchcase(parts[i], pattern[j]) and match(i + 1, j + 1))
        memo[key] = result
        return result

    return match(0, 0)


class GlobTool(FilesystemTool):
    """``filesystem.glob``: paths matching a glob pattern (``**`` recurses)."""

    name = "filesystem.glob"
    description = ("Find files and directories inside the workspace whose path matches a glob "
                   "pattern such as '*.md', 'reports/**/*.html' or 'data/[0-9]*.csv' ('**' "
                   "matches any number of directories). Symlinks are not followed.")
    parameters = {
        "type": "object",
        "properties": {
            "pattern": {"type": "string", "minLength": 1,
                        "description": "glob relative to `path`"},
            "path": {**_PATH, "default": ".", "description": "directory to search from"},
            "type": {"enum": ["any", "file", "directory"], "default": "any",
                     "description": "keep only files or only directories"},
            "include_hidden": {"type": "boolean", "default": False,
                               "description": "let wildcards match names starting with '.'"},
            "limit": {"type": "integer", "minimum": 1, "maximum": 100_000, "default": 1000,
                      "description": "most matches to return"},
        },
        "required": ["pattern"],
        "additionalProperties": False,
    }
    idempotent = True
    side_effects = ()
    egress = {"path": "read"}

    def call(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Returns ``{"pattern", "path", "matches": [path relative to the root, ...],
        "truncated"}``, sorted depth first by name.

        Raises:
            ToolInputError: the pattern is absolute, contains ``..`` or a NUL byte.
            ToolError: ``path`` is not a directory; too many entries to walk.
        """
        pattern = arguments["pattern"]
        base = arguments.get("path", ".")
        kind = arguments.get("type", "any")
        limit = arguments.get("limit", 1000)
        include_hidden = arguments.get("include_hidden", False)
        if "\x00" in pattern:
            raise ToolInputError(f"glob pattern {pattern!r} contains a NUL byte")
        normalized = pattern.replace("\\", "/")
        if normalized.startswith("/"):
            raise ToolInputError(f"glob pattern {pattern!r} must be relative to `path`")
        pat = [p for p in normalized.split("/") if p not in ("", ".")]
        if ".." in pat:
            raise ToolInputError(f"glob pattern {pattern!r} must not contain '..'")
        if not pat:
            raise ToolInputError(f"glob pattern {pattern!r} matches nothing")
        # walk only below the literal leading directories of the pattern
        literal: list[str] = []
        while len(pat) > 1 and not _has_magic(pat[0]) and pat[0] != "**":
            literal.append(pat.pop(0))
        start_parts = [*self.root.parts(base), *literal]
        start = "/".join(start_parts) or "."
        info = self.root.stat(start)
        if info is None or info.type != "directory":
            return {"pattern": pattern, "path": base, "matches": [], "truncated": False}
        start_rel = self.root.resolve(start)
        prefix = [] if start_rel == "." else start_rel.split("/")
        matches: list[str] = []
        truncated = False
        for entry in self.root.walk(start):
            rel = entry.path.split("/")[len(prefix):]
            if kind == "file" and entry.type != "file":
                continue
            if kind == "directory" and entry.type != "directory":
                continue
            if glob_match(rel, pat, include_hidden=include_hidden):
                if len(matches) >= limit:
                    truncated = True
                    break
                matches.append(entry.path)
        return {"pattern": pattern, "path": base, "matches": matches, "truncated": truncated}


class ExistsTool(FilesystemTool):
    """``filesystem.exists``: whether a path exists, and what it is."""

    name = "filesystem.exists"
    description = ("Check whether a path exists inside the workspace; returns its type "
                   "(file, directory, other) and size when it does.")
    parameters = {
        "type": "object",
        "properties": {"path": _PATH},
        "required": ["path"],
        "additionalProperties": False,
    }
    idempotent = True
    side_effects = ()
    egress = {"path": "read"}

    def call(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Returns ``{"path", "exists", "type", "size"}`` (type and size None when missing).

        Raises:
            ToolInputError: the path (or a symlink on it) leaves the root.
        """
        path = arguments["path"]
        info = self.root.stat(path)
        if info is None:
            return {"path": path, "exists": False, "type": None, "size": None}
        return {"path": path, "exists": True, "type": info.type, "size": info.size}


class MkdirTool(FilesystemTool):
    """``filesystem.mkdir``: create a directory."""

    name = "filesystem.mkdir"
    description = "Create a directory inside the workspace (with its parents by default)."
    parameters = {
        "type": "object",
        "properties": {
            "path": _PATH,
            "parents": {"type": "boolean", "default": True,
                        "description": "create missing parent directories"},
            "exist_ok": {"type": "boolean", "default": True,
                         "description": "an existing directory is not an error"},
        },
        "required": ["path"],
        "additionalProperties": False,
    }
    idempotent = True
    side_effects = ("filesystem",)
    egress = {"path": "write"}

    def call(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Returns ``{"path", "created"}`` (False when it already existed).

        Raises:
            ToolError: exists as a file; exists and ``exist_ok`` is false; parent missing and
                ``parents`` is false.
        """
        path = arguments["path"]
        created = self.root.mkdir(path, parents=arguments.get("parents", True),
                                  exist_ok=arguments.get("exist_ok", True))
        return {"path": path, "created": created}


_TWO_PATHS = {
    "source": {**_PATH, "description": "the path to copy or move"},
    "destination": {**_PATH, "description": "the new path"},
    "overwrite": {"type": "boolean", "default": False,
                  "description": "replace an existing destination"},
    "make_parents": {"type": "boolean", "default": True,
                     "description": "create missing parent directories of the destination"},
}


class CopyTool(FilesystemTool):
    """``filesystem.copy``: copy a file or a directory tree."""

    name = "filesystem.copy"
    description = ("Copy a file or a whole directory inside the workspace. The copy appears "
                   "complete or not at all.")
    parameters = {
        "type": "object",
        "properties": dict(_TWO_PATHS),
        "required": ["source", "destination"],
        "additionalProperties": False,
    }
    idempotent = True
    side_effects = ("filesystem",)
    egress = {"source": "read", "destination": "write"}

    def call(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Returns ``{"source", "destination", "bytes_copied"}``.

        Raises:
            QuotaExceededError: the copy would exceed a quota (nothing is left behind).
            ToolError: source missing, destination exists without ``overwrite``, a directory
                into itself, or a symlink/special file inside a copied directory.
        """
        copied = self.root.copy(arguments["source"], arguments["destination"],
                                overwrite=arguments.get("overwrite", False),
                                make_parents=arguments.get("make_parents", True))
        return {"source": arguments["source"], "destination": arguments["destination"],
                "bytes_copied": copied}


class MoveTool(FilesystemTool):
    """``filesystem.move``: move or rename a file or directory."""

    name = "filesystem.move"
    description = "Move or rename a file or directory inside the workspace."
    parameters = {
        "type": "object",
        "properties": dict(_TWO_PATHS),
        "required": ["source", "destination"],
        "additionalProperties": False,
    }
    idempotent = False
    side_effects = ("filesystem",)
    egress = {"source": "write", "destination": "write"}

    def call(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Returns ``{"source", "destination"}``.

        Raises:
            ToolError: source missing, destination exists without ``overwrite``, or a
                directory into itself.
        """
        self.root.move(arguments["source"], arguments["destination"],
                       overwrite=arguments.get("overwrite", False),
                       make_parents=arguments.get("make_parents", True))
        return {"source": arguments["source"], "destination": arguments["destination"]}


class DeleteTool(FilesystemTool):
    """``filesystem.delete``: delete a file, a symlink or a directory."""

    name = "filesystem.delete"
    description = ("Delete a file, a symlink (never its target) or a directory inside the "
                   "workspace; a non-empty directory needs recursive: true.")
    parameters = {
        "type": "object",
        "properties": {
            "path": _PATH,
            "recursive": {"type": "boolean", "default": False,
                          "description": "delete a directory with everything in it"},
            "missing_ok": {"type": "boolean", "default": False,
                           "description": "a missing path is not an error"},
        },
        "required": ["path"],
        "additionalProperties": False,
    }
    idempotent = True
    side_effects = ("filesystem",)
    egress = {"path": "write"}

    def call(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Returns ``{"path", "deleted"}`` (the number of entries removed).

        Raises:
            ToolInputError: the path is the root, or leaves it.
            ToolError: missing (unless ``missing_ok``), or a non-empty directory without
                ``recursive``.
        """
        path = arguments["path"]
        deleted = self.root.delete(path, recursive=arguments.get("recursive", False),
                                   missing_ok=arguments.get("missing_ok", False))
        return {"path": path, "deleted": deleted}


ALL_TOOLS: tuple[Callable[..., FilesystemTool], ...] = (
    ReadTool, WriteTool, AppendTool, ListTool, GlobTool, ExistsTool, MkdirTool, CopyTool,
    MoveTool, DeleteTool,
)
