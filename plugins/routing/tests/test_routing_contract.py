"""The three routers of flowyard-routing pass the core's RouterContract."""

from __future__ import annotations

from typing import Any

import pytest
from flowyard.testing import RouterContract
from flowyard_routing.routers import CheapestRouter, FallbackRouter, UCBRouter


class TestCheapestRouterContract(RouterContract):
    @pytest.fixture
    def router(self) -> Any:
        return CheapestRouter()


class TestFallbackRouterContract(RouterContract):
    @pytest.fixture
    def router(self) -> Any:
        return FallbackRouter()


class TestUCBRouterContract(RouterContract):
    @pytest.fixture
    def router(self) -> Any:
        return UCBRouter()
