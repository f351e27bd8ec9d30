"""Per-second windows (issue 15, item 7): ``rps``, and ``rpm`` smoothed so a minute's
requests never start in one burst; on a virtual clock, with a hypothesis property."""

from __future__ import annotations

import anyio
import pytest
from flowyard.clock import VirtualClock
from flowyard.errors import ConfigError
from flowyard.llm.ratelimit import LimiterSet, RateLimiter, RateLimits
from hypothesis import given, settings
from hypothesis import strategies as st

EPS = 1e-6


async def _admit(limits: RateLimits, arrivals: list[float]) -> list[float]:
    """Admission times (seconds) of calls arriving at ``arrivals``, each released at once."""
    clock = VirtualClock()
    limiter = RateLimiter(limits, clock=clock)
    times: list[float] = []

    async def call(arrival: float) -> None:
        await clock.sleep(arrival)
        permit = await limiter.acquire()
        times.append(clock.now())
        permit.release()

    async with clock.autojump(), anyio.create_task_group() as tg:
        for arrival in sorted(arrivals):
            tg.start_soon(call, arrival)
            await anyio.lowlevel.checkpoint()
    return sorted(times)


def _most_in(times: list[float], seconds: float) -> int:
    return max((sum(1 for t in times if start - EPS <= t < start + seconds - EPS)
                for start in times), default=0)


@pytest.mark.anyio
async def test_rpm_600_no_longer_admits_600_in_one_second() -> None:
    burst = [0.0] * 700
    window = await _admit(RateLimits(rpm=600, smooth=False), burst)
    assert _most_in(window, 1.0) == 600  # the plain window: the whole minute at once
    smoothed = await _admit(RateLimits(rpm=600), burst)
    assert _most_in(smoothed, 1.0) == 10  # ceil(600 / 60)
    assert _most_in(smoothed, 60.0) == 600
    assert smoothed[599] < 60.0  # the sustained rate is still 600 per minute


@pytest.mark.anyio
async def test_rps_caps_every_second_and_the_lower_cap_wins() -> None:
    times = await _admit(RateLimits(rps=3), [0.0] * 10)
    assert times == [0.0] * 3 + [1.0] * 3 + [2.0] * 3 + [3.0]
    assert RateLimits(rps=3, rpm=600).per_second == 3
    assert RateLimits(rps=30, rpm=600).per_second == 10
    assert RateLimits(rps=30, rpm=600, smooth=False).per_second == 30
    assert RateLimits(rpm=1).per_second == 1
    assert RateLimits(rph=100).per_second is None


def test_rps_and_smooth_parse_from_the_limits_table() -> None:
    limits = LimiterSet({"p": {"requests_per_second": 4, "rpm": 100, "smooth": False}})
    assert limits.configured["p"] == RateLimits(rps=4, rpm=100, smooth=False)
    assert not RateLimits(rps=1).unlimited and RateLimits(smooth=False).unlimited
    with pytest.raises(ConfigError, match="rps must be a positive integer"):
        RateLimits.from_mapping({"rps": 0})
    with pytest.raises(ConfigError, match="smooth must be true or false"):
        RateLimits.from_mapping({"smooth": "yes"}, where="limits.'p'")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=40, deadline=None)
@given(rps=st.one_of(st.none(), st.integers(1, 5)),
       rpm=st.one_of(st.none(), st.integers(1, 200)),
       smooth=st.booleans(),
       arrivals=st.lists(st.floats(min_value=0, max_value=90, allow_nan=False),
                         min_size=1, max_size=60))
def test_no_second_exceeds_rps_and_no_minute_exceeds_rpm(
        backend: str, rps: int | None, rpm: int | None, smooth: bool,
        arrivals: list[float]) -> None:
    limits = RateLimits(rps=rps, rpm=rpm, smooth=smooth)
    times = anyio.run(_admit, limits, arrivals, backend=backend)
    assert len(times) == len(arrivals)
    if rps is not None:
        assert _most_in(times, 1.0) <= rps
    if rpm is not None:
        assert _most_in(times, 60.0) <= rpm
        if smooth:
            assert _most_in(times, 1.0) <= -(-rpm // 60)
