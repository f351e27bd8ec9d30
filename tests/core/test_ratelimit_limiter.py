"""Rate limiter: windows, tokens, concurrency, fairness, cancellation and pauses, on a virtual
clock (both anyio backends)."""

from __future__ import annotations

import anyio
import pytest
from flowyard.clock import VirtualClock
from flowyard.errors import ConfigError, RateLimitedError
from flowyard.llm.ratelimit import LimiterSet, RateLimiter, RateLimits
from flowyard.stack import Stack

pytestmark = pytest.mark.anyio


async def _admit_times(limiter: RateLimiter, clock: VirtualClock, n: int, tokens: int = 0,
                       hold: float = 0.0) -> list[float]:
    times: list[float] = []

    async def one() -> None:
        permit = await limiter.acquire(tokens)
        times.append(clock.now())
        if hold:
            await clock.sleep(hold)
        permit.release()

    async with clock.autojump(), anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
            await anyio.lowlevel.checkpoint()
    return sorted(times)


async def test_rpm_admits_the_limit_then_waits_for_the_window() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(RateLimits(rpm=5, smooth=False), clock=clock)  # a plain window
    times = await _admit_times(limiter, clock, 12)
    assert times[:5] == [0.0] * 5
    assert times[5:10] == [60.0] * 5
    assert times[10:] == [120.0] * 2
    assert limiter.waited_calls == 7
    assert limiter.waited_s == pytest.approx(5 * 60 + 2 * 120)


async def test_any_window_of_an_hour_holds_at_most_rph() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(RateLimits(rpm=10, rph=25, smooth=False), clock=clock)
    times = await _admit_times(limiter, clock, 40)
    for start in times:
        in_window = [t for t in times if start <= t < start + 3600]
        assert len(in_window) <= 25
        in_minute = [t for t in times if start <= t < start + 60]
        assert len(in_minute) <= 10
    assert times[24] == 120.0 and times[25] == 3600.0


async def test_tokens_per_minute_use_the_recorded_actual_usage() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(RateLimits(tpm=1000), clock=clock)
    async with clock.autojump():
        first = await limiter.acquire(800)
        first.record_tokens(300)  # the call used fewer tokens than estimated
        second = await limiter.acquire(700)
        assert clock.now() == 0.0
        third = await limiter.acquire(500)  # 300 + 700 + 500 > 1000: waits for the first
        assert clock.now() == 60.0
        for p in (first, second, third):
            p.release()


async def test_a_request_larger_than_tpm_goes_alone() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(RateLimits(tpm=100), clock=clock)
    async with clock.autojump():
        (await limiter.acquire(10)).release()
        big = await limiter.acquire(5000)
        assert clock.now() == 60.0  # waited until the window was empty
        big.release()


async def test_concurrency_limits_calls_in_flight() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(RateLimits(concurrency=2), clock=clock)
    times = await _admit_times(limiter, clock, 5, hold=10.0)
    assert times == [0.0, 0.0, 10.0, 10.0, 20.0]
    assert limiter.in_flight == 0


async def test_waiters_are_served_first_come_first_served() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(RateLimits(tpm=1000), clock=clock)
    order: list[str] = []

    async def call(name: str, tokens: int) -> None:
        permit = await limiter.acquire(tokens)
        order.append(name)
        permit.release()

    (await limiter.acquire(900)).release()
    async with anyio.create_task_group() as tg:
        # "big" does not fit until t=60; "small" would fit now but must not overtake it.
        tg.start_soon(call, "big", 600)
        await clock.advance(0)
        tg.start_soon(call, "small", 50)
        await clock.advance(59)
        assert order == []
        await clock.advance(1)
    assert order == ["big", "small"]


async def test_a_cancelled_waiter_frees_its_place() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(RateLimits(concurrency=1), clock=clock)
    admitted: list[str] = []

    async def call(name: str) -> None:
        permit = await limiter.acquire()
        admitted.append(name)
        permit.release()

    holder = await limiter.acquire()
    async with anyio.create_task_group() as tg:
        doomed = anyio.CancelScope()
        tg.start_soon(call, "first")
        await clock.advance(0)

        async def cancellable() -> None:
            with doomed:
                await call("second")

        tg.start_soon(cancellable)
        await clock.advance(0)
        tg.start_soon(call, "third")
        await clock.advance(0)
        assert limiter.queued == 3
        doomed.cancel()
        await clock.advance(0)
        assert limiter.queued == 2
        holder.release()
    assert admitted == ["first", "third"]
    assert limiter.queued == 0 and limiter.in_flight == 0


async def test_cancelling_the_head_wakes_the_next_waiter() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(RateLimits(rpm=1), clock=clock)
    admitted: list[tuple[str, float]] = []

    async def call(name: str) -> None:
        permit = await limiter.acquire()
        admitted.append((name, clock.now()))
        permit.release()

    (await limiter.acquire()).release()
    async with anyio.create_task_group() as tg:
        scope = anyio.CancelScope()

        async def head() -> None:
            with scope:
                await call("head")

        tg.start_soon(head)
        await clock.advance(0)
        tg.start_soon(call, "next")
        await clock.advance(10)
        scope.cancel()
        await clock.advance(50)
    assert admitted == [("next", 60.0)]


async def test_pause_blocks_until_the_stated_time() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(clock=clock)
    async with clock.autojump():
        limiter.pause(7.5)
        assert limiter.paused_until == 7.5
        (await limiter.acquire()).release()
        assert clock.now() == 7.5


