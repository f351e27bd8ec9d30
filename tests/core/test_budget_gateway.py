"""Budgets: atomic reservations, estimates, and the gateway refusing calls that would not fit,
including 50 concurrent calls against one budget."""

from __future__ import annotations

import math

import anyio
import pytest
from flowyard.llm.budget import (
    IMAGE_TOKENS,
    Budget,
    BudgetChain,
    estimate_max_cost,
    estimate_prompt_tokens,
    estimate_text_tokens,
)
from flowyard.builtin.fake import FakeProvider
from flowyard.context import ToolContext
from flowyard.errors import BudgetExceeded, ServerError
from flowyard.hookspecs import hookimpl
from flowyard.models import ChatRequest, ImagePart, Message, ModelPrice
from flowyard.stack import Stack


def _stack(provider: FakeProvider, **config: object) -> Stack:
    class Plugin:
        @hookimpl
        def register_providers(self, register, config):  # type: ignore[no-untyped-def]
            register(provider.name, provider)

    return Stack(plugins=[Plugin()], config=config)


# ----------------------------------------------------------------------------- primitives


def test_reservation_is_all_or_nothing_across_the_chain() -> None:
    run, step = Budget(1.0, "run", "r"), Budget(0.3, "step", "s")
    chain = BudgetChain.of([run, None, step])
    held = chain.reserve(0.25)
    with pytest.raises(BudgetExceeded) as info:
        chain.reserve(0.1)
    assert info.value.scope == "step" and info.value.requested_usd == 0.1
    assert run.reserved_usd == pytest.approx(0.25)  # the refused one held nothing
    BudgetChain.settle(held, 0.2)
    BudgetChain.settle(held, 5.0)  # idempotent
    assert (run.spent_usd, step.spent_usd) == (pytest.approx(0.2), pytest.approx(0.2))
    assert run.reserved_usd == pytest.approx(0.0)
    assert chain.remaining_usd == pytest.approx(0.1)
    unknown = chain.reserve(0.0)
    BudgetChain.settle(unknown, None)
    assert run.unknown_cost_calls == 1 and run.spent_usd == pytest.approx(0.2)
    assert [b["scope"] for b in chain.snapshot()] == ["run", "step"]


def test_estimates_are_conservative() -> None:
    assert estimate_text_tokens("") == 0
    assert estimate_text_tokens("abcdef") == 2
    assert estimate_text_tokens("日本語") == 3  # every non-ASCII character counts as a token
    request = ChatRequest(model="m", messages=[
        Message.system("be brief"),
        Message.user("look", images=[ImagePart(url="https://example.invalid/a.png")]),
    ])
    tokens = estimate_prompt_tokens(request)
    assert tokens >= IMAGE_TOKENS + estimate_text_tokens("be brief") + estimate_text_tokens("look")
    price = ModelPrice(1.0, 2.0)
    assert estimate_max_cost(price, 1000, 500) == pytest.approx(0.002)


# ----------------------------------------------------------------------------- gateway

@pytest.mark.anyio
async def test_a_call_that_does_not_fit_is_not_made() -> None:
    provider = FakeProvider("fk")
    stack = _stack(provider)
    budget = Budget(0.0001, "step", "s1")
    ctx = ToolContext(stack=stack, run_id="", step_id="s1", budget=BudgetChain((budget,)))
    events: list[str] = []
    stack.events.subscribe(lambda e: events.append(e.type))
    # 200 output tokens at $2/M = $0.0004 > $0.0001
    with pytest.raises(BudgetExceeded, match="step budget 's1'"):
        await stack.llm.chat("hello", model="fk/priced", context=ctx, max_tokens=200)
    assert provider.requests == []
    assert budget.spent_usd == 0 and budget.reserved_usd == 0
    assert "budget.exceeded" in events
    # a smaller call fits, and is settled at its actual cost
    response = await stack.llm.chat("hello", model="fk/priced", context=ctx, max_tokens=10)
    assert budget.spent_usd == pytest.approx(response.cost_usd)
    assert budget.reserved_usd == pytest.approx(0.0)


@pytest.mark.anyio
async def test_unknown_price_is_refused_unless_allowed() -> None:
    provider = FakeProvider("fk")
    stack = _stack(provider)
    ctx = ToolContext(stack=stack, budget=Budget(1.0))
    with pytest.raises(BudgetExceeded, match="price of fk/unpriced is unknown"):
        await stack.llm.chat("hi", model="fk/unpriced", context=ctx, max_tokens=5)
    assert provider.requests == []
    allowed = _stack(FakeProvider("fk"), budgets={"unknown_price": "allow"})
    budget = Budget(1.0)
    ctx = ToolContext(stack=allowed, budget=budget)
    response = await allowed.llm.chat("hi", model="fk/unpriced", context=ctx, max_tokens=5)
    assert response.cost_usd is None
    assert budget.unknown_cost_calls == 1 and budget.spent_usd == 0


