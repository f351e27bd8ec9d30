"""The commands ``flowyard serve``, ``flowyard worker`` and ``flowyard api-keys``.

Heavy imports (FastAPI, uvicorn, the app) happen inside the commands, so ``flowyard --help``
stays fast.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import click
from flowyard import FlowyardError

__all__ = ["serve", "worker", "api_keys", "check_binding", "BindingRefused"]

T = TypeVar("T")
log = logging.getLogger("flowyard_server")

_STORAGE = click.option("--storage", "storage_url", metavar="URL",
                        envvar="FLOWYARD_STORAGE_URL",
                        help="Storage URL (default: storage.url, else the default database).")


class BindingRefused(click.ClickException):
    """``flowyard serve`` was asked to bind a non-loopback address while no API key exists."""


def check_binding(host: str, *, loopback: bool, have_keys: bool) -> None:
    """Refuse to serve beyond loopback without authentication.

    Args:
        host: the address asked for (for the message).
        loopback: whether ``host`` binds the loopback interface only.
        have_keys: whether at least one API key is stored.

    Raises:
        BindingRefused: ``host`` is not loopback and no key is stored.
    """
    if not loopback and not have_keys:
        raise BindingRefused(
            f"refusing to bind {host}: no API key exists, so anyone who reaches that address "
            "could run workflows. Create one with `flowyard api-keys create --tenant <name>` "
            "(or bind 127.0.0.1).")


def _stack(storage_url: str | None) -> Any:
    from flowyard import Stack

    overrides = {"storage": {"url": storage_url}} if storage_url else None
    return Stack.default(config=overrides)


def _settings(stack: Any, **overrides: Any) -> Any:
    from flowyard_server.settings import ServerSettings

    settings = ServerSettings.from_config(stack.config)
    changes = {k: v for k, v in overrides.items() if v is not None}
    return attrs.evolve(settings, **changes) if changes else settings


def _run_async(body: Callable[[], Awaitable[T]]) -> T:
    import anyio

    try:
        return anyio.run(body)
    except FlowyardError as exc:
        raise click.ClickException(str(exc)) from None


@click.command()
@click.option("--host", default=None, help="Address to bind (default: [server] host, "
              "127.0.0.1). Anything but loopback needs an API key.")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="TCP port (default: [server] port, 8750).")
@click.option("--worker/--no-worker", "run_worker", default=None,
              help="Run a task worker inside the server (default: yes).")
@click.option("--concurrency", type=click.IntRange(1, 1000), default=None,
              help="Tasks the in-process worker runs at once (default: [server] concurrency).")
@click.option("--log-level", default="info",
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@_STORAGE
def serve(host: str | None, port: int | None, run_worker: bool | None,
          concurrency: int | None, log_level: str, storage_url: str | None) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs) and, unless --no-worker, run tasks."""
    import uvicorn

    from flowyard_server.app import create_app
    from flowyard_server.keys import KeyStore
    from flowyard_server.worker import Worker, queue_of

    stack = _stack(storage_url)
    settings = _settings(stack, host=host, port=port, worker=run_worker,
                         concurrency=concurrency)

    async def preflight() -> bool:
        async with stack:
            queue_of(stack)
            return await KeyStore(stack.storage).any_keys()

    have_keys = _run_async(preflight)
    check_binding(settings.host, loopback=settings.loopback, have_keys=have_keys)
    if not have_keys:
        click.echo("flowyard serve: no API key exists, so only loopback clients are served "
                   "(as tenant 'default'); `flowyard api-keys create` turns authentication on.",
                   err=True)
    if stack.storage_url().startswith("memory"):
        click.echo("flowyard serve: memory storage -- tasks and runs are lost when the "
                   "server stops, and separate workers cannot see them.", err=True)
    app = create_app(stack, settings,
                     worker=Worker(stack, settings) if settings.worker else None)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level,
                            lifespan="on", server_header=False)
    uvicorn.Server(config).run()


@click.command()
@click.option("--concurrency", type=click.IntRange(1, 1000), default=None,
              help="Tasks run at once (default: [server] concurrency, 4).")
@click.option("--name", default=None, help="Worker id in task records (default: host:pid:random).")
@_STORAGE
def worker(concurrency: int | None, name: str | None, storage_url: str | None) -> None:
    """Run queued tasks (the storage must be shared with `flowyard serve`, e.g. SQL)."""
    from flowyard_server.worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    stack = _stack(storage_url)
    settings = _settings(stack, concurrency=concurrency)

    async def main() -> None:
        async with stack:
            runner = Worker(stack, settings, name=name)
            click.echo(f"flowyard worker {runner.name}: {settings.concurrency} at once, "
                       f"storage {stack.storage_url()}", err=True)
            await runner.run()

    try:
        _run_async(main)
    except KeyboardInterrupt:
        click.echo("flowyard worker: stopped", err=True)


@click.group()
@_STORAGE
@click.pass_context
def api_keys(ctx: click.Context, storage_url: str | None) -> None:
    """Manage the server's API keys (stored as salted digests; a key is shown once).

    Named ``api-keys`` since the core's ``flowyard keys`` manages provider secrets (the key
    store, docs/keys.md).
    """
    ctx.obj = {"storage_url": storage_url}


def _with_keys(ctx: click.Context, body: Callable[[Any], Awaitable[T]]) -> T:
    from flowyard_server.keys import KeyStore

    stack = _stack(ctx.obj["storage_url"])

    async def main() -> T:
        async with stack:
            return await body(KeyStore(stack.storage))

    return _run_async(main)


@api_keys.command("create")
@click.option("--tenant", required=True, help="The tenant the key acts for.")
@click.option("--name", default="", help="A label for people.")
@click.pass_context
def keys_create(ctx: click.Context, tenant: str, name: str) -> None:
    """Create a key and print it (once: only its digest is stored)."""

    async def body(store: Any) -> Any:
        try:
            return await store.create(tenant, name=name)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--tenant/--name") from None

    key, info = _with_keys(ctx, body)
    click.echo(f"created key {info.key_id} for tenant {info.tenant}; store it now, it is not "
               "shown again:", err=True)
    click.echo(key)


@api_keys.command("list")
@click.pass_context
def keys_list(ctx: click.Context) -> None:
    """List keys (id, tenant, name, creation time; never the secret)."""
    import datetime

    for info in _with_keys(ctx, lambda store: store.list()):
        created = datetime.datetime.fromtimestamp(info.created_at, datetime.timezone.utc)
        click.echo(f"{info.key_id}  {info.tenant}  {created:%Y-%m-%d %H:%M}Z  {info.name}")


@api_keys.command("revoke")
@click.argument("key_id")
@click.pass_context
def keys_revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke a key by its id (the 12 hex characters after ``fy_``)."""
    if not _with_keys(ctx, lambda store: store.revoke(key_id)):
        raise click.ClickException("no such key (give the 12 hex characters after fy_)")
    click.echo(f"revoked {key_id}")
