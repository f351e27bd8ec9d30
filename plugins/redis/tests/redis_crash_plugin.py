"""A tiny flowyard plugin for the crash test: a tool that counts its side effects in files.

Not collected by pytest. The crash test copies this module into a temporary site directory
next to a generated ``.dist-info`` whose entry point (group ``flowyard``) names it, and puts
that directory on ``PYTHONPATH``: a real ``flowyard run`` subprocess then discovers it like
any installed plugin.

``crashtest.work(label, value, sleep)``: appends one line ``<idempotency key>`` to
``$CRASHTEST_DIR/<step key>.effects`` (the side effect, before any waiting, so a killed call
leaves its mark), sleeps ``sleep`` seconds, and returns a value computed from its arguments
only, so an interrupted and an uninterrupted run must produce equal outputs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import anyio
from flowyard import Config, Register, ToolContext, hookimpl, tool


@tool(name="crashtest.work", side_effects=["filesystem"])
async def work(label: str, value: Any, sleep: float, context: ToolContext) -> dict[str, Any]:
    """Record one side effect for this step key, wait, and return a value derived from the input.

    Args:
        label: a name for the result.
        value: any JSON value; it is hashed into the result.
        sleep: seconds to wait after recording the side effect.
    """
    directory = Path(os.environ["CRASHTEST_DIR"])
    safe = context.step_key.replace("/", "_")
    with open(directory / f"{safe}.effects", "a", encoding="utf-8") as fh:
        fh.write(f"{context.idempotency_key}\n")
        fh.flush()
        os.fsync(fh.fileno())
    await anyio.sleep(sleep)
    digest = hashlib.sha256(repr((label, value)).encode()).hexdigest()[:16]
    return {"label": label, "value": value, "digest": digest}


@hookimpl
def register_tools(register: Register, config: Config) -> None:
    """Register ``crashtest.work``."""
    register("crashtest.work", work)