@pytest.mark.anyio
async def test_a_configured_price_makes_an_unpriced_model_usable() -> None:
    stack = _stack(FakeProvider("fk"), models={"info": {"fk/unpriced": {
        "input_per_mtok": 3.0, "output_per_mtok": 6.0, "source": "test", "as_of": "2026-11-22"}}})
    budget = Budget(1.0)
    response = await stack.llm.chat("one two", model="fk/unpriced",
                                    context=ToolContext(stack=stack, budget=budget),
                                    max_tokens=50)
    expected = (response.usage.input_tokens * 3 + response.usage.output_tokens * 6) / 1e6
    assert response.cost_usd == pytest.approx(expected)
    assert budget.spent_usd == pytest.approx(expected)


@pytest.mark.anyio
async def test_failed_calls_release_and_cancelled_calls_keep_their_reservation() -> None:
    provider = FakeProvider("fk", script=[ServerError("boom", provider="fk")])
    stack = _stack(provider)
    budget = Budget(1.0)
    ctx = ToolContext(stack=stack, budget=budget)
    with pytest.raises(ServerError):
        await stack.llm.chat("hi", model="fk/priced", context=ctx, max_tokens=100)
    assert budget.spent_usd == 0 and budget.reserved_usd == 0

    provider.delay = 5.0
    with anyio.move_on_after(0.05):
        await stack.llm.chat("hi", model="fk/priced", context=ctx, max_tokens=100)
    # the provider may have billed a cancelled call: the whole estimate counts as spent
    assert budget.reserved_usd == pytest.approx(0.0)
    assert budget.spent_usd >= 100 * 2 / 1e6


@pytest.mark.anyio
async def test_streaming_is_budgeted_and_settled() -> None:
    stack = _stack(FakeProvider("fk"))
    budget = Budget(1.0)
    ctx = ToolContext(stack=stack, budget=budget)
    chunks = [c async for c in stack.llm.stream("a b c", model="fk/priced", context=ctx,
                                                 max_tokens=50)]
    usage = chunks[-1].usage
    assert usage is not None
    assert budget.spent_usd == pytest.approx((usage.input_tokens + 2 * usage.output_tokens) / 1e6)
    assert budget.reserved_usd == pytest.approx(0.0)


@pytest.mark.anyio
async def test_fifty_concurrent_calls_never_overspend_one_budget() -> None:
    provider = FakeProvider("fk", delay=0.01)
    stack = _stack(provider)
    limit = 0.02
    run = Budget(limit, "run", "r1")
    prompt = " ".join(f"word{i}" for i in range(120))
    spent_seen: list[float] = []
    refused = 0
    made = 0

    async def worker(i: int) -> None:
        nonlocal refused, made
        chain = BudgetChain((run, Budget(0.01, "step", f"s{i}")))
        ctx = ToolContext(stack=stack, run_id="r1", step_id=f"s{i}", budget=chain,
                          workflow_name="wf")
        while True:
            try:
                await stack.llm.chat(prompt, model="fk/priced", context=ctx, max_tokens=150)
            except BudgetExceeded:
                refused += 1
                return
            made += 1
            spent_seen.append(run.spent_usd + run.reserved_usd)

    async with stack:
        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(worker, i)
        total_usd = sum(line.cost_usd or 0.0 for line in await stack.storage.list_costs("r1"))
    assert refused == 50, (refused, made)
    assert made == len(provider.requests) > 20
    assert max(spent_seen) <= limit + 1e-12
    assert run.spent_usd <= limit
    assert run.reserved_usd == pytest.approx(0.0, abs=1e-12)
    assert total_usd == pytest.approx(run.spent_usd)
    assert total_usd <= limit
    # the budget was used, not left idle: less than one call's worst case remains
    worst = estimate_max_cost(ModelPrice(1.0, 2.0), 2 * len(prompt), 150)
    assert limit - run.spent_usd < worst
    assert not math.isnan(total_usd)


@pytest.mark.anyio
async def test_a_providers_own_prompt_count_is_used_for_the_reservation() -> None:
    class Counting(FakeProvider):
        async def count_prompt_tokens(self, request: ChatRequest) -> int:
            return 400_000  # pretend the prompt is huge

    stack = _stack(Counting("fk"))
    budget = Budget(0.3)
    ctx = ToolContext(stack=stack, budget=budget)
    # 400k input tokens at $1/M = $0.40 > $0.30, although the text is two words
    with pytest.raises(BudgetExceeded, match=r"cannot cover \$0\.40"):
        await stack.llm.chat("two words", model="fk/priced", context=ctx, max_tokens=1)
