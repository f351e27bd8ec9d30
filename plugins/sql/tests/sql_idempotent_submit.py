"""A submitting process for the idempotency test (run as a script, not collected by pytest).

Usage: python sql_idempotent_submit.py DB_FILE EFFECTS_FILE KEY GO_FILE

Opens a stack on the SQLite file DB_FILE with a tool ``effects.append`` that appends one line
to EFFECTS_FILE (the side effect counted by the test) and then sleeps 1 s; waits until GO_FILE
exists, so that every process submits at the same moment; then runs a one-step workflow with
the idempotency key KEY and prints the run result as JSON on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import anyio
import flowyard_sql.plugin
from flowyard.hookspecs import hookimpl
from flowyard.stack import Stack
from flowyard.tools import tool


def main(db: str, effects: str, key: str, go_file: str) -> None:
    @tool(name="effects.append", side_effects=["filesystem"])
    async def append(text: str) -> dict[str, Any]:
        """Append one line to the effects file, wait 1 s, return the line.

        Args:
            text: the line.
        """
        with open(effects, "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()} {text}\n")
        await anyio.sleep(1.0)
        return {"text": text}

    class Plugin:
        @hookimpl
        def register_tools(self, register: Any, config: Any) -> None:
            register("effects.append", append)

    stack = Stack([("effects", Plugin()), ("sql", flowyard_sql.plugin)],
                  config={"storage": {"url": f"sqlite:///{db}"}})
    workflow = {"name": "submit", "inputs": {"text": {"type": "string"}},
                "steps": [{"id": "append", "uses": "effects.append",
                           "with": {"text": "${inputs.text}"}}],
                "outputs": {"text": "${append.text}"}}

    async def run() -> Any:
        async with stack:
            while not os.path.exists(go_file):
                time.sleep(0.005)
            return await stack.run(workflow, {"text": "once"}, idempotency_key=key)

    result = anyio.run(run)
    print(json.dumps({"run_id": result.run_id, "status": result.status,
                      "outputs": result.outputs}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
