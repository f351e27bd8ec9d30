"""A contending process for test_redis_concurrency.py (not collected by pytest).

``python redis_contender.py URL MODE NAME``: opens RedisStorage on URL, writes
``<prefix>ready:<NAME>``, waits (polling, with a deadline) until ``<prefix>go`` exists, then:

- ``claim``: claims tasks until none is left, printing each claimed task id;
- ``limits``: asks 30 times for a permit of a 60 s window of 10 under one key, printing
  ``admitted`` for each admission, then tries 20 reservations of 0.125 USD against a
  1 USD budget, printing ``held`` for each one held.
"""

from __future__ import annotations

import sys
import time

import anyio
import redis
from flowyard_redis.storage import RedisStorage


async def main(url: str, mode: str, name: str) -> None:
    storage = RedisStorage(url)
    await storage.open()
    raw = redis.Redis.from_url(url.split("?")[0])
    raw.set(storage.k("ready", name), 1)
    deadline = time.monotonic() + 60
    while not raw.exists(storage.k("go")):
        if time.monotonic() > deadline:
            raise SystemExit("no go signal within 60 s")
        await anyio.sleep(0.005)  # polling interval
    if mode == "claim":
        while (task := await storage.claim_task(name, now=time.time(),
                                                lease_timeout=60.0)) is not None:
            print(task.id, flush=True)
    elif mode == "limits":
        for i in range(30):
            if await storage.shared_rate_acquire("rate:shared", permit_id=f"{name}-{i}",
                                                 windows=[(60.0, 10)]) == 0.0:
                print("admitted", flush=True)
        for i in range(20):
            if await storage.shared_budget_reserve(f"{name}-{i}", [("budget:shared", 1.0)],
                                                   0.125) is None:
                print("held", flush=True)
    await storage.close()


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:4])
