"""Shared rate limits, breakers and budgets: the contract on the in-memory storage, and the
gateway's use of a shared backend (``[limits] shared``)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from flowyard import hookimpl
from flowyard.builtin.memory_storage import MemoryStorage
from flowyard.context import ToolContext
from flowyard.errors import (
    BudgetExceeded,
    CircuitOpenError,
    ConfigError,
    RateLimitedError,
    ServerError,
    StorageError,
)
from flowyard.stack import Stack
from flowyard.testing import SharedLimitsContract


class TestMemorySharedLimitsContract(SharedLimitsContract):
    @pytest.fixture
    async def storage(self) -> Any:
        backend = MemoryStorage()
        await backend.open()
        yield backend
        await backend.close()


# ----------------------------------------------------------------------------- the gateway

pytestmark = pytest.mark.anyio


class _SharedScheme:
    """Registers ``shared://``: every stack of the test gets the same MemoryStorage, like
    processes sharing one database.
    """

    def __init__(self, backend: MemoryStorage) -> None:
        self.backend = backend

    @hookimpl
    def register_storage(self, register: Any, config: Any) -> None:
        register("shared", lambda url, config: self.backend)


class _Broken:
    """A storage scheme whose backend cannot be opened (an unreachable server)."""

    @hookimpl
    def register_storage(self, register: Any, config: Any) -> None:
        class Unreachable(MemoryStorage):
            async def open(self) -> None:
                raise StorageError("connection refused by 127.0.0.1:1")

        register("broken", lambda url, config: Unreachable(url))


def _stacks(n: int, config: dict[str, Any], *, backend: MemoryStorage | None = None
            ) -> list[Stack]:
    scheme = _SharedScheme(backend or MemoryStorage())
    base = {"storage": {"url": "memory://"}, "models": {"default": "fake/priced"}}
    return [Stack([scheme, _Broken()], config={**base, **config}) for _ in range(n)]


def _ctx(stack: Stack, tenant: str | None = None) -> ToolContext:
    return ToolContext(stack=stack, run_id="", step_id="s", step_key="s",
                       idempotency_key="k", workflow_name="w",
                       actor={"tenant": tenant} if tenant else None)


async def test_limits_shared_requires_a_storage_with_the_protocol() -> None:
    class NoShared:
        """A storage without SupportsSharedLimits."""

        def __init__(self, url: str, config: Any) -> None:
            self.url = url

        async def open(self) -> None:
            pass

        async def close(self) -> None:
            pass

    class Scheme:
        @hookimpl
        def register_storage(self, register: Any, config: Any) -> None:
            register("plain", lambda url, config: NoShared(url, config))

    stack = Stack([Scheme()], config={"storage": {"url": "memory://"},
                                      "limits": {"shared": "plain://somewhere"}})
    async with stack:
        with pytest.raises(ConfigError, match=r"plain://somewhere .*SupportsSharedLimits"):
            await stack.llm.chat("hi", model="fake/echo")
    with pytest.raises(ConfigError, match=r"limits\.shared"):
        Stack(config={"limits": {"shared": "nowhere"}}).llm.limiters  # noqa: B018


async def test_an_unreachable_backend_fails_closed() -> None:
    stack = _stacks(1, {"limits": {"shared": "broken://127.0.0.1:1"}})[0]
    async with stack:
        with pytest.raises(StorageError, match=r"broken://127.0.0.1:1.*connection refused"):
            await stack.llm.chat("hi", model="fake/echo")
        assert stack.providers.get("fake").requests == []  # nothing was sent


async def test_a_global_budget_is_shared_by_every_stack() -> None:
    # fake/priced: $1 per million input tokens, $2 per million output tokens; max_tokens 100
    # and a one-word prompt reserve (3 + 4 + 1) * 1e-6 + 100 * 2e-6 = 0.000208 US dollars.
    stacks = _stacks(3, {"limits": {"shared": "shared://"},
                         "budgets": {"global": {"usd": 0.001}}})
    events: list[Any] = []
    admitted = refused = 0
    for stack in stacks:
        await stack.open()
        stack.providers.get("fake").add(*[_LONG] * 30)  # each call costs about $0.0002
        stack.events.subscribe(lambda e: events.append(e) if e.type == "budget.exceeded"
                               else None)

    async def call(stack: Stack) -> None:
        nonlocal admitted, refused
        try:
            await stack.llm.chat("hi", model="fake/priced", max_tokens=100)
            admitted += 1
        except BudgetExceeded as exc:
            assert exc.scope == "global"
            refused += 1

    async with anyio.create_task_group() as tg:
        for i in range(30):
            tg.start_soon(call, stacks[i % 3])
    # each call reserves $0.000208 and spends about $0.000203: 4 fit in $0.001
    spent = (await _shared_backend(stacks[0]).shared_budget_state("budget:global:total"))
    assert spent["reserved_usd"] == 0.0 and 0.0008 < spent["spent_usd"] <= 0.001
    assert admitted == 4 and refused == 26
    assert len(events) == refused
    for stack in stacks:
        await stack.aclose()


#: a reply of 100 words: 100 output tokens of fake/priced, $0.0002
_LONG = " ".join(["word"] * 100)


def _shared_backend(stack: Stack) -> Any:
    shared = stack.llm._shared
    assert shared is not None
    return shared.backend


async def test_a_global_budget_in_one_process_without_sharing() -> None:
    stack = _stacks(1, {"budgets": {"global": {"usd": 0.0005, "usd_per_day": 10}}})[0]
    async with stack:
        stack.providers.get("fake").add(*[_LONG] * 3)  # each costs about $0.0002
        await stack.llm.chat("hi", model="fake/priced", max_tokens=100)
        await stack.llm.chat("hi", model="fake/priced", max_tokens=100)
        with pytest.raises(BudgetExceeded) as info:  # $0.0004 spent, $0.000208 more: no
            await stack.llm.chat("hi", model="fake/priced", max_tokens=100)
        assert info.value.scope == "global"
        snapshot = stack.llm.caller_budgets.snapshot()
        assert snapshot["global:total"]["limit_usd"] == 0.0005
        assert 0 < snapshot["global:total"]["spent_usd"] <= 0.0005
        assert snapshot["global:day"]["spent_usd"] == snapshot["global:total"]["spent_usd"]


@pytest.mark.parametrize("table", [{"usd": -1}, {"per_day": 1}, {}, 5, {"usd": True}])
async def test_a_malformed_global_budget_is_a_config_error(table: Any) -> None:
    from flowyard.llm.budget import CallerBudgets

    with pytest.raises(ConfigError, match=r"budgets\.global"):
        CallerBudgets({"global": table})


async def test_caller_budgets_are_shared_per_day_with_the_run_budget_all_or_nothing() -> None:
    from flowyard.llm.budget import Budget, BudgetChain

    stacks = _stacks(2, {"limits": {"shared": "shared://"},
                         "budgets": {"tenant": {"acme": {"usd_per_day": 0.0005}}}})
    for stack in stacks:
        await stack.open()
        stack.providers.get("fake").add(*[_LONG] * 3)  # each call costs about $0.0002
    first, second = (_ctx(s, "acme") for s in stacks)
    await stacks[0].llm.chat("hi", model="fake/priced", max_tokens=100, context=first)
    # a run budget too small for the call: refused in the process, nothing held in the
    # shared budget
    run_budget = Budget(0.0001, scope="run", name="r")
    second.budget = BudgetChain((run_budget,))
    with pytest.raises(BudgetExceeded) as info:
        await stacks[1].llm.chat("hi", model="fake/priced", max_tokens=100, context=second)
    assert info.value.scope == "run"
    second.budget = BudgetChain((Budget(1.0, scope="run", name="r2"),))
    await stacks[1].llm.chat("hi", model="fake/priced", max_tokens=100, context=second)
    # the tenant's day is spent by both processes' calls: the third does not fit, and the
    # run budget gets its reservation back
    with pytest.raises(BudgetExceeded) as info:
        await stacks[1].llm.chat("hi", model="fake/priced", max_tokens=100, context=second)
    assert info.value.scope == "tenant" and "acme" in str(info.value)
    assert second.budget.budgets[0].reserved_usd == 0.0
    import time as _time

    day = _time.strftime("%Y-%m-%d", _time.gmtime())
    state = await _shared_backend(stacks[0]).shared_budget_state(f"budget:tenant:acme:{day}")
    assert state["reserved_usd"] == 0.0
    assert abs(state["spent_usd"] - second.budget.budgets[0].spent_usd * 2) < 1e-12
    for stack in stacks:
        await stack.aclose()


async def test_rate_limits_are_shared_and_waits_respect_max_wait() -> None:
    stacks = _stacks(2, {"limits": {"shared": "shared://", "max_wait_s": 0.2,
                                    "fake/echo": {"rpm": 4, "smooth": False}}})
    for stack in stacks:
        await stack.open()
    for i in range(4):
        await stacks[i % 2].llm.chat("hi", model="fake/echo")
    for stack in stacks:  # the minute's 4 requests are used up for both processes
        with pytest.raises(RateLimitedError, match="max_wait_s"):
            await stack.llm.chat("hi", model="fake/echo")
    for stack in stacks:
        await stack.aclose()


async def test_a_429_pause_holds_every_process() -> None:
    stacks = _stacks(2, {"limits": {"shared": "shared://", "max_wait_s": 0.1}})
    for stack in stacks:
        await stack.open()
    stacks[0].providers.get("fake").add(RateLimitedError("slow down", retry_after=30,
                                                         provider="fake"))
    with pytest.raises(RateLimitedError, match="slow down"):
        await stacks[0].llm.chat("hi", model="fake/echo")
    with pytest.raises(RateLimitedError, match="max_wait_s"):
        await stacks[1].llm.chat("hi", model="fake/echo")
    assert stacks[1].providers.get("fake").requests == []
    for stack in stacks:
        await stack.aclose()


async def test_a_breaker_opened_by_one_stack_is_open_in_all() -> None:
    stacks = _stacks(2, {"limits": {"shared": "shared://"},
                         "circuit": {"failure_threshold": 2, "cooldown_s": 0.3}})
    changes: list[tuple[str, str]] = []
    for stack in stacks:
        await stack.open()
    stacks[1].events.subscribe(lambda e: changes.append((e.data["old"], e.data["new"]))
                               if e.type == "circuit.state" else None)
    failing = stacks[0].providers.get("fake")
    for _ in range(2):
        failing.add(ServerError("server error", provider="fake"))
        with pytest.raises(ServerError, match="server error"):
            await stacks[0].llm.chat("hi", model="fake/echo")
    with pytest.raises(CircuitOpenError, match="shared"):
        await stacks[1].llm.chat("hi", model="fake/echo")
    assert stacks[1].providers.get("fake").requests == []
    assert changes == [("closed", "open")]
    # after the cooldown one probe goes through; its success closes it for everyone
    deadline = anyio.current_time() + 10
    while True:
        try:
            await stacks[1].llm.chat("hi", model="fake/echo")
            break
        except CircuitOpenError:
            assert anyio.current_time() < deadline
            await anyio.sleep(0.05)
    await stacks[0].llm.chat("hi", model="fake/echo")
    assert changes[-1] == ("half_open", "closed")
    for stack in stacks:
        await stack.aclose()


async def test_concurrency_is_shared_and_released() -> None:
    backend = MemoryStorage()
    stacks = _stacks(2, {"limits": {"shared": "shared://", "fake/echo": {"concurrency": 2}}},
                     backend=backend)
    in_flight = peak = 0

    for stack in stacks:
        await stack.open()
        provider = stack.providers.get("fake")
        original = provider.chat

        async def chat(request: Any, _original: Any = original) -> Any:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                await anyio.sleep(0.02)
                return await _original(request)
            finally:
                in_flight -= 1

        provider.chat = chat  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        for i in range(12):
            tg.start_soon(lambda s=stacks[i % 2]: s.llm.chat("hi", model="fake/echo"))
    assert peak == 2
    assert backend._rate["rate:fake/echo"].holds == {}  # every slot released
    for stack in stacks:
        await stack.aclose()


async def test_embeddings_count_against_the_shared_limits() -> None:
    stacks = _stacks(2, {"limits": {"shared": "shared://", "max_wait_s": 0.1,
                                    "fake/echo": {"rpm": 2, "smooth": False}}})
    for stack in stacks:
        await stack.open()
    await stacks[0].llm.embed(["a"], model="fake/echo")
    await stacks[1].llm.embed(["b"], model="fake/echo")
    with pytest.raises(RateLimitedError, match="max_wait_s"):
        await stacks[0].llm.embed(["c"], model="fake/echo")
    with pytest.raises(RateLimitedError, match="max_wait_s"):  # chat shares the window
        await stacks[1].llm.chat("hi", model="fake/echo")
    for stack in stacks:
        await stack.aclose()


async def test_a_stream_settles_its_shared_reservation() -> None:
    stack = _stacks(1, {"limits": {"shared": "shared://"},
                        "budgets": {"global": {"usd_per_day": 1.0}}})[0]
    async with stack:
        stack.providers.get("fake").add(_LONG)
        chunks = [c async for c in stack.llm.stream("hi", model="fake/priced",
                                                     max_tokens=100)]
        assert chunks[-1].done
        import time as _time

        day = _time.strftime("%Y-%m-%d", _time.gmtime())
        state = await _shared_backend(stack).shared_budget_state(f"budget:global:day:{day}")
        assert state["reserved_usd"] == 0.0
        assert 0.0002 <= state["spent_usd"] <= 0.00025  # 100 output tokens, a short prompt
