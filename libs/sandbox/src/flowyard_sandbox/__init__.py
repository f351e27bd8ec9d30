"""flowyard-sandbox: the exec plugin's sandbox rules for a long-lived child process.

The rules are those of ``flowyard-exec`` (``plugins/exec/src/flowyard_exec/sandbox.py``),
taken for a process that flowyard starts and keeps talking to (an MCP server on stdio):

- **Environment scrubbed.** The child gets only the allow-listed variables of flowyard's own
  environment (``PATH``, ``LANG``, ``LC_ALL``, ``LC_CTYPE``, ``TZ`` by default), ``HOME`` set
  to its working directory, and the variables its configuration gives. Nothing else leaks
  (no API key of flowyard's own environment).
- **Working directory confined.** The directory is resolved (symlinks followed) and must lie
  inside an allowed root; ``..`` or a symlink out of it is refused.
- **Optional bubblewrap.** :func:`bubblewrap_prefix` returns the ``bwrap`` command line that
  runs the child in new namespaces (PID, IPC, UTS, cgroup, network unless allowed), with the
  system directories and the given read-only paths bound read-only, a private ``/tmp`` and the
  working directory as the only writable host path; ``--die-with-parent`` ends the sandbox
  when flowyard exits.

The exec plugin still carries its own copy of these rules (it is not changed to use this
library yet).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from flowyard import ConfigError

__all__ = [
    "DEFAULT_ENV_ALLOW",
    "ETC_FILES",
    "SYSTEM_DIRS",
    "bubblewrap_prefix",
    "bubblewrap_usable",
    "confine_directory",
    "is_env_name",
    "scrubbed_environment",
]

#: Variables copied from flowyard's environment by default (as ``[exec] env_allow``).
DEFAULT_ENV_ALLOW: tuple[str, ...] = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
#: System directories bound read-only in the sandbox (symlinks recreated as symlinks).
SYSTEM_DIRS: tuple[str, ...] = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: Files of ``/etc`` a program needs to start, bound read-only when present.
ETC_FILES: tuple[str, ...] = (
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives",
    "/etc/localtime", "/etc/timezone", "/etc/ssl", "/etc/ca-certificates", "/etc/passwd",
    "/etc/group", "/etc/nsswitch.conf", "/etc/mime.types", "/etc/resolv.conf", "/etc/hosts",
)

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def is_env_name(name: object) -> bool:
    """Return True when ``name`` is a valid environment variable name.

    A name is ``[A-Za-z_][A-Za-z0-9_]*``.
    """
    return isinstance(name, str) and bool(_ENV_NAME.match(name))


def scrubbed_environment(extra: Mapping[str, str], *, home: str,
                         allow: Sequence[str] = DEFAULT_ENV_ALLOW,
                         source: Mapping[str, str] | None = None) -> dict[str, str]:
    """Build a child's whole environment from an allow-list (nothing else is inherited).

    Args:
        extra: variables set for the child (its configured ``env``); they win over copies.
        home: the value of ``HOME`` (the child's working directory).
        allow: names copied from ``source`` when set there.
        source: the environment copied from (default: ``os.environ``).

    Returns:
        the environment: allowed copies, ``PATH`` (a system default when not copied),
        ``HOME``, then ``extra``.

    Raises:
        ConfigError: a name of ``extra`` or ``allow`` is not a valid variable name, or a
            value is not a string or holds a NUL byte (the message names the variable,
            never its value).
    """
    source = os.environ if source is None else source
    env: dict[str, str] = {}
    for name in allow:
        if not is_env_name(name):
            raise ConfigError(f"env_allow: {name!r} is not a variable name")
        if name in source:
            env[name] = source[name]
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["HOME"] = home
    for name, value in extra.items():
        if not is_env_name(name):
            raise ConfigError(f"env: {name!r} is not a variable name")
        if not isinstance(value, str) or "\0" in value:
            raise ConfigError(f"env: the value of {name} must be a string without NUL bytes")
        env[name] = value
    return env


def confine_directory(requested: str | os.PathLike[str] | None, root: str | os.PathLike[str]
                      ) -> str:
    """Resolve a working directory and check that it lies inside ``root``.

    Args:
        requested: the directory, relative to ``root`` or absolute; None: ``root`` itself.
        root: the directory the child is confined to (created when missing).

    Returns:
        the real path (symlinks resolved) of an existing directory inside ``root``.

    Raises:
        ConfigError: the resolved directory is outside ``root`` (after ``..`` and symlinks)
            or does not exist.
    """
    root_real = Path(root).expanduser()
    root_real.mkdir(parents=True, exist_ok=True)
    root_real = root_real.resolve(strict=True)
    target = root_real if requested is None else (root_real / Path(requested).expanduser())
    resolved = target.resolve(strict=False)
    if resolved != root_real and root_real not in resolved.parents:
        raise ConfigError(f"working directory {str(requested)!r} resolves to {resolved}, "
                          f"outside the allowed root {root_real}")
    if not resolved.is_dir():
        raise ConfigError(f"working directory {resolved} does not exist or is not a directory")
    return str(resolved)


def _ancestors(path: str) -> list[str]:
    parts = Path(path).parts[1:-1]
    out, current = [], ""
    for part in parts:
        current = f"{current}/{part}"
        out.append(current)
    return out


def _covered(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _python_paths() -> list[str]:
    """Return the prefixes of flowyard's interpreter (a server run by it needs them)."""
    paths = [os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)]
    real = os.path.realpath(sys.executable)
    paths.append(os.path.dirname(os.path.dirname(real)))
    return [p for p in dict.fromkeys(paths) if p != "/" and os.path.exists(p)]


