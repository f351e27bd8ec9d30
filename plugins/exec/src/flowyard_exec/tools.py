"""The ``shell.run`` and ``python.run`` tools."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flowyard import BaseTool, Config, ToolContext, ToolError, ToolInputError

from flowyard_exec.sandbox import ISOLATION_LEVELS, ExecSettings, Sandbox, remove_work_dir

__all__ = ["PythonRunTool", "ShellRunTool"]

_COMMON: dict[str, Any] = {
    "timeout": {"type": "number", "exclusiveMinimum": 0,
                "description": "Wall-clock limit in seconds; the whole process group is killed "
                               "when it passes (default from [exec] timeout)."},
    "isolation": {"enum": list(ISOLATION_LEVELS),
                  "description": "auto and required: the bubblewrap sandbox, or refuse; "
                                 "landlock: Landlock confinement only; none: no sandbox. A "
                                 "call can only make the configured level stricter."},
    "network": {"type": "boolean", "default": False,
                "description": "Give the sandbox the host's network (needs [exec] network = "
                               "true); without it the sandbox has no network."},
    "env": {"type": "object", "additionalProperties": {"type": "string"},
            "description": "Extra environment variables (the rest is scrubbed)."},
}


def _requested_isolation(arguments: Mapping[str, Any], context: ToolContext) -> str | None:
    step_level = context.extras.get("isolation") if context.extras else None
    if step_level is not None and step_level not in ISOLATION_LEVELS:
        raise ToolInputError(f"step isolation must be one of {ISOLATION_LEVELS}, got "
                             f"{step_level!r}")
    levels = [arguments.get("isolation"), step_level]
    chosen = None
    for level in levels:
        if level is not None and (chosen is None or ISOLATION_LEVELS.index(level)
                                  > ISOLATION_LEVELS.index(chosen)):
            chosen = level
    return chosen


def _announce(tool: _ExecTool, isolation: str, context: ToolContext) -> None:
    """Write the one-line warning of a call without the bubblewrap sandbox to standard error
    and to the run's log (nothing for ``bubblewrap``).
    """
    line = tool.sandbox.announce(tool.name, isolation)
    if line is not None:
        context.log(line, level="warning")


def _tail(text: str, size: int = 2000) -> str:
    text = text.strip()
    return text if len(text) <= size else "..." + text[-size:]


class _ExecTool(BaseTool):
    side_effects: tuple[str, ...] = ("process", "filesystem")
    idempotent = False

    def __init__(self, settings: ExecSettings | None = None) -> None:
        self.settings = settings or ExecSettings.from_section({})
        self.sandbox = Sandbox(self.settings)
        if self.settings.network:
            self.side_effects = ("process", "filesystem", "network")

    @classmethod
    def from_config(cls, config: Config) -> Any:
        """Build the tool from the ``[exec]`` section of ``config``.

        Raises:
            ConfigError: the section is invalid.
        """
        return cls(ExecSettings.from_section(config.section("exec")))

    def _network(self, arguments: Mapping[str, Any]) -> bool:
        """Whether the call gets the host's network (``network: true``, only when ``[exec]
        network = true`` allows it).

        Raises:
            ToolInputError: the call asks for the network and the configuration does not allow
                it.
        """
        if not arguments.get("network", False):
            return False
        if not self.settings.network:
            raise ToolInputError(f"{self.name}: network: true needs [exec] network = true",
                                 tool=self.name)
        return True

    def _cleanup(self, path: str, temporary: bool, context: ToolContext) -> None:
        if temporary:
            problem = remove_work_dir(path)
            if problem:
                context.log(problem, level="warning")


class ShellRunTool(_ExecTool):
    """``shell.run``: run a program from an argv list (a shell string only when allowed).

    Arguments: ``command`` (list of strings; a string only with ``shell: true`` and
    ``[exec] allow_shell = true``), ``stdin`` (text), ``env``, ``timeout`` (seconds),
    ``isolation``, ``network`` (the host's network in the sandbox; needs ``[exec] network``),
    ``check`` (raise on a non-zero exit or timeout). With ``[exec] allowed_commands`` the
    program is compared, and run, by real path.

    Returns:
        ``{"exit_code", "signal", "stdout", "stderr", "stdout_truncated", "stderr_truncated",
        "timed_out", "duration_s", "isolation", "work_dir", "user", "command"}``;
        ``isolation`` is ``"bubblewrap"``, ``"landlock"`` or ``"none"``, ``user`` the account
        the command ran as.

    Raises:
        ToolInputError: bad arguments (shell string not allowed, program not allowed by real
            path, ``network: true`` without ``[exec] network = true``).
        ToolError: no sandbox for the call's level (``auto``/``required`` without bubblewrap,
            ``landlock`` without Landlock); the program could not start; ``check``
            is set and the command failed or timed out.
    """

    name = "shell.run"
    #: egress-relevant arguments for the stack's egress guards (``[guards.egress]``)
    egress = {"command": "command"}
    description = ("Run a program with arguments in a sandboxed child process (private work "
                   "directory, resource limits, scrubbed environment, no network when "
                   "sandboxed) and return its exit code, stdout and stderr.")
    parameters = {
        "type": "object",
        "properties": {
            "command": {
                "anyOf": [
                    {"type": "array", "items": {"type": ["string", "number"]}, "minItems": 1},
                    {"type": "string", "minLength": 1},
                ],
                "description": "Program and arguments as a list, e.g. [\"ls\", \"-l\"] "
                               "(numbers are passed as their decimal text). A "
                               "single string is a shell command line, accepted only with "
                               "shell: true when the configuration allows shell strings.",
            },
            "shell": {"type": "boolean", "default": False,
                      "description": "Run command (a string) through /bin/sh -c."},
            "stdin": {"type": "string", "description": "Text written to standard input."},
            "check": {"type": "boolean", "default": False,
                      "description": "Fail the call on a non-zero exit code or a timeout."},
            **_COMMON,
        },
        "required": ["command"],
        "additionalProperties": False,
    }

    def _argv(self, arguments: Mapping[str, Any]) -> list[str]:
        command = arguments["command"]
        shell = arguments.get("shell", False)
        if isinstance(command, str):
            if not shell:
                raise ToolInputError(
                    "shell.run: command is a string; pass a list of arguments, or set "
                    "shell: true (needs [exec] allow_shell = true)", tool=self.name)
            if not self.settings.allow_shell:
                raise ToolInputError(
                    "shell.run: shell strings are disabled; set [exec] allow_shell = true to "
                    "allow them, or pass command as a list", tool=self.name)
            argv = ["/bin/sh", "-c", command]
        else:
            if shell:
                raise ToolInputError("shell.run: shell: true needs command as one string",
                                     tool=self.name)
            argv = [part if isinstance(part, str) else str(part) for part in command]
        for index, part in enumerate(argv):
            if "\0" in part:
                raise ToolInputError(f"shell.run: command[{index}] contains a NUL byte",
                                     tool=self.name)
        return argv

    def _allowed_program(self, argv: list[str], env: Mapping[str, str] | None) -> list[str]:
        """Check ``argv[0]`` against ``[exec] allowed_commands`` by real path and return the
        argv to run, its program replaced by that real path (so nothing is looked up again
        in the child). Allowed names are resolved on flowyard's ``PATH``, the program on the
        child's; a symlink named like an allowed program resolves to what it points at.

        Raises:
            ToolInputError: the program is not found, or its real path is not the real path
                of an allowed command.
        """
        allowed = self.settings.allowed_commands
        if not allowed:
            return argv
        own_path = self.sandbox.environment(None, "/")["PATH"]
        real_allowed = set()
        for entry in allowed:
            found = entry if os.path.isabs(entry) else shutil.which(entry, path=own_path)
            if found is not None and os.path.exists(found):
                real_allowed.add(os.path.realpath(found))
        program = argv[0]
        if "/" in program:
            found = program if os.path.isabs(program) else None
        else:
            found = shutil.which(program, path=self.sandbox.environment(env, "/")["PATH"])
        real = os.path.realpath(found) if found is not None else None
        if real is None or real not in real_allowed:
            shown = f" (real path {real})" if real is not None and real != program else ""
            raise ToolInputError(f"shell.run: program {program!r}{shown} is not in [exec] "
                                 f"allowed_commands {list(allowed)} (compared by real path; "
                                 f"relative paths are refused)", tool=self.name)
        return [real, *argv[1:]]

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Run the command; see the class docstring for arguments, result and errors."""
        argv = self._argv(arguments)
        program = self._allowed_program(argv, arguments.get("env"))
        network = self._network(arguments)
        timeout = self.sandbox.clamp_timeout(arguments.get("timeout"))
        isolation = await self.sandbox.resolve_isolation(
            _requested_isolation(arguments, context))
        _announce(self, isolation, context)
        stdin = arguments.get("stdin")
        work_dir, temporary = self.sandbox.make_work_dir()
        try:
            outcome = await self.sandbox.run(
                program, work_dir=work_dir, isolation=isolation, timeout=timeout,
                env=arguments.get("env"), network=network,
                stdin=stdin.encode("utf-8") if stdin is not None else None)
        finally:
            self._cleanup(work_dir, temporary, context)
        result = outcome.as_dict()
        result["command"] = argv
        if arguments.get("check"):
            if outcome.timed_out:
                raise ToolError(f"shell.run: {argv[0]!r} timed out after {timeout} s "
                                f"(process group killed)", tool=self.name)
            if outcome.exit_code != 0:
                raise ToolError(f"shell.run: {argv[0]!r} exited with {outcome.exit_code}: "
                                f"{_tail(outcome.stderr)}", tool=self.name)
        return result


