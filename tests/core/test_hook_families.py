"""Hooks no other test exercised: register_retrievers, register_workflow_loaders and
register_commands, each through a plugin object as a third party would write it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import click
import pytest
from click.testing import CliRunner

from flowyard import hookimpl
from flowyard.config import Config
from flowyard.errors import UnknownNameError, WorkflowValidationError
from flowyard.models import Chunk, Document
from flowyard.plugins import PluginManager
from flowyard.stack import Stack
from flowyard.workflow import Workflow, parse_workflow

MEMORY = {"storage": {"url": "memory://"}}


class KeywordRetriever:
    """A retriever that keeps documents in memory and matches words of the query."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.documents: list[Document] = []

    async def index(self, documents: Sequence[Document], *, collection: str = "default"
                    ) -> dict[str, int]:
        self.documents.extend(documents)
        return {"added": len(documents), "updated": 0, "unchanged": 0,
                "chunks": len(documents)}

    async def search(self, query: str, *, top_k: int = 5, collection: str = "default"
                     ) -> list[Chunk]:
        words = set(query.lower().split())
        hits = [d for d in self.documents if words & set(d.text.lower().split())]
        return [Chunk(id=d.id, document_id=d.id, text=d.text) for d in hits[:top_k]]

    async def get_context(self, query: str, *, top_k: int = 5, max_tokens: int = 1500,
                          collection: str = "default") -> list[Chunk]:
        return await self.search(query, top_k=top_k, collection=collection)


class RetrieverPlugin:
    @hookimpl
    def register_retrievers(self, register: Any, config: Config) -> None:
        register("keyword", KeywordRetriever("keyword"))
        register("lazy", factory=lambda: KeywordRetriever("lazy"), default_priority=5)


def test_register_retrievers_fills_the_registry_and_picks_the_default() -> None:
    stack = Stack([("kw", RetrieverPlugin())], config=MEMORY)
    assert stack.retrievers.names() == ["keyword", "lazy"]
    assert stack.retrievers.plugin_of("keyword") == "kw"
    assert "lazy" not in stack.retrievers.loaded()  # a factory is built on first lookup
    assert stack.retriever().label == "lazy"  # the highest default_priority
    keyword = stack.retriever("keyword")

    async def roundtrip() -> list[Chunk]:
        await keyword.index([Document(id="d1", text="pluggy hooks"),
                             Document(id="d2", text="anyio tasks")])
        return await keyword.search("hooks")

    assert [c.document_id for c in anyio.run(roundtrip)] == ["d1"]


def test_register_retrievers_configured_name_wins_and_unknown_names_are_reported() -> None:
    stack = Stack([("kw", RetrieverPlugin())], config={**MEMORY, "rag": {"retriever": "keyword"}})
    assert stack.retriever().label == "keyword"
    with pytest.raises(UnknownNameError, match="nope"):
        stack.retriever("nope")


class LinesLoader:
    """Workflow files of one step per line: ``id = value`` becomes an ``echo`` step."""

    suffixes = (".lines",)

    def load(self, source: str, *, path: str | None = None) -> Workflow:
        steps = []
        for line in source.splitlines():
            if line.strip():
                step_id, value = (part.strip() for part in line.split("=", 1))
                steps.append({"id": step_id, "uses": "echo", "with": {"value": value}})
        return parse_workflow({"name": Path(path or "lines").stem, "steps": steps},
                              source=path)


class LoaderPlugin:
    @hookimpl
    def register_workflow_loaders(self, register: Any, config: Config) -> None:
        register("lines", LinesLoader(), suffixes=(".lines",))


def test_register_workflow_loaders_adds_a_file_format(tmp_path: Path) -> None:
    source = tmp_path / "greet.lines"
    source.write_text("hello = world\nbye = moon\n", encoding="utf-8")
    stack = Stack([("lines", LoaderPlugin())], config=MEMORY)
    assert set(stack.loaders.names()) >= {"native", "lines"}
    workflow = stack.load_workflow(source)
    assert [step.id for step in workflow.steps] == ["hello", "bye"]
    result = stack.run_sync(source)
    assert result.status == "completed"
    assert result.steps["bye"].output == "moon"


def test_without_the_loader_plugin_the_format_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "greet.lines"
    source.write_text("hello = world\n", encoding="utf-8")
    with pytest.raises(WorkflowValidationError, match="no workflow loader"):
        Stack(config=MEMORY).load_workflow(source)


class CommandsPlugin:
    @hookimpl
    def register_commands(self, cli: click.Group) -> None:
        @cli.command("shout")
        @click.argument("word")
        def shout(word: str) -> None:
            """Print WORD in capitals."""
            click.echo(word.upper())


class BrokenCommands:
    @hookimpl
    def register_commands(self, cli: click.Group) -> None:
        raise RuntimeError("no commands today")


def test_register_commands_adds_a_command_to_the_group() -> None:
    @click.group()
    def cli() -> None:
        """A stand-in for the flowyard group."""

    manager = PluginManager(Config.load(overrides=MEMORY))
    manager.add(CommandsPlugin(), name="shouter")
    manager.call_commands(cli)
    assert "shout" in cli.commands
    result = CliRunner().invoke(cli, ["shout", "hey"])
    assert result.exit_code == 0, result.output
    assert result.output == "HEY\n"
    assert manager.statuses["shouter"].hooks == ["register_commands"]


def test_a_failing_register_commands_is_reported_and_the_others_still_register() -> None:
    @click.group()
    def cli() -> None:
        """A stand-in for the flowyard group."""

    manager = PluginManager(Config.load(overrides=MEMORY))
    manager.add(BrokenCommands(), name="broken")
    manager.add(CommandsPlugin(), name="shouter")
    manager.call_commands(cli)
    assert "shout" in cli.commands
    [failed] = manager.failed()
    assert failed.name == "broken"
    assert failed.error == "RuntimeError: no commands today"
