"""Compose a custom stack in code and run a workflow with it.

No entry-point discovery: the stack is built from exactly the plugins listed here — SQLite
storage in a file of our choice, the local llama.cpp model, the filesystem tools confined to
the output folder, and a tool plugin defined in this script — and the workflow is built with
the Python builder. An event listener prints progress as the run goes.

Usage: python examples/custom-stack/compose.py [--out out/custom-stack]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import flowyard
import flowyard_filesystem.plugin as filesystem_plugin
import flowyard_llamacpp.plugin as llamacpp_plugin
import flowyard_sql.plugin as sql_plugin
from flowyard import Event, Stack, WorkflowBuilder


@flowyard.tool(name="host.describe", idempotent=True)
def describe_host() -> dict[str, Any]:
    """Describe the machine this runs on: Python version, implementation and platform."""
    return {"python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.system()}


class HostTools:
    """A plugin object composed into the stack in code (no packaging needed)."""

    @flowyard.hookimpl
    def register_tools(self, register: Any) -> None:
        register("host.describe", describe_host)


def print_progress(event: Event) -> None:
    """Event listener: one line per finished step or model call."""
    if event.type in ("step.completed", "step.failed"):
        print(f"  {event.type:<15} {event.step_id}", file=sys.stderr)
    elif event.type == "llm.call":
        data = event.data
        print(f"  llm.call        {data['provider']}/{data['model']}: "
              f"{data['input_tokens']} in, {data['output_tokens']} out", file=sys.stderr)


def build_workflow() -> Any:
    """The workflow, built in Python: describe the host, ask the model for a haiku, save."""
    return (
        WorkflowBuilder("host-haiku", description="Write a haiku about the machine")
        .input("model", type="string", default="local/smollm2")
        .step("host", "host.describe")
        .step("haiku", "llm.chat", with_={
            "model": "{{ inputs.model }}",
            "system": "You write short poems.",
            "prompt": "Write a three-line haiku about a computer running Python "
                      "{{ steps.host.output.python }} on {{ steps.host.output.platform }}.",
            "max_tokens": 60, "temperature": 0.7, "seed": 3})
        .step("save", "filesystem.write", with_={
            "path": "haiku.md",
            "content": "# A haiku for {{ steps.host.output.platform }}\n\n"
                       "{{ steps.haiku.output | trim }}\n"})
        .output("haiku", "${haiku}")
        .output("file", "{{ steps.save.output.location }}")
        .build()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/custom-stack"))
    parser.add_argument("--model", default="local/smollm2")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    stack = Stack(
        plugins=[("sql", sql_plugin), ("llamacpp", llamacpp_plugin),
                 ("filesystem", filesystem_plugin), ("host-tools", HostTools())],
        config={"storage": {"url": f"sqlite:///{out / 'runs.db'}"},
                "filesystem": {"root": str(out)}},
    )
    stack.events.subscribe(print_progress, name="progress")
    result = stack.run_sync(build_workflow(), {"model": args.model})
    print(json.dumps({"status": result.status, "run_id": result.run_id,
                      "storage": stack.storage_url(), "outputs": result.outputs}, indent=2))
    if result.status != "completed":
        raise SystemExit(1)


if __name__ == "__main__":
    main()
