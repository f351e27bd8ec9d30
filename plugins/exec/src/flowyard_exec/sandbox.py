r"""Running one command under limits: settings, isolation probing, the process runner.

The chain for one call is::

    flowyard ──(new session)──> [bwrap <namespaces, binds> --] python -I -S -c LAUNCHER spec -- argv

The *launcher* is a few lines of Python run by flowyard's own interpreter in the child (inside
the sandbox when there is one): it applies the ``setrlimit`` limits, drops to the configured
user when flowyard runs as root, changes to the work directory, confines the process with
Landlock when that is the isolation level, and ``exec``\ s the command. A wall-clock timeout
kills the child's whole process tree with SIGKILL; in the sandbox the command is PID 1's
child in a new PID namespace and bubblewrap runs with ``--die-with-parent``, so killing
bubblewrap ends every process of the sandbox, including ones that started their own session.
Outside bubblewrap the launcher forks the command and stays as a child subreaper
(``PR_SET_CHILD_SUBREAPER``): orphans (``setsid``, double forks) are re-parented to it, and
it kills them all when the command ends; flowyard sweeps the tree below it on a timeout.

Isolation levels of a call (``ProcessOutcome.isolation``):

- ``bubblewrap``: new namespaces, the system and the interpreter bound read-only, the work
  directory the only writable host path, no network.
- ``landlock`` (only when chosen explicitly): no bubblewrap, but the kernel's Landlock LSM
  (Linux >= 5.13) confines the process and its children: writes only beneath the work
  directory (and to ``/dev/null``), reads only the same paths bubblewrap would bind. The
  network and the host's process list stay visible.
- ``none`` (only when chosen explicitly): the limits and the account only.

``auto`` never falls back: without a working bubblewrap a call is refused.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs
from flowyard import ConfigError, ToolError

__all__ = [
    "ISOLATION_LEVELS",
    "ISOLATION_RESULTS",
    "ExecSettings",
    "ProcessOutcome",
    "PythonChoice",
    "Sandbox",
    "default_pythons",
    "probe_bubblewrap",
    "probe_landlock",
    "strictest_isolation",
]

#: Isolation requests, weakest first. ``auto`` (the default) and ``required``: bubblewrap or
#: refuse (fail closed); ``landlock``: Landlock confinement or refuse, an explicit opt-out of
#: bubblewrap; ``none``: never sandbox, an explicit opt-out of every sandbox.
ISOLATION_LEVELS = ("none", "landlock", "auto", "required")

#: How to get a sandbox, or to opt out of it explicitly: the end of every refusal.
INSTALL_HINT = ("install bubblewrap (`apt-get install bubblewrap`; the project's "
                "scripts/system-deps.sh does it where it can), or opt out explicitly in the "
                "exec section of the configuration with isolation = \"landlock\" (Landlock: "
                "writes confined to the work directory, host network and process list shared) "
                "or isolation = \"none\" (no sandbox at all), e.g. "
                "FLOWYARD_EXEC__ISOLATION=landlock")

#: What a call actually ran under, strongest first (the ``isolation`` field of results).
ISOLATION_RESULTS = ("bubblewrap", "landlock", "none")

#: The interpreter that runs the launcher (before privileges are dropped): flowyard's own.
LAUNCHER_PYTHON = sys.executable

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# The launcher runs as ``python -I -S -c _LAUNCHER <cwd> <uid> <gid> <limits> <env names>
# <confine> <reap> [<readable path>...] -- <argv...>`` (uid/gid "-" keeps the account; limits
# "RLIMIT_CPU=60,..."; env names comma-separated; confine "landlock" or "-"; reap "reap" to
# fork the command under a subreaper that kills every process it leaves behind, or "-" to
# exec it directly; the readable paths are what Landlock lets the command read). It avoids
# importing json: that alone doubles the interpreter's start-up.
_LAUNCHER = r"""
import os, resource, sys
import warnings  # os.execvp imports it lazily: load it before dropping privileges
cwd, uid, gid, limits, names, confine, reap = sys.argv[1:8]
rest = sys.argv[8:]
cut = rest.index("--")
readable, argv = rest[:cut], rest[cut + 1:]


def fail(message):
    sys.stderr.write("flowyard-exec launcher: %s\n" % (message,))
    sys.stderr.flush()
    os._exit(126)


if confine == "landlock":
    # Landlock through raw system calls (444-446 on every architecture). Everything is loaded
    # before the privileges are dropped: the interpreter may be unreadable afterwards.
    try:
        import ctypes, stat
        libc = ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError) as exc:
        fail("Landlock needs ctypes: %s" % (exc,))
    libc.syscall.restype = ctypes.c_long

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    def syscall(number, *args):
        value = libc.syscall(ctypes.c_long(number), *args)
        if value < 0:
            error = ctypes.get_errno()
            raise OSError(error, "Landlock system call %d: %s" % (number, os.strerror(error)))
        return value

    def landlock(work, readable):
        abi = syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
        handled = (1 << 13) - 1            # EXECUTE ... MAKE_SYM (ABI 1)
        if abi >= 2:
            handled |= 1 << 13             # REFER: links and renames across directories
        if abi >= 3:
            handled |= 1 << 14             # TRUNCATE
        scoped = 3 if abi >= 6 else 0      # abstract unix sockets and signals stay inside
        attr = (ctypes.c_uint64 * 3)(handled, 0, scoped)
        ruleset = syscall(444, ctypes.byref(attr), ctypes.c_size_t(24 if abi >= 6 else 8),
                          ctypes.c_uint32(0))

        def allow(path, access, required=False):
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                if required:
                    raise
                return  # absent, or unreachable for this account anyway: allow nothing
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    access &= 0x4007       # file rights: EXECUTE, WRITE_FILE, READ_FILE, TRUNCATE
                rule = PathBeneath(access & handled, fd)
                syscall(445, ctypes.c_int(ruleset), ctypes.c_int(1), ctypes.byref(rule),
                        ctypes.c_uint32(0))
            finally:
                os.close(fd)

        for path in readable:
            allow(path, 0xD)               # EXECUTE | READ_FILE | READ_DIR
        for path in ("/dev/random", "/dev/urandom"):
            allow(path, 0x4)               # READ_FILE
        for path in ("/dev/null", "/dev/zero", "/dev/full"):
            allow(path, 0x4006)            # READ_FILE | WRITE_FILE | TRUNCATE
        allow(work, handled, required=True)
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS: no setuid gains
            error = ctypes.get_errno()
            raise OSError(error, "prctl(PR_SET_NO_NEW_PRIVS): %s" % (os.strerror(error),))
        syscall(446, ctypes.c_int(ruleset), ctypes.c_uint32(0))
        os.close(ruleset)

