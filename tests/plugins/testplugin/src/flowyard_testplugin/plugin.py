"""Hook implementations of the test plugin."""

from __future__ import annotations

from typing import Any

import click

import flowyard
from flowyard.config import Config


@flowyard.tool(name="testplugin.greet", idempotent=True)
def greet(name: str, punctuation: str = "!") -> str:
    """Greet someone.

    Args:
        name: who to greet.
        punctuation: what ends the greeting.
    """
    return f"hello, {name}{punctuation}"


class CountingListener:
    """Counts events by type (proves listeners registered by plugins see run events)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, event: Any) -> None:
        self.counts[event.type] = self.counts.get(event.type, 0) + 1


@flowyard.hookimpl
def register_tools(register: Any, config: Config) -> None:
    register("testplugin.greet", greet)


@flowyard.hookimpl
def register_providers(register: Any) -> None:
    def make() -> Any:
        from flowyard.builtin.fake import FakeProvider

        return FakeProvider(name="testfake", models=["tiny"])

    register("testfake", factory=make)


@flowyard.hookimpl
def register_event_listeners(register: Any, config: Config) -> None:
    register("testplugin.counter", CountingListener())


@flowyard.hookimpl
def register_commands(cli: click.Group) -> None:
    @cli.command("testplugin-hello")
    @click.argument("name")
    def hello(name: str) -> None:
        """Say hello from the test plugin."""
        click.echo(greet(name))
