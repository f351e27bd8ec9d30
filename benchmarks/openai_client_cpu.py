"""Throughput and client CPU per request of the flowyard-openai provider.

A mock OpenAI-compatible server (``flowyard_openai.mock_server``, 20 ms latency per request)
runs in a separate process; this process sends chat completions at concurrency 8 and 64 and
measures, per client:

* throughput: requests per second of wall-clock time;
* client CPU per request: this process's CPU time (user + system, ``time.process_time``)
  divided by the number of requests, in milliseconds.

Clients measured in the same run (the baseline is raw httpx on the same event loop):

* ``raw httpx``    - ``httpx.AsyncClient.post`` + ``response.json()`` (httpx's own pool);
* ``raw aiohttp``  - ``aiohttp.ClientSession.post`` + ``response.json()`` (asyncio only);
* ``plugin``       - ``OpenAIProvider.chat`` with the default ``backend="auto"``
  (aiohttp-backed httpx transport on asyncio, httpx's own on trio);
* ``plugin/httpx`` - ``OpenAIProvider.chat`` forced onto httpx's own transport.

Targets (issue 6): plugin at most 1 ms client CPU per request at concurrency 64 on asyncio,
and never worse than raw httpx on trio.

Usage: ``python benchmarks/openai_client_cpu.py [--requests-8 N] [--requests-64 N]
[--latency SECONDS]``.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx

BODY = {"model": "mock-model", "messages": [{"role": "user", "content": "Say hello to Paris."}],
        "max_tokens": 16}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(latency: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowyard_openai.mock_server", "--port", str(port),
         "--latency", str(latency)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/models", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("mock server did not start")


async def drive(call: Callable[[], Awaitable[Any]], concurrency: int, total: int
                ) -> tuple[float, float]:
    """Run ``total`` calls with ``concurrency`` workers; return (wall s, cpu s)."""
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    # warm-up: open the pool's connections
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(call)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return time.perf_counter() - wall0, time.process_time() - cpu0


async def run_raw_httpx(base: str, concurrency: int, total: int) -> tuple[float, float]:
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        async def call() -> None:
            response = await client.post("/chat/completions", json=BODY)
            response.raise_for_status()
            response.json()

        return await drive(call, concurrency, total)


async def run_raw_aiohttp(base: str, concurrency: int, total: int) -> tuple[float, float]:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:
        async def call() -> None:
            async with session.post(f"{base}/chat/completions", json=BODY) as response:
                response.raise_for_status()
                await response.json()

        return await drive(call, concurrency, total)


async def run_plugin(base: str, concurrency: int, total: int, backend: str
                     ) -> tuple[float, float]:
    from flowyard.models import ChatRequest, Message
    from flowyard_openai.provider import OpenAIProvider

    provider = OpenAIProvider("bench", base_url=base, backend=backend)
    request = ChatRequest(model="mock-model", messages=[Message.user("Say hello to Paris.")],
                          max_tokens=16)
    try:
        async def call() -> None:
            await provider.chat(request)

        return await drive(call, concurrency, total)
    finally:
        await provider.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description="flowyard-openai client CPU benchmark")
    parser.add_argument("--requests-8", type=int, default=600)
    parser.add_argument("--requests-64", type=int, default=1920)
    parser.add_argument("--latency", type=float, default=0.02, help="server latency, seconds")
    args = parser.parse_args()
    proc, base = start_server(args.latency)
    rows: list[tuple[str, int, str, float, float]] = []
    try:
        for concurrency, total in ((8, args.requests_8), (64, args.requests_64)):
            plan: list[tuple[str, str, Callable[..., Awaitable[tuple[float, float]]],
                             tuple[Any, ...]]] = [
                ("asyncio", "raw httpx", run_raw_httpx, ()),
                ("asyncio", "raw aiohttp", run_raw_aiohttp, ()),
                ("asyncio", "plugin", run_plugin, ("auto",)),
                ("asyncio", "plugin/httpx", run_plugin, ("httpx",)),
                ("trio", "raw httpx", run_raw_httpx, ()),
                ("trio", "plugin", run_plugin, ("auto",)),
            ]
            for backend, label, job, extra in plan:
                wall, cpu = anyio.run(job, base, concurrency, total, *extra, backend=backend)
                rows.append((backend, concurrency, label, total / wall, cpu / total * 1000))
                print(f"  measured {backend:7} c={concurrency:<3} {label:13} "
                      f"{total / wall:8.0f} req/s {cpu / total * 1000:7.3f} ms CPU/req",
                      file=sys.stderr, flush=True)
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"\nflowyard-openai client benchmark: mock server latency {args.latency * 1000:.0f} ms "
          f"(separate process), {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"httpx {httpx.__version__}")
    print(f"{'loop':8}{'conc':>5}  {'client':14}{'req/s':>9}{'CPU ms/req':>12}"
          f"{'CPU vs raw httpx':>18}{'req/s vs raw httpx':>20}")
    for backend, concurrency, label, rps, cpu in rows:
        base_row = next(r for r in rows if r[0] == backend and r[1] == concurrency
                        and r[2] == "raw httpx")
        print(f"{backend:8}{concurrency:>5}  {label:14}{rps:>9.0f}{cpu:>12.3f}"
              f"{cpu / base_row[4]:>17.2f}x{rps / base_row[3]:>19.2f}x")
    plugin64 = next(r for r in rows if r[:3] == ("asyncio", 64, "plugin"))
    trio_plugin = [r for r in rows if r[0] == "trio" and r[2] == "plugin"]
    print(f"\ntarget 1: plugin on asyncio at concurrency 64 uses {plugin64[4]:.3f} ms CPU per "
          f"request (target <= 1 ms): {'met' if plugin64[4] <= 1.0 else 'NOT met'}")
    for r in trio_plugin:
        raw = next(x for x in rows if x[:3] == ("trio", r[1], "raw httpx"))
        print(f"target 2: plugin on trio at concurrency {r[1]} uses {r[4] / raw[4]:.2f}x the CPU "
              f"of raw httpx per request (target: not worse)")


if __name__ == "__main__":
    main()
