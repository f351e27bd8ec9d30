"""``flowyard doctor``: health checks of plugins, configuration, providers, storage and disk.

The logic lives in :func:`run_doctor`, so it can be used from Python as well as from the
command line. Providers that implement :class:`~flowyard.interfaces.SupportsDiagnostics` add
their own self-checks.
"""

from __future__ import annotations

import json
import shutil
import time
from typing import TYPE_CHECKING

import attrs
import click

from flowyard.errors import AuthenticationError, ConfigError, FlowyardError, PluginError

if TYPE_CHECKING:
    from flowyard.stack import Stack

__all__ = ["doctor", "run_doctor", "Check"]

#: Free space below which the disk check fails / warns (bytes).
DISK_FAIL_BYTES = 100 * 1024 * 1024
DISK_WARN_BYTES = 1024 * 1024 * 1024



@attrs.define
class Check:
    """One health check: ``status`` is ``"ok"``, ``"warn"`` or ``"fail"``."""

    area: str
    name: str
    status: str
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        """JSON-ready dict."""
        return attrs.asdict(self)


async def run_doctor(stack: Stack, *, timeout_s: float = 5.0,
                     disk_path: str | None = None,
                     diagnose_timeout_s: float = 60.0) -> list[Check]:
    """Check the installation and return one :class:`Check` per finding.

    - plugins: each plugin's load status (failed: fail), duplicate names (warn);
    - configuration: ``[limits]``, ``[circuit]`` and ``[budgets]`` (``unknown_price``, the
      per-caller tables) parse; the guards registered (an invalid ``[guards]`` table: fail);
    - providers: each answers ``list_models()`` within ``timeout_s`` seconds (authentication
      or configuration errors: warn, as the provider is installed but not set up; other
      errors and timeouts: fail when the provider has a ``[name]`` table or serves the default
      model, else warn); the default model resolves;
    - provider self-checks: each provider that implements
      :class:`flowyard.interfaces.SupportsDiagnostics` runs its own checks within
      ``diagnose_timeout_s`` seconds (the ``local`` provider shows llama.cpp's build and this
      CPU's features and generates a few tokens in a child process);
    - storage: opens, and a key written in the key-value area reads back and is deleted;
    - disk: free space where data goes (``disk_path``, default the data directory):
      below 100 MiB fails, below 1 GiB warns;
    - health: the health checks plugins register (``register_health_checks``; the built-in
      ``storage``, ``model`` and ``disk`` are the checks above; the built-in
      ``shared_limits`` is run with [limits] shared), each within ``timeout_s``
      seconds: UP ok, DEGRADED warn, DOWN (or a timeout or an exception) fail.
    """
    import anyio

    checks: list[Check] = []
    for plugin in stack.plugin_report:
        if plugin.status == "failed":
            checks.append(Check("plugins", plugin.name, "fail", plugin.error or "failed"))
        else:
            checks.append(Check("plugins", plugin.name, "ok",
                                f"{plugin.status} {plugin.version}".strip()))
    for dup in stack.duplicates:
        checks.append(Check("plugins", f"{dup.kind} {dup.name}", "warn",
                            f"registered twice: kept {dup.kept}, dropped {dup.dropped}"))

    for area, build in (("limits", lambda: stack.llm.limiters),
                        ("circuit", lambda: stack.llm.breakers),
                        ("budgets", lambda: (stack.llm.unknown_price_policy(),
                                             stack.llm.caller_budgets))):
        try:
            build()
            checks.append(Check("config", area, "ok", "valid"))
        except ConfigError as exc:
            checks.append(Check("config", area, "fail", str(exc)))
    guards = stack.guards.names()
    if "invalid-config" in guards:
        checks.append(Check("config", "guards", "fail", stack.guards.get("invalid-config").error))
    elif guards:
        checks.append(Check("config", "guards", "ok", ", ".join(guards)))

    try:
        default_provider: str | None = stack.llm.default_model().partition("/")[0]
    except ConfigError:
        default_provider = None
    for name in stack.providers.names():
        started = time.perf_counter()
        try:
            with anyio.fail_after(timeout_s):
                infos = await stack.providers.get(name).list_models()
            checks.append(Check("providers", name, "ok",
                                f"{len(infos)} model(s) in "
                                f"{time.perf_counter() - started:.2f}s"))
        except TimeoutError:
            checks.append(Check("providers", name, "fail",
                                f"no answer to list_models within {timeout_s:g}s"))
        except (AuthenticationError, ConfigError) as exc:
            checks.append(Check("providers", name, "warn",
                                f"not set up: {type(exc).__name__}: {exc}"))
        except PluginError as exc:  # not a provider at all: always a failure
            checks.append(Check("providers", name, "fail", str(exc)))
        except (FlowyardError, OSError) as exc:
            # an installed provider that nobody configured (no [name] table) and that is not
            # the default model's is only a warning: e.g. flowyard-ollama without a server
            relied_on = bool(stack.config.get(name)) or default_provider == name
            checks.append(Check("providers", name, "fail" if relied_on else "warn",
                                f"{type(exc).__name__}: {exc}" if relied_on else
                                f"unreachable and not configured: {type(exc).__name__}: {exc}"))
        except Exception as exc:  # noqa: BLE001 - a plugin's bug is a finding, not a crash
            checks.append(Check("providers", name, "fail",
                                f"the provider's list_models raised {type(exc).__name__}: {exc} "
                                f"(a bug in plugin {stack.providers.plugin_of(name)!r})"))
    from flowyard.interfaces import SupportsDiagnostics  # lazy: the runtime, not for --help

    for name in stack.providers.names():
        try:
            provider = stack.providers.get(name)
        except Exception:  # noqa: BLE001 - reported by the list_models check above
            continue
        if not isinstance(provider, SupportsDiagnostics):
            continue
        try:
            with anyio.fail_after(diagnose_timeout_s + 5.0):
                findings = await provider.diagnose(timeout_s=diagnose_timeout_s)
        except TimeoutError:
            checks.append(Check("providers", f"{name} self-check", "fail",
                                f"no answer within {diagnose_timeout_s:g}s"))
            continue
        except Exception as exc:  # noqa: BLE001 - a plugin's bug is a finding, not a crash
            checks.append(Check("providers", f"{name} self-check", "fail",
                                f"{type(exc).__name__}: {exc}"))
            continue
        for finding in findings:
            checks.append(Check("providers", f"{name} {finding.name}", finding.status,
                                finding.detail))
    try:
        default = stack.llm.default_model()
        checks.append(Check("providers", "default model", "ok", default))
    except ConfigError as exc:
        checks.append(Check("providers", "default model", "warn", str(exc)))

    try:
        url = stack.storage_url()
        await stack.open()
        key = f"probe-{time.time_ns()}"
        await stack.storage.kv_set("flowyard.doctor", key, {"written": True})
        back = await stack.storage.kv_get("flowyard.doctor", key)
        await stack.storage.kv_delete("flowyard.doctor", key)
        if back != {"written": True}:
            checks.append(Check("storage", url, "fail", f"wrote a value and read back {back!r}"))
        else:
            checks.append(Check("storage", url, "ok", "reachable and writable"))
    except (FlowyardError, OSError) as exc:
        checks.append(Check("storage", "storage", "fail", f"{type(exc).__name__}: {exc}"))

    try:
        path = disk_path or str(stack.config.data_dir)
        usage = shutil.disk_usage(path)
        free_gib = usage.free / 1024**3
        status = ("fail" if usage.free < DISK_FAIL_BYTES
                  else "warn" if usage.free < DISK_WARN_BYTES else "ok")
        checks.append(Check("disk", path, status,
                            f"{free_gib:.2f} GiB free of {usage.total / 1024**3:.2f} GiB"))
    except OSError as exc:
        checks.append(Check("disk", disk_path or "data dir", "fail", str(exc)))

    # lazy: the runtime, not for --help
    from flowyard.health import run_health_checks

    # the built-in storage, model and disk checks are the doctor's own checks above
    plugin_checks = [name for name in stack.health_checks.names()
                     if stack.health_checks.plugin_of(name) != "builtin"
                     or name not in ("storage", "model", "disk")]
    statuses = {"UP": "ok", "DEGRADED": "warn", "DOWN": "fail"}
    for name, result in (await run_health_checks(stack, timeout_s=timeout_s,
                                                 names=plugin_checks)).items():
        checks.append(Check("health", name, statuses[result.status], result.detail))
    return checks


