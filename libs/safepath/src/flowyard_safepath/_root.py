r"""File access confined to a root directory, safe against traversal and symlink races.

:class:`SafeRoot` is the one implementation of "a path a user (or a model) gave, inside a
directory we chose" used by the tool plugins (``flowyard-filesystem``, ``flowyard-report``).
It is Linux/POSIX only (it needs ``dir_fd`` support, ``O_NOFOLLOW`` and ``O_DIRECTORY``).

How a path is checked:

1. The text is validated: it must be a non-empty ``str`` without NUL bytes, each component at
   most ``max_name_bytes`` (255) bytes of UTF-8 and the whole at most ``max_path_bytes``
   (4096). A backslash is treated as a separator (``..\x`` is ``../x``). Percent-encoded
   forms (``%2e%2e%2f``) are **not** decoded: they are ordinary characters of a file name,
   so they can never climb out of the root. ``~`` is not expanded.
2. An absolute path is accepted only when it lies inside the root (compared with
   :meth:`pathlib.PurePath.is_relative_to` against the configured and the resolved root,
   never by string prefix: root ``/tmp/r`` refuses ``/tmp/r_evil/x``); it is then used
   relative to the root.
3. The path is walked component by component from a file descriptor of the root: each
   directory is opened with ``os.open(name, O_DIRECTORY | O_NOFOLLOW, dir_fd=parent)``, and
   the final file with ``O_NOFOLLOW`` too. A symbolic link is never followed by the kernel:
   the walker reads it (``readlink`` relative to its directory fd) and continues with the
   link's target under the same rules, so a link that stays inside the root works and one
   that leaves it is refused. Because every step opens relative to a descriptor already
   held, a directory swapped for a symlink between a check and an open cannot redirect the
   access outside the root: the ``O_NOFOLLOW`` open fails and the swapped-in link is then
   judged like any other. ``..`` goes back to the directory descriptor the walk came
   through and can never go above the root.
4. Writes go to a temporary file in the target's directory (``O_CREAT | O_EXCL |
   O_NOFOLLOW``) that is renamed over the target only when complete; on any failure the
   temporary file is removed. Appends truncate back to the original size on failure.
   Sizes are checked against a per-file quota and a quota on the total bytes of regular files
   under the root; the number of files (every entry that is not a directory) against a
   file-count quota.
5. The total and file-count quotas hold across processes: every write, append and copy that
   a total or file-count quota applies to takes an exclusive advisory lock
   (``fcntl.flock``) on the root directory's own descriptor, and holds it while it recounts
   the usage (a descriptor-based walk of the root), writes the temporary file and renames it
   into place. Two processes (or two :class:`SafeRoot` objects in one process) writing to
   the same root are therefore serialized and cannot both pass the check. No lock file is
   created, so nothing extra appears in the root. The lock is advisory: it binds every
   writer that goes through this class, not other programs writing into the directory.

Known limits: a hard link to an outside file, created by someone with access to both, is
indistinguishable from a regular file; the root directory itself is trusted.

Errors: :class:`UnsafePathError` (a :class:`~flowyard.errors.ToolInputError`) for refused
paths, :class:`QuotaExceededError` (a :class:`~flowyard.errors.ToolError`) for quotas, and
:class:`~flowyard.errors.ToolError` for every other failure; messages quote the path as the
caller gave it.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import os
import secrets
import stat as stat_mod
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import attrs
from flowyard import ConfigError, ToolError, ToolInputError

if TYPE_CHECKING:
    from flowyard import Config

__all__ = [
    "SafeRoot",
    "EntryInfo",
    "UnsafePathError",
    "QuotaExceededError",
    "PathNotFoundError",
    "workspace_root",
    "decode_content",
]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _O_CLOEXEC
_MAX_SYMLINKS = 40
_CHUNK = 1 << 20


class UnsafePathError(ToolInputError):
    """A path was refused: NUL byte, oversize name, or it would leave the root."""


class QuotaExceededError(ToolError):
    """A write would exceed the per-file size, the total size or the file-count quota."""


class PathNotFoundError(ToolError):
    """Nothing is at the path: a parent directory is missing or is not a directory."""


@attrs.frozen
class EntryInfo:
    """What is at a path.

    Args:
        path: the path relative to the root, ``/``-separated (``"."`` for the root).
        name: the last component (``"."`` for the root).
        type: ``"file"``, ``"directory"``, ``"symlink"`` or ``"other"`` (FIFO, socket, device).
        size: bytes (0 for directories).
        modified: modification time, UNIX seconds.
    """

    path: str
    name: str
    type: str
    size: int
    modified: float

    def to_dict(self) -> dict[str, Any]:
        """Return the entry as a JSON-ready dict."""
        return attrs.asdict(self)


def _kind(mode: int) -> str:
    if stat_mod.S_ISREG(mode):
        return "file"
    if stat_mod.S_ISDIR(mode):
        return "directory"
    if stat_mod.S_ISLNK(mode):
        return "symlink"
    return "other"


def decode_content(content: str, encoding: str, *, path: str) -> bytes:
    """Turn tool-call ``content`` into bytes.

    Args:
        content: the text, or base64 when ``encoding`` is ``"base64"``.
        encoding: ``"utf-8"`` (any Python text codec name works) or ``"base64"``.
        path: the path as the caller gave it, for the error message.

    Raises:
        ToolInputError: invalid base64, an unknown codec, or text the codec cannot encode.
    """
    if encoding == "base64":
        try:
            return base64.b64decode(content.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError) as exc:
            raise ToolInputError(f"{path!r}: content is not valid base64: {exc}") from None
    try:
        return content.encode(encoding)
    except LookupError:
        raise ToolInputError(f"{path!r}: unknown text encoding {encoding!r}") from None
    except UnicodeEncodeError as exc:
        raise ToolInputError(f"{path!r}: content cannot be encoded as {encoding}: {exc}"
                             ) from None


def workspace_root(config: Config, section: str = "filesystem") -> Path:
    """Return the configured root directory of file tools (not created here).

    Looks up ``[<section>] root``, then ``[filesystem] root``, else ``<data_dir>/workspace``
    (never the current directory: a workflow must not be able to touch the project it was
    started from unless configured so). ``~`` is expanded; a relative root is taken relative
    to the current directory at the time of the call.

    Raises:
        ConfigError: ``root`` is not a non-empty string.
    """
    for name in (section, "filesystem"):
        value = config.section(name).get("root")
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"[{name}] root must be a non-empty path string, got {value!r}")
        return Path(value).expanduser().absolute()
    return config.data_dir / "workspace"


class _Located:
    """A resolved location: a held directory fd plus the final name (None: the dir itself)."""

    __slots__ = ("_fds", "name", "parts")

    def __init__(self, fds: list[int], name: str | None, parts: list[str]) -> None:
        self._fds = fds
        self.name = name
        self.parts = parts  # components from the root to the final name, after links

    @property
    def dir_fd(self) -> int:
        return self._fds[-1]

    @property
    def rel(self) -> str:
        return "/".join(self.parts) or "."

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.pop())

    def __enter__(self) -> _Located:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SafeRoot:
    """Blocking file operations confined to ``root`` (call them from a worker thread).

    Args:
        root: the directory; created (with parents) on first use when ``create`` is true.
        create: create the root when missing (else a missing root is a :class:`ToolError`).
        max_file_bytes: per-file size quota in bytes (None: unlimited).
        max_total_bytes: quota on the total bytes of regular files under the root
            (None: unlimited). Checked before each write and enforced while writing, under
            the cross-process lock of the root.
        max_files: quota on the number of files under the root, counting every entry that is
            not a directory (regular files, symlinks, special files; None: unlimited).
            Directories are not counted; their number is bounded by ``max_walk_entries``,
            beyond which every quota check fails.
        max_read_bytes: largest file :meth:`read_bytes` returns, in bytes (None: unlimited).
        max_name_bytes: longest path component, in bytes of UTF-8.
        max_path_bytes: longest path, in bytes of UTF-8.
        max_walk_entries: most entries a tree walk (glob, usage, directory copy) visits.
        fsync: flush written files to disk before renaming them into place.
        lock_timeout: seconds a write waits for the cross-process quota lock of the root
            before failing with a retriable :class:`~flowyard.errors.ToolError`.

    Raises:
        ValueError: a limit is not a positive integer, or ``lock_timeout`` is not a positive
            number.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        create: bool = True,
        max_file_bytes: int | None = None,
        max_total_bytes: int | None = None,
        max_read_bytes: int | None = None,
        max_name_bytes: int = 255,
        max_path_bytes: int = 4096,
        max_walk_entries: int = 200_000,
        fsync: bool = True,
        max_files: int | None = None,
        lock_timeout: float = 60.0,
    ) -> None:
        for label, value in (("max_file_bytes", max_file_bytes),
                             ("max_total_bytes", max_total_bytes),
                             ("max_files", max_files),
                             ("max_read_bytes", max_read_bytes),
                             ("max_name_bytes", max_name_bytes),
                             ("max_path_bytes", max_path_bytes),
                             ("max_walk_entries", max_walk_entries)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value <= 0):
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float)) \
                or not lock_timeout > 0:
            raise ValueError(f"lock_timeout must be a positive number, got {lock_timeout!r}")
        self.root = Path(os.path.abspath(os.fspath(root)))
        self.create = create
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes
        self.max_files = max_files
        self.lock_timeout = float(lock_timeout)
        self.max_read_bytes = max_read_bytes
        self.max_name_bytes = max_name_bytes
        self.max_path_bytes = max_path_bytes
        self.max_walk_entries = max_walk_entries
        self.fsync = fsync
        self._real_root: Path | None = None
        self._lock = threading.RLock()
        self._flock_fd: int | None = None  # the root fd holding the quota lock, when held
        self._flock_depth = 0

    def __repr__(self) -> str:
        return f"SafeRoot({str(self.root)!r})"

    # ------------------------------------------------------------------ path checking

    def parts(self, path: str) -> list[str]:
        """Validate ``path`` and return its components relative to the root.

        ``.`` and empty components are dropped; ``..`` is kept (the walk resolves it and
        refuses to go above the root).

        Raises:
            UnsafePathError: not a string, empty, a NUL byte, an oversize name or path, or an
                absolute path outside the root.
        """
        if not isinstance(path, str):
            raise UnsafePathError(f"path must be a string, got {type(path).__name__}")
        if path == "":
            raise UnsafePathError("path is empty (use '.' for the root directory)")
        if "\x00" in path:
            raise UnsafePathError(f"{path!r}: path contains a NUL byte")
        try:
            encoded = path.encode("utf-8")
        except UnicodeEncodeError:
            raise UnsafePathError(f"{path!r}: path is not valid Unicode text") from None
        if len(encoded) > self.max_path_bytes:
            raise UnsafePathError(
                f"{path[:60]!r}...: path is {len(encoded)} bytes long; the limit is "
                f"{self.max_path_bytes}")
        text = path.replace("\\", "/")
        if text.startswith("/"):
            pure = PurePosixPath(text)
            for base in self._root_forms():
                if pure.is_relative_to(base):
                    text = str(pure.relative_to(base))
                    break
            else:
                raise UnsafePathError(
                    f"{path!r}: absolute path outside the filesystem root {str(self.root)!r}; "
                    "use a path relative to the root")
        parts = [p for p in text.split("/") if p not in ("", ".")]
        for part in parts:
            if len(part.encode("utf-8")) > self.max_name_bytes:
                raise UnsafePathError(
                    f"{path!r}: the name {part[:40]!r}... is {len(part.encode('utf-8'))} bytes "
                    f"long; the limit is {self.max_name_bytes}")
        return parts

    def _root_forms(self) -> list[PurePosixPath]:
        forms = [PurePosixPath(self.root)]
        real = self._resolved_root()
        if real is not None and PurePosixPath(real) != forms[0]:
            forms.append(PurePosixPath(real))
        return forms

    def _resolved_root(self) -> Path | None:
        if self._real_root is None and self.root.exists():
            self._real_root = self.root.resolve()
        return self._real_root

    def _open_root(self) -> int:
        try:
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
        except FileNotFoundError:
            if not self.create:
                raise ToolError(f"the filesystem root {str(self.root)!r} does not exist"
                                ) from None
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ToolError(f"cannot create the filesystem root {str(self.root)!r}: "
                                f"{exc.strerror}") from None
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
        except OSError as exc:
            raise ToolError(f"cannot open the filesystem root {str(self.root)!r}: "
                            f"{exc.strerror}") from None

    @staticmethod
    def _readlink(dir_fd: int, name: str) -> str | None:
        """The target of ``name`` when it is a symlink, else None (missing or not a link)."""
        try:
            return os.readlink(name, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT, errno.ENOTDIR):
                return None
            raise

    def _locate(self, path: str, *, follow_final: bool = True, create_dirs: bool = False,
                final_is_dir: bool = False) -> _Located:
        """Walk ``path`` from the root without letting the kernel follow any symlink.

        Args:
            path: the path as the caller gave it, relative to the root or absolute inside it
                (validated by :meth:`parts`).
            follow_final: follow a symlink in the last component (inside the root only).
            create_dirs: create missing intermediate directories.
            final_is_dir: open the last component as a directory too (the result's ``name``
                is then None and ``dir_fd`` is that directory).

        Raises:
            UnsafePathError: the path or a symlink on it leaves the root; too many links.
            ToolError: a component is missing (and not created) or is not a directory.
        """
        parts = self.parts(path)
        fds = [self._open_root()]
        names: list[str] = []
        pending = list(reversed(parts))
        links = 0

        def follow(name: str, target: str) -> None:
            nonlocal links
            links += 1
            if links > _MAX_SYMLINKS:
                raise UnsafePathError(f"{path!r}: too many levels of symbolic links")
            where = "/".join([*names, name])
            if target.startswith("/"):
                pure = PurePosixPath(target)
                for base in self._root_forms():
                    if pure.is_relative_to(base):
                        rel = str(pure.relative_to(base))
                        break
                else:
                    raise UnsafePathError(
                        f"{path!r}: the symbolic link {where!r} points outside the filesystem "
                        "root")
                while len(fds) > 1:
                    os.close(fds.pop())
                names.clear()
                target = rel
            pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))

        try:
            while pending:
                name = pending.pop()
                if name == "..":
                    if len(fds) == 1:
                        raise UnsafePathError(f"{path!r}: path leaves the filesystem root")
                    os.close(fds.pop())
                    names.pop()
                    continue
                is_last = not pending
                if is_last and not final_is_dir:
                    if follow_final:
                        target = self._readlink(fds[-1], name)
                        if target is not None:
                            follow(name, target)
                            continue
                    return _Located(fds, name, [*names, name])
                try:
                    fd = os.open(name, _DIR_FLAGS, dir_fd=fds[-1])
                except FileNotFoundError:
                    if not create_dirs or is_last:
                        raise PathNotFoundError(
                            f"{path!r}: {'/'.join([*names, name])!r} does not exist") from None
                    try:
                        os.mkdir(name, 0o777, dir_fd=fds[-1])
                    except FileExistsError:
                        pass
                    pending.append(name)
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                        raise
                    target = self._readlink(fds[-1], name)
                    if target is not None:
                        follow(name, target)
                        continue
                    if exc.errno == errno.ENOTDIR:
                        raise PathNotFoundError(f"{path!r}: {'/'.join([*names, name])!r} is "
                                                "not a directory") from None
                    raise ToolError(f"{path!r}: {'/'.join([*names, name])!r} changed while it "
                                    "was being opened; try again", retriable=True) from None
                fds.append(fd)
                names.append(name)
            return _Located(fds, None, names)
        except BaseException as exc:
            for fd in fds:
                os.close(fd)
            if isinstance(exc, OSError):  # EACCES, ENAMETOOLONG, EROFS, ...
                raise self._oserror(path, exc, "open") from None
            raise

    def _oserror(self, path: str, exc: OSError, action: str) -> ToolError:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.ELOOP:
            return UnsafePathError(f"{path!r}: is a symbolic link that changed during the "
                                   f"operation; refusing to {action} it")
        retriable = exc.errno in (errno.EAGAIN, errno.EBUSY, errno.EINTR)
        return ToolError(f"cannot {action} {path!r}: {reason}", retriable=retriable)

    # ------------------------------------------------------------------ queries

    def resolve(self, path: str) -> str:
        """Return ``path`` relative to the root after following in-root symlinks.

        Raises:
            UnsafePathError, ToolError: as :meth:`stat`.
        """
        with self._locate(path, follow_final=True) as loc:
            return loc.rel

    def location(self, path: str) -> Path:
        """Return the absolute host path of ``path`` (after in-root symlinks), for showing
        people where a file is; never use it to open the file (use this class).

        Raises:
            UnsafePathError, ToolError: as :meth:`resolve`.
        """
        rel = self.resolve(path)
        return self.root if rel == "." else self.root / rel

    def stat(self, path: str, *, follow_symlinks: bool = True) -> EntryInfo | None:
        """Describe ``path``; None when nothing is there.

        Args:
            path: the entry to describe, relative to the root or absolute inside it (``"."``
                is the root itself).
            follow_symlinks: follow a final symlink (inside the root only); when false a
                symlink is reported as ``type="symlink"``.

        Raises:
            UnsafePathError: the path, or a symlink on it, leaves the root.
            ToolError: a parent component is not a directory, or the OS refuses.
        """
        try:
            loc = self._locate(path, follow_final=follow_symlinks)
        except PathNotFoundError:
            return None
        with loc:
            try:
                if loc.name is None:
                    st = os.fstat(loc.dir_fd)
                else:
                    st = os.stat(loc.name, dir_fd=loc.dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise self._oserror(path, exc, "inspect") from None
            kind = _kind(st.st_mode)
            return EntryInfo(path=loc.rel, name=loc.parts[-1] if loc.parts else ".", type=kind,
                             size=st.st_size if kind != "directory" else 0,
                             modified=st.st_mtime)

    def exists(self, path: str) -> bool:
        """True when something (inside the root) is at ``path``."""
        return self.stat(path) is not None

    def list_dir(self, path: str = ".", *, limit: int | None = None
                 ) -> tuple[list[EntryInfo], bool]:
        """List a directory, sorted by name; symlinks are reported, not followed.

        Args:
            path: the directory, relative to the root or absolute inside it (default
                ``"."``, the root itself).
            limit: most entries to return.

        Returns:
            ``(entries, truncated)``.

        Raises:
            ToolError: ``path`` is missing or not a directory.
        """
        with self._locate(path, final_is_dir=True) as loc:
            try:
                with os.scandir(loc.dir_fd) as it:
                    raw = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                raise self._oserror(path, exc, "list") from None
            entries: list[EntryInfo] = []
            truncated = False
            for entry in raw:
                if limit is not None and len(entries) >= limit:
                    truncated = True
                    break
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed while listing: it is not there any more
                kind = _kind(st.st_mode)
                rel = "/".join([*loc.parts, entry.name])
                entries.append(EntryInfo(path=rel, name=entry.name, type=kind,
                                         size=st.st_size if kind != "directory" else 0,
                                         modified=st.st_mtime))
            return entries, truncated

    def _iter_tree(self, dir_fd: int, prefix: list[str], path: str,
                   counter: list[int]) -> Iterator[tuple[list[str], os.stat_result, int]]:
        """Yield ``(components, lstat, parent_fd)`` below ``dir_fd``, depth first, sorted,
        never following symlinks.
        """
        with os.scandir(dir_fd) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            counter[0] += 1
            if counter[0] > self.max_walk_entries:
                raise ToolError(f"{path!r}: more than {self.max_walk_entries} entries; "
                                "narrow the path or pattern")
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            comps = [*prefix, entry.name]
            yield comps, st, dir_fd
            if stat_mod.S_ISDIR(st.st_mode):
                try:
                    sub = os.open(entry.name, _DIR_FLAGS, dir_fd=dir_fd)
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                        continue  # replaced while walking; a link is never followed
                    raise
                try:
                    yield from self._iter_tree(sub, comps, path, counter)
                finally:
                    os.close(sub)

    def walk(self, path: str = ".") -> Iterator[EntryInfo]:
        """Yield every entry below directory ``path`` (depth first, sorted by name);
        symlinks are reported and never followed. Paths are relative to the root.

        Raises:
            ToolError: ``path`` is not a directory, or more than ``max_walk_entries`` entries.
        """
        with self._locate(path, final_is_dir=True) as loc:
            for comps, st, _ in self._iter_tree(loc.dir_fd, loc.parts, path, [0]):
                kind = _kind(st.st_mode)
                yield EntryInfo(path="/".join(comps), name=comps[-1], type=kind,
                                size=st.st_size if kind != "directory" else 0,
                                modified=st.st_mtime)

    def _tally(self, *, sizes: bool = True) -> tuple[int, int]:
        """``(bytes of regular files, number of non-directory entries)`` under the root,
        never following symlinks; with ``sizes`` false the bytes are not summed (0) and no
        file is stat'ed (the directory entry's type is enough to count it).

        Raises:
            ToolError: more than ``max_walk_entries`` entries, or the root cannot be opened.
        """
        fd = self._open_root()
        totals = [0, 0, 0]  # bytes, files, entries visited
        try:
            self._tally_dir(fd, sizes, totals)
        finally:
            os.close(fd)
        return totals[0], totals[1]

    def _tally_dir(self, dir_fd: int, sizes: bool, totals: list[int]) -> None:
        with os.scandir(dir_fd) as it:
            entries = list(it)
        for entry in entries:
            totals[2] += 1
            if totals[2] > self.max_walk_entries:
                raise ToolError(f"'.': more than {self.max_walk_entries} entries; "
                                "narrow the path or pattern")
            try:
                if entry.is_dir(follow_symlinks=False):
                    try:
                        sub = os.open(entry.name, _DIR_FLAGS, dir_fd=dir_fd)
                    except OSError as exc:
                        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                            continue  # replaced while walking; a link is never followed
                        raise
                    try:
                        self._tally_dir(sub, sizes, totals)
                    finally:
                        os.close(sub)
                    continue
                if sizes and entry.is_file(follow_symlinks=False):
                    totals[0] += entry.stat(follow_symlinks=False).st_size
                totals[1] += 1
            except FileNotFoundError:
                continue  # removed while counting: it is not there any more

    def usage(self) -> int:
        """Total bytes of regular files under the root (symlinks not followed).

        Raises:
            ToolError: more than ``max_walk_entries`` entries, or the root cannot be opened.
        """
        return self._tally()[0]

    def file_count(self) -> int:
        """Number of files under the root as the ``max_files`` quota counts them: every entry
        that is not a directory (regular files, symlinks, special files).

        Raises:
            ToolError: more than ``max_walk_entries`` entries, or the root cannot be opened.
        """
        return self._tally()[1]

    # ------------------------------------------------------------------ the quota lock

    @property
    def _shared_quota(self) -> bool:
        return self.max_total_bytes is not None or self.max_files is not None

    @contextmanager
    def _quota_lock(self) -> Iterator[None]:
        """Hold the thread lock and, when a total or file-count quota is set, an exclusive
        ``flock`` on the root directory (re-entrant within this object).

        Raises:
            ToolError: retriable, when another writer holds the lock longer than
                ``lock_timeout`` seconds; or the root cannot be opened.
        """
        with self._lock:
            if not self._shared_quota:
                yield
                return
            if self._flock_depth == 0:
                fd = self._open_root()
                deadline = time.monotonic() + self.lock_timeout
                try:
                    while True:
                        try:
                            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                            break
                        except BlockingIOError:
                            if time.monotonic() >= deadline:
                                raise ToolError(
                                    f"the filesystem root {str(self.root)!r} is busy: another "
                                    f"writer held its quota lock for more than "
                                    f"{self.lock_timeout:g} seconds; try again",
                                    retriable=True) from None
                            time.sleep(0.005)
                except BaseException:
                    os.close(fd)
                    raise
                self._flock_fd = fd
            self._flock_depth += 1
            try:
                yield
            finally:
                self._flock_depth -= 1
                if self._flock_depth == 0 and self._flock_fd is not None:
                    fd, self._flock_fd = self._flock_fd, None
                    os.close(fd)  # closing the only descriptor releases the flock

    # ------------------------------------------------------------------ reading

    def open_read(self, path: str) -> int:
        """Open the regular file at ``path`` for reading and return its descriptor (the caller
        closes it).

        Raises:
            UnsafePathError: the path or a symlink on it leaves the root.
            ToolError: missing, a directory or another non-regular file, or the OS refuses.
        """
        with self._locate(path) as loc:
            if loc.name is None:
                raise ToolError(f"{path!r} is a directory, not a file")
            try:
                fd = os.open(loc.name, _READ_FLAGS, dir_fd=loc.dir_fd)
            except FileNotFoundError:
                raise PathNotFoundError(f"{path!r} does not exist") from None
            except IsADirectoryError:
                raise ToolError(f"{path!r} is a directory, not a file") from None
            except OSError as exc:
                raise self._oserror(path, exc, "read") from None
        try:
            st = os.fstat(fd)
            if not stat_mod.S_ISREG(st.st_mode):
                what = "a directory" if stat_mod.S_ISDIR(st.st_mode) else "not a regular file"
                raise ToolError(f"{path!r} is {what}" + ("" if "directory" not in what
                                                           else ", not a file"))
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def read_bytes(self, path: str, *, max_bytes: int | None = None) -> bytes:
        """Return the content of the regular file at ``path``.

        Args:
            path: the file, relative to the root or absolute inside it; a final symlink is
                followed only while it stays inside the root.
            max_bytes: refuse files larger than this many bytes (default ``max_read_bytes``).

        Raises:
            UnsafePathError: the path or a symlink on it leaves the root.
            ToolError: missing, not a regular file, larger than the limit, or unreadable.
        """
        limit = max_bytes if max_bytes is not None else self.max_read_bytes
        fd = self.open_read(path)
        try:
            size = os.fstat(fd).st_size
            if limit is not None and size > limit:
                raise ToolError(f"{path!r} is {size} bytes; the read limit is {limit} bytes")
            chunks: list[bytes] = []
            total = 0
            while True:
                chunk = os.read(fd, _CHUNK)
                if not chunk:
                    break
                total += len(chunk)
                if limit is not None and total > limit:
                    raise ToolError(f"{path!r} grew beyond the read limit of {limit} bytes "
                                    "while being read")
                chunks.append(chunk)
            return b"".join(chunks)
        except OSError as exc:
            raise self._oserror(path, exc, "read") from None
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ writing

    def _check_files(self, path: str, new_files: int, count: int | None = None) -> None:
        """Refuse ``new_files`` more files when they would exceed ``max_files`` (call it under
        :meth:`_quota_lock`); ``count`` is the current number of files when already known.

        Raises:
            QuotaExceededError: over the file-count quota.
        """
        if self.max_files is None or new_files <= 0:
            return
        if count is None:
            count = self._tally(sizes=False)[1]
        if count + new_files > self.max_files:
            raise QuotaExceededError(
                f"{path!r}: creating {new_files} more file(s) would bring the filesystem root "
                f"to {count + new_files} files; the file-count quota (max_files) is "
                f"{self.max_files} files ({count} used)")

    def _check_quota(self, path: str, new_size: int, old_size: int, new_files: int = 0
                     ) -> int | None:
        """Refuse a file of ``new_size`` bytes replacing ``old_size`` bytes and adding
        ``new_files`` files; call it under :meth:`_quota_lock`. The file count is checked
        first with a walk that stats nothing, so a refused file costs no ``stat`` per file.

        Returns:
            The bytes in use under the root when they were summed for the check, else None.

        Raises:
            QuotaExceededError: over the per-file, the file-count or the total quota.
        """
        if self.max_file_bytes is not None and new_size > self.max_file_bytes:
            raise QuotaExceededError(
                f"{path!r}: {new_size} bytes exceeds the per-file quota of "
                f"{self.max_file_bytes} bytes")
        self._check_files(path, new_files)
        used = None
        if self.max_total_bytes is not None and new_size > old_size:
            used = self.usage()
            if used - old_size + new_size > self.max_total_bytes:
                raise QuotaExceededError(
                    f"{path!r}: writing {new_size} bytes would bring the filesystem root to "
                    f"{used - old_size + new_size} bytes; the total quota is "
                    f"{self.max_total_bytes} bytes ({used} used)")
        return used

    def _existing(self, loc: _Located, path: str) -> os.stat_result | None:
        assert loc.name is not None
        try:
            st = os.stat(loc.name, dir_fd=loc.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._oserror(path, exc, "inspect") from None
        if stat_mod.S_ISDIR(st.st_mode):
            raise ToolError(f"{path!r} is a directory; cannot write a file there")
        return st

    def _write_temp(self, loc: _Located, path: str, chunks: Iterable[bytes], *,
                    mode: int, budget: int | None, quota: str | None = None
                    ) -> tuple[str, int]:
        """Write ``chunks`` to a new temporary file next to the target; return its name and
        size. The temporary file is removed on any failure.

        Args:
            loc: where the target is.
            path: the path as the caller gave it, for messages.
            chunks: the content.
            mode: permission bits of the new file.
            budget: most bytes the file may have (None: unlimited).
            quota: how the budget is named in the error (default "the size quota of
                <budget> bytes").

        Raises:
            QuotaExceededError: the content is larger than ``budget`` bytes.
            ToolError: the OS refuses.
        """
        assert loc.name is not None
        base = loc.name.encode("utf-8")[:100].decode("utf-8", "ignore")
        tmp = f".{base}.{secrets.token_hex(6)}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _O_CLOEXEC,
                         mode, dir_fd=loc.dir_fd)
        except OSError as exc:
            raise self._oserror(path, exc, "write") from None
        written = 0
        try:
            try:
                if mode != 0o666:
                    os.fchmod(fd, mode)  # keep the mode of the file being replaced
                for chunk in chunks:
                    written += len(chunk)
                    if budget is not None and written > budget:
                        raise QuotaExceededError(
                            f"{path!r}: content exceeds "
                            f"{quota or f'the size quota of {budget} bytes'}")
                    view = memoryview(chunk)
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException as exc:
            try:
                os.unlink(tmp, dir_fd=loc.dir_fd)
            except FileNotFoundError:
                pass
            if isinstance(exc, OSError):
                raise self._oserror(path, exc, "write") from None
            raise
        return tmp, written

    def _commit(self, loc: _Located, path: str, tmp: str, *, overwrite: bool) -> None:
        assert loc.name is not None
        try:
            if overwrite:
                os.replace(tmp, loc.name, src_dir_fd=loc.dir_fd, dst_dir_fd=loc.dir_fd)
            else:
                # link(2) refuses an existing target atomically, unlike rename(2)
                os.link(tmp, loc.name, src_dir_fd=loc.dir_fd, dst_dir_fd=loc.dir_fd,
                        follow_symlinks=False)
                os.unlink(tmp, dir_fd=loc.dir_fd)
        except BaseException as exc:
            try:
                os.unlink(tmp, dir_fd=loc.dir_fd)
            except FileNotFoundError:
                pass
            if isinstance(exc, FileExistsError):
                raise ToolError(f"{path!r} already exists (pass overwrite: true to replace it)"
                                ) from None
            if isinstance(exc, IsADirectoryError):
                raise ToolError(f"{path!r} is a directory; cannot write a file there") from None
            if isinstance(exc, OSError):
                raise self._oserror(path, exc, "write") from None
            raise

    def write_stream(self, path: str, chunks: Iterable[bytes], *, size_hint: int | None = None,
                     overwrite: bool = True, make_parents: bool = True) -> int:
        """Write ``chunks`` atomically to ``path`` (temporary file, then rename).

        Args:
            path: the file to create or replace, relative to the root or absolute inside it.
            chunks: the content as successive byte strings, consumed once in order; the
                quotas (when set) are checked as they arrive, and the write stops at the
                first chunk that exceeds them.
            size_hint: the expected size in bytes, checked against the quotas up front.
            overwrite: replace an existing file (else refuse).
            make_parents: create missing parent directories.

        Returns:
            Bytes written.

        Raises:
            UnsafePathError: the path or a symlink on it leaves the root.
            QuotaExceededError: the file or the root would exceed its quota (nothing written).
            ToolError: exists and ``overwrite`` is false, is a directory, or the OS refuses;
                no partial file is left behind.
        """
        with self._quota_lock(), self._locate(path, create_dirs=make_parents) as loc:
            if loc.name is None:
                raise ToolError(f"{path!r} is a directory; cannot write a file there")
            existing = self._existing(loc, path)
            if existing is not None and not overwrite:
                raise ToolError(f"{path!r} already exists (pass overwrite: true to replace it)")
            old_size = existing.st_size if existing is not None and \
                stat_mod.S_ISREG(existing.st_mode) else 0
            budget = self.max_file_bytes
            new_files = 1 if existing is None else 0
            used = None
            if size_hint is not None:
                used = self._check_quota(path, size_hint, old_size, new_files)
            else:
                self._check_files(path, new_files)
            quota = None
            if self.max_total_bytes is not None:
                if used is None:
                    used = self.usage()
                room = self.max_total_bytes - used + old_size
                if budget is None or room < budget:
                    budget = room
                    quota = (f"the room left by the total quota of {self.max_total_bytes} "
                             f"bytes ({room} bytes; {used} used)")
            mode = 0o666
            if existing is not None and stat_mod.S_ISREG(existing.st_mode):
                mode = stat_mod.S_IMODE(existing.st_mode)
            tmp, written = self._write_temp(loc, path, chunks, mode=mode, budget=budget,
                                            quota=quota)
            self._commit(loc, path, tmp, overwrite=overwrite)
            if self.fsync:
                os.fsync(loc.dir_fd)  # make the rename itself durable
            return written

    def write_bytes(self, path: str, data: bytes, *, overwrite: bool = True,
                    make_parents: bool = True) -> int:
        """Write ``data`` atomically to ``path`` via :meth:`write_stream`; return bytes written."""
        return self.write_stream(path, [data], size_hint=len(data), overwrite=overwrite,
                                 make_parents=make_parents)

    def append_bytes(self, path: str, data: bytes, *, make_parents: bool = True) -> int:
        """Append ``data`` to ``path`` (created when missing); return the new size in bytes.

        On a failed write the file is truncated back to its original size.

        Raises:
            UnsafePathError, QuotaExceededError, ToolError: as :meth:`write_stream`.
        """
        with self._quota_lock(), self._locate(path, create_dirs=make_parents) as loc:
            if loc.name is None:
                raise ToolError(f"{path!r} is a directory; cannot append to it")
            existing = self._existing(loc, path)
            old_size = existing.st_size if existing is not None else 0
            if existing is not None and stat_mod.S_ISLNK(existing.st_mode):
                raise UnsafePathError(f"{path!r}: is a symbolic link that changed during the "
                                      "operation; refusing to append to it")
            if existing is not None and not stat_mod.S_ISREG(existing.st_mode):
                raise ToolError(f"{path!r} is not a regular file")
            self._check_quota(path, old_size + len(data), old_size,
                              1 if existing is None else 0)
            try:
                fd = os.open(loc.name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                             | os.O_NONBLOCK | _O_CLOEXEC, 0o666, dir_fd=loc.dir_fd)
            except OSError as exc:
                raise self._oserror(path, exc, "append to") from None
            created = existing is None
            try:
                st = os.fstat(fd)
                if not stat_mod.S_ISREG(st.st_mode):
                    raise ToolError(f"{path!r} is not a regular file")
                start = st.st_size
                try:
                    view = memoryview(data)
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
                    if self.fsync:
                        os.fsync(fd)
                except BaseException as exc:
                    os.ftruncate(fd, start)
                    if created and start == 0:
                        os.unlink(loc.name, dir_fd=loc.dir_fd)
                    if isinstance(exc, OSError):
                        raise self._oserror(path, exc, "append to") from None
                    raise
                return start + len(data)
            finally:
                os.close(fd)

    # ------------------------------------------------------------------ directories

    def mkdir(self, path: str, *, parents: bool = True, exist_ok: bool = True) -> bool:
        """Create directory ``path``; return True when it was created, False when it existed.

        Raises:
            UnsafePathError: the path leaves the root.
            ToolError: exists and ``exist_ok`` is false, exists as a file, a parent is missing
                and ``parents`` is false, or the OS refuses.
        """
        with self._locate(path, create_dirs=parents) as loc:
            if loc.name is None:
                if exist_ok:
                    return False
                raise ToolError(f"{path!r} already exists")
            try:
                os.mkdir(loc.name, 0o777, dir_fd=loc.dir_fd)
                return True
            except FileExistsError:
                st = os.stat(loc.name, dir_fd=loc.dir_fd, follow_symlinks=False)
                if not stat_mod.S_ISDIR(st.st_mode):
                    raise ToolError(f"{path!r} exists and is not a directory") from None
                if not exist_ok:
                    raise ToolError(f"{path!r} already exists") from None
                return False
            except OSError as exc:
                raise self._oserror(path, exc, "create directory") from None

    def _rmtree_at(self, parent_fd: int, name: str) -> int:
        """Remove directory ``name`` under ``parent_fd`` and everything in it; never follows
        symlinks (a link is removed, not its target). Returns the entries removed.
        """
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        removed = 0
        try:
            with os.scandir(fd) as it:
                entries = list(it)
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    removed += self._rmtree_at(fd, entry.name)
                else:
                    os.unlink(entry.name, dir_fd=fd)
                    removed += 1
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=parent_fd)
        return removed + 1

    def delete(self, path: str, *, recursive: bool = False, missing_ok: bool = False) -> int:
        """Delete the file, symlink (never its target) or directory at ``path``.

        Args:
            path: the entry to delete, relative to the root or absolute inside it; it may not
                be the root itself.
            recursive: delete a non-empty directory with its content.
            missing_ok: a missing path is not an error (returns 0).

        Returns:
            The number of entries removed.

        Raises:
            UnsafePathError: the path leaves the root, or names the root itself.
            ToolError: missing (unless ``missing_ok``), a non-empty directory without
                ``recursive``, or the OS refuses.
        """
        try:
            loc = self._locate(path, follow_final=False)
        except PathNotFoundError:
            if missing_ok:
                return 0
            raise
        with loc:
            if loc.name is None:
                raise UnsafePathError(f"{path!r}: refusing to delete the filesystem root")
            try:
                st = os.stat(loc.name, dir_fd=loc.dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                if missing_ok:
                    return 0
                raise PathNotFoundError(f"{path!r} does not exist") from None
            try:
                if stat_mod.S_ISDIR(st.st_mode):
                    if recursive:
                        return self._rmtree_at(loc.dir_fd, loc.name)
                    try:
                        os.rmdir(loc.name, dir_fd=loc.dir_fd)
                    except OSError as exc:
                        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                            raise ToolError(f"{path!r} is a directory that is not empty (pass "
                                            "recursive: true to delete it with its content)"
                                            ) from None
                        raise
                    return 1
                os.unlink(loc.name, dir_fd=loc.dir_fd)
                return 1
            except OSError as exc:
                raise self._oserror(path, exc, "delete") from None

    # ------------------------------------------------------------------ copy and move

    def _copy_file_fd(self, src_fd: int, dst_dir: int, name: str, mode: int,
                      budget: list[int | None], src_path: str) -> int:
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _O_CLOEXEC,
                      mode, dir_fd=dst_dir)
        copied = 0
        try:
            while True:
                chunk = os.read(src_fd, _CHUNK)
                if not chunk:
                    break
                copied += len(chunk)
                if self.max_file_bytes is not None and copied > self.max_file_bytes:
                    raise QuotaExceededError(
                        f"{src_path!r}: copy exceeds the per-file quota of "
                        f"{self.max_file_bytes} bytes")
                if budget[0] is not None:
                    budget[0] -= len(chunk)
                    if budget[0] < 0:
                        raise QuotaExceededError(
                            f"{src_path!r}: copy would exceed the total quota of "
                            f"{self.max_total_bytes} bytes")
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view):]
            if self.fsync:
                os.fsync(out)
        finally:
            os.close(out)
        return copied

    def _copy_tree(self, src_dir: int, dst_dir: int, src_prefix: str, src_path: str,
                   budget: list[int | None]) -> int:
        total = 0
        with os.scandir(src_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            rel = f"{src_prefix}/{entry.name}"
            if stat_mod.S_ISDIR(st.st_mode):
                os.mkdir(entry.name, 0o777, dir_fd=dst_dir)
                sub_src = os.open(entry.name, _DIR_FLAGS, dir_fd=src_dir)
                try:
                    sub_dst = os.open(entry.name, _DIR_FLAGS, dir_fd=dst_dir)
                    try:
                        total += self._copy_tree(sub_src, sub_dst, rel, src_path, budget)
                    finally:
                        os.close(sub_dst)
                finally:
                    os.close(sub_src)
            elif stat_mod.S_ISREG(st.st_mode):
                fd = os.open(entry.name, _READ_FLAGS, dir_fd=src_dir)
                try:
                    if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
                        raise ToolError(f"{src_path!r}: {rel!r} changed during the copy")
                    os.set_blocking(fd, True)
                    total += self._copy_file_fd(fd, dst_dir, entry.name,
                                                stat_mod.S_IMODE(st.st_mode), budget, src_path)
                finally:
                    os.close(fd)
            else:
                raise ToolError(f"{src_path!r}: cannot copy {rel!r}: it is a "
                                f"{_kind(st.st_mode)} (directory copies take regular files and "
                                "directories only)")
        return total

    def copy(self, src: str, dst: str, *, overwrite: bool = False,
             make_parents: bool = True) -> int:
        """Copy a file or a directory tree from ``src`` to ``dst``; return the bytes copied.

        The copy is built under a temporary name next to ``dst`` and renamed into place when
        complete, so a failure (quota, I/O error) leaves nothing behind. A directory copy
        refuses symlinks and special files inside the tree.

        Raises:
            UnsafePathError: either path leaves the root.
            QuotaExceededError: the copy would exceed a quota.
            ToolError: ``src`` missing, ``dst`` exists without ``overwrite``, or the OS refuses.
        """
        with self._quota_lock():
            info = self.stat(src)
            if info is None:
                raise PathNotFoundError(f"{src!r} does not exist")
            if info.type == "file":
                fd = self.open_read(src)
                try:
                    size = os.fstat(fd).st_size

                    def chunks() -> Iterator[bytes]:
                        while True:
                            chunk = os.read(fd, _CHUNK)
                            if not chunk:
                                return
                            yield chunk

                    return self.write_stream(dst, chunks(), size_hint=size, overwrite=overwrite,
                                             make_parents=make_parents)
                finally:
                    os.close(fd)
            if info.type != "directory":
                raise ToolError(f"{src!r} is not a regular file or a directory")
            return self._copy_dir(src, dst, overwrite=overwrite, make_parents=make_parents)

    def _copy_dir(self, src: str, dst: str, *, overwrite: bool, make_parents: bool) -> int:
        src_loc = self._locate(src, final_is_dir=True)
        with src_loc:
            if not src_loc.parts:
                raise UnsafePathError(f"{src!r}: refusing to copy the whole filesystem root")
            with self._locate(dst, follow_final=False, create_dirs=make_parents) as dst_loc:
                if dst_loc.name is None:
                    raise ToolError(f"{dst!r} already exists")
                src_rel, dst_rel = src_loc.rel, "/".join(dst_loc.parts)
                if dst_rel == src_rel or dst_rel.startswith(src_rel + "/"):
                    raise ToolError(f"cannot copy {src!r} into itself ({dst!r})")
                try:
                    existing = os.stat(dst_loc.name, dir_fd=dst_loc.dir_fd,
                                       follow_symlinks=False)
                except FileNotFoundError:
                    existing = None
                if existing is not None and not overwrite:
                    raise ToolError(f"{dst!r} already exists (pass overwrite: true to replace "
                                    "it)")
                if self.max_files is not None:
                    count = sum(1 for _, st, _ in self._iter_tree(src_loc.dir_fd, [], src, [0])
                                if not stat_mod.S_ISDIR(st.st_mode))
                    replaced = 0 if existing is None else 1 if not stat_mod.S_ISDIR(
                        existing.st_mode) else self._count_files_at(dst_loc.dir_fd,
                                                                    dst_loc.name, dst)
                    self._check_files(dst, count - replaced)
                budget: list[int | None] = [None]
                if self.max_total_bytes is not None:
                    budget[0] = self.max_total_bytes - self.usage()
                base = dst_loc.name.encode("utf-8")[:100].decode("utf-8", "ignore")
                tmp = f".{base}.{secrets.token_hex(6)}.part"
                try:
                    os.mkdir(tmp, 0o777, dir_fd=dst_loc.dir_fd)
                    tmp_fd = os.open(tmp, _DIR_FLAGS, dir_fd=dst_loc.dir_fd)
                    try:
                        copied = self._copy_tree(src_loc.dir_fd, tmp_fd, src_rel, src, budget)
                    finally:
                        os.close(tmp_fd)
                    if existing is not None:
                        old = f".{base}.{secrets.token_hex(6)}.old"
                        os.rename(dst_loc.name, old, src_dir_fd=dst_loc.dir_fd,
                                  dst_dir_fd=dst_loc.dir_fd)
                        os.rename(tmp, dst_loc.name, src_dir_fd=dst_loc.dir_fd,
                                  dst_dir_fd=dst_loc.dir_fd)
                        if stat_mod.S_ISDIR(existing.st_mode):
                            self._rmtree_at(dst_loc.dir_fd, old)
                        else:
                            os.unlink(old, dir_fd=dst_loc.dir_fd)
                    else:
                        os.rename(tmp, dst_loc.name, src_dir_fd=dst_loc.dir_fd,
                                  dst_dir_fd=dst_loc.dir_fd)
                    return copied
                except BaseException as exc:
                    try:
                        self._rmtree_at(dst_loc.dir_fd, tmp)
                    except FileNotFoundError:
                        pass
                    if isinstance(exc, OSError) and not isinstance(exc, ToolError):
                        raise self._oserror(dst, exc, "copy to") from None
                    raise

    def _count_files_at(self, parent_fd: int, name: str, path: str) -> int:
        """Number of non-directory entries in directory ``name`` under ``parent_fd``."""
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        try:
            return sum(1 for _, st, _ in self._iter_tree(fd, [], path, [0])
                       if not stat_mod.S_ISDIR(st.st_mode))
        finally:
            os.close(fd)

    def move(self, src: str, dst: str, *, overwrite: bool = False,
             make_parents: bool = True) -> str:
        """Move (rename) ``src`` to ``dst`` inside the root; a symlink is moved, not its target.

        Returns:
            The new path relative to the root.

        Raises:
            UnsafePathError: either path leaves the root, or ``src`` is the root.
            ToolError: ``src`` missing, ``dst`` exists without ``overwrite``, a directory into
                itself, or the OS refuses.
        """
        with self._lock, self._locate(src, follow_final=False) as s:
            if s.name is None:
                raise UnsafePathError(f"{src!r}: refusing to move the filesystem root")
            try:
                os.stat(s.name, dir_fd=s.dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                raise PathNotFoundError(f"{src!r} does not exist") from None
            with self._locate(dst, follow_final=False, create_dirs=make_parents) as d:
                if d.name is None:
                    raise ToolError(f"{dst!r} already exists")
                try:
                    os.stat(d.name, dir_fd=d.dir_fd, follow_symlinks=False)
                    exists = True
                except FileNotFoundError:
                    exists = False
                if exists and not overwrite:
                    raise ToolError(f"{dst!r} already exists (pass overwrite: true to replace "
                                    "it)")
                try:
                    os.rename(s.name, d.name, src_dir_fd=s.dir_fd, dst_dir_fd=d.dir_fd)
                except OSError as exc:
                    if exc.errno == errno.EINVAL:
                        raise ToolError(f"cannot move {src!r} into itself ({dst!r})") from None
                    if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                        raise ToolError(f"{dst!r} is a directory that is not empty") from None
                    raise self._oserror(src, exc, "move") from None
                return d.rel


def _positive(section: str, key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        unit = "files" if key == "max_files" else "entries" if key == "max_walk_entries" \
            else "bytes"
        raise ConfigError(f"[{section}] {key} must be a positive integer ({unit}), got {value!r}")
    return value


def safe_root_from_config(config: Config, section: str = "filesystem", *,
                          defaults: dict[str, int | None] | None = None,
                          factory: Callable[..., SafeRoot] = SafeRoot) -> SafeRoot:
    """Build a :class:`SafeRoot` from ``[<section>]``: ``root`` (see :func:`workspace_root`),
    ``max_file_bytes``, ``max_total_bytes``, ``max_read_bytes`` (bytes; ``0`` is refused,
    omit a key for its default), ``max_files`` (files under the root, see :class:`SafeRoot`),
    ``max_walk_entries`` (entries a tree walk may visit) and ``fsync`` (bool).

    Raises:
        ConfigError: a value has the wrong type.
    """
    table = config.section(section)
    limits = dict(defaults or {})
    for key in ("max_file_bytes", "max_total_bytes", "max_read_bytes", "max_files",
                "max_walk_entries"):
        if key in table:
            limits[key] = _positive(section, key, table[key])
    fsync = table.get("fsync", True)
    if not isinstance(fsync, bool):
        raise ConfigError(f"[{section}] fsync must be true or false, got {fsync!r}")
    return factory(workspace_root(config, section), fsync=fsync, **limits)


__all__ += ["safe_root_from_config"]
