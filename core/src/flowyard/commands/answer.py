"""``flowyard runs answer``: answer a human step of a waiting run and resume the run."""

from __future__ import annotations

import json
from typing import Any

import click

from flowyard.errors import FlowyardError

__all__ = ["answer"]


def _value(json_text: str | None, approve: bool | None, comment: str | None) -> Any:
    if json_text is not None and approve is not None:
        raise click.UsageError("give the answer with --json or with --approve/--reject, not both")
    if json_text is not None:
        if comment is not None:
            raise click.UsageError("--comment goes with --approve/--reject; put it in the JSON")
        try:
            return json.loads(json_text)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--json") from None
    if approve is not None:
        value: dict[str, Any] = {"approved": approve}
        if comment is not None:
            value["comment"] = comment
        return value
    raise click.UsageError("give the answer: --json VALUE, or --approve/--reject for "
                           "human.approve")


@click.command("answer")
@click.argument("run_id", metavar="RUN", required=False)
@click.argument("step", metavar="STEP", required=False)
@click.option("--json", "json_text", metavar="JSON",
              help="The answer as JSON (human.input: matching the step's schema; "
                   'human.approve: {"approved": true, "comment": "..."}).')
@click.option("--approve/--reject", "approve", default=None,
              help="Shortcut for human.approve: approved true / false.")
@click.option("--comment", help="A comment with --approve/--reject.")
@click.option("--actor", help="Who answers (default: user:<OS user>).")
@click.option("--no-resume", is_flag=True,
              help="Only store the answer; `flowyard resume RUN` continues the run later.")
@click.option("--expired", is_flag=True,
              help="Instead of answering: give every waiting step whose timeout_s passed its "
                   "default outcome and resume those runs (what flowyard-server's workers do "
                   "periodically).")
@click.pass_context
def answer(ctx: click.Context, run_id: str | None, step: str | None, json_text: str | None,
           approve: bool | None, comment: str | None, actor: str | None, no_resume: bool,
           expired: bool) -> None:
    """Answer human step STEP of waiting run RUN, then resume the run in this process.

    RUN may be an unambiguous prefix of the run id; STEP is the step id (or the step key,
    ``id[i]``, for a fan-out item). The answer is checked against the step's schema: a
    refused answer stores nothing and exits with status 1. See the waiting steps with
    ``flowyard runs show RUN``.
    """
    storage_url = (ctx.obj or {}).get("storage_url")
    if expired:
        if run_id or step or json_text is not None or approve is not None:
            raise click.UsageError("--expired takes no RUN, STEP or answer")
    elif not (run_id and step):
        raise click.UsageError("give RUN and STEP (or --expired)")
    value = None if expired else _value(json_text, approve, comment)

    import anyio  # lazy: the runtime, not for --help

    from flowyard.commands.runs import resolve_run_id  # lazy: the runtime, not for --help
    from flowyard.stack import Stack  # lazy: the runtime, not for --help

    overrides = {"storage": {"url": storage_url}} if storage_url else None

    async def main() -> Any:
        stack = Stack.default(config=overrides)
        async with stack:
            if expired:
                return await stack.expire_waiting(resume=not no_resume)
            assert run_id is not None and step is not None
            full = await resolve_run_id(stack.storage, run_id)
            return full, await stack.answer(full, step, value, actor=actor,
                                            resume=not no_resume)

    try:
        outcome = anyio.run(main)
    except FlowyardError as exc:
        raise click.ClickException(str(exc)) from None
    if expired:
        for expired_run, key in outcome:
            click.echo(f"expired: run {expired_run} step {key}")
        click.echo(f"{len(outcome)} waiting step(s) expired")
        return
    full, result = outcome
    if result is None:
        click.echo(f"answered step {step} of run {full}; `flowyard resume {full}` continues it")
        return
    click.echo(f"answered step {step} of run {full}; the run is now {result.status}"
               + (f": {result.error}" if result.error else ""))
    if result.status == "waiting":
        waiting = [s.id for s in result.steps.values() if s.status == "waiting"]
        click.echo(f"still waiting: {', '.join(waiting)}")