# python.run's runner: python -I -c _RUNNER <script> <context.json> <result.json>
_RUNNER = r"""
import json, sys, traceback
script, context_path, result_path = sys.argv[1:4]
sys.argv = [script]

def _write(payload):
    with open(result_path, "w", encoding="utf-8") as fh:
        fh.write(payload)

with open(context_path, encoding="utf-8") as fh:
    context = json.load(fh)
with open(script, encoding="utf-8") as fh:
    source = fh.read()
namespace = {"__name__": "__main__", "__file__": script, "__builtins__": __builtins__,
             "context": context}
try:
    exec(compile(source, script, "exec"), namespace)
except SystemExit as exc:
    if exc.code not in (None, 0):
        _write(json.dumps({"ok": False, "error": {"type": "SystemExit",
                                                   "message": "exit code %r" % (exc.code,),
                                                   "traceback": ""}}))
        raise
except BaseException as exc:
    text = traceback.format_exc()
    _write(json.dumps({"ok": False, "error": {"type": type(exc).__name__, "message": str(exc),
                                               "traceback": text}}))
    sys.stderr.write(text)
    sys.exit(1)
try:
    payload = json.dumps({"ok": True, "result": namespace.get("result")}, allow_nan=False)
except (TypeError, ValueError) as exc:
    _write(json.dumps({"ok": False, "error": {"type": "ResultNotJSON",
        "message": "the script's result is not JSON-serialisable: %s" % (exc,),
        "traceback": ""}}))
    sys.exit(1)
_write(payload)
"""

