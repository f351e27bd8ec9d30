"""flowyard-exec: the ``shell.run`` and ``python.run`` tools.

Commands run in a child process with a wall-clock timeout that kills the whole process group,
``setrlimit`` resource limits (CPU seconds, address space, processes, file size, open files),
an allow-listed environment and a private working directory; inside a bubblewrap sandbox (no
network, read-only system, writable work directory) when ``bwrap`` is installed and works.
See ``docs/plugins/exec.md``.
"""

from flowyard_exec.sandbox import ExecSettings, ProcessOutcome, Sandbox, probe_bubblewrap
from flowyard_exec.tools import PythonRunTool, ShellRunTool

__all__ = [
    "ExecSettings",
    "ProcessOutcome",
    "PythonRunTool",
    "Sandbox",
    "ShellRunTool",
    "probe_bubblewrap",
]
