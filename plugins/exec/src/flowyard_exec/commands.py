"""``flowyard sandbox``: inspect the execution sandbox from the command line."""

from __future__ import annotations

import json
import os

import click


@click.group(name="sandbox")
def sandbox() -> None:
    """Inspect the shell.run / python.run sandbox (flowyard-exec)."""


@sandbox.command(name="check")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check(as_json: bool) -> None:
    """Say whether bubblewrap works here, and show the limits calls run under.

    Exit status 0 when the bubblewrap sandbox is usable, 1 when it is not (the report says
    why), 2 when the [exec] configuration is invalid.
    """
    import anyio
    from flowyard.config import Config
    from flowyard.errors import ConfigError

    from flowyard_exec.sandbox import ExecSettings, probe_bubblewrap

    try:
        settings = ExecSettings.from_section(Config.load().section("exec"))
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    usable, reason = anyio.run(probe_bubblewrap, settings)
    report = {
        "bubblewrap": {"path": settings.bwrap, "usable": usable, "reason": reason or None},
        "isolation": settings.isolation,
        "network": settings.network,
        "user": settings.user if os.geteuid() == 0 else None,
        "limits": settings.limits(),
        "timeout_s": settings.timeout,
        "env_allow": list(settings.env_allow),
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        state = "usable" if usable else f"NOT usable: {reason}"
        click.echo(f"bubblewrap: {settings.bwrap or '(not installed)'} — {state}")
        click.echo(f"isolation:  {settings.isolation}"
                   + ("" if usable or settings.isolation != "required"
                      else " (calls will be refused)"))
        click.echo(f"run as:     {report['user'] or 'the current user'}")
        limits = ", ".join(f"{k.removeprefix('RLIMIT_').lower()}={v}"
                           for k, v in settings.limits().items())
        click.echo(f"limits:     {limits}")
    raise SystemExit(0 if usable else 1)
