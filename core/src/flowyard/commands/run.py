"""``flowyard run``, ``flowyard validate`` and ``flowyard resume``.

Exit codes: 0 the run completed (or the file is valid); 1 the run failed, ended partial or was
cancelled (or ``validate`` found problems); 2 the workflow or its inputs are invalid (``run``)
or the command line is wrong.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

__all__ = ["run", "validate", "resume", "parse_inputs"]

_STATUS_STYLE = {"completed": "green", "running": "cyan", "failed": "red", "skipped": "yellow",
                 "cancelled": "magenta", "budget_exceeded": "red", "pending": "dim",
                 "partial": "yellow", "retrying": "yellow"}


def parse_inputs(pairs: tuple[str, ...]) -> dict[str, Any]:
    """Parse ``key=value`` pairs; values are YAML scalars or JSON (``n=3``, ``tags=[a, b]``,
    ``flag=true``, ``name=Ada``).

    Raises:
        click.BadParameter: a pair has no ``=`` or its value does not parse.
    """
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="-i/--input")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise click.BadParameter(f"value of {key!r} does not parse: {exc}",
                                     param_hint="-i/--input") from None
    return out


def _inputs_file(path: str | None) -> dict[str, Any]:
    """Read a YAML/JSON mapping of inputs. Raises click.BadParameter naming the file."""
    if path is None:
        return {}
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--inputs") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path}: must hold a mapping of input names to values",
                                 param_hint="--inputs")
    return data


class _LiveView:
    """Step table updated from events: status, elapsed seconds, tokens."""

    def __init__(self, workflow: Any) -> None:
        self.workflow = workflow
        self.rows: dict[str, dict[str, Any]] = {
            s.id: {"status": "pending", "start": None, "end": None, "tokens": 0, "attempts": 0}
            for s in workflow.steps}
        self.started = time.monotonic()
        self.run_id = ""
        self.tokens = 0
        self.cost: float | None = 0.0

    def __call__(self, event: Any) -> None:
        if event.type == "run.started" and not self.run_id:
            self.run_id = event.run_id
        if event.run_id != self.run_id:
            return
        row = self.rows.get(event.step_id or "")
        if event.type == "llm.call":
            tokens = int(event.data.get("input_tokens", 0)) + int(event.data.get("output_tokens",
                                                                                  0))
            self.tokens += tokens
            cost = event.data.get("cost_usd")
            self.cost = None if cost is None or self.cost is None else self.cost + cost
            if row is not None:
                row["tokens"] += tokens
        if row is None:
            return
        now = time.monotonic()
        if event.type == "step.started":
            row["status"], row["start"] = "running", now
        elif event.type == "step.retrying":
            row["status"] = "retrying"
        elif event.type == "step.completed":
            row["status"], row["end"] = "completed", now
        elif event.type == "step.failed":
            row["status"], row["end"] = event.data.get("status", "failed"), now
        elif event.type == "step.skipped":
            row["status"], row["end"] = "skipped", now
        elif event.type == "tool.call":
            row["attempts"] += 1

    def render(self) -> Any:
        from rich.table import Table

        table = Table(title=f"{self.workflow.name}  {self.run_id}", title_justify="left")
        table.add_column("step")
        table.add_column("status")
        table.add_column("elapsed", justify="right")
        table.add_column("tokens", justify="right")
        now = time.monotonic()
        for sid, row in list(self.rows.items()):
            elapsed = ""
            if row["start"] is not None:
                elapsed = f"{(row['end'] or now) - row['start']:.1f}s"
            style = _STATUS_STYLE.get(row["status"], "")
            table.add_row(sid, f"[{style}]{row['status']}[/]", elapsed, str(row["tokens"] or ""))
        cost = "unknown" if self.cost is None else f"${self.cost:.6f}"
        table.caption = (f"{now - self.started:.1f}s  tokens {self.tokens}  cost {cost}")
        return table


def _print_summary(console: Any, result: Any) -> None:
    from rich.table import Table

    table = Table("step", "status", "attempts", "time", "tokens", "cost", "error",
                  title=f"{result.workflow_name}: {result.status}", title_justify="left")
    for step in result.steps.values():
        style = _STATUS_STYLE.get(step.status, "")
        duration = f"{step.duration_s:.2f}s" if step.duration_s is not None else ""
        cost = "unknown" if step.cost_usd is None else (
            f"${step.cost_usd:.6f}" if step.cost_usd else "")
        tokens = step.input_tokens + step.output_tokens
        table.add_row(step.id, f"[{style}]{step.status}[/]", str(step.attempts), duration,
                      str(tokens or ""), cost, (step.error or step.reason or "")[:80])
    console.print(table)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result.steps_by_status().items()))
    cost = "unknown (a model's price is not known)" if result.cost_usd is None else \
        f"${result.cost_usd:.6f}"
    style = _STATUS_STYLE.get(result.status, "")
    console.print(f"[{style}]run {result.run_id} {result.status}[/]: {len(result.steps)} steps "
                  f"({counts}); tokens {result.input_tokens} in / {result.output_tokens} out; "
                  f"cost {cost}; {result.duration_s:.2f}s", soft_wrap=True, highlight=False)
    if result.error:
        console.print(f"[red]error:[/] {result.error}", soft_wrap=True)
    if result.outputs:
        console.print("outputs:")
        console.print_json(json.dumps(result.outputs, default=str))


def _show_issues(exc: Any) -> None:
    click.echo(f"error: {exc.args[0].splitlines()[0]}", err=True)
    for issue in exc.issues:
        click.echo(f"  {issue}", err=True)


def _execute(stack: Any, coro_factory: Any, workflow: Any, as_json: bool, live: bool,
             run_id: str | None = None) -> None:
    import anyio
    from rich.console import Console

    from flowyard.errors import FlowyardError

    console = Console(stderr=as_json)

    async def main() -> Any:
        async with stack:
            if workflow is None or not live:
                return await coro_factory(stack)
            from rich.live import Live

            view = _LiveView(workflow)
            unsubscribe = stack.events.subscribe(view, name="cli-live-view")
            try:
                with Live(get_renderable=view.render, console=console, refresh_per_second=8,
                          transient=True):
                    return await coro_factory(stack)
            finally:
                unsubscribe()

    try:
        result = anyio.run(main)
    except KeyboardInterrupt:
        hint = f"; continue it with: flowyard resume {run_id}" if run_id else ""
        click.echo(f"interrupted{hint}", err=True)
        sys.exit(130)
    except FlowyardError as exc:
        from flowyard.errors import WorkflowValidationError

        if isinstance(exc, WorkflowValidationError):
            _show_issues(exc)
            sys.exit(2)
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        _print_summary(console, result)
    sys.exit(0 if result.ok else 1)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-i", "--input", "inputs", multiple=True, metavar="KEY=VALUE",
              help="A workflow input; the value is parsed as YAML/JSON. Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the run result as JSON.")
@click.option("--run-id", default=None, help="Id of the new run (default: random).")
@click.option("--max-concurrency", type=click.IntRange(min=1), default=None,
              help="Global limit of steps running at once.")
@click.option("--inputs", "inputs_file", type=click.Path(exists=True, dir_okay=False),
              default=None, help="A YAML/JSON file with a mapping of inputs (-i wins).")
@click.option("--no-live", is_flag=True, help="No live view (the summary is still printed).")
def run(file: str, inputs: tuple[str, ...], as_json: bool, run_id: str | None,
        max_concurrency: int | None, inputs_file: str | None, no_live: bool) -> None:
    """Run the workflow FILE and print a summary (or JSON with --json).

    Exits 1 when the run does not complete, 2 when the workflow or inputs are invalid.
    """
    from flowyard.errors import WorkflowValidationError

    values = {**_inputs_file(inputs_file), **parse_inputs(inputs)}
    stack = default_stack()
    try:
        workflow = stack.load_workflow(file)
        from flowyard.engine.runner import check_inputs

        check_inputs(workflow, values)
    except WorkflowValidationError as exc:
        _show_issues(exc)
        sys.exit(2)
    from flowyard.models import new_id

    run_id = run_id or new_id()
    options: dict[str, Any] = {"run_id": run_id}
    if max_concurrency:
        options["max_concurrency"] = max_concurrency
    live = not as_json and not no_live and sys.stderr.isatty() and sys.stdout.isatty()

    async def go(stack: Any) -> Any:
        return await stack.run(workflow, values, **options)

    _execute(stack, go, workflow, as_json, live, run_id)


def default_stack() -> Any:
    """Return ``Stack.default()``, telling stderr in one line which plugins failed to load
    (the run goes on without them; ``flowyard plugins`` shows why)."""
    from flowyard.stack import Stack

    stack = Stack.default()
    failed = stack.plugin_manager.failed()
    if failed:
        names = ", ".join(sorted(status.name for status in failed))
        click.echo(f"flowyard: warning: {len(failed)} plugin(s) failed to load and are "
                   f"skipped: {names} (see 'flowyard plugins')", err=True)
    return stack


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
def validate(file: str, as_json: bool) -> None:
    """Check the workflow FILE: structure, cycles, references, actions and their arguments.

    Exits 1 when there are problems (each printed as file:line:column: message).
    """
    from flowyard.errors import WorkflowValidationError

    try:
        workflow = default_stack().load_workflow(file)
    except WorkflowValidationError as exc:
        if as_json:
            click.echo(json.dumps({"valid": False,
                                   "issues": [i.to_dict() for i in exc.issues]}, indent=2))
        else:
            _show_issues(exc)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps({"valid": True, "name": workflow.name,
                               "steps": [s.id for s in workflow.steps],
                               "inputs": {k: v.to_dict() for k, v in workflow.inputs.items()}},
                              indent=2, default=str))
        return
    required = [k for k, v in workflow.inputs.items() if v.required]
    click.echo(f"{file}: ok: workflow {workflow.name!r}, {len(workflow.steps)} step(s)"
               + (f", required inputs: {', '.join(required)}" if required else ""))


@click.command()
@click.argument("run_id")
@click.option("--force", is_flag=True, help="Resume even if the workflow changed.")
@click.option("--workflow", "workflow_file", type=click.Path(dir_okay=False), default=None,
              help="Use this workflow file instead of the run's stored definition.")
@click.option("--json", "as_json", is_flag=True, help="Print the run result as JSON.")
def resume(run_id: str, force: bool, workflow_file: str | None, as_json: bool) -> None:
    """Resume the stored run RUN_ID: completed steps are not run again.

    Exits 1 when the run does not complete (or cannot be resumed).
    """

    options: dict[str, Any] = {}
    if workflow_file:
        options["workflow"] = workflow_file

    async def go(stack: Any) -> Any:
        return await stack.resume(run_id, force=force, **options)

    _execute(default_stack(), go, None, as_json, live=False, run_id=run_id)
