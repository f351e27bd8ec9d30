"""The dashboard's providers page: models and prices, the health check (up with a latency,
down with an error type and never the error's text), rate-limit and circuit-breaker state as
this process sees it, and looking that changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import jinja2
import pytest
from flowyard import AuthenticationError, Stack
from flowyard.builtin.fake import FakeProvider
from flowyard_server.app import Service
from flowyard_server.settings import ServerSettings
from flowyard_server.ui import providers as providers_module
from flowyard_server.ui.providers import check_provider, providers_context

pytestmark = pytest.mark.anyio

TEMPLATES = Path(__file__).resolve().parents[1] / "src" / "flowyard_server" / "ui" / "templates"
SECRET = "sk-live-THIS-IS-A-SECRET-1234567890"


def render(context: dict[str, Any]) -> str:
    """Render the page like the dashboard does (autoescape, strict undefined)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    return env.get_template("providers.html").render(session=None, nav=[], active="Providers",
                                                     flash="", **context)


class Refusing(FakeProvider):
    """A provider whose credentials are refused, with the key in the error text."""

    async def list_models(self) -> list[Any]:
        raise AuthenticationError(f"invalid api key {SECRET}", provider=self.name)


class Hanging(FakeProvider):
    """A provider that never answers."""

    async def list_models(self) -> list[Any]:
        await anyio.sleep(60)
        return []


def _broken() -> Any:
    raise RuntimeError(f"OPENAI_API_KEY={SECRET} is malformed")


async def _stack(config: dict[str, Any] | None = None) -> Stack:
    stack = Stack(config={"storage": {"url": "memory://"}, "models": {"default": "fake/echo"},
                          **(config or {})})
    await stack.open()
    return stack


@pytest.fixture
async def svc(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Service]:
    monkeypatch.setattr(providers_module, "HEALTH_TIMEOUT_S", 0.3)  # "hanging" never answers
    stack = await _stack({"limits": {"fake": {"rpm": 600, "concurrency": 4},
                                     "fake/priced": {"tpm": 100000}},
                          "circuit": {"refusing": {"enabled": False}}})
    stack.providers.add("refusing", Refusing("refusing"))
    stack.providers.add("hanging", Hanging("hanging"))
    stack.providers.add("broken", factory=_broken)
    try:
        yield Service(stack, ServerSettings(), None)
    finally:
        await stack.aclose()


def by_name(ctx: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in ctx["providers"]}


async def test_each_provider_has_a_row_with_its_models_and_prices(svc: Service) -> None:
    with anyio.fail_after(5):  # the checks run concurrently: about 0.3 s, not one per provider
        ctx = await providers_context(svc)
    rows = by_name(ctx)
    assert sorted(rows) == sorted(svc.stack.providers.names())
    fake = rows["fake"]
    assert fake["status"] == "up" and isinstance(fake["latency_ms"], int)
    models = {m["model"]: m for m in fake["models"]}
    assert models["priced"]["input_per_mtok"] == 1.0
    assert models["priced"]["output_per_mtok"] == 2.0
    assert models["unpriced"]["price_known"] is False
    html = render(ctx)
    assert '<table id="providers"' in html
    for name in rows:
        assert f'<tr class="provider" data-provider="{name}">' in html
    fake_row = re.search(r'data-provider="fake">.*?</tr>\s*<tr class="provider"', html, re.S)
    assert fake_row and "UP" in fake_row.group(0) and " ms<" in fake_row.group(0)
    assert "price unknown" in fake_row.group(0)
    assert ">1</td>" in fake_row.group(0) and ">2</td>" in fake_row.group(0)
    assert "this server process" in html and "flowyard worker" in html
    assert "style=" not in html
    assert re.findall(r"<script(?![^>]*\bsrc=)", html) == []


async def test_a_failing_provider_is_down_with_its_error_type_never_its_text(
        svc: Service) -> None:
    ctx = await providers_context(svc)
    rows = by_name(ctx)
    assert rows["refusing"]["status"] == "down"
    assert rows["refusing"]["error_type"] == "AuthenticationError"
    assert rows["hanging"]["status"] == "down"
    assert rows["hanging"]["error_type"] == "Timeout"
    assert "0.3 s" in rows["hanging"]["error"]
    assert rows["broken"]["status"] == "down"
    assert rows["broken"]["error_type"] == "RuntimeError"
    html = render(ctx)
    assert SECRET not in html and "sk-live" not in html and "OPENAI_API_KEY" not in html
    assert html.count(">DOWN<") == 3
    assert "AuthenticationError" in html and "RuntimeError" in html


