"""Health checks extensible by plugins (register_health_checks, flowyard.health) and their
use by `flowyard doctor`.
"""

from __future__ import annotations

from typing import Any

import anyio
import flowyard
import pytest
from flowyard.builtin.fake import FakeProvider
from flowyard.commands.doctor import run_doctor
from flowyard.errors import ServerError
from flowyard.health import HealthResult, run_health_checks
from flowyard.stack import Stack

pytestmark = pytest.mark.anyio


class Unreachable(FakeProvider):
    async def list_models(self) -> list[Any]:
        raise ServerError("connection refused", provider=self.name)


class Plugin:
    @flowyard.hookimpl
    def register_providers(self, register: Any) -> None:
        register("faraway", Unreachable("faraway"))

    @flowyard.hookimpl
    def register_health_checks(self, register: Any) -> None:
        async def gpu() -> HealthResult:
            return HealthResult("DEGRADED", "1 of 2 GPUs")

        async def slow() -> HealthResult:
            await anyio.sleep(10)
            return HealthResult("UP")

        async def buggy() -> HealthResult:
            raise RuntimeError("boom")

        async def wrong() -> Any:
            return "UP"

        register("gpu", gpu)
        register("slow", slow)
        register("buggy", buggy)
        register("wrong", wrong)


async def test_builtin_and_plugin_checks(flowyard_home: Any) -> None:
    stack = Stack([("plugin", Plugin())], config={"storage": {"url": "memory://"},
                                                  "models": {"default": "faraway/echo"}})
    try:
        results = await run_health_checks(stack, timeout_s=0.2)
    finally:
        await stack.aclose()
    assert list(results) == ["buggy", "disk", "gpu", "model", "slow", "storage", "wrong"]
    assert results["storage"].status == "UP"
    assert results["disk"].status == "UP" and "GiB free" in results["disk"].detail
    assert results["model"].status == "DEGRADED"
    assert "faraway/echo" in results["model"].detail
    assert "connection refused" in results["model"].detail
    assert results["gpu"] == HealthResult("DEGRADED", "1 of 2 GPUs",
                                          duration_ms=results["gpu"].duration_ms)
    assert results["slow"].status == "DOWN" and "within 0.2s" in results["slow"].detail
    assert results["slow"].duration_ms >= 150
    assert results["buggy"].status == "DOWN" and results["buggy"].detail == "RuntimeError: boom"
    assert results["wrong"].status == "DOWN" and "not a HealthResult" in results["wrong"].detail


async def test_model_check_up_with_a_reachable_default(flowyard_home: Any) -> None:
    stack = Stack(config={"storage": {"url": "memory://"}, "models": {"default": "fake/echo"}})
    results = await run_health_checks(stack, names=["model"])
    assert list(results) == ["model"]
    assert results["model"].status == "UP" and results["model"].detail.startswith("fake/echo")


async def test_doctor_runs_the_plugins_checks(flowyard_home: Any) -> None:
    stack = Stack([("plugin", Plugin())], config={"storage": {"url": "memory://"}})
    checks = {(c.area, c.name): c for c in await run_doctor(stack, timeout_s=0.2)}
    health = {name: c.status for (area, name), c in checks.items() if area == "health"}
    # the built-in storage/model/disk checks are doctor's own storage, providers and disk
    assert health == {"buggy": "fail", "gpu": "warn", "slow": "fail", "wrong": "fail"}
    assert checks[("health", "gpu")].detail == "1 of 2 GPUs"


class NoSharedLimits:
    """A storage scheme whose backend opens but keeps no shared limits."""

    @flowyard.hookimpl
    def register_storage(self, register: Any) -> None:
        from flowyard.builtin.memory_storage import MemoryStorage

        class Plain:
            def __init__(self) -> None:
                self.inner = MemoryStorage()

            async def open(self) -> None:
                await self.inner.open()

            async def close(self) -> None:
                await self.inner.close()

            async def kv_get(self, namespace: str, key: str) -> Any:
                return await self.inner.kv_get(namespace, key)

        register("plain", lambda url, config: Plain())


async def test_the_shared_limits_backend_is_checked_only_when_configured(flowyard_home: Any
                                                                         ) -> None:
    plain = Stack(config={"storage": {"url": "memory://"}})
    shared = Stack(config={"storage": {"url": "memory://"}, "limits": {"shared": "storage"}})
    broken = Stack([("plain", NoSharedLimits())],
                   config={"storage": {"url": "memory://"}, "limits": {"shared": "plain://"}})
    try:
        assert "shared_limits" not in await run_health_checks(plain, timeout_s=2)
        up = (await run_health_checks(shared, timeout_s=2))["shared_limits"]
        down = (await run_health_checks(broken, timeout_s=2))["shared_limits"]
    finally:
        for stack in (plain, shared, broken):
            await stack.aclose()
    assert up.status == "UP" and "MemoryStorage" in up.detail
    assert down.status == "DOWN" and "plain://" in down.detail


async def test_doctor_shows_the_shared_limits_check(flowyard_home: Any) -> None:
    stack = Stack(config={"storage": {"url": "memory://"}, "limits": {"shared": "storage"}})
    try:
        checks = await run_doctor(stack, timeout_s=2)
    finally:
        await stack.aclose()
    found = [c for c in checks if c.name == "shared_limits"]
    assert len(found) == 1 and found[0].status == "ok"
