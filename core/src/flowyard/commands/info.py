"""``flowyard plugins``, ``flowyard providers`` and ``flowyard tools``."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from flowyard.hookspecs import HOOK_LABELS


def _stack() -> Any:
    from flowyard.stack import Stack  # lazy: the runtime, not for --help

    return Stack.default()


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins(as_json: bool) -> None:
    """List plugins with their version, hooks implemented, status and error."""
    stack = _stack()
    report = [status.to_dict() for status in stack.plugin_report]
    duplicates = [
        {"kind": d.kind, "name": d.name, "kept": d.kept, "dropped": d.dropped}
        for d in stack.duplicates
    ]
    if as_json:
        click.echo(json.dumps({"plugins": report, "duplicates": duplicates}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("plugin", "version", "status", "hooks", "error")
    for row in report:
        style = {"loaded": "green", "failed": "red", "disabled": "yellow"}.get(row["status"], "")
        table.add_row(row["name"], row["version"], f"[{style}]{row['status']}[/]",
                      ", ".join(HOOK_LABELS.get(h, h) for h in row["hooks"]),
                      row["error"] or "")
    console = Console()
    console.print(table)
    for d in duplicates:
        console.print(f"[yellow]duplicate {d['kind']} {d['name']!r}: kept {d['kept']}, "
                      f"dropped {d['dropped']}[/]")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def providers(as_json: bool) -> None:
    """List providers and the models they serve (context window, prices per million tokens).

    The models are the model registry's: each provider's listing with the
    ``[models.info]`` configuration applied, so a configured price is the one shown (the one
    budgets reserve and the cost ledger records).
    """
    import anyio

    from flowyard.serialization import unstructure  # lazy: the runtime, not for --help

    stack = _stack()

    async def collect() -> list[dict[str, Any]]:
        rows = []
        for name in stack.providers.names():
            try:
                infos = list((await stack.llm.models.load_provider(name)).values())
                rows.append({"provider": name, "models": unstructure(infos), "error": None})
            except Exception as exc:  # noqa: BLE001 - one failing provider is reported, not fatal
                rows.append({"provider": name, "models": [], "error": f"{type(exc).__name__}: "
                                                                      f"{exc}"})
        await stack.aclose()
        return rows

    rows = anyio.run(collect)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "context", "capabilities", "$ in /Mtok", "$ out /Mtok")
    for row in rows:
        if row["error"]:
            table.add_row(f"{row['provider']}/*", "", f"[red]{row['error']}[/]", "", "")
        for m in row["models"]:
            price = m["price"]
            table.add_row(f"{m['provider']}/{m['model']}", str(m["context_window"] or "?"),
                          ", ".join(m["capabilities"]),
                          "unknown" if price is None else f"{price['input_per_mtok']:g}",
                          "unknown" if price is None else f"{price['output_per_mtok']:g}")
    Console().print(table)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with schemas).")
def tools(as_json: bool) -> None:
    """List tools (workflow actions), whether they are idempotent, and their side effects."""
    stack = _stack()
    rows = []
    for name in stack.tools.names():
        try:
            t = stack.tools.get(name)
        except Exception as exc:  # noqa: BLE001 - a tool that fails to build is reported
            rows.append({"name": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        rows.append({"name": name, "plugin": stack.tools.plugin_of(name),
                     "description": t.description, "idempotent": t.idempotent,
                     "side_effects": list(t.side_effects), "parameters": t.parameters})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("tool", "plugin", "idempotent", "side effects", "description")
    for r in rows:
        if "error" in r:
            table.add_row(r["name"], "", "", "", f"[red]{r['error']}[/]")
            continue
        table.add_row(r["name"], r["plugin"], "yes" if r["idempotent"] else "no",
                      ", ".join(r["side_effects"]) or "-",
                      (r["description"] or "").split("\n")[0][:70])
    Console(file=sys.stdout).print(table)