if reap == "reap":
    # Outside bubblewrap there is no PID namespace to tear down: the launcher stays as the
    # command's parent, with flowyard's account (root when flowyard is root, so the command,
    # run as another account, cannot signal it), as a child subreaper so every orphan of the
    # command (setsid, double fork) is re-parented to it, and ends all of them when the
    # command ends.
    import ctypes, signal
    if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        fail("prctl(PR_SET_CHILD_SUBREAPER): %s" % (os.strerror(ctypes.get_errno()),))
    child = os.fork()
    if child:
        me = os.getpid()

        def orphans():
            found = []
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        with open("/proc/%s/stat" % entry, "rb") as fh:
                            ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
                    except (OSError, IndexError, ValueError):
                        continue
                    if ppid == me:
                        found.append(int(entry))
            return found

        status = os.waitpid(child, 0)[1]
        while True:
            for pid in orphans():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    import time
                    time.sleep(0.005)
            except ChildProcessError:
                break  # no child left at all
        if os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            signal.signal(number, signal.SIG_DFL)
            os.kill(me, number)
        os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 126)

try:
    for item in limits.split(","):
        name, _, value = item.partition("=")
        res = getattr(resource, name)
        value = int(value)
        soft, hard = resource.getrlimit(res)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(res, (value, value))
    if uid != "-":
        os.setgroups([])
        os.setgid(int(gid))
        os.setuid(int(uid))
    os.chdir(cwd)
    os.umask(0o022)
    # The interpreter may add variables at start-up (PEP 538 sets LC_CTYPE): drop them.
    for name in set(os.environ) - set(names.split(",")):
        del os.environ[name]
    if confine == "landlock":
        landlock(cwd, readable)
except OSError as exc:
    fail(exc)
try:
    os.execvp(argv[0], argv)
except OSError as exc:
    sys.stderr.write("flowyard-exec: cannot execute %r: %s\n" % (argv[0], exc.strerror))
    sys.stderr.flush()
    os._exit(127)
