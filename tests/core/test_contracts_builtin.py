"""The in-core defaults pass the contract suites that third-party plugins run."""

from __future__ import annotations

from typing import Any

import pytest

import flowyard
from flowyard.builtin.fake import FakeProvider
from flowyard.builtin.memory_storage import MemoryStorage
from flowyard.testing import (
    ExecutorContract,
    ProviderContract,
    StorageContract,
    ToolContract,
    WorkflowLoaderContract,
)


class TestFakeProviderContract(ProviderContract):
    model = "echo"
    supports_embeddings = True

    @pytest.fixture
    def provider(self) -> FakeProvider:
        return FakeProvider()


class TestMemoryStorageContract(StorageContract):
    @pytest.fixture
    async def storage(self) -> Any:
        backend = MemoryStorage()
        await backend.open()
        yield backend
        await backend.close()


@flowyard.tool(name="text.repeat", idempotent=True)
async def repeat(text: str, times: int = 2) -> str:
    """Repeat a text.

    Args:
        text: what to repeat.
        times: how many times (at least 1).
    """
    return text * times


class TestFunctionToolContract(ToolContract):
    @pytest.fixture
    def tool(self) -> Any:
        return repeat

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"text": "ab", "times": 3}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"text": 5}


class TestLocalExecutorContract(ExecutorContract):
    @pytest.fixture
    def executor(self) -> Any:
        from flowyard.builtin.executor import LocalExecutor

        return LocalExecutor()


class TestNativeLoaderContract(WorkflowLoaderContract):
    @pytest.fixture
    def loader(self) -> Any:
        from flowyard.stack import Stack

        return Stack(config={"storage": {"url": "memory://"}}).loaders.get("native")

    @pytest.fixture
    def valid_source(self) -> str:
        return "name: contract\nsteps:\n  - id: a\n    uses: echo\n    with: {value: 1}\n"

    @pytest.fixture
    def invalid_source(self) -> str:
        return "name: contract\nsteps:\n  - id: a\n    uses: [echo\n"