@click.command()
@click.option("--timeout", "timeout_s", default=5.0, show_default=True, type=float,
              help="Seconds to wait for each provider's model list.")
@click.option("--check-timeout", "diagnose_timeout_s", default=60.0, show_default=True,
              type=float,
              help="Seconds for each provider's self-check (e.g. loading a local model and "
                   "generating a few tokens).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def doctor(timeout_s: float, diagnose_timeout_s: float, as_json: bool) -> None:
    """Check plugins, configuration, providers, storage and disk space.

    Exits with status 1 when any check fails (warnings do not).
    """
    import anyio

    from flowyard.stack import Stack  # lazy: the runtime, not for --help

    stack = Stack.default()

    async def main() -> list[Check]:
        try:
            return await run_doctor(stack, timeout_s=timeout_s,
                                    diagnose_timeout_s=diagnose_timeout_s)
        finally:
            await stack.aclose()

    checks = anyio.run(main)
    failed = any(c.status == "fail" for c in checks)
    if as_json:
        click.echo(json.dumps({"ok": not failed, "checks": [c.to_dict() for c in checks]},
                              indent=2))
    else:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        table = Table("area", "check", "status", "detail")
        colour = {"ok": "green", "warn": "yellow", "fail": "red"}
        for c in checks:
            table.add_row(escape(c.area), escape(c.name), f"[{colour[c.status]}]{c.status}[/]",
                          escape(c.detail))
        Console().print(table)
    if failed:
        raise SystemExit(1)
