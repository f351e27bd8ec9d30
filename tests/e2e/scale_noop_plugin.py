"""A test-only plugin for the scale-out simulation: one user tool, ``scale.noop``, that does
nothing but record that it ran.

Each call appends one line ``"<i> <pid>\\n"`` to the file named by the environment variable
``FLOWYARD_SCALE_EXECUTIONS_FILE`` with a single ``write`` on a descriptor opened with
``O_APPEND`` (the kernel appends each such write whole, so lines of concurrent worker processes
never interleave), then returns ``i``. The lines count the executions of each task's step
(:mod:`scale_support` makes this module discoverable to ``flowyard worker`` processes through a
``.dist-info`` written at test time; it is installed nowhere).
"""

from __future__ import annotations

import os
from typing import Any

import flowyard

#: The environment variable naming the executions file.
EXECUTIONS_ENV = "FLOWYARD_SCALE_EXECUTIONS_FILE"


@flowyard.tool(name="scale.noop")
async def noop(i: int) -> int:
    """Record one execution of task ``i`` and return ``i``.

    Args:
        i: the task's number (0-based).

    Raises:
        RuntimeError: the environment variable naming the executions file is not set.
        OSError: the file cannot be opened or written.
    """
    path = os.environ.get(EXECUTIONS_ENV)
    if not path:
        raise RuntimeError(f"scale.noop needs the environment variable {EXECUTIONS_ENV}")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{i} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return i


@flowyard.hookimpl
def register_tools(register: Any, config: Any) -> None:
    """Register ``scale.noop``."""
    register("scale.noop", noop)
