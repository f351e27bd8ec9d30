"""`flowyard doctor`: an unreachable provider fails only when someone relies on it."""

from __future__ import annotations

from typing import Any

import pytest

import flowyard
from flowyard.builtin.fake import FakeProvider
from flowyard.commands.doctor import run_doctor
from flowyard.errors import ServerError
from flowyard.stack import Stack


class Unreachable(FakeProvider):
    async def list_models(self) -> list[Any]:
        raise ServerError("connection refused", provider=self.name)


class Plugin:
    @flowyard.hookimpl
    def register_providers(self, register: Any) -> None:
        register("faraway", Unreachable("faraway"))


@pytest.mark.anyio
@pytest.mark.parametrize(("config", "expected"), [
    ({}, "warn"),                                                   # installed, not set up
    ({"faraway": {"base_url": "http://127.0.0.1:9"}}, "fail"),      # configured
    ({"models": {"default": "faraway/echo"}}, "fail"),              # serves the default model
])
async def test_unreachable_provider_status(flowyard_home: Any, config: dict[str, Any],
                                           expected: str) -> None:
    stack = Stack([("plugin", Plugin())],
                  config={"storage": {"url": "memory://"}, **config})
    checks = {(c.area, c.name): c for c in await run_doctor(stack, timeout_s=2)}
    check = checks[("providers", "faraway")]
    assert check.status == expected
    assert "connection refused" in check.detail