def _write_new(path: str, text: str) -> None:
    """Create ``path`` afresh (never through a symlink or into an existing file) with mode
    0644, so the account the code runs as can read it but not change it.
    """
    if os.path.lexists(path):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fd, 0o644)
        fh.write(text)


class PythonRunTool(_ExecTool):
    """``python.run``: run Python code or a script file with a ``context`` dict in and the
    JSON value of its ``result`` variable out (like Gleitzeit's ``execute_python``).

    The code runs in a separate interpreter process under the same limits and sandbox as
    ``shell.run``; its safety comes from that OS-level isolation, not from filtering Python.

    Arguments: ``code`` (source text) or ``script`` (path of a ``.py`` file inside
    ``[exec] script_dir``), ``context`` (JSON object, visible to the code as ``context``),
    ``env``, ``timeout`` (seconds), ``isolation``, ``network``.

    The interpreter is the first of ``[exec] python`` that the account the code runs as can
    start (flowyard's own, else the system's ``python3``; see
    :meth:`~flowyard_exec.sandbox.Sandbox.resolve_python`); a skipped one is logged as a
    warning and the one used is in the result.

    Returns:
        ``{"result", "stdout", "stderr", "stdout_truncated", "stderr_truncated", "exit_code",
        "duration_s", "isolation", "user", "python"}``; ``result`` is the code's ``result``
        variable (None when it set none), ``python`` the interpreter's path.

    Raises:
        ToolInputError: neither or both of code/script; a script outside ``script_dir``;
            a context that is not JSON-serialisable.
        ToolError: the code raised (type, message and traceback in the message), timed out,
            was killed by a limit, or set a result that is not JSON-serialisable; there is
            no sandbox for the call's level (``auto`` without bubblewrap); no configured
            interpreter can be started by the account the code runs as.
    """

    name = "python.run"
    #: runs arbitrary code: the egress guards allow it only with ``allow_code``
    egress = {"code": "code", "script": "code"}
    description = ("Run Python code (or a script file) in a sandboxed interpreter process. The "
                   "code sees a dict named `context` and returns data by assigning a "
                   "JSON-serialisable value to a variable named `result`.")
    parameters = {
        "type": "object",
        "properties": {
            "code": {"type": "string", "minLength": 1,
                     "description": "Python source to run."},
            "script": {"type": "string", "minLength": 1,
                       "description": "Path of a .py file inside the configured script "
                                      "directory (relative paths are taken from it)."},
            "context": {"type": "object",
                        "description": "JSON data available to the code as `context`."},
            **_COMMON,
        },
        "oneOf": [{"required": ["code"]}, {"required": ["script"]}],
        "additionalProperties": False,
    }

    def _source(self, arguments: Mapping[str, Any]) -> tuple[str, str]:
        if "code" in arguments:
            return arguments["code"], "<code>"
        root = Path(self.settings.script_dir).resolve()
        raw = arguments["script"]
        if "\0" in raw:
            raise ToolInputError("python.run: script path contains a NUL byte", tool=self.name)
        path = (root / raw).resolve()
        if not path.is_relative_to(root):
            raise ToolInputError(f"python.run: script {raw!r} is outside the script directory "
                                 f"{root} ([exec] script_dir)", tool=self.name)
        if not path.is_file():
            raise ToolInputError(f"python.run: script {raw!r} is not a file in {root}",
                                 tool=self.name)
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ToolInputError(f"python.run: cannot read script {raw!r}: {exc}",
                                 tool=self.name) from exc

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Run the code; see the class docstring for arguments, result and errors."""
        source, origin = self._source(arguments)
        try:
            context_json = json.dumps(arguments.get("context", {}), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ToolInputError(f"python.run: context is not JSON-serialisable: {exc}",
                                 tool=self.name) from exc
        network = self._network(arguments)
        timeout = self.sandbox.clamp_timeout(arguments.get("timeout"))
        isolation = await self.sandbox.resolve_isolation(
            _requested_isolation(arguments, context))
        _announce(self, isolation, context)
        python = await self.sandbox.resolve_python(
            isolation,
            warn=lambda message: context.log(f"{self.name}: {message}", level="warning"))
        work_dir, temporary = self.sandbox.make_work_dir()
        # Unique names: calls sharing a fixed work dir never touch each other's files.
        tag = secrets.token_hex(8)
        script_path = os.path.join(work_dir, f"__flowyard_main_{tag}__.py")
        context_path = os.path.join(work_dir, f"__flowyard_context_{tag}__.json")
        result_path = os.path.join(work_dir, f"__flowyard_result_{tag}__.json")
        try:
            _write_new(script_path, source)
            _write_new(context_path, context_json)
            argv = [python.path, "-I", "-c", _RUNNER, script_path, context_path, result_path]
            outcome = await self.sandbox.run(argv, work_dir=work_dir, isolation=isolation,
                                             timeout=timeout, env=arguments.get("env"),
                                             interpreters=[python.path], network=network)
            payload = self._read_result(result_path)
        finally:
            if not temporary:
                for path in (script_path, context_path, result_path):
                    if os.path.lexists(path):
                        os.unlink(path)
            self._cleanup(work_dir, temporary, context)
        where = "code" if origin == "<code>" else f"script {origin}"
        if outcome.timed_out:
            raise ToolError(f"python.run: {where} timed out after {timeout} s (process group "
                            f"killed)", tool=self.name)
        if payload is None:
            detail = f"signal {outcome.signal}" if outcome.signal else (
                f"exit code {outcome.exit_code}")
            hint = ""
            if outcome.exit_code == 127 and "cannot execute" in outcome.stderr:
                hint = (f" (hint: the interpreter {python.path} must be readable and "
                        f"executable by the account the code runs as, {outcome.user!r}; list "
                        f"fallbacks in [exec] python, install bubblewrap, or see [exec] user)")
            raise ToolError(f"python.run: {where} ended without a result ({detail}); stderr: "
                            f"{_tail(outcome.stderr)}{hint}", tool=self.name)
        if not payload.get("ok"):
            error = payload.get("error") or {}
            note = ""
            if python.skipped and error.get("type") in ("ModuleNotFoundError", "ImportError"):
                remedy = ("install bubblewrap or " if outcome.isolation != "bubblewrap"
                          else "")
                note = (f"\n(note: the code ran with {python.path} because account "
                        f"{outcome.user!r} cannot start {python.skipped[0][0]}; {remedy}see "
                        f"[exec] python in docs/plugins/exec.md)")
            raise ToolError(f"python.run: {where} raised {error.get('type')}: "
                            f"{error.get('message')}\n{_tail(error.get('traceback', ''))}{note}",
                            tool=self.name)
        return {
            "result": payload.get("result"),
            "stdout": outcome.stdout,
            "stderr": outcome.stderr,
            "stdout_truncated": outcome.stdout_truncated,
            "stderr_truncated": outcome.stderr_truncated,
            "exit_code": outcome.exit_code,
            "duration_s": outcome.duration_s,
            "isolation": outcome.isolation,
            "user": outcome.user,
            "python": python.path,
        }

    def _read_result(self, path: str) -> dict[str, Any] | None:
        """Read the runner's result file, which the code itself could have tampered with:
        never through a symlink, only a regular file with one link (no hard link to a file
        elsewhere).
        """
        limit = self.settings.max_output_bytes * 10
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ToolError(f"python.run: cannot read the script's result (was it replaced by "
                            f"a link?): {exc.strerror}", tool=self.name) from exc
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                raise ToolError("python.run: the result file was replaced by the code (not a "
                                "regular file with a single link); refusing to read it",
                                tool=self.name)
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise ToolError(f"python.run: the script's result is larger than {limit} bytes",
                            tool=self.name)
        try:
            payload = json.loads(data)
        except ValueError as exc:
            raise ToolError(f"python.run: the result file was not valid JSON: {exc}",
                            tool=self.name) from exc
        if not isinstance(payload, dict):
            raise ToolError("python.run: the result file was overwritten by the script",
                            tool=self.name)
        return payload
