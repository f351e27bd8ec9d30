"""Rate limiter accuracy: configured rate against achieved rate over 60 s of virtual time.

Many clients hammer one :class:`flowyard.llm.ratelimit.RateLimiter` on a
:class:`flowyard.clock.VirtualClock` (so 60 s of traffic take milliseconds). For each scenario
the achieved rate over [0, 60) s is divided by the rate the configuration allows (the baseline,
computed for the same run); the target is within 1% (ratio 0.99-1.00), never above 1.00.
Also checked: no sliding 60 s window ever holds more requests or tokens than the limit.

Scenarios:
  rpm         rpm=600, 50 clients, calls of 0.2 s (smoothed: at most 10 in any 1 s)
  rps         rps=5, 50 clients, calls of 0.2 s: the allowed rate is 5 * 60 = 300 per minute
  tpm         tpm=200000, 50 clients, 100-1000 tokens estimated per call, actual usage
              60-100% of the estimate recorded when each 1 s call ends
  concurrency concurrency=8, calls of 0.5 s: the allowed rate is 8 / 0.5 s = 960 per minute
  combined    rpm=500 and concurrency=4 with calls of 2 s: the allowed rate is
              min(500, 4 * 60 / 2) = 120 per minute

Burst: 1000 calls arrive at t=0 under rpm=600; the most admitted in any 1 s window is printed
for the plain 60 s window (``smooth = false``, the behaviour before per-second smoothing: the
whole minute at once) and for the default (``ceil(600 / 60) = 10``).

Usage: .venv/bin/python benchmarks/limiter_accuracy.py [--backend asyncio|trio] [--seconds 60]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio

from flowyard.clock import VirtualClock
from flowyard.llm.ratelimit import RateLimiter, RateLimits

#: Virtual times are sums of floats (0.2 + 0.2 + ...), so two calls exactly 60 s apart can
#: differ by 60 - 1e-14 s; windows are measured with this tolerance (the limiter's own is 1 ns).
WINDOW_TOLERANCE_S = 1e-6


async def scenario(limits: RateLimits, *, clients: int, latency: float, seconds: float,
                   tokens: Callable[[random.Random], int] | None = None,
                   actual: float | None = None, seed: int = 1) -> dict[str, Any]:
    clock = VirtualClock()
    limiter = RateLimiter(limits, clock=clock, name="bench")
    rng = random.Random(seed)
    admitted: list[tuple[float, int]] = []  # (time, tokens finally recorded)

    async def client() -> None:
        while clock.now() < seconds:
            estimate = tokens(rng) if tokens else 0
            permit = await limiter.acquire(estimate)
            start = clock.now()
            if start >= seconds:
                permit.release()
                return
            used = estimate
            if actual is not None:
                used = int(estimate * rng.uniform(actual, 1.0))
            await clock.sleep(latency)
            permit.record_tokens(used)
            admitted.append((start, used))
            permit.release()

    async with clock.autojump(), anyio.create_task_group() as tg:
        for _ in range(clients):
            tg.start_soon(client)
    times = sorted(t for t, _ in admitted)
    worst_second = 0
    k = 0
    for i, t in enumerate(times):  # sliding 1 s windows starting at each call
        while k < len(times) and times[k] < t + 1 - WINDOW_TOLERANCE_S:
            k += 1
        worst_second = max(worst_second, k - i)
    worst_requests = 0
    worst_tokens = 0
    j = 0
    token_sum = 0
    by_time = sorted(admitted)
    for i, (t, used) in enumerate(by_time):  # sliding 60 s windows starting at each call
        while j < len(by_time) and by_time[j][0] < t + 60 - WINDOW_TOLERANCE_S:
            token_sum += by_time[j][1]
            j += 1
        worst_requests = max(worst_requests, j - i)
        worst_tokens = max(worst_tokens, token_sum)
        token_sum -= used
    return {"requests": len(times), "tokens": sum(u for _, u in admitted),
            "worst_window_requests": worst_requests, "worst_window_tokens": worst_tokens,
            "worst_second_requests": worst_second, "virtual_s": clock.now()}


async def burst(limits: RateLimits, calls: int = 1000) -> int:
    """Return the most calls admitted in any 1 s window when ``calls`` arrive at t=0."""
    clock = VirtualClock()
    limiter = RateLimiter(limits, clock=clock, name="burst")
    times: list[float] = []

    async def client() -> None:
        permit = await limiter.acquire()
        times.append(clock.now())
        permit.release()

    async with clock.autojump(), anyio.create_task_group() as tg:
        for _ in range(calls):
            tg.start_soon(client)
    times.sort()
    worst, k = 0, 0
    for i, t in enumerate(times):
        while k < len(times) and times[k] < t + 1 - WINDOW_TOLERANCE_S:
            k += 1
        worst = max(worst, k - i)
    return worst


async def main(seconds: float) -> list[tuple[str, float, float, str, dict[str, Any]]]:
    minutes = seconds / 60
    rows = []
    r = await scenario(RateLimits(rpm=600), clients=50, latency=0.2, seconds=seconds)
    rows.append(("rpm=600", 600 * minutes, r["requests"], "requests", r))
    r = await scenario(RateLimits(rps=5), clients=50, latency=0.2, seconds=seconds)
    rows.append(("rps=5", 5 * seconds, r["requests"], "requests", r))
    r = await scenario(RateLimits(tpm=200_000), clients=50, latency=1.0, seconds=seconds,
                       tokens=lambda rng: rng.randint(100, 1000), actual=0.6)
    rows.append(("tpm=200000", 200_000 * minutes, r["tokens"], "tokens", r))
    r = await scenario(RateLimits(concurrency=8), clients=50, latency=0.5, seconds=seconds)
    rows.append(("concurrency=8, 0.5 s calls", 8 / 0.5 * seconds, r["requests"], "requests", r))
    r = await scenario(RateLimits(rpm=500, concurrency=4), clients=50, latency=2.0,
                       seconds=seconds)
    rows.append(("rpm=500 + concurrency=4, 2 s calls", min(500 * minutes, 4 / 2.0 * seconds),
                 r["requests"], "requests", r))
    return rows


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="virtual seconds of traffic (default 60)")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = anyio.run(main, args.seconds, backend=args.backend)
    wall = time.perf_counter() - started
    print(f"limiter accuracy over {args.seconds:g} s of virtual time ({args.backend}; "
          f"{wall:.2f} s wall for all scenarios)")
    print(f"{'scenario':36} {'configured':>12} {'achieved':>12} {'ratio':>7}  worst 60 s window")
    ok = True
    for name, allowed, achieved, unit, r in rows:
        ratio = achieved / allowed
        worst = (r["worst_window_tokens"] if unit == "tokens" else r["worst_window_requests"])
        limit_per_window = allowed / (args.seconds / 60)
        within = 0.99 <= ratio <= 1.0 and worst <= limit_per_window + 1e-9
        if name == "rps=5":
            within &= r["worst_second_requests"] <= 5
        if name == "rpm=600":
            within &= r["worst_second_requests"] <= 10
        ok &= within
        print(f"{name:36} {allowed:12.0f} {achieved:12.0f} {ratio:7.4f}  "
              f"{worst} {unit} (limit {limit_per_window:.0f}){'' if within else '  OUT OF RANGE'}")
    print("most requests in any 1 s window: "
          + ", ".join(f"{name} {r['worst_second_requests']}" for name, _, _, unit, r in rows
                      if unit == "requests"))
    before = anyio.run(burst, RateLimits(rpm=600, smooth=False), backend=args.backend)
    after = anyio.run(burst, RateLimits(rpm=600), backend=args.backend)
    print(f"burst of 1000 calls at t=0 under rpm=600, most admitted in any 1 s window: "
          f"{before} with a plain 60 s window (smooth = false, as before), {after} smoothed "
          f"(default; ceil(600 / 60) = 10)")
    ok &= after <= 10
    print("all within 1%" if ok else "SOME SCENARIOS OUT OF RANGE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run())
