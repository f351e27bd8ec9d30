"""The plugin module named by the entry point. Keep it cheap to import: flowyard imports it
every time a stack is built or the CLI lists its commands."""

from __future__ import annotations

import collections
from typing import Any

import click

import flowyard
from flowyard import Config, Event


@flowyard.tool(name="text.word_count", idempotent=True)
def word_count(text: str, top: int = 3) -> dict[str, Any]:
    """Count the words of a text.

    Args:
        text: the text to count.
        top: how many of the most frequent words to return.

    Returns:
        ``{"words": int, "top": [[word, count], ...]}``.
    """
    words = [w.strip(".,;:!?\"'()").lower() for w in text.split()]
    words = [w for w in words if w]
    return {"words": len(words),
            "top": [list(p) for p in collections.Counter(words).most_common(top)]}


class StepTimer:
    """An event listener that remembers when each step completed (seconds since the epoch)."""

    def __init__(self) -> None:
        self.completed: dict[str, float] = {}

    def __call__(self, event: Event) -> None:
        if event.type == "step.completed" and event.step_id:
            self.completed[event.step_id] = event.time


@flowyard.hookimpl
def register_tools(register: Any, config: Config) -> None:
    """Register `text.word_count`."""
    register("text.word_count", word_count)


@flowyard.hookimpl
def register_event_listeners(register: Any, config: Config) -> None:
    """Register the step timer (one per stack: no module-level state)."""
    register("wordcount.step_timer", StepTimer())


@flowyard.hookimpl
def register_commands(cli: click.Group) -> None:
    """Add `flowyard wordcount FILE`."""

    @cli.command("wordcount")
    @click.argument("path", type=click.Path(exists=True, dir_okay=False))
    def wordcount_command(path: str) -> None:
        """Count the words of a text file."""
        with open(path, encoding="utf-8") as fh:
            click.echo(word_count(fh.read())["words"])
