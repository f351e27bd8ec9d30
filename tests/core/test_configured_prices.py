"""Configured prices (``[models.info]``) are what the cost ledger records, the same price the
budget reserved with, even when the provider reports its own cost for the call (issue 20)."""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

import pytest
from flowyard.builtin.fake import FakeProvider
from flowyard.context import ToolContext
from flowyard.errors import ConfigError
from flowyard.hookspecs import hookimpl
from flowyard.llm.budget import Budget, BudgetChain, estimate_max_cost, estimate_prompt_tokens
from flowyard.models import ModelPrice, Usage
from flowyard.stack import Stack

# fake/priced reports its own cost for every call: $1 in, $2 out per million tokens
CONFIGURED = {"input_per_mtok": 10.0, "output_per_mtok": 30.0,
              "source": "https://example.test/pricing", "as_of": "2026-12-01"}


def _stack(provider: FakeProvider, info: dict[str, Any] | None) -> Stack:
    class Plugin:
        @hookimpl
        def register_providers(self, register, config):  # type: ignore[no-untyped-def]
            register(provider.name, provider)

    config: dict[str, Any] = {"storage": {"url": "memory://"}}
    if info is not None:
        config["models"] = {"info": info}
    return Stack(plugins=[Plugin()], config=config)


def _expected(usage: Usage, input_per_mtok: float, output_per_mtok: float) -> float:
    return (usage.input_tokens * input_per_mtok + usage.output_tokens * output_per_mtok) / 1e6


@pytest.mark.anyio
async def test_ledger_records_the_configured_price_the_budget_reserved() -> None:
    provider = FakeProvider("fk")
    stack = _stack(provider, {"fk/priced": CONFIGURED})
    run = Budget(1.0, "run", "r1")
    ctx = ToolContext(stack=stack, run_id="r1", step_id="ask", budget=BudgetChain((run,)),
                      workflow_name="wf")
    reserved: list[float] = []
    original = BudgetChain.reserve

    def spy(self: BudgetChain, amount_usd: float) -> Any:
        reserved.append(amount_usd)
        return original(self, amount_usd)

    async with stack:
        BudgetChain.reserve = spy  # type: ignore[method-assign]
        try:
            response = await stack.llm.chat("three words here", model="fk/priced",
                                             context=ctx, max_tokens=50)
        finally:
            BudgetChain.reserve = original  # type: ignore[method-assign]
        lines = await stack.storage.list_costs("r1")
    usage = response.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    provider_figure = _expected(usage, 1.0, 2.0)
    configured = _expected(usage, 10.0, 30.0)
    assert configured != pytest.approx(provider_figure)
    [line] = lines
    assert line.cost_usd == pytest.approx(configured)
    assert line.cost_usd == pytest.approx(run.spent_usd)  # what the budget counted
    assert response.cost_usd == pytest.approx(configured)
    # the reservation was made at the configured price too (prompt estimate + max_tokens)
    prompt = estimate_prompt_tokens(provider.requests[0])
    assert reserved == [pytest.approx(estimate_max_cost(ModelPrice(10.0, 30.0), prompt, 50))]
    assert reserved[0] >= configured
    assert run.reserved_usd == pytest.approx(0.0)


@pytest.mark.anyio
async def test_streamed_call_records_the_configured_price() -> None:
    provider = FakeProvider("fk", ["a streamed answer of six words"])
    stack = _stack(provider, {"fk/priced": CONFIGURED})
    run = Budget(1.0, "run", "r2")
    ctx = ToolContext(stack=stack, run_id="r2", step_id="ask", budget=BudgetChain((run,)))
    async with stack:
        async with aclosing(stack.llm.stream("hello there", model="fk/priced", context=ctx,
                                             max_tokens=50)) as chunks:
            usage = [c.usage async for c in chunks if c.done][-1]
        [line] = await stack.storage.list_costs("r2")
    assert usage is not None
    assert line.cost_usd == pytest.approx(_expected(usage, 10.0, 30.0))
    assert line.cost_usd == pytest.approx(run.spent_usd)


@pytest.mark.anyio
async def test_without_a_configured_price_the_providers_figure_is_recorded() -> None:
    provider = FakeProvider("fk")
    stack = _stack(provider, {"fk/priced": {"context_window": 2048}})
    run = Budget(1.0, "run", "r3")
    ctx = ToolContext(stack=stack, run_id="r3", step_id="ask", budget=BudgetChain((run,)))
    async with stack:
        response = await stack.llm.chat("three words here", model="fk/priced", context=ctx,
                                        max_tokens=50)
        [line] = await stack.storage.list_costs("r3")
    assert line.cost_usd == pytest.approx(_expected(response.usage, 1.0, 2.0))
    assert line.cost_usd == pytest.approx(run.spent_usd)


@pytest.mark.anyio
async def test_configured_price_lookup() -> None:
    stack = _stack(FakeProvider("fk"), {"fk/priced": CONFIGURED,
                                        "fk/echo": {"context_window": 100},
                                        "fk/bad": {"input_per_mtok": 1.0}})
    async with stack:
        registry = stack.llm.models
        assert registry.configured_price("fk/priced") == ModelPrice(
            10.0, 30.0, source="https://example.test/pricing", as_of="2026-12-01")
        assert registry.configured_price("fk/echo") is None
        assert registry.configured_price("fk/unknown") is None
        with pytest.raises(ConfigError, match="give both"):
            registry.configured_price("fk/bad")
