"""A plugin of test tools for the Ray tests: imported by the driver (in code) and by the Ray
workers (``[ray] plugins = ["ray_tools"]``, this folder on their ``PYTHONPATH``).

Every tool records what it did in files under the ``marks`` argument's folder, so a test
counts side effects across processes and nodes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import anyio
import flowyard


def _mark(folder: str | None, name: str, text: str = "") -> None:
    if folder:
        path = Path(folder) / name
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")


def _where() -> dict[str, Any]:
    node = ""
    try:
        import ray

        if ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return {"pid": os.getpid(), "node_id": node}


@flowyard.tool(name="t.add")
async def add(a: int, b: int, marks: str | None = None, key: str = "add") -> dict[str, Any]:
    """Return ``{"sum": a + b, "pid", "node_id"}`` and mark ``key`` once per call.

    Args:
        a: first number.
        b: second number.
        marks: folder of the call marks (None: none written).
        key: the mark's file name.
    """
    _mark(marks, key, str(os.getpid()))
    return {"sum": a + b, **_where()}


@flowyard.tool(name="t.flaky")
async def flaky(marks: str, fail_times: int = 1) -> dict[str, Any]:
    """Fail (a retriable ToolError) the first ``fail_times`` calls, then return
    ``{"calls": n}``.

    Args:
        marks: folder of the call counter.
        fail_times: how many calls fail first.
    """
    _mark(marks, "flaky")
    calls = len((Path(marks) / "flaky").read_text().splitlines())
    if calls <= fail_times:
        raise flowyard.ToolError(f"flaky call {calls} fails", retriable=True)
    return {"calls": calls}


@flowyard.tool(name="t.order")
async def order(marks: str, name: str, hold_s: float = 0.0) -> str:
    """Append ``name`` to the ``order`` mark (the order steps started in), wait ``hold_s``
    seconds, return ``name``.

    Args:
        marks: folder of the marks.
        name: what to record.
        hold_s: seconds to hold the slot.
    """
    _mark(marks, "order", name)
    if hold_s:
        await anyio.sleep(hold_s)
    return name


@flowyard.tool(name="t.slow")
async def slow(marks: str, name: str, release: str | None = None,
               timeout_s: float = 60.0) -> dict[str, Any]:
    """Mark ``started-<name>`` with this process's pid and node, then wait until the file
    ``release`` exists (or ``timeout_s`` seconds pass: a ToolError); mark ``done-<name>``,
    or ``cancelled-<name>`` when the call is cancelled.

    Args:
        marks: folder of the marks.
        name: the call's name in the marks.
        release: a file whose existence lets the call finish (None: finish at once).
        timeout_s: seconds to wait for ``release``.
    """
    where = _where()
    _mark(marks, f"started-{name}", f"{where['pid']} {where['node_id']}")
    deadline = time.monotonic() + timeout_s
    try:
        while release and not os.path.exists(release):
            if time.monotonic() > deadline:
                raise flowyard.ToolError(f"{name}: {release} did not appear in {timeout_s} s")
            await anyio.sleep(0.05)
    except anyio.get_cancelled_exc_class():
        _mark(marks, f"cancelled-{name}", f"{where['pid']} {where['node_id']}")
        raise
    _mark(marks, f"done-{name}", f"{where['pid']} {where['node_id']}")
    return {"name": name, **where}


@flowyard.hookimpl
def register_tools(register: flowyard.Register, config: flowyard.Config) -> None:
    """Register the test tools."""
    for fn in (add, flaky, order, slow):
        register(fn.name, fn)
