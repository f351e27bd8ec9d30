"""The core's storage contract suite on SQLite (file and in-memory) and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from flowyard.testing import SharedLimitsContract, StorageContract
from flowyard_sql.storage import SQLStorage


class TestSQLiteFileContract(StorageContract):
    @pytest.fixture
    async def storage(self, sqlite_storage: SQLStorage) -> SQLStorage:
        return sqlite_storage


class TestSQLiteMemoryContract(StorageContract):
    @pytest.fixture
    async def storage(self) -> AsyncIterator[Any]:
        backend = SQLStorage("sqlite://")
        await backend.open()
        yield backend
        await backend.close()


class TestPostgresContract(StorageContract):
    @pytest.fixture
    async def storage(self, postgres_storage: SQLStorage) -> SQLStorage:
        return postgres_storage


class TestSQLiteFileSharedLimits(SharedLimitsContract):
    @pytest.fixture
    async def storage(self, sqlite_storage: SQLStorage) -> SQLStorage:
        return sqlite_storage


class TestPostgresSharedLimits(SharedLimitsContract):
    @pytest.fixture
    async def storage(self, postgres_storage: SQLStorage) -> SQLStorage:
        return postgres_storage
