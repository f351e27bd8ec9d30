"""``flowyard run``, ``flowyard validate`` and ``flowyard resume``.

Exit codes: 0 the run completed (or the file is valid); 1 the run failed, ended partial or was
cancelled (or ``validate`` found problems); 2 the workflow or its inputs are invalid (``run``)
or the command line is wrong.
"""

from __future__ import annotations

import json
import math
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import click

from flowyard.commands.runs import resolve_run_id
from flowyard.errors import FlowyardError, ValidationIssue, WorkflowValidationError

if TYPE_CHECKING:
    from flowyard.parsing import ParseLimits

__all__ = ["run", "validate", "resume", "parse_inputs", "step_timings"]

_STATUS_STYLE = {"completed": "green", "running": "cyan", "failed": "red", "skipped": "yellow",
                 "cancelled": "magenta", "budget_exceeded": "red", "pending": "dim",
                 "partial": "yellow", "retrying": "yellow", "waiting": "blue"}

#: ``flowyard run``/``resume`` exit status of a run that ended waiting for a human answer
#: (0: completed, 1: failed or refused).
EXIT_WAITING = 3


def parse_inputs(pairs: tuple[str, ...], limits: ParseLimits | None = None) -> dict[str, Any]:
    """Parse ``key=value`` pairs; values are YAML scalars or JSON (``n=3``, ``tags=[a, b]``,
    ``flag=true``, ``name=Ada``), parsed with the bounded parser (:mod:`flowyard.parsing`).

    Args:
        pairs: the ``-i`` values.
        limits: size, value, alias and depth limits (default :class:`ParseLimits`).

    Raises:
        click.BadParameter: a pair has no ``=``.
        WorkflowValidationError: a value does not parse or exceeds a limit, located as
            ``-i NAME:line:column``.
    """
    from flowyard.parsing import parse_text  # lazy: the YAML parser, not for --help

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="-i/--input")
        name = key.strip()
        out[name] = (parse_text(raw, source=f"-i {name}", limits=limits)
                     if raw.strip() else "")
    return out


