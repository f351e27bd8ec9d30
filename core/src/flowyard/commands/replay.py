"""``flowyard runs replay RUN --from STEP``: a new run reusing an earlier run's steps before STEP.

See :mod:`flowyard.engine.replay` for what is reused, what runs again and when a replay is
refused.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from flowyard.commands.run import _execute, default_stack, parse_inputs
from flowyard.commands.runs import resolve_run_id

__all__ = ["replay", "parse_set_outputs"]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def parse_set_outputs(pairs: tuple[str, ...]) -> dict[str, Any]:
    """Return ``{step_id: output}`` of ``--set step.output=JSON`` options.

    Args:
        pairs: each ``STEP.output=JSON`` (the value strict JSON: no NaN or Infinity).

    Raises:
        click.BadParameter: a pair without ``=``, a key not ending in ``.output``, an empty
            step id, invalid JSON, or the same step set twice (naming the pair).
    """
    found: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        step, dot, field = key.strip().rpartition(".")
        if not sep or not dot or field != "output" or not step:
            raise click.BadParameter(f"{pair[:80]!r}: expected STEP.output=JSON",
                                     param_hint="--set")
        try:
            value = json.loads(text, parse_constant=_no_constant)
        except ValueError as exc:
            raise click.BadParameter(f"{key}: the value is not valid JSON: {exc}",
                                     param_hint="--set") from None
        if step in found:
            raise click.BadParameter(f"{key} is given twice", param_hint="--set")
        found[step] = value
    return found


@click.command()
@click.argument("run_id")
@click.option("--from", "from_step", required=True, metavar="STEP",
              help="The step to run again, with every step downstream of it.")
@click.option("--set", "set_pairs", multiple=True, metavar="STEP.output=JSON",
              help="Replace the output of a reused step (before STEP). Repeatable.")
@click.option("-i", "--input", "inputs", multiple=True, metavar="KEY=VALUE",
              help="Change a workflow input; the value is parsed as YAML/JSON. Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the new run's result as JSON.")
@click.pass_context
def replay(ctx: click.Context, run_id: str, from_step: str, set_pairs: tuple[str, ...],
           inputs: tuple[str, ...], as_json: bool) -> None:
    """Replay the stored run RUN_ID (or a unique prefix) as a new run from step STEP.

    The completed steps before STEP are reused from RUN_ID's checkpoints (not executed
    again); STEP and the steps downstream of it run again, with the outputs set by --set and
    the inputs changed by -i. The new run's metadata names RUN_ID (replayed_from); RUN_ID is
    not changed. Refused when the workflow changed since RUN_ID started. Exits 1 when the new
    run does not complete or the replay is refused.
    """
    started = time.monotonic()
    outputs = parse_set_outputs(set_pairs)
    values = parse_inputs(inputs)
    storage_url = (ctx.obj or {}).get("storage_url")
    if storage_url:
        from flowyard.stack import Stack  # lazy: the runtime, not for --help

        stack = Stack.default(config={"storage": {"url": storage_url}})
    else:
        stack = default_stack()

    async def go(stack: Any) -> Any:
        full_id = await resolve_run_id(stack.storage, run_id)
        return await stack.replay(full_id, from_step=from_step, set_outputs=outputs,
                                  inputs=values or None)

    _execute(stack, go, None, as_json, live=False, started=started)
