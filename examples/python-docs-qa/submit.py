"""Run the python-docs-qa workflow through flowyard-server: register it, submit it as a task,
stream its events live and print its outputs.

Start the service first (see docs/plugins/server.md, "The python-docs-qa example as a
service")::

    export FLOWYARD_SERVER__WORKFLOWS_DIR=$PWD/examples/python-docs-qa
    flowyard serve --no-worker &   # the API
    flowyard worker &              # runs the tasks
    python examples/python-docs-qa/submit.py -i max_questions=2

Options:

- ``-i NAME=VALUE`` (repeatable): a workflow input; VALUE is read as JSON when it parses
  (``max_questions=2`` is the integer 2, ``questions='["What is a list?"]'`` a list), else
  as text.
- ``--url`` (default ``$FLOWYARD_URL``, else ``http://127.0.0.1:8750``) and ``--api-key``
  (default ``$FLOWYARD_API_KEY``; none is needed when the server has no key and runs on
  loopback).
- ``--workflow`` (default: ``workflow.yaml`` next to this script) and ``--timeout`` (seconds
  to wait for the task, default 3600).

The workflow calls the sub-workflow ``answer.yaml`` by a relative path. The script sends the
workflow's text only; the server resolves relative sub-workflow paths against its
``[server] workflows_dir`` (default: the directory ``flowyard serve`` was started in), checks
the file at registration and stores that directory with the registration, so every worker
resolves the path alike. So start ``flowyard serve`` with
``FLOWYARD_SERVER__WORKFLOWS_DIR=examples/python-docs-qa`` (or from that directory).

Output: one line per event (seconds since submission; step starts, completions with their own
duration, retries and failures; token deltas of model steps as they arrive, from whichever
worker process runs them), then the task's status and outputs as JSON. The exit
status is 0 when the task completed, 1 when it failed or was cancelled, 2 for invalid inputs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def parse_inputs(pairs: list[str]) -> dict[str, Any]:
    """``["max_questions=2", "model=local/smollm2"]`` -> ``{"max_questions": 2, ...}``.

    Raises:
        SystemExit: a pair has no ``=``.
    """
    inputs: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"an input is NAME=VALUE, got {pair!r}")
        try:
            inputs[name] = json.loads(value)
        except ValueError:
            inputs[name] = value
    return inputs


def describe(event: Any, started: float, step_started: dict[str, float]) -> str | None:
    """One terminal line for a run event (None for events not shown).

    Args:
        event: a :class:`flowyard_client.models.RunEvent`.
        started: ``time.monotonic()`` at submission (the line's clock).
        step_started: step id -> monotonic start time (filled and read here).
    """
    now = time.monotonic()
    clock = f"[{now - started:7.1f}s]"
    data = event.data
    step = event.step_id or ""
    if event.type == "run.started":
        return f"{clock} run {event.run_id} started"
    if event.type == "step.started":
        step_started[step] = now
        uses = f" ({data['uses']})" if data.get("uses") else ""
        return f"{clock} > {step} started{uses}"
    if event.type == "step.completed":
        took = data.get("duration_s")
        if took is None and step in step_started:
            took = now - step_started[step]
        extra = " (resumed: done before)" if data.get("resumed") else (
            f" in {took:.2f} s" if took is not None else "")
        # (``attempts`` is not shown: for a for_each step it adds up the items' attempts;
        # retries show as their own ``step.retrying`` lines)
        return f"{clock} + {step} completed{extra}"
    if event.type == "step.failed":
        return f"{clock} ! {step} {data.get('status', 'failed')}: {data.get('error', '')}"
    if event.type == "step.retrying":
        return f"{clock} ~ {step} retrying: {data.get('error', '')}"
    if event.type == "run.finished":
        return (f"{clock} run finished: {data.get('status', '?')}"
                + (f" ({data['error']})" if data.get("error") else ""))
    return None


async def main() -> int:
    """Register, submit, stream, print; return the exit status."""
    from flowyard_client import AsyncClient, ValidationError

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-i", "--input", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--url", default=os.environ.get("FLOWYARD_URL",
                                                        "http://127.0.0.1:8750"))
    parser.add_argument("--api-key", default=os.environ.get("FLOWYARD_API_KEY"))
    parser.add_argument("--workflow", type=Path, default=HERE / "workflow.yaml")
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args()
    inputs = parse_inputs(args.input)

    async with AsyncClient(args.url, args.api_key, timeout=60.0) as client:
        try:
            info = await client.workflows.register(args.workflow.read_text(encoding="utf-8"))
        except ValidationError as exc:
            print(f"the server refused the workflow: {exc}", file=sys.stderr)
            for issue in exc.details or []:
                print(f"  {issue}", file=sys.stderr)
            return 2
        print(f"registered workflow {info.name!r} ({info.steps} steps, "
              f"hash {info.content_hash[:12]})")
        started = time.monotonic()
        try:
            task = await client.tasks.submit(target=info.name, inputs=inputs)
        except ValidationError as exc:
            print(f"the server refused the inputs: {exc}", file=sys.stderr)
            for issue in exc.details or []:
                print(f"  {issue.get('path')}: {issue.get('message')}" if isinstance(
                    issue, dict) else f"  {issue}", file=sys.stderr)
            return 2
        print(f"submitted task {task.id} (run {task.run_id}) with inputs "
              f"{json.dumps(inputs)}")
        print(f"watch it live at {args.url.rstrip('/')}/ui/runs/{task.run_id}")
        step_started: dict[str, float] = {}
        in_delta: str | None = None
        async for event in client.runs.events(task.run_id):
            if event.type == "step.delta":
                # sub-workflow runs (one per question) stream under their own run id
                step = str(event.data.get("step_key") or event.step_id)
                key = step if event.run_id == task.run_id else f"{step} (run {event.run_id[:8]})"
                if in_delta != key:
                    print(f"\n[{time.monotonic() - started:7.1f}s]   {key} says: ", end="")
                    in_delta = key
                print(event.data.get("text", ""), end="", flush=True)
                continue
            line = describe(event, started, step_started)
            if line is not None:
                if in_delta is not None:
                    print()
                    in_delta = None
                print(line, flush=True)
        done = await client.tasks.wait_for_completion(task.id, timeout=args.timeout,
                                                      poll_interval=0.5)
        print(f"task {done.status} after {time.monotonic() - started:.1f} s")
        if done.error:
            print(f"error: {done.error}")
        print(json.dumps(done.outputs, indent=2, ensure_ascii=False))
        return 0 if done.status == "completed" else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
