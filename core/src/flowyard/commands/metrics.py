"""``flowyard metrics``: serve or print the Prometheus metrics that flowyard processes write
to a shared multiprocess directory (``[metrics] multiprocess_dir`` or
``PROMETHEUS_MULTIPROC_DIR``), for users without ``flowyard serve``; see docs/metrics.md.
"""

from __future__ import annotations

import click

from flowyard.errors import ConfigError

__all__ = ["metrics"]


def _directory(directory: str | None) -> str:
    """Return the multiprocess directory: ``--dir``, else ``[metrics] multiprocess_dir``, else
    ``PROMETHEUS_MULTIPROC_DIR``; switches this process to multiprocess mode on it.

    Raises:
        click.UsageError: none is set (a process of its own only sees its own metrics).
    """
    from flowyard.config import Config  # lazy: only when the command runs
    from flowyard.metrics import configure_multiprocess, multiprocess_dir  # lazy: ditto

    if directory is None:
        try:
            configured = Config.load().get("metrics.multiprocess_dir", None)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from exc
        directory = configured if isinstance(configured, str) and configured else None
    directory = directory or multiprocess_dir()
    if directory is None:
        raise click.UsageError(
            "no metrics directory: set [metrics] multiprocess_dir in flowyard.toml (or "
            "PROMETHEUS_MULTIPROC_DIR) for every flowyard process, or pass --dir")
    return configure_multiprocess(directory)


@click.group()
def metrics() -> None:
    """Prometheus metrics aggregated across flowyard processes."""


@metrics.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=9464, show_default=True, type=click.IntRange(0, 65535),
              help="Port to bind (0: any free port, printed).")
@click.option("--dir", "directory", metavar="DIR",
              help="The multiprocess directory (default: [metrics] multiprocess_dir, else "
                   "PROMETHEUS_MULTIPROC_DIR).")
def serve(host: str, port: int, directory: str | None) -> None:
    """Serve /metrics: every flowyard process's metrics in DIR, summed."""
    # lazy: prometheus_client, only when the command runs
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    path = _directory(directory)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    server, thread = start_http_server(port, addr=host, registry=registry)
    click.echo(f"serving metrics of {path} at http://{host}:{server.server_port}/metrics",
               err=False)
    try:
        thread.join()
    except KeyboardInterrupt:
        server.shutdown()


@metrics.command()
@click.option("--dir", "directory", metavar="DIR",
              help="The multiprocess directory (default: [metrics] multiprocess_dir, else "
                   "PROMETHEUS_MULTIPROC_DIR).")
def show(directory: str | None) -> None:
    """Print the metrics of every flowyard process in DIR, summed (text format)."""
    from flowyard.metrics import render_metrics  # lazy: imports prometheus_client

    _directory(directory)
    click.echo(render_metrics().decode(), nl=False)
