"""pytest fixtures of the flowyard test kit (loaded through the ``pytest11`` entry point).

Kept light: nothing heavy is imported until a fixture is used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def flowyard_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An isolated flowyard home: data and config under ``tmp_path``; FLOWYARD_* variables of
    the outer environment removed so they cannot leak into the test.
    """
    import os

    for name in list(os.environ):
        if name.startswith("FLOWYARD_"):
            monkeypatch.delenv(name)
    data = tmp_path / "flowyard-data"
    config = tmp_path / "flowyard-config"
    data.mkdir()
    config.mkdir()
    monkeypatch.setenv("FLOWYARD_DATA_DIR", str(data))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    monkeypatch.setenv("XDG_DATA_HOME", str(data))
    monkeypatch.chdir(tmp_path)
    yield tmp_path


@pytest.fixture
async def flowyard_stack(flowyard_home: Path) -> AsyncIterator[Any]:
    """A stack of the in-core defaults with in-memory storage and ``fake/echo`` as the default
    model, opened for the test and closed after it.
    """
    # lazy: pytest loads this plugin in every session; the stack only for this fixture
    from flowyard.stack import Stack

    stack = Stack(config={"storage": {"url": "memory://"}, "models": {"default": "fake/echo"}})
    async with stack:
        yield stack


@pytest.fixture
def fake_provider(flowyard_stack: Any) -> Any:
    """The fake provider of ``flowyard_stack`` (script replies with ``.add(...)``)."""
    return flowyard_stack.providers.get("fake")


@pytest.fixture
def tool_context(flowyard_stack: Any) -> Any:
    """A :class:`~flowyard.context.ToolContext` for calling tools directly in tests."""
    # lazy: pytest loads this plugin in every session; the stack only for this fixture
    from flowyard.context import ToolContext

    return ToolContext(stack=flowyard_stack, run_id="", step_id="test", step_key="test",
                       idempotency_key="test-idempotency-key", workflow_name="test")