"""

# python.run's interpreter probe: prints the version when the interpreter starts, with the
# modules the runner needs.
_PYTHON_PROBE = ("import json, sys, traceback\n"
                 "sys.stdout.write('%d.%d.%d' % sys.version_info[:3])\n")

# Files of /etc that programs commonly need (dynamic loader, locale, TLS roots, user names).
_ETC_FILES = (
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives",
    "/etc/localtime", "/etc/timezone", "/etc/ssl", "/etc/ca-certificates", "/etc/passwd",
    "/etc/group", "/etc/nsswitch.conf", "/etc/mime.types",
)
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# What Landlock lets a command read besides the system directories, /etc files and binds
# (and the devices /dev/null, zero, full, random, urandom, allowed by the launcher itself).
_LANDLOCK_KERNEL_FILES = ("/proc",)


def default_pythons() -> tuple[str, ...]:
    """The default ``[exec] python`` candidates, in order: flowyard's own interpreter, then
    the system's ``/usr/local/bin/python3`` and ``/usr/bin/python3``.

    python.run uses the first one the account the code runs as can execute (see
    :meth:`Sandbox.resolve_python`): flowyard's interpreter keeps flowyard's virtualenv
    packages; a system interpreter is the fallback when that account cannot reach
    flowyard's (e.g. a virtualenv under a 0700 ``/root`` while the code runs as ``nobody``).
    """
    own = [sys.executable] if sys.executable else []
    return tuple(dict.fromkeys([*own, "/usr/local/bin/python3", "/usr/bin/python3"]))


def _python_setting(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise ConfigError(f"[exec] python must be an interpreter path or a non-empty list of "
                          f"paths, got {value!r}")
    out = []
    for item in items:
        if not item:
            raise ConfigError("[exec] python: an interpreter path is empty")
        if not os.path.isabs(item):
            found = shutil.which(item)
            if found is None:
                raise ConfigError(f"[exec] python: {item!r} is not an absolute path and is not "
                                  f"found on PATH")
            item = found
        out.append(item)
    return tuple(dict.fromkeys(out))


def strictest_isolation(*levels: str | None) -> str:
    """Return the strictest of the given isolation levels (``None`` entries are ignored).

    Raises:
        ValueError: a level is not one of :data:`ISOLATION_LEVELS`.
    """
    chosen = "none"
    for level in levels:
        if level is None:
            continue
        if level not in ISOLATION_LEVELS:
            raise ValueError(f"unknown isolation level {level!r}; use one of {ISOLATION_LEVELS}")
        if ISOLATION_LEVELS.index(level) > ISOLATION_LEVELS.index(chosen):
            chosen = level
    return chosen


def _positive(section: Mapping[str, Any], key: str, default: float, *, integer: bool = True
              ) -> Any:
    value = section.get(key, default)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        raise ConfigError(f"[exec] {key} must be a positive {'integer' if integer else 'number'},"
                          f" got {value!r}")
    return value


@attrs.frozen
class ExecSettings:
    """The ``[exec]`` configuration section, validated.

    Args:
        isolation: ``"auto"`` (default) or ``"required"``: bubblewrap or refuse;
            ``"landlock"``: Landlock or refuse (explicit opt-out of bubblewrap); ``"none"``:
            no sandbox (explicit opt-out). A call may ask for a stricter level, never a
            weaker one.
        bwrap: path of the bubblewrap binary (default: ``bwrap`` on ``PATH``; None when absent).
        network: allow calls to ask for the host's network with ``network: true`` (default
            False: every call gets ``--unshare-net``; with True, only calls that ask).
        timeout: default wall-clock timeout in seconds (30); max_timeout: the largest a call may
            ask for (600).
        cpu_seconds: RLIMIT_CPU in CPU seconds (60).
        memory_mb: RLIMIT_AS in MiB of address space (1024).
        max_processes: RLIMIT_NPROC, processes of the user (64). Not enforced by the kernel
            for root, hence ``user`` below.
        max_file_mb: RLIMIT_FSIZE, largest file written, MiB (64).
        max_open_files: RLIMIT_NOFILE (256).
        max_output_bytes: stdout and stderr are each cut after this many bytes (1_000_000).
        env_allow: names of variables copied from flowyard's environment (PATH, LANG, LC_ALL,
            LC_CTYPE, TZ); env: fixed variables added to every call.
        user: account the command runs as when flowyard runs as root (default ``nobody``;
            ``""`` keeps root). Ignored when flowyard is not root.
        work_dir: a fixed working directory for every call (default: a new temporary
            directory per call, deleted afterwards).
        temp_root: where per-call temporary directories are created (system default).
        allow_shell: allow ``shell.run`` to take a shell string (with ``shell: true``).
        allowed_commands: when non-empty, the programs shell.run may start: names looked up
            on flowyard's ``PATH`` or absolute paths, compared by real path with the real path
            of the program a call names (a symlink named like an allowed program is refused).
        python: candidate interpreters for ``python.run``, in order; each call uses the first
            one the account the code runs as can execute (probed once per process). A single
            path (a string in the configuration) is used as it is. Default:
            :func:`default_pythons` (flowyard's own, then the system's ``python3``). The
            launcher always runs with flowyard's own interpreter.
        script_dir: ``python.run`` script files must lie inside this directory (default: the
            current directory).
        ro_binds: extra host paths made visible read-only inside the sandbox (bound in
            bubblewrap, readable under Landlock).

    Raises:
        ConfigError: a value has the wrong type or range (the message names the key).
    """

    isolation: str = "auto"
    bwrap: str | None = None
    network: bool = False
    timeout: float = 30.0
    max_timeout: float = 600.0
    cpu_seconds: int = 60
    memory_mb: int = 1024
    max_processes: int = 64
    max_file_mb: int = 64
    max_open_files: int = 256
    max_output_bytes: int = 1_000_000
    env_allow: tuple[str, ...] = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
    env: Mapping[str, str] = attrs.field(factory=dict)
    user: str | None = None
    work_dir: str | None = None
    temp_root: str | None = None
    allow_shell: bool = False
    allowed_commands: tuple[str, ...] = ()
    python: tuple[str, ...] = attrs.field(factory=default_pythons)
    script_dir: str = "."
    ro_binds: tuple[str, ...] = ()

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> ExecSettings:
        """Build settings from the ``[exec]`` table (see the class docstring for the keys).

        Raises:
            ConfigError: unknown key or invalid value.
        """
        known = {f.name for f in attrs.fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"[exec] unknown key(s) {unknown}; known: {sorted(known)}")
        isolation = section.get("isolation", "auto")
        if isolation not in ISOLATION_LEVELS:
            raise ConfigError(f"[exec] isolation must be one of {ISOLATION_LEVELS}, "
                              f"got {isolation!r}")
        bwrap = section.get("bwrap", shutil.which("bwrap"))
        if bwrap is not None and not isinstance(bwrap, str):
            raise ConfigError(f"[exec] bwrap must be a path, got {bwrap!r}")
        env = section.get("env", {})
        if not isinstance(env, Mapping) or not all(
                isinstance(k, str) and _ENV_NAME.match(k) and isinstance(v, str)
                for k, v in env.items()):
            raise ConfigError("[exec] env must be a table of NAME = \"string\" entries")
        lists = {}
        for key in ("env_allow", "allowed_commands", "ro_binds"):
            value = section.get(key, attrs.fields_dict(cls)[key].default)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"[exec] {key} must be a list of strings, got {value!r}")
            lists[key] = tuple(value)
        for path in lists["ro_binds"]:
            if not os.path.isabs(path):
                raise ConfigError(f"[exec] ro_binds entries must be absolute paths, got {path!r}")
        user = section.get("user")
        if user is None:
            user = "nobody" if os.geteuid() == 0 else ""
        if not isinstance(user, str):
            raise ConfigError(f"[exec] user must be an account name, got {user!r}")
        for key in ("network", "allow_shell"):
            if not isinstance(section.get(key, False), bool):
                raise ConfigError(f"[exec] {key} must be true or false")
        for key in ("work_dir", "temp_root", "script_dir"):
            if key in section and not isinstance(section[key], str):
                raise ConfigError(f"[exec] {key} must be a path string, got {section[key]!r}")
        timeout = _positive(section, "timeout", 30.0, integer=False)
        max_timeout = _positive(section, "max_timeout", 600.0, integer=False)
        if timeout > max_timeout:
            raise ConfigError(f"[exec] timeout ({timeout}) exceeds max_timeout ({max_timeout})")
        return cls(
            isolation=isolation,
            bwrap=bwrap,
            network=section.get("network", False),
            timeout=float(timeout),
            max_timeout=float(max_timeout),
            cpu_seconds=_positive(section, "cpu_seconds", 60),
            memory_mb=_positive(section, "memory_mb", 1024),
            max_processes=_positive(section, "max_processes", 64),
            max_file_mb=_positive(section, "max_file_mb", 64),
            max_open_files=_positive(section, "max_open_files", 256),
            max_output_bytes=_positive(section, "max_output_bytes", 1_000_000),
            env_allow=lists["env_allow"],
            env=dict(env),
            user=user or None,
            work_dir=section.get("work_dir"),
            temp_root=section.get("temp_root"),
            allow_shell=section.get("allow_shell", False),
            allowed_commands=lists["allowed_commands"],
            python=(_python_setting(section["python"]) if "python" in section
                    else default_pythons()),
            script_dir=section.get("script_dir", "."),
            ro_binds=lists["ro_binds"],
        )

    def limits(self) -> dict[str, int]:
        """The ``setrlimit`` values applied in the child, by ``resource`` constant name."""
        mib = 1024 * 1024
        return {
            "RLIMIT_CPU": int(self.cpu_seconds),
            "RLIMIT_AS": int(self.memory_mb) * mib,
            "RLIMIT_NPROC": int(self.max_processes),
            "RLIMIT_FSIZE": int(self.max_file_mb) * mib,
            "RLIMIT_NOFILE": int(self.max_open_files),
            "RLIMIT_CORE": 0,
        }


@attrs.frozen
class ProcessOutcome:
    """What happened to one command.

    Attributes:
        exit_code: the process's exit status; negative: killed by that signal (unsandboxed);
            inside bubblewrap a signal shows as 128 + signal number.
        signal: the signal's name when the status says the command was killed, else None.
        stdout, stderr: decoded output (UTF-8, invalid bytes replaced), each cut at the cap.
        stdout_truncated, stderr_truncated: True when output was cut.
        timed_out: the wall-clock timeout fired and the process group was killed.
        duration_s: wall-clock seconds from start to end.
        isolation: ``"bubblewrap"``, ``"landlock"`` or ``"none"`` (see the module docstring).
        work_dir: the working directory used (deleted afterwards when temporary).
        user: the account the command ran as (``"nobody"`` when flowyard is root and
            ``[exec] user`` is the default; ``"root"`` only when configured with ``user = ""``).
    """

    exit_code: int | None
    signal: str | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool
    duration_s: float
    isolation: str
    work_dir: str
    user: str

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON-ready dict given to workflows."""
        return attrs.asdict(self)


