"""Per-caller rate limits (``[limits.<kind>.<id>]``) and daily budgets
(``[budgets.<kind>.<id>]``): the run's ``actor`` (run metadata, set by a server) gets its own
quota on top of the model's and the provider's."""

from __future__ import annotations

from typing import Any

import flowyard
import pytest
from flowyard.builtin.fake import FakeProvider
from flowyard.clock import VirtualClock
from flowyard.context import ToolContext
from flowyard.errors import BudgetExceeded, ConfigError
from flowyard.llm.budget import CallerBudgets
from flowyard.llm.ratelimit import LimiterSet, caller_keys
from flowyard.models import Event
from flowyard.stack import Stack


class Plugin:
    def __init__(self, provider: FakeProvider) -> None:
        self.provider = provider

    @flowyard.hookimpl
    def register_providers(self, register: Any) -> None:
        register(self.provider.name, self.provider)


def test_caller_keys_read_the_actor() -> None:
    assert caller_keys(None) == []
    assert caller_keys({"user": "ada", "key_id": "k1", "tenant": "acme", "other": 1}) == [
        ("user", "ada"), ("key", "k1"), ("tenant", "acme")]
    # what flowyard-server stores at submission
    assert caller_keys({"actor": "api_key:k7", "tenant": "acme"}) == [("key", "k7"),
                                                                      ("tenant", "acme")]
    assert caller_keys({"actor": "tenant:acme", "tenant": "acme"}) == [("tenant", "acme")]
    assert caller_keys({"actor": "unknown", "tenant": "acme"}) == [("tenant", "acme")]
    with pytest.raises(TypeError, match="must be a mapping"):
        caller_keys("ada")
    with pytest.raises(TypeError, match=r"actor\.tenant must be a non-empty string"):
        caller_keys({"tenant": ""})


@pytest.mark.anyio
async def test_each_caller_has_its_own_limiter() -> None:
    clock = VirtualClock()
    limits = LimiterSet({"tenant": {"acme": {"requests_per_minute": 2, "smooth": False},
                                    "*": {"rpm": 1, "smooth": False}},
                         "max_wait_s": 0}, clock=clock)
    acme = [("tenant", "acme")]
    for _ in range(2):
        (await limits.acquire("p", "m", 0, acme)).release()
    with pytest.raises(TimeoutError):
        await limits.acquire("p", "m", 0, acme)
    # another tenant has its own quota from "*", and a caller without limits is not limited
    (await limits.acquire("p", "m", 0, [("tenant", "globex")])).release()
    with pytest.raises(TimeoutError):
        await limits.acquire("p", "m", 0, [("tenant", "globex")])
    for _ in range(3):
        (await limits.acquire("p", "m", 0, [("user", "ada")])).release()
        (await limits.acquire("p", "m")).release()
    assert {"tenant:acme", "tenant:globex"} <= set(limits.stats())
    assert "user:ada" not in limits.stats()
    await clock.advance(60.0)
    (await limits.acquire("p", "m", 0, acme)).release()


def test_caller_limit_tables_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"limits.tenant.'acme': unknown key 'rpx'"):
        LimiterSet({"tenant": {"acme": {"rpx": 1}}})
    with pytest.raises(ConfigError, match="usd_per_day must be a number >= 0"):
        CallerBudgets({"tenant": {"acme": {"usd_per_day": -1}}})
    with pytest.raises(ConfigError, match="with usd_per_day only"):
        CallerBudgets({"key": {"k1": {"usd": 1}}})


def test_a_callers_budget_lasts_one_utc_day() -> None:
    now = [86400.0 * 100 + 10]
    budgets = CallerBudgets({"tenant": {"*": {"usd_per_day": 2}}, "unknown_price": "allow"},
                            now=lambda: now[0])
    (first,) = budgets.budgets([("tenant", "acme"), ("user", "ada")])
    assert (first.scope, first.name, first.limit_usd) == ("tenant", "acme", 2.0)
    assert budgets.budgets([("tenant", "acme")]) == [first]
    first.spent_usd = 2.0
    now[0] += 86400
    (fresh,) = budgets.budgets([("tenant", "acme")])
    assert fresh is not first and fresh.spent_usd == 0.0


@pytest.mark.anyio
async def test_the_gateway_charges_the_runs_actor() -> None:
    provider = FakeProvider("scripted", models=("priced",))
    stack = Stack([Plugin(provider)],
                  config={"budgets": {"tenant": {"acme": {"usd_per_day": 0.001}}},
                          "limits": {"key": {"k1": {"rpm": 1, "smooth": False}},
                                     "max_wait_s": 0}})
    seen: list[Event] = []
    stack.events.subscribe(seen.append)
    acme = ToolContext(stack, actor={"tenant": "acme"})
    # 1 US dollar per million input tokens, 2 per million output: 1000 output tokens cost
    # at most $0.002, more than acme's $0.001 a day
    with pytest.raises(BudgetExceeded, match="tenant budget 'acme'"):
        await stack.llm.chat("hello", model="scripted/priced", context=acme, max_tokens=1000)
    (exceeded,) = [e.data for e in seen if e.type == "budget.exceeded"]
    assert exceeded["scope"] == "tenant"
    await stack.llm.chat("hello", model="scripted/priced", context=acme, max_tokens=10)
    spent = stack.llm.caller_budgets.snapshot()["tenant:acme"]["spent_usd"]
    assert spent > 0
    # another tenant has no budget configured; the key's rpm is its own
    other = ToolContext(stack, actor={"actor": "api_key:k1", "tenant": "globex"})
    await stack.llm.chat("hello", model="scripted/priced", context=other, max_tokens=1000)
    with pytest.raises(Exception, match="max_wait_s"):
        await stack.llm.chat("hello", model="scripted/priced", context=other, max_tokens=10)
    await stack.llm.chat("hello", model="scripted/priced", max_tokens=10)  # no actor


@pytest.mark.anyio
async def test_a_run_passes_its_metadata_actor_to_its_steps() -> None:
    provider = FakeProvider("scripted", ["one", "two"], models=("priced",))
    stack = Stack([Plugin(provider)],
                  config={"budgets": {"user": {"ada": {"usd_per_day": 0.0001}}}})
    workflow = {"name": "ask", "steps": [{"id": "ask", "uses": "llm.chat", "with": {
        "model": "scripted/priced", "prompt": "hi", "max_tokens": 500}}]}
    async with stack:
        free = await stack.run(workflow, metadata={"actor": {"user": "bob"}})
        assert free.ok, free.error
        refused = await stack.run(workflow, metadata={"actor": {"user": "ada"}})
    assert not refused.ok and "user budget 'ada'" in str(refused.error)
    assert refused.steps["ask"].status == "budget_exceeded"
