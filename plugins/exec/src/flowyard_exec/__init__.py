"""flowyard-exec: the ``shell.run`` and ``python.run`` tools.

Commands run in a child process with a wall-clock timeout that kills the whole process group,
``setrlimit`` resource limits (CPU seconds, address space, processes, file size, open files),
an allow-listed environment, a private working directory and, when flowyard is root, the
``nobody`` account; inside a bubblewrap sandbox (no network, read-only system, writable work
directory) when ``bwrap`` is installed and works, else confined by Landlock when the kernel
has it.
See ``docs/plugins/exec.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public names, imported on first access so that importing the plugin module stays cheap.
_EXPORTS = {
    "ExecSettings": "flowyard_exec.sandbox",
    "ProcessOutcome": "flowyard_exec.sandbox",
    "PythonChoice": "flowyard_exec.sandbox",
    "PythonRunTool": "flowyard_exec.tools",
    "Sandbox": "flowyard_exec.sandbox",
    "ShellRunTool": "flowyard_exec.tools",
    "probe_bubblewrap": "flowyard_exec.sandbox",
    "probe_landlock": "flowyard_exec.sandbox",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    return getattr(importlib.import_module(module), name)