def _inputs_file(path: str | None, limits: ParseLimits | None = None) -> dict[str, Any]:
    """Read a YAML/JSON mapping of inputs (``.json`` files as JSON), size checked first.

    Raises:
        WorkflowValidationError: the file cannot be read, exceeds a limit, does not parse or
            does not hold a mapping, located in the file.
    """
    if path is None:
        return {}
    # lazy: the YAML parser, not for --help
    from flowyard.parsing import is_json_path, parse_text, read_bounded

    text = read_bounded(path, limits)
    data = parse_text(text, source=path, limits=limits, json_only=is_json_path(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise WorkflowValidationError([ValidationIssue(
            "must hold a mapping of input names to values", file=path, line=1, column=1)])
    return data


#: Characters of streamed text kept per step key by the live view (only the tail is shown).
_TAIL_CHARS = 2000


def _step_of(key: str) -> str:
    """Return the step id of a step key (``answers[2]`` -> ``answers``, ``loop#3`` -> ``loop``)."""
    return re.sub(r"(\[\d+\]|#\d+)$", "", key)


def _fmt_duration(seconds: float) -> str:
    """``h:mm:ss`` of a number of seconds (rounded up)."""
    total = int(math.ceil(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _fmt_rate(per_second: float) -> str:
    if per_second >= 100:
        return f"{per_second:.0f}"
    if per_second >= 10:
        return f"{per_second:.1f}"
    return f"{per_second:.2f}"


def _rate(task: Any) -> float | None:
    """Units per second of a rich progress task: rich's estimate over its window (the last
    60 s) when it has two reports in it, else the average since the phase began (reports of
    a slow step can be further apart than the window); None before any unit is done.
    """
    if task.finished_speed:
        return float(task.finished_speed)
    if task.speed:
        return float(task.speed)
    done = task.completed - task.fields.get("initial", 0)
    elapsed = task.elapsed
    if done > 0 and elapsed:
        return float(done / elapsed)
    return None


def _progress_columns() -> tuple[Any, ...]:
    """The columns of a step's progress: phase, bar, done/total, unit, rate, ETA."""
    from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Units per second (see :func:`_rate`), e.g. ``35.2 chunks/s``."""

        def render(self, task: Any) -> Text:
            rate = _rate(task)
            if rate is None:
                return Text("")
            return Text(f"{_fmt_rate(rate)} {task.fields.get('unit', '')}/s",
                        style="progress.data.speed")

    class EtaColumn(ProgressColumn):
        """Estimated time left at the current rate (``ETA 0:00:11``); empty when unknown."""

        def render(self, task: Any) -> Text:
            rate = _rate(task)
            if task.finished or task.total is None or not rate:
                return Text("")
            return Text(f"ETA {_fmt_duration((task.total - task.completed) / rate)}",
                        style="progress.remaining")

    return (TextColumn("{task.description}"), BarColumn(bar_width=16), MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"), RateColumn(), EtaColumn())


class _Tail:
    """The end of a streamed text on one line, cut on the left to the width it gets."""

    def __init__(self, text: str) -> None:
        self.text = " ".join(text.split())

    def __rich_console__(self, console: Any, options: Any) -> Any:
        from rich.cells import cell_len
        from rich.text import Text

        width = max(1, options.max_width)
        text = self.text[-4 * width:]
        if cell_len(text) > width:
            kept: list[str] = []
            used = 1  # the ellipsis
            for char in reversed(text):
                size = cell_len(char)
                if used + size > width:
                    break
                kept.append(char)
                used += size
            text = "…" + "".join(reversed(kept))
        yield Text(text, no_wrap=True, overflow="crop")

    def __rich_measure__(self, console: Any, options: Any) -> Any:
        from rich.cells import cell_len
        from rich.measure import Measurement

        size = min(cell_len(self.text), options.max_width)
        return Measurement(min(size, 12), size)


class _Line:
    """What the live view knows of one running step key (of the run or a sub-workflow)."""

    __slots__ = ("run_id", "step_id", "key", "root", "label", "start", "task", "signature",
                 "text", "attempt")

    def __init__(self, run_id: str, step_id: str, key: str, root: str, label: str,
                 start: float) -> None:
        self.run_id = run_id
        self.step_id = step_id
        self.key = key
        self.root = root  # the run's top-level step it belongs to
        self.label = label
        self.start = start
        self.task: Any = None  # rich progress task id
        self.signature: tuple[Any, ...] = ()
        self.text = ""
        self.attempt = 0


class _LiveView:
    """The live table of ``flowyard run``, updated from the run's events.

    One row per step: status, elapsed seconds, progress, tokens. The progress cell shows the
    step's latest ``step.progress`` report with rich's progress columns (phase, bar,
    ``done/total unit``, rate in units per second over the last 60 s, ETA), or the tail of
    the text it streams (``step.delta``, e.g. ``llm.chat``'s answer as it is generated).
    Below a step, one indented line per running step key of its fan-out items or of its
    sub-workflow runs (``answers[2] › answer``), with the same cell. Tokens and cost include
    the sub-workflows' calls.

    Subscribe it with ``transient=True`` (progress and deltas are transient events). Events
    may come from worker threads while rich's refresh thread calls :meth:`render`; a lock
    guards the state.

    Args:
        workflow: the workflow being run.
        clock: monotonic time in seconds (elapsed times, rates and ETAs).
    """

    def __init__(self, workflow: Any, *, clock: Callable[[], float] = time.monotonic) -> None:
        from rich.progress import Progress

        self.workflow = workflow
        self.clock = clock
        self.rows: dict[str, dict[str, Any]] = {
            s.id: {"status": "pending", "start": None, "end": None, "tokens": 0, "attempts": 0}
            for s in workflow.steps}
        self.started = clock()
        self.run_id = ""
        self.tokens = 0
        self.cost: float | None = 0.0
        self.lines: dict[tuple[str, str], _Line] = {}
        self._runs: dict[str, tuple[str, str]] = {}  # sub-workflow run -> (root step, label)
        self._lock = threading.RLock()
        self.progress = Progress(*_progress_columns(), get_time=clock, auto_refresh=False,
                                 speed_estimate_period=60.0)

    def __call__(self, event: Any) -> None:
        with self._lock:
            self._handle(event)

    def _handle(self, event: Any) -> None:
        from flowyard.events import DELTA_EVENT, PROGRESS_EVENT  # lazy: the runtime, not for --help

        if event.type == "run.started":
            if not self.run_id:
                self.run_id = event.run_id
            else:
                self._sub_run(event)
            return
        main = event.run_id == self.run_id
        if not main and event.run_id not in self._runs:
            return
        if event.type == PROGRESS_EVENT:
            self._progress(event)
            return
        if event.type == DELTA_EVENT:
            self._delta(event)
            return
        root = event.step_id if main else self._runs[event.run_id][0]
        row = self.rows.get(root or "")
        if event.type == "llm.call":
            tokens = int(event.data.get("input_tokens", 0)) + int(event.data.get("output_tokens",
                                                                                  0))
            self.tokens += tokens
            cost = event.data.get("cost_usd")
            self.cost = None if cost is None or self.cost is None else self.cost + cost
            if row is not None:
                row["tokens"] += tokens
            return
        if not main:
            self._sub_step(event)
            return
        if row is None:
            return
        now = self.clock()
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
        if event.type in ("step.completed", "step.failed", "step.skipped"):
            self._drop(lambda line: line.root == event.step_id)

    def _sub_run(self, event: Any) -> None:
        """Place a sub-workflow's run under the step key that started it."""
        parent, parent_step = event.data.get("parent_run_id"), event.data.get("parent_step")
        if not parent or not parent_step:
            return
        if parent == self.run_id:
            self._runs[event.run_id] = (_step_of(parent_step), parent_step)
        elif parent in self._runs:
            root, label = self._runs[parent]
            self._runs[event.run_id] = (root, f"{label} › {parent_step}")

    def _sub_step(self, event: Any) -> None:
        if event.type == "step.started" and event.step_id:
            self._line(event.run_id, event.step_id, event.step_id)
        elif event.type in ("step.completed", "step.failed", "step.skipped"):
            self._drop(lambda line: line.run_id == event.run_id
                       and line.step_id == event.step_id)
        elif event.type == "run.finished":
            self._drop(lambda line: line.run_id == event.run_id)

    def _line(self, run_id: str, step_id: str, key: str) -> _Line:
        line = self.lines.get((run_id, key))
        if line is None:
            if run_id == self.run_id:
                root, label = step_id, key
            else:
                root, prefix = self._runs[run_id]
                label = f"{prefix} › {key}"
            line = self.lines[(run_id, key)] = _Line(run_id, step_id, key, root, label,
                                                     self.clock())
        return line

    def _attempt(self, line: _Line, attempt: int) -> None:
        if attempt != line.attempt:  # a new attempt starts afresh
            line.attempt = attempt
            line.text = ""
            if line.task is not None:
                self.progress.remove_task(line.task)
                line.task = None

    def _progress(self, event: Any) -> None:
        data = event.data
        if not event.step_id:
            return
        line = self._line(event.run_id, event.step_id, data.get("step_key") or event.step_id)
        self._attempt(line, int(data.get("attempt", 1)))
        unit, description, total = data.get("unit", ""), data.get("description", ""), \
            data.get("total")
        signature = (unit, description, total)
        if line.task is None or line.signature != signature:
            if line.task is not None:  # a new phase: a new count and rate
                self.progress.remove_task(line.task)
            done = data.get("done", 0)
            line.task = self.progress.add_task(description, total=total, completed=done,
                                               unit=unit, initial=done)
            line.signature = signature
        else:
            self.progress.update(line.task, completed=data.get("done", 0))

    def _delta(self, event: Any) -> None:
        data = event.data
        if not event.step_id:
            return
        line = self._line(event.run_id, event.step_id, data.get("step_key") or event.step_id)
        self._attempt(line, int(data.get("attempt", 1)))
        line.text = (line.text + str(data.get("text", "")))[-_TAIL_CHARS:]

    def _drop(self, which: Callable[[_Line], bool]) -> None:
        for key, line in list(self.lines.items()):
            if which(line):
                if line.task is not None:
                    self.progress.remove_task(line.task)
                del self.lines[key]

    def _cell(self, line: _Line | None, tasks: dict[Any, Any]) -> Any:
        if line is None:
            return ""
        parts: list[Any] = []
        if line.task is not None and line.task in tasks:
            parts.append(self.progress.make_tasks_table([tasks[line.task]]))
        if line.text:
            parts.append(_Tail(line.text))
        if len(parts) == 1:
            return parts[0]
        from rich.console import Group

        return Group(*parts) if parts else ""

    def render(self) -> Any:
        """Return the table as it is now (a rich renderable)."""
        from rich.table import Table
        from rich.text import Text

        with self._lock:
            table = Table(title=f"{self.workflow.name}  {self.run_id}", title_justify="left")
            table.add_column("step")
            table.add_column("status")
            table.add_column("elapsed", justify="right")
            table.add_column("progress")
            table.add_column("tokens", justify="right")
            now = self.clock()
            tasks = {task.id: task for task in self.progress.tasks}
            for sid, row in list(self.rows.items()):
                elapsed = ""
                if row["start"] is not None:
                    elapsed = f"{(row['end'] or now) - row['start']:.1f}s"
                style = _STATUS_STYLE.get(row["status"], "")
                own = self.lines.get((self.run_id, sid))
                table.add_row(Text(sid), Text(row["status"], style=style), elapsed,
                              self._cell(own, tasks), str(row["tokens"] or ""))
                for line in self.lines.values():
                    if line.root == sid and line is not own:
                        table.add_row(Text(f"  {line.label}", style="dim"),
                                      Text("running", style=_STATUS_STYLE["running"]),
                                      f"{now - line.start:.1f}s", self._cell(line, tasks), "")
            cost = "unknown" if self.cost is None else f"${self.cost:.6f}"
            table.caption = f"{now - self.started:.1f}s  tokens {self.tokens}  cost {cost}"
            return table


def _item_index(step_id: str, key: str) -> bool:
    """True when ``key`` is a fan-out item of ``step_id`` (``answers[3]`` of ``answers``)."""
    return re.fullmatch(re.escape(step_id) + r"\[\d+\]", key) is not None


def step_timings(result: Any, attempts: list[Any]) -> dict[str, dict[str, Any]]:
    """Wall times of a run's steps, for the summary of ``flowyard run`` and ``resume``.

    Args:
        result: the :class:`~flowyard.workflow.RunResult`.
        attempts: the run's stored :class:`~flowyard.models.StepAttempt` records (all keys,
            all tries; an empty list when storage could not be read).

    Returns:
        ``{step_id: {"wall_s": float | None}}`` in the result's step order; a ``for_each``
        step also gets ``"items"`` (its fan-out keys) and, when at least one item finished,
        ``"item_median_s"`` and ``"item_max_s"``: seconds from an item's first try starting
        to its last try finishing (retries included), median and maximum over the items.
    """
    import statistics

    spans: dict[str, dict[str, list[float]]] = {}
    for attempt in attempts:
        key = attempt.step_key
        if not _item_index(attempt.step_id, key):
            continue
        span = spans.setdefault(attempt.step_id, {}).setdefault(key, [math.inf, -math.inf])
        span[0] = min(span[0], attempt.started_at)
        if attempt.finished_at is not None:
            span[1] = max(span[1], attempt.finished_at)
    out: dict[str, dict[str, Any]] = {}
    for sid, step in result.steps.items():
        entry: dict[str, Any] = {"wall_s": step.duration_s}
        items = spans.get(sid)
        if items:
            durations = [end - start for start, end in items.values() if end >= start]
            entry["items"] = len(items)
            if durations:
                entry["item_median_s"] = statistics.median(durations)
                entry["item_max_s"] = max(durations)
        out[sid] = entry
    return out


def _fmt_items(timing: dict[str, Any]) -> str:
    """``8 (9.40s/14.31s)``: items (median/max item wall time); empty without items."""
    if "items" not in timing:
        return ""
    text = str(timing["items"])
    if "item_median_s" in timing:
        text += f" ({timing['item_median_s']:.2f}s/{timing['item_max_s']:.2f}s)"
    return text


def _print_summary(console: Any, result: Any, timings: dict[str, dict[str, Any]],
                   command_s: float | None = None) -> None:
    from rich.markup import escape
    from rich.table import Table

    per_item = any("items" in t for t in timings.values())
    table = Table(title=f"{result.workflow_name}: {result.status}", title_justify="left")
    # ids and figures are not cut on a narrow terminal (80 columns when piped)
    table.add_column("step", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("tries", justify="right", no_wrap=True)
    table.add_column("wall time", justify="right", no_wrap=True)
    if per_item:  # a fan-out's items and its median/max item wall time
        table.add_column("items (median/max)", no_wrap=True)
    table.add_column("tokens", justify="right", no_wrap=True)
    table.add_column("cost", justify="right")
    for step in result.steps.values():
        style = _STATUS_STYLE.get(step.status, "")
        duration = f"{step.duration_s:.2f}s" if step.duration_s is not None else ""
        cost = "unknown" if step.cost_usd is None else (
            f"${step.cost_usd:.6f}" if step.cost_usd else "")
        tokens = step.input_tokens + step.output_tokens
        cells = [escape(step.id), f"[{style}]{step.status}[/]", str(step.attempts), duration]
        if per_item:
            cells.append(_fmt_items(timings.get(step.id, {})))
        table.add_row(*cells, str(tokens or ""), cost)
    console.print(table)
    for step in result.steps.values():
        # below the table, where a narrow terminal does not squeeze them away; ids, errors
        # and reasons are data: escaped, never read as rich markup
        note = step.error or step.reason
        if note:
            console.print(f"  {escape(step.id)} {step.status}: {escape(note[:300])}",
                          soft_wrap=True, highlight=False)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result.steps_by_status().items()))
    cost = "unknown (a model's price is not known)" if result.cost_usd is None else \
        f"${result.cost_usd:.6f}"
    style = _STATUS_STYLE.get(result.status, "bold")
    wall = f"wall time {result.duration_s:.2f}s"
    if command_s is not None:
        wall += f" ({command_s:.2f}s with start-up)"
    console.print(f"[{style}]run {escape(result.run_id)} {result.status}[/]: "
                  f"{len(result.steps)} steps "
                  f"({counts}); tokens {result.input_tokens} in / {result.output_tokens} out; "
                  f"cost {cost}; {wall}", soft_wrap=True, highlight=False)
    if result.error:
        console.print(f"[red]error:[/] {escape(result.error)}", soft_wrap=True)
    waiting = [sid for sid, step in result.steps.items() if step.status == "waiting"]
    if result.status == "waiting":
        for sid in waiting or ["STEP"]:
            console.print(f"[blue]waiting:[/] answer with: flowyard runs answer "
                          f"{escape(result.run_id)} {escape(sid)} --json VALUE "
                          "(or --approve / --reject)", soft_wrap=True, highlight=False)
    if result.outputs:
        console.print("outputs:")
        console.print_json(json.dumps(result.outputs, default=str))


def _show_issues(exc: Any) -> None:
    click.echo(f"error: {exc.args[0].splitlines()[0]}", err=True)
    for issue in exc.issues:
        click.echo(f"  {issue}", err=True)


def _execute(stack: Any, coro_factory: Any, workflow: Any, as_json: bool, live: bool,
             run_id: str | None = None, started: float | None = None) -> None:
    import anyio
    from rich.console import Console

    console = Console(stderr=as_json)

    async def attempts_of(result: Any) -> list[Any]:
        try:
            return list(await stack.storage.list_attempts(result.run_id))
        except FlowyardError:  # the summary still shows the steps' own wall times
            return []

    async def execute() -> Any:
        if workflow is None or not live:
            return await coro_factory(stack)
        from rich.live import Live

        view = _LiveView(workflow)
        # transient: the view also takes step.progress and step.delta events
        unsubscribe = stack.events.subscribe(view, name="cli-live-view", transient=True)
        try:
            with Live(get_renderable=view.render, console=console, refresh_per_second=8,
                      transient=True):
                return await coro_factory(stack)
        finally:
            unsubscribe()

    async def main() -> tuple[Any, list[Any]]:
        async with stack:
            result = await execute()
            return result, await attempts_of(result)

    try:
        result, attempts = anyio.run(main)
    except KeyboardInterrupt:
        hint = f"; continue it with: flowyard resume {run_id}" if run_id else ""
        click.echo(f"interrupted{hint}", err=True)
        sys.exit(130)
    except FlowyardError as exc:
        if isinstance(exc, WorkflowValidationError):
            _invalid(exc, as_json)
        if as_json:
            click.echo(json.dumps({"ok": False, "error": str(exc),
                                   "error_type": type(exc).__name__}, indent=2))
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    timings = step_timings(result, attempts)
    command_s = None if started is None else time.monotonic() - started
    if as_json:
        data = result.to_dict()
        for sid, timing in timings.items():
            data["steps"][sid].update({k: v for k, v in timing.items() if k != "wall_s"})
        data["command_duration_s"] = command_s
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        _print_summary(console, result, timings, command_s)
    sys.exit(0 if result.ok else EXIT_WAITING if result.status == "waiting" else 1)


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
@click.option("--idempotency-key", default=None, metavar="KEY",
              help="Submission key: a run with KEY is created once; submitting KEY again "
                   "returns that run's result (waiting while it runs) and never runs it twice.")
@click.option("--format", "format_name", default=None, metavar="NAME",
              help="The workflow format (loader) of FILE, e.g. native; default: chosen by "
                   "suffix and content.")
def run(file: str, inputs: tuple[str, ...], as_json: bool, run_id: str | None,
        max_concurrency: int | None, inputs_file: str | None, no_live: bool,
        idempotency_key: str | None = None, format_name: str | None = None) -> None:
    """Run the workflow FILE and print a summary (or JSON with --json).

    Exits 1 when the run does not complete, 2 when the workflow or inputs are invalid (with
    --json the problems are printed as JSON on stdout, as `validate --json` prints them), 3
    when it waits for a human answer (`flowyard runs answer`).
    """
    started = time.monotonic()
    from flowyard.parsing import ParseLimits  # lazy: the YAML parser, not for --help

    stack = default_stack()
    try:
        limits = ParseLimits.from_config(stack.config)
        values = {**_inputs_file(inputs_file, limits), **parse_inputs(inputs, limits)}
        workflow = stack.load_workflow(file, format=format_name)
        from flowyard.engine.runner import check_inputs  # lazy: the runtime, not for --help

        check_inputs(workflow, values)
    except WorkflowValidationError as exc:
        _invalid(exc, as_json)
    from flowyard.models import new_id  # lazy: the runtime, not for --help

    run_id = run_id or new_id()
    options: dict[str, Any] = {"run_id": run_id}
    if max_concurrency:
        options["max_concurrency"] = max_concurrency
    if idempotency_key is not None:
        options["idempotency_key"] = idempotency_key
    live = not as_json and not no_live and sys.stderr.isatty() and sys.stdout.isatty()

    async def go(stack: Any) -> Any:
        return await stack.run(workflow, values, **options)

    _execute(stack, go, workflow, as_json, live, run_id, started)


#: Exit status of `run`, `validate` and `resume` for an invalid workflow or invalid inputs.
EXIT_INVALID = 2


def _invalid(exc: Any, as_json: bool) -> NoReturn:
    """Report a WorkflowValidationError (JSON on stdout with --json) and exit with 2."""
    if as_json:
        click.echo(json.dumps({"valid": False, "issues": [i.to_dict() for i in exc.issues]},
                              indent=2))
    else:
        _show_issues(exc)
    sys.exit(EXIT_INVALID)


def default_stack() -> Any:
    """Return ``Stack.default()``, telling stderr in one line which plugins failed to load
    (the run goes on without them; ``flowyard plugins`` shows why).
    """
    from flowyard.stack import Stack  # lazy: the runtime, not for --help

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
@click.option("--format", "format_name", default=None, metavar="NAME",
              help="The workflow format (loader) of FILE, e.g. native; default: chosen by "
                   "suffix and content.")
def validate(file: str, as_json: bool, format_name: str | None = None) -> None:
    """Check the workflow FILE: structure, cycles, references, actions and their arguments.

    Exits 2 when there are problems (each printed as file:line:column: message), the same
    status `flowyard run` gives for an invalid workflow.
    """
    try:
        workflow = default_stack().load_workflow(file, format=format_name)
    except WorkflowValidationError as exc:
        _invalid(exc, as_json)
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
    """Resume the stored run RUN_ID (or a unique prefix of it): completed steps are not run
    again.

    Exits 1 when the run does not complete (or cannot be resumed).
    """
    started = time.monotonic()
    options: dict[str, Any] = {}
    if workflow_file:
        options["workflow"] = workflow_file

    async def go(stack: Any) -> Any:
        full_id = await resolve_run_id(stack.storage, run_id)
        return await stack.resume(full_id, force=force, **options)

    _execute(default_stack(), go, None, as_json, live=False, run_id=run_id, started=started)
