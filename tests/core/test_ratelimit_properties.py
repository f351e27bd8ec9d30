"""Property tests of the rate limiter on a virtual clock: for random limits and traffic, no
60 s window exceeds rpm or tpm, concurrency is never exceeded, and callers are admitted in
arrival order."""

from __future__ import annotations

import anyio
import pytest
from flowyard.clock import VirtualClock
from flowyard.llm.ratelimit import RateLimiter, RateLimits
from hypothesis import given, settings
from hypothesis import strategies as st

requests_st = st.lists(
    st.tuples(st.floats(min_value=0, max_value=120, allow_nan=False),  # arrival, seconds
              st.integers(min_value=0, max_value=500),                # estimated tokens
              st.floats(min_value=0.01, max_value=30, allow_nan=False),  # duration, seconds
              st.floats(min_value=0.0, max_value=1.0)),               # actual / estimate
    min_size=1, max_size=40)


async def _simulate(limits: RateLimits, requests: list[tuple[float, int, float, float]]
                    ) -> list[tuple[int, float, float, int]]:
    clock = VirtualClock()
    limiter = RateLimiter(limits, clock=clock)
    done: list[tuple[int, float, float, int]] = []  # (index, admitted, finished, tokens)
    order = sorted(range(len(requests)), key=lambda i: (requests[i][0], i))

    async def call(i: int) -> None:
        arrival, tokens, duration, ratio = requests[i]
        await clock.sleep(arrival)
        permit = await limiter.acquire(tokens)
        admitted = clock.now()
        await clock.sleep(duration)
        used = int(tokens * ratio)
        permit.record_tokens(used)
        permit.release()
        done.append((i, admitted, clock.now(), used))

    async with clock.autojump(), anyio.create_task_group() as tg:
        for i in order:
            tg.start_soon(call, i)
            await anyio.lowlevel.checkpoint()
    return done


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=40, deadline=None)
@given(rpm=st.one_of(st.none(), st.integers(1, 10)),
       tpm=st.one_of(st.none(), st.integers(500, 3000)),
       concurrency=st.one_of(st.none(), st.integers(1, 4)),
       requests=requests_st)
def test_limits_hold_in_every_window_and_order_is_fair(
        backend: str, rpm: int | None, tpm: int | None, concurrency: int | None,
        requests: list[tuple[float, int, float, float]]) -> None:
    limits = RateLimits(rpm=rpm, tpm=tpm, concurrency=concurrency)
    done = anyio.run(_simulate, limits, requests, backend=backend)
    assert len(done) == len(requests)
    eps = 1e-6
    admitted = sorted(done, key=lambda d: d[1])
    for _, start, _, _ in admitted:
        window = [d for d in admitted if start - eps <= d[1] < start + 60 - eps]
        if rpm is not None:
            assert len(window) <= rpm
        if tpm is not None:
            # the tokens recorded after each call (never more than its estimate)
            assert sum(d[3] for d in window) <= tpm
        if concurrency is not None:
            in_flight = [d for d in done if d[1] <= start + eps and d[2] > start + eps]
            assert len(in_flight) <= concurrency
    # first come, first served: admission follows arrival order
    arrival_rank = sorted(range(len(requests)), key=lambda i: (requests[i][0], i))
    by_admission = [d[0] for d in sorted(done, key=lambda d: (d[1], arrival_rank.index(d[0])))]
    distinct = len({round(r[0], 9) for r in requests}) == len(requests)
    if distinct:
        assert by_admission == arrival_rank
