"""flowyard-routing: cheapest, fallback and ucb, directly and through the gateway and engine."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import flowyard_routing.plugin
import pytest
from flowyard.builtin.fake import FakeProvider
from flowyard.errors import ConfigError, ServerError, UnknownNameError
from flowyard.hookspecs import hookimpl
from flowyard.interfaces import Router, RouteRequest
from flowyard.models import Event, ModelInfo, ModelPrice, Usage
from flowyard.stack import Stack
from flowyard_routing.routers import CheapestRouter, FallbackRouter, UCBRouter

CHAT = {"chat", "tools"}
MODELS = [
    ModelInfo("a", "big", context_window=128_000, capabilities=CHAT | {"vision"},
              price=ModelPrice(5.0, 15.0)),
    ModelInfo("a", "small", context_window=16_000, capabilities=CHAT,
              price=ModelPrice(0.15, 0.6)),
    ModelInfo("b", "mid", context_window=64_000, capabilities=CHAT | {"json"},
              price=ModelPrice(0.5, 1.5)),
    ModelInfo("b", "mystery", context_window=32_000, capabilities=CHAT),
    ModelInfo("b", "embed", capabilities={"embeddings"}, price=ModelPrice(0.02, 0.0)),
]


def _stack(*providers: FakeProvider, **config: object) -> tuple[Stack, list[Event]]:
    class Providers:
        @hookimpl
        def register_providers(self, register, config):  # type: ignore[no-untyped-def]
            for p in providers:
                register(p.name, p)

    stack = Stack(plugins=[("routing", flowyard_routing.plugin), Providers()], config=config)
    events: list[Event] = []
    stack.events.subscribe(events.append)
    return stack, events


def test_the_plugin_registers_three_routers_that_implement_the_protocol() -> None:
    stack = Stack(plugins=[("routing", flowyard_routing.plugin)],
                  config={"routing": {"fallback": {"models": ["a/x", "b/y"]}}})
    assert {"cheapest", "fallback", "ucb"} <= set(stack.routers.names())
    for name in ("cheapest", "fallback", "ucb"):
        assert isinstance(stack.routers.get(name), Router)
        assert stack.routers.plugin_of(name) == "routing"
    assert stack.routers.get("fallback").models == ["a/x", "b/y"]


@pytest.mark.anyio
async def test_cheapest_orders_by_estimated_cost_and_explains() -> None:
    router = CheapestRouter()
    choices = await router.choose_explained(RouteRequest(estimated_input_tokens=1000), MODELS)
    assert [m.ref for m, _ in choices] == ["a/small", "b/mid", "a/big", "b/mystery"]
    assert choices[0][1].startswith("cheapest of 4 eligible")
    assert "$0.15/$0.6 per Mtok" in choices[0][1]
    assert "price unknown" in choices[-1][1]
    priced_only = CheapestRouter(include_unpriced=False)
    assert [m.ref for m in await priced_only.choose(RouteRequest(), MODELS)] == [
        "a/small", "b/mid", "a/big"]


@pytest.mark.anyio
async def test_cheapest_applies_capabilities_context_and_price() -> None:
    router = CheapestRouter()
    assert [m.ref for m in await router.choose(RouteRequest(capabilities=["vision"]), MODELS)] \
        == ["a/big"]
    assert [m.ref for m in await router.choose(RouteRequest(min_context=50_000), MODELS)] == [
        "b/mid", "a/big"]
    cheap = await router.choose(RouteRequest(max_input_price=1.0), MODELS)
    assert [m.ref for m in cheap] == ["a/small", "b/mid"]  # unpriced excluded by a price cap
    with pytest.raises(UnknownNameError) as info:
        await router.choose(RouteRequest(capabilities=["vision"], max_input_price=1.0), MODELS)
    assert "a/big (input price $5/Mtok > $1/Mtok)" in str(info.value)
    assert "a/small (lacks vision)" in str(info.value)


def test_router_configuration_is_validated() -> None:
    assert CheapestRouter.from_config({"expected_output_tokens": 100}).expected_output_tokens \
        == 100
    with pytest.raises(ConfigError, match=r"routing\.cheapest: unknown key 'cheap'"):
        CheapestRouter.from_config({"cheap": True})
    with pytest.raises(ConfigError, match=r"routing\.ucb\.exploration has the wrong type"):
        UCBRouter.from_config({"exploration": "lots"})
    with pytest.raises(ConfigError, match="sum <= 1"):
        UCBRouter.from_config({"cost_weight": 0.8, "latency_weight": 0.5})
    with pytest.raises(ConfigError, match="not 'provider/model'"):
        FallbackRouter.from_config({"models": ["gpt"]})


@pytest.mark.anyio
async def test_fallback_keeps_its_order_and_skips_unfit_models() -> None:
    router = FallbackRouter(["b/mystery", "a/big", "c/unlisted", "a/small"])
    choices = await router.choose_explained(RouteRequest(), MODELS)
    assert [m.ref for m, _ in choices] == ["b/mystery", "a/big", "c/unlisted", "a/small"]
    assert choices[1][1] == "position 2 of 4 in the fallback list"
    vision = await router.choose(RouteRequest(capabilities=["vision"]), MODELS)
    assert [m.ref for m in vision] == ["a/big"]  # the unlisted model cannot show vision
    per_step = await router.choose(RouteRequest(candidates=["a/small", "b/mid"]), MODELS)
    assert [m.ref for m in per_step] == ["a/small", "b/mid"]
    with pytest.raises(ConfigError, match="needs an ordered list"):
        await FallbackRouter().choose(RouteRequest(), MODELS)


def test_ucb_reward_weighs_success_cost_and_latency() -> None:
    router = UCBRouter(cost_weight=0.3, latency_weight=0.2, cost_scale_usd=0.01,
                       latency_scale_s=10)
    assert router.reward(success=False, cost_usd=0.0, latency_s=0.0) == 0.0
    assert router.reward(success=True, cost_usd=0.0, latency_s=0.0) == 1.0
    assert router.reward(success=True, cost_usd=0.005, latency_s=5) == pytest.approx(0.75)
    assert router.reward(success=True, cost_usd=1.0, latency_s=100) == pytest.approx(0.5)


@pytest.mark.anyio
async def test_ucb_learns_which_model_works_and_keeps_exploring() -> None:
    rng = random.Random(7)
    success_rate = {"a/small": 0.3, "b/mid": 0.95, "a/big": 0.9}
    router = UCBRouter(exploration=0.5)
    picks: Counter[str] = Counter()
    first_choices = []
    for _ in range(400):
        choices = await router.choose_explained(RouteRequest(), MODELS[:3])
        model, reason = choices[0]
        first_choices.append(reason)
        picks[model.ref] += 1
        assert model.price is not None
        router.record_outcome(model, success=rng.random() < success_rate[model.ref],
                              cost_usd=model.price.cost(Usage(1000, 500)), latency_s=1.0)
    # untried models are explored first, cheapest first
    assert first_choices[0] == "untried: exploring (cheapest untried first)"
    assert picks.most_common(1)[0][0] == "b/mid"
    assert picks["b/mid"] > 250
    assert min(picks.values()) >= 5  # the others are still tried now and then
    stats = router.stats()
    assert stats["a/small"]["mean_reward"] < stats["b/mid"]["mean_reward"]
    assert "ucb score" in (await router.choose_explained(RouteRequest(), MODELS[:3]))[0][1]

    restored = UCBRouter(exploration=0.5)
    restored.import_state(router.export_state())
    assert restored.stats() == stats
    with pytest.raises(ValueError, match="version 1"):
        restored.import_state({"arms": {}})


@pytest.mark.anyio
async def test_ucb_through_the_gateway_moves_away_from_a_failing_model() -> None:
    failing = FakeProvider("a", script=[ServerError("down", provider="a")] * 50)
    healthy = FakeProvider("b")
    stack, events = _stack(failing, healthy, routing={"router": "ucb"},
                           circuit={"enabled": False})
    route = RouteRequest(candidates=["a/priced", "b/priced"])
    for _ in range(20):
        response = await stack.llm.chat("hi", model="auto", route=route)
        assert response.provider == "b"  # the fallback answered every time
    firsts = [e.data["model"] for e in events
              if e.type == "router.choice" and e.data["attempt"] == 0]
    assert firsts.count("a/priced") < 10  # it learned to start with b
    assert firsts[-1] == "b/priced"
    assert stack.routers.get("ucb").stats()["a/priced"]["failures"] >= 1


@pytest.mark.anyio
async def test_a_workflow_step_with_requirements_is_routed_to_the_cheapest_fit(
        flowyard_home: Path) -> None:
    stack, events = _stack(FakeProvider("vendor", models=["pricey", "budget", "tiny"]),
                           storage={"url": "memory://"}, models={"info": {
                               "vendor/pricey": {"input_per_mtok": 10.0, "output_per_mtok": 30.0,
                                                 "context_window": 100_000},
                               "vendor/budget": {"input_per_mtok": 0.1, "output_per_mtok": 0.4,
                                                 "context_window": 100_000},
                               "vendor/tiny": {"input_per_mtok": 0.01, "output_per_mtok": 0.02,
                                               "context_window": 2_000},
                           }})
    async with stack:
        result = await stack.run({"name": "routed", "steps": [
            {"id": "ask", "uses": "llm.chat", "with": {
                "prompt": "summarize", "requirements": {"min_context": 8000}}},
        ]})
        costs = await stack.storage.list_costs(result.run_id)
    assert result.ok, result.error
    choice = next(e for e in events if e.type == "router.choice")
    assert choice.data["model"] == "vendor/budget" and choice.data["router"] == "cheapest"
    assert choice.step_id == "ask" and choice.run_id == result.run_id
    assert "cheapest of 2 eligible" in choice.data["reason"]
    assert [(c.model, c.step_id) for c in costs] == [("budget", "ask")]
    assert costs[0].cost_usd is not None  # the provider reported it (the fake: free)


@pytest.mark.anyio
async def test_ucb_learning_is_kept_in_storage_across_stacks() -> None:
    from flowyard.builtin.memory_storage import MemoryStorage

    shared = MemoryStorage()

    class SharedStorage:
        @hookimpl
        def register_storage(self, register, config):  # type: ignore[no-untyped-def]
            register("shared", lambda url, config: shared, default_priority=100)

    def make() -> Stack:
        failing = FakeProvider("a", script=[ServerError("down", provider="a")] * 50)
        return Stack(plugins=[("routing", flowyard_routing.plugin), SharedStorage(),
                              ("providers", _Providers(failing, FakeProvider("b")))],
                     config={"routing": {"router": "ucb"}, "circuit": {"enabled": False}})

    route = RouteRequest(candidates=["a/echo", "b/echo"])
    first = make()
    async with first:
        for _ in range(5):
            await first.llm.chat("hi", model="auto", route=route)
        learned = first.routers.get("ucb").stats()
        stored = await first.storage.kv_get("flowyard.routing", "ucb")
    assert stored is not None and stored["arms"]["a/echo"]["failures"] >= 1
    second = make()
    async with second:
        await second.llm.chat("hi", model="auto", route=route)
        relearned = second.routers.get("ucb").stats()
    assert relearned["a/echo"]["tries"] >= learned["a/echo"]["tries"]
    assert relearned["b/echo"]["tries"] == learned["b/echo"]["tries"] + 1

    off = Stack(plugins=[("routing", flowyard_routing.plugin), SharedStorage()],
                config={"routing": {"persist": False}, "models": {"default": "fake/echo"}})
    async with off:
        await off.llm.chat("hi", model="auto", router="ucb")
        fresh = off.routers.get("ucb").stats()
    assert "a/echo" not in fresh and fresh["fake/echo"]["tries"] == 1  # nothing was loaded


class _Providers:
    def __init__(self, *providers: FakeProvider) -> None:
        self.providers = providers

    @hookimpl
    def register_providers(self, register, config):  # type: ignore[no-untyped-def]
        for p in self.providers:
            register(p.name, p)
