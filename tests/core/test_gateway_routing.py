"""The gateway: model="auto" through a router with fallbacks and router.choice events, the model
registry, and the circuit breaker (virtual clock)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import pytest
from flowyard.builtin.fake import FakeProvider
from flowyard.llm.circuit import BreakerSet, CircuitBreaker
from flowyard.clock import VirtualClock
from flowyard.context import ToolContext
from flowyard.errors import (
    AuthenticationError,
    BadRequestError,
    CircuitOpenError,
    ConfigError,
    ProviderTimeoutError,
    RateLimitedError,
    ServerError,
    UnknownNameError,
)
from flowyard.hookspecs import hookimpl
from flowyard.interfaces import RouteRequest
from flowyard.llm.modelregistry import eligible, ineligibility
from flowyard.models import Event, ModelInfo, ToolSpec
from flowyard.stack import Stack

pytestmark = pytest.mark.anyio


class ListRouter:
    """Returns the eligible models in the order of ``prefer`` and records outcomes."""

    def __init__(self, prefer: Sequence[str]) -> None:
        self.prefer = list(prefer)
        self.outcomes: list[tuple[str, bool]] = []
        self.requests: list[RouteRequest] = []

    async def choose(self, request: RouteRequest, models: Sequence[ModelInfo]) -> list[ModelInfo]:
        self.requests.append(request)
        by_ref = {m.ref: m for m in eligible(models, request)}
        return [by_ref[r] for r in self.prefer if r in by_ref]

    def record_outcome(self, model: ModelInfo, *, success: bool, cost_usd: float | None,
                       latency_s: float) -> None:
        self.outcomes.append((model.ref, success))


def _stack(providers: Sequence[FakeProvider], routers: dict[str, Any] | None = None,
           **config: Any) -> tuple[Stack, list[Event]]:
    class Plugin:
        @hookimpl
        def register_providers(self, register, config):  # type: ignore[no-untyped-def]
            for p in providers:
                register(p.name, p)

        @hookimpl
        def register_routers(self, register, config):  # type: ignore[no-untyped-def]
            for name, router in (routers or {}).items():
                register(name, router)

    stack = Stack(plugins=[Plugin()], config=config)
    events: list[Event] = []
    stack.events.subscribe(events.append)
    return stack, events


async def test_auto_tries_the_router_order_and_falls_back_after_retriable_errors() -> None:
    a = FakeProvider("a", script=[ServerError("down", provider="a")])
    b = FakeProvider("b")
    router = ListRouter(["a/priced", "b/priced"])
    stack, events = _stack([a, b], {"mine": router})
    ctx = ToolContext(stack=stack, run_id="r", step_id="s")
    response = await stack.llm.chat("hello", model="auto", router="mine", context=ctx)
    assert (response.provider, response.model) == ("b", "priced")
    choices = [e for e in events if e.type == "router.choice"]
    assert [(e.data["model"], e.data["attempt"]) for e in choices] == [("a/priced", 0),
                                                                      ("b/priced", 1)]
    assert choices[0].data["router"] == "mine"
    assert choices[0].data["fallbacks"] == ["b/priced"]
    assert "ServerError" in choices[1].data["reason"]
    assert all(e.run_id == "r" and e.step_id == "s" for e in choices)
    assert router.outcomes == [("a/priced", False), ("b/priced", True)]
    assert [e.data["error_type"] for e in events if e.type == "llm.error"] == ["ServerError"]


async def test_a_non_retriable_error_is_not_hidden_by_fallback() -> None:
    a = FakeProvider("a", script=[AuthenticationError("bad key", provider="a")])
    b = FakeProvider("b")
    stack, _ = _stack([a, b], {"mine": ListRouter(["a/echo", "b/echo"])})
    with pytest.raises(AuthenticationError):
        await stack.llm.chat("hello", model="auto", router="mine")
    assert b.requests == []


async def test_when_every_model_fails_the_last_error_is_raised() -> None:
    a = FakeProvider("a", script=[ServerError("a down", provider="a")])
    b = FakeProvider("b", script=[ProviderTimeoutError("b slow", provider="b")])
    stack, _ = _stack([a, b], {"mine": ListRouter(["a/echo", "b/echo"])})
    with pytest.raises(ProviderTimeoutError, match="b slow"):
        await stack.llm.chat("hello", model="auto", router="mine")


async def test_router_comes_from_configuration_and_requirements_reach_it() -> None:
    a, b = FakeProvider("a"), FakeProvider("b", models=["small"])
    router = ListRouter(["b/small", "a/priced"])
    stack, _ = _stack([a, b], {"conf": router}, routing={"router": "conf"},
                      models={"info": {"b/small": {"context_window": 512}}})
    tool = ToolSpec("lookup", "find things")
    response = await stack.llm.chat("hi", model="auto", tools=[tool],
                                    route=RouteRequest(min_context=1000))
    assert response.provider == "a"  # b/small's window is too small
    seen = router.requests[-1]
    assert "tools" in seen.capabilities  # implied by the tools given
    assert seen.estimated_input_tokens > 0


async def test_models_default_auto_routes_every_call() -> None:
    router = ListRouter(["a/priced"])
    stack, events = _stack([FakeProvider("a")], {"cheapest": router},
                           models={"default": "auto"})
    response = await stack.llm.chat("hi")
    assert response.model == "priced"
    assert any(e.type == "router.choice" for e in events)


async def test_no_fitting_model_and_unknown_router_are_clear_errors() -> None:
    stack, _ = _stack([FakeProvider("a")], {"mine": ListRouter(["a/echo"])})
    with pytest.raises(UnknownNameError, match="auto"):
        await stack.llm.chat("hi", model="auto", router="mine",
                             route=RouteRequest(capabilities=["telepathy"]))
    with pytest.raises(UnknownNameError, match="router 'nope'"):
        await stack.llm.chat("hi", model="auto", router="nope")


async def test_streaming_auto_falls_back_before_the_first_chunk() -> None:
    a = FakeProvider("a", script=[ServerError("down", provider="a")])
    b = FakeProvider("b")
    stack, events = _stack([a, b], {"mine": ListRouter(["a/echo", "b/echo"])})
    text = "".join([c.delta async for c in stack.llm.stream("one two", model="auto",
                                                            router="mine")])
    assert text == "echo: one two"
    assert [e.data["model"] for e in events if e.type == "router.choice"] == ["a/echo", "b/echo"]


# ----------------------------------------------------------------------------- registry


async def test_registry_applies_overrides_and_reports_failing_providers() -> None:
    class Broken(FakeProvider):
        async def list_models(self) -> list[ModelInfo]:
            raise ServerError("listing failed", provider=self.name)

    stack, events = _stack([FakeProvider("a"), Broken("z")], models={"info": {
        "a/unpriced": {"input_per_mtok": 0.5, "output_per_mtok": 1.5, "as_of": "2026-11-22",
                       "source": "test table"},
        "a/extra": {"context_window": 8192, "capabilities": ["chat", "tools"]},
    }})
    models = {m.ref: m for m in await stack.llm.list_models()}
    assert models["a/unpriced"].price is not None
    assert models["a/unpriced"].price.output_per_mtok == 1.5
    assert models["a/unpriced"].price.source == "test table"
    assert models["a/extra"].context_window == 8192
    assert not any(ref.startswith("z/") for ref in models)
    assert "listing failed" in stack.llm.models.errors["z"]
    assert any(e.type == "provider.error" and e.data["provider"] == "z" for e in events)
    bad, _ = _stack([FakeProvider("a")], models={"info": {"a/echo": {"input_per_mtok": 1}}})
    with pytest.raises(ConfigError, match="give both input_per_mtok and output_per_mtok"):
        await bad.llm.list_models()


def test_ineligibility_names_the_reason() -> None:
    info = ModelInfo("p", "m", context_window=4096, capabilities={"chat", "tools"})
    assert ineligibility(info, RouteRequest()) is None
    assert ineligibility(info, RouteRequest(capabilities=["vision"])) == "lacks vision"
    assert "context window 4096 < 8000" in str(ineligibility(info, RouteRequest(min_context=8000)))
    assert ineligibility(info, RouteRequest(max_input_price=1.0)) == "price unknown"
    embed_only = ModelInfo("p", "e", capabilities={"embeddings"})
    assert ineligibility(embed_only, RouteRequest()) == "not a chat model"


# ----------------------------------------------------------------------------- circuit breaker


def test_breaker_opens_after_n_failures_then_allows_a_single_probe() -> None:
    clock = VirtualClock()
    changes: list[tuple[str, str]] = []
    breaker = CircuitBreaker("p", failure_threshold=3, cooldown_s=10, clock=clock,
                             on_change=lambda name, old, new: changes.append((old, new)))
    for _ in range(2):
        assert breaker.before_call() is False
        breaker.on_failure(False)
    assert breaker.state == "closed"
    breaker.before_call()
    breaker.on_failure(False)
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError, match=r"next probe in 10\.0 s"):
        breaker.before_call()
    clock._now = 10.0
    assert breaker.before_call() is True  # the probe
    with pytest.raises(CircuitOpenError, match="probe"):
        breaker.before_call()
    breaker.on_failure(True)  # failed probe: open again for a cooldown
    assert breaker.state == "open"
    clock._now = 20.0
    probe = breaker.before_call()
    breaker.on_abort(probe)  # a cancelled probe frees the place
    probe = breaker.before_call()
    breaker.on_success(probe)
    assert breaker.state == "closed" and breaker.consecutive_failures == 0
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "open"),
                       ("open", "half_open"), ("half_open", "closed")]


def test_breaker_configuration_is_validated() -> None:
    sets = BreakerSet({"failure_threshold": 2, "cooldown_s": 5, "p": {"enabled": False}})
    assert sets.breaker("p") is None
    other = sets.breaker("q")
    assert other is not None and other.failure_threshold == 2
    with pytest.raises(ConfigError, match="circuit: unknown key 'failures'"):
        BreakerSet({"failures": 3})
    with pytest.raises(ConfigError, match="cooldown_s"):
        BreakerSet({"cooldown_s": -1})


async def test_gateway_fails_fast_while_open_and_recovers_after_a_probe() -> None:
    errors = [ServerError(f"down {i}", provider="p") for i in range(3)]
    provider = FakeProvider("p", script=[*errors, BadRequestError("no", provider="p"),
                                         RateLimitedError("429", provider="p")])
    stack, events = _stack([provider], circuit={"failure_threshold": 3, "cooldown_s": 30})
    clock = VirtualClock()
    stack.llm.use_clock(clock)
    for _ in range(3):
        with pytest.raises(ServerError):
            await stack.llm.chat("hi", model="p/echo")
    calls_before = len(provider.requests)
    with pytest.raises(CircuitOpenError):
        await stack.llm.chat("hi", model="p/echo")
    assert len(provider.requests) == calls_before  # failed fast, provider not called
    await clock.advance(30)
    # the probe gets a caller error: the provider answered, so the circuit closes
    with pytest.raises(BadRequestError):
        await stack.llm.chat("hi", model="p/echo")
    assert stack.llm.breakers.breaker("p").state == "closed"  # type: ignore[union-attr]
    with pytest.raises(RateLimitedError):  # rate limits do not count as failures
        await stack.llm.chat("hi", model="p/echo")
    assert stack.llm.breakers.breaker("p").consecutive_failures == 0  # type: ignore[union-attr]
    assert (await stack.llm.chat("hi", model="p/echo")).text == "echo: hi"
    states = [(e.data["old"], e.data["new"]) for e in events if e.type == "circuit.state"]
    assert states == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


async def test_concurrent_callers_during_the_probe_fail_fast() -> None:
    provider = FakeProvider("p", script=[ServerError("down", provider="p")], delay=0.0)
    stack, _ = _stack([provider], circuit={"failure_threshold": 1, "cooldown_s": 5})
    clock = VirtualClock()
    stack.llm.use_clock(clock)
    with pytest.raises(ServerError):
        await stack.llm.chat("hi", model="p/echo")
    await clock.advance(5)
    provider.delay = 0.2  # the probe takes a while (real time)
    results: list[str] = []

    async def call() -> None:
        try:
            await stack.llm.chat("hi", model="p/echo")
            results.append("ok")
        except CircuitOpenError:
            results.append("open")

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(call)
    assert sorted(results) == ["ok", "open", "open", "open"]


async def test_an_open_circuit_fails_fast_without_queueing_for_a_rate_limit() -> None:
    provider = FakeProvider("p", script=[ServerError("down", provider="p")])
    stack, _ = _stack([provider], circuit={"failure_threshold": 1, "cooldown_s": 100},
                      limits={"p": {"concurrency": 1}})
    clock = VirtualClock()
    stack.llm.use_clock(clock)
    with pytest.raises(ServerError):
        await stack.llm.chat("hi", model="p/echo")
    held = await stack.llm.limiters.limiter("p").acquire()  # the only slot is taken
    with anyio.fail_after(5):
        with pytest.raises(CircuitOpenError):
            await stack.llm.chat("hi", model="p/echo")
    held.release()
    assert stack.llm.breakers.breaker("p").rejected == 1  # type: ignore[union-attr]


async def test_a_provider_that_cannot_list_is_not_asked_on_every_call() -> None:
    asked: list[int] = []

    class Slow(FakeProvider):
        async def list_models(self) -> list[ModelInfo]:
            asked.append(1)
            raise ProviderTimeoutError("no answer", provider=self.name)

    stack, _ = _stack([FakeProvider("a"), Slow("z")], {"mine": ListRouter(["a/echo"])})
    for _ in range(3):
        await stack.llm.chat("hi", model="auto", router="mine")
    assert len(asked) == 1
    await stack.llm.models.all(refresh=True)
    assert len(asked) == 2