def _signal_name(code: int | None, isolation: str) -> str | None:
    if code is None:
        return None
    number = -code if code < 0 else (code - 128 if isolation == "bubblewrap" and code > 128
                                     else 0)
    if number <= 0:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return None


# ----------------------------------------------------------------------------- visibility

_PROBES: dict[tuple[Any, ...], tuple[bool, str]] = {}
_PYTHON_PROBES: dict[tuple[Any, ...], tuple[bool, str]] = {}


def _ancestors(path: str) -> list[str]:
    parts = Path(path).parts[1:-1]
    out = []
    current = ""
    for part in parts:
        current = f"{current}/{part}"
        out.append(current)
    return out


def _covered(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _interpreter_paths(python: str) -> list[str]:
    """Host paths an interpreter needs to start: the installation prefix of the real binary
    (``<prefix>/bin/python3.x`` -> ``<prefix>``) and, for a virtualenv, its root (the
    directory holding ``pyvenv.cfg``), else the directory of the path as given.
    """
    real = os.path.realpath(python)
    prefix = os.path.dirname(os.path.dirname(real))
    out = [prefix if prefix != "/" else os.path.dirname(real)]
    given = os.path.abspath(python)
    venv = os.path.dirname(os.path.dirname(given))
    if venv != "/" and os.path.isfile(os.path.join(venv, "pyvenv.cfg")):
        out.append(venv)
    else:
        out.append(os.path.dirname(given))
    return [path for path in out if path != "/"]


def readonly_paths(settings: ExecSettings, interpreters: Sequence[str] = (),
                   extra_ro: Sequence[str] = ()) -> list[str]:
    """Host paths made readable for a call besides the system directories and ``/etc`` files:
    flowyard's own prefixes (the launcher runs from them), the prefixes of ``interpreters``,
    ``[exec] ro_binds`` and ``extra_ro``; real paths, without duplicates.

    Raises:
        ToolError: an ``ro_binds`` or ``extra_ro`` entry does not exist.
    """
    for path in [*settings.ro_binds, *extra_ro]:
        if not os.path.exists(path):
            raise ToolError(f"[exec] ro_binds: {path} does not exist")
    paths = [os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)]
    for python in (LAUNCHER_PYTHON, *interpreters):
        paths += _interpreter_paths(python)
    paths += [os.path.realpath(path) for path in [*settings.ro_binds, *extra_ro]]
    return [path for path in dict.fromkeys(paths) if os.path.exists(path)]