async def test_rate_limits_show_in_flight_queued_and_paused(svc: Service) -> None:
    limiters = svc.stack.llm.limiters
    before = await providers_context(svc)
    fake = by_name(before)["fake"]
    # configured limits show before any call, without making a limiter
    assert [r["key"] for r in fake["rate_limits"]] == ["fake", "fake/priced"]
    assert "600 req/min" in fake["rate_limits"][0]["limits"]
    assert "4 concurrent" in fake["rate_limits"][0]["limits"]
    assert limiters.stats() == {}
    permit = await limiters.limiter("fake").acquire()
    limiters.pause("fake", "echo", 30)
    try:
        rows = {r["key"]: r for r in by_name(await providers_context(svc))["fake"]["rate_limits"]}
        assert rows["fake"]["in_flight"] == 1 and rows["fake"]["queued"] == 0
        assert 25 <= rows["fake/echo"]["paused_for_s"] <= 30
        assert rows["fake/echo"]["paused_until"].endswith(" UTC")
        html = render(await providers_context(svc))
        assert 'data-limiter="fake/echo"' in html and "paused until" in html
        assert "1 in flight" in html
        assert "refusing" not in {r["key"].split("/")[0] for r in rows.values()}
    finally:
        permit.release()


async def test_circuit_breakers_are_shown_and_never_made_by_looking(svc: Service) -> None:
    breakers = svc.stack.llm.breakers
    ctx = await providers_context(svc)
    assert breakers.snapshot() == {}  # looking made no breaker
    fake = by_name(ctx)["fake"]["circuit"]
    assert fake["state"] == "closed" and fake["consecutive_failures"] == 0
    assert fake["failure_threshold"] == 5
    assert by_name(ctx)["refusing"]["circuit"]["state"] == "disabled"
    breaker = breakers.breaker("fake")
    assert breaker is not None
    for _ in range(5):
        breaker.on_failure(False)
    ctx = await providers_context(svc)
    fake = by_name(ctx)["fake"]["circuit"]
    assert fake["state"] == "open" and fake["consecutive_failures"] == 5
    assert fake["opened_at"].endswith(" UTC")
    assert 0 < fake["next_probe_in_s"] <= 30
    html = render(ctx)
    assert 'class="circuit-state circuit-open">open<' in html
    assert "5 consecutive failures" in html
    breaker.state = "half_open"
    assert by_name(await providers_context(svc))["fake"]["circuit"]["label"] == "half-open"
    assert set(breakers.snapshot()) == {"fake"}


async def test_check_provider_times_out_within_its_limit() -> None:
    stack = await _stack()
    try:
        stack.providers.add("hanging", Hanging("hanging"))
        with anyio.fail_after(3):
            result = await check_provider(stack, "hanging", timeout=0.1)
        assert result["status"] == "down" and result["models"] == []
        up = await check_provider(stack, "fake")
        assert up["status"] == "up" and up["error"] is None
    finally:
        await stack.aclose()


async def test_a_stack_without_providers_and_the_worker_note() -> None:
    stack = await _stack()
    try:
        svc = Service(stack, ServerSettings(), None)
        ctx = await providers_context(svc)
        assert ctx["worker"] is None and ctx["gateway_error"] is None
        html = render({**ctx, "providers": []})
        assert "This stack has no model providers." in html
        assert "runs no worker" in html
    finally:
        await stack.aclose()


async def test_an_invalid_gateway_configuration_is_reported_not_raised() -> None:
    stack = await _stack({"circuit": {"failure_threshold": 0}})
    try:
        ctx = await providers_context(Service(stack, ServerSettings(), None))
        assert ctx["gateway_error"] == "ConfigError"
        assert by_name(ctx)["fake"]["status"] == "up"
        assert 'id="gateway-error"' in render(ctx)
    finally:
        await stack.aclose()


class Counting(FakeProvider):
    """Counts its ``list_models`` calls, each taking a little time."""

    calls = 0

    async def list_models(self) -> list[Any]:
        self.calls += 1
        await anyio.sleep(0.05)
        return await super().list_models()


async def test_health_checks_are_shared_and_reused_for_a_few_seconds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stack = await _stack()
    try:
        counting = Counting("counting")
        stack.providers.add("counting", counting)
        svc = Service(stack, ServerSettings(), None)
        async with anyio.create_task_group() as tg:  # five page loads at once: one check
            for _ in range(5):
                tg.start_soon(providers_context, svc)
        assert counting.calls == 1
        first = await providers_context(svc)
        assert counting.calls == 1 and by_name(first)["counting"]["status"] == "up"
        # breakers are read afresh even while the health check is reused
        breaker = stack.llm.breakers.breaker("counting")
        assert breaker is not None
        breaker.on_failure(False)
        again = await providers_context(svc)
        assert by_name(again)["counting"]["circuit"]["consecutive_failures"] == 1
        assert again["checked_at"] == first["checked_at"]
        monkeypatch.setattr(providers_module, "HEALTH_CACHE_S", 0.0)
        other = Service(stack, ServerSettings(), None)  # its own results
        await providers_context(other)
        await providers_context(other)
        assert counting.calls == 3
    finally:
        await stack.aclose()
