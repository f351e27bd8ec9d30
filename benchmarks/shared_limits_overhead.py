"""What shared limits cost a model call: the gateway's per-call time with rate limits, a
breaker and a deployment-wide budget kept in the process (the default) against the same
limits kept in a shared backend (``[limits] shared = "storage"``): the in-memory storage
(the reference implementation: the cost of the shared code path alone), a SQLite file
(flowyard-sql, ``synchronous=FULL``), PostgreSQL (flowyard-sql, a throwaway server on
127.0.0.1) and Redis (flowyard-redis, a throwaway redis-server on 127.0.0.1).

Every call is ``stack.llm.chat`` of the core's fake provider (``fake/priced``: no network,
a priced model so the budget is reserved and settled), under ``[limits."fake/priced"] rpm``
and ``concurrency`` set high enough never to make a call wait, ``[circuit]`` on and
``[budgets.global] usd`` large: per call, a shared backend then does one admission, one
breaker check and one before-call read, one success, one budget reservation and its
settlement, and one release. Calls run ``--concurrency`` at a time; each setting runs
``--calls`` calls ``--repeat`` times after a warm-up, alternating settings, and the median
is reported in microseconds per call (µs/call; wall time / calls), with the ratio to the
in-process setting measured in the same run.

Usage: .venv/bin/python benchmarks/shared_limits_overhead.py [--calls 400] [--repeat 3]
       [--concurrency 1] [--backends memory,sqlite,postgresql,redis]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[1]


def postgres_server_class() -> Any:
    """``PostgresServer`` of plugins/sql/tests/conftest.py, imported by path."""
    path = ROOT / "plugins" / "sql" / "tests" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_flowyard_sql_conftest_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PostgresServer


def config(url: str, shared: bool) -> dict[str, Any]:
    """The stack configuration of one setting (``url``: its storage)."""
    limits: dict[str, Any] = {"fake/priced": {"rpm": 10_000_000, "concurrency": 10_000}}
    if shared:
        limits["shared"] = "storage"
    return {"storage": {"url": url}, "models": {"default": "fake/priced"}, "limits": limits,
            "circuit": {"failure_threshold": 5, "cooldown_s": 30},
            "budgets": {"global": {"usd": 1_000_000.0}}}


async def run_calls(stack: Any, calls: int, concurrency: int) -> float:
    """Make ``calls`` calls, ``concurrency`` at a time; return the seconds taken."""
    limiter = anyio.CapacityLimiter(concurrency)

    async def one() -> None:
        async with limiter:
            await stack.llm.chat("hello there", model="fake/priced", max_tokens=16)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(calls):
            tg.start_soon(one)
    return time.perf_counter() - started


async def measure(settings: dict[str, dict[str, Any]], calls: int, repeat: int,
                  concurrency: int) -> dict[str, float]:
    """Median µs per call of each setting (name -> stack config), alternating settings."""
    from flowyard import Stack

    stacks = {name: Stack(discover=True, config=cfg) for name, cfg in settings.items()}
    times: dict[str, list[float]] = {name: [] for name in stacks}
    try:
        for stack in stacks.values():
            await stack.open()
            await run_calls(stack, min(50, calls), concurrency)  # warm-up
        for _ in range(repeat):
            for name, stack in stacks.items():
                times[name].append(await run_calls(stack, calls, concurrency))
    finally:
        for stack in stacks.values():
            await stack.aclose()
    return {name: statistics.median(t) / calls * 1e6 for name, t in times.items()}


def main() -> None:
    """Parse the arguments, start the servers asked for, measure and print."""
    import os

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--backends", default="memory,sqlite,postgresql,redis")
    args = parser.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    os.environ.setdefault("FLOWYARD_PLUGINS", "builtin,sql,redis")
    folder = Path(tempfile.mkdtemp(prefix="flowyard-bench-shared-"))
    os.environ.setdefault("FLOWYARD_DATA_DIR", str(folder / "data"))
    settings = {"in-process": config("memory://", shared=False)}
    servers: list[Any] = []
    try:
        for backend in backends:
            if backend == "memory":
                settings["shared memory"] = config("memory://", shared=True)
            elif backend == "sqlite":
                settings["shared sqlite"] = config(f"sqlite:///{folder / 'shared.db'}", True)
            elif backend == "postgresql":
                server = postgres_server_class()()
                server.start()
                servers.append(server)
                settings["shared postgresql"] = config(server.url(server.create_database()),
                                                       True)
            elif backend == "redis":
                from flowyard_redis.testing import RedisServer

                redis = RedisServer(appendfsync="everysec")
                redis.start()
                servers.append(redis)
                settings["shared redis"] = config(redis.url, True)
            else:
                parser.error(f"unknown backend {backend!r}")
        results = anyio.run(measure, settings, args.calls, args.repeat, args.concurrency)
    finally:
        for server in servers:
            server.stop()
    base = results["in-process"]
    print(f"gateway per-call time, fake provider, {args.calls} calls x {args.repeat}, "
          f"concurrency {args.concurrency} (µs/call, median; ratio to in-process)")
    for name, us in results.items():
        print(f"  {name:<18} {us:9.1f} µs/call  {us / base:6.2f}x")


if __name__ == "__main__":
    main()