def bubblewrap_prefix(bwrap: str, work_dir: str, *, readonly: Sequence[str] = (),
                      network: bool = False, python: bool = True) -> list[str]:
    """Return the bubblewrap command line (up to and including ``--``) for one child.

    Args:
        bwrap: the bubblewrap binary.
        work_dir: the child's working directory: the only writable host path, and ``HOME``.
        readonly: more host paths bound read-only (the server's own files, a Node.js
            installation); each must exist.
        network: keep the host's network (default False: ``--unshare-net``).
        python: also bind flowyard's interpreter prefixes read-only (a server started with
            ``sys.executable`` needs them).

    Returns:
        the argv prefix; append the child's command and arguments.

    Raises:
        ConfigError: a ``readonly`` path does not exist.
    """
    args = [bwrap, "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--hostname", "sandbox"]
    if not network:
        args.append("--unshare-net")
    if os.geteuid() != 0:
        args.append("--unshare-user")
    bound: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
            bound.append(path)
    args += ["--perms", "0755", "--dir", "/etc"]
    for path in ETC_FILES:
        args += ["--ro-bind-try", path, path]
    args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
    created: set[str] = set()

    def bind(path: str, mode: str) -> None:
        for parent in _ancestors(path):
            if parent in created or _covered(parent, bound) or parent == "/etc":
                continue
            args.extend(["--perms", "0755", "--dir", parent])
            created.add(parent)
        args.extend([mode, path, path])
        bound.append(path)

    extra = []
    for path in readonly:
        if not os.path.exists(path):
            raise ConfigError(f"sandbox read-only path {path} does not exist")
        extra.append(os.path.realpath(path))
    for path in dict.fromkeys([*(_python_paths() if python else []), *extra]):
        if not _covered(path, bound):
            bind(path, "--ro-bind")
    real_work = os.path.realpath(work_dir)
    bind(real_work, "--bind")
    args += ["--chdir", real_work, "--"]
    return args


_USABLE: dict[str, tuple[bool, str]] = {}


def bubblewrap_usable(bwrap: str | None = None) -> tuple[bool, str]:
    """Check once per process that bubblewrap can create its namespaces here.

    Args:
        bwrap: the binary (default: ``bwrap`` on ``PATH``).

    Returns:
        ``(True, path)`` when ``bwrap ... -- true`` exited with 0, else ``(False, reason)``.
    """
    path = bwrap or shutil.which("bwrap")
    if not path:
        return False, "bubblewrap (bwrap) is not installed"
    if path in _USABLE:
        return _USABLE[path]
    work = os.path.realpath(os.getcwd())
    try:
        done = subprocess.run([*bubblewrap_prefix(path, "/tmp", python=False), "true"],
                              capture_output=True, timeout=20, env={"PATH": "/usr/bin:/bin"},
                              cwd=work, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        outcome = (False, f"cannot run bubblewrap: {exc}")
    else:
        outcome = ((True, path) if done.returncode == 0 else
                   (False, f"bubblewrap cannot create a sandbox here (exit {done.returncode}): "
                           f"{done.stderr.decode('utf-8', 'replace').strip()[-300:]}"))
    _USABLE[path] = outcome
    return outcome
