"""``gleitzeit.files``: the files a Gleitzeit workflow names, listed (and read) at run time.

Batch workflows (``batch: {directory, pattern}``) and tasks with ``file_path`` are translated
to a step of this tool followed by the step that uses the files, so the list of files is built
when the run gets there (and checkpointed with the run: a resumed run processes the same
files), never when the workflow is loaded or validated.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import flowyard

__all__ = ["FilesTool"]


class FilesTool(flowyard.BaseTool):
    """List files of a directory matching a glob pattern, or take a list of paths, and
    optionally read them as UTF-8 text.

    Paths are resolved against ``root`` (the ``[gleitzeit] root`` key, default the working
    directory, as Gleitzeit's own loader does) and must stay inside it after symbolic links are
    resolved.

    Args:
        root: the directory relative paths are resolved against (None: the working directory
            at call time).
        max_file_bytes: largest file read, bytes.
    """

    name = "gleitzeit.files"
    description = ("List the files of a directory that match a glob pattern (or the given "
                   "paths), sorted by name, optionally with their text.")
    parameters = {
        "type": "object",
        "properties": {
            "directory": {"type": "string", "description": "directory to list"},
            "pattern": {"type": "string", "description": "glob pattern (default '*')"},
            "paths": {"type": "array", "items": {"type": "string"},
                      "description": "files to take instead of listing a directory"},
            "read": {"type": "boolean", "description": "include each file's text"},
        },
        "additionalProperties": False,
    }
    idempotent = True
    side_effects = ("filesystem",)

    def __init__(self, root: str | None = None, max_file_bytes: int = 1024 * 1024) -> None:
        self.root = root
        self.max_file_bytes = max_file_bytes

    def _base(self) -> Path:
        return Path(self.root or os.getcwd()).resolve()

    def _inside(self, base: Path, given: str) -> Path:
        resolved = (base / given).resolve()
        if resolved != base and base not in resolved.parents:
            raise flowyard.ToolInputError(
                f"{self.name}: {given!r} is outside the root directory {str(base)!r} "
                "([gleitzeit] root)", tool=self.name)
        return resolved

    async def run(self, arguments: dict[str, Any], context: Any) -> list[dict[str, Any]]:
        """List (and read) the files.

        Args:
            arguments: ``directory`` and ``pattern``, or ``paths``; ``read``.
            context: the tool context (unused).

        Returns:
            ``[{"path", "name", "absolute"[, "content"]}]``: ``path`` as Gleitzeit names it
            (the directory joined with the file name, or the path as given), sorted by name.

        Raises:
            ToolInputError: both or neither of ``directory`` and ``paths``; a path outside the
                root; a missing directory or file.
            ToolError: a file too large or not UTF-8 text.
        """
        directory = arguments.get("directory")
        paths = arguments.get("paths")
        if (directory is None) == (paths is None):
            raise flowyard.ToolInputError(f"{self.name}: give 'directory' or 'paths'",
                                          tool=self.name)
        base = self._base()
        entries: list[tuple[str, Path]] = []
        if directory is not None:
            folder = self._inside(base, directory)
            if not folder.is_dir():
                raise flowyard.ToolInputError(
                    f"{self.name}: directory not found: {directory!r} (in {str(base)!r})",
                    tool=self.name)
            pattern = arguments.get("pattern") or "*"
            for name in sorted(glob.glob(pattern, root_dir=folder)):
                full = self._inside(base, str(Path(directory) / name))
                if full.is_file():
                    entries.append((str(Path(directory) / name), full))
        else:
            for given in paths or []:
                full = self._inside(base, given)
                if not full.is_file():
                    raise flowyard.ToolInputError(
                        f"{self.name}: file not found: {given!r} (in {str(base)!r})",
                        tool=self.name)
                entries.append((given, full))
        out: list[dict[str, Any]] = []
        for given, full in entries:
            item: dict[str, Any] = {"path": given, "name": full.name, "absolute": str(full)}
            if arguments.get("read"):
                size = full.stat().st_size
                if size > self.max_file_bytes:
                    raise flowyard.ToolError(
                        f"{self.name}: {given!r} has {size} bytes, more than [gleitzeit] "
                        f"max_file_bytes = {self.max_file_bytes}", tool=self.name)
                try:
                    item["content"] = full.read_text(encoding="utf-8")
                except UnicodeDecodeError as exc:
                    raise flowyard.ToolError(f"{self.name}: {given!r} is not UTF-8 text "
                                             f"({exc.reason})", tool=self.name) from None
            out.append(item)
        return out
