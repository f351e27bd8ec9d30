"""``flowyard sandbox``: inspect the execution sandbox from the command line."""

from __future__ import annotations

import json
import os
from typing import Any

import click


@click.group(name="sandbox")
def sandbox() -> None:
    """Inspect the shell.run / python.run sandbox (flowyard-exec)."""


@sandbox.command(name="check")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check(as_json: bool) -> None:
    """Say whether bubblewrap (and Landlock) work here, which isolation, account and Python
    interpreter calls get, and the limits they run under.

    Exit status 0 when the bubblewrap sandbox is usable, 1 when it is not (the report says
    why), 2 when the [exec] configuration is invalid.
    """
    import anyio
    from flowyard import Config, ConfigError, ToolError

    from flowyard_exec.sandbox import ExecSettings, Sandbox, probe_bubblewrap, probe_landlock

    try:
        settings = ExecSettings.from_section(Config.load().section("exec"))
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    box = Sandbox(settings)

    async def inspect() -> tuple[tuple[bool, str], tuple[bool, str], str | None,
                                 dict[str, Any]]:
        bubblewrap = await probe_bubblewrap(settings)
        landlock = await probe_landlock(settings)
        python: dict[str, Any] = {"candidates": list(settings.python)}
        try:
            effective: str | None = await box.resolve_isolation(None)
        except ToolError as exc:  # isolation required and bubblewrap unusable
            effective = None
            python["error"] = str(exc)
        if effective is not None:
            try:
                choice = await box.resolve_python(effective)
            except ToolError as exc:
                python["error"] = str(exc)
            else:
                python.update(path=choice.path, version=choice.version,
                              skipped=[{"path": p, "reason": r} for p, r in choice.skipped])
        return bubblewrap, landlock, effective, python

    try:
        (usable, reason), (confined, why_not), effective, python = anyio.run(inspect)
        runs_as = box.account_name()
    except ToolError as exc:  # [exec] user names no account
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    report = {
        "bubblewrap": {"path": settings.bwrap, "usable": usable, "reason": reason or None},
        "landlock": {"usable": confined, "reason": why_not or None},
        "isolation": settings.isolation,
        "effective_isolation": effective,
        "network": settings.network,
        "user": settings.user if os.geteuid() == 0 else None,
        "runs_as": runs_as,
        "python": python,
        "limits": settings.limits(),
        "timeout_s": settings.timeout,
        "env_allow": list(settings.env_allow),
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        state = "usable" if usable else f"NOT usable: {reason}"
        click.echo(f"bubblewrap: {settings.bwrap or '(not installed)'} — {state}")
        click.echo("landlock:   " + ("usable" if confined else f"NOT usable: {why_not}"))
        click.echo(f"isolation:  {settings.isolation}"
                   + (f" (calls run with: {effective})" if effective
                      else " (calls will be refused)"))
        click.echo(f"run as:     {runs_as}")
        if "path" in python:
            version = f" (Python {python['version']})" if python["version"] else ""
            skipped = "".join(f"; skipped {item['path']}: {item['reason']}"
                              for item in python["skipped"])
            click.echo(f"python:     {python['path']}{version}{skipped}")
        else:
            click.echo(f"python:     {python['error']}")
        limits = ", ".join(f"{k.removeprefix('RLIMIT_').lower()}={v}"
                           for k, v in settings.limits().items())
        click.echo(f"limits:     {limits}")
    raise SystemExit(0 if usable else 1)