def test_limits_from_configuration_accept_long_names_and_reject_bad_values() -> None:
    limits = RateLimits.from_mapping({"requests_per_minute": 60, "tpm": 1000,
                                      "concurrent_requests": 4})
    assert (limits.rpm, limits.tpm, limits.concurrency) == (60, 1000, 4)
    with pytest.raises(ConfigError, match=r"limits.'openai'.*unknown key 'rpx'"):
        LimiterSet({"openai": {"rpx": 5}})
    with pytest.raises(ConfigError, match="rpm must be a positive integer"):
        RateLimits.from_mapping({"rpm": 0})
    with pytest.raises(ConfigError, match="positive integer"):
        RateLimits.from_mapping({"tpm": 1.5})


async def test_limiter_set_applies_model_and_provider_limits() -> None:
    clock = VirtualClock()
    limiters = LimiterSet({"p": {"rpm": 3, "smooth": False}, "p/m1": {"rpm": 1}},
                          clock=clock)
    times: dict[str, list[float]] = {"m1": [], "m2": []}

    async def call(model: str) -> None:
        permit = await limiters.acquire("p", model)
        times[model].append(clock.now())
        permit.release()

    async with clock.autojump(), anyio.create_task_group() as tg:
        for model in ("m1", "m1", "m2", "m2", "m2"):
            tg.start_soon(call, model)
            await anyio.lowlevel.checkpoint()
    assert times["m1"] == [0.0, 60.0]      # the model's own limit
    assert sorted(times["m2"])[:2] == [0.0, 0.0]
    assert sorted(times["m2"])[2] == 60.0   # the provider's limit of 3 per minute
    assert limiters.stats()["p/m1"]["admitted"] == 2


async def test_a_429_with_retry_after_pauses_the_model_in_the_gateway() -> None:
    from flowyard.builtin.fake import FakeProvider
    from flowyard.hookspecs import hookimpl

    provider = FakeProvider("p", script=[RateLimitedError("slow down", retry_after=12.0,
                                                           provider="p", model="echo"),
                                         "ok", "other"])

    class Plugin:
        @hookimpl
        def register_providers(self, register, config):  # type: ignore[no-untyped-def]
            register("p", provider)

    stack = Stack(plugins=[Plugin()], config={"limits": {"p": {"rpm": 100}}})
    clock = VirtualClock()
    stack.llm.use_clock(clock)
    seen: list[str] = []
    waited: list[float] = []
    stack.events.subscribe(lambda e: seen.append(e.type))
    stack.events.subscribe(lambda e: waited.append(e.data["waited_s"])
                           if e.type == "ratelimit.wait" and e.data["key"] == "p/echo" else None)
    async with clock.autojump():
        with pytest.raises(RateLimitedError):
            await stack.llm.chat("hi", model="p/echo")
        assert "ratelimit.paused" in seen
        response = await stack.llm.chat("hi", model="p/echo")
        assert response.text == "ok"
        assert clock.now() == 12.0
        # another model of the same provider is not paused
        before = clock.now()
        await stack.llm.chat("hi", model="p/priced")
        assert clock.now() == before
    assert "ratelimit.wait" in seen
    assert sum(waited) == pytest.approx(12.0)


async def test_acquire_with_a_timeout_gives_up_its_place() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(RateLimits(rpm=1), clock=clock, name="p")
    async with clock.autojump():
        (await limiter.acquire()).release()
        with pytest.raises(TimeoutError, match="not admitted within 5 s"):
            await limiter.acquire(timeout=5)
        assert clock.now() == 5.0 and limiter.queued == 0
        (await limiter.acquire(timeout=60)).release()
        assert clock.now() == 60.0


async def test_a_long_rate_limit_wait_lets_routing_move_on() -> None:
    from flowyard.builtin.fake import FakeProvider
    from flowyard.hookspecs import hookimpl
    from flowyard.interfaces import RouteRequest
    from flowyard.llm.modelregistry import eligible

    class InOrder:
        async def choose(self, request, models):  # type: ignore[no-untyped-def]
            fitting = {m.ref: m for m in eligible(models, request)}
            return [fitting[r] for r in request.candidates]

        def record_outcome(self, model, **outcome):  # type: ignore[no-untyped-def]
            return None

    class Plugin:
        @hookimpl
        def register_providers(self, register, config):  # type: ignore[no-untyped-def]
            register("a", FakeProvider("a"))
            register("b", FakeProvider("b"))

        @hookimpl
        def register_routers(self, register, config):  # type: ignore[no-untyped-def]
            register("in-order", InOrder())

    stack = Stack(plugins=[Plugin()], config={"limits": {"max_wait_s": 10, "a": {"rpm": 1}}})
    clock = VirtualClock()
    stack.llm.use_clock(clock)
    route = RouteRequest(candidates=["a/echo", "b/echo"])
    async with clock.autojump():
        first = await stack.llm.chat("hi", model="auto", router="in-order", route=route)
        second = await stack.llm.chat("hi", model="auto", router="in-order", route=route)
        assert clock.now() == 10.0
    assert (first.provider, second.provider) == ("a", "b")
    with pytest.raises(ConfigError, match="max_wait_s"):
        LimiterSet({"max_wait_s": "long"})
    with pytest.raises(ConfigError, match="must be a table"):
        LimiterSet({"openai": 5})
