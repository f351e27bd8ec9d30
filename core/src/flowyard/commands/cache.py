"""``flowyard cache``: the LLM response cache (:mod:`flowyard.llm.cache`): stats, clear."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from flowyard.errors import FlowyardError

__all__ = ["cache"]

T = TypeVar("T")


def _with_cache(body: Callable[[Any], Awaitable[T]]) -> T:
    """Open the default stack's response cache (``[cache] url``, else the stack's storage),
    run ``body(cache)``, close the stack. flowyard errors become click errors (exit 1).
    """
    import anyio

    from flowyard.llm.cache import open_response_cache  # lazy: the runtime, not for --help
    from flowyard.stack import Stack  # lazy: ditto

    async def main() -> T:
        stack = Stack.default()
        async with stack:
            return await body(await open_response_cache(stack))

    try:
        return anyio.run(main)
    except FlowyardError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def cache() -> None:
    """The LLM response cache (steps with ``cache: true``)."""


@cache.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(as_json: bool) -> None:
    """Count live, expired and damaged entries and what one hit on each saves (US dollars)."""
    figures = _with_cache(lambda c: c.stats())
    if as_json:
        click.echo(json.dumps(figures))
        return
    click.echo(f"entries: {figures['entries']}  expired: {figures['expired']}  "
               f"damaged: {figures['damaged']}  "
               f"saved per hit on each: ${figures['saved_usd_per_hit']:.6f}")


@cache.command()
@click.option("--expired", "expired_only", is_flag=True,
              help="Delete only expired and damaged entries.")
def clear(expired_only: bool) -> None:
    """Delete cached responses (all, or with --expired only those past their TTL)."""
    deleted = _with_cache(lambda c: c.clear(expired_only=expired_only))
    click.echo(f"deleted {deleted} cached response(s)")