# ----------------------------------------------------------------------------- bubblewrap


def bubblewrap_args(settings: ExecSettings, work_dir: str, *, interpreters: Sequence[str] = (),
                    extra_ro: Sequence[str] = (), network: bool = False) -> list[str]:
    """Return the bubblewrap command line (up to and including ``--``) for one call.

    Namespaces: PID, IPC, UTS, cgroup, network (unless ``network``: the call asked for it and
    ``[exec] network`` allows it), and a user
    namespace when flowyard is not root. The system directories and
    :func:`readonly_paths` (the interpreters' prefixes, ``ro_binds``, ``extra_ro``) are bound
    read-only, ``/tmp`` is a private tmpfs, ``work_dir`` the only writable host directory.

    Parents of a bound path that are not bound themselves are created afresh (mode 0755) in
    the sandbox's own root: a 0700 ``/root`` does not hide ``/root/.venv`` from the account
    the command runs as. The bound directories keep their own modes, so a prefix that is
    itself private (0700) stays unreadable for that account.

    Raises:
        ToolError: an ``ro_binds`` entry does not exist.
    """
    assert settings.bwrap is not None
    args = [settings.bwrap, "--die-with-parent", "--new-session", "--unshare-pid",
            "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
    if not network:
        args.append("--unshare-net")
    if os.geteuid() != 0:
        args.append("--unshare-user")
    bound: list[str] = []
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
            bound.append(path)
    args += ["--perms", "0755", "--dir", "/etc"]
    for path in _ETC_FILES:
        args += ["--ro-bind-try", path, path]
    args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
    created: set[str] = set()

    def bind(path: str, mode: str) -> None:
        for parent in _ancestors(path):
            if parent in created or _covered(parent, bound) or parent in ("/etc",):
                continue
            args.extend(["--perms", "0755", "--dir", parent])
            created.add(parent)
        args.extend([mode, path, path])
        bound.append(path)

    for path in readonly_paths(settings, interpreters, extra_ro):
        if not _covered(path, bound):
            bind(path, "--ro-bind")
    bind(os.path.realpath(work_dir), "--bind")
    args += ["--chdir", os.path.realpath(work_dir), "--"]
    return args


async def _probe(key: tuple[Any, ...], argv: Sequence[str], what: str, cannot: str
                 ) -> tuple[bool, str]:
    """Run ``argv`` (a launcher running ``true``) once per process and ``key``; return
    ``(True, "")`` when it exits with 0, else ``(False, reason)``.
    """
    if key in _PROBES:
        return _PROBES[key]
    try:
        with anyio.fail_after(20):
            done = await anyio.run_process(list(argv), check=False,
                                           env={"PATH": "/usr/bin:/bin"})
    except TimeoutError:
        outcome = (False, f"the {what} probe did not finish within 20 s")
    except OSError as exc:
        outcome = (False, f"cannot start the {what} probe: {exc}")
    else:
        if done.returncode == 0:
            outcome = (True, "")
        else:
            detail = done.stderr.decode("utf-8", "replace").strip()[-500:]
            outcome = (False, f"{cannot} (exit {done.returncode}): {detail}")
    _PROBES[key] = outcome
    return outcome


async def probe_bubblewrap(settings: ExecSettings) -> tuple[bool, str]:
    """Check that bubblewrap exists and can create its namespaces here (result cached).

    Returns:
        ``(True, "")`` when a trivial command ran in the sandbox, else ``(False, reason)``.
    """
    if not settings.bwrap:
        return False, "bubblewrap (bwrap) is not installed"
    if not (os.path.isfile(settings.bwrap) and os.access(settings.bwrap, os.X_OK)):
        return False, f"bubblewrap not found at {settings.bwrap}"
    key = ("bubblewrap", settings.bwrap, os.geteuid(), LAUNCHER_PYTHON)
    if key in _PROBES:
        return _PROBES[key]
    work = tempfile.mkdtemp(prefix="flowyard-exec-probe-")
    try:
        argv = [*bubblewrap_args(settings, work), *_launcher_argv(settings, work, None,
                                                                  ["true"])]
        return await _probe(key, argv, "bubblewrap", "bubblewrap cannot create a sandbox here")
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def probe_landlock(settings: ExecSettings) -> tuple[bool, str]:
    """Check that the launcher can confine a process with Landlock here (result cached).

    Landlock needs Linux >= 5.13 with the LSM enabled (``lsm=...,landlock``), and a seccomp
    policy that allows its three system calls.

    Returns:
        ``(True, "")`` when a trivial command ran confined, else ``(False, reason)``.
    """
    key = ("landlock", os.geteuid(), LAUNCHER_PYTHON)
    if key in _PROBES:
        return _PROBES[key]
    work = tempfile.mkdtemp(prefix="flowyard-exec-probe-")
    try:
        # Only what `true` needs: the probe must not depend on (or fail for) ro_binds.
        readable = [*(p for p in _SYSTEM_DIRS if os.path.lexists(p)), *_ETC_FILES]
        argv = _launcher_argv(settings, work, None, ["true"], confine="landlock",
                              readable=readable)
        return await _probe(key, argv, "Landlock", "Landlock cannot confine a process here")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _landlock_readable(settings: ExecSettings, interpreters: Sequence[str] = (),
                       extra_ro: Sequence[str] = ()) -> list[str]:
    """What a Landlock-confined command may read: the same as bubblewrap binds, plus the
    host's ``/proc`` (there is no private one).

    Raises:
        ToolError: an ``ro_binds`` or ``extra_ro`` entry does not exist.
    """
    return [*(p for p in _SYSTEM_DIRS if os.path.lexists(p)), *_ETC_FILES,
            *_LANDLOCK_KERNEL_FILES, *readonly_paths(settings, interpreters, extra_ro)]


def _launcher_argv(settings: ExecSettings, cwd: str, account: tuple[int, int] | None,
                   argv: Sequence[str], env_names: Sequence[str] = ("PATH",), *,
                   confine: str = "-", readable: Sequence[str] = (), reap: bool = False
                   ) -> list[str]:
    uid, gid = (str(account[0]), str(account[1])) if account is not None else ("-", "-")
    limits = ",".join(f"{name}={value}" for name, value in settings.limits().items())
    return [LAUNCHER_PYTHON, "-I", "-S", "-c", _LAUNCHER, cwd, uid, gid, limits,
            ",".join(sorted(env_names)), confine, "reap" if reap else "-", *readable, "--",
            *argv]


# ----------------------------------------------------------------------------- running


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _descendants(root: int) -> tuple[list[int], int]:
    """PIDs of every live process below ``root`` (by the parent PIDs in ``/proc/*/stat``) and
    of every process in ``root``'s session or process group, ``root`` excluded; and the number
    of dead ones (zombies) among them not yet reaped.
    """
    parents: dict[int, list[int]] = {}
    found: set[int] = set()
    zombies: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        pid, ppid, pgrp, session = int(entry), int(fields[1]), int(fields[2]), int(fields[3])
        if fields[0] == b"Z":
            zombies.add(pid)  # dead, waiting to be reaped
        parents.setdefault(ppid, []).append(pid)
        if root in (pgrp, session) and pid != root:
            found.add(pid)
    pending = [root]
    while pending:
        for child in parents.get(pending.pop(), ()):
            if child not in found:
                found.add(child)
                pending.append(child)
    found.discard(root)
    return sorted(found - zombies), len(found & zombies)


def _kill_tree(pid: int) -> None:
    """Kill (SIGKILL) every process below the launcher ``pid`` and its process group, the
    launcher last: it is a child subreaper (outside bubblewrap), so orphans of the processes
    killed first are re-parented to it and found by the next round; inside bubblewrap,
    killing it ends the sandbox's PID namespace.
    """
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        victims, dead = _descendants(pid)
        if not victims and not dead:
            break
        # Killed processes stay counted (RLIMIT_NPROC) until reaped: give the launcher, their
        # subreaper, time to reap them rather than orphaning them to init by killing it now.
        time.sleep(0.002)
        for victim in victims:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
            except PermissionError:
                pass  # not ours to kill (another account's process that reused the PID)
    _kill_group(pid)


async def _drain(stream: Any, buffer: bytearray, cap: int, flags: dict[str, bool], key: str
                 ) -> None:
    try:
        async for chunk in stream:
            room = cap - len(buffer)
            if room > 0:
                buffer.extend(chunk[:room])
            if len(chunk) > max(room, 0):
                flags[key] = True
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        pass


@attrs.frozen
class PythonChoice:
    """The interpreter python.run uses for a call.

    Attributes:
        path: the interpreter (one of ``[exec] python``).
        version: its version (``"3.11.2"``) when it was probed, else None.
        skipped: ``(path, reason)`` of earlier candidates the account could not run.
    """

    path: str
    version: str | None = None
    skipped: tuple[tuple[str, str], ...] = ()


class Sandbox:
    """Runs commands under one :class:`ExecSettings`.

    Args:
        settings: the validated configuration.
    """

    def __init__(self, settings: ExecSettings) -> None:
        self.settings = settings

    def _account(self) -> tuple[int, int] | None:
        if os.geteuid() != 0 or not self.settings.user:
            return None
        try:
            entry = pwd.getpwnam(self.settings.user)
        except KeyError:
            raise ToolError(f"[exec] user {self.settings.user!r} does not exist on this "
                            f"machine") from None
        return entry.pw_uid, entry.pw_gid

    def account_name(self) -> str:
        """The name of the account commands run as (``[exec] user`` when flowyard is root and
        it is set, else flowyard's own account; the uid as text when it has no name).

        Raises:
            ToolError: the configured user does not exist.
        """
        account = self._account()
        uid = account[0] if account is not None else os.geteuid()
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return str(uid)

    def environment(self, extra: Mapping[str, str] | None, work_dir: str,
                    isolation: str = "bubblewrap") -> dict[str, str]:
        """The child's environment: allow-listed names, fixed ``env``, HOME/TMPDIR, ``extra``.

        ``HOME`` is the work directory; ``TMPDIR`` is ``/tmp`` in bubblewrap (a private
        tmpfs) and the work directory otherwise (no shared host ``/tmp``; under Landlock it
        is the only writable place).

        Raises:
            ToolError: an ``extra`` name is not a valid variable name.
        """
        env = {name: os.environ[name] for name in self.settings.env_allow if name in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.update(self.settings.env)
        env["HOME"] = work_dir
        env["TMPDIR"] = "/tmp" if isolation == "bubblewrap" else work_dir
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        for name, value in (extra or {}).items():
            if not _ENV_NAME.match(name) or "\0" in value:
                raise ToolError(f"invalid environment variable {name!r}")
            env[name] = value
        return env

    async def resolve_isolation(self, requested: str | None,
                                warn: Callable[[str], None] | None = None) -> str:
        """Decide ``"bubblewrap"``, ``"landlock"`` or ``"none"`` for a call that asks for
        ``requested``.

        Args:
            requested: the call's (or step's) level, None when it asks for nothing.
            warn: unused, kept for callers of earlier versions (nothing falls back silently
                any more: a weaker level is chosen explicitly and announced by
                :meth:`announce`).

        Returns:
            ``"bubblewrap"`` for ``auto``/``required``; ``"landlock"`` or ``"none"`` only
            when that level is chosen explicitly (configuration or call).

        Raises:
            ToolError: ``auto``/``required`` and bubblewrap is missing or cannot create
                namespaces here, or ``landlock`` and Landlock is unavailable; the message
                says why, how to install bubblewrap and how to opt out explicitly.
        """
        level = strictest_isolation(self.settings.isolation, requested)
        if level == "none":
            return "none"
        if level == "landlock":
            confined, why_not = await probe_landlock(self.settings)
            if not confined:
                raise ToolError(f"isolation landlock was chosen but Landlock is unavailable: "
                                f"{why_not}; refusing to run unconfined: {INSTALL_HINT}")
            return "landlock"
        usable, reason = await probe_bubblewrap(self.settings)
        if usable:
            return "bubblewrap"
        raise ToolError(f"isolation is required but unavailable (isolation {level}, no "
                        f"sandbox): {reason}; refusing to run unsandboxed: {INSTALL_HINT}")

    def announce(self, tool: str, isolation: str) -> str | None:
        """Say on flowyard's standard error, for one call, that it runs with less than the
        bubblewrap sandbox (one line, every call, not only in the run's log).

        Args:
            tool: the tool's name, e.g. ``"shell.run"``.
            isolation: the call's level from :meth:`resolve_isolation`.

        Returns:
            The line written, or None for ``"bubblewrap"`` (nothing is written).
        """
        if isolation == "bubblewrap":
            return None
        what = {
            "landlock": "Landlock only: writes confined to the work directory, but the host's "
                        "network and process list are reachable",
            "none": "NO sandbox: the command sees everything its account can read and write, "
                    "and the network",
        }[isolation]
        line = (f"flowyard-exec: warning: {tool} runs unsandboxed with isolation {isolation} "
                f"([exec] isolation = {self.settings.isolation!r}; {what}); install "
                f"bubblewrap and use isolation \"auto\" for the sandbox")
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
        return line

    async def resolve_python(self, isolation: str, warn: Callable[[str], None] | None = None
                             ) -> PythonChoice:
        """Choose python.run's interpreter: the first of ``[exec] python`` that the account
        the code runs as can start under ``isolation`` (probed once per process by starting
        it through the launcher; a single configured interpreter is used without a probe).

        Args:
            isolation: the call's level from :meth:`resolve_isolation`.
            warn: called with a message when an earlier candidate was skipped (the code then
                runs without the packages of the skipped interpreter's environment).

        Raises:
            ToolError: no candidate can be started by that account; the message names each
                with its reason and the ways out.
        """
        candidates = self.settings.python
        if len(candidates) == 1:
            return PythonChoice(candidates[0])
        skipped: list[tuple[str, str]] = []
        for python in candidates:
            usable, detail = await self._probe_python(python, isolation)
            if usable:
                choice = PythonChoice(python, detail, tuple(skipped))
                if skipped and warn is not None:
                    warn(f"{self._skipped_text(skipped, isolation)}; using {python} (Python "
                         f"{detail}) instead: packages installed only in the skipped "
                         f"interpreter's environment are not importable")
                return choice
            skipped.append((python, detail))
        ways = ["set [exec] python to an interpreter that account can execute"]
        if isolation != "bubblewrap":
            ways.insert(0, "install bubblewrap (the sandbox shows the interpreter's prefix "
                           "to the account even below a private /root)")
        if self._account() is not None:
            ways.append("set [exec] user = \"\" to run the code as root (only for code you "
                        "trust)")
        raise ToolError(f"python.run: no interpreter can be started: "
                        f"{self._skipped_text(skipped, isolation)}; " + ", or ".join(ways))

    def _skipped_text(self, skipped: Sequence[tuple[str, str]], isolation: str) -> str:
        names = "; ".join(f"{path}: {reason}" for path, reason in skipped)
        return f"account {self.account_name()!r} cannot start (isolation {isolation}): {names}"

    async def _probe_python(self, python: str, isolation: str) -> tuple[bool, str]:
        """``(True, version)`` when the account can start ``python`` under ``isolation``
        with the modules python.run's runner needs, else ``(False, reason)``; cached.
        """
        key = (python, isolation, self._account(), self.settings.bwrap, LAUNCHER_PYTHON)
        if key in _PYTHON_PROBES:
            return _PYTHON_PROBES[key]
        if not os.path.exists(python):
            return False, "not found"
        work = os.path.realpath(tempfile.mkdtemp(prefix="flowyard-exec-probe-",
                                                 dir=self.settings.temp_root))
        try:
            account = self._account()
            if account is not None:
                os.chown(work, *account)
            outcome = await self.run([python, "-I", "-c", _PYTHON_PROBE], work_dir=work,
                                     isolation=isolation, timeout=20, interpreters=[python])
        finally:
            shutil.rmtree(work, ignore_errors=True)
        version = outcome.stdout.strip()
        if outcome.exit_code == 0 and re.fullmatch(r"\d+\.\d+\.\d+", version):
            result = (True, version)
        elif outcome.timed_out:
            result = (False, "did not start within 20 s")
        else:
            result = (False, f"exit code {outcome.exit_code}: "
                             f"{outcome.stderr.strip()[-300:] or '(no output)'}")
        _PYTHON_PROBES[key] = result
        return result

    def make_work_dir(self) -> tuple[str, bool]:
        """Return ``(path, temporary)``: the configured work dir, or a new temporary one."""
        account = self._account()
        if self.settings.work_dir:
            path = os.path.realpath(self.settings.work_dir)
            os.makedirs(path, exist_ok=True)
            temporary = False
        else:
            path = os.path.realpath(tempfile.mkdtemp(prefix="flowyard-exec-",
                                                     dir=self.settings.temp_root))
            temporary = True
        if account is not None:
            os.chown(path, *account)
        return path, temporary

    async def run(
        self,
        argv: Sequence[str],
        *,
        work_dir: str,
        isolation: str,
        timeout: float,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        extra_ro: Sequence[str] = (),
        interpreters: Sequence[str] = (),
        network: bool = False,
    ) -> ProcessOutcome:
        """Run ``argv`` in ``work_dir`` and collect its outcome.

        Args:
            argv: program and arguments (argv[0] looked up on the child's PATH).
            work_dir: absolute host path of the directory the command runs in (from
                :meth:`make_work_dir`); it is also the child's ``HOME`` and the only
                writable host path under bubblewrap and Landlock.
            isolation: ``"bubblewrap"``, ``"landlock"`` or ``"none"`` (from
                :meth:`resolve_isolation`).
            timeout: wall-clock seconds; then the process group is killed (SIGKILL).
            env: extra environment variables, added over the allow-listed and fixed ones
                (see :meth:`environment`).
            stdin: bytes written to the command's standard input, which is then closed
                (None: standard input is ``/dev/null``).
            extra_ro: more host paths visible read-only in the sandbox.
            interpreters: interpreters the command starts, whose prefixes are made visible
                (bound in bubblewrap, readable under Landlock).
            network: share the host's network with the bubblewrap sandbox (default False:
                ``--unshare-net``, only a loopback of its own). Landlock and none never
                isolate the network.

        Every process the command starts ends with the call, however it detached: in
        bubblewrap with the sandbox's PID namespace; otherwise the launcher is a child
        subreaper that kills the orphans, and flowyard sweeps the process tree below it.

        Raises:
            ToolError: the process could not be started; an ``ro_binds`` path is missing.
        """
        if isolation not in ISOLATION_RESULTS:
            raise ValueError(f"unknown isolation {isolation!r}; use one of {ISOLATION_RESULTS}")
        account = self._account()
        user = self.account_name()
        child_env = self.environment(env, work_dir, isolation)
        if isolation == "landlock":
            inner = _launcher_argv(self.settings, work_dir, account, argv, list(child_env),
                                   confine="landlock",
                                   readable=_landlock_readable(self.settings, interpreters,
                                                               extra_ro), reap=True)
        else:
            inner = _launcher_argv(self.settings, work_dir, account, argv, list(child_env),
                                   reap=isolation == "none")
        full = ([*bubblewrap_args(self.settings, work_dir, interpreters=interpreters,
                                  extra_ro=extra_ro, network=network), *inner]
                if isolation == "bubblewrap" else inner)
        cap = self.settings.max_output_bytes
        out, err = bytearray(), bytearray()
        flags = {"stdout": False, "stderr": False}
        timed_out = False
        started = time.monotonic()
        try:
            process = await anyio.open_process(
                full, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=work_dir, env=child_env,
                start_new_session=True)
        except OSError as exc:
            raise ToolError(f"cannot start {full[0]!r}: {exc.strerror or exc}") from exc
        try:
            drained = anyio.Event()
            remaining = [2]

            async def drain(stream: Any, buffer: bytearray, key: str) -> None:
                try:
                    await _drain(stream, buffer, cap, flags, key)
                finally:
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        drained.set()

            async def feed() -> None:
                assert process.stdin is not None and stdin is not None
                try:
                    await process.stdin.send(stdin)
                    await process.stdin.aclose()
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass

            async with anyio.create_task_group() as group:
                group.start_soon(drain, process.stdout, out, "stdout")
                group.start_soon(drain, process.stderr, err, "stderr")
                if stdin is not None:
                    group.start_soon(feed)
                with anyio.move_on_after(timeout) as scope:
                    await process.wait()
                timed_out = scope.cancelled_caught
                # Whatever is left (background children, setsid daemons) does not outlive the call.
                _kill_tree(process.pid)
                await process.wait()
                with anyio.move_on_after(2.0):
                    await drained.wait()
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                _kill_tree(process.pid)
                await process.aclose()
        code = process.returncode
        return ProcessOutcome(
            exit_code=code,
            signal=_signal_name(code, isolation),
            stdout=out.decode("utf-8", "replace"),
            stderr=err.decode("utf-8", "replace"),
            stdout_truncated=flags["stdout"],
            stderr_truncated=flags["stderr"],
            timed_out=timed_out,
            duration_s=round(time.monotonic() - started, 6),
            isolation=isolation,
            work_dir=work_dir,
            user=user,
        )

    def clamp_timeout(self, requested: float | None) -> float:
        """Return the call's timeout in seconds: ``requested`` or the default, at most max.

        Raises:
            ToolError: ``requested`` exceeds ``max_timeout``.
        """
        if requested is None:
            return self.settings.timeout
        if requested > self.settings.max_timeout:
            raise ToolError(f"timeout {requested} s exceeds the configured maximum "
                            f"{self.settings.max_timeout} s ([exec] max_timeout)")
        return float(requested)


def remove_work_dir(path: str) -> str | None:
    """Delete a temporary work directory; return an error message instead of raising."""
    try:
        shutil.rmtree(path)
    except OSError as exc:
        return f"could not remove temporary work directory {path}: {exc}"
    return None
